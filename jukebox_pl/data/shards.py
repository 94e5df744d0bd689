"""Write a folder of songs and their metadata as webdataset tar shards plus ``dataset.json``.

The labels come from a metadata file, or from the songs themselves (tags, lyric files, folders:
`jukebox_pl.data.library`); a metadata file overrides those field by field. Each song becomes
one sample: ``KEY.flac`` (the audio, lossless) and ``KEY.json`` (its metadata). Songs are split
into train and validation deterministically by a hash of their path. A shard is written under a
temporary name and renamed only when complete, and ``.progress.json`` records every finished
shard, so a killed run leaves nothing a reader would take and the same command resumes where it
stopped. The ``encode`` pipeline writes and resumes its code shards with the same functions.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.data.audio import MIN_SAMPLE_RATE, BadAudio, encode_flac, probe, read_song
from jukebox_pl.data.labels import Vocabulary
from jukebox_pl.data.library import LibrarySong, describe_song, label_sources, lyric_file_index, scan_library
from jukebox_pl.data.lyric_files import Lyrics, parse_lyrics, read_lyrics_file
from jukebox_pl.data.shard_reader import FORMAT, MANIFEST, SPLITS
from jukebox_pl.errors import JukeboxError

logger = logging.getLogger(__name__)
PROGRESS = ".progress.json"  # a shard folder's finished shards and what they were made from
Progress = dict[str, Any]  # a PROGRESS record: "fingerprint", "shards" (each {"name", "split", "songs"}), ...
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")  # as ShardSink names a shard
PREVIOUS = ".previous"  # the dataset a rebuild replaces, kept until the new one is complete
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_KNOWN_FIELDS = ("path", "artist", "genre", "genres", "lyrics", "title")
_FILLED_FIELDS = ("artist", "genres", "lyrics", "title", "album")  # what the songs themselves may tell


def parse_size(text: str | int) -> int:
    """Bytes in "256MB", "1.5G", "500k" or a plain number."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise JukeboxError(f"shard size {text!r} is not a size such as 256MB or 1GB")
    power = " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * 1024**power)


