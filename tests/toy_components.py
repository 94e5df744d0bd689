"""Small components that the tests reach by dotted path (``toy_components:TinyAutoencoder``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext


class TinyAutoencoder(pl.LightningModule):
    """A two-layer convolutional autoencoder on ``{"audio": (B, 1, T)}`` batches."""

    def __init__(self, channels: int = 8, stride: int = 4, lr: float = 1e-3, activation: nn.Module | None = None):
        super().__init__()
        self.encoder = nn.Conv1d(1, channels, kernel_size=2 * stride, stride=stride, padding=stride // 2)
        self.activation = activation if activation is not None else nn.Tanh()
        self.decoder = nn.ConvTranspose1d(channels, 1, kernel_size=2 * stride, stride=stride, padding=stride // 2)
        self.lr = lr

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.activation(self.encoder(audio)))[..., : audio.shape[-1]]

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = torch.nn.functional.l1_loss(self(batch["audio"]), batch["audio"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        self.log("val/loss", torch.nn.functional.l1_loss(self(batch["audio"]), batch["audio"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def make_autoencoder(channels: int = 8) -> TinyAutoencoder:
    """A builder function: registries accept these as well as classes."""
    return TinyAutoencoder(channels=channels)


class ShapedNoise(nn.Module):
    """Adds noise of a fixed shape; its annotations exercise tuple, Path and Optional checks."""

    def __init__(self, shape: tuple[int, ...], root: Path, scale: float | None = None) -> None:
        super().__init__()
        self.shape, self.root, self.scale = tuple(shape), Path(root), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.scale or 0.0) * torch.randn(self.shape)


class DivergingAutoencoder(TinyAutoencoder):
    """`TinyAutoencoder` whose loss turns NaN from step `diverge_at` on (a run that blows up)."""

    def __init__(self, diverge_at: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.diverge_at = diverge_at

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_index)
        return loss * float("nan") if self.global_step >= self.diverge_at else loss


class MakesOnce(Pipeline):
    """A pipeline whose output is a file: the first run writes it with a random figure, later runs reuse it."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def run(self, context: RunContext) -> dict:
        if self.out.is_file():
            return {**json.loads(self.out.read_text()), REUSED: True}
        figures = {"figure": random.random()}
        self.out.write_text(json.dumps(figures))
        return {**figures, REUSED: False}
