"""The pipeline base class and the runner that validates a recipe, prepares its run
directory and hands the recipe's sections to the pipeline it names."""

from __future__ import annotations

import abc
import datetime
import hashlib
import importlib.metadata as metadata
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jukebox_pl import registry
from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.errors import JukeboxError
from jukebox_pl.recipe_validation import validate
from jukebox_pl.recipes import COMPONENT_KEY, RUNNER_KEYS, Recipe, resolved_yaml

RECIPE_FILE = "recipe.yaml"
VERSIONS_FILE = "versions.json"
# A pipeline's summary says ``REUSED: True`` when it did no new work (its outputs were up to date), so that
# a `stages` run keeps the record of the run that made them.
REUSED = "reused"


def inputs_fingerprint(settings: Mapping[str, Any], paths: Mapping[str, str | Path]) -> str:
    """What a result depends on: `settings` and the files under each of `paths`, by path, size and time.

    Hidden files (``.progress.json`` and the like) are a writer's bookkeeping, not its output: left out.
    """
    files = {}
    for name, path in paths.items():
        root = Path(path)
        found = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        found = [f for f in found if f == root or not any(part.startswith(".") for part in f.relative_to(root).parts)]
        files[name] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in found]
    text = json.dumps({"settings": settings, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def earlier_report(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The JSON report an earlier run wrote at `path` from the same inputs, if it and its ``.md`` twin are there."""
    if not (path.is_file() and path.with_suffix(".md").is_file()):
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) and report.get("fingerprint") == fingerprint else None


def formatted(value: Any, fmt: str = ".3f") -> str:
    """A figure as the reports show it: in format `fmt`, or "–" where there is none."""
    return "–" if value is None else format(value, fmt)


@dataclass(frozen=True)
class RunContext:
    """What a pipeline gets besides its own arguments."""

    run_dir: Path
    recipe: dict[str, Any]  # the fully resolved recipe, as written to recipe.yaml
    source: str  # the recipe file it came from


class Pipeline(abc.ABC):
    """Base of every registered ``pipeline``: built from the recipe's top-level sections.

    A pipeline receives its sections as plain mappings and builds components itself
    (``registry.build``), so that it decides when each one is made.
    """

    @abc.abstractmethod
    def run(self, context: RunContext) -> Mapping[str, Any] | None:
        """Do the work; return a short summary (figures, paths) for the command line."""


def resolve_device(name: str, where: str) -> torch.device:
    """The torch device a recipe's `device: NAME` means, or an error naming `where` (cuda without a GPU...)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise JukeboxError(f"{where}: device {name!r} is not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JukeboxError(f"{where}: device {name!r} asked for, but no CUDA GPU is available here; use device=cpu")
    return device


def quiet_trainer(run_dir: Path, options: Mapping[str, Any] | None, **own: Any) -> Any:
    """A Lightning Trainer that logs, checkpoints and summarises nothing, on one CPU unless the recipe's trainer
    `options` say otherwise; `own` are the pipeline's own settings."""
    import pytorch_lightning as pl  # here: listing and validating recipes imports this module, not Lightning

    options = {"accelerator": "cpu", "devices": 1, **(options or {})}
    return pl.Trainer(
        default_root_dir=run_dir, logger=False, enable_checkpointing=False, enable_model_summary=False, **own, **options
    )


def versions() -> dict[str, Any]:
    """Versions of jukebox-pl, its main dependencies and every plugin discovered."""
    found: dict[str, Any] = {"python": platform.python_version()}
    for distribution in ("jukebox-pl", "torch", "pytorch-lightning", "torchmetrics", "omegaconf"):
        try:
            found[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[distribution] = None
    found["plugins"] = {
        plugin.entry_point: {"distribution": plugin.distribution, "version": plugin.version, "error": plugin.error}
        for plugin in registry.REGISTRY.plugins
    }
    return found


def run_recipe(recipe: Recipe) -> Mapping[str, Any] | None:
    """Validate `recipe`, write the run directory's records, and run its pipeline."""
    validate(recipe)
    resolved = recipe.resolved()
    run_dir = Path(resolved.get("output_dir") or Path("runs") / Path(recipe.source).stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved["output_dir"] = str(run_dir)
    text = f"# resolved from {recipe.source}\n" + resolved_yaml(resolved)
    earlier = run_dir / RECIPE_FILE
    # A folder's records describe the run that made it: a first run writes them at once; another recipe
    # run in the same folder replaces them only when it succeeds, so a command that fails leaves them alone.
    replace_later = earlier.is_file() and earlier.read_text() != text
    if not earlier.is_file():
        _write_records(run_dir, text)
    arguments = {key: value for key, value in resolved.items() if key not in RUNNER_KEYS}
    spec = {COMPONENT_KEY: resolved["pipeline"], **arguments}
    pipeline = registry.build("pipeline", spec, recursive=False)
    result = pipeline.run(RunContext(run_dir=run_dir, recipe=resolved, source=recipe.source))
    if replace_later:
        _write_records(run_dir, text)
    return result


def _write_records(run_dir: Path, recipe_text: str) -> None:
    atomic_write_text(run_dir / RECIPE_FILE, recipe_text)
    record = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(), **versions()}
    atomic_write_text(run_dir / VERSIONS_FILE, json.dumps(record, indent=2) + "\n")