@dataclass
class SongEntry:
    """One metadata row, checked and normalised."""

    path: Path  # the audio file
    row: int  # line (JSONL) or row (CSV) number, for messages
    artist: str
    genres: list[str]
    lyrics: str
    title: str
    extra: dict[str, Any] = field(default_factory=dict)
    # Where each label came from ("metadata", "tags", "lrc", "txt", "folder"); absent: nowhere.
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A stable sample key: readable stem plus a hash of the path (no dots for webdataset)."""
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", self.path.stem)[:48]
        return f"{stem}_{hashlib.sha1(str(self.path).encode()).hexdigest()[:10]}"


def read_metadata(metadata_file: Path, audio_dir: Path, on_bad_row: Callable[[str, str], None]) -> list[SongEntry]:
    """Rows of a JSONL or CSV metadata file; unusable rows go to `on_bad_row(where, why)`."""
    if not metadata_file.is_file():
        raise JukeboxError(f"metadata file {metadata_file} does not exist")
    entries: list[SongEntry] = []
    for number, row in _raw_rows(metadata_file, on_bad_row):  # lazily: problems come in file order
        where = f"{metadata_file}:{number}"
        path_value = row.get("path")
        if not isinstance(path_value, str) or not path_value.strip():
            on_bad_row(where, "row has no 'path'")
            continue
        genres = row.get("genres", row.get("genre")) or []
        if isinstance(genres, str):
            genres = [g.strip() for g in re.split(r"[;|]", genres) if g.strip()]
        if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
            on_bad_row(where, f"'genre' must be a name or a list of names, not {genres!r}")
            continue
        try:
            lyrics = _lyrics(row.get("lyrics"), metadata_file.parent, audio_dir)
        except OSError as exc:
            on_bad_row(where, f"lyrics file unreadable: {exc}")
            continue
        path = Path(path_value)
        extra = {k: v for k, v in row.items() if k not in _KNOWN_FIELDS}
        if lyrics.lines and "lyric_lines" not in extra:
            extra["lyric_lines"] = lyrics.lines
        given = {"artist": row.get("artist"), "genres": genres, "lyrics": lyrics.text, "title": row.get("title"),
                 "album": row.get("album")}  # fmt: skip
        entries.append(
            SongEntry(
                path=path if path.is_absolute() else audio_dir / path,
                row=number,
                artist=str(row.get("artist") or "unknown").strip() or "unknown",
                genres=genres,
                lyrics=lyrics.text,
                title=str(row.get("title") or path.stem),
                extra=extra,
                sources={name: "metadata" for name, value in given.items() if value},
            )
        )
    return entries


def library_entries(audio_dir: Path, on_bad_file: Callable[[str, str], None]) -> list[SongEntry]:
    """Every song under `audio_dir`, labelled from its tags, lyric files and folders; other files go to
    `on_bad_file(where, why)`."""
    scan = scan_library(audio_dir)
    for item in scan.not_audio:
        on_bad_file(item["file"], item["reason"])
    entries = []
    for number, song in enumerate(scan.songs, start=1):
        entry = SongEntry(song.path, number, "unknown", [], "", song.path.stem)
        entries.append(_fill(entry, song))
    return entries


def complete_entries(entries: list[SongEntry], audio_dir: Path) -> list[SongEntry]:
    """Metadata rows with the labels they leave out taken from the songs themselves (tags, lyric files,
    folders), as a library without a metadata file is read."""
    folders = {entry.path.parent for entry in entries}
    lyric_files = lyric_file_index(p for folder in folders if folder.is_dir() for p in folder.iterdir())
    completed = []
    for entry in entries:
        if all(entry.sources.get(name) for name in _FILLED_FIELDS) or not entry.path.is_file():
            completed.append(entry)
            continue
        completed.append(_fill(entry, describe_song(entry.path, audio_dir, lyric_files)))
    return completed


def _fill(entry: SongEntry, song: LibrarySong) -> SongEntry:
    """`entry` with each label it has no source for taken from `song`."""
    labels, sources, extra = song.labels, dict(entry.sources), dict(entry.extra)
    values = {"artist": entry.artist, "genres": entry.genres, "lyrics": entry.lyrics, "title": entry.title}
    for name in _FILLED_FIELDS:
        if sources.get(name) or not labels.get(name):
            continue
        sources[name] = song.sources[name]
        if name == "album":
            extra.setdefault("album", labels["album"])
        else:
            values[name] = labels[name]
        if name == "lyrics" and labels.get("lyric_lines"):
            extra["lyric_lines"] = labels["lyric_lines"]
    return SongEntry(entry.path, entry.row, values["artist"], values["genres"], values["lyrics"], values["title"],
                     extra, sources)  # fmt: skip


def _raw_rows(metadata_file: Path, on_bad_row: Callable[[str, str], None]) -> Iterator[tuple[int, dict[str, Any]]]:
    text = metadata_file.read_text(encoding="utf-8", errors="replace")
    if metadata_file.suffix.lower() == ".csv":
        for number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            if None in row:  # more cells than header columns
                on_bad_row(f"{metadata_file}:{number}", "more cells than the header has columns")
                continue
            yield number, {k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            on_bad_row(f"{metadata_file}:{number}", f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            on_bad_row(f"{metadata_file}:{number}", "a row must be a JSON object")
            continue
        yield number, row


def _lyrics(value: Any, *directories: Path) -> Lyrics:
    """Lyrics given inline, or as the path of a .txt/.lrc file; an .lrc file's line times are kept."""
    if not isinstance(value, str) or not value.strip():
        return Lyrics()
    candidate = value.strip()
    if "\n" not in candidate and candidate.lower().endswith((".txt", ".lrc")):
        for directory in directories:
            path = directory / candidate
            if path.is_file():
                return read_lyrics_file(path)
        raise OSError(f"{candidate} not found next to the metadata or the audio")
    return parse_lyrics(value)


def split_of(key: str, validation_fraction: float) -> str:
    """Deterministic by song: the same key always lands in the same split."""
    position = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "validation" if position < validation_fraction else "train"


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


def song_entries(audio_dir: Path, metadata_file: Path | None, on_bad: Callable[[str, str], None]) -> list[SongEntry]:
    """The songs to write: the metadata file's rows completed from the songs, or every song of the folder."""
    if metadata_file is None:
        return library_entries(audio_dir, on_bad)
    return complete_entries(read_metadata(metadata_file, audio_dir, on_bad), audio_dir)


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
