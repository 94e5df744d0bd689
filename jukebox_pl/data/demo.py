"""The demo dataset: real compositions from music21's bundled corpus, rendered offline.

Scores come from the corpus that ships inside the music21 wheel (Bach chorales,
Monteverdi madrigals, Palestrina masses, trecento songs, Essen and O'Neill folk tunes,
Haydn/Mozart/Beethoven quartets). Each is played through a General MIDI soundfont (the
TimGM6mb font bundled with pretty_midi, synthesised by tinysoundfont) with instruments
suited to its genre. Where the top line carries lyrics, it is also *sung*: espeak-ng
(bundled by espeakng-loader) speaks each syllable, and Praat's PSOLA (parselmouth)
stretches it to the note's length and tunes it to the note's pitch. Nothing is downloaded.

    jukebox-pl data demo --out data/demo --minutes 20

writes ``audio/*.wav``, ``metadata.jsonl`` (artist = composer, genre = the collection's
style, lyrics, per-syllable onsets) and ``build.json``, then shards them into ``shards/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from jukebox_pl.atomic import atomic_path, atomic_write_text
from jukebox_pl.data.shard_reader import MANIFEST
from jukebox_pl.data.shards import write_shards
from jukebox_pl.data.singing import sing
from jukebox_pl.errors import JukeboxError

logger = logging.getLogger(__name__)
SAMPLE_RATE = 44100
ORGAN, CHOIR, RECORDER, NYLON_GUITAR, CLARINET, ACCORDION, VIOLIN, VIOLA, CELLO, FLUTE = (
    19,
    52,
    74,
    24,
    71,
    21,
    40,
    41,
    42,
    73,
)
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


COLLECTIONS = (
    Collection("bach", "J.S. Bach", "chorale", "de+f3", 80, (ORGAN,), ".mxl", weight=3),
    Collection("monteverdi", "Claudio Monteverdi", "madrigal", "it+f3", 90, (CHOIR,), weight=2),
    # The corpus's Palestrina (Humdrum) files carry no text: sung by the choir sound alone.
    Collection("palestrina", "Giovanni Pierluigi da Palestrina", "mass", None, 100, (CHOIR, CHOIR, CHOIR, CELLO)),
    Collection("trecento", None, "trecento song", "it+f3", 80, (RECORDER, NYLON_GUITAR, CLARINET), weight=2),
    Collection("essenFolksong", "Traditional", "folk song", None, 100, (ACCORDION,)),
    Collection("oneills1850", "Traditional", "folk dance", None, 120, (VIOLIN,)),
    Collection("ryansMammoth", "Traditional", "folk dance", None, 120, (FLUTE,)),
    Collection("haydn", "Joseph Haydn", "string quartet", None, 100, (VIOLIN, VIOLIN, VIOLA, CELLO), ".mxl"),
    Collection("mozart", "Wolfgang Amadeus Mozart", "string quartet", None, 100, (VIOLIN, VIOLIN, VIOLA, CELLO)),
    Collection(
        "beethoven", "Ludwig van Beethoven", "string quartet", None, 100, (VIOLIN, VIOLIN, VIOLA, CELLO), ".mxl"
    ),
)
_BY_FOLDER = {collection.folder: collection for collection in COLLECTIONS}
_ANALYSES = (".rntxt",)  # Roman-numeral analyses sit beside some scores; they are not music
LICENCES = {
    "scores": "music21 corpus: no commercial use, other restrictions per file (Essen: non-commercial only)",
    "soundfont": "TimGM6mb.sf2 by Tim Brechbill, as bundled with pretty_midi (GPL-2.0)",
    "voice": "espeak-ng (GPL-3.0) via espeakng-loader",
}


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


# ------------------------------------------------------------------------- choosing pieces
def candidate_pieces(seed: int) -> list[str]:
    """References ``folder/file[:number]`` in round-robin over the collections, shuffled per collection."""
    from music21 import corpus

    by_folder: dict[str, list[str]] = {collection.folder: [] for collection in COLLECTIONS}
    for entry in corpus.corpora.CoreCorpus().metadataBundle:
        source = str(entry.sourcePath)
        collection = _BY_FOLDER.get(source.split("/")[0])
        if collection is None or not source.endswith(collection.suffix) or source.endswith(_ANALYSES):
            continue
        by_folder[collection.folder].append(source + (f":{entry.number}" if entry.number else ""))
    queues = []
    for collection in COLLECTIONS:
        references = sorted(set(by_folder[collection.folder]))
        random.Random(f"{seed}:{collection.folder}").shuffle(references)
        queues.append((collection.weight, references))
    rounds = max(-(-len(references) // weight) for weight, references in queues)
    return [
        reference
        for round_index in range(rounds)
        for weight, references in queues
        for reference in references[round_index * weight : (round_index + 1) * weight]
    ]


# ------------------------------------------------------------------------------- rendering
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


def render_piece(reference: str, out_dir: Path, max_seconds: float) -> Rendered:
    """Parse, play and (if it has lyrics) sing one piece into ``out_dir/audio/KEY.wav``."""
    from music21 import corpus

    start = time.perf_counter()
    source, _, number = reference.partition(":")
    collection = _BY_FOLDER[source.split("/")[0]]
    score = corpus.parse(source, number=int(number)) if number else corpus.parse(source)
    metadata = score.metadata
    artist = collection.artist or normalise_composer(metadata.composer if metadata else None)
    title = str((metadata.title or metadata.movementName) if metadata else "") or Path(source).stem
    with contextlib.suppress(Exception):  # repeats that music21 cannot expand play as written
        score = score.expandRepeats()
    score = score.stripTies()
    seconds_per_quarter = _fix_tempo(score, collection.tempo)
    notes = _note_events(score, seconds_per_quarter)
    if not notes:
        raise ValueError("the score has no notes")
    # The recording starts on the first note: a score's opening rest would open the song in silence.
    first = min(onset for onset, *_ in notes)
    shifted = [(onset - first, duration, pitch, part) for onset, duration, pitch, part in notes]
    notes = _ring_through_rests([(o, min(d, max_seconds - o), p, q) for o, d, p, q in shifted if o < max_seconds])
    length = max(onset + duration for onset, duration, _, _ in notes)
    syllables = _syllables(score, seconds_per_quarter, first) if collection.voice else []
    syllables = [s for s in syllables if s["onset"] < length]
    audio = _play(notes, collection.programs, length, quiet_part=0 if syllables else None)
    if syllables:
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


def _ring_through_rests(notes: list[tuple[float, float, int, int]]) -> list[tuple[float, float, int, int]]:
    """The notes, those sounding last before a rest of every part held on to the next onset.

    A dry rendering falls to digital silence wherever all parts rest; a room lets the chord ring
    on. The priors learn how long silences last from these songs and, drawing from them, hold one
    longer than any the songs have; rests that ring leave silence to the songs' endings.
    """
    ringing = list(notes)
    reach, last = float("-inf"), []  # where the sound so far ends, and the notes that end there
    for index in sorted(range(len(notes)), key=lambda i: notes[i][0]):
        onset, duration, _, _ = notes[index]
        if onset > reach + 1e-3:
            for held in last:
                start, _, pitch, part = ringing[held]
                ringing[held] = (start, onset - start, pitch, part)
        end = onset + duration
        if end > reach + 1e-3:
            reach, last = end, [index]
        elif end >= reach - 1e-3:
            last.append(index)
    return ringing


def _syllables(score: Any, seconds_per_quarter: float, first: float = 0.0) -> list[dict[str, Any]]:
    """The top line's sung syllables with onsets (`first` s earlier); a melisma (notes without text) extends one."""
    from music21 import note

    syllables: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for element in _parts(score)[0].flatten().notesAndRests:
        if element.duration.isGrace:
            continue
        onset = float(element.getOffsetInHierarchy(score)) * seconds_per_quarter - first
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
    release_seconds: float = 1.5,
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
    # The voice sits about 3 dB above the accompaniment, so the lyrics are audible.
    gain = 1.4 * np.sqrt(np.mean(accompaniment.mean(1) ** 2)) / max(float(np.sqrt(np.mean(sung_part**2))), 1e-6)
    return accompaniment + gain * vocal[:, None]


