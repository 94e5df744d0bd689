"""Write a folder of songs and their metadata as webdataset tar shards plus ``dataset.json``.

The labels come from a metadata file, or from the songs themselves (tags, lyric files, folders:
`jukebox_pl.data.library`); a metadata file overrides those field by field. Each song becomes
one sample: ``KEY.flac`` (the audio, lossless) and ``KEY.json`` (its metadata). Songs are split
into train and validation deterministically by a hash of their path. A shard is written under a
temporary name and renamed only when complete, and ``.progress.json`` records every finished
shard, so a killed run leaves nothing a reader would take and the same command resumes where it
stopped.
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
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.data.audio import MIN_SAMPLE_RATE, BadAudio, decode, encode_flac, probe, read_song
from jukebox_pl.data.labels import Vocabulary, label_fields
from jukebox_pl.data.library import LibrarySong, describe_song, label_sources, lyric_file_index, scan_library
from jukebox_pl.data.lyric_files import Lyrics, parse_lyrics, read_lyrics_file
from jukebox_pl.errors import JukeboxError, did_you_mean

logger = logging.getLogger(__name__)
MANIFEST = "dataset.json"
PROGRESS = ".progress.json"
PREVIOUS = ".previous"  # the dataset a rebuild replaces, kept until the new one is complete
SPLITS = ("train", "validation")
FORMAT = "jukebox-pl-shards/1"
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
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = _start_or_resume(out_dir, fingerprint)
    try:
        skipped[:0] = [s for s in progress["skipped"] if s not in skipped]
        done = {song["key"] for shard in progress["shards"] for song in shard["songs"]}
        skipped_files = {s["file"] for s in progress["skipped"]}

        def finished(shard: dict[str, Any]) -> None:
            progress["shards"].append(shard)
            progress["skipped"] = skipped
            atomic_write_text(out_dir / PROGRESS, json.dumps(progress))

        sinks = {
            split: ShardSink(out_dir, split, max_bytes, sum(s["split"] == split for s in progress["shards"]), finished)
            for split in SPLITS
        }
        splits = _assign_splits(entries, validation_fraction)
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
        progress["skipped"] = skipped
        atomic_write_text(out_dir / PROGRESS, json.dumps(progress))
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


def _assign_splits(entries: list[SongEntry], validation_fraction: float) -> dict[str, str]:
    splits = {entry.key: split_of(entry.key, validation_fraction) for entry in entries}
    if validation_fraction > 0 and len(splits) >= 2 and "validation" not in splits.values():
        # Small datasets: the song nearest the validation side goes there, so both splits exist.
        nearest = min(splits, key=lambda key: hashlib.sha256(key.encode()).hexdigest())
        splits[nearest] = "validation"
    return splits


def _start_or_resume(out_dir: Path, fingerprint: str) -> dict[str, Any]:
    for stale in out_dir.glob(".*.tar.tmp"):
        stale.unlink()
    path = out_dir / PROGRESS
    if path.is_file():
        previous = json.loads(path.read_text())
        present = all((out_dir / shard["name"]).is_file() for shard in previous["shards"])
        if previous.get("fingerprint") == fingerprint and present:
            if previous["shards"]:
                logger.info(f"resuming: {len(previous['shards'])} finished shards kept")
            return previous
        logger.info(f"inputs or options changed since the last run: rebuilding the shards (the previous ones wait in "
            f"{PREVIOUS}/ until the new ones are complete)")  # fmt: skip
        aside = out_dir / PREVIOUS
        if aside.is_dir():  # a rebuild that stopped before: its previous dataset is still the one to keep
            for shard in previous["shards"]:
                (out_dir / shard["name"]).unlink(missing_ok=True)
            path.unlink()
        else:
            aside.mkdir()
            names = [shard["name"] for shard in previous["shards"]] + [MANIFEST, PROGRESS]
            for name in names:
                if (out_dir / name).is_file():
                    os.replace(out_dir / name, aside / name)
    return {"fingerprint": fingerprint, "shards": [], "skipped": []}


def _restore_previous(out_dir: Path, progress: dict[str, Any]) -> None:
    """Undo a rebuild that failed: its shards go, the dataset set aside comes back."""
    aside = out_dir / PREVIOUS
    if not aside.is_dir():
        return
    for shard in progress["shards"]:
        (out_dir / shard["name"]).unlink(missing_ok=True)
    (out_dir / PROGRESS).unlink(missing_ok=True)
    for stale in out_dir.glob(".*.tar.tmp"):
        stale.unlink()
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


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise JukeboxError(f"{path} not found: build the dataset with `jukebox-pl data shards` first")
    manifest = read_json_object(path)
    if manifest.get("format") != FORMAT:
        raise JukeboxError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    check_manifest(manifest, path)
    return manifest


def split_samples(dataset_dir: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """The raw samples (``__key__``, ``flac`` bytes, ``json`` bytes) of one split, shard by shard, read and
    checked as `shard_samples` reads them."""
    data = Path(dataset_dir)
    manifest = load_manifest(data)
    shards = manifest["shards"].get(split)
    if shards is None:
        raise JukeboxError(f"{data}: no split '{split}'{did_you_mean(split, SPLITS)}; splits: {', '.join(SPLITS)}")
    if not shards:
        counts = ", ".join(f"{name} {manifest['counts'].get(name, 0)}" for name in SPLITS)
        raise JukeboxError(f"{data}: the '{split}' split has no songs (songs per split: {counts})")
    urls = [str(data / shard["name"]) for shard in shards]
    recorded = {url: shard.get("songs") for url, shard in zip(urls, shards, strict=True)}
    for _, sample, _ in shard_samples(urls, ("flac",), recorded):
        yield sample


def shard_samples(
    shards: Iterable[str], fields: Sequence[str], recorded: Mapping[str, Any] | None = None
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, sample, metadata) for each sample of `shards`, in order; `where` is "SHARD: KEY".

    Every sample must hold `fields` and a ``json`` object whose labels have the right types
    (`label_fields`). A file that is not a readable tar or holds no sample, and a sample that
    breaks these rules (as a truncated or damaged shard does), is a JukeboxError naming the
    shard and the member, raised when the reader reaches it. `recorded` maps a shard to the
    number of songs its manifest records: a shard read to its end that holds another number
    (one cut short where a member ends reads as a whole, shorter tar) is an error too.
    """
    for url in shards:
        samples = wds.tarfile_to_samples()([{"url": url}])
        count = 0
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - tarfile, I/O and webdataset errors come in many types
                raise JukeboxError(f"{url}: not a readable shard ({_reason(exc)})") from None
            count += 1
            where = f"{url}: {sample['__key__']}"
            missing = [name for name in ("json", *fields) if name not in sample]
            if missing:
                raise JukeboxError(f"{where}: no {' or '.join(missing)} member (a truncated or damaged shard)")
            yield where, sample, _metadata(where, sample["json"])
        if count == 0:
            raise JukeboxError(f"{url}: holds no samples (an empty or damaged shard)")
        expected = (recorded or {}).get(url)
        if isinstance(expected, int) and count != expected:
            raise JukeboxError(
                f"{url}: holds {count} song{'s' if count != 1 else ''}, but its dataset's {MANIFEST} records "
                f"{expected} (a truncated or damaged shard: build or copy it again)"
            )


