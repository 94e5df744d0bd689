"""A music library as a dataset: each song's labels from its tags, the lyric files beside it, and its folders.

For every field the first source that has it wins:

- **artist**: the artist tag, the album-artist tag, an ``.lrc`` file's ``[ar:]``, the folder
  layout (``Artist/Album/track`` or ``Artist/track``), else ``unknown``;
- **genres**: the genre tags, each split at ``;``, ``,``, ``/`` and ``|`` into the bag of genres;
- **title** and **album**: the tags, an ``.lrc`` file's ``[ti:]``/``[al:]``, the file and folder names;
- **lyrics**: a time-stamped ``.lrc`` file beside the song (``song.lrc``), then lyrics embedded in
  the tags (ID3 USLT, Vorbis LYRICS, MP4 ©lyr; LRC text there keeps its times too), then
  ``song.txt``. A timed file comes first because its line times place the lyric window.

Tags are read with mutagen, by content. A metadata file (`jukebox_pl.data.song_list.read_metadata`)
overrides any of this field by field.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jukebox_pl.data.audio import SUPPORTED_SUFFIXES, quiet_stderr, sniff
from jukebox_pl.data.labels import normalise_name
from jukebox_pl.data.lyric_files import LYRIC_SUFFIXES, Lyrics, parse_lyrics, read_lyrics_file

LABEL_FIELDS = ("artist", "genres", "title", "album", "lyrics")
# Files a music folder holds beside its songs; passed over without a word.
COMPANION_SUFFIXES = (
    *LYRIC_SUFFIXES,
    *(".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"),
    *(".cue", ".m3u", ".m3u8", ".pls", ".nfo", ".log", ".pdf", ".sfv", ".md5", ".ffp", ".accurip"),
    *(".ini", ".db", ".json", ".jsonl", ".csv", ".xml", ".md", ".html", ".url"),
)
_GENRE_SEPARATORS = re.compile(r"[;,/|\x00]")
_DISC_FOLDER = re.compile(r"^(cd|dis[ck])\s*\d+$", re.IGNORECASE)
_TRACK_NUMBER = re.compile(r"^\d{1,3}(\s*[-._]\s*|\s+)(?=\S)")  # "01 - Title", "3. Title", "07_Title"


@dataclass
class LibrarySong:
    """One audio file of a library, with the labels found for it and where each came from."""

    path: Path
    labels: dict[str, Any]  # artist, genres, title, album, lyrics (+ lyric_lines when timed)
    sources: dict[str, str] = field(default_factory=dict)  # field -> "tags", "lrc", "txt", "folder"


def split_genres(values: Iterable[str]) -> list[str]:
    """The bag of genres in tag values such as ``"Rock; Pop"`` or ``["Jazz", "Soul/Funk"]``, each once."""
    bag: dict[str, str] = {}
    for value in values:
        for name in _GENRE_SEPARATORS.split(str(value)):
            name = " ".join(name.split())
            if normalise_name(name):
                bag.setdefault(normalise_name(name), name)
    return list(bag.values())


def read_tags(path: Path) -> dict[str, Any]:
    """artist, album_artist, genres, title, album and lyrics from the file's tags (absent ones left out)."""
    import mutagen

    try:
        with open(path, "rb") as handle:
            kind = sniff(handle.read(64))
        # By content: mutagen.File would let a file's name outvote its content (a FLAC file named .mp3).
        module, name = _TAG_READERS.get(kind or "", ("", ""))
        with quiet_stderr():
            found = getattr(importlib.import_module(f"mutagen.{module}"), name)(path) if module else mutagen.File(path)
    except Exception:  # noqa: BLE001 - mutagen raises many types for damaged tags; the audio decides the song
        return {}
    tags = getattr(found, "tags", None)
    if tags is None:
        return {}
    values = _tag_values(tags)
    result: dict[str, Any] = {}
    for name in ("artist", "album_artist", "title", "album", "lyrics"):
        text = next((v.strip() for v in values.get(name, []) if isinstance(v, str) and v.strip()), "")
        if text:
            result[name] = text
    genres = split_genres(values.get("genres", []))
    if genres:
        result["genres"] = genres
    return result


# The mutagen module and class that read the tags of each format.
_TAG_READERS = {
    "FLAC": ("flac", "FLAC"),
    "Ogg Vorbis": ("oggvorbis", "OggVorbis"),
    "Ogg Opus": ("oggopus", "OggOpus"),
    "MP3": ("mp3", "MP3"),
    "AAC": ("aac", "AAC"),
    "MP4/M4A": ("mp4", "MP4"),
    "WAV": ("wave", "WAVE"),
    "AIFF": ("aiff", "AIFF"),
}
# Where each field sits in Vorbis comments (its keys) and in MP4 tags (its atom).
_TAG_KEYS = {
    "artist": (("artist",), "\xa9ART"),
    "album_artist": (("albumartist", "album artist", "album_artist"), "aART"),
    "title": (("title",), "\xa9nam"),
    "album": (("album",), "\xa9alb"),
    "genres": (("genre",), "\xa9gen"),
    "lyrics": (("lyrics", "unsyncedlyrics"), "\xa9lyr"),
}


