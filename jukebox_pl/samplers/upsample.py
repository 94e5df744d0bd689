"""``sampler: upsample``: sample only the lower levels, from the top-level codes of an earlier run.

openai/jukebox ``sample.py`` (``upsample``): the top level is read back, not sampled; the
upsamplers fill in the levels below and the VQ-VAE decodes them. A top-level prior is not
needed; given one that reads lyrics, the lyric alignment is written as well.

Example::

    jukebox-pl sample sample/upsample sampler.codes_from=runs/sample/ancestral
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from jukebox_pl.errors import JukeboxError
from jukebox_pl.registry import register
from jukebox_pl.samplers.base import Sampler, SampleRequest
from jukebox_pl.samplers.store import SampleStore


@register("sampler", "upsample")
class UpsampleSampler(Sampler):
    """Reads the top level of `codes_from` and samples the levels below it with the upsamplers."""

    mode = "upsample"

    def __init__(self, vqvae: str, codes_from: str, **settings: Any) -> None:
        super().__init__(vqvae, **settings)
        self.codes_from = str(codes_from)
        self.source = SampleStore(codes_from)
        self.top = len(self.hop_lengths) - 1

    def source_request(self) -> dict[str, Any]:
        return self.source.request()

    def sampled_levels(self) -> list[int]:
        levels = [level for level in self.prior_levels() if level < self.top]
        expected = list(range(self.top - 1, self.top - 1 - len(levels), -1))
        if not levels or levels != expected:
            raise JukeboxError(
                f"sampler (upsample): needs upsamplers for the levels below the top, from {self.top - 1} down, "
                f"got priors for levels {self.prior_levels()}"
            )
        return levels

    def total_samples(self, request: SampleRequest) -> int:
        available = int(self.source.request()["total_samples"])
        return available if request.seconds is None else min(super().total_samples(request), available)

    def initial_codes(self, samples: Sequence[int]) -> dict[int, torch.Tensor]:
        top = self.source.load_codes(self.top, samples)
        needed = self.total // self.hop_lengths[self.top]
        if top is None or top.shape[1] < needed:
            raise JukeboxError(
                f"sampler (upsample): {self.codes_from} has no complete level-{self.top} codes for samples "
                f"{list(samples)}; sample the top level first"
            )
        return {self.top: top[:, :needed]}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "codes_from": self.codes_from}
