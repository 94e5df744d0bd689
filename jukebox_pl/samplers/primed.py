"""``sampler: primed``: continue an audio prompt, the first seconds of a file or of a dataset's song, at every level.

openai/jukebox ``sample.py`` (``primed_sample``, ``load_prompts``): the prompt is encoded by
the VQ-VAE at every level, cut to a whole number of top-level codes, and each level's prior
continues from its prompt codes. Several prompts are shared out over the samples in turn.

A prompt is an audio file, or a song of a ``jukebox-pl data shards`` dataset named by a mapping
``{dataset: DIR, split: validation, artist: NAME}`` (or ``key: KEY``): the first song of the
split, in key order, that matches; ``index: N`` takes the N-th match instead (``{dataset: DIR,
index: 2}``: the split's third song), and ``index: all`` every match, one prompt each
(``{dataset: DIR, split: validation, index: all}``: every held-out song). A dataset's song also
gives the samples' default artist, genres and lyrics, so
``sampler.prompt='{dataset: data/demo/shards, artist: J.S. Bach}'`` alone continues a held-out
chorale with its own labels.

Example::

    jukebox-pl sample sample/primed sampler.prompt=song.wav sampler.prompt_seconds=2 seconds=6
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from jukebox_pl.data.audio import mono, read_song, resample
from jukebox_pl.data.shard_reader import count_songs, find_song
from jukebox_pl.errors import JukeboxError
from jukebox_pl.registry import register
from jukebox_pl.samplers.base import Sampler, SampleRequest

PromptSpec = str | Mapping[str, Any]  # an audio file, or {dataset, split, artist | key}
_SONG_KEYS = ("dataset", "split", "artist", "key", "index")


@register("sampler", "primed")
class PrimedSampler(Sampler):
    """Encodes the first `prompt_seconds` of `prompt` (one file or a list) and samples on from them."""

    mode = "primed"

    def __init__(
        self, vqvae: str, prompt: PromptSpec | Sequence[PromptSpec], prompt_seconds: float, **settings: Any
    ) -> None:
        super().__init__(vqvae, **settings)
        prompts = [prompt] if isinstance(prompt, (str, Mapping)) else list(prompt)
        if not prompts or prompt_seconds <= 0:
            raise JukeboxError("sampler (primed): give a prompt (audio file or dataset song) and prompt_seconds > 0")
        self.prompts: list[str | dict[str, Any]] = [song for spec in prompts for song in _expanded(_checked(spec))]
        self._songs: dict[int, Any] = {}  # prompt index -> the dataset song it names, read once
        hop = self.hop_lengths[-1]
        self.prompt_samples = int(prompt_seconds * self.sample_rate) // hop * hop
        if self.prompt_samples == 0:
            raise JukeboxError(f"sampler (primed): prompt_seconds={prompt_seconds} is less than one top-level code")

    def total_samples(self, request: SampleRequest) -> int:
        total = super().total_samples(request)
        if total <= self.prompt_samples:
            raise JukeboxError(
                f"sampler (primed): seconds={request.seconds} leaves nothing to sample after a prompt of "
                f"{self.prompt_samples / self.sample_rate:.2f} s; seconds is the length of the whole result"
            )
        return total

    def song(self, index: int) -> Any:
        """The dataset song prompt `index` names (a ``ShardSong``), read on first use."""
        if index not in self._songs:
            spec = self.prompts[index]
            assert isinstance(spec, dict)
            where = {key: spec[key] for key in ("split", "artist", "key", "index") if key in spec}
            self._songs[index] = find_song(spec["dataset"], **where)
        return self._songs[index]

    def source_request(self) -> dict[str, Any] | None:
        """The labels and lengths of the dataset songs prompted from: the samples' defaults (None for audio
        files)."""
        if any(isinstance(spec, str) for spec in self.prompts):
            return None
        songs = [self.song(index) for index in range(len(self.prompts))]
        return {
            "artists": [song.metadata.get("artist", "unknown") for song in songs],
            "genres": [list(song.metadata.get("genres") or ["unknown"]) for song in songs],
            "lyrics": [song.metadata.get("lyrics", "") for song in songs],
            "song_seconds": [len(song.audio) / song.sample_rate for song in songs],
        }

    def prompt_audio(self, index: int) -> torch.Tensor:
        """Prompt `index`'s first `prompt_samples` samples, mono at the VQ-VAE's rate: (1, prompt_samples)."""
        spec = self.prompts[index]
        if isinstance(spec, str):
            prompt, what = mono(read_song(spec, sample_rate=self.sample_rate).as_float()), f"{spec}: the prompt"
        else:
            song = self.song(index)
            prompt = mono(resample(song.audio, song.sample_rate, self.sample_rate))
            what = f"{spec['dataset']}: song {song.key}"
        if len(prompt) < self.prompt_samples:
            raise JukeboxError(
                f"{what} is {len(prompt) / self.sample_rate:.2f} s long, shorter than "
                f"the {self.prompt_samples / self.sample_rate:.2f} s asked for (prompt_seconds)"
            )
        return torch.from_numpy(np.ascontiguousarray(prompt[: self.prompt_samples], dtype=np.float32))[None]

    def prepare(self, request: SampleRequest, store: Any, progress: bool = True) -> None:
        for index in range(len(self.prompts)):  # a bad or short prompt is refused before sampling starts
            self.prompt_audio(index)
        super().prepare(request, store, progress)

    def initial_codes(self, samples: Sequence[int]) -> dict[int, torch.Tensor]:
        audio = torch.stack([self.prompt_audio(i % len(self.prompts)) for i in samples]).to(self.device)
        codes = self.vqvae.encode(audio)
        return {level: codes[level].long() for level in self.sampled_levels()}

    def describe(self) -> dict[str, Any]:
        prompts = [
            spec if isinstance(spec, str) else {**spec, "song": self.song(index).key}
            for index, spec in enumerate(self.prompts)
        ]
        return {**super().describe(), "prompt": prompts, "prompt_samples": self.prompt_samples}


def _checked(spec: PromptSpec) -> str | dict[str, Any]:
    """A prompt as given, with a dataset song's mapping checked: `dataset`, and `artist` or `key`."""
    if isinstance(spec, str):
        return spec
    song = dict(spec)
    unknown = [key for key in song if key not in _SONG_KEYS]
    if unknown or "dataset" not in song:
        raise JukeboxError(
            f"sampler (primed): prompt {song}: a dataset song is {{dataset: DIR, split: validation, artist: NAME}} "
            f"(add index: N for the artist's song N, in key order, or index: all for every one), {{dataset: DIR, "
            f"index: N}} or {{dataset: DIR, key: KEY}}"
            + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else "")
        )
    return {"split": "validation", **song}


def _expanded(spec: str | dict[str, Any]) -> list[str | dict[str, Any]]:
    """A checked prompt as prompts: ``index: all`` becomes one prompt per matching song, in key order."""
    if isinstance(spec, str):
        return [spec]
    index = spec.get("index", 0)
    if isinstance(index, int) and not isinstance(index, bool):
        return [spec]
    if index != "all":
        raise JukeboxError(f"sampler (primed): prompt {spec}: index is a song's number (0 for the first) or 'all', "
                           f"not {index!r}")  # fmt: skip
    if "key" in spec:
        raise JukeboxError(f"sampler (primed): prompt {spec}: index: all takes every song of a split or an artist, "
                           "not of one key")  # fmt: skip
    count = count_songs(spec["dataset"], spec["split"], spec.get("artist"))  # none: an error naming the dataset
    return [{**spec, "index": number} for number in range(count)]
