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

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from torch import nn

from jukebox_pl.atomic import atomic_write_bytes, atomic_write_text
from jukebox_pl.checkpoints.export import load_codec
from jukebox_pl.errors import JukeboxError, did_you_mean
from jukebox_pl.metrics.plots import spectrogram_figure
from jukebox_pl.metrics.spectral import (
    LOG_MEL_N_FFTS,
    LOG_MEL_N_MELS,
    SC_N_FFT,
    MultiResolutionSTFT,
    SpectralConvergence,
)
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext, earlier_report, inputs_fingerprint, quiet_trainer
from jukebox_pl.pipelines.evaluate_report import file_name, markdown_report, report_csv
from jukebox_pl.pipelines.evaluate_scores import (
    Crop,
    SpectralScorer,
    choose_crops,
    decode_songs,
    mono_at,
    plain_json,
    rounded,
    song_lengths,
)
from jukebox_pl.recipes import KwargsOf
from jukebox_pl.registry import register

logger = logging.getLogger(__name__)
FORMAT = "jukebox-pl-eval-spectral/1"
MR_STFT_KEYS = ("fft_sizes", "hop_sizes", "win_lengths")
LOG_MEL_KEYS = ("n_ffts", "n_mels", "f_min", "f_max")
# Trainer arguments the pipeline owns.
_TRAINER_OWNED = ("logger", "default_root_dir", "enable_checkpointing", "enable_model_summary",
                  "use_distributed_sampler", "callbacks")  # fmt: skip


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
        self.trainer = trainer
        self.mr_stft = _overrides("multi_resolution_stft", multi_resolution_stft, MR_STFT_KEYS)
        try:  # checks the resolutions now, before any audio is read
            self.mr_stft_settings = plain_json(MultiResolutionSTFT(**self.mr_stft).settings)
        except ValueError as exc:
            raise JukeboxError(f"evaluate: multi_resolution_stft: {exc}") from None
        self.log_mel = _overrides("log_mel", log_mel, LOG_MEL_KEYS)
        # torch.stft pads each end by n_fft // 2 by reflection, which needs a longer input.
        self.longest_fft = max(
            SC_N_FFT, *self.mr_stft_settings["fft_sizes"], *self.log_mel.get("n_ffts", LOG_MEL_N_FFTS)
        )

    def run(self, context: RunContext) -> Mapping[str, Any]:
        models = {name: load_codec(path, f"evaluate: checkpoints.{name}", "the benchmark compares mono audio")
                  for name, path in self.checkpoints.items()}  # fmt: skip
        # Each rank takes its own batches of crops.
        trainer = quiet_trainer(context.run_dir, self.trainer, use_distributed_sampler=False)
        crops = choose_crops(song_lengths(self.data, self.split), self.crops, self.crop_seconds, self.seed)
        settings = self._settings(crops, models)
        fingerprint = inputs_fingerprint({"format": FORMAT, **settings}, self.checkpoints)
        reusable = self.reuse and (context.run_dir / "report.csv").is_file()  # earlier_report sees .json and .md
        earlier = earlier_report(context.run_dir / "report.json", fingerprint) if reusable else None
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
            scorer = SpectralScorer(model, inputs, self.batch_size, self.plot_items, self.mr_stft, self.log_mel)
            trainer.validate(scorer, verbose=False)
            scored = scorer.gather()
            model.cpu()
            settings["checkpoints"][name]["log_mel"] = scored.log_mel
            results[name] = scored.results
            rows += [{"checkpoint": name, **row} for row in scored.rows]
            for item, audio_rows in enumerate(scored.plotted if trainer.is_global_zero else []):
                title = f"{name}: {crops[item].song} at {crops[item].offset_seconds:.3f} s"
                png = spectrogram_figure(audio_rows, model.sample_rate, title=title)
                atomic_write_bytes(context.run_dir / "spectrograms" / f"item{item}_{file_name(name)}.png", png)
        report = {"format": FORMAT, "fingerprint": fingerprint, "settings": settings, "results": results}
        if trainer.is_global_zero:  # every rank holds the gathered results; one writes them
            atomic_write_text(context.run_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
            atomic_write_text(context.run_dir / "report.csv", report_csv(rows, crops))
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
                "log_mel_distance": {**log_mel_defaults, **plain_json(self.log_mel)},
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


# ---------------------------------------------------------------------------- helpers
def _summary(run_dir: Path, results: Mapping[str, Any], crops: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"report": str(run_dir / "report.md"), "crops": crops}
    for name, levels in results.items():
        summary[f"{name} sc_db"] = {f"l{level}": rounded(r["spectral_convergence_db"]) for level, r in levels.items()}
    return summary


def _overrides(section: str, given: Mapping[str, Any] | None, valid: Sequence[str]) -> dict[str, Any]:
    given = dict(given or {})
    for key in given:
        if key not in valid:
            raise JukeboxError(
                f"evaluate: {section}.{key}: unknown setting{did_you_mean(str(key), valid)}; valid: {', '.join(valid)}"
            )
    return given


def _crops_for(
    model: nn.Module, name: str, crops: Sequence[Crop], songs: Mapping[str, tuple[np.ndarray, int]], longest_fft: int
) -> list[np.ndarray]:
    """The crops at `model`'s rate, mono, trimmed to its top hop; each song resampled once."""
    rate, hop = int(model.sample_rate), int(model.hop_lengths[-1])
    resampled = {song: mono_at(audio, song_rate, rate) for song, (audio, song_rate) in songs.items()}
    inputs = []
    for crop in crops:
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
