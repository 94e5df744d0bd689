"""Write a folder of songs and their metadata as webdataset tar shards plus ``dataset.json``.

The songs and their labels come from `jukebox_pl.data.song_list`: a metadata file's rows, or
the songs themselves (tags, lyric files, folders). Each song becomes one sample: ``KEY.flac``
(the audio, lossless) and ``KEY.json`` (its metadata). Songs are split into train and validation
deterministically by a hash of their path. The shards are written by the resumable writer of
`jukebox_pl.data.shard_writer`, so a killed run leaves nothing a reader would take and the same
command resumes where it stopped; a rebuild for changed inputs sets the previous dataset aside
until the new one is complete.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.data.audio import MIN_SAMPLE_RATE, BadAudio, encode_flac, probe, read_song
from jukebox_pl.data.labels import Vocabulary
from jukebox_pl.data.library import LibrarySong, label_sources
from jukebox_pl.data.shard_reader import FORMAT, MANIFEST, SPLITS
from jukebox_pl.data.shard_writer import (
    PROGRESS,
    Progress,
    parse_size,
    remove_unfinished,
    save_progress,
    shard_sinks,
    start_or_resume,
)
from jukebox_pl.data.song_list import SongEntry, song_entries
from jukebox_pl.errors import JukeboxError

logger = logging.getLogger(__name__)
PREVIOUS = ".previous"  # the dataset a rebuild replaces, kept until the new one is complete


def split_of(key: str, validation_fraction: float) -> str:
    """Deterministic by song: the same key always lands in the same split."""
    position = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "validation" if position < validation_fraction else "train"


def write_shards(
    audio_dir: str | Path,
    metadata_file: str | Path | None,
    out_dir: str | Path,
    sample_rate: int = 44100,
    shard_size: str | int = "256MB",
    strict: bool = False,
    min_seconds: float = 2.0,
    validation_fraction: float = 0.1,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Write the dataset; return the manifest that is also saved as ``dataset.json``.

    Without `metadata_file` every audio file under `audio_dir` is a song, labelled from its tags,
    lyric files and folders; with one, its rows are the songs and the labels a row leaves out come
    from the same places. `dry_run` writes nothing and returns `plan_dataset`'s table instead.
    """
    audio_dir, out_dir = Path(audio_dir).expanduser(), Path(out_dir).expanduser()
    metadata_file = Path(metadata_file).expanduser() if metadata_file is not None else None
    if not audio_dir.is_dir():
        raise JukeboxError(f"audio directory {audio_dir} does not exist")
    if not 0.0 <= validation_fraction < 1.0:
        raise JukeboxError(f"validation fraction must be in [0, 1), not {validation_fraction}")
    if sample_rate < MIN_SAMPLE_RATE:
        raise JukeboxError(f"sample rate {sample_rate} Hz: give the dataset's rate in Hz, at least {MIN_SAMPLE_RATE}")
    max_bytes = parse_size(shard_size)
    skipped: list[dict[str, str]] = []

    def skip(where: str, reason: str) -> None:
        if strict:
            raise JukeboxError(f"{where}: {reason} (--strict stops at the first bad file)")
        skipped.append({"file": where, "reason": reason})
        logger.info(f"skipped {where}: {reason}")

    if dry_run:
        return plan_dataset(audio_dir, metadata_file, min_seconds)
    entries = song_entries(audio_dir, metadata_file, skip)
    where_listed = str(metadata_file) if metadata_file is not None else str(audio_dir)
    options = {
        "sample_rate": sample_rate,
        "max_bytes": max_bytes,
        "min_seconds": min_seconds,
        "validation_fraction": validation_fraction,
        "audio_dir": str(audio_dir.resolve()),
    }
    fingerprint = _fingerprint(entries, metadata_file, options)
    progress = start_or_resume(out_dir, fingerprint, lambda previous: _set_aside(out_dir, previous), skipped=[])
    try:
        skipped_files = {s["file"] for s in progress["skipped"]}
        skipped[:0] = [s for s in progress["skipped"] if s not in skipped]
        progress["skipped"] = skipped  # the same list from here on: each shard saves the skips before it
        done = {song["key"] for shard in progress["shards"] for song in shard["songs"]}
        sinks = shard_sinks(out_dir, progress, SPLITS, max_bytes)
        splits = _assign_splits(entries, validation_fraction, min_seconds)
        seen_keys: set[str] = set()
        for number, entry in enumerate(entries, start=1):
            key = entry.key
            if key in seen_keys:
                skip(f"{where_listed}:{entry.row}", f"{entry.path} is listed twice")
                continue
            seen_keys.add(key)
            if key in done or str(entry.path) in skipped_files:
                continue
            try:
                if not entry.path.is_file():
                    raise BadAudio(entry.path, "missing (no such file)")
                song = read_song(entry.path, sample_rate, min_seconds)
            except BadAudio as exc:
                skip(exc.path, exc.reason)
                continue
            metadata = {
                "artist": entry.artist,
                "genres": entry.genres,
                "lyrics": entry.lyrics,
                "title": entry.title,
                "samples": song.frames,
                "sample_rate": song.sample_rate,
                "channels": int(song.samples.shape[1]),
                "source": str(entry.path),
                **entry.extra,
            }
            summary = {
                "key": key,
                "samples": metadata["samples"],
                "artist": metadata["artist"],
                "genres": metadata["genres"],
                "has_lyrics": bool(metadata["lyrics"].strip()),
            }
            payload = json.dumps(metadata, ensure_ascii=False).encode("utf-8")
            sinks[splits[key]].add(key, {"flac": encode_flac(song), "json": payload}, summary)
            if number % 50 == 0:
                logger.info(f"{number}/{len(entries)} songs")
        for sink in sinks.values():
            sink.finish()
        save_progress(out_dir, progress)
        if not progress["shards"]:
            raise JukeboxError(
                f"{where_listed}: no usable song: {len(skipped)} rows or files were skipped (reasons above), "
                "so no dataset was written"
            )
        manifest = _manifest(progress, skipped, options, sample_rate)
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    except (JukeboxError, OSError):  # bad input or a full disk: the previous dataset stays as it was
        _restore_previous(out_dir, progress)
        raise
    shutil.rmtree(out_dir / PREVIOUS, ignore_errors=True)
    return manifest


