"""Property tests: recipes, lyrics and shard readers given random input.

Whatever the input, the code under test either works (and then the stated properties hold) or
fails with one of our own errors: a JukeboxError naming what is wrong and where, or the
ValueError an API documents for a bad argument. Nothing else may escape.
"""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from audio_fixtures import make_dataset, with_member
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from sampling_models import write_code_shards

from jukebox_pl import recipe_validation, recipes
from jukebox_pl.data.audio import BadAudio, decode
from jukebox_pl.data.codes import CodeShards, CodeWindows
from jukebox_pl.data.datamodule import AudioShards, ShardCrops
from jukebox_pl.data.labels import GENRE_PADDING, Labeller, Vocabulary
from jukebox_pl.data.shard_reader import MANIFEST
from jukebox_pl.data.shards import write_shards
from jukebox_pl.data.text import UNKNOWN_TOKEN, LyricsProcessor, lyric_window
from jukebox_pl.errors import JukeboxError, RecipeError

# Module-scoped folders are reused across examples on purpose: each example writes its own files.
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REAL_RECIPES = ["vqvae/small", "prior/top_tiny_demo", "sample/ancestral", "finetune/new_artist"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


# ------------------------------------------------------------------------------ recipes
# Characters that mean something to YAML, OmegaConf keys, interpolations or overrides.
SYNTAX = [*".[]{}$@~=:\\'\"#&*!|>%?,- \n\t", "${", "}", "@@", "???", "base", "a", "b", "0", "é", "🎵", "\x00"]
syntax_text = st.lists(st.sampled_from(SYNTAX), max_size=10).map("".join)
odd_text = st.one_of(syntax_text, st.text(max_size=12))
# Interpolations that resolve, miss, recurse or call OmegaConf's resolvers.
interpolation = st.sampled_from(
    ["a", "a.b", "a.c.0", "vars.rate", "x", "", "..a", "a[0]", "nope:1", "oc.env:HOME", "oc.select:a", "oc.decode:'[1'"]
).map(lambda name: "${" + name + "}")
scalar = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), odd_text, interpolation, st.just("???"))
yaml_key = st.one_of(st.sampled_from(["a", "b", "c", "x", "vars", "pipeline", "_component_"]), odd_text)
yaml_tree = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(yaml_key, inner, max_size=3), max_leaves=10
)
BASE_RECIPE = "a: {b: 1, c: [1, 2, {d: x}]}\nname: base\nvars: {rate: 100}\n"


def _dump(tree: Any) -> str:
    return yaml.safe_dump(tree, allow_unicode=True)


recipe_text = st.one_of(
    st.binary(max_size=100),
    st.text(max_size=200),
    syntax_text,
    yaml_tree.map(_dump),
    # Documents that compose: a base that exists, a packaged one, a missing one, or the file itself.
    st.tuples(
        st.sampled_from(["base.yaml", "common/trainer_cpu", "missing.yaml", "r.yaml", ["base.yaml", "r"], 3]),
        st.dictionaries(yaml_key, yaml_tree, max_size=3),
    ).map(lambda pair: _dump({**pair[1], "base": pair[0]})),
)


