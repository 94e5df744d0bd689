"""Pipelines that chain others (``stages``, ``recipe``) and build datasets (``data_shards``, ``demo_dataset``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.data.demo import build_demo_dataset
from jukebox_pl.data.shards import write_shards
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext, run_recipe
from jukebox_pl.pipelines.report import STAGES_FILE, read_stages
from jukebox_pl.recipe_validation import validate
from jukebox_pl.recipes import Recipe, load, locate
from jukebox_pl.registry import build, register

logger = logging.getLogger(__name__)


@register("pipeline", "stages")
class Stages(Pipeline):
    """Run named pipelines in order, each in its own sub-directory of the run (the demo is one)."""

    def __init__(self, stages: Mapping[str, Mapping[str, Any]]) -> None:
        if not stages:
            raise ValueError("stages: give at least one stage")
        self.stages = dict(stages)

    def run(self, context: RunContext) -> Mapping[str, Any]:
        summary: dict[str, Any] = {}
        stages = {name: build("pipeline", spec, recursive=False) for name, spec in self.stages.items()}
        for name, stage in stages.items():
            if isinstance(stage, RecipeStage):  # a typo in a later stage's recipe stops the run before it starts
                stage.load(RunContext(context.run_dir / name, context.recipe, context.source))
        earlier = read_stages(context.run_dir)
        for number, (name, stage) in enumerate(stages.items(), start=1):
            logger.info(f"\n=== stage {number}/{len(self.stages)}: {name} ===")
            start = time.perf_counter()
            result = dict(stage.run(RunContext(context.run_dir / name, context.recipe, context.source)) or {})
            seconds = round(time.perf_counter() - start, 1)
            if result.pop(REUSED, False) and name in earlier:
                # The output is the earlier run's: keep the time and figures of the run that made it.
                summary[name] = {**earlier[name], REUSED: True, "checked_seconds": seconds}
            else:
                summary[name] = {"seconds": seconds, **result}
            # After every stage, for the report and for a look during a long run: this run's records so far,
            # then an earlier run's for the stages still to come.
            record = {key: summary.get(key, earlier.get(key)) for key in stages if key in summary or key in earlier}
            atomic_write_text(context.run_dir / STAGES_FILE, json.dumps(record, indent=2, default=str) + "\n")
        return summary


@register("pipeline", "data_shards")
@dataclass
class DataShards(Pipeline):
    """Write a folder of songs as webdataset shards, labelled from a metadata file or from the songs' tags,
    lyric files and folders (resumes if interrupted)."""

    audio: str
    out: str
    metadata: str | None = None
    sample_rate: int = 44100
    shard_size: str = "256MB"
    min_seconds: float = 2.0
    validation_fraction: float = 0.1
    strict: bool = False

    def run(self, context: RunContext) -> Mapping[str, Any]:
        options = {key: value for key, value in asdict(self).items() if key not in ("audio", "out", "metadata")}
        manifest = write_shards(self.audio, self.metadata, self.out, **options)
        return {
            "songs": manifest["counts"]["songs"],
            "with_lyrics": manifest["counts"]["with_lyrics"],
            "artists": len(manifest["artists"]) - 1,
            "genres": len(manifest["genres"]) - 1,
            "skipped": manifest["counts"]["skipped"],
            "minutes": round(manifest["total_seconds"] / 60, 1),
            "shards": str(self.out),
        }


@register("pipeline", "demo_dataset")
class DemoDataset(Pipeline):
    """Render the demo dataset from music21's corpus and shard it; reused when already built."""

    def __init__(
        self, out: str, minutes: float = 20.0, max_seconds: float = 40.0, workers: int | None = None, seed: int = 0
    ) -> None:
        self.arguments = dict(out=out, minutes=minutes, max_seconds=max_seconds, workers=workers, seed=seed)

    def run(self, context: RunContext) -> Mapping[str, Any]:
        build_file = Path(self.arguments["out"]) / "build.json"
        built_before = build_file.stat().st_mtime_ns if build_file.is_file() else None
        manifest = build_demo_dataset(**self.arguments)
        counts = manifest["counts"]
        return {
            REUSED: built_before is not None and build_file.stat().st_mtime_ns == built_before,
            "songs": counts["songs"],
            "with_lyrics": counts["with_lyrics"],
            "artists": len(manifest["artists"]) - 1,
            "genres": len(manifest["genres"]) - 1,
            "minutes": round(manifest["total_seconds"] / 60, 1),
            "shards": f"{self.arguments['out']}/shards",
        }


@register("pipeline", "recipe")
class RecipeStage(Pipeline):
    """Run another recipe with overrides; its run directory is this stage's.

    `recipe` is a path (relative to the recipe that names this stage) or a packaged name.
    """

    def __init__(self, recipe: str, overrides: list[str] | None = None) -> None:
        self.recipe, self.overrides = recipe, list(overrides or [])

    def load(self, context: RunContext) -> Recipe:
        """The stage's recipe with its overrides, validated."""
        path = locate(self.recipe, relative_to=Path(context.source).parent)
        loaded = load(str(path), [*self.overrides, f"output_dir={context.run_dir}"])
        validate(loaded)
        return loaded

    def run(self, context: RunContext) -> Mapping[str, Any]:
        return dict(run_recipe(self.load(context)) or {})
