"""LoRA adapters on a prior's attention and MLP projections, through peft, merged back for export.

LoRA (Hu et al., 2021) adds a trainable low-rank update ``B A`` (rank `r`, scaled by
``alpha / r``) beside each chosen linear layer while the layer itself stays frozen. peft's
``inject_adapter_in_model`` puts the adapters into the prior in place, so the prior stays a
LightningModule with its own checkpoints; at the end the adapters are merged into the
weights and removed, and the export is a plain prior of the base architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from jukebox_pl.errors import JukeboxError

# The Jukebox transformer's projections: attention q/k/v and output, MLP in and out.
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")


@dataclass
class LoraSettings:
    """``lora:`` in a fine-tuning recipe: rank, scale, dropout and the linear layers to adapt."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.targets:
            raise JukeboxError(f"lora: need r >= 1, alpha > 0, 0 <= dropout < 1 and targets; got {self}")

    @staticmethod
    def trainable() -> list[str]:
        """The patterns of the adapter weights, which train while the layers they adapt are frozen."""
        return ["*.lora_A.*", "*.lora_B.*"]


def add_adapters(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Put LoRA adapters on `model.transformer`'s `settings.targets` layers, in place."""
    try:
        import peft
    except ImportError:
        raise JukeboxError("lora: needs peft; install it with `pip install 'jukebox-pl[lora]'`") from None
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=list(settings.targets)
    )
    try:
        peft.inject_adapter_in_model(config, model.transformer)
    except ValueError as exc:
        raise JukeboxError(f"lora: {exc}") from None
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into the weights of its layer and put the plain layer back, in place."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attribute, module.get_base_layer())
    return model
