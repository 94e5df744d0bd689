"""The one resumable shard writer, for `jukebox-pl data shards` and the ``encode`` pipeline.

A shard is written under a temporary name and renamed only when complete, and ``.progress.json``
records every finished shard, so a killed run leaves nothing a reader would take and the same
command resumes where it stopped. What happens to the shards of other inputs is each caller's rule.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import webdataset as wds

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.errors import JukeboxError

logger = logging.getLogger(__name__)
PROGRESS = ".progress.json"  # a shard folder's finished shards and what they were made from
Progress = dict[str, Any]  # a PROGRESS record: "fingerprint", "shards" (each {"name", "split", "songs"}), ...
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")  # as ShardSink names a shard
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in "256MB", "1.5G", "500k" or a plain number."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise JukeboxError(f"shard size {text!r} is not a size such as 256MB or 1GB")
    power = " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * 1024**power)


class ShardSink:
    """Writes one split's webdataset shards, each under a temporary name until it is complete.

    `on_finish` receives ``{"name", "split", "songs"}`` for every shard renamed into place,
    with the summary record given for each of its samples.
    """

    def __init__(self, out_dir: Path, split: str, max_bytes: int, first_index: int, on_finish: Callable) -> None:
        self.out_dir, self.split, self.max_bytes = out_dir, split, max_bytes
        self.index = first_index
        self.on_finish = on_finish
        self._writer: wds.TarWriter | None = None
        self._temporary: Path | None = None
        self._songs: list[dict[str, Any]] = []
        self._bytes = 0

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"

    def add(self, key: str, fields: Mapping[str, bytes], summary: dict[str, Any]) -> None:
        """Write one sample (extension -> bytes) and remember its `summary` for the manifest."""
        if self._writer is None:
            self._temporary = self.out_dir / f".{self.name}.tmp"
            self._writer = wds.TarWriter(str(self._temporary), encoder=False)
        self._writer.write({"__key__": key, **fields})
        self._songs.append(summary)
        self._bytes += sum(len(data) for data in fields.values()) + 2048  # tar headers and padding
        if self._bytes >= self.max_bytes:
            self.finish()

    def finish(self) -> None:
        if self._writer is None or self._temporary is None:
            return
        self._writer.close()
        with open(self._temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self._temporary, self.out_dir / self.name)
        self.on_finish({"name": self.name, "split": self.split, "songs": self._songs})
        self._writer, self._temporary, self._songs, self._bytes = None, None, [], 0
        self.index += 1


def start_or_resume(out_dir: Path, fingerprint: Any, on_changed: Callable[[Progress], None], **fields: Any) -> Progress:
    """The progress to continue from in a folder of `ShardSink` shards, saved; unfinished shards are removed.

    The record of this `fingerprint` less its shards that are gone (shard files it does not name are removed),
    or else a new one with `fields`, once `on_changed(recorded)` has dealt with the shards of other inputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_unfinished(out_dir)
    progress = read_record(out_dir / PROGRESS)
    if progress is not None and progress.get("fingerprint") != fingerprint:
        on_changed(progress)
        progress = None
    if progress is None:
        progress = {"fingerprint": fingerprint, "shards": [], **fields}
        save_progress(out_dir, progress)
        return progress
    lost = [shard["name"] for shard in progress["shards"] if not (out_dir / shard["name"]).is_file()]
    if lost:
        logger.info(f"{len(lost)} finished shards are missing ({', '.join(lost)}): their songs are written again")
    progress["shards"] = [shard for shard in progress["shards"] if shard["name"] not in lost]
    for orphan in set(shard_files(out_dir)) - {out_dir / shard["name"] for shard in progress["shards"]}:
        orphan.unlink()  # renamed, but the run died before recording it
    if progress["shards"]:
        logger.info(f"resuming: {len(progress['shards'])} finished shards kept")
    save_progress(out_dir, progress)
    return progress


def shard_sinks(out_dir: Path, progress: Progress, splits: Iterable[str], max_bytes: int) -> dict[str, ShardSink]:
    """A `ShardSink` per split, numbered on from its finished shards, saving each shard it finishes in `progress`."""

    def finished(shard: dict[str, Any]) -> None:
        progress["shards"].append(shard)
        save_progress(out_dir, progress)

    def first_index(split: str) -> int:  # after the last, not the count: a lost shard leaves a gap
        indices = [int(SHARD_NAME.match(s["name"])["index"]) for s in progress["shards"] if s["split"] == split]
        return max(indices, default=-1) + 1

    return {split: ShardSink(out_dir, split, max_bytes, first_index(split), finished) for split in splits}


def save_progress(out_dir: Path, progress: Progress) -> None:
    atomic_write_text(out_dir / PROGRESS, json.dumps(progress))


def shard_files(out_dir: Path) -> list[Path]:
    """The files in `out_dir` named as `ShardSink` names a finished shard."""
    return sorted(path for path in out_dir.glob("*.tar") if SHARD_NAME.match(path.name))


def remove_unfinished(out_dir: Path) -> None:
    """Remove the temporary shards that a killed run did not finish."""
    for stale in out_dir.glob(".*.tar.tmp"):
        stale.unlink()


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path` ({} if it holds another value); None when there is no such file."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise JukeboxError(f"{path}: not valid JSON ({exc.msg}); remove it or choose another `out`") from None
    return content if isinstance(content, dict) else {}
