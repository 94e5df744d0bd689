"""``label``: artist, bag of genres and timing as embeddings for a prior (Jukebox's LabelConditioner).

As in openai/jukebox ``prior/conditioners.py`` (``LabelConditioner``, ``SimpleEmbedding``,
``RangeEmbedding``) and paper section 4:

- the *start vector* (B, 1, width) is the artist's embedding plus the sum of the song's
  genre embeddings (a bag of up to `max_genres` ids, padded with -1 which is ignored);
- the *timing signal* (B, n_ctx, width) gives every token position three binned
  embeddings: the song's total length, the token's absolute position in the song and its
  relative position (0 at the start, 1 at the end). Jukebox uses it in the top prior only
  (``include_time_signal=not x_cond`` in ``prior/prior.py``).

The two halves: ``tokenize`` runs in the data workers and turns a song's metadata into
the same ``artist`` / ``genres`` / ``timing`` tensors that the ``audio_shards``
DataModule puts in its batches; ``forward`` embeds them on the device.

Example::

    labels = LabelConditioner(width=64, n_artists=10, n_genres=8, n_ctx=16, hop_length=128)
    start, positions = labels(
        artist=torch.tensor([3]),
        genres=torch.tensor([[1, 4, -1, -1, -1]]),
        timing=torch.tensor([[90 * 44100, 10 * 44100, 16 * 128]]),  # song length, offset, crop length
    )
    start.shape, positions.shape  # (1, 1, 64), (1, 16, 64)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from jukebox_pl.data.labels import GENRE_PADDING, Labeller, Vocabulary
from jukebox_pl.registry import register


def interpolate_positions(start: torch.Tensor, end: torch.Tensor, n_time: int) -> torch.Tensor:
    """``start + (end - start) * i / n_time`` for i in 0..n_time-1: (B, 1) -> (B, n_time).

    With ``n_time == 1`` this is `start` itself (Jukebox ``RangeEmbedding.forward``).
    """
    if n_time == 1:
        return start
    fraction = torch.arange(n_time, dtype=torch.float32, device=start.device)[None] / n_time
    return start + (end - start) * fraction


def bin_index(position: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    """The bin of each value: ``[low, high)`` cut into `bins` equal bins, ``floor(bins * (x - low) / (high - low))``."""
    return (bins * ((position - low) / (high - low))).floor().long()


class RangeEmbedding(nn.Module):
    """A learned vector per bin of ``[low, high)``; values are binned, then looked up.

    Given `start` and `end` (B, 1), embeds `n_time` positions spread evenly from `start`
    (inclusive) towards `end` (exclusive): (B, n_time, width).
    """

    def __init__(self, bins: int, low: float, high: float, width: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.bins, self.low, self.high = bins, low, high
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)  # Jukebox: std 0.01 * init_scale

    def forward(self, start: torch.Tensor, end: torch.Tensor | None = None, n_time: int = 1) -> torch.Tensor:
        position = interpolate_positions(start, start if end is None else end, n_time)
        return self.emb(bin_index(position, self.bins, self.low, self.high))


@register("conditioner", "label")
class LabelConditioner(pl.LightningModule):
    """Artist + bag of genres -> start vector (B, 1, width); timing -> per-position embeddings (B, n_ctx, width)."""

    def __init__(
        self,
        width: int,
        n_artists: int,
        n_genres: int,
        n_ctx: int,
        hop_length: int,
        max_genres: int = 5,
        include_time_signal: bool = True,
        t_bins: int = 128,
        min_duration: float = 60.0,
        max_duration: float = 600.0,
        sample_rate: int = 44100,
        init_scale: float = 1.0,
        labels_at_every_position: bool = False,
    ) -> None:
        super().__init__()
        if min(width, n_artists, n_genres, n_ctx, hop_length, max_genres, t_bins) < 1:
            raise ValueError("label conditioner: sizes, n_ctx, hop_length, max_genres and t_bins must be positive")
        if not 0 <= min_duration < max_duration:
            raise ValueError(
                f"label conditioner: need 0 <= min_duration < max_duration, got {min_duration}, {max_duration}"
            )
        self.width, self.n_artists, self.n_genres, self.max_genres = width, n_artists, n_genres, max_genres
        self.n_ctx, self.hop_length, self.sample_rate = n_ctx, hop_length, sample_rate
        self.include_time_signal = include_time_signal
        # Jukebox gives the artist and genres to the start token alone. A small prior with factorised
        # attention reaches that token from few positions and learns to ignore it (the CPU demo's top
        # prior: labels worth 0.006 bits per token); added to every position too, they are in reach.
        self.labels_at_every_position = labels_at_every_position
        # Jukebox hparams.py `labels`: y_bins (120 genres, 4111 artists), t_bins 128, bags of 5 genres.
        self.bow_genre_emb = nn.Embedding(n_genres, width)
        self.artist_emb = nn.Embedding(n_artists, width)
        for embedding in (self.bow_genre_emb, self.artist_emb):
            nn.init.normal_(embedding.weight, std=0.01 * init_scale)  # Jukebox SimpleEmbedding: std 0.01
        # Ranges in samples, as Jukebox's t_ranges: total length, absolute position, relative position.
        self.min_length, self.max_length = min_duration * sample_rate, max_duration * sample_rate
        if include_time_signal:
            self.total_length_emb = RangeEmbedding(t_bins, self.min_length, self.max_length, width, init_scale)
            self.absolute_pos_emb = RangeEmbedding(t_bins, 0.0, self.max_length, width, init_scale)
            self.relative_pos_emb = RangeEmbedding(t_bins, 0.0, 1.0, width, init_scale)

    @property
    def window_length(self) -> int:
        """Samples covered by the `n_ctx` tokens this conditioner places in time."""
        return self.n_ctx * self.hop_length

    # ------------------------------------------------------------------ CPU half
    def tokenize(
        self, metadata: Mapping[str, Any], offset: int, window: int, vocabularies: Mapping[str, Vocabulary]
    ) -> dict[str, torch.Tensor]:
        """One crop's labels as CPU tensors, exactly as an ``audio_shards`` batch item carries them.

        `metadata` is a song's shard JSON (``artist``, ``genres``, ``samples`` and
        ``sample_rate``); `offset` and `window` are the crop's start and length in samples at
        this conditioner's `sample_rate`; `vocabularies` holds ``artists`` and ``genres``.
        Returns ``artist`` (), ``genres`` (max_genres,) padded with -1, ``timing`` (3,) =
        (song length, offset, window) in samples. Names are looked up by
        :class:`jukebox_pl.data.labels.Labeller`, as in the DataModule.
        """
        song = Labeller(vocabularies["artists"], vocabularies["genres"], max_genres=self.max_genres).song(metadata)
        # The shards store the length at the dataset's rate; the crops are resampled to ours.
        total = round(metadata["samples"] * self.sample_rate / metadata.get("sample_rate", self.sample_rate))
        timing = torch.tensor([[total, offset, window]])
        if self.include_time_signal:
            self._check_timing(timing)
        return {"artist": torch.tensor(song.artist), "genres": torch.from_numpy(song.genres), "timing": timing[0]}

    # --------------------------------------------------------------- device half
    def forward(
        self, artist: torch.Tensor, genres: torch.Tensor, timing: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``artist`` (B,), ``genres`` (B, max_genres), ``timing`` (B, 3) -> start (B, 1, width), positions.

        `positions` is (B, n_ctx, width): the timing embeddings, plus the start vector at every position
        with `labels_at_every_position`; None with neither.
        """
        start = self.start_embedding(artist, genres)
        positions = start.expand(-1, self.n_ctx, -1) if self.labels_at_every_position else None
        if not self.include_time_signal:
            return start, positions
        if timing is None:
            raise ValueError("label conditioner: include_time_signal is on, so forward needs `timing`")
        timing_embeddings = self.position_embedding(timing)
        return start, timing_embeddings if positions is None else timing_embeddings + positions

    def start_embedding(self, artist: torch.Tensor, genres: torch.Tensor) -> torch.Tensor:
        """Artist embedding + sum of the genre embeddings, padding ignored: (B, 1, width)."""
        if artist.dim() != 1 or genres.shape != (artist.shape[0], self.max_genres):
            raise ValueError(
                f"label conditioner: expected artist (B,) and genres (B, {self.max_genres}), "
                f"got {tuple(artist.shape)} and {tuple(genres.shape)}"
            )
        bad_artist = (artist < 0) | (artist >= self.n_artists)
        bad_genre = (genres < GENRE_PADDING) | (genres >= self.n_genres)
        if bool(bad_artist.any() | bad_genre.any()):  # Jukebox asserts 0 <= id < bins
            raise ValueError(
                f"label conditioner: artist ids must be in [0, {self.n_artists}) and genre ids in "
                f"[0, {self.n_genres}) or {GENRE_PADDING} (padding); got artists {artist.tolist()}, "
                f"genres {genres.tolist()}"
            )
        present = (genres != GENRE_PADDING).unsqueeze(-1)  # (B, G, 1)
        genre = (self.bow_genre_emb(genres.clamp(min=0)) * present).sum(dim=1, keepdim=True)  # (B, 1, width)
        return genre + self.artist_emb(artist).unsqueeze(1)

    def position_embedding(self, timing: torch.Tensor) -> torch.Tensor:
        """(song length, offset, crop length) in samples (B, 3) -> (B, n_ctx, width).

        Token i sits at ``offset + i * hop_length``: the n_ctx positions are spread evenly
        over ``[offset, offset + n_ctx * hop_length)`` as Jukebox's RangeEmbedding does.
        """
        self._check_timing(timing)
        total = timing[:, 0:1].float()
        start = timing[:, 1:2].float()
        end = (timing[:, 1:2] + self.window_length).float()
        # Jukebox clamps only the relative end (a crop running past the song's end); see _check_timing.
        relative_end = (end / total).clamp(0.0, 1.0)
        return (
            self.total_length_emb(total)
            + self.absolute_pos_emb(start, end, self.n_ctx)
            + self.relative_pos_emb(start / total, relative_end, self.n_ctx)
        )

    def _check_timing(self, timing: torch.Tensor) -> None:
        """Refuse what Jukebox's RangeEmbedding asserts against, in words and seconds."""
        if timing.dim() != 2 or timing.shape[1] != 3:
            raise ValueError(f"label conditioner: timing must be (B, 3), got {tuple(timing.shape)}")
        total, offset, length = timing[:, 0], timing[:, 1], timing[:, 2]
        end = offset + self.window_length
        problems = {
            # A shorter crop is the window's first tokens (a prior fine-tuned on short windows); the positions
            # are those of a whole window from `offset`, as Jukebox always gives the window's length.
            "the crop is longer than n_ctx * hop_length": length > self.window_length,
            "the song length is outside [min_duration, max_duration)": (total < self.min_length)
            | (total >= self.max_length),
            "the crop does not start inside the song": (offset < 0) | (offset >= total),
            "the crop ends after max_duration": end > self.max_length,
        }
        flags = torch.stack(list(problems.values())).any(dim=1).tolist()  # one device sync for all checks
        for (problem, mask), flagged in zip(problems.items(), flags, strict=True):
            if flagged:
                row = int(mask.nonzero()[0, 0])
                seconds = [value / self.sample_rate for value in (int(total[row]), int(offset[row]), int(end[row]))]
                raise ValueError(
                    f"label conditioner: {problem} for batch item {row}: song {seconds[0]:.2f} s, crop "
                    f"[{seconds[1]:.2f} s, {seconds[2]:.2f} s), crop length {int(length[row])} samples; "
                    f"this conditioner takes songs of [{self.min_length / self.sample_rate:g} s, "
                    f"{self.max_length / self.sample_rate:g} s) and {self.n_ctx} tokens of "
                    f"{self.hop_length} samples ({self.window_length} samples)"
                )
