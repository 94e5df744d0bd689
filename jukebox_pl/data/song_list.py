"""Which songs a dataset holds, and their labels: a metadata file's rows, or a music folder's songs.

The labels come from a metadata file, or from the songs themselves (tags, lyric files, folders:
`jukebox_pl.data.library`); a metadata file overrides those field by field.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jukebox_pl.data.library import LibrarySong, describe_song, lyric_file_index, scan_library
from jukebox_pl.data.lyric_files import Lyrics, parse_lyrics, read_lyrics_file
from jukebox_pl.errors import JukeboxError

_KNOWN_FIELDS = ("path", "artist", "genre", "genres", "lyrics", "title")
_FILLED_FIELDS = ("artist", "genres", "lyrics", "title", "album")  # what the songs themselves may tell


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
    return [
        _fill(SongEntry(song.path, number, "unknown", [], "", song.path.stem), song)
        for number, song in enumerate(scan.songs, start=1)
    ]


def complete_entries(entries: list[SongEntry], audio_dir: Path) -> list[SongEntry]:
    """Metadata rows with the labels they leave out taken from the songs themselves (tags, lyric files,
    folders), as a library without a metadata file is read."""
    folders = {entry.path.parent for entry in entries}
    lyric_files = lyric_file_index(p for folder in folders if folder.is_dir() for p in folder.iterdir())
    return [
        entry
        if all(entry.sources.get(name) for name in _FILLED_FIELDS) or not entry.path.is_file()
        else _fill(entry, describe_song(entry.path, audio_dir, lyric_files))
        for entry in entries
    ]


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
    return replace(entry, **values, extra=extra, sources=sources)


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


def song_entries(audio_dir: Path, metadata_file: Path | None, on_bad: Callable[[str, str], None]) -> list[SongEntry]:
    """The songs to write: the metadata file's rows completed from the songs, or every song of the folder."""
    if metadata_file is None:
        return library_entries(audio_dir, on_bad)
    return complete_entries(read_metadata(metadata_file, audio_dir, on_bad), audio_dir)