def _tag_values(tags: Any) -> dict[str, list[str]]:
    """Each field's values, whatever the tag format (ID3, Vorbis comments, MP4 atoms)."""
    from mutagen._vorbis import VComment
    from mutagen.id3 import ID3
    from mutagen.mp4 import MP4Tags

    if isinstance(tags, ID3):

        def texts(frame_id: str) -> list[str]:
            return [str(text) for frame in tags.getall(frame_id) for text in frame.text]

        return {
            "artist": texts("TPE1"),
            "album_artist": texts("TPE2"),
            "title": texts("TIT2"),
            "album": texts("TALB"),
            "genres": [genre for frame in tags.getall("TCON") for genre in frame.genres],
            "lyrics": [frame.text for frame in tags.getall("USLT")],
        }
    if isinstance(tags, VComment):
        return {name: [value for key in keys for value in tags.get(key, [])] for name, (keys, _) in _TAG_KEYS.items()}
    if isinstance(tags, MP4Tags):
        return {name: [str(value) for value in tags.get(atom, [])] for name, (_, atom) in _TAG_KEYS.items()}
    return {}


def folder_labels(relative: Path) -> dict[str, str]:
    """artist, album and title from where a song sits: ``Artist/Album/[CD1/]01 - Title.ext`` or ``Artist/track``."""
    folders = [part for part in relative.parent.parts if not _DISC_FOLDER.match(part)]
    labels = {"title": _TRACK_NUMBER.sub("", relative.stem).strip() or relative.stem}
    if len(folders) >= 2:
        labels["artist"], labels["album"] = folders[-2], folders[-1]
    elif folders:
        labels["artist"] = folders[0]
    return labels


def lyric_file_index(files: Iterable[Path]) -> dict[tuple[Path, str], Path]:
    """(folder, lower-case stem) -> the lyric file for songs of that stem there: ``.lrc`` before ``.txt``."""
    index: dict[tuple[Path, str], Path] = {}
    rank = {suffix: position for position, suffix in enumerate(LYRIC_SUFFIXES)}
    for path in sorted(files):
        suffix = path.suffix.lower()
        if suffix in rank:
            key = (path.parent, path.stem.lower())
            if key not in index or rank[suffix] < rank[index[key].suffix.lower()]:
                index[key] = path
    return index


def describe_song(path: Path, audio_dir: Path, lyric_files: Mapping[tuple[Path, str], Path]) -> LibrarySong:
    """The labels of one song from its tags, the lyric file beside it and its folders (see the module)."""
    tags = read_tags(path)
    try:
        folder = folder_labels(path.relative_to(audio_dir))
    except ValueError:  # a metadata file may name a song outside the audio folder
        folder = {"title": path.stem}
    side_path = lyric_files.get((path.parent, path.stem.lower()))
    side = Lyrics()
    if side_path is not None:
        with contextlib.suppress(OSError):  # an unreadable lyric file costs the lyrics, not the song
            side = read_lyrics_file(side_path)
    side_kind = side_path.suffix.lower().lstrip(".") if side_path is not None else ""
    labels: dict[str, Any] = {}
    sources: dict[str, str] = {}
    choices = {
        "artist": [("tags", tags.get("artist")), ("tags", tags.get("album_artist")), (side_kind, side.tags.get("ar")),
                   ("folder", folder.get("artist"))],
        "genres": [("tags", tags.get("genres"))],
        "title": [("tags", tags.get("title")), (side_kind, side.tags.get("ti")), ("folder", folder.get("title"))],
        "album": [("tags", tags.get("album")), (side_kind, side.tags.get("al")), ("folder", folder.get("album"))],
    }  # fmt: skip
    for name, candidates in choices.items():
        for source, value in candidates:
            if value:
                labels[name], sources[name] = value, source
                break
    embedded = parse_lyrics(tags.get("lyrics", ""))
    for source, lyrics in (("lrc", side if side.lines else None), ("tags", embedded), (side_kind, side)):
        if lyrics is not None and lyrics.text.strip():
            labels["lyrics"], sources["lyrics"] = lyrics.text, source
            if lyrics.lines:
                labels["lyric_lines"] = lyrics.lines
            break
    return LibrarySong(path, labels, sources)


@dataclass
class LibraryScan:
    """The songs a folder holds, and the files in it that are not songs, with the reason."""

    songs: list[LibrarySong]
    not_audio: list[dict[str, str]]  # {"file", "reason"}


def scan_library(audio_dir: Path) -> LibraryScan:
    """Every audio file under `audio_dir` (by name in any case, or else by content), sorted, with its labels.

    Lyric files, pictures, playlists and the like are passed over; hidden files too. Any other file
    whose content is no audio format is listed in `not_audio`.
    """
    files = sorted(p for p in audio_dir.rglob("*") if p.is_file() and not _hidden(p.relative_to(audio_dir)))
    lyric_files = lyric_file_index(files)
    songs, not_audio = [], []
    for path in files:
        suffix = path.suffix.lower()
        if suffix in COMPANION_SUFFIXES:
            continue
        if suffix not in SUPPORTED_SUFFIXES and not _announces_audio(path):
            not_audio.append({"file": str(path), "reason": f"not an audio file ({suffix or 'no extension'})"})
            continue
        songs.append(describe_song(path, audio_dir, lyric_files))
    return LibraryScan(songs, not_audio)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _announces_audio(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return sniff(handle.read(64)) is not None
    except OSError:
        return False


def label_sources(songs: Iterable[LibrarySong]) -> dict[str, dict[str, int]]:
    """For each label, how many songs took it from each source (for the dry run's table)."""
    counts: dict[str, Counter] = {name: Counter() for name in LABEL_FIELDS}
    for song in songs:
        for name in LABEL_FIELDS:
            counts[name][song.sources.get(name, "none")] += 1
    return {name: dict(counter) for name, counter in counts.items()}
