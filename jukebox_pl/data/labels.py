"""Artist and genre vocabularies, and the labeller that turns a song's metadata into ids.

This is the CPU half of the label conditioners: it runs in the data workers, so that a
training step never touches strings.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from jukebox_pl.data.text import LyricsProcessor, line_anchors, lyric_window

UNKNOWN = "unknown"
UNKNOWN_ID = 0
GENRE_PADDING = -1  # Jukebox pads the bag of genres with -1 (ignored by the embedding)
# Far above any real vocabulary (Jukebox v2 has 7898 artists); a larger id is a damaged file.
MAX_ID = 2**20


class UnknownLabelWarning(UserWarning):
    """A name that is not in the vocabulary was mapped to the "unknown" id."""


def normalise_name(name: str) -> str:
    """The lookup key of a name: case, punctuation and spacing do not matter.

    "J.S. Bach", "J. S. Bach" and "j_s_bach" are one name (Jukebox's v2 ids use the same
    lower-case, underscore-joined form).
    """
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


class Vocabulary:
    """Names of one kind (artists or genres) with stable ids; id 0 is "unknown".

    Ids are never reused: extending a vocabulary appends, so ids saved in a checkpoint
    keep their meaning. A vocabulary read from elsewhere (OpenAI's id files) may give one id
    several names (aliases) and leave ids unused; ``names[id]`` is an id's first name, or ""
    for an unused id.
    """

    def __init__(self, names: Iterable[str] = (), kind: str = "artist") -> None:
        self.kind = kind
        self.names: list[str] = [UNKNOWN]
        self._ids: dict[str, int] = {normalise_name(UNKNOWN): UNKNOWN_ID}
        self.aliases: dict[str, int] = {}  # further names of an id, as written
        self._warned: set[str] = set()
        for name in names:
            self.add(name)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return normalise_name(name) in self._ids

    def add(self, name: str) -> int:
        """The id of `name`, appended if it is new."""
        key = normalise_name(name)
        if not key:
            raise ValueError(f"{self.kind} name {name!r} has no letters or digits")
        if key not in self._ids:
            self._ids[key] = len(self.names)
            self.names.append(name)
        return self._ids[key]

    def id(self, name: str) -> int:
        """The id of `name`, or 0 ("unknown") with one warning per name."""
        key = normalise_name(name)
        found = self._ids.get(key)
        if found is not None:
            return found
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"{self.kind} {name!r} is not in the vocabulary of {len(self) - 1} {self.kind}s; "
                f"it is treated as '{UNKNOWN}' (id {UNKNOWN_ID})",
                UnknownLabelWarning,
                stacklevel=2,
            )
        return UNKNOWN_ID

    def known_names(self) -> list[str]:
        """Every name, aliases included (for "did you mean")."""
        return [name for name in self.names if name] + list(self.aliases)

    def to_dict(self) -> dict[str, int]:
        primary = {name: index for index, name in enumerate(self.names) if name}
        return {**primary, **self.aliases}

    @classmethod
    def from_dict(cls, ids: Mapping[str, int], kind: str = "artist") -> Vocabulary:
        """Rebuild from ``{name: id}`` as saved in dataset.json or a checkpoint (aliases and gaps allowed)."""
        if not isinstance(ids, Mapping) or not all(
            isinstance(name, str) and _is_id(index) for name, index in ids.items()
        ):
            shown = repr(ids) if len(repr(ids)) < 80 else repr(ids)[:77] + "..."
            raise ValueError(f"{kind} ids must map names to integers from 0 to {MAX_ID - 1}; got {shown}")
        ordered = sorted(ids.items(), key=lambda item: item[1])
        if not ordered or ordered[0][1] != UNKNOWN_ID or normalise_name(ordered[0][0]) != UNKNOWN or ordered[0][1] < 0:
            raise ValueError(f"{kind} ids must start at 0 = '{UNKNOWN}'; got {dict(ordered[:5])}...")
        vocabulary = cls(kind=kind)
        vocabulary.names = [""] * (ordered[-1][1] + 1)
        vocabulary.names[UNKNOWN_ID] = UNKNOWN
        for name, index in ordered[1:]:
            key = normalise_name(name)
            if not key:
                raise ValueError(f"{kind} name {name!r} (id {index}) has no letters or digits")
            if key in vocabulary._ids:
                if vocabulary._ids[key] != index:
                    raise ValueError(f"{kind} name {name!r} has two ids: {vocabulary._ids[key]} and {index}")
                continue
            vocabulary._ids[key] = index
            if vocabulary.names[index]:
                vocabulary.aliases[name] = index
            else:
                vocabulary.names[index] = name
        return vocabulary


def _is_id(index: Any) -> bool:
    return isinstance(index, int) and not isinstance(index, bool) and 0 <= index < MAX_ID


def label_fields(metadata: Mapping[str, Any]) -> tuple[str, list[str], str]:
    """A song's (artist, genres, lyrics); absent or empty ones are "unknown", [] and "".

    A field of another type (from a damaged or hand-written file) is a ValueError naming it.
    """
    artist = metadata.get("artist") or UNKNOWN
    genres = metadata.get("genres") or []
    lyrics = metadata.get("lyrics") or ""
    if not isinstance(artist, str):
        raise ValueError(f"'artist' must be a name, not {artist!r}")
    if not isinstance(genres, list) or not all(isinstance(genre, str) for genre in genres):
        raise ValueError(f"'genres' must be a list of names, not {genres!r}")
    if not isinstance(lyrics, str):
        raise ValueError(f"'lyrics' must be text, not {type(lyrics).__name__}")
    return artist, genres, lyrics


@dataclass(frozen=True)
class SongLabels:
    """A song's labels as ids: computed once per song, windowed per crop."""

    artist: int
    genres: np.ndarray  # (max_genres,) int64, padded with -1
    lyric_tokens: np.ndarray  # (n,) int64, the whole song's lyrics
    lyric_anchors: np.ndarray | None = None  # where timed lines start (`line_anchors`), None: spread evenly


class Labeller:
    """Song metadata -> ids (artist, bag of genres, lyric tokens) and per-crop lyric windows."""

    def __init__(
        self,
        artists: Vocabulary,
        genres: Vocabulary,
        max_genres: int = 5,
        n_tokens: int = 0,
        lyrics_version: Literal["v2", "v3"] = "v2",
    ) -> None:
        if max_genres < 1:
            raise ValueError("max_genres must be at least 1")
        self.artists, self.genres = artists, genres
        self.max_genres, self.n_tokens = max_genres, n_tokens
        self.lyrics = LyricsProcessor(lyrics_version)

    def song(self, metadata: Mapping[str, Any]) -> SongLabels:
        """The ids of a song's metadata; a field of the wrong type is a ValueError (see `label_fields`)."""
        artist, genre_names, lyrics = label_fields(metadata)
        genre_ids = [self.genres.id(name) for name in genre_names][: self.max_genres]
        padded = np.full(self.max_genres, GENRE_PADDING, dtype=np.int64)
        padded[: len(genre_ids)] = genre_ids
        tokens = np.asarray(self.lyrics.tokenize(lyrics) if self.n_tokens > 0 else [], dtype=np.int64)
        anchors = None
        lines = metadata.get("lyric_lines")
        if self.n_tokens > 0 and isinstance(lines, list) and all(isinstance(line, Mapping) for line in lines):
            rate, samples = metadata.get("sample_rate"), metadata.get("samples")
            if isinstance(rate, int) and isinstance(samples, int) and rate > 0:
                anchors = line_anchors(lines, lyrics, samples / rate, self.lyrics)
        return SongLabels(self.artists.id(artist), padded, tokens, anchors)

    def window(self, song: SongLabels, total_length: int, offset: int, sample_length: int) -> np.ndarray:
        tokens, _ = lyric_window(
            song.lyric_tokens, self.n_tokens, total_length, offset, sample_length, song.lyric_anchors
        )
        return tokens
