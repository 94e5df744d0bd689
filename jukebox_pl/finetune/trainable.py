"""Which parameters a fine-tuning run trains, chosen by name patterns; the rest are frozen.

Patterns are shell-style globs over parameter names (``transformer.blocks.7.*``), with two
additions:

- ``name[-2:]`` selects entries of a module list by a Python slice: ``transformer.blocks[-2:].*``
  is every parameter of the last two blocks;
- ``NAME:new`` selects only the rows appended to an embedding by vocabulary extension
  (``labels.artist_emb.weight:new``): the old rows are held fixed by `FrozenRows`.

A frozen parameter gets ``requires_grad=False`` and is left out of the optimizer, so it stays
bit-identical.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import FSDPStrategy
from torch import nn

from jukebox_pl.errors import JukeboxError

_SLICE = re.compile(r"^(?P<list>[\w.]+)\[(?P<slice>-?\d*:-?\d*)\](?P<rest>.*)$")


@dataclass
class Selection:
    """Whole parameters to train, and parameters of which only some rows train (name -> first trainable row)."""

    whole: set[str] = field(default_factory=set)
    rows: dict[str, int] = field(default_factory=dict)


def expand(pattern: str, module: nn.Module) -> list[str]:
    """`pattern` with a ``list[a:b]`` slice turned into one glob per selected entry of that module list."""
    match = _SLICE.match(pattern)
    if match is None:
        return [pattern]
    try:
        entries = module.get_submodule(match["list"])
    except AttributeError:
        raise JukeboxError(f"trainable: {pattern!r}: the model has no module list {match['list']!r}") from None
    start, _, stop = match["slice"].partition(":")
    indices = range(len(entries))[slice(int(start) if start else None, int(stop) if stop else None)]
    return [f"{match['list']}.{index}{match['rest']}" for index in indices]


def select(module: nn.Module, patterns: Sequence[str], new_rows: Mapping[str, int]) -> Selection:
    """The parameters `patterns` name; `new_rows` maps grown embeddings to their first new row."""
    names = [name for name, _ in module.named_parameters()]
    selection = Selection()
    for pattern in patterns:
        suffix = pattern.endswith(":new")
        base = pattern.removesuffix(":new")
        matched = [name for glob in expand(base, module) for name in names if fnmatch.fnmatchcase(name, glob)]
        if not matched:
            examples = ", ".join(names[:6])
            raise JukeboxError(f"trainable: {pattern!r} matches no parameter; the names look like {examples}, ...")
        for name in matched:
            if not suffix:
                selection.whole.add(name)
            elif name in new_rows:
                selection.rows[name] = new_rows[name]
            else:
                grown = ", ".join(sorted(new_rows)) or "none"
                raise JukeboxError(f"trainable: {pattern!r}: {name} gained no rows (grown embeddings: {grown})")
    for name in selection.whole:
        selection.rows.pop(name, None)
    return selection


def freeze(module: nn.Module, selection: Selection) -> tuple[int, int]:
    """Set ``requires_grad`` from `selection`; returns (trainable values, all values)."""
    trainable = total = 0
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(name in selection.whole or name in selection.rows)
        total += parameter.numel()
        if name in selection.whole:
            trainable += parameter.numel()
        elif name in selection.rows:
            trainable += parameter[selection.rows[name] :].numel()
    return trainable, total


class FrozenRows(pl.Callback):
    """Keeps the old rows of row-selected parameters fixed: their gradients are zeroed, and after every
    optimizer step they are put back exactly (so neither Adam's moments nor weight decay move them).

    Under FSDP (``fsdp_blocks``) a parameter is a shard of a flat parameter between steps and a new view of
    the gathered one in each forward pass: the gradient is masked on the view that each pass uses, and the
    rows are read and put back through the whole parameter of the outer FSDP unit, where the label tables
    live (``summon_full_params``, on every rank).
    """

    def __init__(self, rows: Mapping[str, int]) -> None:
        self.rows = dict(rows)
        self.saved: dict[str, torch.Tensor] = {}
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        sharded = _sharded(trainer)
        with _whole_parameters(trainer, module, self.rows):
            parameters = dict(module.named_parameters())
            for name, first in self.rows.items():
                self.saved[name] = parameters[name].detach()[:first].clone()
        for name, first in self.rows.items():
            owner, _, attribute = name.rpartition(".")
            if sharded:  # the view that the forward pass uses, a new one every step
                hook = partial(_mask_view, attribute=attribute, first=first)
                self.hooks.append(module.get_submodule(owner).register_forward_pre_hook(hook))
            else:
                self.hooks.append(parameters[name].register_hook(partial(_zero_rows, first=first)))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: object) -> None:
        with _whole_parameters(trainer, module, self.rows), torch.no_grad():
            parameters = dict(module.named_parameters())
            for name, old in self.saved.items():
                parameters[name][: old.shape[0]].copy_(old)

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def _sharded(trainer: pl.Trainer) -> bool:
    return isinstance(trainer.strategy, FSDPStrategy)


@contextlib.contextmanager
def _whole_parameters(trainer: pl.Trainer, module: nn.Module, rows: Mapping[str, int]) -> Iterator[None]:
    """The outer FSDP unit's parameters gathered whole (and written back to the shards after), or nothing to do."""
    if not _sharded(trainer):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, recurse=False, writeback=True):
        parameters = dict(module.named_parameters())
        for name, first in rows.items():
            if parameters[name].dim() < 2 or parameters[name].shape[0] <= first:
                raise JukeboxError(
                    f"trainable: {name}:new under FSDP: the table is not whole in the outer FSDP unit "
                    f"(shape {tuple(parameters[name].shape)}); wrap only the transformer blocks (fsdp_blocks)"
                )
        yield


def _mask_view(module: nn.Module, args: object, attribute: str, first: int) -> None:
    weight = getattr(module, attribute)
    if weight.requires_grad and weight.grad_fn is not None:
        weight.register_hook(partial(_zero_rows, first=first))


def _zero_rows(grad: torch.Tensor, first: int) -> torch.Tensor:
    grad = grad.clone()
    grad[:first] = 0
    return grad