def _load_or_refuse(path: Path, overrides: list[str] = ()) -> recipes.Recipe | None:
    """The recipe, resolved and validated as far as it goes, or None if a RecipeError refused it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # component swaps warn about dropped arguments
            recipe = recipes.load(str(path), list(overrides))
            assert isinstance(recipe.resolved(allow_missing=True), dict)
            recipe.to_yaml()
            recipe_validation.validate(recipe)
    except RecipeError as exc:
        assert str(exc).strip()
        return None
    return recipe


@settings(FAST, max_examples=150)
@given(text=recipe_text)
def test_any_recipe_file_loads_or_is_refused_with_a_recipe_error(folder, text):
    (folder / "base.yaml").write_text(BASE_RECIPE)
    path = folder / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    _load_or_refuse(path)


override_text = st.one_of(
    st.tuples(odd_text, odd_text).map("=".join),
    odd_text.map(lambda key: "~" + key),
    st.text(max_size=20),
    st.tuples(st.sampled_from(["a", "a.b", "a.c", "a.c.2", "a.c.2.d", "a.c.5", "a.b.x", "name", "new"]), odd_text).map(
        "=".join
    ),
    st.tuples(st.sampled_from(["a", "a.b", "a.c.0", "x", "a.c.x"]), interpolation).map("=".join),
    st.sampled_from(["a", "a.b", "a.c", "a.c.0", "a.c.9", "a.c.-1", "name", "vars", "a.c.2.d", "x.y", "a.b.c"]).map(
        lambda key: "~" + key
    ),
)


@settings(FAST, max_examples=150)
@given(overrides=st.lists(override_text, max_size=4))
def test_any_overrides_apply_or_are_refused_with_a_recipe_error(folder, overrides):
    base = folder / "base.yaml"
    base.write_text(BASE_RECIPE)
    _load_or_refuse(base, overrides)


# Strings that YAML reads back as the same string: not a number, bool or null.
plain_string = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s.lower() not in {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}
)
plain_scalar = st.one_of(
    st.integers(-(2**62), 2**62).map(lambda v: (str(v), v)),
    st.booleans().map(lambda v: (str(v).lower(), v)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: (repr(v), v)),
    plain_string.map(lambda v: (v, v)),
)
identifier = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)


def _nodes(tree: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, node) for `tree` and everything below it, as plain containers."""
    found = [(path, tree)]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        found += _nodes(value, (*path, key))
    return found


def _written(name: str) -> dict:
    return OmegaConf.to_container(recipes.load(name).config, resolve=False)


@FAST
@given(name=st.sampled_from(REAL_RECIPES), data=st.data())
def test_an_override_of_a_plain_scalar_reads_back_as_that_value(name, data):
    written = _written(name)
    mappings = [path for path, node in _nodes(written) if isinstance(node, dict)]
    parent = data.draw(st.sampled_from(mappings))
    node = dict(_nodes(written))[parent]
    child = data.draw(st.one_of(st.sampled_from(sorted(node) or ["new"]), identifier))
    path = [*parent, child]
    if isinstance(node.get(child), dict) and recipes.COMPONENT_KEY not in node[child]:
        path.append(data.draw(identifier))  # reach below a plain mapping too
    text, value = data.draw(plain_scalar)
    key = ".".join(map(str, path))
    recipe = _load_or_refuse_quietly(name, [f"{key}={text}"])
    target = OmegaConf.select(recipe.config, key)
    if OmegaConf.is_dict(target):
        # Assigning a name to a component node swaps the component.
        assert isinstance(value, str) and target[recipes.COMPONENT_KEY] == value
        key = f"{key}.{recipes.COMPONENT_KEY}"
    else:
        assert target == value and type(target) is type(value)
    assert recipe.origin(key) == recipes.COMMAND_LINE


def _load_or_refuse_quietly(name: str, overrides: list[str]) -> recipes.Recipe:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return recipes.load(name, overrides)


@FAST
@given(name=st.sampled_from(REAL_RECIPES), data=st.data())
def test_deleting_a_key_removes_it_and_nothing_else(name, data):
    written = _written(name)
    path = data.draw(st.sampled_from([p for p, _ in _nodes(written) if p]))
    parent_path, leaf = path[:-1], path[-1]
    recipe = _load_or_refuse_quietly(name, ["~" + ".".join(map(str, path))])
    after = OmegaConf.to_container(recipe.config, resolve=False)
    expected = written
    parent = dict(_nodes(expected))[parent_path]
    del parent[leaf]
    assert after == expected


@FAST
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=60))
def test_a_value_read_from_a_file_is_its_text_exactly_and_survives_the_resolved_yaml(folder, text):
    (folder / "base.yaml").write_text(BASE_RECIPE)
    lyrics = folder / "lyrics.txt"
    lyrics.write_text(text, encoding="utf-8", newline="")
    recipe = recipes.load(str(folder / "base.yaml"), [f"lyrics=@{lyrics}"])
    resolved = recipe.resolved()
    assert resolved["lyrics"] == text
    written_out = folder / "resolved.yaml"
    written_out.write_text(recipe.to_yaml(), encoding="utf-8")
    assert recipes.load(str(written_out)).resolved() == resolved


def _merged(below: dict, above: dict) -> dict:
    merged = dict(below)
    for key, value in above.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both_mappings else value
    return merged


