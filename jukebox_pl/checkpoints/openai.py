"""Import OpenAI's Jukebox weights: every tensor mapped onto the model its hyper-parameters describe, or one error.

OpenAI published the VQ-VAE, the 5B, 5B-lyrics and 1B-lyrics top-level priors and the two
upsamplers as ``.pth.tar`` files holding a state dict under ``"model"`` (openai/jukebox
``make_models.py``), and the artist and genre ids as ``v2_*_ids.txt`` / ``v3_*_ids.txt`` files
of ``name;id`` lines (``data/labels.py``). The names differ from ours in a regular way:

- OpenAI's ``Conv1D`` keeps its weight as ``w`` (in, out) and its bias as ``b``; ours are
  ``nn.Linear`` (out, in): the weight is transposed;
- the VQ-VAE's stages are ``level_blocks.S.model.i`` and its residual units ``model.U.model.1``
  (dilated) and ``.model.3`` (mix); a decoder's stages are stored bottom-up and run top-down;
- the prior is ``prior.*`` with ``_attn_mods``, its label conditioner ``y_emb``, the upsampler's
  conditioner ``conditioner_blocks.0`` (its residual units are ``blocks.U``, or ``model.U`` without
  ``cond_c_res``), and the 5B lyrics encoder ``prime_prior``, ``prime_state_proj``,
  ``prime_state_ln`` and ``prime_x_out``.

Which model a file holds is said in openai/jukebox's own hyper-parameters
(`jukebox_pl.checkpoints.openai_hparams`): the released files by their rows of ``hparams.py``
(``vqvae,prior_1b_lyrics``), a checkpoint of another size by its description
(``small_vqvae,small_prior,level=1``) or by the ``hps`` its training stored.

The import is complete or it fails: every source tensor must be used, every target tensor
filled, every shape must match; otherwise one error lists all that is missing, extra or of
the wrong shape. The few tensors OpenAI does not store are derived and listed
(`DERIVED`): the EMA statistics of each codebook restart from the codebook itself, as
openai/jukebox's ``restore_k`` does, and the VQ-VAE's loss bandwidth is measured when
training starts. Files are read with ``torch.load(weights_only=True)`` only (`read_torch_file`):
one that holds more than tensors is refused, and nothing from it runs. The model is laid out
on the meta device and the weights are written one tensor at a time, so an import needs
about the file's size in memory (`read_checkpoint`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from jukebox_pl.checkpoints.export import CheckpointError, export, read_torch_file
from jukebox_pl.checkpoints.openai_hparams import HparamsError, prior_spec, setup_hparams, stored_hparams, vqvae_spec
from jukebox_pl.data.labels import UNKNOWN, Vocabulary, normalise_name
from jukebox_pl.registry import build

# Our tensors that OpenAI's files do not hold, and how they are filled.
DERIVED = {
    "code_sum": "the codebook (openai/jukebox restore_k: k_sum = k)",
    "code_count": "ones (restore_k: k_elem = 1)",
    "initialised": "true",
    "bandwidth": "zeros: measured from the data when training starts",
}
# The lyrics encoder's projection into the prior, its LayerNorm and its next-character head.
_LYRICS_HEAD = {
    "proj.weight": "prime_state_proj.w",
    "proj.bias": "prime_state_proj.b",
    "ln.weight": "prime_state_ln.weight",
    "ln.bias": "prime_state_ln.bias",
    "x_out.weight": "prime_x_out.weight",
}
_LINEAR = re.compile(r"(c_attn|c_proj|c_enc_kv|c_fc|proj)\.(weight|bias)$")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The state dict in an openai/jukebox ``.pth.tar`` (under ``"model"``) and its stored ``"hps"``, if any.

    Read with ``torch.load(weights_only=True)``: nothing in the file runs. A file in torch's zip format
    (torch.save since PyTorch 1.6) is memory-mapped (``mmap=True``): its tensors stay on disk until they
    are copied out one by one. torch maps only that format, so a file in the older format (that of
    PyTorch 1.4, which openai/jukebox's README installs) is read whole: it needs its own size in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    checkpoint = read_torch_file(path, mmap=zipfile.is_zipfile(path))
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not an OpenAI Jukebox checkpoint (no state dict of tensors under 'model')")
    # openai/jukebox's training saves its hyper-parameters beside the weights; the released files may not.
    hps = checkpoint.get("hps") if "model" in checkpoint else None
    return dict(state), dict(hps) if isinstance(hps, Mapping) else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in an OpenAI ``.pth.tar`` (under ``"model"``), loaded without unpickling code."""
    return read_checkpoint(path)[0]


