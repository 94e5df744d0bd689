"""``pipeline: run_report``: one page that plays and links everything a ``stages`` run wrote.

It reads each stage's folder of the run it reports on, knows a stage by what the folder holds,
and writes ``index.html`` at the top of that run (images in its own folder)::

    training runs  logs/version_*/metrics.csv  -> curves_{stage}.png, last losses, bits per token
                   reconstructions/step-*/     -> the latest step's input and levels, played and shown
    evaluation     report.json                 -> spectral convergence per level, its spectrograms
    samples        request.json, level_*/      -> every clip per level, spectrograms, lyric alignment

Every stage's time and headline figures come from ``stages.json``, which the ``stages``
pipeline writes after each stage, and go to a summary table that the pipeline also prints.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jukebox_pl.atomic import atomic_write_bytes, atomic_write_text
from jukebox_pl.data.audio import mono
from jukebox_pl.errors import JukeboxError
from jukebox_pl.metrics.plots import png_bytes, pyplot, spectrogram_figure
from jukebox_pl.pipelines.base import Pipeline, RunContext, formatted
from jukebox_pl.registry import register

logger = logging.getLogger(__name__)
STAGES_FILE = "stages.json"  # each stage's time and summary, written by the stages pipeline
# The last value of these series is a training stage's headline: key -> (label, unit).
HEADLINES = {
    "train/loss": ("train loss", ""),
    "val/loss": ("val loss", ""),
    "val/bits_per_token": ("val", " bits/token"),
    "val/lyric_bits_per_token": ("val lyrics", " bits/token"),
}
# A run that has not validated yet shows its bits per token on the training batches instead.
UNVALIDATED = {
    "val/bits_per_token": ("train/bits_per_token", "train"),
    "val/lyric_bits_per_token": ("train/lyric_bits_per_token", "train lyrics"),
}
INDEX_FILE = "index.html"


@dataclass
class Section:
    """One stage's part of the page and of the summary table."""

    name: str
    seconds: float | None
    reused: bool = False  # the output is an earlier run's: `seconds` and the figures are that run's
    figures: list[str] = field(default_factory=list)  # "val 7.26 bits/token", ...
    body: list[str] = field(default_factory=list)  # HTML


