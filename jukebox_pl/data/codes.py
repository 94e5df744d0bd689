"""The ``code_shards`` DataModule: labelled windows of VQ-VAE codes for training the priors.

Reads the code shards that the ``encode`` pipeline writes. Per item, for a prior at
``level`` with a context of ``n_ctx`` tokens:

- ``codes`` (n_ctx,) int64: the window's codes at ``level``, padded with 0 past the song's end;
- ``mask`` (n_ctx,) bool: which of them are real codes, not padding;
- ``upper_codes`` (n_ctx * hop_l // hop_{l+1},) int64: the codes of ``level + 1`` over the
  same samples, for an upsampler (absent for the top level or with ``upper_level=False``);
- ``artist`` (), ``genres`` (max_genres,) padded with -1, ``timing`` (3,) = (song length,
  window offset, window length) in samples, and ``lyrics`` (n_tokens,) when ``n_tokens > 0``.

As in Jukebox's prior training (openai/jukebox ``prior/prior.py``, ``data/files_dataset.py``),
a song gives one window per ``n_ctx`` tokens (rounded up), each shifted at random by up to
half a window in training and kept inside the song. Window offsets lie on the grid of the
upper level's hop, so that the upper window starts on a code boundary (Jukebox's
``get_z_conds`` asserts the same). Shards are dealt out to (rank, worker) slots as in
``audio_shards``.

Example::

    datamodule = CodeShards("data/demo/codes", level=1, n_ctx=512, n_tokens=384)
    batch = next(iter(datamodule.train_dataloader()))  # batch["codes"]: (4, 512)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from jukebox_pl.data.code_shards import CODES_FIELD, codes_from_npz, load_code_manifest
from jukebox_pl.data.datamodule import CropSelection, ShardCrops, ShardDataModule, manifest_count, shard_samples
from jukebox_pl.data.labels import Labeller, Vocabulary, label_fields, normalise_name
from jukebox_pl.data.shard_reader import MANIFEST
from jukebox_pl.errors import JukeboxError, did_you_mean
from jukebox_pl.registry import register

PAD_CODE = 0  # padding past a song's end; `mask` tells it from a real code 0


def window_offsets(tokens: int, n_ctx: int, step: int, shift: bool, rng: np.random.Generator) -> np.ndarray:
    """Start tokens of a song's windows: ``ceil(tokens / n_ctx)`` of them, multiples of `step`.

    With `shift` each window moves by a random amount of up to half a window (Jukebox's
    aug_shift). Windows stay inside the song where it is long enough, up to the rounding
    to `step`; a song shorter than a window gives one window at 0.
    """
    count = max(1, -(-tokens // n_ctx))
    last = max(tokens - n_ctx, 0) // step * step
    offsets = np.arange(count, dtype=np.int64) * n_ctx
    half = n_ctx // 2
    if shift and half:
        offsets = offsets + rng.integers(-half, half, size=count, endpoint=False)
    return np.clip(offsets, 0, last) // step * step


def padded(codes: np.ndarray, start: int, length: int) -> np.ndarray:
    """``codes[start : start + length]`` as int64, padded with `PAD_CODE` to `length`."""
    window = np.full(length, PAD_CODE, dtype=np.int64)
    real = codes[start : start + length]
    window[: len(real)] = real
    return window


class SongFilter:
    """Which songs a datamodule reads: only some artists, or all but some artists and genres."""

    def __init__(
        self, only_artists: list[str] | None, exclude_artists: list[str] | None, exclude_genres: list[str] | None
    ):
        self.only = {normalise_name(name) for name in only_artists or []}
        self.excluded_artists = {normalise_name(name) for name in exclude_artists or []}
        self.excluded_genres = {normalise_name(name) for name in exclude_genres or []}

    @property
    def active(self) -> bool:
        return bool(self.only or self.excluded_artists or self.excluded_genres)

    def __call__(self, metadata: Mapping) -> bool:
        artist_name, genre_names, _ = label_fields(metadata)
        artist = normalise_name(artist_name)
        genres = {normalise_name(genre) for genre in genre_names}
        if self.only and artist not in self.only:
            return False
        return artist not in self.excluded_artists and not genres & self.excluded_genres

    def __str__(self) -> str:
        labelled = {"only artists": self.only, "excluding artists": self.excluded_artists}
        labelled["excluding genres"] = self.excluded_genres
        return ", ".join(f"{label} {sorted(names)}" for label, names in labelled.items() if names)

    def count(self, shards: list[str], recorded: Mapping[str, int] | None = None) -> int:
        """How many songs of `shards` pass (reads the shards' metadata; `recorded` as `shard_samples`)."""
        return sum(1 for _, _, metadata in shard_samples(shards, (), recorded) if self(metadata))

    @staticmethod
    def vocabulary(vocabulary: Vocabulary, excluded: list[str] | None) -> Vocabulary:
        """`vocabulary` without the `excluded` names; the others keep their order (ids renumbered)."""
        dropped = {normalise_name(name) for name in excluded or []}
        names = [name for name in vocabulary.names[1:] if normalise_name(name) not in dropped]
        return Vocabulary(names, kind=vocabulary.kind)


class CodeWindows(ShardCrops):
    """Streams labelled code windows from a list of code shards; see the module docstring.

    The shard dealing, endless mode and shuffle buffer are ``ShardCrops``'s; only the items differ.
    """

    def __init__(
        self,
        shards: list[str],
        labeller: Labeller,
        sample_rate: int,
        hop_lengths: list[int],
        level: int,
        n_ctx: int,
        upper_level: bool,
        train: bool,
        shuffle_buffer: int,
        seed: int,
        windows_per_epoch: int | None = None,
        keep: Callable[[Mapping], bool] | None = None,
        recorded_songs: Mapping[str, int] | None = None,
        every: int = 1,
        items_in_split: float | None = None,
    ) -> None:
        hop = hop_lengths[level]
        super().__init__(
            shards,
            labeller,
            sample_rate,
            sample_length=n_ctx * hop,
            train=train,
            aug_shift=True,
            aug_blend=False,  # codes are of mono audio already
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            crops_per_epoch=windows_per_epoch,
            recorded_songs=recorded_songs,
            every=every,
            items_in_split=items_in_split,
        )
        self.level, self.n_ctx, self.hop_length, self.hop_lengths = level, n_ctx, hop, hop_lengths
        self.keep = keep  # which songs to read, by their metadata; None: all
        self.upper_hop_length = hop_lengths[level + 1] if upper_level and level + 1 < len(hop_lengths) else None
        grid = math.lcm(hop, self.upper_hop_length) if self.upper_hop_length else hop
        self.step = grid // hop  # tokens between two allowed window offsets

    def _crops(
        self, shards: Iterator[str], rng: np.random.Generator, selection: CropSelection
    ) -> Iterator[dict[str, torch.Tensor]]:
        for where, sample, metadata in shard_samples(shards, (CODES_FIELD,), self.recorded_songs):
            if self.keep is not None and not self.keep(metadata):
                continue
            total = metadata.get("length")
            if selection.active and isinstance(total, int) and total > 0:
                tokens = -(-total // self.hop_length)
                if selection.skip(-(-tokens // self.n_ctx)):  # as many windows as window_offsets gives
                    continue  # none of this song's windows is kept: its codes are not even read
            levels = codes_from_npz(sample[CODES_FIELD], f"{where}.{CODES_FIELD}")
            self._check_lengths(where, total, levels)
            codes = levels[self.level]
            if len(codes) == 0:
                continue
            song = self.labeller.song(metadata)
            offsets = window_offsets(len(codes), self.n_ctx, self.step, self.train and self.aug_shift, rng)
            for offset in selection.pick(offsets):
                start = int(offset) * self.hop_length  # in samples
                item = {
                    "codes": torch.from_numpy(padded(codes, int(offset), self.n_ctx)),
                    "mask": torch.arange(self.n_ctx) < len(codes) - int(offset),
                    "artist": torch.tensor(song.artist),
                    "genres": torch.from_numpy(song.genres),
                    "timing": torch.tensor([total, start, self.sample_length]),
                }
                if self.upper_hop_length is not None:
                    upper, upper_ctx = levels[self.level + 1], self.sample_length // self.upper_hop_length
                    item["upper_codes"] = torch.from_numpy(padded(upper, start // self.upper_hop_length, upper_ctx))
                if self.labeller.n_tokens > 0:
                    item["lyrics"] = torch.from_numpy(self.labeller.window(song, total, start, self.sample_length))
                yield item

    def _check_lengths(self, where: str, total: Any, levels: list[np.ndarray]) -> None:
        """A song of `total` samples has ceil(total / hop) codes at each level, as `encode` writes them."""
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise JukeboxError(f"{where}.json: 'length' must be the song's length in samples, not {total!r}")
        expected = [-(-total // hop) for hop in self.hop_lengths]
        if [len(codes) for codes in levels] != expected:
            raise JukeboxError(
                f"{where}: its json records {total} samples, which are {expected} codes per level at hops "
                f"{self.hop_lengths}, but its {CODES_FIELD} holds {[len(codes) for codes in levels]} (a damaged sample)"
            )


@register("datamodule", "code_shards")
class CodeShards(ShardDataModule):
    """Labelled windows of `n_ctx` codes at one level (plus the level above) from `encode` output."""

    def __init__(
        self,
        path: str,
        level: int,
        n_ctx: int,
        batch_size: int = 4,
        num_workers: int = 2,
        upper_level: bool = True,
        max_genres: int = 5,
        n_tokens: int = 0,
        lyrics_version: Literal["v2", "v3"] = "v2",
        windows_per_epoch: int | None = None,
        val_windows: int | None = None,
        shuffle_buffer: int = 64,
        artists: Mapping[str, int] | None = None,
        genres: Mapping[str, int] | None = None,
        only_artists: list[str] | None = None,
        exclude_artists: list[str] | None = None,
        exclude_genres: list[str] | None = None,
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.manifest = load_code_manifest(self.path)
        hops = [int(hop) for hop in self.manifest["hop_lengths"]]
        if not 0 <= level < len(hops):
            available = ", ".join(f"{index} (hop {hop})" for index, hop in enumerate(hops))
            raise JukeboxError(f"code_shards: level {level} is not in {self.path}; its levels are {available}")
        if n_ctx <= 0 or batch_size <= 0 or num_workers < 0:
            raise JukeboxError(
                f"code_shards: n_ctx ({n_ctx}) and batch_size ({batch_size}) must be positive "
                f"and num_workers ({num_workers}) not negative"
            )
        if val_windows is not None and val_windows <= 0:
            raise JukeboxError(f"code_shards: val_windows must be positive (or null: every window), not {val_windows}")
        self.level, self.n_ctx = level, n_ctx
        self.hop_length = hops[level]
        self.sample_length = n_ctx * self.hop_length  # samples a window covers
        self.sample_rate = int(self.manifest["sample_rate"])
        self.codebook_size = int(self.manifest["codebook_sizes"][level])
        self.upper_hop_length = hops[level + 1] if upper_level and level + 1 < len(hops) else None
        if self.upper_hop_length is not None and self.sample_length % self.upper_hop_length:
            raise JukeboxError(
                f"code_shards: a window of n_ctx={n_ctx} codes at level {level} of {self.path} "
                f"(hop {self.hop_length}) covers {self.sample_length} samples, not a whole number of "
                f"level-{level + 1} codes (hop {self.upper_hop_length}); use a multiple of "
                f"{math.lcm(self.hop_length, self.upper_hop_length) // self.hop_length} or upper_level=false"
            )
        self.upper_n_ctx = self.sample_length // self.upper_hop_length if self.upper_hop_length else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.upper_level, self.windows_per_epoch = upper_level, windows_per_epoch
        self.shuffle_buffer, self.pin_memory, self.seed = shuffle_buffer, pin_memory, seed
        # Fine-tuning passes the checkpoint's vocabularies; otherwise the dataset's own, less the names
        # held out (a model trained without an artist has never heard of it).
        self.artists = Vocabulary.from_dict(artists or self.manifest["artists"], kind="artist")
        self.genres = Vocabulary.from_dict(genres or self.manifest["genres"], kind="genre")
        self.song_filter = SongFilter(only_artists, exclude_artists, exclude_genres)
        if self.song_filter.active:
            self._check_filter(only_artists or [], exclude_artists or [], exclude_genres or [])
            if artists is None:
                self.artists = self.song_filter.vocabulary(self.artists, exclude_artists)
            if genres is None:
                self.genres = self.song_filter.vocabulary(self.genres, exclude_genres)
        self.labeller = Labeller(self.artists, self.genres, max_genres, n_tokens, lyrics_version)

        # Validation takes every k-th window of the split (about `val_windows`); an endless training stream
        # takes each window with a probability that spreads an epoch over all the songs. Both come from
        # these estimates (the song filter's share of a split's songs scales them).
        def windows_of(shard: Mapping[str, Any]) -> float:
            return manifest_count(shard, "samples") / self.sample_length + manifest_count(shard, "songs") / 2

        self.val_every = self.validation_every(val_windows, lambda shard: windows_of(shard) * self._share("validation"))
        self.train_windows = self.split_items("train", windows_of) * self._share("train")

    def _share(self, split: str) -> float:
        """The share of `split`'s songs that the song filter keeps (1 without a filter)."""
        songs = sum(manifest_count(shard, "songs") for shard in self.manifest["shards"].get(split, []))
        return self.kept_songs.get(split, 0) / songs if self.song_filter.active and songs else 1.0

    def _check_filter(self, only: list[str], excluded_artists: list[str], excluded_genres: list[str]) -> None:
        for kind, names in (("artist", [*only, *excluded_artists]), ("genre", excluded_genres)):
            vocabulary = self.artists if kind == "artist" else self.genres
            for name in names:
                if name not in vocabulary:
                    raise JukeboxError(f"code_shards: {kind} {name!r} is not in {self.path / MANIFEST}"
                                       f"{did_you_mean(name, vocabulary.names)}")  # fmt: skip
        kept = {split: self.song_filter.count(self.shards(split), self.recorded_songs(split))
                for split in self.manifest["shards"]}  # fmt: skip
        if not kept.get("train"):
            raise JukeboxError(f"code_shards: no training song in {self.path} is left by {self.song_filter}")
        self.kept_songs = kept

    def dataset(self, split: str) -> CodeWindows:
        train = split == "train"
        return CodeWindows(
            self.shards(split),
            self.labeller,
            self.sample_rate,
            [int(hop) for hop in self.manifest["hop_lengths"]],
            self.level,
            self.n_ctx,
            self.upper_level,
            train,
            self.shuffle_buffer,
            self.seed,
            self.windows_per_epoch if train else None,
            self.song_filter if self.song_filter.active else None,
            self.recorded_songs(split),
            every=1 if train else self.val_every,
            items_in_split=self.train_windows if train else None,
        )
