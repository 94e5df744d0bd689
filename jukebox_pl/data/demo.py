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
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.data.rendering import SAMPLE_RATE, Collection, render_piece
from jukebox_pl.data.shard_reader import MANIFEST
from jukebox_pl.data.shards import write_shards

logger = logging.getLogger(__name__)
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
        collection = _BY_FOLDER[reference.partition(":")[0].split("/")[0]]
        return {"ok": asdict(render_piece(reference, collection, Path(out_dir), max_seconds))}
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
    options = {"minutes": float(minutes), "max_seconds": float(max_seconds), "seed": int(seed), "format": 7}
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
    if context.get_start_method() == "fork":
        import music21.corpus  # noqa: F401 - imported once here and inherited, not once per piece (0.6 s)
    # A fresh process for every piece: espeak-ng's voice depends on what its process sang before
    # (jukebox_pl.data.singing), so a piece sings the same whichever worker renders it, after whichever piece.
    with context.Pool(workers, maxtasksperchild=1) as pool, open(cache, "a") as journal:
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
