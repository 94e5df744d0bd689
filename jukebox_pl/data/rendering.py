"""A score as audio: its notes played through a General MIDI soundfont, its top line sung.

One piece of the demo dataset (`jukebox_pl.data.demo`) at a time: music21 parses the score, its
notes play through the TimGM6mb font bundled with pretty_midi (synthesised by tinysoundfont) on
the instruments of its collection, and where the top line carries lyrics a voice sings them
(`jukebox_pl.data.singing`). The result is a wav and the metadata row: artist, genre, title,
lyrics and each sung syllable's onset.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from jukebox_pl.atomic import atomic_path
from jukebox_pl.data.singing import seed_voice, sing
from jukebox_pl.errors import JukeboxError

SAMPLE_RATE = 44100
DRUM_CHANNEL = 9  # General MIDI percussion: never used for pitched parts


@dataclass(frozen=True)
class Collection:
    """A folder of music21's corpus and how to render it."""

    folder: str
    artist: str | None  # None: the score's composer, normalised
    genre: str
    voice: str | None  # espeak-ng voice that sings the top line's lyrics; None: instrumental
    tempo: int  # quarter notes per minute; the scores' own marks are often missing or odd
    programs: tuple[int, ...]  # GM program per part (the last repeats for extra parts)
    suffix: str = ""  # only files of this type (some folders hold one work in several formats)
    weight: int = 1  # pieces per round of the rotation: the collections with sung lyrics get more


def normalise_composer(raw: str | None) -> str:
    """One spelling per composer: "Palestrina, Giovanni" -> "Giovanni Palestrina"; blank -> Anonymous."""
    name = (raw or "").strip()
    if not name or name.lower() in ("anonymous", "anon", "anon.", "unknown"):
        return "Anonymous"
    # Trecento sources append the manuscript's library siglum: "Bartholus F-Pn 568".
    name = re.sub(r"\s+[A-Z]{1,3}-[A-Z][A-Za-z]*\s*\d+.*$", "", name).strip()
    if "," in name:  # "Surname, Given names"
        surname, given = (part.strip() for part in name.split(",", 1))
        name = f"{given} {surname}"
    return re.sub(r"\s+", " ", name)


@dataclass
class Rendered:
    """What one piece became: its audio file and its metadata row."""

    reference: str
    path: str
    artist: str
    genre: list[str]
    title: str
    lyrics: str
    syllables: list[dict[str, Any]]
    seconds: float
    render_seconds: float


