"""The ``audio_shards`` DataModule: labelled random crops streamed from webdataset shards.

Per item: ``audio`` (1, sample_length) float32 mono, ``artist`` (), ``genres``
(max_genres,) padded with -1, ``timing`` (3,) = (song length, crop offset, crop length) in
samples, and ``lyrics`` (n_tokens,) lyric window tokens.

Shards are dealt out to (rank, worker) slots so that no two ranks or workers read the
same shard in an epoch. Each song yields one crop per ``sample_length`` of audio (so long
songs weigh more, as in Jukebox), shifted at random by up to half a crop (``aug_shift``);
stereo is blended to mono with a random mix (``aug_blend``), or averaged for validation.
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jukebox_pl.data.audio import decode, mono, resample
from jukebox_pl.data.labels import Labeller, Vocabulary
from jukebox_pl.data.shard_reader import load_manifest, shard_samples
from jukebox_pl.errors import JukeboxError
from jukebox_pl.registry import register


def assign_shards(
    shards: list[str], rank: int, world_size: int, worker: int, num_workers: int, epoch: int, seed: int, shuffle: bool
) -> list[str]:
    """The shards one (rank, worker) slot reads in `epoch`: disjoint slots that cover all.

    Unshuffled (validation) splits with fewer shards than ranks are read whole by every rank,
    split among its workers: each rank then scores the same crops, so the mean over ranks is the
    split's mean, and no rank is left without batches while the others wait for it at the end of
    validation.

    Written here rather than taken from webdataset: its ``split_by_node`` and ``split_by_worker``
    deal a list in a fixed order (no new order per epoch) and would leave a rank without validation
    shards; its ``ResampledShards`` draws shards with replacement, so ranks would read overlapping
    data within an epoch.
    """
    order = list(shards)
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    elif len(order) < world_size:
        return order[worker::num_workers]
    slot, slots = rank * num_workers + worker, world_size * num_workers
    return order[slot::slots]


def _check_decoded(where: str, metadata: Mapping[str, Any], audio: np.ndarray, rate: int) -> None:
    """Decoded audio against the rate and length its json records (`write_shards` records both): a
    damaged FLAC header can decode, at a wrong rate or length."""
    recorded = metadata.get("samples"), metadata.get("sample_rate")
    if all(isinstance(value, int) for value in recorded) and recorded != (len(audio), rate):
        raise JukeboxError(
            f"{where}.flac: decodes to {len(audio)} frames at {rate} Hz, but its json records {recorded[0]} "
            f"frames at {recorded[1]} Hz (a damaged member)"
        )


def crop_offsets(song_length: int, sample_length: int, shift: bool, rng: np.random.Generator) -> np.ndarray:
    """Start offsets of a song's crops: one per `sample_length`, shifted by up to half a crop.

    Crops stay inside the song; a song shorter than a crop gives one crop at 0 (padded).
    """
    count = max(1, song_length // sample_length)
    last = max(song_length - sample_length, 0)
    offsets = np.arange(count, dtype=np.int64) * sample_length
    if shift:
        half = sample_length // 2
        offsets = offsets + rng.integers(-half, half, size=count, endpoint=False) if half else offsets
    return np.clip(offsets, 0, last)


def to_mono(audio: np.ndarray, blend: bool, rng: np.random.Generator) -> np.ndarray:
    """(frames, channels) -> (frames,): a random left/right mix (Jukebox's aug_blend) or the mean."""
    if audio.shape[1] == 1:
        return audio[:, 0]
    if audio.shape[1] == 2 and blend:
        mix = np.float32(rng.random())
        return mix * audio[:, 0] + (1 - mix) * audio[:, 1]
    return mono(audio)


@dataclass(eq=False)
class ShardCrops(IterableDataset):
    """Streams labelled crops from a list of shards; see the module docstring."""

    shards: list[str]
    labeller: Labeller
    sample_rate: int
    sample_length: int
    train: bool
    aug_shift: bool
    aug_blend: bool
    shuffle_buffer: int
    seed: int
    crops_per_epoch: int | None = None  # per rank; None: one pass over the shards
    recorded_songs: Mapping[str, int] | None = None  # shard -> songs its manifest records (checked as read)
    every: int = 1  # keep every k-th crop of the (unshuffled) stream: a validation set spread over it
    items_in_split: float | None = None  # the crops of all `shards`, estimated (thins an endless stream)
    epoch: int = field(default=0, init=False)

    def _slot(self) -> tuple[int, int, int, int]:
        rank, world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world_size, worker, num_workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rank, world_size, worker, num_workers = self._slot()
        epoch = self.epoch if self.train else 0
        rng = np.random.default_rng([self.seed, epoch, rank, worker])
        if self.crops_per_epoch is None:
            shards = assign_shards(self.shards, rank, world_size, worker, num_workers, epoch, self.seed, self.train)
            if not shards:
                warnings.warn(
                    f"data rank {rank} worker {worker} has no shard to read: {len(self.shards)} shards for "
                    f"{world_size * num_workers} readers; write smaller shards or use fewer workers",
                    stacklevel=2,
                )
            crops = self._crops(iter(shards), rng, CropSelection(every=self.every))
        else:
            # An epoch shorter than the data takes each crop with the probability that makes one pass over
            # all the reader's shards about an epoch long: every epoch then draws from every song.
            fraction = 1.0
            if self.items_in_split:
                fraction = min(1.0, self.crops_per_epoch * world_size / self.items_in_split)
            limit = -(-self.crops_per_epoch // num_workers)
            stream = self._endless(rank, world_size, worker, num_workers, epoch)
            crops = itertools.islice(self._crops(stream, rng, CropSelection(fraction=fraction, rng=rng)), limit)
        if self.train and self.shuffle_buffer > 1:
            shuffle = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=random.Random(int(rng.integers(2**62))))
            yield from shuffle(crops)
        else:
            yield from crops

    def _endless(self, rank: int, world_size: int, worker: int, num_workers: int, epoch: int) -> Iterator[str]:
        """This slot's shards of `epoch`, over and over, in a new order each time round. The slot keeps its
        shards for the whole epoch, so that the ranks read disjoint data even when an epoch goes round
        more than once."""
        shards = assign_shards(self.shards, rank, world_size, worker, num_workers, epoch * 1_000, self.seed, True)
        cycle = 0
        while shards:
            yield from shards
            cycle += 1
            random.Random(self.seed * 1_000_003 + epoch * 1_000 + cycle).shuffle(shards)

    def _crops(
        self, shards: Iterator[str], rng: np.random.Generator, selection: CropSelection
    ) -> Iterator[dict[str, torch.Tensor]]:
        for where, sample, metadata in shard_samples(shards, ("flac",), self.recorded_songs):
            length = _length_at(metadata, self.sample_rate) if selection.active else None
            if length is not None and selection.skip(max(1, length // self.sample_length)):
                continue  # none of this song's crops is kept: not even decoded
            audio, rate = decode(sample["flac"], f"{where}.flac")
            _check_decoded(where, metadata, audio, rate)
            if rate != self.sample_rate:
                audio = resample(audio, rate, self.sample_rate)
            mono = to_mono(audio, self.train and self.aug_blend, rng)
            song = self.labeller.song(metadata)
            total = len(mono)
            offsets = crop_offsets(total, self.sample_length, self.train and self.aug_shift, rng)
            for offset in selection.pick(offsets):
                crop = mono[offset : offset + self.sample_length]
                if len(crop) < self.sample_length:
                    crop = np.pad(crop, (0, self.sample_length - len(crop)))
                window = self.labeller.window(song, total, int(offset), self.sample_length)
                yield {
                    "audio": torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None],  # (1, T)
                    "artist": torch.tensor(song.artist),
                    "genres": torch.from_numpy(song.genres),
                    "timing": torch.tensor([total, int(offset), self.sample_length]),
                    "lyrics": torch.from_numpy(window),
                }


class CropSelection:
    """Which crops of each song a reader keeps, decided song by song as the stream comes.

    - ``every`` k > 1 (validation): every k-th crop of the stream, counted across songs: a set spread
      evenly over all the songs, in proportion to their lengths, and the same on every pass.
    - ``fraction`` p < 1 (an endless training stream): each crop with probability p, so that an epoch
      shorter than the data still draws from every song (Jukebox samples a song at random, weighted by
      its length, for every crop), rather than from the few songs at the start of the stream.

    `skip(count)` is asked before a song is decoded, with the crops its metadata promises: True when
    none would be kept. `pick(offsets)` then gives the crop offsets kept.
    """

    def __init__(self, every: int = 1, fraction: float = 1.0, rng: np.random.Generator | None = None) -> None:
        self.every, self.fraction, self.rng = every, fraction, rng
        self.seen = 0  # crops of the stream so far (every)
        self._drawn: int | None = None  # how many of the next song's crops to keep (fraction)

    @property
    def active(self) -> bool:
        return self.every > 1 or self.fraction < 1.0

    def skip(self, count: int) -> bool:
        if self.every > 1:
            if (-self.seen) % self.every < count:
                return False
            self.seen += count
            return True
        if self.fraction < 1.0 and self.rng is not None:
            self._drawn = int(self.rng.binomial(count, self.fraction))
            return self._drawn == 0
        return False

    def pick(self, offsets: np.ndarray) -> np.ndarray:
        if self.every > 1:
            first = (-self.seen) % self.every
            self.seen += len(offsets)
            return offsets[first :: self.every]
        if self.fraction < 1.0 and self.rng is not None:
            drawn = self._drawn if self._drawn is not None else int(self.rng.binomial(len(offsets), self.fraction))
            self._drawn = None
            return offsets[np.sort(self.rng.choice(len(offsets), min(drawn, len(offsets)), replace=False))]
        return offsets


def manifest_count(entry: Mapping[str, Any], key: str) -> float:
    """A count (``songs``, ``samples``) from a manifest's shard entry; 0 where it is absent."""
    value = entry.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _length_at(metadata: Mapping[str, Any], sample_rate: int) -> int | None:
    """A song's length in samples at `sample_rate`, from the samples and rate its json records (None where it
    records neither); used only to pass over songs without decoding them, so rounding does not matter."""
    samples, rate = metadata.get("samples"), metadata.get("sample_rate")
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in (samples, rate)):
        return None
    return math.ceil(samples * sample_rate / rate)


class _EpochLoader(DataLoader):
    """Advances the dataset's epoch before each pass, so shard order and crops change.

    With a trainer attached, the data's epoch follows the trainer's (epoch e reads pass e + 1). `resume`
    (``{"epoch", "batches"}``, from the datamodule's state in a checkpoint) makes the first pass of that
    epoch skip the batches trained before, so that training goes on with the batches an uninterrupted
    run would have taken next.
    """

    def __init__(
        self,
        *args: Any,
        owner: pl.LightningDataModule | None = None,
        resume: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._resume = resume

    def __iter__(self):  # type: ignore[override]
        trainer: pl.Trainer | None = getattr(self._owner, "trainer", None)
        epoch = trainer.current_epoch if trainer is not None else self.dataset.epoch  # type: ignore[attr-defined]
        self.dataset.epoch = epoch + 1  # type: ignore[attr-defined]
        skip = 0
        if self._resume is not None and trainer is not None and self._resume["epoch"] == trainer.current_epoch:
            skip = self._resume["batches"]
        self._resume = None
        batches = super().__iter__()
        return itertools.islice(batches, skip, None) if skip else batches


class ShardDataModule(pl.LightningDataModule):
    """What the shard-streaming datamodules share: a manifest's shard lists and epoch-aware loaders.

    Subclasses set `path`, `manifest`, `batch_size`, `num_workers`, `pin_memory` and build
    their split's `IterableDataset` in `dataset(split)`.
    """

    path: Path
    manifest: Mapping
    batch_size: int
    num_workers: int
    pin_memory: bool
    _position: dict[str, int] | None = None  # the epoch and the training batches handed out in it
    _resume: dict[str, int] | None = None  # a checkpoint's position, for the next training loader

    def state_dict(self) -> dict[str, int]:
        """Where training stands in its epoch (``{"epoch", "batches"}``); Lightning keeps it in every checkpoint."""
        return dict(self._position) if self._position else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._position = dict(state) if state else None
        self._resume = dict(state) if state else None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Counts the training batches of the epoch as they reach the training step (validation's are not)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if self._position is None or self._position["epoch"] != trainer.current_epoch:
                self._position = {"epoch": int(trainer.current_epoch), "batches": 0}
            self._position["batches"] += 1
        return batch

    def shards(self, split: str) -> list[str]:
        if split not in self.manifest["shards"]:
            raise JukeboxError(f"{self.path} has no split {split!r}; it has {sorted(self.manifest['shards'])}")
        return [str(self.path / shard["name"]) for shard in self.manifest["shards"][split]]

    def recorded_songs(self, split: str) -> dict[str, int]:
        """Each shard of `split` and the number of songs the manifest records for it (where it does)."""
        listed = self.manifest["shards"].get(split, [])
        return {
            str(self.path / shard["name"]): shard["songs"] for shard in listed if isinstance(shard.get("songs"), int)
        }

    def dataset(self, split: str) -> IterableDataset:
        raise NotImplementedError

    def split_items(self, split: str, items_of: Callable[[Mapping[str, Any]], float]) -> float:
        """The crops or windows of `split`, estimated shard by shard by `items_of(manifest entry)`."""
        return sum(items_of(shard) for shard in self.manifest["shards"].get(split, []))

    def validation_every(self, wanted: int | None, items_of: Callable[[Mapping[str, Any]], float]) -> int:
        """k such that every k-th item of the validation split makes about `wanted` items (1: all of them)."""
        return 1 if wanted is None else max(1, int(self.split_items("validation", items_of) // wanted))

    def _loader(self, split: str) -> DataLoader:
        resume = None
        if split == "train":
            resume, self._resume = self._resume, None
        return _EpochLoader(
            self.dataset(split),
            owner=self if split == "train" else None,
            resume=resume,
            # The loader's worker seeds come from its own generator, not from torch's global one, which
            # then serves the model alone, so that a resumed run draws what the uninterrupted one would.
            generator=torch.Generator().manual_seed(int(getattr(self, "seed", 0))),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,  # workers receive the new epoch each pass
        )

    def train_dataloader(self) -> DataLoader:
        ranks = getattr(getattr(self, "trainer", None), "world_size", 1)
        shards = self.manifest["shards"].get("train", [])
        if len(shards) < ranks:
            # A rank without shards would end its epoch at once and leave the others waiting for its gradients.
            raise JukeboxError(
                f"{self.path}: the training split has {len(shards)} shard(s) for {ranks} ranks, and every rank reads "
                f"shards of its own: write at least {ranks} (jukebox-pl data shards --shard-size, encode shard_size)"
            )
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")


@register("datamodule", "audio_shards")
class AudioShards(ShardDataModule):
    """Labelled random crops of songs streamed from `jukebox-pl data shards` output."""

    def __init__(
        self,
        path: str,
        sample_length: int = 262144,
        sample_rate: int | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        aug_shift: bool = True,
        aug_blend: bool = True,
        max_genres: int = 5,
        n_tokens: int = 0,
        lyrics_version: Literal["v2", "v3"] = "v2",
        shuffle_buffer: int = 64,
        crops_per_epoch: int | None = None,
        val_crops: int | None = None,
        artists: Mapping[str, int] | None = None,
        genres: Mapping[str, int] | None = None,
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if sample_length <= 0 or batch_size <= 0 or num_workers < 0:
            raise ValueError("sample_length and batch_size must be positive and num_workers not negative")
        if val_crops is not None and val_crops <= 0:
            raise ValueError(f"val_crops must be positive (or null: every crop), not {val_crops}")
        self.path = Path(path)
        self.manifest = load_manifest(self.path)
        self.sample_rate = sample_rate or int(self.manifest["sample_rate"])
        self.sample_length, self.batch_size, self.num_workers = sample_length, batch_size, num_workers
        self.aug_shift, self.aug_blend = aug_shift, aug_blend
        self.shuffle_buffer, self.crops_per_epoch, self.seed = shuffle_buffer, crops_per_epoch, seed
        self.pin_memory = pin_memory
        # Validation takes every k-th crop of the split: about `val_crops` of them, from all its songs.
        ratio = self.sample_rate / int(self.manifest["sample_rate"])

        def crops_of(shard: Mapping[str, Any]) -> float:
            return manifest_count(shard, "samples") * ratio / sample_length + manifest_count(shard, "songs") / 2

        self.val_every = self.validation_every(val_crops, crops_of)
        self.train_crops = self.split_items("train", crops_of)
        # Fine-tuning passes the checkpoint's vocabularies; otherwise the dataset's own.
        self.artists = Vocabulary.from_dict(artists or self.manifest["artists"], kind="artist")
        self.genres = Vocabulary.from_dict(genres or self.manifest["genres"], kind="genre")
        self.labeller = Labeller(self.artists, self.genres, max_genres, n_tokens, lyrics_version)

    def dataset(self, split: str) -> ShardCrops:
        train = split == "train"
        return ShardCrops(
            self.shards(split),
            self.labeller,
            self.sample_rate,
            self.sample_length,
            train,
            self.aug_shift,
            self.aug_blend,
            self.shuffle_buffer,
            self.seed,
            self.crops_per_epoch if train else None,
            self.recorded_songs(split),
            every=1 if train else self.val_every,
            items_in_split=self.train_crops if train else None,
        )
