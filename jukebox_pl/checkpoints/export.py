"""Export a component as safetensors plus the recipe that builds it, and load either that or a
Lightning checkpoint back into a ready module.

An export is a folder::

    model.safetensors   the state dict (tensors only; nothing is unpickled on load)
    recipe.yaml         the resolved recipe, with ``export.component`` naming the key path
                        of the exported component's spec (``model.vqvae``)
    vocabularies.json   the artist and genre names the model was trained with, ``{name: id}``
                        (priors; absent for models without labels)

Lightning checkpoints written by the ``train`` pipeline carry the same recipe, key and
vocabularies under ``checkpoint["jukebox_pl"]``, so ``load`` rebuilds them too; they are read
with ``torch.load(weights_only=True)`` (`read_torch_file`), which refuses a file that holds
more than tensors and plain data. The stored recipe names the component to build, and may come
from anyone who shared the model: it reaches only components that jukebox-pl or an installed
plugin registers, and its arguments are checked against their signatures before anything is
built (`build_stored`). A dotted path (``package.module:Object``) or another provider's name is
refused before its module is imported, unless the user trusts the model (``trust_code=True``,
``--trust-code``); with dotted paths forbidden (``--no-dotted-paths``), it is refused even then.

Example::

    import jukebox_pl
    vqvae = jukebox_pl.load("runs/tiny_demo/model")  # or .../checkpoints/last.ckpt
    codes = vqvae.encode(audio)
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from jukebox_pl.atomic import atomic_path, atomic_write_text
from jukebox_pl.data.labels import Vocabulary
from jukebox_pl.errors import JukeboxError, first_line
from jukebox_pl.recipe_validation import validate_spec
from jukebox_pl.recipes import resolved_yaml
from jukebox_pl.registry import COMPONENT_KEY, build
from jukebox_pl.trust import (
    dotted_paths_forbidden,
    dotted_paths_in,
    installed_components_only,
    is_dotted_path,
    refuse_dotted_paths,
)
from jukebox_pl.vqvae.interface import CODEC_MEMBERS, Codec

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "recipe.yaml"
VOCABULARIES_FILE = "vocabularies.json"
CHECKPOINT_KEY = "jukebox_pl"  # where a Lightning checkpoint keeps the recipe
FORMAT = "jukebox-pl-export/1"


class CheckpointError(JukeboxError):
    """A checkpoint or export that cannot be loaded: missing, foreign, or the wrong shape."""


def spec_at(recipe: Mapping[str, Any], key: str) -> Any:
    """The value at dotted `key` of `recipe`."""
    node: Any = recipe
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise CheckpointError(f"the stored recipe has no '{key}' (no '{part}')")
        node = node[part]
    return node


def export(
    module: nn.Module | Mapping[str, torch.Tensor],
    out_dir: str | Path,
    recipe: Mapping[str, Any],
    key: str,
    vocabularies: Mapping[str, Mapping[str, int]] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `module`'s weights, `recipe` (whose `key` is the module's spec) and `vocabularies` to `out_dir`.

    `module` may also be a state dict that need not live in a built module (an import of released weights):
    the weights are written one tensor at a time (`write_safetensors`), so it may hold views of a memory-mapped
    file; `dtype` casts the floating-point tensors on the way. `vocabularies` maps ``artists`` and ``genres`` to
    ``{name: id}``, as the training data numbered them.
    """
    state = module.state_dict() if isinstance(module, nn.Module) else module
    spec = spec_at(recipe, key)
    if not (isinstance(spec, str) or (isinstance(spec, Mapping) and COMPONENT_KEY in spec)):
        raise CheckpointError(f"export: '{key}' of the recipe is not a component spec")
    out = Path(out_dir)
    write_safetensors(out / WEIGHTS_FILE, unshared(state), {"format": FORMAT, "component": key}, dtype)
    stored = {**copy.deepcopy(dict(recipe)), "export": {"format": FORMAT, "component": key}}
    atomic_write_text(out / RECIPE_FILE, resolved_yaml(stored))
    if vocabularies:
        atomic_write_text(out / VOCABULARIES_FILE, json.dumps(dict(vocabularies), indent=2) + "\n")
    return out


# safetensors' names of the dtypes (its format: an 8-byte little-endian header length, the JSON header, the data).
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def write_safetensors(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
) -> None:
    """`state` as a safetensors file, written atomically and tensor by tensor.

    The header needs only names, dtypes and shapes; each tensor is then made contiguous, cast to
    `dtype` (floating-point ones) and written on its own, so the memory needed beyond `state` is
    one tensor's, whatever the file's size (safetensors' own ``save`` builds the whole file in memory).
    """

    def stored(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    names = sorted(state)
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in names:
        tensor = state[name]
        if stored(tensor) not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"export: {name} has dtype {stored(tensor)}, which safetensors does not store")
        size = tensor.numel() * stored(tensor).itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[stored(tensor)], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name in names:
            tensor = state[name].detach().to("cpu", stored(state[name])).contiguous()
            file.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


