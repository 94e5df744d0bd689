"""``sampler: continue``: extend the codes of an earlier sampling run further in time.

openai/jukebox ``sample.py`` (``continue_sample``, ``load_codes``): the saved codes of every
level are read back (optionally cut to `prompt_seconds`), and each level is sampled on to the
new, longer length. Artist, genres and lyrics default to the earlier run's.

Example::

    jukebox-pl sample sample/continue sampler.codes_from=runs/sample/ancestral seconds=8
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jukebox_pl.errors import JukeboxError
from jukebox_pl.registry import register
from jukebox_pl.samplers.base import Sampler, SampleRequest
from jukebox_pl.samplers.store import SampleStore


@register("sampler", "continue")
class ContinueSampler(Sampler):
    """Reads `codes_from`'s codes (cut to `prompt_seconds` if given) and samples every level further."""

    mode = "continue"

    def __init__(self, vqvae: str, codes_from: str, prompt_seconds: float | None = None, **settings: Any) -> None:
        super().__init__(vqvae, **settings)
        self.codes_from = str(codes_from)
        self.source = SampleStore(codes_from)
        self.source_total = int(self.source.request()["total_samples"])
        self.prompt_samples = self.source_total
        if prompt_seconds is not None:
            hop = self.hop_lengths[-1]
            self.prompt_samples = min(int(prompt_seconds * self.sample_rate) // hop * hop, self.source_total)

    def source_request(self) -> dict[str, Any]:
        return self.source.request()

    def total_samples(self, request: SampleRequest) -> int:
        total = super().total_samples(request)
        if total <= self.prompt_samples:
            raise JukeboxError(
                f"sampler (continue): seconds={request.seconds} is not longer than the "
                f"{self.prompt_samples / self.sample_rate:.2f} s taken from {self.codes_from}"
            )
        return total

    def initial_codes(self, samples: Sequence[int]) -> dict[int, torch.Tensor]:
        codes = {}
        for level in self.sampled_levels():
            saved = self.source.load_codes(level, samples)
            if saved is None:
                raise JukeboxError(
                    f"sampler (continue): {Path(self.codes_from)} has no level-{level} codes for samples "
                    f"{list(samples)}"
                )
            codes[level] = saved[:, : self.prompt_samples // self.hop_lengths[level]]
        return codes

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "codes_from": self.codes_from, "prompt_samples": self.prompt_samples}
