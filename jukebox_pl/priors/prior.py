"""``prior: jukebox``: one autoregressive transformer over a level's codes, for the top level and upsamplers.

Jukebox (Dhariwal et al., 2020, section 4; openai/jukebox ``prior/prior.py`` and
``prior/autoregressive.py``) models the codes of one level with a transformer and conditions it:

- the **top level** on labels: artist and genres give the start token, timing (song length,
  position) is added at every position;
- an **upsampler** on the codes of the level above, upsampled to this level's rate and
  added at every position (its labels give only the start token);
- **lyrics**, in one of Jukebox's two modes: *single encoder-decoder*, where the lyric
  window's tokens form a prefix of the sequence in a merged vocabulary (lyric tokens first,
  codes shifted after them); or a *separate encoder* (the `lyrics` conditioner), whose
  states the prior's cross-attention layers read. Either way the lyric loss is weighted by
  `prime_loss_fraction`.

The network (conditioning, logits, sampling, lyric alignment) is `PriorNetwork` in
``network.py``, usable without Lightning; this module builds its conditioners from their
specs and adds the loss (cross entropy in bits per token), the optimiser and the logging.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from jukebox_pl.checkpoints.openai_hparams import preset_values, released_spec
from jukebox_pl.data.text import LyricsProcessor
from jukebox_pl.optim import (
    OptimizerSpec,
    SchedulerSpec,
    configure_optimizers,
    jukebox_optimizer,
    with_jukebox_hparams,
)
from jukebox_pl.priors.network import PriorNetwork
from jukebox_pl.registry import build, register
from jukebox_pl.signatures import SpecOf, preset

LabelSpec = Annotated[Mapping[str, Any] | str | None, SpecOf("conditioner", ("width", "n_ctx", "hop_length"))]
UpperSpec = Annotated[Mapping[str, Any] | str | None, SpecOf("conditioner", ("width",))]
LyricsSpec = Annotated[Mapping[str, Any] | str | None, SpecOf("conditioner", ("prior_width", "prior_init_scale"))]


def bits_per_token(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross entropy in bits of `logits` (B, T, V) for `targets` (B, T), over positions where `mask` is true."""
    nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    if mask is None:
        return nats.mean() / math.log(2)
    weights = mask.flatten().float()
    return (nats * weights).sum() / weights.sum().clamp(min=1) / math.log(2)