# ---------------------------------------------------------------------------- the builder
def _render_job(job: tuple[str, str, float, int]) -> dict[str, Any]:
    """Runs in a worker process: one piece, bounded in time; failures come back as data."""
    reference, out_dir, max_seconds, timeout = job
    warnings.filterwarnings("ignore")

    def _expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"rendering took longer than {timeout} s")

    signal.signal(signal.SIGALRM, _expired)
    signal.alarm(timeout)
    try:
        return {"ok": asdict(render_piece(reference, Path(out_dir), max_seconds))}
    except Exception as exc:  # noqa: BLE001 - a score that fails is skipped and reported
        return {
            "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            "reference": reference,
        }
    finally:
        signal.alarm(0)


def build_demo_dataset(
    out: str | Path,
    minutes: float = 20.0,
    max_seconds: float = 40.0,
    workers: int | None = None,
    seed: int = 0,
    timeout: int = 120,
) -> dict[str, Any]:
    """Render about `minutes` of music into `out` (cached), then shard it; return the manifest."""
    out = Path(out)
    # "format" changes whenever the rendering or labelling does, so that old caches rebuild.
    # Numbers are normalised so that `minutes: 20` in a recipe and `--minutes 20` hit one cache.
    options = {"minutes": float(minutes), "max_seconds": float(max_seconds), "seed": int(seed), "format": 4}
    fingerprint = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    build_file, shards = out / "build.json", out / "shards"
    if build_file.is_file() and (shards / MANIFEST).is_file():
        built = json.loads(build_file.read_text())
        if built.get("fingerprint") == fingerprint:
            logger.info(
                f"demo dataset in {out} is up to date ({built['seconds'] / 60:.1f} min, {built['pieces']} pieces)"
            )
            return json.loads((shards / MANIFEST).read_text())
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for leftover in (out / "audio").glob(".*.tmp"):  # a write cut short by a killed run
        leftover.unlink()
    start = time.perf_counter()
    rendered, failures = _render_until(
        out, minutes * 60, max_seconds, workers or min(os.cpu_count() or 1, 4), seed, timeout, fingerprint
    )
    fields = ("path", "artist", "genre", "title", "lyrics", "syllables", "reference")
    rows = [{field: r[field] for field in fields} for r in rendered]
    atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    manifest = write_shards(
        out / "audio",
        out / "metadata.jsonl",
        shards,
        sample_rate=SAMPLE_RATE,
        shard_size="16MB",
        min_seconds=2.0,
        # a fifth: 4 of the default 31 songs, so held-out evaluation spans several pieces
        validation_fraction=0.2,
    )
    seconds = sum(r["seconds"] for r in rendered)
    record = {
        "fingerprint": fingerprint,
        "options": options,
        "pieces": len(rendered),
        "seconds": round(seconds, 1),
        "build_seconds": round(time.perf_counter() - start, 1),
        "failures": failures,
        "licences": LICENCES,
    }
    atomic_write_text(build_file, json.dumps(record, indent=2) + "\n")
    return manifest