# ---------------------------------------------------------------------------------------- names
def _conv_stack(prefix: str, ours: str, decoder: bool, units: str) -> str | None:
    """An encoder or decoder stage's entry: ours ``K[.U.dilated|mix].P`` -> OpenAI's ``model....``."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+)\.(dilated|mix))?\.(weight|bias)", ours)
    if match is None:
        return None
    k, unit, conv, parameter = int(match[1]), match[2], match[3], match[4]
    layer = {"dilated": "1", "mix": "3"}
    if unit is not None:  # a residual unit
        step = (k + 1) // 2 if decoder else (k - 1) // 2
        return f"{prefix}.model.{step}.{0 if decoder else 1}.{units}.{unit}.model.{layer[conv]}.{parameter}"
    if decoder:
        return f"{prefix}.model.0.{parameter}" if k == 0 else f"{prefix}.model.{k // 2}.1.{parameter}"
    return f"{prefix}.model.{k // 2}.0.{parameter}" if k % 2 == 0 else f"{prefix}.model.{k // 2}.{parameter}"


def _vqvae_name(name: str, module: nn.Module) -> str | None:
    if match := re.fullmatch(r"encoders\.(\d+)\.(\d+)\.(.+)", name):
        level, stage, rest = int(match[1]), int(match[2]), match[3]
        prefix = f"encoders.{level}.level_blocks.{stage}"
        last = len(module.encoders[level][stage]) - 1
        if rest.split(".")[0] == str(last):  # the stage's output convolution
            return f"{prefix}.model.{last // 2}.{rest.split('.')[-1]}"
        return _conv_stack(prefix, rest, decoder=False, units="model")
    if match := re.fullmatch(r"decoders\.(\d+)\.stages\.(\d+)\.(.+)", name):
        level, stage = int(match[1]), int(match[2])
        return _conv_stack(f"decoders.{level}.level_blocks.{level - stage}", match[3], decoder=True, units="model")
    if match := re.fullmatch(r"decoders\.(\d+)\.out\.(weight|bias)", name):
        return name
    if match := re.fullmatch(r"bottlenecks\.(\d+)\.codebook", name):
        return f"bottleneck.level_blocks.{match[1]}.k"
    return None


def _autoregressive_name(name: str, prefix: str) -> str | None:
    """An embedding, output or transformer tensor of the prior (`prefix` ``prior``) or its lyrics encoder."""
    if name in ("x_emb.weight", "x_out.weight", "start_token"):
        return f"{prefix}.{name}"
    if name == "pos_emb.weight":
        return f"{prefix}.pos_emb.pos_emb"
    if name.startswith("transformer."):
        name = re.sub(r"^transformer\.blocks\.", f"{prefix}.transformer._attn_mods.", name)
        return re.sub(r"\.(c_attn|c_proj|c_enc_kv|c_fc)\.([wb])(?:eight|ias)$", r".\1.\2", name)
    return None


def _prior_name(name: str, cond_units: str) -> str | None:
    if name.startswith("lyrics."):
        rest = name[len("lyrics.") :]
        return _LYRICS_HEAD.get(rest) or _autoregressive_name(rest, "prime_prior")
    if match := re.fullmatch(r"labels\.(artist_emb|bow_genre_emb)\.weight", name):
        return f"y_emb.{match[1]}.emb.weight"
    if name.startswith("labels."):
        return "y_emb." + name[len("labels.") :]
    if name.startswith("upper.cond."):
        return _conv_stack("conditioner_blocks.0.cond", name[len("upper.cond.") :], decoder=True, units=cond_units)
    if name.startswith("upper."):
        return "conditioner_blocks.0." + name[len("upper.") :]
    return _autoregressive_name(name, "prior")


def openai_names(module: nn.Module, cond_c_res: bool = True) -> dict[str, str | None]:
    """Our state-dict name -> OpenAI's, for a VQ-VAE or a prior; None for the tensors OpenAI does not store.

    `cond_c_res` is openai/jukebox's hyper-parameter of that name, which renames the upsampler's
    conditioner: its residual units are ``blocks.U`` when it is on (the released upsamplers and
    ``small_upsampler``), ``model.U`` otherwise (make_models.py: "have to keep this else names wrong").
    """
    is_vqvae = hasattr(module, "encoders")
    cond_units = "blocks" if cond_c_res else "model"
    names: dict[str, str | None] = {}
    for name in module.state_dict():
        if name.rsplit(".", 1)[-1] in DERIVED:
            names[name] = None
            continue
        theirs = _vqvae_name(name, module) if is_vqvae else _prior_name(name, cond_units)
        if theirs is None:
            raise CheckpointError(f"no OpenAI name is known for our tensor {name} of {type(module).__name__}")
        names[name] = theirs
    return names


def _transposed(name: str) -> bool:
    """OpenAI's Conv1D stores (in, out), our Linear (out, in)."""
    return bool(_LINEAR.search(name)) and name.endswith("weight") and ".cond." not in name