def load_vocabularies(path: str | Path) -> dict[str, Vocabulary] | None:
    """The ``artists`` and ``genres`` vocabularies stored with an export folder or ``.ckpt``; None if it has none."""
    path = Path(path)
    if path.suffix == ".ckpt":
        stored = _read_checkpoint(path)[CHECKPOINT_KEY].get("vocabularies")
    else:
        file = (path if path.is_dir() else path.parent) / VOCABULARIES_FILE
        if not file.is_file():
            return None
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{file}: unreadable vocabularies ({exc})") from None
    if not stored:
        return None
    try:
        return {kind: Vocabulary.from_dict(stored[kind], kind=kind.rstrip("s")) for kind in ("artists", "genres")}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored vocabularies are not valid ({exc})") from None


def load(path: str | Path, map_location: str | torch.device = "cpu", trust_code: bool = False) -> nn.Module:
    """Rebuild a component from an export folder, its ``model.safetensors``, or a Lightning ``.ckpt``.

    The stored recipe reaches only components of jukebox-pl and installed plugins unless
    `trust_code` (see `build_stored`). The module comes back in eval mode. Wrong shapes, missing
    or extra tensors are one error that names the file and the tensors.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or export folder")
    state: dict[str, torch.Tensor] | None = None
    if path.suffix == ".ckpt":
        recipe, key, state = _read_lightning(path)
        stored_in = source = path
    else:  # the weights are read once the recipe is known to build
        folder = path if path.is_dir() else path.parent
        source, stored_in = folder / WEIGHTS_FILE, folder / RECIPE_FILE
        if not source.is_file():
            raise CheckpointError(f"{folder}: not an export folder (no {WEIGHTS_FILE})")
        recipe, key = stored_recipe(folder)
    module = build_stored(spec_at(recipe, key), key, stored_in, trust_code)
    if not isinstance(module, nn.Module):
        raise CheckpointError(
            f"{stored_in}: {key}: the stored recipe built an object of type {type(module).__name__}, not a torch module"
        )
    if state is None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(source), device=str(map_location))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt file
            raise CheckpointError(f"{source}: unreadable safetensors file ({exc})") from None
    load_weights(module, state, source)
    return module.to(map_location).eval()


def load_codec(path: str | Path, where: str, mono: str) -> nn.Module:
    """The `Codec` (a VQ-VAE) of an export folder or a train-pipeline ``.ckpt``, in eval mode, for a pipeline
    that reads mono audio. Every failure is one `JukeboxError` that starts with `where`; `mono` says why the
    codec must take one channel."""
    if not Path(path).exists():
        raise JukeboxError(f"{where}: {path} does not exist (give an export folder or a train-pipeline .ckpt)")
    try:
        model = load(path)
    except JukeboxError as exc:
        raise JukeboxError(f"{where}: {exc}") from None
    except Exception as exc:  # a broken recipe or weights file raises many types
        raise JukeboxError(f"{where}: {path} cannot be loaded ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, Codec):
        missing = ", ".join(name for name in CODEC_MEMBERS if not hasattr(model, name))
        raise JukeboxError(f"{where}: {path} holds a {type(model).__name__}, not a VQ-VAE (it has no {missing})")
    if model.channels != 1:
        raise JukeboxError(f"{where}: {path} takes {model.channels} channels; {mono}")
    return model


def build_stored(spec: Any, key: str, stored_in: str | Path, trust_code: bool = False) -> Any:
    """Build the component spec at `key` of the recipe stored in `stored_in` (an export's recipe.yaml, a .ckpt).

    A stored recipe travels with shared weights, so it is held to what installed code provides:
    unless `trust_code` (or ``--trust-code``), every name must be a component that jukebox-pl or an
    installed plugin registers, and a dotted path or another provider's name is refused before it is
    imported or called (UntrustedCodeError naming `stored_in`, the key and the name). The arguments are
    checked against the signatures before anything is built, as a run's recipe is. With dotted paths
    forbidden (``--no-dotted-paths``), a dotted path is refused even when trusted.
    """
    where = str(stored_in)
    if dotted_paths_forbidden():
        named = [(key, spec)] if is_dotted_path(spec) else dotted_paths_in(spec, key)
        refuse_dotted_paths([(f"{where}: {path}", dotted) for path, dotted in named])
    with installed_components_only(trust_code):
        validate_spec(spec, key, where)
        return build(None, spec)


def stored_recipe(path: str | Path) -> tuple[dict[str, Any], str]:
    """The recipe stored with an export folder or ``.ckpt``, and the key path of the model's spec in it."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return _read_lightning(path)[:2]
    folder = path if path.is_dir() else path.parent
    recipe_file = folder / RECIPE_FILE
    if not recipe_file.is_file():
        raise CheckpointError(f"{folder}: not an export folder (no {RECIPE_FILE})")
    recipe = OmegaConf.to_container(OmegaConf.load(recipe_file), resolve=True)
    return recipe, str(spec_at(recipe, "export.component"))


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, trust_code: bool = False) -> Path:
    """Turn a train-pipeline ``.ckpt`` into an export folder (weights only, no optimiser state).

    The model is rebuilt from the checkpoint's stored recipe, held to installed code unless `trust_code`.
    """
    path = Path(checkpoint)
    if path.suffix != ".ckpt" or not path.is_file():
        raise CheckpointError(f"{path}: expected a Lightning .ckpt file written by the train pipeline")
    recipe, key, _ = _read_lightning(path)
    vocabularies = _read_checkpoint(path)[CHECKPOINT_KEY].get("vocabularies")
    return export(load(path, trust_code=trust_code), out_dir, recipe, key, vocabularies)


