"""The sampler base: top-level prior, then upsamplers, then the VQ-VAE decoder, in windows, resumable.

A sampler is a LightningModule that owns the trained parts (a VQ-VAE and one prior per level,
loaded from exports or checkpoints) and samples in ``predict_step``: ``Trainer.predict`` hands
each device a batch of sample indices, so samples spread over devices and nodes. The modes
differ only in the codes they start from (`initial_codes`) and the levels they sample
(`sampled_levels`): ``ancestral`` starts from nothing, ``primed`` from an encoded audio prompt,
``continue`` from a earlier run's codes, ``upsample`` from an earlier run's top-level codes.

Per batch and level, from the top down (openai/jukebox ``sample.py``, ``_sample``):

1. the level is sampled window by window (`jukebox_pl.samplers.windows`), each window's codes
   saved at once (`jukebox_pl.samplers.store`), each window drawn from its own seed;
2. the finished level is decoded to ``level_{l}/sample_{i}.wav``;
3. with a lyrics-conditioned prior, the lyric alignment is read from its attention and written
   next to the audio (`jukebox_pl.samplers.alignment`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import soundfile
import torch
from torch import nn

from jukebox_pl.checkpoints.export import load, load_vocabularies
from jukebox_pl.data.audio import mono
from jukebox_pl.data.labels import GENRE_PADDING, UNKNOWN, UNKNOWN_ID, UnknownLabelWarning, Vocabulary, normalise_name
from jukebox_pl.data.text import LyricsProcessor
from jukebox_pl.errors import JukeboxError, did_you_mean
from jukebox_pl.modules.decoding import QUANTIZE
from jukebox_pl.modules.sampling import HOLDS
from jukebox_pl.samplers.alignment import ALIGNMENT_PACE, combine_windows, write_alignment
from jukebox_pl.samplers.store import SampleStore
from jukebox_pl.samplers.windows import PAD_CODE, lyric_windows, upper_window, window_hop, window_seed, window_starts

# openai/jukebox README and sample.py: hop fractions 0.5, 0.5, 0.125 for levels 0, 1, 2.
JUKEBOX_HOP_FRACTION = (0.5, 0.5, 0.125)


@dataclass(frozen=True)
class SampleRequest:
    """What to sample, per sample: artist, genres and lyrics; and the length in seconds and the seed."""

    artists: list[str]
    genres: list[list[str]]
    lyrics: list[str]
    seconds: float | None
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    # Per sample, the length in seconds of the song the clip opens (openai/jukebox sample.py's
    # total_sample_length_in_seconds): the timing signal and the lyric windows are placed in a song
    # that long. None: each clip is a whole song.
    song_seconds: list[float] | None = None

    @property
    def n_samples(self) -> int:
        return len(self.artists)


@dataclass
class LevelLabels:
    """One prior's labels for every sample of the run, tokenized on the CPU."""

    artist: torch.Tensor  # (N,)
    genres: torch.Tensor  # (N, max_genres)
    lyrics: list[np.ndarray]  # the whole song's lyric tokens per sample
    texts: list[str]  # the cleaned lyrics, one character per token


def _recorded(value: float | Sequence[float]) -> float | list[float]:
    """A per-level setting as the run's request record keeps it: the number, or a plain list."""
    return value if isinstance(value, int | float) else list(value)


def per_level(value: float | Sequence[float], level: int, name: str) -> float:
    """`value` for `level`: a number for every level, or a list indexed by level."""
    if isinstance(value, int | float):
        return float(value)
    if level >= len(value):
        raise JukeboxError(f"sampler: {name} lists {len(value)} values, but level {level} needs one (index by level)")
    return float(value[level])


