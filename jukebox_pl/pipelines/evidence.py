"""``pipeline: prior_evidence``: what trained priors learned, measured on the validation songs' codes.

For each prior it reports, over every validation window of its level:

- the unigram entropy of the level's training codes (what a prior that ignores all context
  scores) against the prior's bits per token;
- bits per token with each window's own artist and genres against those of another artist and
  genre (labels that the prior uses are worth bits);
- for an upsampler, bits per token with the true codes of the level above against another
  song's (what the upper codes are worth);
- for a prior that reads lyrics, its sung windows with their own lyrics against another sung song's (what
  reading the lyrics is worth), and how much the sung vowel tells of its level's codes in the middle of
  each sung syllable (how much of the voice the codes keep);
- for a prior that reads lyrics, the alignment read from its attention when it is
  teacher-forced on each held-out sung song, against the onsets of the sung syllables that
  the demo dataset records, or against the line times of a song's ``.lrc`` file (the first
  word of each line): the median absolute error of the word onsets and the fraction of
  words placed within 0.5 s.

Writes ``evidence.json`` and ``evidence.md`` into the run folder::

    jukebox-pl run demo            # the demo's `evidence` stage
    python benchmarks/prior_labels.py --priors runs/demo/top_prior/model runs/demo/upsampler/model \\
        --codes data/demo/codes --vqvae runs/demo/vqvae/model
"""

from __future__ import annotations

import json
import math
import re
import tarfile
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jukebox_pl.atomic import atomic_write_text
from jukebox_pl.checkpoints.export import load
from jukebox_pl.data.code_shards import CODES_FIELD, codes_from_npz, load_code_manifest
from jukebox_pl.data.labels import GENRE_PADDING
from jukebox_pl.data.shard_reader import shard_samples
from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext, earlier_report, formatted, inputs_fingerprint
from jukebox_pl.registry import build, register
from jukebox_pl.samplers.alignment import ALIGNMENT_PACE, monotonic_path, word_times
from jukebox_pl.samplers.base import SampleRequest
from jukebox_pl.samplers.store import SampleStore
from jukebox_pl.vqvae.bottleneck import entropy_bits

REPORT = "evidence.json"
ONSET_TOLERANCE = 0.5  # seconds: a word placed this close to its sung onset counts as placed
_WORD = re.compile(r"\S+")


# ------------------------------------------------------------------------------- bits per token
def unigram_entropy_bits(codes_dir: Path, split: str, level: int, codebook_size: int) -> float:
    """Entropy in bits of the histogram of every code of `level` in a split's shards."""
    counts = np.zeros(codebook_size, dtype=np.int64)
    for shard in load_code_manifest(codes_dir)["shards"][split]:
        with tarfile.open(codes_dir / shard["name"]) as archive:
            for member in archive:
                if member.name.endswith("." + CODES_FIELD):
                    codes = codes_from_npz(archive.extractfile(member).read())[level]
                    counts += np.bincount(codes.astype(np.int64), minlength=codebook_size)
    return float(entropy_bits(torch.from_numpy(counts).double()))