@register("pipeline", "run_report")
class RunReport(Pipeline):
    """Write `run`/index.html for a ``stages`` run and print a table of each stage's time and figures."""

    def __init__(self, run: str, title: str = "jukebox-pl") -> None:
        self.run_dir, self.title = Path(run), title

    def run(self, context: RunContext) -> Mapping[str, Any]:
        if not self.run_dir.is_dir():
            raise JukeboxError(f"run_report: run {self.run_dir} does not exist")
        images = context.run_dir
        images.mkdir(parents=True, exist_ok=True)
        stages = read_stages(self.run_dir)
        names = [name for name in stages if (self.run_dir / name) != images]
        names = names or sorted(p.name for p in self.run_dir.iterdir() if p.is_dir() and p != images)
        sections = [self._section(name, stages.get(name, {}), images) for name in names]
        index = self.run_dir / INDEX_FILE
        atomic_write_text(index, page(self.title, sections, self.run_dir))
        logger.info(f"\n{summary_table(sections)}\n\nEverything is on one page: {index}")
        return {"index": str(index)}

    def _section(self, name: str, record: Mapping[str, Any], images: Path) -> Section:
        folder = self.run_dir / name
        section = Section(name, record.get("seconds"), bool(record.get("reused")))
        if (folder / "logs").is_dir():
            _training(section, folder, images, self.run_dir, record.get("global_step"))
        if (folder / "report.json").is_file():
            _evaluation(section, folder, self.run_dir)
        if (folder / "request.json").is_file():
            _samples(section, folder, images, self.run_dir)
        if (folder / "musicality.json").is_file():
            _musicality(section, folder, self.run_dir)
        if (folder / "evidence.json").is_file():
            _evidence(section, folder, self.run_dir)
        if not section.body:  # a stage without pictures or sounds: its summary figures
            shown = {k: v for k, v in record.items() if k not in ("seconds", "reused", "checked_seconds")}
            numbers = {k: v for k, v in shown.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            section.figures += [f"{key} {_short(value)}" for key, value in numbers.items()]
            rows = "".join(f"<tr><td>{_e(key)}</td><td>{_e(_short(value))}</td></tr>" for key, value in shown.items())
            section.body.append(f"<table>{rows}</table>" if rows else "")
        return section


# ---------------------------------------------------------------------------- stages.json
def read_stages(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each stage's last summary (with ``seconds``), in the order the stages ran; {} before the first."""
    path = run_dir / STAGES_FILE
    if not path.is_file():
        return {}
    try:
        stages = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise JukeboxError(f"{path}: not JSON ({exc}); delete it and the next run writes it again") from None
    return {str(name): dict(record) for name, record in stages.items()}


# ---------------------------------------------------------------------------- training runs
def read_metrics(logs: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged series of a training run's CSV logs, (step, value) by step; a resumed run's later
    versions replace the steps they repeat."""
    series: dict[str, dict[int, float]] = {}
    versions = sorted(logs.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    for path in versions:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = row.get("step")
                if not step:
                    continue
                for key, value in row.items():
                    if key in ("step", "epoch") or value in (None, ""):
                        continue
                    number = float(value)
                    if math.isfinite(number):
                        series.setdefault(key, {})[int(float(step))] = number
    return {key: sorted(points.items()) for key, points in series.items()}


def curves_png(metrics: Mapping[str, list[tuple[int, float]]], title: str) -> bytes | None:
    """Training curves: one panel per quantity logged for both splits (train and val), at most three; the
    training loss alone for a run that has not validated yet."""
    quantities = sorted({key.split("/", 1)[1] for key in metrics if "/" in key and key.split("/", 1)[0] == "val"})
    quantities = [q for q in quantities if f"train/{q}" in metrics][:3] or (["loss"] if "train/loss" in metrics else [])
    if not quantities:
        return None
    figure, axes = pyplot().subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.0), squeeze=False)
    for axis, quantity in zip(axes[0], quantities, strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            points = metrics.get(f"{split}/{quantity}", [])
            if not points:
                continue
            axis.plot([s for s, _ in points], [v for _, v in points], style, markersize=3, label=split)
        axis.set_title(quantity.replace("_", " "), fontsize=9)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    return png_bytes(figure)


def _training(section: Section, folder: Path, images: Path, run_dir: Path, global_step: int | None) -> None:
    metrics = read_metrics(folder / "logs")
    if global_step is None:  # no record of the run: the last step logged
        global_step = max((points[-1][0] + 1 for points in metrics.values()), default=0)
    section.figures.append(f"{global_step} steps")
    for key, (label, unit) in HEADLINES.items():
        if key not in metrics and key in UNVALIDATED:
            key, label = UNVALIDATED[key]
        if key in metrics:
            section.figures.append(f"{label} {metrics[key][-1][1]:.4g}{unit}")
    png = curves_png(metrics, f"{section.name}: training curves")
    if png is not None:
        path = images / f"curves_{section.name}.png"
        atomic_write_bytes(path, png)
        section.body.append(f'<img src="{_rel(path, run_dir)}" alt="training curves of {_e(section.name)}">')
    section.body.append(
        f"<p>Logs: <code>{_e(_rel(folder / 'logs', run_dir))}</code> (CSV per version, TensorBoard: "
        f"<code>tensorboard --logdir {_e(str(folder / 'logs'))}</code>); weights: "
        f'<a href="{_rel(folder / "model", run_dir)}/">{_e(_rel(folder / "model", run_dir))}/</a></p>'
    )
    steps_dirs = sorted((folder / "reconstructions").glob("step-*"))
    if steps_dirs:
        latest = steps_dirs[-1]
        section.body.append(f"<h3>Reconstructions at {_e(latest.name)}</h3>")
        for picture in sorted(latest.glob("item*.png")):
            item = picture.stem
            players = "".join(
                f"<figure><figcaption>{_e(sound.stem.removeprefix(item + '_'))}</figcaption>"
                f'<audio controls preload="none" src="{_rel(sound, run_dir)}"></audio></figure>'
                for sound in sorted(latest.glob(f"{item}_*.flac"))
            )
            section.body.append(f'<div class="row">{players}</div><img src="{_rel(picture, run_dir)}" alt="{item}">')


# ---------------------------------------------------------------------------- evaluation
def _evaluation(section: Section, folder: Path, run_dir: Path) -> None:
    from jukebox_pl.pipelines.evaluate_report import LEVEL_RESULTS

    report = json.loads((folder / "report.json").read_text())
    results = report["results"]
    for name, levels in results.items():
        values = [
            f"l{level} {formatted(r.get('spectral_convergence_db'), '.1f')} dB" for level, r in sorted(levels.items())
        ]
        section.figures.append(f"{name} SC " + ", ".join(values))
    shown = ("spectral_convergence_db", "multi_resolution_stft", "si_sdr_db", "perplexity", "bitrate_kbps")
    columns = [info for info in LEVEL_RESULTS if info.key in shown]
    rows = [
        [name, level, *(formatted(values.get(info.key), info.fmt) for info in columns)]
        for name, levels in results.items()
        for level, values in sorted(levels.items())
    ]
    section.body.append(_table(("checkpoint", "level", *(info.label for info in columns)), rows))
    section.body.append(
        f"<p>{len(report['settings']['crops'])} crops of the <code>{_e(report['settings']['split'])}</code> split. "
        f'Every metric and its meaning: <a href="{_rel(folder / "report.md", run_dir)}">report.md</a>, '
        f'per crop: <a href="{_rel(folder / "report.csv", run_dir)}">report.csv</a>.</p>'
    )
    for picture in sorted((folder / "spectrograms").glob("*.png")):
        section.body.append(f'<img src="{_rel(picture, run_dir)}" alt="{_e(picture.stem)}">')


# ---------------------------------------------------------------------------- samples
def _samples(section: Section, folder: Path, images: Path, run_dir: Path) -> None:
    import soundfile
    import torch

    request = json.loads((folder / "request.json").read_text())
    settings = request.get("settings", {})
    levels = sorted((int(p.name.split("_")[1]) for p in folder.glob("level_*") if p.is_dir()), reverse=True)
    count = len(request.get("artists", []))
    seconds = request.get("seconds")
    section.figures.append(f"{count} {settings.get('mode', '')} clip{'s' if count != 1 else ''} of {seconds} s")
    prompt = settings.get("prompt")
    if prompt:
        songs = [p.get("song", p) if isinstance(p, Mapping) else p for p in prompt]
        section.body.append(
            f"<p>Primed with the first {settings.get('prompt_samples', 0)} samples of "
            + ", ".join(f"<code>{_e(str(song))}</code>" for song in songs)
            + ".</p>"
        )
    for index in range(count):
        genres = ", ".join(request["genres"][index])
        section.body.append(
            f"<h3>Sample {index}: {_e(request['artists'][index])} ({_e(genres)})</h3>"
            f"<p class=lyrics>{_e(request['lyrics'][index]) or '<i>no lyrics</i>'}</p>"
        )
        rows, players = {}, []
        rate = None
        for level in levels:
            wav = folder / f"level_{level}" / f"sample_{index}.wav"
            if not wav.is_file():
                continue
            audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
            rows[f"level {level}"] = torch.from_numpy(mono(audio))
            players.append(
                f"<figure><figcaption>level {level}</figcaption>"
                f'<audio controls preload="none" src="{_rel(wav, run_dir)}"></audio></figure>'
            )
        section.body.append(f'<div class="row">{"".join(players)}</div>')
        if rows and rate:
            picture = images / f"{section.name}_sample_{index}.png"
            atomic_write_bytes(picture, spectrogram_figure(rows, rate, title=f"{section.name}, sample {index}"))
            section.body.append(f'<img src="{_rel(picture, run_dir)}" alt="spectrograms of sample {index}">')
        alignment = folder / "alignment" / f"sample_{index}"
        if alignment.with_suffix(".png").is_file():
            section.body.append(
                f'<p>Lyric alignment: <a href="{_rel(alignment.with_suffix(".html"), run_dir)}">page that plays '
                f'and highlights the words</a>, <a href="{_rel(alignment.with_suffix(".json"), run_dir)}">word '
                f'times (JSON)</a></p><img src="{_rel(alignment.with_suffix(".png"), run_dir)}" alt="alignment">'
            )


# ---------------------------------------------------------------------------- benchmarks
def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _musicality(section: Section, folder: Path, run_dir: Path) -> None:
    report = json.loads((folder / "musicality.json").read_text())
    keys = ("clips", "seconds", "frechet", "pitched_fraction", "flatness", "silent_fraction", "longest_silence")
    head = ("set", "clips", "seconds", "log-mel Fréchet distance", "pitched frames", "spectral flatness",
            "silent frames", "longest silence (s)")  # fmt: skip
    rows = [[name, *(_short(row[key]) for key in keys)] for name, row in report["rows"].items()]
    section.body.append(_table(head, rows))
    checks = report.get("checks", {})
    if checks:
        head = ("set", "distance / white noise", "distance / top reconstruction", "pitched / held-out",
                "longest silence (s)", "meets the targets")  # fmt: skip
        rows = [
            [name, _short(c["frechet_over_white_noise"]), _short(c["frechet_over_top_reconstruction"]),
             _short(c["pitched_over_held_out"]), _short(c["longest_silence"]), "yes" if c["passes"] else "no"]
            for name, c in checks.items()
        ]  # fmt: skip
        section.body.append(_table(head, rows))
        section.figures += [f"{name} {'meets' if c['passes'] else 'misses'} the targets" for name, c in checks.items()]
    section.body.append(f'<p>What each column means: <a href="{_rel(folder / "musicality.md", run_dir)}">'
                        "musicality.md</a>.</p>")  # fmt: skip


def _evidence(section: Section, folder: Path, run_dir: Path) -> None:
    report = json.loads((folder / "evidence.json").read_text())
    keys = ("unigram_bits", "bits_per_token", "below_unigram", "labels_worth", "upper_worth")
    head = ("prior", "level", "unigram entropy", "bits/token", "below unigram", "labels worth", "upper codes worth")
    rows = [[Path(source).parent.name, e["level"], *(_short(e.get(key, "–")) for key in keys)]
            for source, e in report["priors"].items()]  # fmt: skip
    section.body.append(_table(head, rows))
    for source, e in report["priors"].items():
        alignment = e.get("alignment") or {}
        if alignment.get("words"):
            section.body.append(
                f"<p>Lyric alignment of {_e(Path(source).parent.name)}, teacher-forced on {len(alignment['songs'])} "
                f"held-out sung songs ({alignment['words']} words): median word-onset error "
                f"{alignment['median_onset_error']:.2f} s, {100 * alignment['within_tolerance']:.0f}% of words "
                f"within 0.5 s{', with the even-pace prior' if 'pace_width' in alignment else ''}; "
                + (f"the attention alone: {alone['median_onset_error']:.2f} s; "
                   if (alone := alignment.get("attention_alone")) else "")
                + f"words at an even pace over the song: {alignment['even_pace']['median_onset_error']:.2f} s.</p>"
            )  # fmt: skip
    section.figures += [f"{key} {_short(value)}" for key, value in report.get("summary", {}).items()]
    section.body.append(f'<p>All figures: <a href="{_rel(folder / "evidence.md", run_dir)}">evidence.md</a>.</p>')


# ---------------------------------------------------------------------------- page and table
def summary_table(sections: Sequence[Section]) -> str:
    """A plain-text table: stage, time, figures."""
    rows = [("stage", "time", "figures")]
    rows += [(s.name, _time(s), "; ".join(s.figures) or "-") for s in sections]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}" for row in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 7}")
    return "\n".join(lines)


def page(title: str, sections: Sequence[Section], run_dir: Path) -> str:
    summary = "".join(
        f'<tr><td><a href="#{_e(s.name)}">{_e(s.name)}</a></td><td>{_e(_time(s))}</td>'
        f"<td>{_e('; '.join(s.figures))}</td></tr>"
        for s in sections
    )
    body = "".join(f'<section id="{_e(s.name)}"><h2>{_e(s.name)}</h2>{"".join(s.body)}</section>' for s in sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; font-size: 0.9rem; }}
img {{ max-width: 100%; display: block; margin: 0.5rem 0; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
figure {{ margin: 0; }} figcaption {{ font-size: 0.8rem; color: #555; }}
.lyrics {{ font-style: italic; }} code {{ background: #f4f4f4; padding: 0 0.2rem; }}
section {{ border-top: 1px solid #ddd; margin-top: 1.5rem; }}
</style></head><body>
<h1>{_e(title)}</h1>
<p>The run in <code>{_e(str(run_dir))}</code>, stage by stage. Open this file from that folder: every link is
relative to it.</p>
<table><tr><th>stage</th><th>time</th><th>figures</th></tr>{summary}</table>
{body}
</body></html>
"""


def _rel(path: Path, root: Path) -> str:
    return html.escape(path.relative_to(root).as_posix(), quote=True)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _time(section: Section) -> str:
    """The stage's time; a reused stage's is that of the earlier run that made its output."""
    seconds = section.seconds
    minutes, rest = divmod(round(seconds or 0), 60)
    shown = "-" if seconds is None else f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"
    return f"{shown} (reused)" if section.reused else shown


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
