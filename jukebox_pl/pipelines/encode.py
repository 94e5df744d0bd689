"""``pipeline: encode``: turn audio shards into code shards, the data the priors train on.

The priors of jukebox-pl train on codes encoded once (openai/jukebox runs the frozen VQ-VAE
encoder on audio at every prior step instead; encoding ahead saves that work). Every song
of each split is decoded whole, resampled to the VQ-VAE's rate, mixed to mono and encoded
at every level. Long songs are encoded in windows that carry real audio on both sides, so
the non-causal convolutions see the same neighbourhood as in one pass over the whole song;
only each window's centre codes are kept.

Output: code shards (their format lives in ``jukebox_pl.data.code_shards``), written and
resumed as the audio shards are (``jukebox_pl.data.shard_writer.start_or_resume``): a killed run
leaves only complete shards, and the same command continues where it stopped.

Example::

    from jukebox_pl.pipelines.encode import encode_dataset
    summary = encode_dataset("runs/tiny_demo/model", "data/demo/shards", "data/demo/codes")
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.checkpoints.export import load_codec
from jukebox_pl.data.audio import decode, mono, resample
from jukebox_pl.data.code_shards import FORMAT, MANIFEST, CodeLayout, code_manifest, code_sample
from jukebox_pl.data.shard_reader import load_manifest, shard_samples
from jukebox_pl.data.shard_writer import PROGRESS, parse_size, read_record, shard_files, shard_sinks, start_or_resume
from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext, resolve_device
from jukebox_pl.registry import register

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- the maths
def windows(length: int, window: int, context: int) -> list[tuple[int, int, int, int]]:
    """``(start, end, chunk_start, chunk_end)`` for each window of a `length`-sample song.

    Windows tile ``[0, length)``; a chunk is its window plus up to `context` samples of the
    song on each side.
    """
    return [
        (start, min(start + window, length), max(start - context, 0), min(start + window + context, length))
        for start in range(0, length, window)
    ]


def receptive_field(encoder: nn.Module) -> int:
    """Input samples that one output of a stack of 1-D convolutions depends on (their order is the data's).

    Residual units count as if their branch were in series, which is exact for the
    receptive field.
    """
    field, jump = 1, 1
    for layer in encoder.modules():
        if isinstance(layer, nn.Conv1d):
            field += (layer.kernel_size[0] - 1) * layer.dilation[0] * jump
            jump *= layer.stride[0]
    return field


@torch.no_grad()
def encode_song(vqvae: nn.Module, audio: torch.Tensor, window: int, context: int) -> list[torch.Tensor]:
    """Codes ``(ceil(T / hop),)`` per level of one song ``(channels, T)``, encoded window by window.

    `window` and `context` are samples, multiples of every hop length (their lcm: the top hop for hops 8/32/128),
    so that every level's codes line up. When `context` covers the encoders' reach (half their receptive field)
    the result equals ``vqvae.encode`` of the whole song, code for code: every chunk starts on the same stride grid
    as the whole song, and the last chunk ends where the song does, so it is padded the same way.
    """
    hops = list(vqvae.hop_lengths)
    align = math.lcm(*hops)
    if window <= 0 or window % align or context < 0 or context % align:
        raise ValueError(f"window {window} and context {context} must be multiples of {align} (window > 0)")
    length = audio.shape[-1]
    pieces: list[list[torch.Tensor]] = [[] for _ in hops]
    for start, end, chunk_start, chunk_end in windows(length, window, context):
        chunk_codes = vqvae.encode(audio[None, :, chunk_start:chunk_end])  # per level (1, ceil(chunk / hop))
        for level, (hop, codes) in enumerate(zip(hops, chunk_codes, strict=True)):
            first = (start - chunk_start) // hop
            count = -(-end // hop) - start // hop
            pieces[level].append(codes[0, first : first + count].cpu())
    return [torch.cat(level) if level else torch.zeros(0, dtype=torch.long) for level in pieces]


def _vqvae_fingerprint(vqvae: nn.Module) -> str:
    """A hash of the weights and the code layout: the same model gives the same codes."""
    digest = hashlib.sha256(
        json.dumps(
            [type(vqvae).__name__, vqvae.sample_rate, list(vqvae.hop_lengths), list(vqvae.codebook_sizes)]
        ).encode()
    )
    for name, tensor in sorted(vqvae.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _data_fingerprint(manifest: Mapping[str, Any]) -> str:
    content = {key: value for key, value in manifest.items() if key != "created"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _start_or_resume(
    out_dir: Path, fingerprint: dict[str, Any], sources: dict[str, str], resume: bool
) -> dict[str, Any]:
    """The progress to continue from: kept when the inputs match, refused when not; deleted if not `resume`."""
    manifest_file = out_dir / MANIFEST
    previous_manifest = read_record(manifest_file)
    if previous_manifest is not None and previous_manifest.get("format") != FORMAT:
        raise JukeboxError(
            f"{manifest_file}: {out_dir} holds a {previous_manifest.get('format')!r} dataset, not codes; "
            "choose another `out` folder"
        )
    previous = read_record(out_dir / PROGRESS)
    if previous is not None and previous.get("format") != FORMAT:
        raise JukeboxError(f"{out_dir / PROGRESS}: not written by the encode pipeline; choose another `out` folder")
    recorded = previous or previous_manifest
    if recorded is None and shard_files(out_dir):
        raise JukeboxError(
            f"{out_dir} holds shards that the encode pipeline did not record ({shard_files(out_dir)[0].name}, ...); "
            "choose another `out` folder"
        )

    def refuse_or_start_over(recorded: dict[str, Any]) -> None:
        if resume and recorded.get("fingerprint") != fingerprint:
            old = recorded.get("fingerprint") or {}
            changed = [part for part in ("vqvae", "data", "options") if old.get(part) != fingerprint[part]]
            # The progress file keeps the sources; a manifest has them at its top level.
            was = {**recorded.get("sources", recorded), "options": old.get("options")}
            raise JukeboxError(
                f"{out_dir} holds codes made from a different "
                + " and ".join(f"{part} (before: {was.get(part)}; now: {sources[part]})" for part in changed)
                + "; refusing to mix codes: set resume=false to delete them and start over, or choose another `out`"
            )
        removed = shard_files(out_dir)
        for path in [*removed, manifest_file, out_dir / PROGRESS]:
            path.unlink(missing_ok=True)
        logger.info(f"starting over: removed {len(removed)} shards of the previous encoding in {out_dir}")

    if recorded is not None and (previous is None or not resume):  # codes that no progress record continues
        refuse_or_start_over(recorded)
    return start_or_resume(out_dir, fingerprint, refuse_or_start_over, format=FORMAT, sources=sources)


# ---------------------------------------------------------------------- the whole job
def encode_dataset(
    vqvae: str | Path,
    data: str | Path,
    out: str | Path,
    splits: Sequence[str] = ("train", "validation"),
    window_seconds: float = 30.0,
    context_seconds: float = 2.0,
    device: str = "cpu",
    shard_size: str | int = "256MB",
    resume: bool = True,
) -> dict[str, Any]:
    """Encode every song of `splits` of the audio shards in `data` into code shards in `out`.

    Returns a summary; the manifest is written to ``out/dataset.json``.
    """
    started = time.perf_counter()
    data_dir, out_dir = Path(data), Path(out)
    splits = list(dict.fromkeys(splits))  # a split named twice is encoded once
    if not splits:
        raise JukeboxError("encode: give at least one split")
    if window_seconds <= 0 or context_seconds < 0:
        raise JukeboxError(
            f"encode: window_seconds must be > 0 and context_seconds >= 0, not {window_seconds} and {context_seconds}"
        )
    max_bytes = parse_size(shard_size)
    audio_manifest = load_manifest(data_dir)
    if out_dir.resolve() == data_dir.resolve():
        raise JukeboxError(f"encode: out {out_dir} is the audio dataset itself; write the codes to another folder")
    unknown = [split for split in splits if split not in audio_manifest["shards"]]
    if unknown:
        raise JukeboxError(
            f"encode: {data_dir} has no split {', '.join(map(repr, unknown))}; "
            f"it has {', '.join(map(repr, audio_manifest['shards']))}"
        )
    target = resolve_device(device, "encode")
    model = load_codec(vqvae, "encode: vqvae", "encode mixes songs to mono").to(target)
    layout = CodeLayout(int(model.sample_rate), tuple(model.hop_lengths), tuple(model.codebook_sizes))
    sample_rate, hops = layout.sample_rate, list(layout.hop_lengths)
    align = math.lcm(*hops)
    # Window edges on the top-hop grid; at least one top hop per window.
    window = max(align, int(window_seconds * sample_rate) // align * align)
    context = math.ceil(context_seconds * sample_rate / align) * align
    options = {"window_samples": window, "context_samples": context}
    reach = max((receptive_field(encoder) // 2 for encoder in getattr(model, "encoders", ())), default=0)
    if context < reach:
        logger.warning(
            f"warning: context_seconds={context_seconds} is narrower than the encoders' reach "
            f"({reach / sample_rate:.2f} s each side): in songs longer than a window, codes next to window edges "
            "differ from whole-song encoding"
        )
    fingerprint = {"vqvae": _vqvae_fingerprint(model), "data": _data_fingerprint(audio_manifest), "options": options}

    sources = {"vqvae": str(vqvae), "data": str(data_dir), "options": str(options)}
    progress = _start_or_resume(out_dir, fingerprint, sources, resume)
    done = {song["key"] for shard in progress["shards"] if shard["split"] in splits for song in shard["songs"]}
    total_songs = sum(shard["songs"] for split in splits for shard in audio_manifest["shards"][split])
    if len(done) < total_songs:
        (out_dir / MANIFEST).unlink(missing_ok=True)  # present only when the codes are complete
        logger.info(
            f"encoding {total_songs - len(done)} of {total_songs} songs with {vqvae} "
            f"({window / sample_rate:.1f} s windows, {context / sample_rate:.2f} s of context) into {out_dir}"
        )

    sinks = shard_sinks(out_dir, progress, splits, max_bytes)
    encoded_songs, encoded_seconds = 0, 0.0
    for split, sink in sinks.items():
        for key, metadata, audio, rate in _songs(data_dir, audio_manifest["shards"][split], done):
            audio = mono(resample(audio, rate, sample_rate))  # (T,), as the VQ-VAE trained on
            song = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(target)  # (1, T)
            codes = encode_song(model, song, window, context)
            length = int(song.shape[-1])
            summary = {"key": key, "length": length, "codes": [int(c.numel()) for c in codes]}
            sink.add(key, code_sample(codes, layout, {**metadata, "source_sample_rate": rate}, length), summary)
            encoded_songs += 1
            encoded_seconds += song.shape[-1] / sample_rate
            if encoded_songs % 25 == 0:
                pace = encoded_seconds / (time.perf_counter() - started)
                logger.info(f"encoded {len(done) + encoded_songs}/{total_songs} songs ({pace:.1f}x real time)")
        sink.finish()

    manifest = code_manifest(progress, audio_manifest, splits, layout, vqvae, data_dir, window_seconds, context_seconds)
    # Rewritten only when more than its date changes: what reads the codes (the demo's evidence stage) then
    # sees the same files as before.
    earlier = read_record(out_dir / MANIFEST) or {}
    if {**earlier, "created": None} != {**manifest, "created": None}:
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    elapsed = time.perf_counter() - started
    return {
        "songs": {split: manifest["counts"][split] for split in splits},
        "audio_seconds": manifest["total_seconds"],
        "codes": [sum(manifest["codes"][split][level] for split in splits) for level in range(len(hops))],
        "shards": sum(len(manifest["shards"][split]) for split in splits),
        "encoded": encoded_songs,
        REUSED: encoded_songs == 0,
        "elapsed_s": round(elapsed, 2),
        "realtime_factor": round(encoded_seconds / elapsed, 1),
        "out": str(out_dir),
    }


def _songs(
    data_dir: Path, shards: Sequence[Mapping[str, Any]], done: set[str]
) -> Iterator[tuple[str, dict[str, Any], np.ndarray, int]]:
    """(key, metadata, audio (frames, channels), rate) of every song in `shards` not in `done`."""
    for shard in shards:
        path = data_dir / shard["name"]
        if not path.is_file():
            raise JukeboxError(f"{path}: listed in {data_dir / 'dataset.json'} but missing; rebuild the audio shards")
        for where, sample, metadata in shard_samples([str(path)], (), {str(path): shard.get("songs")}):
            key = sample["__key__"]
            if key in done:
                continue
            audio_field = next((name for name in ("flac", "wav") if name in sample), None)
            if audio_field is None:
                raise JukeboxError(f"{where}: no audio member ({sorted(sample)})")
            audio, rate = decode(sample[audio_field], f"{where}.{audio_field}")
            yield key, metadata, audio, rate


@register("pipeline", "encode")
@dataclass
class EncodePipeline(Pipeline):
    """Encode audio shards into code shards at every VQ-VAE level, for prior training (resumable)."""

    vqvae: str
    data: str
    out: str
    splits: tuple[str, ...] = ("train", "validation")
    window_seconds: float = 30.0
    context_seconds: float = 2.0
    device: str = "cpu"
    shard_size: str = "256MB"
    resume: bool = True

    def run(self, context: RunContext) -> Mapping[str, Any]:
        return encode_dataset(**asdict(self))