flat_values = st.one_of(st.integers(), plain_string, st.lists(st.integers(), max_size=2))
# Mappings only under keys of their own ("M..."), since a list over a mapping is refused (tested elsewhere).
layer = st.builds(
    lambda flat, nested: {**flat, **nested},
    st.dictionaries(identifier, flat_values, max_size=4),
    st.dictionaries(identifier.map("M".__add__), st.dictionaries(identifier, flat_values, max_size=3), max_size=2),
)


@FAST
@given(bottom=layer, middle=layer, top=layer)
def test_base_composition_merges_mappings_key_by_key_and_later_files_win(folder, bottom, middle, top):
    assume("base" not in {*bottom, *middle, *top})
    (folder / "bottom.yaml").write_text(_dump(bottom))
    (folder / "middle.yaml").write_text(_dump({"base": "bottom.yaml", **middle}))
    (folder / "top.yaml").write_text(_dump({"base": ["middle"], **top}))
    recipe = recipes.load(str(folder / "top.yaml"))
    assert recipe.resolved() == _merged(_merged(bottom, middle), top)
    for key in top:
        assert recipe.origin(key).endswith("top.yaml")
    for key in set(bottom) - set(middle) - set(top):
        assert recipe.origin(key).endswith("bottom.yaml")


# ------------------------------------------------------------------------------- lyrics
any_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=["Cs"]), max_size=300),
    st.lists(st.sampled_from([*string.printable, "\u0301", "\u200d", "🎵", "👩‍👩‍👧", "\x00", "\x7f", "ß"])).map(
        "".join
    ),
    st.text(max_size=20).map(lambda s: s * 500),  # long
)


@settings(max_examples=300, deadline=None)
@given(text=any_text, version=st.sampled_from(["v2", "v3"]))
def test_lyric_tokens_are_always_inside_the_vocabulary_and_spell_the_cleaned_text(text, version):
    processor = LyricsProcessor(version)
    tokens = processor.tokenize(text)
    assert all(isinstance(t, int) and 1 <= t < processor.n_vocab for t in tokens)
    assert processor.detokenize(tokens) == processor.clean(text)


@settings(max_examples=200, deadline=None)
@given(
    n_lyrics=st.integers(0, 400),
    n_tokens=st.integers(-2, 300),
    total=st.integers(1, 2**40),
    duration=st.integers(0, 2**40),
    data=st.data(),
)
def test_the_lyric_window_has_n_tokens_entries_left_padded_and_moves_forward_with_the_crop(
    n_lyrics, n_tokens, total, duration, data
):
    tokens = np.random.default_rng(data.draw(st.integers(0, 2**32))).integers(1, 80, size=n_lyrics)
    first = data.draw(st.integers(0, total - 1))
    later = data.draw(st.integers(first, total - 1))
    window, indices = lyric_window(tokens, n_tokens, total, first, duration)
    later_window, later_indices = lyric_window(tokens, n_tokens, total, later, duration)
    size = max(n_tokens, 0)
    assert window.shape == indices.shape == later_window.shape == (size,)
    padding = max(size - n_lyrics, 0)
    assert (window[:padding] == UNKNOWN_TOKEN).all() and (indices[:padding] == -1).all()
    real = indices[padding:]
    assert (np.diff(real) == 1).all() and (real >= 0).all() and (real < n_lyrics).all()
    np.testing.assert_array_equal(window[padding:], tokens[real])
    if size and padding == 0:
        assert indices[0] <= later_indices[0]  # the window never moves back as the crop moves on


