"""``vqvae: jukebox``: the hierarchical VQ-VAE of Jukebox as a LightningModule, and its presets.

The network (levels of encoder, bottleneck and decoder; ``encode``, ``decode``) is
`VQVAENetwork` in ``network.py``, usable without Lightning; this module adds what training
needs: the bottlenecks built from the registry, the losses, the optimiser and the logging.

Loss, per level, summed over levels (openai/jukebox ``vqvae/vqvae.py``)::

    reconstruction(x̂, x) + spectral_weight * spectral(x̂, x) + commit_weight * commit

with the reconstruction and spectral terms divided by the training data's bandwidth,
measured over `bandwidth_seconds` of training crops when training starts (`MeasureBandwidth`)
unless it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from jukebox_pl.checkpoints.openai_hparams import preset_values, released_spec, setup_hparams, vqvae_spec
from jukebox_pl.metrics.plots import log_reconstructions
from jukebox_pl.metrics.spectral import spectral_convergence, to_db
from jukebox_pl.optim import (
    OptimizerSpec,
    SchedulerSpec,
    configure_optimizers,
    jukebox_optimizer,
    with_jukebox_hparams,
)
from jukebox_pl.registry import build, register
from jukebox_pl.signatures import SpecOf, preset
from jukebox_pl.vqvae.losses import AccumulatedBandwidth, Bandwidth
from jukebox_pl.vqvae.network import VQVAENetwork, VQVAEOutput

# A loss by registered name or spec (checked against the registry when a recipe is validated), or a module.
LossSpec = Annotated[nn.Module | Mapping[str, Any] | str, SpecOf("loss", ())]


@register("vqvae", "jukebox")
class JukeboxVQVAE(VQVAENetwork, pl.LightningModule):
    """Hierarchical VQ-VAE: L independent levels of encoder -> bottleneck -> decoder, trained with its losses."""

    def __init__(
        self,
        bottleneck: Annotated[Mapping[str, Any] | str, SpecOf("bottleneck", ("emb_width",))] = "ema_vq",
        reconstruction: LossSpec = "l2",
        spectral: LossSpec | None = "multispectral",
        spectral_weight: float = 1.0,
        commit_weight: float = 0.02,
        optimizer: OptimizerSpec = "adam",
        lr_scheduler: SchedulerSpec = "warmup",
        bandwidth: Mapping[str, float] | None = None,
        bandwidth_seconds: float = 600.0,
        log_items: int = 2,
        learning_rate: float | None = None,
        betas: Sequence[float] | None = None,
        weight_decay: float | None = None,
        **network: Any,
    ) -> None:
        """`network` holds `VQVAENetwork`'s arguments (sample rate, downs, strides, widths...). `learning_rate`,
        `betas` and `weight_decay`, openai/jukebox's names, set those of `optimizer` (the recipes stored with
        imported released weights give them so)."""
        super().__init__(**network, bottleneck=lambda emb_width: build("bottleneck", bottleneck, emb_width=emb_width))
        self.reconstruction = _loss(reconstruction)
        self.spectral = _loss(spectral) if spectral is not None else None
        self.spectral_weight, self.commit_weight = spectral_weight, commit_weight
        self.optimizer_spec = with_jukebox_hparams(
            optimizer, learning_rate=learning_rate, betas=betas, weight_decay=weight_decay
        )
        self.lr_scheduler_spec, self.bandwidth_seconds, self.log_items = lr_scheduler, bandwidth_seconds, log_items
        # l1, l2, spec; zero until measured (or given), saved with the weights.
        given = Bandwidth(**bandwidth).as_tensor() if bandwidth is not None else torch.zeros(3, dtype=torch.float64)
        self.register_buffer("bandwidth", given)
        self._logged_batch: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ training
    def set_bandwidth(self, bandwidth: Bandwidth) -> None:
        """Divide the losses by `bandwidth`, the training data's (measured by `MeasureBandwidth` when not given)."""
        self.bandwidth.copy_(bandwidth.as_tensor())

    def configure_callbacks(self) -> list[pl.Callback]:
        return [] if bool((self.bandwidth > 0).all()) else [MeasureBandwidth(self.bandwidth_seconds)]

    def losses(self, audio: torch.Tensor, out: VQVAEOutput, stage: str = "train") -> tuple[torch.Tensor, dict]:
        """The total loss of a pass `out` over `audio`, and every term by level, named ``{stage}/{term}_l{level}``."""
        if not bool((self.bandwidth > 0).all()):
            raise RuntimeError("the loss bandwidth is not measured: train through Lightning or pass `bandwidth`")
        bandwidth = Bandwidth.from_tensor(self.bandwidth)
        total = audio.new_zeros((), dtype=torch.float32)
        logs: dict[str, torch.Tensor] = {}
        for level, (reconstruction, bottleneck) in enumerate(zip(out.reconstructions, out.bottlenecks, strict=True)):
            recons = self.reconstruction(reconstruction, audio, bandwidth)
            level_loss = recons + self.commit_weight * bottleneck.commit_loss
            logs[f"{stage}/recons_l{level}"] = recons
            logs[f"{stage}/commit_l{level}"] = bottleneck.commit_loss
            if self.spectral is not None:
                spectral = self.spectral(reconstruction, audio, bandwidth)
                level_loss = level_loss + self.spectral_weight * spectral
                logs[f"{stage}/spectral_l{level}"] = spectral
            total = total + level_loss
            for name, value in bottleneck.metrics.items():
                logs[f"{stage}/{name}_l{level}"] = value
        logs[f"{stage}/loss"] = total
        return total, logs

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        audio = batch["audio"]
        total, logs = self.losses(audio, self(audio), "train")
        self.log_dict(logs, batch_size=audio.shape[0])
        return total

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> None:
        audio = batch["audio"]
        out = self(audio)
        _, logs = self.losses(audio, out, "val")
        self.log_dict(logs, batch_size=audio.shape[0], sync_dist=True)
        for level, reconstruction in enumerate(out.reconstructions):
            sc = spectral_convergence(reconstruction, audio).mean()
            self.log(f"val/sc_db_l{level}", to_db(sc.clamp(min=1e-8)), batch_size=audio.shape[0], sync_dist=True)
        if batch_index == 0 and self.log_items > 0:
            items = slice(0, self.log_items)
            levels = {f"level {level}": r[items].detach().float().cpu() for level, r in enumerate(out.reconstructions)}
            self._logged_batch = {"input": audio[items].detach().cpu(), **levels}

    def on_validation_epoch_end(self) -> None:
        if self._logged_batch is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        folder = Path(self.trainer.default_root_dir) / "reconstructions" / f"step-{self.global_step:07d}"
        log_reconstructions(self._logged_batch, self.sample_rate, folder, self.loggers, self.global_step)
        self._logged_batch = None

    def configure_optimizers(self) -> Any:
        return configure_optimizers(
            self.parameters(), self.optimizer_spec, self.lr_scheduler_spec, self.trainer.max_steps
        )