def _reason(exc: Exception) -> str:
    # webdataset appends the stream and the url to an exception's args: the first arg is the message.
    message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.args[0] if exc.args else ""
    return f"{type(exc).__name__}: {message}"


def _metadata(where: str, data: bytes) -> dict[str, Any]:
    try:
        metadata = json.loads(data)
    except (ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8
        raise JukeboxError(f"{where}.json: not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise JukeboxError(f"{where}.json: must hold a JSON object, not {type(metadata).__name__}")
    try:
        label_fields(metadata)
    except ValueError as exc:
        raise JukeboxError(f"{where}.json: {exc}") from None
    return metadata


def artist_labels(dataset_dir: str | Path) -> list[tuple[str, list[str]]]:
    """Each artist of a dataset with the genres of their first song, the artists with most songs first.

    Only the songs' JSON members are read: a tar reader steps over the audio without reading it.
    """
    data = Path(dataset_dir)
    manifest = load_manifest(data)
    songs: Counter[str] = Counter()
    genres: dict[str, list[str]] = {}
    for shard in (shard for listed in manifest["shards"].values() for shard in listed):
        try:
            with tarfile.open(data / shard["name"]) as archive:
                for member in archive:
                    if member.name.endswith(".json"):
                        where = f"{data / shard['name']}: {member.name}"
                        artist, song_genres, _ = label_fields(_metadata(where, archive.extractfile(member).read()))
                        songs[artist] += 1
                        genres.setdefault(artist, song_genres or ["unknown"])
        except (tarfile.TarError, OSError) as exc:
            raise JukeboxError(f"{data / shard['name']}: not a readable shard ({exc})") from None
    return [(artist, genres[artist]) for artist, _ in songs.most_common()]


@dataclass(frozen=True)
class ShardSong:
    """One song read back from a dataset: its key, its metadata and its audio as written."""

    key: str
    metadata: dict[str, Any]  # artist, genres, lyrics, title, ... (the shard's KEY.json)
    audio: np.ndarray  # (frames, channels) float32
    sample_rate: int


def find_song(
    dataset_dir: str | Path,
    split: str = "validation",
    artist: str | None = None,
    key: str | None = None,
    index: int = 0,
) -> ShardSong:
    """The `index`-th song of `split` (0: the first), in key order, by `artist` (any, when None) or with key `key`."""
    matches: list[dict[str, Any]] = []
    artists = set()
    for sample in split_samples(dataset_dir, split):
        metadata = json.loads(sample["json"])
        artists.add(metadata.get("artist", ""))
        if (key is None or sample["__key__"] == key) and (artist is None or metadata.get("artist") == artist):
            matches.append({**sample, "metadata": metadata})
    matches.sort(key=lambda sample: sample["__key__"])
    if not matches:
        wanted = f"key {key!r}" if key is not None else f"artist {artist!r}"
        hint = did_you_mean(artist, artists) if key is None and artist is not None else ""
        raise JukeboxError(f"{dataset_dir}: no song with {wanted} in the '{split}' split{hint}")
    if not 0 <= index < len(matches):
        raise JukeboxError(f"{dataset_dir}: song index {index} asked for, but the '{split}' split holds "
                           f"{len(matches)} such song{'s' if len(matches) != 1 else ''}")  # fmt: skip
    found = matches[index]
    audio, rate = decode(found["flac"])
    return ShardSong(found["__key__"], found["metadata"], audio, rate)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; a file that is not one is a JukeboxError naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8
        raise JukeboxError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise JukeboxError(f"{path}: must hold a JSON object, not {type(value).__name__}")
    return value


def check_manifest(manifest: Mapping[str, Any], path: Path, integer_lists: tuple[str, ...] = ()) -> None:
    """Refuse a manifest whose fields the readers rely on are missing or of the wrong type.

    Checked: ``sample_rate``, ``shards`` ({split: [{name: ...}]}), the ``artists`` and ``genres``
    vocabularies, and each of `integer_lists` (a non-empty list of positive integers).
    """
    problems = []
    if not _positive_int(manifest.get("sample_rate")):
        problems.append(f"sample_rate must be a positive integer, not {manifest.get('sample_rate')!r}")
    shards = manifest.get("shards")
    if not isinstance(shards, dict) or not all(
        isinstance(listed, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in listed)
        for listed in shards.values()
    ):
        problems.append("shards must map each split to a list of {name: SHARD_FILE, ...}")
    for kind in ("artists", "genres"):
        try:
            Vocabulary.from_dict(manifest.get(kind), kind=kind[:-1])
        except ValueError as exc:
            problems.append(str(exc))
    for name in integer_lists:
        value = manifest.get(name)
        if not isinstance(value, list) or not value or not all(_positive_int(v) for v in value):
            problems.append(f"{name} must be a list of positive integers, not {value!r}")
    if problems:
        raise JukeboxError(f"{path}: a damaged manifest: " + "; ".join(problems))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
