"""``pipeline: evaluate``: the spectral reconstruction benchmark, VQ-VAE checkpoints side by side.

Every checkpoint sees the same fixed crops of one split of an audio-shard dataset, chosen
from `seed` and recorded in seconds; each checkpoint gets them resampled to its own rate,
mixed to mono and trimmed to a multiple of its top hop length. Every level encodes and
decodes the crops on its own and is scored against the input::

    spectral convergence (Jukebox's, reported as 20 log10 of the mean linear value), auraloss's
    multi-resolution STFT loss, multi-scale log-mel distance, SI-SDR, waveform L1,
    codebook usage over all crops, and the level's bitrate

The run directory gets ``report.json`` (settings and results), ``report.csv`` (every
checkpoint x level x crop), ``report.md`` (a table per level, one column per checkpoint)
and ``spectrograms/item{i}_{checkpoint}.png``. See docs/benchmarking.md.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from jukebox_pl.atomic import atomic_write_bytes, atomic_write_text
from jukebox_pl.data.audio import decode, mono, resample
from jukebox_pl.data.shard_reader import split_samples
from jukebox_pl.distributed import EvenBatches, PaddingBatch
from jukebox_pl.errors import JukeboxError, did_you_mean
from jukebox_pl.metrics.codebook import CodebookUsage, bitrate_kbps
from jukebox_pl.metrics.spectral import (
    LOG_MEL_N_FFTS,
    LOG_MEL_N_MELS,
    SC_HOP_LENGTH,
    SC_N_FFT,
    SC_WIN_LENGTH,
    SISDR,
    LogMelDistance,
    MultiResolutionSTFT,
    SpectralConvergence,
    WaveformL1,
    to_db,
)
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext, inputs_fingerprint
from jukebox_pl.recipes import KwargsOf
from jukebox_pl.registry import register

logger = logging.getLogger(__name__)
FORMAT = "jukebox-pl-eval-spectral/1"
VQVAE_ATTRIBUTES = ("encode", "decode", "hop_lengths", "codebook_sizes", "sample_rate", "levels")
MR_STFT_KEYS = ("fft_sizes", "hop_sizes", "win_lengths")
LOG_MEL_KEYS = ("n_ffts", "n_mels", "f_min", "f_max")
# Trainer arguments the pipeline owns.
_TRAINER_OWNED = ("logger", "default_root_dir", "enable_checkpointing", "enable_model_summary",
                  "use_distributed_sampler", "callbacks")  # fmt: skip


@dataclass(frozen=True)
class MetricInfo:
    """How a result is named, shown and read."""

    key: str  # in report.json and report.csv
    label: str  # in report.md
    direction: str  # "lower", "higher" or "" (neither: a cost or a count)
    fmt: str  # format spec for report.md
    meaning: str  # the legend


# The rows of report.md, in order; every key is a result of every level.
LEVEL_RESULTS = (
    MetricInfo("spectral_convergence_db", "spectral convergence (dB)", "lower", ".2f",
               f"Jukebox's spectral convergence ||S - Ŝ||_F / ||S||_F of STFT magnitudes (n_fft {SC_N_FFT}, hop "
               f"{SC_HOP_LENGTH}, window {SC_WIN_LENGTH}), averaged linearly over crops, then 20·log10 of that mean."),
    MetricInfo("spectral_convergence", "spectral convergence (linear)", "lower", ".4f",
               "The same mean before the conversion to dB."),
    MetricInfo("multi_resolution_stft", "multi-resolution STFT", "lower", ".4f",
               "auraloss's MultiResolutionSTFTLoss: spectral convergence plus log-magnitude L1, averaged over the "
               "resolutions below, per crop, then over crops."),
    MetricInfo("log_mel_distance", "log-mel distance", "lower", ".4f",
               "Mean |log(mel + 1e-5) difference| over Slaney mel bands, averaged over the STFT scales below."),
    MetricInfo("si_sdr_db", "SI-SDR (dB)", "higher", ".2f",
               "Scale-invariant signal-to-distortion ratio of the zero-mean waveforms, in float64, averaged over "
               "crops. Phase-sensitive: a codec can sound right and still score low."),
    MetricInfo("waveform_l1", "waveform L1", "lower", ".5f", "Mean absolute sample difference."),
    MetricInfo("entropy_bits", "codebook entropy (bits)", "higher", ".2f",
               "Entropy of the code histogram over all crops; at most log2(codebook size), reached when every "
               "code is used equally often."),
    MetricInfo("perplexity", "codebook perplexity", "higher", ".1f",
               "2 ** entropy: the number of codes in effective use."),
    MetricInfo("used_codes", "codes used", "higher", "d", "Codes seen at least once over all crops."),
    MetricInfo("dead_codes", "dead codes", "lower", "d", "Codes never seen over all crops."),
    MetricInfo("codebook_size", "codebook size", "", "d", "Number of codes of the level."),
    MetricInfo("hop_length", "hop length (samples)", "", "d", "Audio samples per code."),
    MetricInfo("bitrate_kbps", "bitrate (kbps)", "", ".2f",
               "sample_rate / hop_length codes per second of log2(codebook size) bits each: the price, not a score."),
)  # fmt: skip

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
    lengths = []
    for sample in split_samples(data, split):
        info = sf.info(io.BytesIO(sample["flac"]))
        lengths.append((sample["__key__"], info.frames / info.samplerate))
    return lengths


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
        self.spectral_convergence = SpectralConvergence()
        self.multi_resolution_stft = MultiResolutionSTFT(**mr_stft)
        self.log_mel_distance = LogMelDistance(sample_rate, **log_mel)
        self.waveform_l1 = WaveformL1()
        self.si_sdr = SISDR()
        self.codebook = CodebookUsage(codebook_size)

    def update(self, reconstruction: Tensor, target: Tensor, codes: Tensor) -> dict[str, list[float]]:
        """Add a batch, (B, 1, T) audio and (B, T / hop) codes; return its per-crop values for the CSV."""
        metrics = {
            "spectral_convergence": self.spectral_convergence,
            "multi_resolution_stft": self.multi_resolution_stft,
            "log_mel_distance": self.log_mel_distance,
            "si_sdr_db": self.si_sdr,
            "waveform_l1": self.waveform_l1,
        }
        for metric in metrics.values():
            metric.update(reconstruction, target)  # each computes its per-crop values once
        self.codebook.update(codes)
        sc = self.spectral_convergence.last_values
        per_item = {
            "spectral_convergence": sc,
            "spectral_convergence_db": to_db(sc),
            **{key: metric.last_values for key, metric in metrics.items() if key != "spectral_convergence"},
        }
        return {key: values.double().cpu().tolist() for key, values in per_item.items()}

    def compute(self) -> dict[str, float | int | None]:
        sc = self.spectral_convergence.compute()
        usage = self.codebook.compute()
        return {
            "spectral_convergence_db": _finite(to_db(sc)),
            "spectral_convergence": _finite(sc),
            "multi_resolution_stft": _finite(self.multi_resolution_stft.compute()),
            "log_mel_distance": _finite(self.log_mel_distance.compute()),
            "si_sdr_db": _finite(self.si_sdr.compute()),
            "waveform_l1": _finite(self.waveform_l1.compute()),
            "entropy_bits": _finite(usage["entropy_bits"]),
            "perplexity": _finite(usage["perplexity"]),
            "used_codes": int(usage["used"]),
            "dead_codes": int(usage["dead"]),
            "codebook_size": self.codebook_size,
            "hop_length": self.hop_length,
            "bitrate_kbps": bitrate_kbps(self.codebook_size, self.hop_length, self.sample_rate),
        }


def _rounded(value: float | None) -> float | None:
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
            log_mel=_plain(self.scores[0].log_mel_distance.settings),
        )


# ---------------------------------------------------------------------------- the pipeline
@register("pipeline", "evaluate")
class EvaluatePipeline(Pipeline):
    """Score VQ-VAE checkpoints level by level on the same fixed crops: report.json/csv/md + spectrograms."""

    def __init__(
        self,
        checkpoints: dict[str, str],
        data: str,
        split: str = "validation",
        crops: int = 16,
        crop_seconds: float = 2.0,
        seed: int = 0,
        batch_size: int = 4,
        trainer: Annotated[Mapping[str, Any], KwargsOf("pytorch_lightning:Trainer", _TRAINER_OWNED)] | None = None,
        plot_items: int = 2,
        reuse: bool = True,
        multi_resolution_stft: dict[str, list[int]] | None = None,
        log_mel: dict[str, Any] | None = None,
    ) -> None:
        if not checkpoints:
            raise JukeboxError("evaluate: checkpoints: give at least one, as `column name: export folder or .ckpt`")
        if crops < 1 or crop_seconds <= 0 or batch_size < 1 or plot_items < 0:
            raise JukeboxError(
                f"evaluate: need crops >= 1, crop_seconds > 0, batch_size >= 1 and plot_items >= 0; got crops={crops}, "
                f"crop_seconds={crop_seconds}, batch_size={batch_size}, plot_items={plot_items}"
            )
        self.checkpoints = {str(name): str(path) for name, path in checkpoints.items()}
        self.data, self.split, self.crops, self.crop_seconds = Path(data), split, crops, float(crop_seconds)
        self.seed, self.batch_size, self.plot_items, self.reuse = seed, batch_size, plot_items, reuse
        self.trainer = {"accelerator": "cpu", "devices": 1, **(trainer or {})}
        self.mr_stft = _overrides("multi_resolution_stft", multi_resolution_stft, MR_STFT_KEYS)
        try:  # checks the resolutions now, before any audio is read
            self.mr_stft_settings = _plain(MultiResolutionSTFT(**self.mr_stft).settings)
        except ValueError as exc:
            raise JukeboxError(f"evaluate: multi_resolution_stft: {exc}") from None
        self.log_mel = _overrides("log_mel", log_mel, LOG_MEL_KEYS)
        # torch.stft pads each end by n_fft // 2 by reflection, which needs a longer input.
        self.longest_fft = max(
            SC_N_FFT, *self.mr_stft_settings["fft_sizes"], *self.log_mel.get("n_ffts", LOG_MEL_N_FFTS)
        )

    def run(self, context: RunContext) -> Mapping[str, Any]:
        models = {name: _load_vqvae(name, path) for name, path in self.checkpoints.items()}
        trainer = pl.Trainer(
            default_root_dir=context.run_dir,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,  # each rank takes its own batches of crops
            **self.trainer,
        )
        crops = choose_crops(song_lengths(self.data, self.split), self.crops, self.crop_seconds, self.seed)
        settings = self._settings(crops, models)
        fingerprint = inputs_fingerprint({"format": FORMAT, **settings}, self.checkpoints)
        earlier = _earlier_report(context.run_dir, fingerprint) if self.reuse else None
        if earlier is not None:
            logger.info(
                f"evaluate: {context.run_dir / 'report.json'} is up to date (same settings and weights); reused"
            )
            return {**_summary(context.run_dir, earlier["results"], len(crops)), REUSED: True}
        songs = decode_songs(self.data, self.split, {crop.song for crop in crops})
        results: dict[str, dict[str, dict[str, Any]]] = {}
        rows: list[dict[str, Any]] = []
        for name, model in models.items():
            if trainer.is_global_zero:
                logger.info(f"evaluate: {name} ({model.levels} levels, {model.sample_rate} Hz) on {len(crops)} crops")
            inputs = _crops_for(model, name, crops, songs, self.longest_fft)
            settings["checkpoints"][name]["crop_samples"] = [len(crop) for crop in inputs]
            scored = self._score(trainer, model, inputs)
            settings["checkpoints"][name]["log_mel"] = scored.log_mel
            results[name] = scored.results
            rows += [{"checkpoint": name, **row} for row in scored.rows]
            for item, audio_rows in enumerate(scored.plotted):
                if trainer.is_global_zero:
                    self._plot(context.run_dir, name, item, crops[item], audio_rows, model.sample_rate)
        report = {"format": FORMAT, "fingerprint": fingerprint, "settings": settings, "results": results}
        if trainer.is_global_zero:  # every rank holds the gathered results; one writes them
            atomic_write_text(context.run_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
            atomic_write_text(context.run_dir / "report.csv", _csv(rows, crops))
            atomic_write_text(context.run_dir / "report.md", markdown_report(report))
        return _summary(context.run_dir, results, len(crops))

    def _settings(self, crops: list[Crop], models: Mapping[str, nn.Module]) -> dict[str, Any]:
        log_mel_defaults = {"n_ffts": list(LOG_MEL_N_FFTS), "n_mels": LOG_MEL_N_MELS, "f_min": 0.0, "f_max": None}
        return {
            "data": str(self.data),
            "split": self.split,
            "seed": self.seed,
            "crop_seconds": self.crop_seconds,
            "crops": [{"index": index, **asdict(crop)} for index, crop in enumerate(crops)],
            "crop_rule": (
                "each song is resampled (soxr HQ) to the checkpoint's rate and averaged to mono; a crop starts at "
                "sample round(offset_seconds * rate), is floor(seconds * rate) samples long and is trimmed to a "
                "multiple of the checkpoint's top hop length"
            ),
            "metrics": {
                "spectral_convergence": {
                    **SpectralConvergence().settings,
                    "reported_as": "20 * log10(mean over crops of the linear spectral convergence)",
                },
                "multi_resolution_stft": {
                    **self.mr_stft_settings,
                    "implementation": "auraloss.freq.MultiResolutionSTFTLoss, defaults otherwise",
                },
                # f_max None is each checkpoint's Nyquist frequency: see checkpoints[name].log_mel.
                "log_mel_distance": {**log_mel_defaults, **_plain(self.log_mel)},
                "si_sdr": {"zero_mean": True, "dtype": "float64"},
            },
            "checkpoints": {
                name: {
                    "path": self.checkpoints[name],
                    "component": type(model).__name__,
                    "sample_rate": int(model.sample_rate),
                    "hop_lengths": [int(h) for h in model.hop_lengths],
                    "codebook_sizes": [int(s) for s in model.codebook_sizes],
                }
                for name, model in models.items()
            },
        }

    def _score(self, trainer: pl.Trainer, model: nn.Module, inputs: list[np.ndarray]) -> CheckpointScores:
        scorer = SpectralScorer(model, inputs, self.batch_size, self.plot_items, self.mr_stft, self.log_mel)
        trainer.validate(scorer, verbose=False)
        scored = scorer.gather()
        model.cpu()
        return scored

    def _plot(self, run_dir: Path, name: str, item: int, crop: Crop, rows: dict[str, Tensor], rate: int) -> None:
        from jukebox_pl.metrics.plots import spectrogram_figure

        title = f"{name}: {crop.song} at {crop.offset_seconds:.3f} s"
        png = spectrogram_figure(rows, rate, title=title)
        atomic_write_bytes(run_dir / "spectrograms" / f"item{item}_{_file_name(name)}.png", png)


# ---------------------------------------------------------------------------- helpers
def _summary(run_dir: Path, results: Mapping[str, Any], crops: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"report": str(run_dir / "report.md"), "crops": crops}
    for name, levels in results.items():
        summary[f"{name} sc_db"] = {f"l{level}": _rounded(r["spectral_convergence_db"]) for level, r in levels.items()}
    return summary


def _earlier_report(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The report a previous run wrote for the same fingerprint, if all of it is there."""
    if not all((run_dir / name).is_file() for name in ("report.json", "report.csv", "report.md")):
        return None
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return report if report.get("fingerprint") == fingerprint else None