def _fingerprint(entries: list[SongEntry], metadata_file: Path | None, options: Mapping[str, Any]) -> str:
    """What the dataset is made of: the labels of every song, the metadata file, the options; and for a
    library read without one, each file's size and time, since nothing else says that a song changed."""
    songs = []
    for entry in entries:
        song = [str(entry.path), entry.artist, entry.genres, entry.lyrics, entry.title, entry.extra]
        if metadata_file is None:
            stat = entry.path.stat()
            song += [stat.st_size, stat.st_mtime_ns]
        songs.append(song)
    listed = metadata_file.read_bytes().hex() if metadata_file is not None else ""
    text = json.dumps([listed, songs, options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_dataset(audio_dir: Path, metadata_file: Path | None, min_seconds: float = 2.0) -> dict[str, Any]:
    """What `write_shards` would write, from each file's tags and header alone (nothing is decoded or
    written): songs, artists, genres, minutes, lyrics, where the labels came from, and what it would skip.

    Problems found only by decoding (silence, NaN samples, a truncated file) are left to the real run.
    """
    skipped: list[dict[str, str]] = []
    entries = song_entries(audio_dir, metadata_file, lambda where, why: skipped.append({"file": where,
                                                                                        "reason": why}))  # fmt: skip
    songs, seen = [], set()
    for entry in entries:
        if entry.key in seen:
            skipped.append({"file": str(entry.path), "reason": "listed twice"})
            continue
        seen.add(entry.key)
        try:
            if not entry.path.is_file():
                raise BadAudio(entry.path, "missing (no such file)")
            info = probe(entry.path, min_seconds)
        except BadAudio as exc:
            skipped.append({"file": exc.path, "reason": exc.reason})
            continue
        songs.append((entry, info))
    artists = Counter(entry.artist for entry, _ in songs)
    genres = Counter(genre for entry, _ in songs for genre in entry.genres)
    sources = label_sources(LibrarySong(entry.path, {}, entry.sources) for entry, _ in songs)
    return {
        "audio_dir": str(audio_dir),
        "metadata": str(metadata_file) if metadata_file is not None else None,
        "songs": len(songs),
        "minutes": round(sum(info.seconds for _, info in songs) / 60, 2),
        "artists": dict(artists.most_common()),
        "genres": dict(genres.most_common()),
        "with_lyrics": sum(bool(entry.lyrics.strip()) for entry, _ in songs),
        "with_line_times": sum(bool(entry.extra.get("lyric_lines")) for entry, _ in songs),
        "formats": dict(Counter(info.format for _, info in songs).most_common()),
        "label_sources": sources,
        "skipped": skipped,
    }


def format_plan(plan: Mapping[str, Any]) -> str:
    """The dry run's table, as `jukebox-pl data shards --dry-run` prints it."""

    def top(counts: Mapping[str, int], shown: int = 8) -> str:
        names = [f"{name} ({count})" for name, count in list(counts.items())[:shown]]
        more = len(counts) - shown
        return ", ".join(names) + (f", and {more} more" if more > 0 else "")

    def sources(name: str) -> str:
        return ", ".join(f"{source} {count}" for source, count in sorted(plan["label_sources"][name].items()))

    songs = plan["songs"]
    lines = [
        f"dry run: nothing written; {plan['audio_dir']}" + (f" with {plan['metadata']}" if plan["metadata"] else ""),
        f"  songs      {songs}",
        f"  minutes    {plan['minutes']:.1f}",
        f"  formats    {top(plan['formats'])}",
        f"  artists    {len(plan['artists'])}: {top(plan['artists'])}",
        f"  genres     {len(plan['genres'])}: {top(plan['genres'])}",
        f"  lyrics     {plan['with_lyrics']} of {songs} songs, {plan['with_line_times']} with line times (.lrc)",
        "  labels from (songs per source):",
        *(f"    {name:<8} {sources(name)}" for name in plan["label_sources"]),
        f"  would skip {len(plan['skipped'])} file{'s' if len(plan['skipped']) != 1 else ''}"
        + (":" if plan["skipped"] else ""),
        *(f"    {item['file']}: {item['reason']}" for item in plan["skipped"]),
    ]
    return "\n".join(lines) + "\n"


def _assign_splits(entries: list[SongEntry], validation_fraction: float, min_seconds: float) -> dict[str, str]:
    splits = {entry.key: split_of(entry.key, validation_fraction) for entry in entries}
    if validation_fraction > 0 and len(splits) >= 2:
        # Small datasets: unless a validation song is readable audio, the readable song nearest the validation side
        # goes there, so both splits exist (a file skipped later as unreadable must not be the only one).
        order = sorted(entries, key=lambda e: (splits[e.key] != "validation", hashlib.sha256(e.key.encode()).digest()))
        readable = (entry for entry in order if _readable(entry.path, min_seconds))
        first = next(readable, None)
        if first is not None and (splits[first.key] == "validation" or next(readable, None) is not None):
            splits[first.key] = "validation"  # a training song moves only when another readable one stays
    return splits


def _readable(path: Path, min_seconds: float) -> bool:
    try:
        probe(path, min_seconds)
    except BadAudio:
        return False
    return True


def _set_aside(out_dir: Path, previous: Progress) -> None:
    """Move the dataset made from other inputs into PREVIOUS/, where it waits until the new one is complete."""
    logger.info(f"inputs or options changed since the last run: rebuilding the shards (the previous ones wait in "
        f"{PREVIOUS}/ until the new ones are complete)")  # fmt: skip
    aside = out_dir / PREVIOUS
    interrupted = aside.is_dir()  # a rebuild that stopped: the dataset to keep is aside already, its own files go
    aside.mkdir(exist_ok=True)
    for name in [shard["name"] for shard in previous["shards"]] + [MANIFEST, PROGRESS]:
        if interrupted:
            (out_dir / name).unlink(missing_ok=True)
        elif (out_dir / name).is_file():
            os.replace(out_dir / name, aside / name)


def _restore_previous(out_dir: Path, progress: Progress) -> None:
    """Undo a rebuild that failed: its shards go, the dataset set aside comes back."""
    aside = out_dir / PREVIOUS
    if not aside.is_dir():
        return
    for shard in progress["shards"]:
        (out_dir / shard["name"]).unlink(missing_ok=True)
    (out_dir / PROGRESS).unlink(missing_ok=True)
    remove_unfinished(out_dir)
    for kept in aside.iterdir():
        os.replace(kept, out_dir / kept.name)
    aside.rmdir()


def _manifest(progress: dict[str, Any], skipped: list[dict[str, str]], options: dict, sample_rate: int) -> dict:
    songs = [song for shard in progress["shards"] for song in shard["songs"]]
    artists = Vocabulary(sorted({s["artist"] for s in songs}, key=str.lower), kind="artist")
    genres = Vocabulary(sorted({g for s in songs for g in s["genres"]}, key=str.lower), kind="genre")
    shards = {
        split: [
            {"name": s["name"], "songs": len(s["songs"]), "samples": sum(x["samples"] for x in s["songs"])}
            for s in progress["shards"]
            if s["split"] == split
        ]
        for split in SPLITS
    }
    total = sum(s["samples"] for s in songs)
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "sample_rate": sample_rate,
        "counts": {
            "songs": len(songs),
            **{split: sum(x["songs"] for x in shards[split]) for split in SPLITS},
            "with_lyrics": sum(s["has_lyrics"] for s in songs),
            "skipped": len(skipped),
        },
        "total_seconds": round(total / sample_rate, 3),
        "artists": artists.to_dict(),
        "genres": genres.to_dict(),
        "shards": shards,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason"].split(" (")[0].split(":")[0] for s in skipped)),
        "options": options,
    }