# ------------------------------------------------------------------------------- import / export
def to_ours(
    module: nn.Module, source: Mapping[str, torch.Tensor], where: str, cond_c_res: bool = True
) -> dict[str, torch.Tensor]:
    """OpenAI's tensors renamed and laid out for `module`; one error lists every tensor that does not fit.

    The tensors are views of `source` (a transposed one is copied only when it is written), and
    `module` may live on the meta device: only its names and shapes are read.
    """
    names, state = openai_names(module, cond_c_res), module.state_dict()
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    problems: list[str] = []
    for ours, theirs in names.items():
        if theirs is None:
            continue
        if theirs not in source:
            problems.append(f"missing {theirs} (for our {ours} {tuple(state[ours].shape)})")
            continue
        tensor = source[theirs].t() if _transposed(ours) else source[theirs]
        used.add(theirs)
        if tuple(tensor.shape) != tuple(state[ours].shape):
            problems.append(
                f"{theirs}: shape {tuple(source[theirs].shape)} does not fit our {ours} {tuple(state[ours].shape)}"
            )
            continue
        converted[ours] = tensor
    problems += [f"unexpected {name} {tuple(tensor.shape)}" for name, tensor in source.items() if name not in used]
    problems += _tied_problems(module, converted)
    if problems:
        heading = f"{where}: does not map onto {type(module).__name__} ({len(problems)} problems):"
        raise CheckpointError("\n  ".join([heading, *problems]))
    for ours, theirs in names.items():
        if theirs is None:
            converted[ours] = _derived(ours, converted, state)
    return converted


def _tied_problems(module: nn.Module, converted: Mapping[str, torch.Tensor]) -> list[str]:
    """A tied output matrix must arrive equal to the embedding it shares storage with."""
    x_out, x_emb = getattr(module, "x_out", None), getattr(module, "x_emb", None)
    if x_out is None or x_emb is None or x_out.weight is not x_emb.weight:
        return []
    out, emb = converted.get("x_out.weight"), converted.get("x_emb.weight")
    if out is None or emb is None or out.is_meta:  # missing (reported already), or shapes only: nothing to compare
        return []
    if not torch.equal(out, emb):
        return ["prior.x_out.weight differs from prior.x_emb.weight, but this model ties them (merged_decoder: false)"]
    return []