def swapped_labels(artists: torch.Tensor, genres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's (artist, genres) replaced by another artist's and genre's: the next distinct pair present
    (in sorted order, cyclically) whose artist differs and whose genres share none with the window's.

    Swapping one string quartet's composer for another's, or one folk genre of the same "Traditional"
    artist for the other, asks what a label adds beyond what the other label already says; the evidence
    asks what the artist and genre are worth. Where no pair differs in both, the next pair with another
    artist is taken, then the next distinct pair, so that no window keeps its own labels.
    """
    pairs = torch.cat([artists[:, None], genres], dim=1)
    distinct = torch.unique(pairs, dim=0)  # sorted rows
    if len(distinct) < 2:
        raise JukeboxError("the validation windows carry a single artist and genre: nothing to swap")
    count = len(distinct)
    partners = []
    for row, (artist, *bag) in enumerate(distinct.tolist()):
        own = {g for g in bag if g != GENRE_PADDING}
        later = [distinct[(row + step) % count].tolist() for step in range(1, count)]
        chosen = next((p for p in later if p[0] != artist and not own & set(p[1:])), None)
        chosen = chosen or next((p for p in later if p[0] != artist), None) or later[0]
        partners.append(chosen)
    index = (pairs[:, None, :] == distinct[None]).all(-1).float().argmax(1)  # each window's row in `distinct`
    swapped = torch.tensor(partners, dtype=pairs.dtype)[index]
    return swapped[:, 0], swapped[:, 1:]


def other_song_rows(rows: torch.Tensor, songs: Sequence[str]) -> torch.Tensor:
    """Each window's row (its upper codes, its lyrics) replaced by that of the nearest later window of another
    song (cyclically)."""
    if len(set(songs)) < 2:
        raise JukeboxError("the windows come from a single song: no other song's to swap in")
    count = len(songs)
    shift = next(step for step in range(1, count) if songs[step] != songs[0])
    chosen = []
    for index in range(count):
        step = shift
        while songs[(index + step) % count] == songs[index]:
            step += 1
        chosen.append((index + step) % count)
    return rows[torch.tensor(chosen)]


@torch.no_grad()
def bits_per_token(prior: torch.nn.Module, batches: Sequence[Mapping[str, Any]], **replace: torch.Tensor) -> float:
    """Mean bits per real code token over `batches`; a keyword replaces that field of every window, in order."""
    total, tokens, start = 0.0, 0, 0
    for batch in batches:
        size = batch["codes"].shape[0]
        batch = {**batch, **{key: value[start : start + size] for key, value in replace.items()}}
        start += size
        logits, targets = prior(batch)
        logits, targets = logits[:, prior.n_tokens :], targets[:, prior.n_tokens :]
        nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        mask = batch["mask"].flatten().float()
        total += float((nats * mask).sum()) / math.log(2)
        tokens += int(mask.sum())
    return total / tokens


def validation_windows(prior: torch.nn.Module, codes_dir: Path, batch_size: int) -> list[dict[str, Any]]:
    """Every validation window of the prior's level, in order, batched as the prior trains on them."""
    max_genres = prior.labels.max_genres if prior.labels is not None else 5
    data = build("datamodule", {"_component_": "code_shards", "path": str(codes_dir), "level": prior.level,
                                "n_ctx": prior.n_ctx, "batch_size": batch_size, "num_workers": 0,
                                "max_genres": max_genres, "n_tokens": prior.lyric_tokens})  # fmt: skip
    return list(data.val_dataloader())


def label_evidence(prior: torch.nn.Module, codes_dir: Path, batch_size: int = 16) -> dict[str, Any]:
    """Bits per token against the unigram entropy, and what the labels and upper codes are worth."""
    batches = validation_windows(prior, codes_dir, batch_size)
    if not batches:
        raise JukeboxError(f"{codes_dir}: no validation windows of {prior.n_ctx} codes at level {prior.level}")
    result: dict[str, Any] = {
        "level": int(prior.level),
        "windows": sum(int(b["codes"].shape[0]) for b in batches),
        "n_ctx": int(prior.n_ctx),
        "unigram_bits": unigram_entropy_bits(codes_dir, "train", prior.level, prior.codebook_size),
        "bits_per_token": bits_per_token(prior, batches),
    }
    result["below_unigram"] = result["unigram_bits"] - result["bits_per_token"]
    # A small library may hold out one song: then there is no other label or song to compare with, and
    # the comparison is left out with a note rather than stopping the run.
    notes = []
    if prior.labels is not None:
        artists, genres = torch.cat([b["artist"] for b in batches]), torch.cat([b["genres"] for b in batches])
        if len(torch.unique(torch.cat([artists[:, None], genres], dim=1), dim=0)) > 1:
            artists, genres = swapped_labels(artists, genres)
            result["swapped_labels_bits"] = bits_per_token(prior, batches, artist=artists, genres=genres)
            result["labels_worth"] = result["swapped_labels_bits"] - result["bits_per_token"]
        else:
            notes.append("the validation windows carry a single artist and genre: the labels were not swapped")
    # Windows of one song share its artist and length in samples: enough to tell the demo's songs apart.
    songs = [f"{int(a)}:{int(t)}" for b in batches for a, t in zip(b["artist"], b["timing"][:, 0], strict=True)]
    if prior.upper is not None:
        if len(set(songs)) > 1:
            upper = other_song_rows(torch.cat([b["upper_codes"] for b in batches]), songs)
            result["other_upper_bits"] = bits_per_token(prior, batches, upper_codes=upper)
            result["upper_worth"] = result["other_upper_bits"] - result["bits_per_token"]
        else:
            notes.append("the validation windows come from a single song: no other song's upper codes to try")
    if prior.lyric_tokens:
        sung = [
            {key: value[keep] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
            for batch in batches
            if bool((keep := batch["lyrics"].flatten(1).any(1)).any())
        ]
        sung_songs = [song for song, tokens in zip(songs, torch.cat([b["lyrics"] for b in batches]), strict=True)
                      if bool(tokens.any())]  # fmt: skip
        if len(set(sung_songs)) > 1:  # the sung windows with their own lyrics and with another sung song's
            lyrics = other_song_rows(torch.cat([b["lyrics"] for b in sung]), sung_songs)
            result["sung_windows"] = len(sung_songs)
            result["sung_bits"] = bits_per_token(prior, sung)
            result["other_lyrics_bits"] = bits_per_token(prior, sung, lyrics=lyrics)
            result["lyrics_worth"] = result["other_lyrics_bits"] - result["sung_bits"]
        else:
            notes.append("fewer than two validation songs are sung: no other song's lyrics to try")
    if notes:
        result["notes"] = notes
    return result


# ------------------------------------------------------------------------------- what the codes say of the voice
VOWELS = "aeiouy"


def syllable_vowel(text: str) -> int | None:
    """The index in `VOWELS` of a syllable's first vowel letter (accents dropped), None for a syllable without."""
    for letter in unicodedata.normalize("NFD", text.lower()):
        if letter in VOWELS:
            return VOWELS.index(letter)
    return None


def sung_vowel_frames(codes_dir: Path, split: str, level: int) -> tuple[np.ndarray, np.ndarray]:
    """The level's codes in the middle half of every sung syllable of a split (its vowel, not the consonants
    around it) and that syllable's vowel: (frames,) codes, (frames,) vowel indices."""
    manifest = load_code_manifest(codes_dir)
    seconds_per_code = manifest["hop_lengths"][level] / manifest["sample_rate"]
    codes_out, vowels_out = [], []
    for _, metadata, codes in split_codes(codes_dir, split, level, lambda metadata: bool(metadata.get("syllables"))):
        for syllable in metadata["syllables"]:
            vowel = syllable_vowel(str(syllable.get("text", "")))
            if vowel is None or "duration" not in syllable:
                continue
            first = int(syllable["onset"] / seconds_per_code)
            last = min(int((syllable["onset"] + syllable["duration"]) / seconds_per_code), len(codes))
            quarter = (last - first) // 4
            middle = codes[first + quarter : last - quarter]
            codes_out.append(middle.astype(np.int64))
            vowels_out.append(np.full(len(middle), vowel, dtype=np.int64))
    if not codes_out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(codes_out), np.concatenate(vowels_out)


def code_bits_given(
    codes: np.ndarray, labels: np.ndarray, fit_codes: np.ndarray, fit_labels: np.ndarray, codebook_size: int
) -> float:
    """Bits per code of `codes` under each label's code histogram counted on (`fit_codes`, `fit_labels`), with
    half a count added to every code (Krichevsky-Trofimov), so that an unseen code costs bits, not infinity."""
    total = 0.0
    for label in np.unique(labels):
        counts = np.bincount(fit_codes[fit_labels == label], minlength=codebook_size) + 0.5
        total -= float(np.log2(counts / counts.sum())[codes[labels == label]].sum())
    return total / max(len(codes), 1)


def vowel_evidence(codes_dir: Path, level: int, seed: int = 0) -> dict[str, Any]:
    """How much the sung vowel tells of a level's codes, on the validation songs' sung syllables.

    Code histograms per vowel are counted on the training songs and scored on the validation songs, against
    the same histograms counted with the training syllables' vowels shuffled (what counting alone gains).
    The difference is what the vowel alone says of one code: a measure of how much of the voice the codes
    keep, and so of what a prior of this level could gain by reading its lyrics.
    """
    manifest = load_code_manifest(codes_dir)
    fit_codes, fit_vowels = sung_vowel_frames(codes_dir, "train", level)
    codes, vowels = sung_vowel_frames(codes_dir, "validation", level)
    if not len(codes) or not len(fit_codes):
        return {}
    size = int(manifest["codebook_sizes"][level])
    shuffled = np.random.default_rng(seed).permutation(fit_vowels)
    result = {
        "frames": len(codes),
        "vowel_bits": code_bits_given(codes, vowels, fit_codes, fit_vowels, size),
        "shuffled_vowel_bits": code_bits_given(codes, vowels, fit_codes, shuffled, size),
    }
    result["vowel_worth"] = result["shuffled_vowel_bits"] - result["vowel_bits"]
    return result


# ------------------------------------------------------------------------------- lyric alignment
def word_onsets(lyrics: str, syllables: Sequence[Mapping[str, Any]]) -> list[float]:
    """The sung onset of each word of `lyrics`, from syllables whose texts spell the words in order.

    A word is a run of non-whitespace; its syllables are the next ones whose texts join to it.
    Stops at the first word the syllables do not spell (the rest has no known onset).
    """
    onsets, index = [], 0
    for word in _WORD.findall(lyrics):
        if index >= len(syllables):
            break
        first, spelled = float(syllables[index]["onset"]), ""
        while index < len(syllables) and len(spelled) < len(word):
            spelled += str(syllables[index]["text"])
            index += 1
        if spelled != word:
            break
        onsets.append(first)
    return onsets


def line_onsets(lyrics: str, lines: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """{word index in `lyrics`: onset} for the first word of each timed line (an ``.lrc`` file's);
    empty when the lines do not spell the lyrics word for word."""
    texts = [str(line.get("text", "")) for line in lines]
    timed = all(isinstance(line.get("time"), (int, float)) for line in lines)
    if not timed or _WORD.findall("\n".join(texts)) != _WORD.findall(lyrics):
        return {}
    onsets, index = {}, 0
    for line, text in zip(lines, texts, strict=True):
        words = len(_WORD.findall(text))
        if words:
            onsets.setdefault(index, float(line["time"]))
        index += words
    return onsets


def known_onsets(metadata: Mapping[str, Any]) -> dict[int, float]:
    """{word index: onset in seconds} of a song's words whose onset its metadata records: every word from
    sung syllables (the demo), the first word of each line from line times (``.lrc`` files)."""
    lyrics = metadata.get("lyrics") or ""
    if metadata.get("syllables"):
        return dict(enumerate(word_onsets(lyrics, metadata["syllables"])))
    if metadata.get("lyric_lines"):
        return line_onsets(lyrics, metadata["lyric_lines"])
    return {}


def known_errors(predicted: Sequence[float], known: Mapping[int, float]) -> np.ndarray:
    """|predicted - known| over the words whose onset is known and that `predicted` reaches: (words,) seconds."""
    indices = sorted(index for index in known if index < len(predicted))
    return onset_errors([predicted[i] for i in indices], [known[i] for i in indices])


def onset_errors(predicted: Sequence[float], true: Sequence[float]) -> np.ndarray:
    """|predicted - true| word by word, over the words both know: (words,) seconds."""
    count = min(len(predicted), len(true))
    return np.abs(np.asarray(predicted[:count], dtype=np.float64) - np.asarray(true[:count], dtype=np.float64))


def summarise_errors(errors: np.ndarray) -> dict[str, float | int]:
    """Median absolute onset error and the fraction of words within `ONSET_TOLERANCE`."""
    if errors.size == 0:
        return {"words": 0}
    return {
        "words": int(errors.size),
        "median_onset_error": float(np.median(errors)),
        "within_tolerance": float((errors <= ONSET_TOLERANCE).mean()),
    }


def proportional_onsets(text: str, seconds: float) -> list[float]:
    """Word onsets if the lyrics were sung at an even pace over the whole song: each word's first character's
    share of the text, times the song's length (what the lyric window assumes; the baseline to beat)."""
    return [seconds * match.start() / max(len(text), 1) for match in _WORD.finditer(text)]


def held_out_sung_songs(codes_dir: Path, level: int) -> list[dict[str, Any]]:
    """The validation songs whose metadata records sung syllables or lyric line times: key, metadata and the
    level's codes."""

    def sung(metadata: Mapping[str, Any]) -> bool:
        return bool((metadata.get("syllables") or metadata.get("lyric_lines")) and metadata.get("lyrics"))

    return [
        {"key": key, "metadata": metadata, "codes": codes}
        for key, metadata, codes in split_codes(codes_dir, "validation", level, sung)
    ]


def split_codes(
    codes_dir: Path, split: str, level: int, keep: Callable[[Mapping[str, Any]], bool]
) -> Iterator[tuple[str, dict[str, Any], np.ndarray]]:
    """Key, metadata and the level's codes of each song of a split whose metadata `keep` accepts (the others'
    codes are not decoded)."""
    shards = load_code_manifest(codes_dir)["shards"][split]
    urls = [str(codes_dir / shard["name"]) for shard in shards]
    recorded = {url: shard.get("songs") for url, shard in zip(urls, shards, strict=True)}
    for where, sample, metadata in shard_samples(urls, (CODES_FIELD,), recorded):
        if keep(metadata):
            yield sample["__key__"], metadata, codes_from_npz(sample[CODES_FIELD], where)[level]


def teacher_forced_alignment(
    vqvae: str, prior_source: str, codes_dir: Path, hop_fraction: float = 0.5
) -> dict[str, Any]:
    """Align each held-out sung song's lyrics with the prior's attention over the song's true codes."""
    sampler = build("sampler", {"_component_": "ancestral", "vqvae": vqvae, "priors": [prior_source],
                                "hop_fraction": hop_fraction})  # fmt: skip
    level = sampler.prior_levels()[0]
    prior = sampler.prior(level)
    if not prior.lyric_tokens:
        return {}
    seconds_per_token = sampler.hop_lengths[level] / sampler.sample_rate
    pace_width = ALIGNMENT_PACE * prior.lyric_tokens
    per_song, errors, attention_errors, even = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for song in held_out_sung_songs(codes_dir, level):
            metadata, codes = song["metadata"], torch.from_numpy(song["codes"].astype(np.int64))[None]
            request = SampleRequest([metadata.get("artist", "unknown")], [list(metadata.get("genre") or ["unknown"])],
                                    [metadata["lyrics"]], seconds=codes.shape[1] * seconds_per_token)  # fmt: skip
            sampler.prepare(request, SampleStore(Path(scratch) / song["key"]), progress=False)
            codes = codes[:, : sampler.total // sampler.hop_lengths[level]]
            attention = sampler.alignment_matrices(level, [0], {level: codes})[0]
            text = sampler.labels[level].texts[0]
            if not text or not attention.any():
                continue
            sung = known_onsets(metadata)
            paths = monotonic_path(attention, pace_width=pace_width), monotonic_path(attention)
            song_errors, alone = (known_errors([w.start for w in word_times(text, path, seconds_per_token)], sung)
                                  for path in paths)  # fmt: skip
            errors.append(song_errors)
            attention_errors.append(alone)
            even.append(known_errors(proportional_onsets(text, codes.shape[1] * seconds_per_token), sung))
            per_song.append({"key": song["key"], "artist": metadata.get("artist"), **summarise_errors(song_errors),
                             "attention_alone": summarise_errors(alone).get("median_onset_error"),
                             "even_pace": summarise_errors(even[-1]).get("median_onset_error")})  # fmt: skip

    def pooled(per_song_errors: list[np.ndarray]) -> dict[str, float | int]:
        return summarise_errors(np.concatenate(per_song_errors) if per_song_errors else np.zeros(0))

    return {
        "songs": per_song,
        "pace_width": pace_width,
        **pooled(errors),
        "attention_alone": {key: value for key, value in pooled(attention_errors).items() if key != "words"},
        "even_pace": {key: value for key, value in pooled(even).items() if key != "words"},
    }


# ------------------------------------------------------------------------------- the pipeline
@register("pipeline", "prior_evidence")
class PriorEvidence(Pipeline):
    """Bits per token against the unigram entropy, labels and upper codes against another song's, lyric alignment."""

    def __init__(self, priors: Sequence[str], codes: str, vqvae: str | None = None, batch_size: int = 16) -> None:
        if not priors:
            raise JukeboxError("prior_evidence: give at least one prior (an export folder or .ckpt)")
        self.priors, self.codes, self.vqvae, self.batch_size = [str(p) for p in priors], Path(codes), vqvae, batch_size

    def run(self, context: RunContext) -> Mapping[str, Any]:
        context.run_dir.mkdir(parents=True, exist_ok=True)
        paths = {"codes": self.codes, **{f"prior {i}": p for i, p in enumerate(self.priors)}}
        if self.vqvae is not None:
            paths["vqvae"] = self.vqvae
        fingerprint = inputs_fingerprint({"batch_size": self.batch_size, "priors": self.priors}, paths)
        earlier = earlier_report(context.run_dir / REPORT, fingerprint)
        if earlier is not None:
            return {**earlier["summary"], REUSED: True}
        report: dict[str, Any] = {"fingerprint": fingerprint, "codes": str(self.codes), "priors": {}}
        summary: dict[str, Any] = {}
        for source in self.priors:
            prior = load(source)
            evidence = label_evidence(prior, self.codes, self.batch_size)
            if prior.lyric_tokens and (vowels := vowel_evidence(self.codes, prior.level)):
                evidence["vowels"] = vowels
            if prior.lyric_tokens and self.vqvae is not None:
                evidence["alignment"] = teacher_forced_alignment(self.vqvae, source, self.codes)
            report["priors"][source] = evidence
            for key, label in (("below_unigram", "bits_below_unigram"), ("labels_worth", "labels_worth_bits"),
                               ("upper_worth", "upper_codes_worth_bits"),
                               ("lyrics_worth", "lyrics_worth_bits")):  # fmt: skip
                if key in evidence:
                    summary[f"level_{evidence['level']}_{label}"] = round(evidence[key], 3)
            if "vowels" in evidence:
                worth = round(evidence["vowels"]["vowel_worth"], 3)
                summary[f"level_{evidence['level']}_sung_vowel_worth_bits"] = worth
            if evidence.get("alignment", {}).get("words"):
                summary["alignment_median_onset_error_s"] = round(evidence["alignment"]["median_onset_error"], 3)
        report["summary"] = summary
        atomic_write_text(context.run_dir / REPORT, json.dumps(report, indent=2) + "\n")
        atomic_write_text(context.run_dir / "evidence.md", evidence_markdown(report))
        return summary


def evidence_markdown(report: Mapping[str, Any]) -> str:
    """The evidence as Markdown tables: one row per prior, then the alignment per song."""
    lines = [
        "# What the priors learned (validation songs)",
        "",
        "| prior | level | windows | unigram bits | bits/token | below unigram "
        "| another artist's and genre's labels | labels worth | another song's upper codes | upper codes worth |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for source, e in report["priors"].items():
        cells = [formatted(e.get(k)) for k in ("unigram_bits", "bits_per_token", "below_unigram", "swapped_labels_bits",
                                                "labels_worth", "other_upper_bits", "upper_worth")]  # fmt: skip
        lines.append(f"| `{source}` | {e['level']} | {e['windows']} | " + " | ".join(cells) + " |")
    lyrics = [
        f"- `{source}`: on its {e['sung_windows']} sung windows, {e['sung_bits']:.3f} bits per token with their own "
        f"lyrics, {e['other_lyrics_bits']:.3f} with another sung song's: the lyrics are worth "
        f"{e['lyrics_worth']:.3f} bits per token."
        for source, e in report["priors"].items()
        if "lyrics_worth" in e
    ]
    lyrics += [
        f"- the codes of level {e['level']} in the middle of the validation songs' {v['frames']} sung vowel frames: "
        f"{v['vowel_bits']:.3f} bits per code from each vowel's histogram of codes on the training songs, "
        f"{v['shuffled_vowel_bits']:.3f} with the vowels shuffled: the sung vowel is worth {v['vowel_worth']:.3f} "
        "bits per code (what the vowel alone, read from the lyrics, tells of one code)."
        for e in report["priors"].values()
        if (v := e.get("vowels"))
    ]
    lines += ["", *lyrics] if lyrics else []
    notes = [f"- `{source}`: {note}" for source, e in report["priors"].items() for note in e.get("notes", [])]
    lines += ["", *notes] if notes else []
    for source, e in report["priors"].items():
        alignment = e.get("alignment")
        if not alignment or not alignment.get("words"):
            continue
        lines += [
            "",
            f"## Lyric alignment of `{source}`, teacher-forced on the held-out sung songs",
            "",
            f"{alignment['words']} words: median onset error {alignment['median_onset_error']:.3f} s, "
            f"{100 * alignment['within_tolerance']:.0f}% within {ONSET_TOLERANCE} s (the attention with an even-pace "
            f"prior {alignment['pace_width']:g} characters wide). "
            + " ".join(
                f"{name}: {alignment[key]['median_onset_error']:.3f} s, "
                f"{100 * alignment[key]['within_tolerance']:.0f}% within {ONSET_TOLERANCE} s."
                for key, name in (
                    ("attention_alone", "The attention alone"),
                    ("even_pace", "Words at an even pace over each song (the lyric window's assumption)"),
                )
                if key in alignment
            ),
            "",
            "| song | artist | words | median onset error (s) | within 0.5 s | attention alone (s) | even pace (s) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for song in alignment["songs"]:
            cells = [formatted(song.get(key), ".2f" if key == "within_tolerance" else ".3f")
                     for key in ("median_onset_error", "within_tolerance", "attention_alone", "even_pace")]  # fmt: skip
            lines.append(f"| {song['key']} | {song['artist']} | {song['words']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