def _render_until(
    out: Path,
    target_seconds: float,
    max_seconds: float,
    workers: int,
    seed: int,
    timeout: int,
    fingerprint: str,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Render candidates in order until `target_seconds` of audio; reuse what a run with these options left."""
    cache = out / "pieces.jsonl"  # one line per finished piece: an interrupted build resumes
    done: dict[str, dict[str, Any]] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("fingerprint") != fingerprint:
                    continue  # rendered with other options or an older rendering: rendered again
                if "ok" not in entry or (out / "audio" / entry["ok"]["path"]).is_file():
                    done[entry.get("reference") or entry["ok"]["reference"]] = entry
    candidates = candidate_pieces(seed)
    rendered: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    total = 0.0
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    with context.Pool(workers) as pool, open(cache, "a") as journal:
        jobs = ((reference, str(out), max_seconds, timeout) for reference in candidates if reference not in done)
        results: Iterator[dict[str, Any]] = pool.imap(_render_job, jobs)
        for reference in candidates:
            entry = done.get(reference)
            if entry is None:
                entry = {**next(results), "fingerprint": fingerprint}
                journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
                journal.flush()
            if "error" in entry:
                failures.append(entry)
                logger.info(f"skipped {entry['reference']}: {entry['error']}")
                continue
            piece = entry["ok"]
            rendered.append(piece)
            total += piece["seconds"]
            logger.info(
                f"[{total / 60:5.1f}/{target_seconds / 60:.1f} min] {piece['artist']} | {piece['genre'][0]} | "
                f"{piece['title'][:40]} ({piece['seconds']:.0f} s, {len(piece['syllables'])} syllables)"
            )
            if total >= target_seconds:
                break
        pool.terminate()  # pieces rendered ahead of need are not waited for
    return rendered, failures
