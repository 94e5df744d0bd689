"""The wheel carries the recipes and the console script, and works outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO_DIR


def test_wheel_ships_recipes_and_resolves_them_from_any_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO_DIR),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("jukebox_pl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "jukebox_pl/_recipes/common/trainer_cpu.yaml" in names
    assert "jukebox-pl = jukebox_pl.cli:main" in entry_points

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "from jukebox_pl import recipes, cli; print(recipes.recipes_root()); cli.main(['show', 'common/trainer_cpu'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    root, *shown = result.stdout.splitlines()
    assert root == str(site / "jukebox_pl" / "_recipes")
    assert "accelerator: cpu" in shown[1]
