"""Shared fixtures: an isolated registry, the CLI in-process and as a subprocess, the reference Jukebox."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from jukebox_pl import cli
from jukebox_pl.registry import Registry

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def fresh_registry() -> Registry:
    """A registry of the default kinds with nothing registered, apart from the global one."""
    return Registry(core_modules=())


@pytest.fixture
def jukebox_reference() -> ModuleType:
    """`benchmarks/jukebox_reference.py` (transformers' deprecated Jukebox on our weights); the test is skipped
    where that is not installed (the optional `bench` extra)."""
    spec = importlib.util.spec_from_file_location("jukebox_reference", REPO_DIR / "benchmarks" / "jukebox_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if (missing := module.available()) is not None:
        pytest.skip(missing)
    return module


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``jukebox-pl ARGS`` in this process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def subprocess_env(extra_path: Path | None = None, **variables: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(TESTS_DIR), *([str(extra_path)] if extra_path else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(variables)
    return env


def run_console_script(
    *args: str, cwd: Path, extra_path: Path | None = None, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``jukebox-pl`` console script as a user would."""
    return subprocess.run(
        [str(VENV_BIN / "jukebox-pl"), *args],
        cwd=cwd,
        env=subprocess_env(extra_path, **variables),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_python(
    code: str, cwd: Path, extra_path: Path | None = None, **variables: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=subprocess_env(extra_path, **variables),
        capture_output=True,
        text=True,
        timeout=300,
    )


__all__ = ["REPO_DIR", "TESTS_DIR", "run_console_script", "run_python"]