def read_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """What a ``torch.save`` file holds, read with ``torch.load(weights_only=True)``: tensors and plain data only.

    A file that holds anything else (a pickled object whose loading would call code) is refused
    with one error naming the file; nothing from it runs. `mmap` maps the tensors instead of
    reading them, for a check of a large checkpoint that Lightning reads afterwards.
    """
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is reported by the refusal, not a warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as file:
            header = file.read(2)
        if header != b"PK" and header[:1] != b"\x80":  # torch.save writes a zip, or a pickle from protocol 2 on
            raise CheckpointError(f"{path}: not a readable checkpoint (neither a zip archive nor a pickle)") from None
        raise CheckpointError(_refusal(Path(path), exc)) from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files raise many types
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first_line(exc)})") from None


def _refusal(path: Path, exc: pickle.UnpicklingError) -> str:
    """The message for a file that ``weights_only`` refused, with torch's reason cut to what it names."""
    reason = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", reason)
    if found:
        held = f"code objects: unpickling it would call {found[1]}"
    else:  # torch's own lines all mention weights_only; the one that does not says what was found
        lines = [line.strip() for line in reason.splitlines()[1:] if line.strip() and "weights_only" not in line]
        held = f"pickle data that a tensors-only reader rejects: {lines[0] if lines else first_line(exc)}"
    return (
        f"{path}: refused: the file holds more than tensors ({held}); jukebox-pl loads checkpoints with "
        "torch.load(weights_only=True), which never runs code from a file"
    )


# ---------------------------------------------------------------------- the checkpoint record
def checkpoint_record(
    recipe: Mapping[str, Any], component: str, vocabularies: Mapping[str, Mapping[str, int]] | None = None
) -> dict[str, Any]:
    """What a train-pipeline checkpoint keeps under ``CHECKPOINT_KEY`` to rebuild itself.

    The resolved recipe (as JSON), the model's key path in it and the data's vocabularies.
    """
    record: dict[str, Any] = {"format": FORMAT, "recipe": json.dumps(recipe), "component": component}
    if vocabularies:
        record["vocabularies"] = {kind: dict(names) for kind, names in vocabularies.items()}
    return record


def _read_checkpoint(path: Path) -> Mapping[str, Any]:
    checkpoint = read_torch_file(path)
    stored = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, Mapping) else None
    if not isinstance(stored, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path}: a checkpoint without a jukebox-pl recipe; only checkpoints written by the train pipeline "
            "rebuild themselves"
        )
    return checkpoint


def _read_lightning(path: Path) -> tuple[dict[str, Any], str, dict[str, torch.Tensor]]:
    checkpoint = _read_checkpoint(path)
    stored = checkpoint[CHECKPOINT_KEY]
    recipe = json.loads(stored["recipe"]) if isinstance(stored["recipe"], str) else dict(stored["recipe"])
    return recipe, str(stored["component"]), dict(checkpoint["state_dict"])


def unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the later names of tensors that share memory (tied weights); safetensors stores each once."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...], torch.dtype]] = set()
    for name, tensor in state.items():
        identity = (tensor.untyped_storage().data_ptr() + tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and identity in seen:
            continue
        seen.add(identity)
        kept[name] = tensor
    return kept


def _fill_tied(module_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the tied names that `unshared` dropped filled in from the first name of their tensor."""
    filled = dict(state)
    first: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, tensor in module_state.items():
        owner = first.setdefault((tensor.data_ptr(), tuple(tensor.shape)), name)
        if name not in filled and owner in filled:
            filled[name] = filled[owner]
    return filled


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """`module.load_state_dict(state)`, with every mismatch reported at once; tied weights may be stored once."""
    expected = module.state_dict()
    state = _fill_tied(expected, state)
    problems = [f"missing {name} {tuple(t.shape)}" for name, t in expected.items() if name not in state]
    problems += [f"unexpected {name} {tuple(t.shape)}" for name, t in state.items() if name not in expected]
    problems += [
        f"{name}: checkpoint has shape {tuple(state[name].shape)}, the model {tuple(t.shape)}"
        for name, t in expected.items()
        if name in state and state[name].shape != t.shape
    ]
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise CheckpointError(
            f"{source}: does not fit {type(module).__name__} built from its recipe:\n  " + "\n  ".join(shown)
        )
    module.load_state_dict(state, strict=True)