class Sampler(pl.LightningModule):
    """Samples codes level by level with the priors and decodes them; see the module docstring."""

    mode = "base"

    def __init__(
        self,
        vqvae: str,
        priors: Sequence[str] = (),
        temperature: float | Sequence[float] = 0.99,
        top_k: int | Sequence[int] = 0,
        top_p: float | Sequence[float] = 0.0,
        hop_fraction: float | Sequence[float] = JUKEBOX_HOP_FRACTION,
        chunk_size: int = 32,
        use_cache: bool = True,
        alignment_layer: int | None = None,
        alignment_head: int | None = None,
        alignment_pace: float = ALIGNMENT_PACE,
        draw_from: str = "codes",
        quantize: str = "none",
        hold: str = "cooled",
    ) -> None:
        super().__init__()
        if hold not in HOLDS:
            raise JukeboxError(f"sampler: hold is 'cooled' or 'model' (docs/sampling.md), not {hold!r}")
        if quantize not in QUANTIZE:
            raise JukeboxError(f"sampler: quantize is 'none', 'int8' or 'bf16' (the decoding step's weights), "
                               f"not {quantize!r}")  # fmt: skip
        if draw_from not in ("codes", "merged"):
            raise JukeboxError(f"sampler: draw_from is 'codes' or 'merged' (openai/jukebox's draws), not {draw_from!r}")
        top_ks, top_ps = np.atleast_1d(top_k), np.atleast_1d(top_p)  # for every level, or a list by level
        if (top_ks < 0).any() or not ((top_ps >= 0.0) & (top_ps <= 1.0)).all() or chunk_size < 1:
            raise JukeboxError(f"sampler: need top_k >= 0, 0 <= top_p <= 1, chunk_size >= 1; got {top_k}, "
                               f"{top_p}, {chunk_size}")  # fmt: skip
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.hop_fraction, self.chunk_size, self.use_cache = hop_fraction, chunk_size, use_cache
        if not alignment_pace >= 0:
            raise JukeboxError(f"sampler: alignment_pace is a fraction of the lyric window (0: attention alone), "
                               f"not {alignment_pace!r}")  # fmt: skip
        self.alignment_layer, self.alignment_head = alignment_layer, alignment_head
        self.alignment_pace = alignment_pace
        self.draw_from, self.quantize, self.hold = draw_from, quantize, hold
        self.vqvae_source = str(vqvae)
        self.vqvae = load(vqvae)
        self.hop_lengths = [int(hop) for hop in self.vqvae.hop_lengths]
        self.sample_rate = int(self.vqvae.sample_rate)
        self.priors = nn.ModuleDict()
        self.sources: dict[int, str] = {}
        self.vocabularies: dict[int, dict[str, Vocabulary] | None] = {}
        for source in priors:
            prior = load(source)
            level = int(getattr(prior, "level", -1))
            self._check_prior(prior, level, str(source))
            self.priors[str(level)] = prior
            self.sources[level], self.vocabularies[level] = str(source), load_vocabularies(source)
        self.eval()
        self.request: SampleRequest | None = None
        self.store: SampleStore | None = None
        self.progress = True
        self.total = 0  # audio samples to sample, set by prepare()
        self.song_totals: list[int] = []  # per sample, the audio samples of the song it opens, set by prepare()
        self.labels: dict[int, LevelLabels] = {}
        self.timings: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------ set-up
    def _check_prior(self, prior: nn.Module, level: int, source: str) -> None:
        if not 0 <= level < len(self.hop_lengths):
            raise JukeboxError(
                f"{source}: a prior of level {level}, but the VQ-VAE has levels 0..{len(self.hop_lengths) - 1}"
            )
        if str(level) in self.priors:
            raise JukeboxError(f"{source}: a second prior for level {level} (the first: {self.sources[level]})")
        if prior.hop_length != self.hop_lengths[level] or prior.codebook_size != self.vqvae.codebook_sizes[level]:
            raise JukeboxError(
                f"{source}: its level {level} has hop {prior.hop_length} and {prior.codebook_size} codes; the VQ-VAE "
                f"{self.vqvae_source} has hop {self.hop_lengths[level]} and {self.vqvae.codebook_sizes[level]} codes"
            )
        if prior.upper is not None:
            ratio = self.hop_lengths[level + 1] // self.hop_lengths[level] if level + 1 < len(self.hop_lengths) else 0
            if prior.upper.ratio != ratio:
                raise JukeboxError(f"{source}: upsamples {prior.upper.ratio}x, but level {level + 1} of the VQ-VAE "
                                   f"is {ratio}x coarser")  # fmt: skip

    def prior(self, level: int) -> nn.Module:
        if str(level) not in self.priors:
            raise JukeboxError(f"sampler ({self.mode}): no prior for level {level}; give one in `priors`")
        return self.priors[str(level)]

    def prior_levels(self) -> list[int]:
        return sorted((int(level) for level in self.priors), reverse=True)

    def sampled_levels(self) -> list[int]:
        """The levels this mode samples, top first: every prior's, contiguous from the top of the VQ-VAE."""
        levels = self.prior_levels()
        expected = list(range(len(self.hop_lengths) - 1, len(self.hop_lengths) - 1 - len(levels), -1))
        if not levels or levels != expected:
            raise JukeboxError(
                f"sampler ({self.mode}): needs priors for the top levels {expected or [len(self.hop_lengths) - 1]} "
                f"down to the last one to sample, got levels {levels}"
            )
        return levels

    def source_request(self) -> dict[str, Any] | None:
        """The request of the run this one starts from (``continue``, ``upsample``), else None."""
        return None

    def total_samples(self, request: SampleRequest) -> int:
        """The audio length to sample, in samples: `seconds` cut to a whole number of top-level codes."""
        if request.seconds is None or request.seconds <= 0:
            raise JukeboxError(f"sampler ({self.mode}): give seconds > 0, the length to sample")
        hop = self.hop_lengths[-1]
        total = int(request.seconds * self.sample_rate) // hop * hop
        if total == 0:
            raise JukeboxError(f"sampler: seconds={request.seconds} is shorter than one top-level code ({hop} samples)")
        return total

    def prepare(self, request: SampleRequest, store: SampleStore, progress: bool = True) -> None:
        """Tokenize `request` for every prior (names checked against each prior's vocabulary) and bind `store`."""
        self.request, self.store, self.progress = request, store, progress
        self.total = self.total_samples(request)
        self.song_totals = self.song_lengths(request)
        self.labels = {level: self._tokenize(level, request) for level in self.prior_levels()}
        for level in self.prior_levels():
            self._check_duration(level)

    def _tokenize(self, level: int, request: SampleRequest) -> LevelLabels:
        prior, source, vocabularies = self.prior(level), self.sources[level], self.vocabularies[level]
        max_genres = prior.labels.max_genres if prior.labels is not None else 1
        # The top prior must know every name; an upsampler that does not (one reused unchanged after the top
        # prior was fine-tuned on a new artist) reads it as 'unknown'.
        strict = level == len(self.hop_lengths) - 1
        artists, genres = [], []
        for artist, genre_names in zip(request.artists, request.genres, strict=True):
            artists.append(self._lookup(vocabularies, "artists", artist, source, strict))
            ids = [self._lookup(vocabularies, "genres", name, source, strict) for name in genre_names][:max_genres]
            genres.append(ids + [GENRE_PADDING] * (max_genres - len(ids)))
        processor = None
        if prior.lyric_tokens:
            version = prior.lyrics.processor.version if prior.lyrics is not None else prior.lyrics_version
            processor = LyricsProcessor(version)
        texts = [processor.clean(text) if processor else "" for text in request.lyrics]
        for index, text in enumerate(request.lyrics if processor else []):
            if dropped := processor.dropped(text):
                shown = " ".join(repr(c) for c in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
                warnings.warn(
                    f"lyrics of sample {index}: the {version} lyric vocabulary has no token for {shown}; "
                    "dropped (letters with accents are written without them)",
                    stacklevel=2,
                )
        tokens = [np.asarray(processor.tokenize(text) if processor else [], dtype=np.int64) for text in texts]
        return LevelLabels(torch.tensor(artists), torch.tensor(genres), tokens, texts)

    @staticmethod
    def _lookup(
        vocabularies: Mapping[str, Vocabulary] | None, kind: str, name: str, source: str, strict: bool = True
    ) -> int:
        if normalise_name(name) == UNKNOWN:
            return UNKNOWN_ID
        if vocabularies is None:
            raise JukeboxError(f"{source} stores no {kind} vocabulary, so {name!r} cannot be looked up; "
                               f"use '{UNKNOWN}' or retrain it with this version")  # fmt: skip
        vocabulary = vocabularies[kind]
        if name not in vocabulary and not strict:
            warnings.warn(f"{kind[:-1]} {name!r} is not in the vocabulary of {source}; that level reads it as "
                          f"'{UNKNOWN}'", UnknownLabelWarning, stacklevel=2)  # fmt: skip
            return UNKNOWN_ID
        if name not in vocabulary:
            raise JukeboxError(
                f"{kind[:-1]} {name!r} is not in the vocabulary of {source} ({len(vocabulary) - 1} {kind})"
                f"{did_you_mean(name, vocabulary.known_names())}"
            )
        return vocabulary.id(name)

    def song_lengths(self, request: SampleRequest) -> list[int]:
        """Per sample, the audio samples of the song the clip opens: `song_seconds`, at least the clip itself."""
        if request.song_seconds is None:
            return [self.total] * request.n_samples
        if len(request.song_seconds) != request.n_samples:
            raise JukeboxError(f"sampler: {len(request.song_seconds)} song lengths for {request.n_samples} samples")
        return [max(self.total, int(seconds * self.sample_rate)) for seconds in request.song_seconds]

    def _check_duration(self, level: int) -> None:
        labels = self.prior(level).labels
        if labels is None or not labels.include_time_signal:
            return
        for total in sorted(set(self.song_totals)):
            if not labels.min_length <= total < labels.max_length:
                raise JukeboxError(
                    f"sampler: a song of {total / self.sample_rate:g} s is outside the song lengths "
                    f"[{labels.min_length / self.sample_rate:g} s, {labels.max_length / self.sample_rate:g} s) that "
                    f"{self.sources[level]} was trained on; choose seconds (or song_seconds) in that range"
                )

    # ------------------------------------------------------------------ modes
    def initial_codes(self, samples: Sequence[int]) -> dict[int, torch.Tensor]:
        """The codes each level starts from, (B, T) per level; empty for ancestral sampling."""
        return {}

    # ------------------------------------------------------------------ sampling
    def predict_dataloader(self) -> Any:  # the pipeline passes its own loader
        raise JukeboxError("sampler: run it through the sample pipeline, which gives it the sample indices")

    def predict_step(self, batch: torch.Tensor, batch_idx: int = 0) -> dict[str, Any]:
        """Sample, decode and align the samples whose indices are `batch` (B,); returns the files written."""
        if self.request is None or self.store is None:
            raise JukeboxError("sampler: call prepare(request, store) before sampling")
        samples = [int(index) for index in batch.tolist()]
        codes = {level: z.to(self.device) for level, z in self.initial_codes(samples).items()}
        written: dict[str, Any] = {"samples": samples, "wavs": {}, "alignment": []}
        for level, given in codes.items():  # levels read, not sampled (upsample): keep them with the run
            if level not in self.sampled_levels() and self.store.load_codes(level, samples) is None:
                self.store.save_codes(level, samples, given, given.shape[1])
        for level in self.sampled_levels():
            total = self.total // self.hop_lengths[level]
            saved = self.store.load_codes(level, samples)
            start_from = codes.get(level)
            if saved is not None and (start_from is None or saved.shape[1] >= start_from.shape[1]):
                start_from = saved.to(self.device)
            if start_from is None:
                start_from = torch.zeros(len(samples), 0, dtype=torch.long, device=self.device)
            if self._finished(level, samples, saved, total):  # a rerun of a finished run: nothing to redo
                codes[level] = saved.to(self.device)[:, :total]
                written["wavs"][level] = [str(self.store.wav_path(level, sample)) for sample in samples]
                continue
            codes[level] = self.sample_level(level, samples, start_from[:, :total], codes)
            audio = self.vqvae.decode(codes[level], level)
            written["wavs"][level] = [str(p) for p in self.store.save_wavs(level, samples, audio, self.sample_rate)]
            written["alignment"] = self.write_alignments(samples, codes, level)
        return written

    def _finished(self, level: int, samples: Sequence[int], saved: torch.Tensor | None, total: int) -> bool:
        """Whether `level`'s codes, wavs and (at the finest level) alignment pages of `samples` are all written."""
        if saved is None or saved.shape[1] < total:
            return False
        if not all(self.store.wav_path(level, sample).is_file() for sample in samples):
            return False
        if level != min(self.sampled_levels()) or self.lyric_level() is None:
            return True
        texts = self.labels[self.lyric_level()].texts
        with_lyrics = [sample for sample in samples if texts[sample]]
        return all((self.store.alignment_dir() / f"sample_{sample}.html").is_file() for sample in with_lyrics)

    def sample_level(
        self, level: int, samples: Sequence[int], current: torch.Tensor, codes: Mapping[int, torch.Tensor]
    ) -> torch.Tensor:
        """Codes (B, total) of `level`, continuing `current` window by window; saved after each window."""
        prior = self.prior(level)
        total = self.total // self.hop_lengths[level]
        ratio = self._upper_ratio(level)
        hop = window_hop(prior.n_ctx, per_level(self.hop_fraction, level, "hop_fraction"), ratio)
        if prior.n_ctx % ratio:
            raise JukeboxError(
                f"{self.sources[level]}: n_ctx {prior.n_ctx} is not a multiple of the upsampling {ratio}"
            )
        temperature = per_level(self.temperature, level, "temperature")
        top_k, top_p = int(per_level(self.top_k, level, "top_k")), per_level(self.top_p, level, "top_p")
        todo = max(total - current.shape[1], 0)
        began = time.perf_counter()
        with self._progress(level, todo * len(samples)) as advance:
            for start in window_starts(total, prior.n_ctx, hop):
                end = min(start + prior.n_ctx, total)
                if current.shape[1] >= end:
                    continue  # sampled before: by the prompt, or by the run this one resumes
                labels, _ = self.window_labels(level, samples, start, codes)
                generator = torch.Generator(self.device).manual_seed(
                    window_seed(self.request.seed, level, start, samples[0])
                )
                window = prior.sample(
                    labels, end - start, current[:, start:], temperature, top_k, top_p, generator,
                    self.use_cache, self.chunk_size, on_token=lambda: advance(len(samples)), draw_from=self.draw_from,
                    quantize=self.quantize, hold=self.hold,
                )  # fmt: skip
                current = torch.cat([current, window[:, current.shape[1] - start :]], dim=1)
                self.store.save_codes(level, samples, current, total)
        if todo:
            seconds = time.perf_counter() - began
            self.timings[level] = {"tokens": todo * len(samples), "seconds": seconds}
        return current

    def window_labels(
        self, level: int, samples: Sequence[int], start: int, codes: Mapping[int, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[np.ndarray] | None]:
        """The conditioning of the window at code `start` of `level`, and each sample's lyric character indices."""
        prior, tokenized, hop = self.prior(level), self.labels[level], self.hop_lengths[level]
        rows = torch.tensor(samples)
        window_samples = prior.n_ctx * hop  # Jukebox: the timing signal always spans a full window
        labels = {
            "artist": tokenized.artist[rows].to(self.device),
            "genres": tokenized.genres[rows].to(self.device),
            "timing": torch.tensor(
                [[self.song_totals[i], start * hop, window_samples] for i in samples], device=self.device
            ),
        }
        indices = None
        if prior.lyric_tokens:
            songs = [tokenized.lyrics[i] for i in samples]
            totals = [self.song_totals[i] for i in samples]
            lyrics, indices = lyric_windows(songs, prior.lyric_tokens, totals, start * hop, window_samples)
            labels["lyrics"] = lyrics.to(self.device)
        if prior.upper is not None:
            length = min(prior.n_ctx, self.total // hop - start)
            labels["upper_codes"] = upper_window(codes[level + 1], start, length, prior.upper.ratio)
        return labels, indices

    def _upper_ratio(self, level: int) -> int:
        return self.prior(level).upper.ratio if self.prior(level).upper is not None else 1

    @contextlib.contextmanager
    def _progress(self, level: int, total: int) -> Iterator[Any]:
        """A progress bar of `total` tokens on the first rank (tokens, tokens/s, ETA); yields `advance(n)`."""
        show = self.progress and total > 0 and (self._trainer is None or self.trainer.is_global_zero)
        if not show:
            yield lambda n: None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=f"level {level}", unit="tok", unit_scale=True, dynamic_ncols=True) as bar:
            yield bar.update

    # ------------------------------------------------------------------ alignment
    def lyric_level(self) -> int | None:
        """The level of the prior that reads lyrics (the top one, in Jukebox), or None."""
        return next((level for level in self.prior_levels() if self.prior(level).lyric_tokens), None)

    def write_alignments(self, samples: Sequence[int], codes: Mapping[int, torch.Tensor], level: int) -> list[str]:
        """Align each sample's lyrics with the lyric prior's attention; the page plays `level`'s audio."""
        lyric_level = self.lyric_level()
        if lyric_level is None or lyric_level not in codes:
            return []
        texts = [self.labels[lyric_level].texts[i] for i in samples]
        matrices = self.alignment_matrices(lyric_level, samples, codes)
        seconds_per_token = self.hop_lengths[lyric_level] / self.sample_rate
        pace_width = self.alignment_pace_width(lyric_level)
        written = []
        for row, sample in enumerate(samples):
            if not texts[row] or not matrices[row].any():
                continue
            audio, rate = soundfile.read(self.store.wav_path(level, sample), dtype="float32", always_2d=True)
            details = {
                "artist": self.request.artists[sample],
                "genres": ", ".join(self.request.genres[sample]),
                "seed": str(self.request.seed),
                "mode": self.mode,
                "audio": f"level {level}",
            }
            files = write_alignment(
                self.store.alignment_dir(), f"sample_{sample}", matrices[row], texts[row], seconds_per_token,
                mono(audio), rate, details, pace_width,
            )  # fmt: skip
            written += [str(path) for path in files.values()]
        return written

    def alignment_pace_width(self, level: int) -> float | None:
        """The even-pace prior's width in characters for `level`'s lyric prior (`alignment_pace` of its lyric
        window), or None for the attention alone."""
        return self.alignment_pace * self.prior(level).lyric_tokens if self.alignment_pace > 0 else None

    def alignment_matrices(
        self, level: int, samples: Sequence[int], codes: Mapping[int, torch.Tensor]
    ) -> list[np.ndarray]:
        """Per sample, the attention (tokens, characters) of the level's codes over the whole lyrics.

        As openai/jukebox ``align.py``: one forward pass per sampling window, at the prior's
        alignment layer and head, the windows placed by their lyric character indices.
        """
        prior, z = self.prior(level), codes[level]
        total = z.shape[1]
        hop = window_hop(prior.n_ctx, per_level(self.hop_fraction, level, "hop_fraction"), self._upper_ratio(level))
        windows: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in samples]
        for start in window_starts(total, prior.n_ctx, hop):
            window = z[:, start : start + prior.n_ctx]
            length = window.shape[1]
            window = nn.functional.pad(window, (0, prior.n_ctx - length), value=PAD_CODE)
            labels, indices = self.window_labels(level, samples, start, codes)
            if prior.upper is not None:  # a full window of upper codes for the padded window
                labels["upper_codes"] = upper_window(codes[level + 1], start, prior.n_ctx, prior.upper.ratio)
            weights = prior.alignment_weights(labels, window, self.alignment_layer, self.alignment_head)
            weights = weights[:, :length].float().cpu().numpy()
            for row in range(len(samples)):
                windows[row].append((start, weights[row], indices[row]))
        texts = self.labels[level].texts
        return [  # a sample without lyrics (in a batch with some) has nothing to align: no columns
            combine_windows(windows[row], total, len(texts[sample])) if texts[sample] else np.zeros((total, 0))
            for row, sample in enumerate(samples)
        ]

    def describe(self) -> dict[str, Any]:
        """The settings that decide the codes, for the run's request record."""
        return {
            "mode": self.mode,
            "vqvae": self.vqvae_source,
            "priors": {str(level): self.sources[level] for level in self.prior_levels()},
            **{name: _recorded(getattr(self, name)) for name in ("temperature", "top_k", "top_p", "hop_fraction")},
            # said only when not the default, so that runs recorded before the option still resume
            **({"draw_from": self.draw_from} if self.draw_from != "codes" else {}),
            **({"quantize": self.quantize} if self.quantize != "none" else {}),
            **({"hold": self.hold} if self.hold != "cooled" else {}),
        }
