"""What the ``evaluate`` pipeline writes besides report.json: the metric table and legend of report.md, report.csv.

Every result is described once, in `LEVEL_RESULTS` (its key, label, direction and meaning), and
both the Markdown report and the run report's summary read that table.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jukebox_pl.metrics.spectral import SC_HOP_LENGTH, SC_N_FFT, SC_WIN_LENGTH
from jukebox_pl.pipelines.base import formatted
from jukebox_pl.pipelines.evaluate_scores import ITEM_RESULTS, Crop


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


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def report_csv(rows: list[dict[str, Any]], crops: Sequence[Crop]) -> str:
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
            cells = [formatted(results[name].get(str(level), {}).get(info.key), info.fmt) for name in names]
            lines.append(f"| {info.label}{arrows[info.direction]} | " + " | ".join(cells) + " |")
    mr_stft = settings["metrics"]["multi_resolution_stft"]
    log_mel = settings["metrics"]["log_mel_distance"]
    lines += ["", "## Legend", "", "↓ lower is better, ↑ higher is better; rows without an arrow are not scores.", ""]
    better = {direction: f" ({direction} is better)" if direction else "" for direction in arrows}
    lines += [f"- **{info.label}**{better[info.direction]}: {info.meaning}" for info in LEVEL_RESULTS]
    lines += [
        "",
        f"Multi-resolution STFT parameters: FFT sizes {_join(mr_stft['fft_sizes'])}, hop sizes "
        f"{_join(mr_stft['hop_sizes'])}, window lengths {_join(mr_stft['win_lengths'])} (auraloss "
        "`MultiResolutionSTFTLoss`, Hann windows, its other defaults).",
        "",
        f"Log-mel scales: n_fft {_join(log_mel['n_ffts'])} (hop n_fft / 4, window n_fft), up to {log_mel['n_mels']} "
        "Slaney mel bands from f_min to f_max (Nyquist when unset); the bands used at each checkpoint's rate are in "
        "report.json.",
        "",
        "Spectrograms (input, then each level's reconstruction): `spectrograms/item{i}_{checkpoint}.png`.",
        "",
    ]
    return "\n".join(lines)


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)
