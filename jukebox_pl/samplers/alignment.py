"""Lyric alignment: when each word is sung, read off a lyrics-conditioned prior's attention.

A prior that conditions on lyrics has an encoder-decoder attention layer whose weights say, for
each music token, how much it attends to each lyric character. The method has three steps:

1. `combine_windows`: a song is sampled in overlapping windows, each seeing a slice of the lyrics.
   As in openai/jukebox ``align.py`` (``get_alignment``), the windows' (music tokens, lyric tokens)
   weights are written into one (song tokens, characters) matrix in reverse start order, so that
   where windows overlap the earlier window wins, and padding lyric tokens are dropped.
2. `monotonic_path`: lyrics are sung in order, so the alignment is the non-decreasing
   token -> character path of most attention (dynamic programming, O(tokens * characters)).
   With a ``pace_width`` the path instead maximises the log attention plus a Gaussian log prior
   on each character's distance from where an even pace would sing it: where the attention is
   flat the words fall at an even pace (what the lyric windows assume), where it is sharp it wins.
3. `word_times`: each character spans the tokens the path spends on it; a word spans its characters.

`write_alignment` runs steps 2 and 3 on a combined matrix and writes a JSON of word times, a PNG
heatmap with the path drawn over it, and a self-contained HTML page that plays the audio and
highlights the word being sung. Only numpy, matplotlib and soundfile are needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jukebox_pl.atomic import atomic_write_bytes, atomic_write_text
from jukebox_pl.metrics.plots import png_bytes, pyplot

_WORD = re.compile(r"\S+")
# Heatmaps label rows with characters up to this many; beyond it the labels would overlap.
MAX_CHARACTER_LABELS = 80
# The even-pace prior's width as a fraction of the lyric window (a prior reads that many characters around
# the even-pace position): a quarter puts the window's edges two widths away.
ALIGNMENT_PACE = 0.25


@dataclass(frozen=True)
class WordTime:
    """One word of the lyrics and the seconds [start, end) it is sung over."""

    word: str
    start: float
    end: float


def combine_windows(
    windows: Sequence[tuple[int, np.ndarray, np.ndarray]], total_tokens: int, n_chars: int
) -> np.ndarray:
    """Combine per-window attention into one float32 ``(total_tokens, n_chars)`` matrix.

    Each window is ``(start_token, weights, indices)``: ``weights`` ``(T_w, n_tokens)`` are the attention of the
    window's music tokens ``start_token ..`` to its lyric tokens, and ``indices`` ``(n_tokens,)`` the character of
    the song's lyrics each lyric token is, -1 for padding. Windows are written in reverse start order, so the
    earlier window wins where they overlap (openai/jukebox align.py); rows past ``total_tokens`` are cut and
    cells no window wrote stay zero.
    """
    if total_tokens < 1 or n_chars < 1:
        raise ValueError(f"total_tokens and n_chars must be positive, got {total_tokens} and {n_chars}")
    checked = [_check_window(number, *window, total_tokens, n_chars) for number, window in enumerate(windows)]
    alignment = np.zeros((total_tokens, n_chars), dtype=np.float32)
    # Stable sort, reversed: of two windows with the same start, the one listed first is written last and wins.
    for start, weights, indices in reversed(sorted(checked, key=lambda window: window[0])):
        rows = min(weights.shape[0], total_tokens - start)
        keep = indices >= 0
        alignment[start : start + rows, indices[keep]] = weights[:rows, keep]
    return alignment


def _check_window(
    number: int, start: int, weights: np.ndarray, indices: np.ndarray, total_tokens: int, n_chars: int
) -> tuple[int, np.ndarray, np.ndarray]:
    weights, indices = np.asarray(weights), np.asarray(indices)
    if weights.ndim != 2:
        raise ValueError(f"window {number}: weights must be (tokens, lyric tokens), got shape {weights.shape}")
    if indices.shape != (weights.shape[1],):
        raise ValueError(
            f"window {number}: indices must be ({weights.shape[1]},), one per lyric token, got shape {indices.shape}"
        )
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"window {number}: indices must be integers, got {indices.dtype}")
    if indices.size and (indices.min() < -1 or indices.max() >= n_chars):
        raise ValueError(f"window {number}: indices must be in [-1, {n_chars}), got {indices.min()}..{indices.max()}")
    if not 0 <= start < total_tokens:
        raise ValueError(f"window {number}: start {start} is outside the song's {total_tokens} tokens")
    return int(start), weights, indices


def monotonic_path(
    attention: np.ndarray, first: int = 0, last: int | None = None, pace_width: float | None = None
) -> np.ndarray:
    """The non-decreasing ``(T,)`` int64 character path from ``first`` to ``last`` of most total attention.

    ``attention`` is ``(T, C)``; ``last`` defaults to ``C - 1``. At each step the path stays on its character or
    moves forward by any number, so characters may be skipped when ``C > T``. Ties are broken arbitrarily.

    With ``pace_width`` (characters) the path maximises the sum of ``paced_scores`` instead: the log attention
    (the attention read as each token's distribution over characters) plus the log of a Gaussian of that width
    around the character an even pace from ``first`` to ``last`` sings at each token.
    """
    weights = np.asarray(attention, dtype=np.float64)
    if weights.ndim != 2 or 0 in weights.shape:
        raise ValueError(f"attention must be a non-empty (tokens, characters) matrix, got shape {weights.shape}")
    if not np.isfinite(weights).all():
        raise ValueError("attention has NaN or infinite weights")
    steps, columns = weights.shape
    last = columns - 1 if last is None else last
    if not 0 <= first <= last < columns:
        raise ValueError(f"need 0 <= first <= last < {columns}, got first={first}, last={last}")
    if steps == 1 and first != last:
        raise ValueError(f"a single token cannot go from character {first} to {last}")
    # A non-decreasing path that starts at `first` and ends at `last` never leaves that band.
    band = weights[:, first : last + 1]
    if pace_width is not None:
        band = paced_scores(band, pace_width)
    width = band.shape[1]
    positions = np.arange(width)
    # The back-pointers are the memory cost (T * C); the narrowest integer type keeps a full song affordable.
    back = np.empty((steps - 1, width), dtype=np.min_scalar_type(width - 1))
    score = np.full(width, -np.inf)
    score[0] = band[0, 0]
    for step in range(1, steps):
        # Best score of a path reaching any character <= c at the previous step, and which character that was:
        # the last position where the running maximum was set or equalled.
        best = np.maximum.accumulate(score)
        back[step - 1] = np.maximum.accumulate(np.where(score == best, positions, 0))
        score = best + band[step]
    path = np.empty(steps, dtype=np.int64)
    path[-1] = width - 1
    for step in range(steps - 1, 0, -1):
        path[step - 1] = back[step - 1, path[step]]
    return path + first


def paced_scores(attention: np.ndarray, pace_width: float) -> np.ndarray:
    """``(T, C)`` float64 scores: ``log(attention)`` plus ``-0.5 * ((c - even(t)) / pace_width) ** 2``.

    ``even(t)`` is the character an even pace over the ``C`` characters sings at token ``t`` (token and character
    centres matched). Attention of exactly zero (a cell no window wrote) scores as ``log`` of the smallest
    positive float32, so a path crosses such cells only where no other path exists.
    """
    weights = np.asarray(attention, dtype=np.float64)
    if not pace_width > 0:
        raise ValueError(f"pace_width must be a positive number of characters, got {pace_width}")
    if (weights < 0).any():
        raise ValueError("paced alignment reads attention as probabilities: it must not be negative")
    steps, columns = weights.shape
    even = (np.arange(steps) + 0.5) * columns / steps - 0.5
    distance = (np.arange(columns)[None, :] - even[:, None]) / pace_width
    return np.log(np.maximum(weights, np.finfo(np.float32).tiny)) - 0.5 * distance**2


def word_times(text: str, path: np.ndarray, seconds_per_token: float, first: int = 0) -> list[WordTime]:
    """Times of the words of ``text`` that the character ``path`` covers.

    ``path[t] + first`` is the character of ``text`` sung at token ``t`` (``first`` is the column of ``text`` the
    path's 0 stands for; 0 when the path already indexes ``text``). A character spans [first token on it, last
    token on it + 1) * ``seconds_per_token``; one the path jumps over spans zero seconds at the jump. A word (a
    run of non-whitespace) is returned, as written in ``text``, when one of its characters lies in
    [path[0], path[-1]]; it spans those characters. Starts and ends are non-decreasing and no word ends after
    the next one starts.
    """
    characters = np.asarray(path, dtype=np.int64) + first
    if characters.ndim != 1 or characters.size == 0:
        raise ValueError(f"path must be a non-empty (tokens,) array, got shape {characters.shape}")
    if (np.diff(characters) < 0).any():
        raise ValueError("path must be non-decreasing")
    if characters[0] < 0 or characters[-1] >= len(text):
        raise ValueError(f"path covers characters {characters[0]}..{characters[-1]}, text has {len(text)}")
    if seconds_per_token <= 0:
        raise ValueError(f"seconds_per_token must be positive, got {seconds_per_token}")
    low, high = int(characters[0]), int(characters[-1])
    words = []
    for match in _WORD.finditer(text):
        head, tail = max(match.start(), low), min(match.end() - 1, high)
        if head > tail:
            continue
        # On a non-decreasing path, the tokens at or past a character start at its left insertion point
        # and those past it at its right one; a skipped character has both at the jump.
        start = int(np.searchsorted(characters, head, side="left")) * seconds_per_token
        end = int(np.searchsorted(characters, tail, side="right")) * seconds_per_token
        words.append(WordTime(match.group(), float(start), float(end)))
    return words


def alignment_json(words: Sequence[WordTime], text: str, first_char: int, last_char: int, seconds: float) -> dict:
    """A JSON-able summary: word times (ms precision), the aligned slice of the lyrics, the audio's duration."""
    if not 0 <= first_char <= last_char < len(text):
        raise ValueError(f"need 0 <= first_char <= last_char < {len(text)}, got {first_char} and {last_char}")
    return {
        "words": [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words],
        "lyrics_window": {"first_char": first_char, "last_char": last_char, "text": text[first_char : last_char + 1]},
        "duration": seconds,
    }


def heatmap_png(
    attention: np.ndarray, text: str, seconds_per_token: float, path: np.ndarray | None = None, title: str = ""
) -> bytes:
    """PNG bytes of ``attention`` ``(T, len(text))``: seconds across, characters down, ``path`` drawn over it."""
    plt = pyplot()

    weights = np.asarray(attention, dtype=np.float32)
    if weights.ndim != 2 or weights.shape[1] != len(text):
        raise ValueError(f"attention must be (tokens, {len(text)}) for a text of {len(text)}, got {weights.shape}")
    steps, columns = weights.shape
    seconds = steps * seconds_per_token
    figure, axis = plt.subplots(figsize=(10, min(max(3.0, 0.14 * columns), 20.0)))
    axis.imshow(weights.T, origin="upper", aspect="auto", cmap="magma", interpolation="nearest",
                extent=(0.0, seconds, columns - 0.5, -0.5))  # fmt: skip
    if path is not None:
        axis.plot((np.arange(len(path)) + 0.5) * seconds_per_token, path, color="cyan", linewidth=1.0)
    if columns <= MAX_CHARACTER_LABELS:
        axis.set_yticks(range(columns))
        visible = {" ": "␣", "\n": "⏎", "\t": "⇥"}  # blank tick labels would hide where words break
        axis.set_yticklabels([visible.get(character, character) for character in text], fontsize=6, family="monospace")
    else:
        axis.set_ylabel("character")
    axis.set_xlabel("seconds")
    if title:
        axis.set_title(title, fontsize=10)
    return png_bytes(figure)


def wav_data_uri(audio: np.ndarray, sample_rate: int) -> str:
    """Mono float audio ``(T,)`` as a ``data:audio/wav;base64,`` URI of 16-bit PCM, clipped to [-1, 1]."""
    import soundfile

    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"audio must be mono (samples,), got shape {samples.shape}")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body { font-family: sans-serif; max-width: 48em; margin: 2em auto; padding: 0 1em; }
