"""Lyrics kept beside songs: plain ``.txt`` files and time-stamped ``.lrc`` files.

An ``.lrc`` file gives each line of the lyrics the time it starts at (``[01:02.50]And then``).
The lines are kept with the song as ``lyric_lines`` (``{"time": seconds, "text": ...}``), which
place the lyric window (`jukebox_pl.data.text.lyric_window`) and score the lyric alignment of a
prior (`jukebox_pl.pipelines.evidence`).

The parser is written here rather than taken from a package: the format is a dozen lines of
regular expressions, and the packages that read it add players and network look-ups we do not need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LYRIC_SUFFIXES = (".lrc", ".txt")
_TIME = re.compile(r"\[(\d+):(\d{1,2}(?:[.:]\d{1,3})?)\]")
_TAG = re.compile(r"^\[([a-zA-Z#]+):(.*)\]\s*$")  # [ar:Artist], [offset:+250], ...
_WORD_TIME = re.compile(r"<\d+:\d{1,2}(?:[.:]\d{1,3})?>")  # enhanced LRC: a time per word, dropped


@dataclass
class Lyrics:
    """Lyrics as text, with the start time of each line when the source had them."""

    text: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)  # [{"time": s, "text": line}], by time
    tags: dict[str, str] = field(default_factory=dict)  # an .lrc file's ar, ti, al, ...


def looks_timed(text: str) -> bool:
    """Whether `text` is LRC: some line starts with a [mm:ss] time stamp."""
    return any(_TIME.match(line.strip()) for line in text.splitlines())


def parse_lrc(text: str) -> Lyrics:
    """Lines with their times, sorted by time; ``[offset:ms]`` applied (positive: lines come sooner).

    A line with several stamps (a chorus sung twice) is kept once per stamp; lines without a
    stamp are dropped, as players do; an empty stamped line (an instrumental break) is kept, so
    that the window does not move during it.
    """
    timed: list[tuple[float, str]] = []
    tags: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        tag = _TAG.match(line)
        if tag and not _TIME.match(line):
            tags[tag[1].lower()] = tag[2].strip()
            continue
        stamps = []
        while match := _TIME.match(line):
            minutes, seconds = int(match[1]), float(match[2].replace(":", "."))
            stamps.append(60 * minutes + seconds)
            line = line[match.end() :]
        words = " ".join(_WORD_TIME.sub(" ", line).split())
        timed += [(stamp, words) for stamp in stamps]
    try:
        offset = float(tags.get("offset", "0")) / 1000.0
    except ValueError:
        offset = 0.0
    lines = [{"time": round(max(time - offset, 0.0), 3), "text": words} for time, words in sorted(timed)]
    return Lyrics("\n".join(line["text"] for line in lines if line["text"]), lines, tags)


def parse_lyrics(text: str) -> Lyrics:
    """Lyrics from text that may be LRC (time-stamped) or plain."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return parse_lrc(text) if looks_timed(text) else Lyrics(text)


def read_lyrics_file(path: Path) -> Lyrics:
    """A ``.txt`` or ``.lrc`` file, as UTF-8 (with or without a byte-order mark) or else Windows-1252."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:  # older lyric files were saved in the Windows code page
        text = data.decode("cp1252", errors="replace")
    return parse_lyrics(text)
