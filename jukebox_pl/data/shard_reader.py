"""Read the audio shards that ``jukebox-pl data shards`` writes: the manifest, the samples, one song.

The one shard reader of jukebox-pl: every sample is checked as it is read (its metadata, the
number of songs the manifest records for its shard), so that a damaged shard is one clear error
naming the file. ``dataset.json`` (format jukebox-pl-shards/1) lists the shards of each split with
their songs, the artist and genre vocabularies, and the counts.

Example::

    manifest = load_manifest("data/demo/shards")
    song = find_song("data/demo/shards", split="validation", index=0)  # song.audio: (frames, channels)
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from jukebox_pl.data.audio import decode
from jukebox_pl.data.labels import Vocabulary, label_fields
from jukebox_pl.errors import JukeboxError, did_you_mean

MANIFEST = "dataset.json"
SPLITS = ("train", "validation")
FORMAT = "jukebox-pl-shards/1"


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise JukeboxError(f"{path} not found: build the dataset with `jukebox-pl data shards` first")
    manifest = read_json_object(path)
    if manifest.get("format") != FORMAT:
        raise JukeboxError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    check_manifest(manifest, path)
    return manifest


def split_samples(dataset_dir: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """The raw samples (``__key__``, ``flac`` bytes, ``json`` bytes) of one split, shard by shard, read and
    checked as `shard_samples` reads them."""
    data = Path(dataset_dir)
    manifest = load_manifest(data)
    shards = manifest["shards"].get(split)
    if shards is None:
        raise JukeboxError(f"{data}: no split '{split}'{did_you_mean(split, SPLITS)}; splits: {', '.join(SPLITS)}")
    if not shards:
        counts = ", ".join(f"{name} {manifest['counts'].get(name, 0)}" for name in SPLITS)
        raise JukeboxError(f"{data}: the '{split}' split has no songs (songs per split: {counts})")
    urls = [str(data / shard["name"]) for shard in shards]
    recorded = {url: shard.get("songs") for url, shard in zip(urls, shards, strict=True)}
    for _, sample, _ in shard_samples(urls, ("flac",), recorded):
        yield sample


def shard_samples(
    shards: Iterable[str], fields: Sequence[str], recorded: Mapping[str, Any] | None = None
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, sample, metadata) for each sample of `shards`, in order; `where` is "SHARD: KEY".

    Every sample must hold `fields` and a ``json`` object whose labels have the right types
    (`label_fields`). A file that is not a readable tar or holds no sample, and a sample that
    breaks these rules (as a truncated or damaged shard does), is a JukeboxError naming the
    shard and the member, raised when the reader reaches it. `recorded` maps a shard to the
    number of songs its manifest records: a shard read to its end that holds another number
    (one cut short where a member ends reads as a whole, shorter tar) is an error too.
    """
    for url in shards:
        samples = wds.tarfile_to_samples()([{"url": url}])
        count = 0
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - tarfile, I/O and webdataset errors come in many types
                # webdataset appends the stream and the url to an exception's args: the first arg is the message.
                message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.args[0] if exc.args else ""
                raise JukeboxError(f"{url}: not a readable shard ({type(exc).__name__}: {message})") from None
            count += 1
            where = f"{url}: {sample['__key__']}"
            missing = [name for name in ("json", *fields) if name not in sample]
            if missing:
                raise JukeboxError(f"{where}: no {' or '.join(missing)} member (a truncated or damaged shard)")
            yield where, sample, _metadata(where, sample["json"])
        if count == 0:
            raise JukeboxError(f"{url}: holds no samples (an empty or damaged shard)")
        expected = (recorded or {}).get(url)
        if isinstance(expected, int) and count != expected:
            raise JukeboxError(
                f"{url}: holds {count} song{'s' if count != 1 else ''}, but its dataset's {MANIFEST} records "
                f"{expected} (a truncated or damaged shard: build or copy it again)"
            )


def _metadata(where: str, data: bytes) -> dict[str, Any]:
    metadata = read_json_object(f"{where}.json", data)
    try:
        label_fields(metadata)
    except ValueError as exc:
        raise JukeboxError(f"{where}.json: {exc}") from None
    return metadata