def _overrides(section: str, given: Mapping[str, Any] | None, valid: Sequence[str]) -> dict[str, Any]:
    given = dict(given or {})
    for key in given:
        if key not in valid:
            raise JukeboxError(
                f"evaluate: {section}.{key}: unknown setting{did_you_mean(str(key), valid)}; valid: {', '.join(valid)}"
            )
    return given


def _plain(value: Any) -> Any:
    """Tuples as lists, for JSON."""
    if isinstance(value, Mapping):
        return {key: _plain(child) for key, child in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(child) for child in value]
    return value


def _load_vqvae(name: str, path: str) -> nn.Module:
    from jukebox_pl.checkpoints.export import load

    where = f"evaluate: checkpoints.{name}"
    if not Path(path).exists():
        raise JukeboxError(f"{where}: {path} does not exist (give an export folder or a train-pipeline .ckpt)")
    try:
        model = load(path)
    except JukeboxError as exc:
        raise JukeboxError(f"{where}: {exc}") from None
    missing = [attribute for attribute in VQVAE_ATTRIBUTES if not hasattr(model, attribute)]
    if missing:
        raise JukeboxError(
            f"{where}: {path} holds a {type(model).__name__}, not a VQ-VAE (it has no {', '.join(missing)})"
        )
    if getattr(model, "channels", 1) != 1:
        raise JukeboxError(f"{where}: {path} takes {model.channels} channels; the benchmark compares mono audio")
    return model