audio { width: 100%; }
table { border-collapse: collapse; font-size: small; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
#lyrics { white-space: pre-wrap; font-size: 1.3em; line-height: 1.8; }
#lyrics span { cursor: pointer; border-radius: 0.2em; }
#lyrics span.sung { color: #888; }
#lyrics span.current { background: #ffd54f; color: #000; }
"""

_SCRIPT = """
const audio = document.getElementById("audio");
const words = Array.from(document.querySelectorAll("#lyrics span[data-start]"));
function highlight() {
  const now = audio.currentTime;
  for (const word of words) {
    const start = parseFloat(word.dataset.start), end = parseFloat(word.dataset.end);
    word.classList.toggle("current", start <= now && now < end);
    word.classList.toggle("sung", end <= now);
  }
}
audio.addEventListener("timeupdate", highlight);
audio.addEventListener("seeked", highlight);
for (const word of words) {
  word.addEventListener("click", () => { audio.currentTime = parseFloat(word.dataset.start); audio.play(); });
}
"""


def alignment_html(
    words: Sequence[WordTime],
    text: str,
    audio: np.ndarray,
    sample_rate: int,
    title: str = "",
    details: Mapping[str, str] | None = None,
) -> str:
    """A self-contained page: the audio embedded as WAV, the lyrics with the sung word highlighted as it plays.

    ``words`` must come from ``text`` in order (as `word_times` gives them); the rest of ``text`` is shown plain.
    Clicking a word seeks to it.
    """
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in (details or {}).items()
    )
    heading = html.escape(title or "Lyric alignment")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{heading}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{heading}</h1>\n"
        + (f"<table>{rows}</table>\n" if rows else "")
        + f'<audio id="audio" controls preload="auto" src="{wav_data_uri(audio, sample_rate)}"></audio>\n'
        f'<div id="lyrics">{_lyrics_markup(words, text)}</div>\n'
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _lyrics_markup(words: Sequence[WordTime], text: str) -> str:
    # WordTime carries no character offsets, so each word is matched to the next run of text that spells it.
    pieces, position = [], 0
    matches = _WORD.finditer(text)
    for word in words:
        match = next((m for m in matches if m.group() == word.word), None)
        if match is None:
            raise ValueError(f"word {word.word!r} is not in the text after character {position}, in order")
        pieces.append(html.escape(text[position : match.start()]))
        pieces.append(
            f'<span data-start="{word.start:.3f}" data-end="{word.end:.3f}">{html.escape(match.group())}</span>'
        )
        position = match.end()
    pieces.append(html.escape(text[position:]))
    return "".join(pieces)


def write_alignment(
    out_dir: str | Path,
    name: str,
    attention: np.ndarray,
    text: str,
    seconds_per_token: float,
    audio: np.ndarray | None,
    sample_rate: int,
    details: Mapping[str, str] | None = None,
    pace_width: float | None = None,
) -> dict[str, Path]:
    """Align ``text`` to a combined ``(tokens, len(text))`` matrix; write ``{name}.json``, ``.png`` and ``.html``.

    The aligned characters are those from the first to the last column with any weight; the path runs from
    the first to the last of them (``pace_width``: see `monotonic_path`). The HTML page is written only when
    ``audio`` is given. Returns the paths written, by kind.
    """
    weights = np.asarray(attention, dtype=np.float32)
    if weights.ndim != 2 or weights.shape[1] != len(text):
        raise ValueError(f"attention must be (tokens, {len(text)}) for a text of {len(text)}, got {weights.shape}")
    attended = np.flatnonzero((weights != 0).any(axis=0))
    if attended.size == 0:
        raise ValueError("no attention on any lyric character")
    first_char, last_char = int(attended[0]), int(attended[-1])
    window = weights[:, first_char : last_char + 1]
    relative = monotonic_path(window, first=0, last=last_char - first_char, pace_width=pace_width)
    words = word_times(text, relative + first_char, seconds_per_token)
    seconds = weights.shape[0] * seconds_per_token

    folder = Path(out_dir)
    written = {"json": folder / f"{name}.json", "png": folder / f"{name}.png"}
    summary = alignment_json(words, text, first_char, last_char, seconds)
    atomic_write_text(written["json"], json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    png = heatmap_png(window, text[first_char : last_char + 1], seconds_per_token, relative, title=name)
    atomic_write_bytes(written["png"], png)
    if audio is not None:
        written["html"] = folder / f"{name}.html"
        atomic_write_text(written["html"], alignment_html(words, text, audio, sample_rate, name, details))
    return written
