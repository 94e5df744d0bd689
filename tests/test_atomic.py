"""Atomic writes leave either the old file or the new one, never a partial one."""

from __future__ import annotations

import os

import pytest

from jukebox_pl.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    payload = os.urandom(64).hex()
    atomic_write_text(target, payload)
    assert target.read_text() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "recipe.yaml"
    target.write_text("good: 1\n")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise OSError(28, "disk full")
    assert target.read_text() == "good: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