class MeasureBandwidth(pl.Callback):
    """Measures the training data's bandwidth when training starts, over `seconds` of the datamodule's training
    crops shared between the ranks, and hands it to the VQ-VAE (`set_bandwidth`) unless it has one already."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_fit_start(self, trainer: pl.Trainer, module: JukeboxVQVAE) -> None:
        if bool((module.bandwidth > 0).all()):  # given, or restored from a checkpoint
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError("jukebox vqvae: pass `bandwidth` or train with a datamodule to measure it")
        measured = AccumulatedBandwidth()
        target = self.seconds * module.sample_rate / max(trainer.world_size, 1)
        for batch in datamodule.train_dataloader():
            measured.add(batch["audio"])
            if measured.samples >= target:
                break
        sums = measured.sums.to(module.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        measured.sums = sums.cpu()
        module.set_bandwidth(measured.result())


def _loss(spec: LossSpec) -> nn.Module:
    return spec if isinstance(spec, nn.Module) else build("loss", spec)


def _preset(name: str, summary: str, **defaults: Any) -> Callable[..., JukeboxVQVAE]:
    """`JukeboxVQVAE` with other defaults, registered as the vqvae `name`."""
    return register("vqvae", name)(preset(JukeboxVQVAE, name, summary, **defaults))


# Presets: the values of openai/jukebox hparams.py (restated in `jukebox_pl.checkpoints.openai_hparams`, the
# table the import of OpenAI's weights reads too), overridable key by key in a recipe.
jukebox_vqvae = _preset(
    "jukebox_vqvae",
    "Jukebox's VQ-VAE: 44.1 kHz, hops 8/32/128, 2048 codes of width 64 per level (hparams.py `vqvae`).",
    **jukebox_optimizer(preset_values(released_spec("vqvae"))),
)
small_vqvae = _preset(
    "small_vqvae",
    "Jukebox's small VQ-VAE: 22.05 kHz, hops 32/256, 1024 codes (hparams.py `small_vqvae`).",
    **jukebox_optimizer(preset_values(vqvae_spec(setup_hparams("small_vqvae")))),
)
tiny_vqvae = _preset(
    "tiny_vqvae",
    "A tiny two-level VQ-VAE for tests and the CPU demo: 22.05 kHz, hops 4/16, 256 codes of width 32.",
    sample_rate=22050,
    downs=[2, 2],
    strides=[2, 2],
    emb_width=32,
    width=32,
    depth=3,
    bottleneck={"_component_": "ema_vq", "codebook_size": 256, "mu": 0.99, "threshold": 1.0},
    lr_scheduler={"_component_": "warmup", "warmup_steps": 20},
    bandwidth_seconds=60.0,
)
demo_vqvae = _preset(
    "demo_vqvae",
    "The CPU demo's VQ-VAE: 16 kHz, hops 64/128 (Jukebox's top-level hop), 512 codes of width 32.",
    sample_rate=16000,
    # Strides 8 and 2 instead of Jukebox's 2s: fewer strided convolutions, so a level trains more steps a
    # minute on a CPU. Level 0 at hop 64 rather than 16: at hop 16 its codes carry the waveform's phase (a
    # fifth of them replaced at random left 0.21 of the held-out songs' frames pitched, against 0.76) and a
    # small upsampler predicts them at 8.0 bits a code (0.5 below their unigram entropy), so its samples
    # decode to noise; at hop 64 it predicts them at 5.4 bits (3.4 below), and the clips keep their pitch.
    downs=[2, 1],
    strides=[8, 2],
    emb_width=32,
    width=32,
    depth=3,
    bottleneck={"_component_": "ema_vq", "codebook_size": 512, "mu": 0.99, "threshold": 1.0},
    # Jukebox's spectral term plus a tenth of a log-magnitude term: the held-out songs' level-0 reconstructions
    # after 1,200 steps came to 0.197 of white noise's log-mel Fréchet distance, against 0.230 without it
    # (weights 0.03 / 0.1 / 0.3: 0.211 / 0.197 / 0.215); see docs/vqvae.md, "The demo's loss".
    spectral={"_component_": "multispectral", "log_weight": 0.1},
    # The spectral terms weigh ten times the waveform's L2 (whose best guess under an unknown phase is a quieter
    # upper spectrum): level-0 reconstructions 0.194 and 0.185 of white noise's distance after 1,200 steps from
    # seeds 0 and 1, against 0.200 and 0.201 at weight 1 (3: 0.206); docs/vqvae.md, "The demo's loss".
    spectral_weight=10.0,
    optimizer={"_component_": "adam", "lr": 3e-3},  # measured: -5.4 dB at level 0 after 100 steps, -4.3 with 1e-3
    lr_scheduler={"_component_": "warmup", "warmup_steps": 20},
    bandwidth_seconds=60.0,
)