def render_piece(reference: str, collection: Collection, out_dir: Path, max_seconds: float) -> Rendered:
    """Parse, play and (if it has lyrics) sing one piece of `collection` into ``out_dir/audio/KEY.wav``."""
    from music21 import corpus

    start = time.perf_counter()
    source, _, number = reference.partition(":")
    score = corpus.parse(source, number=int(number)) if number else corpus.parse(source)
    metadata = score.metadata
    artist = collection.artist or normalise_composer(metadata.composer if metadata else None)
    title = str((metadata.title or metadata.movementName) if metadata else "") or Path(source).stem
    with contextlib.suppress(Exception):  # repeats that music21 cannot expand play as written
        score = score.expandRepeats()
    seconds_per_quarter = _fix_tempo(score, collection.tempo)
    _drop_measures_after(score, max_seconds / seconds_per_quarter)
    score.stripTies(inPlace=True)  # the parsed score is ours alone: no deep copy (a quarter of a render)
    notes = [n for n in _note_events(score, seconds_per_quarter) if n[0] < max_seconds]
    if not notes:
        raise ValueError("the score has no notes")
    notes = [(onset, min(duration, max_seconds - onset), pitch, part) for onset, duration, pitch, part in notes]
    length = max(onset + duration for onset, duration, _, _ in notes)
    syllables = [s for s in _syllables(score, seconds_per_quarter) if s["onset"] < length] if collection.voice else []
    audio = _play(notes, collection.programs, length, quiet_part=0 if syllables else None)
    if syllables:
        seed_voice(reference)
        audio = _add_voice(audio, syllables, collection.voice or "")
    audio *= 0.89 / max(float(np.abs(audio).max()), 1e-6)
    key = re.sub(r"[^A-Za-z0-9]+", "_", reference).strip("_")
    path = out_dir / "audio" / f"{key}.wav"
    with atomic_path(path) as temporary:
        sf.write(temporary, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return Rendered(
        reference=reference,
        path=str(path.relative_to(out_dir / "audio")),
        artist=artist,
        genre=[collection.genre],
        title=title,
        lyrics=_lyrics_text(syllables),
        syllables=[{k: s[k] for k in ("text", "onset", "duration")} for s in syllables],
        seconds=round(len(audio) / SAMPLE_RATE, 3),
        render_seconds=round(time.perf_counter() - start, 3),
    )


def _fix_tempo(score: Any, quarters_per_minute: int) -> float:
    """One tempo for the whole piece, so that notes, audio and syllable onsets agree."""
    from music21 import tempo

    for mark in list(score.recurse().getElementsByClass(tempo.TempoIndication)):
        mark.activeSite.remove(mark)
    (score.parts[0] if score.parts else score).insert(0, tempo.MetronomeMark(number=quarters_per_minute))
    return 60.0 / quarters_per_minute


def _drop_measures_after(score: Any, quarters: float) -> None:
    """Remove the measures that start at or after `quarters` (the cut): nothing in them is played, and music21's
    `stripTies` takes time that grows faster than the score (62 s of a 63 s render for a whole quartet movement;
    3.6 s with the measures dropped). A note tied over the cut keeps at least its part before the cut, where the
    audio ends anyway; a syllable held over the cut is sung to the end of the cut's measure rather than
    stretched over notes that are never heard."""
    from music21 import stream

    for part in _parts(score):
        late = [measure for measure in part.getElementsByClass(stream.Measure) if measure.offset >= quarters]
        if late:
            part.remove(late)


def _parts(score: Any) -> list[Any]:
    return list(score.parts) if score.parts else [score]


def _note_events(score: Any, seconds_per_quarter: float) -> list[tuple[float, float, int, int]]:
    """(onset s, duration s, MIDI pitch, part index) of every sounding note."""
    events = []
    for part_index, part in enumerate(_parts(score)):
        for element in part.flatten().notes:
            if element.duration.isGrace or element.quarterLength <= 0:
                continue
            onset = float(element.getOffsetInHierarchy(score)) * seconds_per_quarter
            duration = float(element.quarterLength) * seconds_per_quarter
            events += [(onset, duration, pitch.midi, part_index) for pitch in element.pitches]
    return events


def _syllables(score: Any, seconds_per_quarter: float) -> list[dict[str, Any]]:
    """The top line's sung syllables with onsets; a melisma (notes without text) extends one."""
    from music21 import note

    syllables: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for element in _parts(score)[0].flatten().notesAndRests:
        if element.duration.isGrace:
            continue
        onset = float(element.getOffsetInHierarchy(score)) * seconds_per_quarter
        duration = float(element.quarterLength) * seconds_per_quarter
        if isinstance(element, note.Rest):
            current = None
            continue
        verses = [lyric for lyric in element.lyrics if (lyric.number or 1) == 1] or element.lyrics[:1]
        text = re.sub(r"[^\w']", "", verses[0].text or "") if verses else ""
        pitch = max(p.midi for p in element.pitches)
        if text:
            current = {
                "text": text,
                "syllabic": verses[0].syllabic,
                "onset": round(onset, 3),
                "duration": round(duration, 3),
                "notes": [(pitch, duration)],
            }
            syllables.append(current)
        elif current is not None and abs(current["onset"] + current["duration"] - onset) < 1e-3:
            current["notes"].append((pitch, duration))
            current["duration"] = round(current["duration"] + duration, 3)
        else:
            current = None
    return syllables


def _lyrics_text(syllables: list[dict[str, Any]]) -> str:
    """Syllables joined into words: "Er-freut euch" from begin/end/single markers."""
    text = ""
    for syllable in syllables:
        joined = syllable["syllabic"] in ("middle", "end")
        text += ("" if joined or not text else " ") + syllable["text"]
    return text


def _play(
    notes: list[tuple[float, float, int, int]],
    programs: tuple[int, ...],
    length: float,
    quiet_part: int | None,
    release_seconds: float = 0.5,
) -> np.ndarray:
    """(frames, 2) float32: the notes through the GM soundfont, every note ended, length bounded."""
    synth = _synth()
    font = synth.sfload(str(_soundfont()))
    parts = max(part for *_, part in notes) + 1
    channel = [index if index < DRUM_CHANNEL else index + 1 for index in range(parts)]
    for part in range(parts):
        synth.program_select(channel[part], font, 0, programs[min(part, len(programs) - 1)])
    # (time, on?, channel, pitch, velocity): note-offs sort before note-ons at the same time.
    messages = []
    for onset, duration, pitch, part in notes:
        velocity = 45 if part == quiet_part else 80  # the sung line is doubled softly
        messages += [(onset, 1, channel[part], pitch, velocity), (onset + 0.98 * duration, 0, channel[part], pitch, 0)]
    messages.sort()
    total = int((length + release_seconds) * SAMPLE_RATE)
    audio = np.zeros((total, 2), np.float32)
    position = 0
    for when, is_on, midi_channel, pitch, velocity in messages:
        target = min(int(when * SAMPLE_RATE), total)
        if target > position:
            audio[position:target] = np.frombuffer(synth.generate(target - position), np.float32).reshape(-1, 2)
            position = target
        if is_on:
            synth.noteon(midi_channel, pitch, velocity)
        else:
            synth.noteoff(midi_channel, pitch)
    synth.notes_off()  # all notes off: nothing may hang past the end
    if total > position:
        audio[position:] = np.frombuffer(synth.generate(total - position), np.float32).reshape(-1, 2)
    return audio


def _synth() -> Any:
    try:
        import tinysoundfont
    except ImportError as exc:
        raise JukeboxError(
            "the demo dataset needs tinysoundfont: pip install --no-deps tinysoundfont (`make setup` does)"
        ) from exc
    return tinysoundfont.Synth(samplerate=SAMPLE_RATE, gain=-6)


def _soundfont() -> Path:
    import pretty_midi

    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise JukeboxError(f"the General MIDI soundfont that pretty_midi ships is missing: {path}")
    return path


def _add_voice(accompaniment: np.ndarray, syllables: list[dict[str, Any]], voice: str) -> np.ndarray:
    vocal = np.zeros(len(accompaniment), np.float32)
    for syllable in syllables:
        sung = sing(syllable["text"], syllable["notes"], voice, SAMPLE_RATE)
        begin = int(syllable["onset"] * SAMPLE_RATE)
        end = min(begin + len(sung), len(vocal))
        vocal[begin:end] += sung[: end - begin]
    sung_part = vocal[vocal != 0]
    if not len(sung_part):
        return accompaniment
    # The voice sits about 3 dB above the accompaniment, so the lyrics are audible. 6 dB was tried: the top-level
    # codes kept more of the sung vowel (0.124 bits per code against 0.080), but the top prior learned no more
    # from the lyrics and its primed clips were no closer to the songs (docs/priors.md).
    gain = 1.4 * np.sqrt(np.mean(accompaniment.mean(1) ** 2)) / max(float(np.sqrt(np.mean(sung_part**2))), 1e-6)
    return accompaniment + gain * vocal[:, None]