def _derived(name: str, converted: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A tensor OpenAI does not store (`DERIVED`), on the CPU whatever device `state` describes."""
    leaf, like = name.rsplit(".", 1)[-1], state[name]
    if leaf == "code_sum":
        return converted[name.replace("code_sum", "codebook")].clone()
    fill = 1 if leaf in ("code_count", "initialised") else 0
    return torch.full(tuple(like.shape), fill, dtype=like.dtype)


def to_openai(module: nn.Module, cond_c_res: bool = True) -> dict[str, torch.Tensor]:
    """`module`'s tensors under OpenAI's names and layouts (the derived ones left out)."""
    state = module.state_dict()
    return {
        theirs: (state[ours].t() if _transposed(ours) else state[ours]).contiguous()
        for ours, theirs in openai_names(module, cond_c_res).items()
        if theirs is not None
    }


# ----------------------------------------------------------------------------------- vocabularies
def read_ids(path: str | Path, kind: str) -> Vocabulary:
    """A ``name;id`` file as a vocabulary: several names may share an id; id 0 is ``unknown``.

    OpenAI's files also list empty names (``;0``), which are skipped, and a few names that
    differ only in punctuation; the first id of a name wins.
    """
    ids: dict[str, int] = {}
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, separator, index = line.rpartition(";")
        if not separator or not index.strip().isdigit():
            raise CheckpointError(f"{path}:{number}: expected 'name;id', got {line!r}")
        key = normalise_name(name)
        if key and key not in seen:
            seen.add(key)
            ids[name.strip()] = int(index)
    ids.setdefault(UNKNOWN, 0)
    try:
        return Vocabulary.from_dict(ids, kind=kind)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


# ------------------------------------------------------------------------------------ the import
def import_model(
    part: Literal["vqvae", "prior"],
    weights: str | Path,
    out_root: str | Path,
    hps: str | Mapping[str, Any] | None = None,
    ids_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert one openai/jukebox checkpoint into an export folder under `out_root`; the folder is returned.

    `hps` describes the model in openai/jukebox's own hyper-parameters: a description such as
    ``"vqvae,prior_1b_lyrics"`` (the released files are `RELEASED`) or
    ``"small_vqvae,small_prior,level=1,labels=false"`` (`setup_hparams`), or the values themselves;
    None takes those the checkpoint stores (openai/jukebox's training saves them as ``hps``). The
    folder is ``vqvae``, ``prior`` (the top level) or ``upsampler_level_L``: ``model.safetensors``,
    ``recipe.yaml`` and, for a prior with labels, ``vocabularies.json`` from the id files in `ids_dir`.

    The model is laid out on the meta device and the weights are copied out of the file one
    tensor at a time (`read_checkpoint`, `export`): the import needs about the file's size
    in memory at most. `dtype` casts the floating-point tensors (default: as stored).
    """
    source, stored = read_checkpoint(weights)
    if hps is None and stored is None:
        raise CheckpointError(
            f"{weights}: the file holds no hyper-parameters ('hps'); describe the model with --hps in openai/jukebox's "
            "names (e.g. --hps small_vqvae,small_prior,level=1,labels=false) or give --model for a released file"
        )
    description = "the hps stored in the checkpoint" if hps is None else hps if isinstance(hps, str) else "given hps"
    if hps is None:
        values = stored_hparams(stored)
    else:
        values = setup_hparams(hps) if isinstance(hps, str) else setup_hparams([], hps)
    spec = vqvae_spec(values) if part == "vqvae" else prior_spec(values)
    try:
        with torch.device("meta"):
            module = build(None, spec)
    except ValueError as exc:  # the components refuse values they cannot build (sizes that do not divide, ...)
        raise HparamsError(f"{description}: {exc}") from None
    state = to_ours(module, source, f"{weights} (described by {description})", cond_c_res=bool(values["cond_c_res"]))
    if getattr(module, "x_out", None) is not None and module.x_out.weight is module.x_emb.weight:
        state["x_out.weight"] = state["x_emb.weight"]  # tied: stored once
    vocabularies = None
    if part == "prior" and values["labels"]:
        version = "v3" if values["labels_v3"] else "v2"  # data/labels.py: the v3 id files with labels_v3
        if ids_dir is None:
            raise CheckpointError(
                f"{weights}: give --ids, the folder of {version}_artist_ids.txt and {version}_genre_ids.txt"
            )
        vocabularies = {}
        for kind, size in (("artists", module.labels.n_artists), ("genres", module.labels.n_genres)):
            vocabularies[kind] = read_ids(Path(ids_dir) / f"{version}_{kind[:-1]}_ids.txt", kind[:-1]).to_dict()
            largest = max(vocabularies[kind].values())
            if largest >= size:
                raise CheckpointError(f"{ids_dir}: {kind} id {largest} does not fit the model's {size} {kind}")
    recipe = {"model": {part: spec}, "imported": {"from": "openai", "hps": description, "file": str(weights)}}
    return export(state, Path(out_root) / folder_name(values, part), recipe, f"model.{part}", vocabularies, dtype)


def folder_name(hps: Mapping[str, Any], part: str) -> str:
    """Where an import of `part` described by `hps` goes: ``vqvae``, ``prior`` (top level) or ``upsampler_level_L``."""
    if part == "vqvae" or int(hps["level"]) == int(hps["levels"]) - 1:
        return part
    return f"upsampler_level_{int(hps['level'])}"
