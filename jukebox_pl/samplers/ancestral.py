"""``sampler: ancestral``: music from labels and lyrics alone, top level first, then the upsamplers.

openai/jukebox ``sample.py`` (``ancestral_sample``): every level starts empty; the top prior
samples from the artist, genres, timing and lyrics, each upsampler from the codes above it,
and the VQ-VAE decodes each finished level.

Example::

    jukebox-pl sample sample/ancestral artist=bach genre=classical lyrics=@lyrics.txt seconds=4 n_samples=2
"""

from __future__ import annotations

from jukebox_pl.registry import register
from jukebox_pl.samplers.base import Sampler


@register("sampler", "ancestral")
class AncestralSampler(Sampler):
    """Samples every level from scratch: top-level prior, upsamplers, decoder."""

    mode = "ancestral"