@settings(max_examples=200, deadline=None)
@given(
    lyrics=st.one_of(st.none(), any_text),
    genres=st.lists(st.text(max_size=10), max_size=8),
    artist=st.one_of(st.none(), st.text(max_size=10)),
    n_tokens=st.integers(0, 64),
    max_genres=st.integers(1, 6),
    version=st.sampled_from(["v2", "v3"]),
    data=st.data(),
)
def test_the_labeller_gives_ids_in_range_and_a_full_window_for_any_song(
    lyrics, genres, artist, n_tokens, max_genres, version, data
):
    artists, genres_known = Vocabulary(["Bach", "Mozart"]), Vocabulary(["folk", "mass"], kind="genre")
    labeller = Labeller(artists, genres_known, max_genres, n_tokens, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown names warn
        song = labeller.song({"artist": artist, "genres": genres, "lyrics": lyrics})
    assert 0 <= song.artist < 3
    assert song.genres.shape == (max_genres,)
    assert ((song.genres >= 0) & (song.genres < 3) | (song.genres == GENRE_PADDING)).all()
    assert ((song.lyric_tokens >= 1) & (song.lyric_tokens < labeller.lyrics.n_vocab)).all()
    total = data.draw(st.integers(1, 10**7))
    window = labeller.window(song, total, data.draw(st.integers(0, total - 1)), data.draw(st.integers(1, 10**6)))
    assert window.shape == (n_tokens,) and window.dtype == np.int64
    assert ((window >= 0) & (window < labeller.lyrics.n_vocab)).all()


# ------------------------------------------------------------------------ shard readers
SHARD = "train-000000.tar"
IO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _flipped(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    changed = bytearray(data)
    for position, mask in flips:
        changed[position % len(changed)] ^= mask
    return bytes(changed)


byte_flips = st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1, max_size=6)


def _read(dataset, path: Path) -> tuple[list[dict], JukeboxError | None]:
    """The items `dataset` yields before it stops, and the JukeboxError it stopped with (or None)."""
    items = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged name is an unknown artist or genre
            for item in dataset:
                items.append(item)
    except JukeboxError as exc:
        assert str(path) in str(exc)  # every error names the shard
        return items, exc
    return items, None


def _read_written(path: Path, data: bytes, dataset_of: Callable[[Path], Any]) -> tuple[list[dict], JukeboxError | None]:
    """`data` written to `path`, then read by `dataset_of(path)` as `_read` reads it."""
    path.write_bytes(data)
    return _read(dataset_of(path), path)


def _check_damaged_shard(items: list[dict], error: JukeboxError | None, expected: list[dict],
                         damage: tuple[str, Any], check_item: Callable[[dict], None]) -> None:  # fmt: skip
    """Whatever a damaged shard yields is well formed; random bytes are an error; a cut shard yields what
    was written before the cut."""
    for item in items:
        check_item(item)
    if damage[0] == "random":
        assert error is not None
    if damage[0] == "truncated":
        _same_items(items, expected)


def _replacement(damage: bytes | Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    return damage if callable(damage) else lambda data: damage


def _same_items(items: list[dict], expected: list[dict]) -> None:
    assert len(items) <= len(expected)
    for item, reference in zip(items, expected, strict=False):
        assert item.keys() == reference.keys()
        for key in item:
            torch.testing.assert_close(item[key], reference[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def audio_data(tmp_path_factory):
    """(folder of a valid one-shard dataset, its datamodule, the items of its shard)."""
    root = tmp_path_factory.mktemp("audio_shards")
    metadata = make_dataset(root, n_songs=3, seconds=0.3, sample_rate=8000)
    options = {"sample_rate": 8000, "shard_size": "1GB", "min_seconds": 0.1, "validation_fraction": 0.0}
    write_shards(root / "audio", metadata, root / "shards", **options)
    datamodule = AudioShards(str(root / "shards"), sample_length=1024, num_workers=0, n_tokens=8)
    return root / "shards", datamodule, list(_audio_crops(datamodule, root / "shards" / SHARD))


def _audio_crops(datamodule: AudioShards, path: Path) -> ShardCrops:
    return ShardCrops([str(path)], datamodule.labeller, 8000, 1024, False, False, False, 0, 0)


def _check_audio_item(item: dict, datamodule: AudioShards) -> None:
    assert item["audio"].shape == (1, 1024) and torch.isfinite(item["audio"]).all()
    assert 0 <= int(item["artist"]) < len(datamodule.artists)
    genres = item["genres"]
    assert ((genres >= 0) & (genres < len(datamodule.genres)) | (genres == GENRE_PADDING)).all()
    assert item["lyrics"].shape == (8,) and ((item["lyrics"] >= 0) & (item["lyrics"] < 80)).all()
    total, offset, length = item["timing"].tolist()
    assert 0 <= offset < max(total, 1) and length == 1024


shard_damage = st.one_of(
    st.binary(max_size=2048).map(lambda data: ("random", data)),
    st.floats(0, 1, exclude_max=True).map(lambda cut: ("truncated", cut)),
    byte_flips.map(lambda flips: ("flipped", flips)),
)


def _damaged(shard: bytes, damage: tuple[str, Any]) -> bytes:
    kind, how = damage
    if kind == "random":
        return how
    if kind == "truncated":
        return shard[: int(len(shard) * how)]
    return _flipped(shard, how)


@IO
@given(damage=shard_damage)
def test_a_damaged_audio_shard_yields_true_crops_then_a_jukebox_error_naming_it(audio_data, folder, damage):
    directory, datamodule, expected = audio_data
    damaged = _damaged((directory / SHARD).read_bytes(), damage)
    items, error = _read_written(folder / "damaged.tar", damaged, lambda path: _audio_crops(datamodule, path))
    _check_damaged_shard(items, error, expected, damage, lambda item: _check_audio_item(item, datamodule))


@IO
@given(audio=st.one_of(st.binary(max_size=512), byte_flips.map(lambda flips: lambda data: _flipped(data, flips))))
def test_a_damaged_flac_member_is_a_jukebox_error_naming_shard_and_member(audio_data, folder, audio):
    directory, datamodule, expected = audio_data
    shard, member = with_member((directory / SHARD).read_bytes(), ".flac", _replacement(audio))
    items, error = _read_written(folder / "member.tar", shard, lambda path: _audio_crops(datamodule, path))
    _same_items(items, expected)  # the crops of the songs before the damaged one
    if error is None:  # flips in FLAC metadata that no decoder reads change nothing
        assert len(items) == len(expected)
    else:
        assert member in str(error)


@IO
@given(metadata=st.one_of(json_value, st.dictionaries(st.sampled_from(["artist", "genres", "lyrics"]), json_value)))
def test_any_json_member_gives_well_formed_crops_or_a_jukebox_error_naming_it(audio_data, folder, metadata):
    directory, datamodule, _ = audio_data
    shard, member = with_member((directory / SHARD).read_bytes(), ".json", lambda data: json.dumps(metadata).encode())
    path = folder / "metadata.tar"
    path.write_bytes(shard)
    items, error = _read(_audio_crops(datamodule, path), path)
    assert error is None or member in str(error)
    for item in items:
        _check_audio_item(item, datamodule)


def _manifest_damage(manifest: dict):
    text = json.dumps(manifest).encode()
    return st.one_of(
        st.binary(max_size=256),
        st.floats(0, 1, exclude_max=True).map(lambda cut: text[: int(len(text) * cut)]),
        byte_flips.map(lambda flips: _flipped(text, flips)),
        json_value.map(lambda value: json.dumps(value).encode()),
        st.tuples(st.sampled_from(sorted(manifest)), json_value).map(
            lambda field: json.dumps({**manifest, field[0]: field[1]}).encode()
        ),
    )


@pytest.fixture(scope="module")
def audio_manifest(audio_data) -> dict:
    return json.loads((audio_data[0] / MANIFEST).read_text())


@IO
@given(data=st.data())
def test_a_damaged_audio_manifest_is_read_or_refused_with_a_jukebox_error_naming_it(
    audio_data, audio_manifest, folder, data
):
    directory = folder / "manifest"
    directory.mkdir(exist_ok=True)
    (directory / SHARD).write_bytes((audio_data[0] / SHARD).read_bytes())
    (directory / MANIFEST).write_bytes(data.draw(_manifest_damage(audio_manifest)))
    try:
        datamodule = AudioShards(str(directory), sample_length=1024, num_workers=0, n_tokens=8)
    except JukeboxError as exc:
        assert str(directory / MANIFEST) in str(exc)
        return
    for split in datamodule.manifest["shards"]:
        for shard in datamodule.shards(split):
            items, _ = _read(datamodule.dataset(split), Path(shard))
            for item in items:
                _check_audio_item(item, datamodule)


@settings(max_examples=80, deadline=None)
@given(data=st.one_of(st.binary(max_size=1024), st.binary(min_size=4, max_size=64).map(b"fLaC".__add__)))
def test_random_bytes_decode_to_finite_audio_or_a_bad_audio_error_naming_them(data):
    try:
        samples, rate = decode(data, "song.flac in shard.tar")
    except BadAudio as exc:
        assert str(exc).startswith("song.flac in shard.tar: ")
        return
    assert samples.ndim == 2 and len(samples) > 0 and rate > 0 and np.isfinite(samples).all()


@pytest.fixture(scope="module")
def code_data(tmp_path_factory):
    """(folder of a valid one-shard code dataset, its datamodule, the windows of its shard)."""
    songs = [
        {"artist": "Alice Cooper", "genres": ["rock"], "lyrics": "School's out", "seconds": 0.05},
        {"artist": "Bob Marley", "genres": ["reggae", "folk"], "seconds": 0.03},
    ]
    directory = write_code_shards(tmp_path_factory.mktemp("code_shards") / "codes", {"train": songs})
    datamodule = CodeShards(str(directory), level=0, n_ctx=32, num_workers=0, n_tokens=8)
    return directory, datamodule, list(_code_windows(datamodule, directory / SHARD))


def _code_windows(datamodule: CodeShards, path: Path) -> CodeWindows:
    return CodeWindows([str(path)], datamodule.labeller, datamodule.sample_rate, [4, 16], 0, 32, True, False, 0, 0)


def _check_code_item(item: dict) -> None:
    assert item["codes"].shape == item["mask"].shape == (32,) and item["upper_codes"].shape == (8,)
    assert ((item["codes"] >= 0) & (item["codes"] < 256)).all() and item["lyrics"].shape == (8,)


@IO
@given(damage=shard_damage)
def test_a_damaged_code_shard_yields_true_windows_then_a_jukebox_error_naming_it(code_data, folder, damage):
    directory, datamodule, expected = code_data
    damaged = _damaged((directory / SHARD).read_bytes(), damage)
    items, error = _read_written(folder / "damaged_codes.tar", damaged, lambda path: _code_windows(datamodule, path))
    _check_damaged_shard(items, error, expected, damage, _check_code_item)


@IO
@given(codes=st.one_of(st.binary(max_size=512), byte_flips.map(lambda flips: lambda data: _flipped(data, flips))))
def test_a_damaged_codes_member_is_a_jukebox_error_naming_shard_and_member(code_data, folder, codes):
    directory, datamodule, expected = code_data
    shard, member = with_member((directory / SHARD).read_bytes(), ".codes.npz", _replacement(codes))
    items, error = _read_written(folder / "codes_member.tar", shard, lambda path: _code_windows(datamodule, path))
    _same_items(items, expected)
    if error is None:  # flips that zip and numpy do not read change nothing
        assert len(items) == len(expected)
    else:  # names the member, or the sample when its codes no longer match its json
        assert member in str(error) or member.removesuffix(".codes.npz") + ": its json" in str(error)


@IO
@given(metadata=st.dictionaries(st.sampled_from(["artist", "genres", "lyrics", "length"]), json_value))
def test_any_code_metadata_gives_well_formed_windows_or_a_jukebox_error_naming_it(code_data, folder, metadata):
    directory, datamodule, _ = code_data
    shard, member = with_member(
        (directory / SHARD).read_bytes(), ".json", lambda data: json.dumps({**json.loads(data), **metadata}).encode()
    )
    path = folder / "code_metadata.tar"
    path.write_bytes(shard)
    items, error = _read(_code_windows(datamodule, path), path)
    assert error is None or member.split(".")[0] in str(error)  # names the sample: json and codes may disagree
    for item in items:
        _check_code_item(item)


@IO
@given(data=st.data())
def test_a_damaged_code_manifest_is_read_or_refused_with_a_jukebox_error_naming_it(code_data, folder, data):
    directory = folder / "code_manifest"
    directory.mkdir(exist_ok=True)
    (directory / SHARD).write_bytes((code_data[0] / SHARD).read_bytes())
    manifest = json.loads((code_data[0] / MANIFEST).read_text())
    (directory / MANIFEST).write_bytes(data.draw(_manifest_damage(manifest)))
    try:
        datamodule = CodeShards(str(directory), level=0, n_ctx=32, num_workers=0, n_tokens=8)
    except JukeboxError as exc:
        assert str(directory) in str(exc)  # the manifest, or the dataset whose hops do not fit the arguments
        return
    for split in datamodule.manifest["shards"]:
        for shard in datamodule.shards(split):
            items, _ = _read(datamodule.dataset(split), Path(shard))
            for item in items:
                _check_code_item(item)