@register("prior", "jukebox")
class JukeboxPrior(PriorNetwork, pl.LightningModule):
    """An autoregressive transformer over one level's codes, conditioned on labels, upper codes and lyrics, trained
    with its loss in bits per token; the conditioners are built from their specs."""

    def __init__(
        self,
        level: int,
        hop_length: int = 128,
        labels: LabelSpec = None,
        upper: UpperSpec = None,
        lyrics: LyricsSpec = None,
        prime_loss_fraction: float = 0.4,
        lyrics_version: Literal["v2", "v3"] = "v2",
        optimizer: OptimizerSpec = "adam",
        lr_scheduler: SchedulerSpec = "warmup",
        learning_rate: float | None = None,
        betas: Sequence[float] | None = None,
        weight_decay: float | None = None,
        **network: Any,
    ) -> None:
        """`network` holds `PriorNetwork`'s arguments (codebook size, n_ctx, width, depth...); the conditioners are
        built here from their specs at its width. `learning_rate`, `betas` and `weight_decay`, openai/jukebox's
        names, set those of `optimizer` (the recipes stored with imported released weights give them so)."""
        bound = inspect.signature(PriorNetwork).bind(**network)
        bound.apply_defaults()
        net = bound.arguments
        if net["n_tokens"] and LyricsProcessor(lyrics_version).n_vocab != net["lyric_vocab"]:
            raise ValueError(
                f"prior: lyric_vocab {net['lyric_vocab']} does not match lyrics_version {lyrics_version!r} "
                f"({LyricsProcessor(lyrics_version).n_vocab} tokens)"
            )
        width, n_ctx = net["width"], net["n_ctx"]
        super().__init__(**{
            **net,
            "labels": build("conditioner", labels, width=width, n_ctx=n_ctx, hop_length=hop_length) if labels else None,
            "upper": build("conditioner", upper, width=width) if upper else None,
            "lyrics": build("conditioner", lyrics, prior_width=width, prior_init_scale=net["init_scale"])
            if lyrics else None,
        })  # fmt: skip
        self.level, self.hop_length = level, hop_length
        self.prime_loss_fraction, self.lyrics_version = prime_loss_fraction, lyrics_version
        self.optimizer_spec = with_jukebox_hparams(
            optimizer, learning_rate=learning_rate, betas=betas, weight_decay=weight_decay
        )
        self.lr_scheduler_spec, self.label_spec = lr_scheduler, labels  # what fine-tuning grows

    def losses(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss and its parts in bits per token: codes, and lyrics when they are modelled."""
        logits, tokens, lyric_logits = self._forward(batch)
        mask = batch.get("mask")
        generated = bits_per_token(logits[:, self.n_tokens :], tokens[:, self.n_tokens :], mask)
        parts = {"bits_per_token": generated}
        if lyric_logits is not None:
            lyrics = bits_per_token(lyric_logits, batch["lyrics"].long())
        elif self.n_tokens:
            lyrics = bits_per_token(logits[:, : self.n_tokens], tokens[:, : self.n_tokens])
        else:
            return generated, parts
        parts["lyric_bits_per_token"] = lyrics
        # Jukebox: the lyrics count with weight prime_loss_fraction, both parts per token of the whole.
        lyric_tokens = self.lyric_tokens
        loss = (self.prime_loss_fraction * lyrics * lyric_tokens + generated * self.n_ctx) / (lyric_tokens + self.n_ctx)
        return loss, parts

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss, parts = self.losses(batch)
        logs = {f"train/{name}": value for name, value in {**parts, "loss": loss}.items()}
        self.log_dict(logs, batch_size=batch["codes"].shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> None:
        loss, parts = self.losses(batch)
        logs = {f"val/{name}": value for name, value in {**parts, "loss": loss}.items()}
        self.log_dict(logs, batch_size=batch["codes"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(
            self.parameters(), self.optimizer_spec, self.lr_scheduler_spec, self.trainer.max_steps
        )


def _preset(name: str, summary: str, **defaults: Any) -> Callable[..., JukeboxPrior]:
    """`JukeboxPrior` with other defaults, registered as the prior `name`."""
    return register("prior", name)(preset(JukeboxPrior, name, summary, **defaults))


# Presets with the released models' values: each is one row of openai/jukebox hparams.py, restated in
# `jukebox_pl.checkpoints.openai_hparams` (the table the import of OpenAI's weights reads too).
prior_5b = _preset(
    "prior_5b",
    "Jukebox's 5B top-level prior without lyrics: width 4800, depth 72, 8 heads, n_ctx 8192 (hparams.py).",
    **jukebox_optimizer(preset_values(released_spec("prior_5b"))),
)
prior_5b_lyrics = _preset(
    "prior_5b_lyrics",
    "Jukebox's 5B lyrics top-level prior: width 4800, depth 79 with cross attention to a 1280 x 18 lyrics encoder.",
    **jukebox_optimizer(preset_values(released_spec("prior_5b_lyrics"))),
)
prior_1b_lyrics = _preset(
    "prior_1b_lyrics",
    "Jukebox's 1B lyrics top-level prior: width 2048, depth 72, 2 heads, n_ctx 6144, 384 lyric tokens.",
    **jukebox_optimizer(preset_values(released_spec("prior_1b_lyrics"))),
)
upsampler = _preset(
    "upsampler",
    "Jukebox's middle upsampler (hparams.py upsampler_level_1): width 1920, depth 72, n_ctx 8192.",
    **jukebox_optimizer(preset_values(released_spec("upsampler_level_1"))),
)
upsampler_level_0 = _preset(
    "upsampler_level_0",
    "Jukebox's bottom upsampler (hparams.py upsampler_level_0): as the middle one, without cond_res_scale.",
    **jukebox_optimizer(preset_values(released_spec("upsampler_level_0"))),
)
tiny_prior = _preset(
    "tiny_prior",
    "A tiny top-level prior for tests and the CPU demo: width 128, depth 4, n_ctx 256 over 256 codes.",
    level=1, codebook_size=256, n_ctx=256, hop_length=16, width=128, depth=4, heads=2, attn_order=2,
    blocks=16, optimizer={"_component_": "adam", "lr": 1e-3},
    lr_scheduler={"_component_": "warmup", "warmup_steps": 50},
)  # fmt: skip
tiny_upsampler = _preset(
    "tiny_upsampler",
    "A tiny upsampler for tests and the CPU demo: level 0 of tiny_vqvae from level 1's codes.",
    level=0, codebook_size=256, n_ctx=256, hop_length=4, width=128, depth=4, heads=2, attn_order=2,
    blocks=16, optimizer={"_component_": "adam", "lr": 1e-3},
    lr_scheduler={"_component_": "warmup", "warmup_steps": 50},
    upper={"_component_": "upper_codes", "codebook_size": 256, "down": 2, "stride": 2, "cond_width": 64,
           "cond_depth": 4, "dilation_growth_rate": 3, "dilation_cycle": 8},
)  # fmt: skip
demo_top_prior = _preset(
    "demo_top_prior",
    "The CPU demo's top-level prior: level 1 of demo_vqvae (hop 128), n_ctx 768 codes = 6.1 s at 16 kHz.",
    level=1, codebook_size=512, n_ctx=768, hop_length=128, width=128, depth=8, heads=2, attn_order=6,
    blocks=24, optimizer={"_component_": "adam", "lr": 1e-3},
    lr_scheduler={"_component_": "warmup", "warmup_steps": 50, "decay": "cosine"},
)  # fmt: skip
demo_upsampler = _preset(
    "demo_upsampler",
    "The CPU demo's upsampler: level 0 of demo_vqvae (hop 64) from the level-1 codes, 2 times coarser.",
    level=0, codebook_size=512, n_ctx=512, hop_length=64, width=128, depth=4, heads=2, attn_order=2,
    blocks=16, optimizer={"_component_": "adam", "lr": 1e-3},
    lr_scheduler={"_component_": "warmup", "warmup_steps": 50, "decay": "cosine"},
    upper={"_component_": "upper_codes", "codebook_size": 512, "down": 1, "stride": 2, "cond_width": 64,
           "cond_depth": 4, "dilation_growth_rate": 3, "dilation_cycle": 8},
)  # fmt: skip