def _crops_for(
    model: nn.Module, name: str, crops: Sequence[Crop], songs: Mapping[str, tuple[np.ndarray, int]], longest_fft: int
) -> list[np.ndarray]:
    """The crops at `model`'s rate, mono, trimmed to its top hop; each song resampled once."""
    rate, hop = int(model.sample_rate), int(model.hop_lengths[-1])
    resampled: dict[str, np.ndarray] = {}
    inputs = []
    for crop in crops:
        if crop.song not in resampled:
            audio, song_rate = songs[crop.song]
            resampled[crop.song] = mono_at(audio, song_rate, rate)
        piece = crop.cut(resampled[crop.song], rate, hop)
        if len(piece) == 0:
            raise JukeboxError(
                f"evaluate: song {crop.song} ({crop.seconds:.4f} s) is shorter than the top hop length of "
                f"checkpoints.{name} ({hop} samples at {rate} Hz)"
            )
        if len(piece) <= longest_fft // 2:
            raise JukeboxError(
                f"evaluate: the crop of song {crop.song} is {len(piece)} samples at {rate} Hz (checkpoints.{name}), "
                f"too short for the STFT of {longest_fft} points, which needs over {longest_fft // 2}: "
                "raise crop_seconds or lower the FFT sizes"
            )
        inputs.append(np.ascontiguousarray(piece, dtype=np.float32))
    return inputs


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _csv(rows: list[dict[str, Any]], crops: Sequence[Crop]) -> str:
    buffer = io.StringIO()
    columns = ["checkpoint", "level", "crop", "song", "offset_seconds", "seconds", *ITEM_RESULTS]
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        crop = crops[row["crop"]]
        writer.writerow({**row, "song": crop.song, "offset_seconds": crop.offset_seconds, "seconds": crop.seconds})
    return buffer.getvalue()


