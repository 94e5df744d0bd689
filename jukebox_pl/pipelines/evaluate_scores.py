"""The crops the ``evaluate`` pipeline scores and the module that scores them.

`choose_crops` picks the same crops of a split for every checkpoint (seeded); `SpectralScorer`
encodes and decodes them through each level of a VQ-VAE under Lightning's ``predict`` (so that
it runs on any device and across ranks) and accumulates the metrics of `LevelScores`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from jukebox_pl.data.audio import decode, mono, resample
from jukebox_pl.data.shard_reader import split_samples
from jukebox_pl.distributed import EvenBatches, PaddingBatch
from jukebox_pl.errors import JukeboxError
from jukebox_pl.metrics.codebook import CodebookUsage, bitrate_kbps
from jukebox_pl.metrics.spectral import (
    SISDR,
    LogMelDistance,
    MultiResolutionSTFT,
    SpectralConvergence,
    WaveformL1,
    to_db,
)

# Per-crop columns of report.csv, each from the per-item function of the same name.
ITEM_RESULTS = (
    "spectral_convergence",
    "spectral_convergence_db",
    "multi_resolution_stft",
    "log_mel_distance",
    "si_sdr_db",
    "waveform_l1",
)


# ---------------------------------------------------------------------------- the crops
@dataclass(frozen=True)
class Crop:
    """One benchmark crop, in seconds so that it means the same audio at every sample rate."""

    song: str  # the song's key in the shards
    offset_seconds: float
    seconds: float

    def cut(self, mono: np.ndarray, sample_rate: int, hop_length: int) -> np.ndarray:
        """This crop of a song already at `sample_rate`: from sample round(offset x rate), floor(seconds x rate)
        samples long (fewer at the song's end), trimmed down to a multiple of `hop_length`."""
        start = round(self.offset_seconds * sample_rate)
        piece = mono[start : start + math.floor(self.seconds * sample_rate)]
        return piece[: len(piece) // hop_length * hop_length]


def choose_crops(songs: Sequence[tuple[str, float]], crops: int, crop_seconds: float, seed: int) -> list[Crop]:
    """`crops` crops of (song key, seconds) `songs`, spread over the songs, the same for the same arguments.

    Songs are taken in a seeded order, cycling when there are more crops than songs; each crop
    is `crop_seconds` long (the whole song when it is shorter) at a seeded offset, in
    milliseconds, that keeps it inside the song.
    """
    if not songs:
        raise ValueError("no songs to take crops from")
    ordered = sorted(songs)  # the shard layout must not change the crops
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ordered))
    chosen = []
    for index in range(crops):
        key, song_seconds = ordered[order[index % len(ordered)]]
        seconds = min(crop_seconds, song_seconds)
        offset = math.floor(rng.uniform(0.0, song_seconds - seconds) * 1000) / 1000
        chosen.append(Crop(key, offset, seconds))
    return chosen


def song_lengths(data: Path, split: str) -> list[tuple[str, float]]:
    """(key, seconds) of every song of `split`, read from the FLAC headers only."""
    infos = ((sample["__key__"], sf.info(io.BytesIO(sample["flac"]))) for sample in split_samples(data, split))
    return [(key, info.frames / info.samplerate) for key, info in infos]


def decode_songs(data: Path, split: str, keys: set[str]) -> dict[str, tuple[np.ndarray, int]]:
    """(frames, channels) float32 audio and its rate for each song of `split` named in `keys`."""
    return {s["__key__"]: decode(s["flac"]) for s in split_samples(data, split) if s["__key__"] in keys}


