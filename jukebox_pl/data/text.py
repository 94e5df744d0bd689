"""Lyrics as Jukebox sees them: a character vocabulary, cleaning, and the lyric window.

The vocabularies and the window heuristic follow openai/jukebox
(``jukebox/data/text_processor.py`` and ``get_relevant_lyric_tokens`` in
``jukebox/data/labels.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from unidecode import unidecode

UNKNOWN_TOKEN = 0  # also the padding token of the lyric window
# Jukebox v2 (5B models) has '+'; v3 (1B lyrics model) does not. Token ids start at 1.
_V2_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,:;!?-+'\"()[] \t\n"
_V3_CHARACTERS = _V2_CHARACTERS.replace("+", "")


class LyricsProcessor:
    """Cleans lyrics to a character vocabulary and turns them into token ids and back.

    ``version="v2"`` has 80 symbols (79 characters and the unknown/padding token 0),
    ``"v3"`` has 79. Cleaning transliterates to ASCII (unidecode), turns backslashes into
    newlines, and drops every character outside the vocabulary.
    """

    def __init__(self, version: Literal["v2", "v3"] = "v2") -> None:
        if version not in ("v2", "v3"):
            raise ValueError(f"lyrics vocabulary version must be 'v2' or 'v3', not {version!r}")
        self.version = version
        self.characters = _V2_CHARACTERS if version == "v2" else _V3_CHARACTERS
        self._ids = {character: index + 1 for index, character in enumerate(self.characters)}
        self._outside = re.compile(f"[^{re.escape(self.characters)}]+")

    @property
    def n_vocab(self) -> int:
        return len(self.characters) + 1

    def clean(self, text: str) -> str:
        return self._outside.sub("", unidecode(text).replace("\\", "\n"))

    def dropped(self, text: str) -> list[str]:
        """The characters of `text` that cleaning removes altogether (emoji, symbols the vocabulary lacks),
        each once, in order; letters that are transliterated ('ü' -> 'u') are kept, so not listed."""
        return list(dict.fromkeys(c for c in text if not c.isspace() and not self.clean(c)))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` after cleaning."""
        return [self._ids[character] for character in self.clean(text)]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`; the unknown/padding token becomes nothing."""
        return "".join(self.characters[t - 1] for t in tokens if t != UNKNOWN_TOKEN)


def line_anchors(
    lines: Sequence[Mapping[str, Any]], lyrics: str, seconds: float, processor: LyricsProcessor
) -> np.ndarray | None:
    """Where each timed lyric line starts: (2, k) of (fraction of the song, token index), from (0, 0) to
    (1, tokens), for `lyric_window`; None when there are no lines, or their texts do not spell `lyrics`.

    `lines` are ``{"time": seconds, "text": ...}`` as an ``.lrc`` file gives them (`jukebox_pl.data.lyric_files`);
    the lyrics are their non-empty texts joined by newlines. An empty line (an instrumental break) holds
    the window still until the next line.
    """
    if not lines or seconds <= 0 or not all(isinstance(line.get("time"), (int, float)) for line in lines):
        return None
    texts = [str(line.get("text", "")) for line in lines]
    if "\n".join(text for text in texts if text).strip() != lyrics.strip():
        return None
    fractions, indices, spoken = [0.0], [0], []
    for line, text in zip(lines, texts, strict=True):
        prefix = "\n".join(spoken) + ("\n" if spoken else "")
        fractions.append(min(max(float(line["time"]) / seconds, fractions[-1]), 1.0))
        indices.append(len(processor.tokenize(prefix)))
        if text:
            spoken.append(text)
    fractions.append(1.0)
    indices.append(len(processor.tokenize(lyrics.strip())))
    return np.asarray([fractions, indices], dtype=np.float64)


def lyric_window(
    tokens: Sequence[int],
    n_tokens: int,
    total_length: int,
    offset: int,
    duration: int,
    anchors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The `n_tokens` lyric tokens for a crop, and their indices in `tokens` (-1: padding).

    Jukebox's linear heuristic: a song's characters are assumed spread evenly over its
    length, so the window is centred on the character at the crop's proportional
    midpoint, clamped to the lyrics. With `anchors` (`line_anchors`: where timed lines
    start) the characters are spread evenly within each line instead, so the window follows
    the singing. Lyrics shorter than the window are left-padded.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if n_tokens <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(tokens) < n_tokens:
        padding = n_tokens - len(tokens)
        indices = np.concatenate([np.full(padding, -1), np.arange(len(tokens))])
        return np.concatenate([np.full(padding, UNKNOWN_TOKEN), tokens]), indices
    if total_length <= 0 or not 0 <= offset < total_length:
        raise ValueError(f"crop offset {offset} must lie in a song of {total_length} samples")
    position = (offset + duration / 2.0) / total_length
    midpoint = int(np.interp(position, anchors[0], anchors[1]) if anchors is not None else len(tokens) * position)
    # Clamp so that the window fits; for odd windows the extra token goes on the right.
    start = min(max(midpoint - n_tokens // 2, 0), len(tokens) - n_tokens)
    indices = np.arange(start, start + n_tokens)
    return tokens[indices], indices