def markdown_report(report: Mapping[str, Any]) -> str:
    """report.md from report.json's content: a table per level, one column per checkpoint, and a legend."""
    settings, results = report["settings"], report["results"]
    names = list(results)
    levels = max(len(levels) for levels in results.values())
    lines = [
        "# Spectral reconstruction benchmark",
        "",
        f"{len(settings['crops'])} crops of up to {settings['crop_seconds']:g} s from the `{settings['split']}` split "
        f"of `{settings['data']}` (seed {settings['seed']}): the same audio for every checkpoint, resampled to its "
        "rate, mono. The crops are listed in report.json, the value of every crop in report.csv.",
        "",
        "| checkpoint | path | sample rate (Hz) | hop lengths | codebook sizes |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for name in names:
        checkpoint = settings["checkpoints"][name]
        lines.append(
            f"| {name} | `{checkpoint['path']}` | {checkpoint['sample_rate']} | "
            f"{', '.join(map(str, checkpoint['hop_lengths']))} | {', '.join(map(str, checkpoint['codebook_sizes']))} |"
        )
    arrows = {"lower": " ↓", "higher": " ↑", "": ""}
    for level in range(levels):
        lines += ["", f"## Level {level}", "", "| metric | " + " | ".join(names) + " |"]
        lines.append("| --- |" + " ---: |" * len(names))
        for info in LEVEL_RESULTS:
            cells = [_cell(results[name].get(str(level), {}).get(info.key), info.fmt) for name in names]
            lines.append(f"| {info.label}{arrows[info.direction]} | " + " | ".join(cells) + " |")
    mr_stft = settings["metrics"]["multi_resolution_stft"]
    log_mel = settings["metrics"]["log_mel_distance"]
    lines += ["", "## Legend", "", "↓ lower is better, ↑ higher is better; rows without an arrow are not scores.", ""]
    lines += [f"- **{info.label}**{_direction(info.direction)}: {info.meaning}" for info in LEVEL_RESULTS]
    lines += [
        "",
        f"Multi-resolution STFT parameters: FFT sizes {_join(mr_stft['fft_sizes'])}, hop sizes "
        f"{_join(mr_stft['hop_sizes'])}, window lengths {_join(mr_stft['win_lengths'])} (auraloss "
        "`MultiResolutionSTFTLoss`, Hann windows, its other defaults).",
        "",
        f"Log-mel scales: n_fft {_join(log_mel['n_ffts'])} (hop n_fft / 4, window n_fft), up to {log_mel['n_mels']} "
        "Slaney mel bands from f_min to f_max (Nyquist when unset); the bands used at each checkpoint's rate are in "
        "report.json.",
    ]
    lines += [
        "",
        "Spectrograms (input, then each level's reconstruction): `spectrograms/item{i}_{checkpoint}.png`.",
        "",
    ]
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    return format(value, fmt)


def _direction(direction: str) -> str:
    return f" ({direction} is better)" if direction else ""


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)