def mono_at(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(frames, channels) audio resampled (soxr, as the DataModule does) then averaged to mono: (frames,)."""
    return mono(resample(audio, from_rate, to_rate))


# ---------------------------------------------------------------------------- the scores
class LevelScores(nn.Module):
    """Every metric of one VQ-VAE level, accumulated over batches of crops (and reduced over ranks by
    torchmetrics in `compute`)."""

    def __init__(
        self,
        sample_rate: int,
        codebook_size: int,
        hop_length: int,
        mr_stft: Mapping[str, Any],
        log_mel: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.sample_rate, self.codebook_size, self.hop_length = sample_rate, codebook_size, hop_length
        # The per-crop metrics by their result's name, in report.json's order.
        self.metrics = nn.ModuleDict(
            {
                "spectral_convergence": SpectralConvergence(),
                "multi_resolution_stft": MultiResolutionSTFT(**mr_stft),
                "log_mel_distance": LogMelDistance(sample_rate, **log_mel),
                "si_sdr_db": SISDR(),
                "waveform_l1": WaveformL1(),
            }
        )
        self.codebook = CodebookUsage(codebook_size)

    def update(self, reconstruction: Tensor, target: Tensor, codes: Tensor) -> dict[str, list[float]]:
        """Add a batch, (B, 1, T) audio and (B, T / hop) codes; return its per-crop values for the CSV."""
        for metric in self.metrics.values():
            metric.update(reconstruction, target)  # each computes its per-crop values once
        self.codebook.update(codes)
        per_item = {key: metric.last_values for key, metric in self.metrics.items()}
        per_item["spectral_convergence_db"] = to_db(per_item["spectral_convergence"])
        return {key: values.double().cpu().tolist() for key, values in per_item.items()}

    def compute(self) -> dict[str, float | int | None]:
        usage = self.codebook.compute()
        return {
            "spectral_convergence_db": _finite(to_db(self.metrics["spectral_convergence"].compute())),
            **{key: _finite(metric.compute()) for key, metric in self.metrics.items()},
            "entropy_bits": _finite(usage["entropy_bits"]),
            "perplexity": _finite(usage["perplexity"]),
            "used_codes": int(usage["used"]),
            "dead_codes": int(usage["dead"]),
            "codebook_size": self.codebook_size,
            "hop_length": self.hop_length,
            "bitrate_kbps": bitrate_kbps(self.codebook_size, self.hop_length, self.sample_rate),
        }


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _finite(value: Tensor | float) -> float | None:
    """A float for JSON; None where it is infinite or NaN (SC of a perfect reconstruction is -inf dB)."""
    number = float(value) + 0.0  # + 0.0 turns -0.0 (the entropy of one code) into 0.0
    return number if math.isfinite(number) else None


@dataclass
class CheckpointScores:
    """One checkpoint's part of the report."""

    results: dict[str, dict[str, Any]]  # level -> metric -> value
    rows: list[dict[str, Any]]  # per level and crop: the CSV's per-crop values
    plotted: list[dict[str, Tensor]]  # per plotted crop: row name -> mono audio
    log_mel: dict[str, Any]  # the log-mel scales and bands used at this checkpoint's rate


def _batches(crops: Sequence[np.ndarray], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Runs of up to `batch_size` consecutive crops of equal length, as ((B,) crop indices, (B, 1, T) audio)."""
    start = 0
    while start < len(crops):
        end = start + 1
        while end < len(crops) and end - start < batch_size and len(crops[end]) == len(crops[start]):
            end += 1
        yield torch.arange(start, end), torch.from_numpy(np.stack(crops[start:end]))[:, None]
        start = end


class SpectralScorer(pl.LightningModule):
    """One VQ-VAE's levels scored on the benchmark crops by ``Trainer.validate``.

    Rank r of a world of W scores batches r, r + W, ... of the crops; `gather` then reduces the
    metrics across ranks (torchmetrics sums their states) and collects every crop's values and
    the plotted audio, so that each rank holds the whole result and rank 0 writes it once.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: list[np.ndarray],
        batch_size: int,
        plot_items: int,
        mr_stft: Mapping[str, Any],
        log_mel: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.model = model
        rate = int(model.sample_rate)
        try:
            self.scores = nn.ModuleList(
                LevelScores(rate, int(size), int(hop), mr_stft, log_mel)
                for size, hop in zip(model.codebook_sizes, model.hop_lengths, strict=True)
            )
        except ValueError as exc:  # a log-mel band that does not fit this sample rate
            raise JukeboxError(f"evaluate: log_mel at {rate} Hz: {exc}") from None
        self.inputs, self.batch_size, self.plot_items = inputs, batch_size, plot_items
        self.per_crop: dict[int, dict[int, dict[str, float]]] = {}  # crop -> level -> this rank's values
        self.plotted: dict[int, dict[str, Tensor]] = {}  # crop -> row name -> mono audio, for the first crops

    def val_dataloader(self) -> DataLoader | EvenBatches:
        batches = list(_batches(self.inputs, self.batch_size))
        mine = DataLoader(batches[self.global_rank :: self.trainer.world_size], batch_size=None)
        # As many steps on every rank, also where a rank has no batch (fewer batches than ranks): padding then.
        return EvenBatches(mine, self.trainer.strategy) if self.trainer.world_size > 1 else mine

    def validation_step(self, batch: tuple[Tensor, Tensor] | PaddingBatch, batch_index: int) -> None:
        if isinstance(batch, PaddingBatch):
            return  # a step that keeps this rank in step with the others; it scores nothing
        indices, audio = batch
        codes = self.model.encode(audio)
        for level, level_scores in enumerate(self.scores):
            reconstruction = self.model.decode(codes[level], level)[..., : audio.shape[-1]]
            values = level_scores.update(reconstruction, audio, codes[level])
            for position, index in enumerate(indices.tolist()):
                self.per_crop.setdefault(index, {})[level] = {key: values[key][position] for key in ITEM_RESULTS}
                if index < self.plot_items:
                    row = self.plotted.setdefault(index, {"input": audio[position, 0].float().cpu()})
                    row[f"level {level}"] = reconstruction[position, 0].float().cpu()

    def gather(self) -> CheckpointScores:
        """The whole result, on every rank: a collective call when torch.distributed is running."""
        results = {str(level): scores.compute() for level, scores in enumerate(self.scores)}
        per_crop, plotted = dict(self.per_crop), dict(self.plotted)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (per_crop, plotted))
            for rank_crops, rank_plotted in parts:
                per_crop.update(rank_crops)
                plotted.update(rank_plotted)
        missing = sorted(set(range(len(self.inputs))) - set(per_crop))
        if missing:
            raise JukeboxError(f"evaluate: crops {missing} were not scored by any rank")
        rows = [
            {"level": level, "crop": index, **per_crop[index][level]}
            for level in range(len(self.scores))
            for index in range(len(self.inputs))
        ]
        return CheckpointScores(
            results=results,
            rows=rows,
            plotted=[plotted[index] for index in sorted(plotted)],
            log_mel=plain_json(self.scores[0].metrics["log_mel_distance"].settings),
        )


def plain_json(value: Any) -> Any:
    """Tuples as lists, for JSON."""
    return json.loads(json.dumps(value))
