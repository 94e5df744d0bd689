"""``sampler: primed``: continue an audio prompt, the first seconds of a file, at every level.

openai/jukebox ``sample.py`` (``primed_sample``, ``load_prompts``): the prompt is encoded by
the VQ-VAE at every level, cut to a whole number of top-level codes, and each level's prior
continues from its prompt codes. Several files are shared out over the samples in turn.

Example::

    jukebox-pl sample sample/primed sampler.prompt=song.wav sampler.prompt_seconds=2 seconds=6
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from jukebox_pl.errors import JukeboxError
from jukebox_pl.registry import register
from jukebox_pl.samplers.base import Sampler, SampleRequest, read_prompt


@register("sampler", "primed")
class PrimedSampler(Sampler):
    """Encodes the first `prompt_seconds` of `prompt` (one file or a list) and samples on from them."""

    mode = "primed"

    def __init__(self, vqvae: str, prompt: str | Sequence[str], prompt_seconds: float, **settings: Any) -> None:
        super().__init__(vqvae, **settings)
        self.prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not self.prompts or prompt_seconds <= 0:
            raise JukeboxError("sampler (primed): give a prompt audio file and prompt_seconds > 0")
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

    def prepare(self, request: SampleRequest, store: Any, progress: bool = True) -> None:
        for path in dict.fromkeys(self.prompts):  # a bad or short prompt is refused before sampling starts
            read_prompt(path, self.sample_rate, self.prompt_samples)
        super().prepare(request, store, progress)

    def initial_codes(self, samples: Sequence[int]) -> dict[int, torch.Tensor]:
        audio = torch.stack(
            [read_prompt(self.prompts[i % len(self.prompts)], self.sample_rate, self.prompt_samples) for i in samples]
        ).to(self.device)  # (B, 1, prompt_samples)
        codes = self.vqvae.encode(audio)
        return {level: codes[level].long() for level in self.sampled_levels()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prompt": self.prompts, "prompt_samples": self.prompt_samples}