def artist_labels(dataset_dir: str | Path) -> list[tuple[str, list[str]]]:
    """Each artist of a dataset with the genres of their first song, the artists with most songs first.

    Only the songs' JSON members are read: a tar reader steps over the audio without reading it.
    """
    data = Path(dataset_dir)
    manifest = load_manifest(data)
    songs: Counter[str] = Counter()
    genres: dict[str, list[str]] = {}
    for shard in (shard for listed in manifest["shards"].values() for shard in listed):
        try:
            with tarfile.open(data / shard["name"]) as archive:
                for member in archive:
                    if member.name.endswith(".json"):
                        where = f"{data / shard['name']}: {member.name}"
                        artist, song_genres, _ = label_fields(_metadata(where, archive.extractfile(member).read()))
                        songs[artist] += 1
                        genres.setdefault(artist, song_genres or ["unknown"])
        except (tarfile.TarError, OSError) as exc:
            raise JukeboxError(f"{data / shard['name']}: not a readable shard ({exc})") from None
    return [(artist, genres[artist]) for artist, _ in songs.most_common()]


@dataclass(frozen=True)
class ShardSong:
    """One song read back from a dataset: its key, its metadata and its audio as written."""

    key: str
    metadata: dict[str, Any]  # artist, genres, lyrics, title, ... (the shard's KEY.json)
    audio: np.ndarray  # (frames, channels) float32
    sample_rate: int


def _matching_songs(dataset_dir: str | Path, split: str, artist: str | None, key: str | None) -> list[dict[str, Any]]:
    """The samples of `split` by `artist` and with key `key` (any, when None), in key order; none is an error."""
    matches: list[dict[str, Any]] = []
    artists = set()
    for sample in split_samples(dataset_dir, split):
        metadata = json.loads(sample["json"])
        artists.add(metadata.get("artist", ""))
        if (key is None or sample["__key__"] == key) and (artist is None or metadata.get("artist") == artist):
            matches.append({**sample, "metadata": metadata})
    matches.sort(key=lambda sample: sample["__key__"])
    if not matches:
        wanted = f"key {key!r}" if key is not None else f"artist {artist!r}"
        hint = did_you_mean(artist, artists) if key is None and artist is not None else ""
        raise JukeboxError(f"{dataset_dir}: no song with {wanted} in the '{split}' split{hint}")
    return matches


def count_songs(dataset_dir: str | Path, split: str = "validation", artist: str | None = None) -> int:
    """How many songs of `split` are by `artist` (any, when None): the indices `find_song` accepts."""
    return len(_matching_songs(dataset_dir, split, artist, None))


def find_song(
    dataset_dir: str | Path,
    split: str = "validation",
    artist: str | None = None,
    key: str | None = None,
    index: int = 0,
) -> ShardSong:
    """The `index`-th song of `split` (0: the first), in key order, by `artist` (any, when None) or with key `key`."""
    matches = _matching_songs(dataset_dir, split, artist, key)
    if not 0 <= index < len(matches):
        raise JukeboxError(f"{dataset_dir}: song index {index} asked for, but the '{split}' split holds "
                           f"{len(matches)} such song{'s' if len(matches) != 1 else ''}")  # fmt: skip
    found = matches[index]
    audio, rate = decode(found["flac"])
    return ShardSong(found["__key__"], found["metadata"], audio, rate)


def read_json_object(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """The JSON object in the file `path` (or in `data`, read from it); anything else is a JukeboxError naming it."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8") if data is None else data)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8
        raise JukeboxError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise JukeboxError(f"{path}: must hold a JSON object, not {type(value).__name__}")
    return value


def check_manifest(manifest: Mapping[str, Any], path: Path, integer_lists: tuple[str, ...] = ()) -> None:
    """Refuse a manifest whose fields the readers rely on are missing or of the wrong type.

    Checked: ``sample_rate``, ``shards`` ({split: [{name: ...}]}), the ``artists`` and ``genres``
    vocabularies, and each of `integer_lists` (a non-empty list of positive integers).
    """
    problems = []
    if not _positive_int(manifest.get("sample_rate")):
        problems.append(f"sample_rate must be a positive integer, not {manifest.get('sample_rate')!r}")
    shards = manifest.get("shards")
    if not isinstance(shards, dict) or not all(
        isinstance(listed, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in listed)
        for listed in shards.values()
    ):
        problems.append("shards must map each split to a list of {name: SHARD_FILE, ...}")
    for kind in ("artists", "genres"):
        try:
            Vocabulary.from_dict(manifest.get(kind), kind=kind[:-1])
        except ValueError as exc:
            problems.append(str(exc))
    for name in integer_lists:
        value = manifest.get(name)
        if not isinstance(value, list) or not value or not all(_positive_int(v) for v in value):
            problems.append(f"{name} must be a list of positive integers, not {value!r}")
    if problems:
        raise JukeboxError(f"{path}: a damaged manifest: " + "; ".join(problems))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
