"""Samplers end to end on tiny random models: modes, windows, seeds, resuming, alignment, the command."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from launch import run_processes
from safetensors.torch import load_file
from sampling_models import SAMPLE_RATE, TOP_PREFIX, make_models

from jukebox_pl import recipes
from jukebox_pl.cli import main
from jukebox_pl.data.text import LyricsProcessor, lyric_window
from jukebox_pl.errors import JukeboxError
from jukebox_pl.modules.sampling import filter_logits, sample_token
from jukebox_pl.pipelines.base import run_recipe
from jukebox_pl.registry import build
from jukebox_pl.samplers.base import SampleRequest
from jukebox_pl.samplers.store import SampleStore
from jukebox_pl.samplers.windows import window_hop, window_starts

LYRICS = "hello darkness my old friend, I've come to talk with you again"
HOPS = {1: 16, 0: 4}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_models(tmp_path_factory.mktemp("models"))


def sample(models: dict, out: Path, mode: str = "ancestral", **overrides) -> dict:
    """Run the sample pipeline with a recipe written here; returns its summary."""
    sampler = {"_component_": mode, **models, "hop_fraction": 0.5, **overrides.pop("sampler", {})}
    recipe = {
        "pipeline": "sample",
        "output_dir": str(out),
        "artist": ["Alice Cooper", "bob marley"],
        "genre": "rock",
        "lyrics": LYRICS,
        "seconds": 0.2,
        "n_samples": 2,
        "progress": False,
        "sampler": sampler,
        **overrides,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(recipe))
    return run_recipe(recipes.load(str(path)))


def codes_of(out: Path, level: int, n: int = 2) -> torch.Tensor:
    return torch.stack([load_file(str(out / "codes" / f"level_{level}" / f"sample_{i}.safetensors"))["codes"]
                        for i in range(n)])  # fmt: skip


# ---------------------------------------------------------------------------- filtering
def test_top_k_and_top_p_never_draw_a_filtered_token() -> None:
    torch.manual_seed(0)
    probabilities = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
    logits = probabilities.log().repeat(20000, 1)
    cases = {(0, 0.5): {0, 1}, (0, 0.66): {0, 1, 2}, (3, 0.0): {0, 1, 2}, (3, 0.6): {0, 1}, (1, 0.9): {0}}
    # with both, top-p applies to the top-k tokens renormalised: 0.5, 0.3125, 0.1875
    for (top_k, top_p), allowed in cases.items():
        drawn = set(sample_token(logits, 1.0, top_k, top_p).tolist())
        assert drawn == allowed, (top_k, top_p)
        kept = torch.isfinite(filter_logits(logits[:1], top_k, top_p))[0].nonzero().flatten().tolist()
        assert set(kept) == allowed


def test_filtering_keeps_random_logits_ranked_by_probability() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 300, generator=generator) * 3
    filtered = filter_logits(logits, top_k=40, top_p=0.8)
    for row, kept in zip(logits, torch.isfinite(filtered), strict=True):
        probabilities = row.softmax(-1)
        assert 1 <= kept.sum() <= 40
        assert probabilities[kept].min() >= probabilities[~kept].max()  # a kept token is never less likely
        top = probabilities.sort(descending=True).values[:40]
        top = top / top.sum()  # top-p measures the top-k tokens renormalised
        n = int(kept.sum())
        assert top[: n - 1].sum() < 0.8 <= top[:n].sum() + 1e-6


def test_temperature_sharpens_the_distribution() -> None:
    torch.manual_seed(2)
    logits = torch.tensor([[1.0, 0.0, -1.0]]).repeat(20000, 1)
    cold = (sample_token(logits, 0.3) == 0).float().mean()
    warm = (sample_token(logits, 1.0) == 0).float().mean()
    assert cold > 0.9 and abs(warm - math.e / (math.e + 1 + 1 / math.e)) < 0.02


def test_hold_model_keeps_the_models_chance_to_repeat_and_cools_the_rest() -> None:
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    rows, vocab = 200000, 12  # enough draws that the proportions below hold at any seed
    logits = torch.randn(vocab, generator=generator)
    previous = int(torch.randint(0, vocab, (), generator=generator))
    logits[previous] = logits.logsumexp(0) + 2.0  # the model holds with probability about 0.88
    p_hold = float(logits.softmax(0)[previous])
    batch, last = logits.repeat(rows, 1), torch.full((rows,), previous)
    for temperature, top_k in ((0.5, 0), (0.4, 4)):
        drawn = sample_token(batch, temperature, top_k, generator=generator, previous=last, hold="model")
        cooled = sample_token(batch, temperature, top_k, generator=generator, previous=last)
        assert abs(float((drawn == previous).double().mean()) - p_hold) < 0.01
        assert float((cooled == previous).double().mean()) > p_hold + 0.05  # temperature stretches the hold
        # the others in their cooled, filtered proportions
        others = filter_logits(logits[None] / temperature, top_k)[0].softmax(0)
        others[previous] = 0
        expected = others / others.sum()
        counts = torch.bincount(drawn[drawn != previous], minlength=vocab).double()
        assert (counts / counts.sum() - expected).abs().sum() < 0.05
    # filters that leave nothing else: the previous code is held for sure
    only = sample_token(batch[:100], 0.5, 1, generator=generator, previous=last[:100], hold="model")
    assert torch.equal(only, last[:100])
    with pytest.raises(ValueError, match="hold is one of"):
        sample_token(batch[:1], hold="never")


# ---------------------------------------------------------------------------- windows
@pytest.mark.parametrize(("total", "n_ctx", "hop"), [(100, 32, 16), (96, 32, 8), (32, 32, 16), (20, 32, 16)])
def test_windows_cover_the_level_with_full_contexts(total: int, n_ctx: int, hop: int) -> None:
    starts = window_starts(total, n_ctx, hop)
    assert starts[0] == 0 and min(starts[-1] + n_ctx, total) == total
    assert all(b - a <= hop for a, b in itertools.pairwise(starts))
    assert all(start + n_ctx <= total for start in starts) or total < n_ctx
    assert window_hop(32, 0.125, 4) == 4 and window_hop(256, 0.5, 4) == 128


def test_cached_and_uncached_sampling_draw_the_same_codes(models: dict) -> None:
    from jukebox_pl.checkpoints.export import load

    prior = load(models["priors"][0])
    labels = {
        "artist": torch.tensor([1, 2]),
        "genres": torch.tensor([[1, -1, -1, -1, -1]] * 2),
        "timing": torch.tensor([[SAMPLE_RATE, 0, 32 * 16]] * 2),
        "lyrics": torch.randint(1, 80, (2, 12)),
    }
    prompt = torch.randint(0, 256, (2, 9))
    draws = [
        prior.sample(labels, 32, prompt, generator=torch.Generator().manual_seed(5), use_cache=cache, chunk_size=4)
        for cache in (True, False)
    ]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0][:, :9], prompt)
    assert draws[0].shape == (2, 32) and int(draws[0].max()) < 256


# ---------------------------------------------------------------------------- modes
def test_ancestral_sampling_writes_codes_audio_and_alignment_for_every_level(models: dict, tmp_path: Path) -> None:
    out = tmp_path / "ancestral"
    summary = sample(models, out)
    total = int(0.2 * SAMPLE_RATE) // 16 * 16
    assert summary["audio_seconds"] == pytest.approx(total / SAMPLE_RATE, abs=1e-3)
    for level, hop in HOPS.items():
        codes = codes_of(out, level)
        assert codes.shape == (2, total // hop) and codes.dtype == torch.int64 and int(codes.max()) < 256
        for i in range(2):
            audio, rate = soundfile.read(out / f"level_{level}" / f"sample_{i}.wav")
            assert rate == SAMPLE_RATE and len(audio) == total and np.abs(audio).max() > 0
    assert not torch.equal(codes_of(out, 1)[0], codes_of(out, 1)[1])  # two samples, two draws
    for i in range(2):
        assert {p.suffix for p in (out / "alignment").glob(f"sample_{i}.*")} == {".json", ".png", ".html"}


def test_a_batch_where_only_some_samples_sing_aligns_only_those(models: dict, tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    sample(models, out, lyrics=[LYRICS, ""])
    assert {p.suffix for p in (out / "alignment").glob("sample_0.*")} == {".json", ".png", ".html"}
    assert not list((out / "alignment").glob("sample_1.*"))
    assert (out / "level_0" / "sample_1.wav").is_file()


def test_the_same_seed_gives_the_same_codes_and_another_seed_other_codes(models: dict, tmp_path: Path) -> None:
    sample(models, tmp_path / "a", seconds=0.1)
    sample(models, tmp_path / "b", seconds=0.1)
    sample(models, tmp_path / "c", seconds=0.1, seed=1)
    for level in HOPS:
        assert torch.equal(codes_of(tmp_path / "a", level), codes_of(tmp_path / "b", level))
        assert not torch.equal(codes_of(tmp_path / "a", level), codes_of(tmp_path / "c", level))


@pytest.mark.parametrize("setting", [{"top_k": [0, 1]}, {"top_p": [0.0, 1e-6]}])
def test_top_k_and_top_p_may_be_set_per_level(models: dict, tmp_path: Path, setting: dict) -> None:
    # greedy at the top level (only its most likely code survives), free draws at level 0
    sample(models, tmp_path / "a", seconds=0.1, sampler=setting)
    sample(models, tmp_path / "b", seconds=0.1, seed=1, sampler=setting)
    assert torch.equal(codes_of(tmp_path / "a", 1), codes_of(tmp_path / "b", 1))
    assert not torch.equal(codes_of(tmp_path / "a", 0), codes_of(tmp_path / "b", 0))
    with pytest.raises(JukeboxError, match="top_k"):
        sample(models, tmp_path / "c", seconds=0.1, sampler={"top_k": [0, -1]})


def test_windowed_sampling_never_changes_codes_already_sampled(models: dict, tmp_path: Path, monkeypatch) -> None:
    saved: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    original = SampleStore.save_codes

    def record(self, level, samples, codes, total):
        saved[level].append(codes.clone())
        return original(self, level, samples, codes, total)

    monkeypatch.setattr(SampleStore, "save_codes", record)
    sample(models, tmp_path / "windows", seconds=0.1, sampler={"hop_fraction": [0.25, 0.5]})
    for level, hop in HOPS.items():
        snapshots = saved[level]
        assert len(snapshots) > 3  # several windows per level
        for before, after in itertools.pairwise(snapshots):
            assert after.shape[1] > before.shape[1] and torch.equal(after[:, : before.shape[1]], before)
        assert snapshots[-1].shape[1] == int(0.1 * SAMPLE_RATE) // 16 * 16 // hop


class Killed(Exception):
    """Stands for the process dying."""


def test_an_interrupted_run_resumes_to_the_codes_of_an_uninterrupted_one(
    models: dict, tmp_path: Path, monkeypatch
) -> None:
    sample(models, tmp_path / "whole", seconds=0.15)
    original, calls = SampleStore.save_codes, []

    def die_after_five_windows(self, level, samples, codes, total):
        original(self, level, samples, codes, total)
        calls.append(level)
        if len(calls) == 5:
            raise Killed  # as a kill would, after a window's codes are on disk

    monkeypatch.setattr(SampleStore, "save_codes", die_after_five_windows)
    with pytest.raises(Killed):
        sample(models, tmp_path / "cut", seconds=0.15)
    monkeypatch.setattr(SampleStore, "save_codes", original)
    partial = codes_of(tmp_path / "cut", 1)
    assert 0 < partial.shape[1] < codes_of(tmp_path / "whole", 1).shape[1]
    sample(models, tmp_path / "cut", seconds=0.15)
    for level in HOPS:
        assert torch.equal(codes_of(tmp_path / "cut", level), codes_of(tmp_path / "whole", level))


def test_a_rerun_of_a_finished_run_samples_and_writes_nothing(models: dict, tmp_path: Path, monkeypatch) -> None:
    from jukebox_pl.samplers.base import Sampler

    out = tmp_path / "run"
    sample(models, out)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".wav", ".safetensors", ".html", ".png"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert any(p.suffix == ".html" for p in files)

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished level was sampled again")

    monkeypatch.setattr(Sampler, "sample_level", no_sampling)
    sample(models, out)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    (out / "level_0" / "sample_1.wav").unlink()  # a missing output is made again
    with pytest.raises(AssertionError, match="sampled again"):
        sample(models, out)


def test_a_folder_of_another_request_is_not_resumed(models: dict, tmp_path: Path) -> None:
    sample(models, tmp_path / "run", seconds=0.1)
    with pytest.raises(JukeboxError, match="other settings \\(seconds, total_samples differ\\)"):
        sample(models, tmp_path / "run", seconds=0.15)


@pytest.mark.slow  # about 15 s: the default suite keeps a margin under 10 minutes
def test_a_run_of_other_settings_can_be_set_aside(models: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sample(models, out, sampler={"temperature": 0.9})
    first = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    sample(models, out, sampler={"temperature": 0.5, "hold": "model"}, if_settings_changed="set_aside")
    aside = out / "replaced-1"
    # the earlier run, byte for byte, in replaced-1/; the new one in its place
    for relative, content in first.items():
        if relative.parts[0] not in ("recipe.yaml", "versions.json"):
            assert (aside / relative).read_bytes() == content
    settings = json.loads((out / "request.json").read_text())["settings"]
    assert settings["temperature"] == 0.5 and settings["hold"] == "model"
    assert json.loads((aside / "request.json").read_text())["settings"]["temperature"] == 0.9
    assert sorted(p.name for p in (out / "level_0").iterdir()) == ["sample_0.wav", "sample_1.wav"]
    sample(models, out, sampler={"temperature": 0.9}, if_settings_changed="set_aside")
    assert (out / "replaced-2" / "request.json").is_file()  # a second change: the next free folder
    with pytest.raises(JukeboxError, match="if_settings_changed is 'refuse' or 'set_aside'"):
        sample(models, tmp_path / "other", if_settings_changed="overwrite")


def test_primed_sampling_keeps_the_encoded_prompt(models: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    prompt = tmp_path / "prompt.wav"
    soundfile.write(prompt, 0.3 * rng.standard_normal(SAMPLE_RATE // 2), SAMPLE_RATE)
    out = tmp_path / "primed"
    sample(models, out, "primed", seconds=0.15, sampler={"prompt": str(prompt), "prompt_seconds": 0.05})
    vqvae = build("sampler", {"_component_": "ancestral", **models}).vqvae
    audio, _ = soundfile.read(prompt, dtype="float32")
    prompt_samples = int(0.05 * SAMPLE_RATE) // 16 * 16
    expected = vqvae.encode(torch.from_numpy(audio[:prompt_samples])[None, None])
    for level, hop in HOPS.items():
        codes = codes_of(out, level)
        assert codes.shape[1] == int(0.15 * SAMPLE_RATE) // 16 * 16 // hop
        assert torch.equal(codes[:, : prompt_samples // hop], expected[level].expand(2, -1))


def test_a_held_out_dataset_song_primes_the_samples_and_gives_its_lyrics(models: dict, tmp_path: Path) -> None:
    from audio_fixtures import make_dataset

    from jukebox_pl.data.shard_reader import split_samples
    from jukebox_pl.data.shards import write_shards

    metadata = make_dataset(tmp_path / "songs", n_songs=6, seconds=0.5, sample_rate=SAMPLE_RATE)
    rows = [json.loads(line) for line in metadata.read_text().splitlines()]
    # Every song sings (the split of songs depends on their paths), each its own words.
    metadata.write_text("".join(json.dumps({**row, "lyrics": f"song {i} la la"}) + "\n" for i, row in enumerate(rows)))
    shards = tmp_path / "shards"
    write_shards(tmp_path / "songs" / "audio", metadata, shards, sample_rate=SAMPLE_RATE, validation_fraction=0.5,
                 min_seconds=0.1)  # fmt: skip
    held_out = sorted((s["__key__"], json.loads(s["json"])) for s in split_samples(shards, "validation"))
    key, song = held_out[0]  # the first held-out song, by key
    out = tmp_path / "primed"
    prompt = {"dataset": str(shards), "key": key}
    sample(models, out, "primed", seconds=0.15, lyrics=None, sampler={"prompt": prompt, "prompt_seconds": 0.05})
    request = json.loads((out / "request.json").read_text())
    assert request["lyrics"] == [song["lyrics"]] * 2  # the song's own lyrics, as none were given
    assert request["artists"] == ["Alice Cooper", "bob marley"]  # given labels win
    assert request["settings"]["prompt"][0]["song"] == key
    audio, rate = soundfile.read(tmp_path / "songs" / "audio" / song["source"].split("/")[-1], dtype="float32",
                                 always_2d=True)  # fmt: skip
    assert rate == SAMPLE_RATE
    # the continuation is placed in the prompt song: its own length, as none was given
    assert request["song_seconds"] == [pytest.approx(len(audio) / rate, abs=1e-3)] * 2
    prompt_samples = int(0.05 * SAMPLE_RATE) // 16 * 16
    vqvae = build("sampler", {"_component_": "ancestral", **models}).vqvae
    expected = vqvae.encode(torch.from_numpy(audio.mean(axis=1)[:prompt_samples].copy())[None, None])
    for level, hop in HOPS.items():
        assert torch.equal(codes_of(out, level)[:, : prompt_samples // hop], expected[level].expand(2, -1))
    artist = song["artist"]
    typo = artist[:-2] + artist[-1] + artist[-2]  # its last two letters swapped
    with pytest.raises(
        JukeboxError, match=f"no song with artist '{re.escape(typo)}'.*did you mean '{re.escape(artist)}'"
    ):
        sample(models, tmp_path / "typo", "primed", seconds=0.15,
               sampler={"prompt": {"dataset": str(shards), "artist": typo}, "prompt_seconds": 0.05})  # fmt: skip
    with pytest.raises(JukeboxError, match="unknown: song"):
        sample(models, tmp_path / "bad", "primed", seconds=0.15,
               sampler={"prompt": {"dataset": str(shards), "song": key}, "prompt_seconds": 0.05})  # fmt: skip
    last = len(held_out) - 1  # by index: the split's songs in key order
    sample(models, tmp_path / "by_index", "primed", seconds=0.15, lyrics=None,
           sampler={"prompt": {"dataset": str(shards), "index": last}, "prompt_seconds": 0.05})  # fmt: skip
    indexed = json.loads((tmp_path / "by_index" / "request.json").read_text())
    assert indexed["settings"]["prompt"][0]["song"] == held_out[last][0]
    assert indexed["lyrics"] == [held_out[last][1]["lyrics"]] * 2
    with pytest.raises(JukeboxError, match=f"song index {last + 1} asked for, but the 'validation' split holds"):
        sample(models, tmp_path / "past_the_end", "primed", seconds=0.15,
               sampler={"prompt": {"dataset": str(shards), "index": last + 1}, "prompt_seconds": 0.05})  # fmt: skip
    n = len(held_out) + 1  # index: all, one prompt per held-out song, shared out over the samples in turn
    sample(models, tmp_path / "every", "primed", seconds=0.15, artist="Alice Cooper", lyrics=None, n_samples=n,
           sampler={"prompt": {"dataset": str(shards), "index": "all"}, "prompt_seconds": 0.05})  # fmt: skip
    every = json.loads((tmp_path / "every" / "request.json").read_text())
    assert [prompt["song"] for prompt in every["settings"]["prompt"]] == [key for key, _ in held_out]
    assert every["lyrics"] == [held_out[i % len(held_out)][1]["lyrics"] for i in range(n)]  # each song's own
    with pytest.raises(JukeboxError, match="index is a song's number .* or 'all', not 'al'"):
        sample(models, tmp_path / "typo_all", "primed", seconds=0.15,
               sampler={"prompt": {"dataset": str(shards), "index": "al"}, "prompt_seconds": 0.05})  # fmt: skip
    with pytest.raises(JukeboxError, match="no song with artist 'Nobody' in the 'validation' split"):
        sample(models, tmp_path / "nobody", "primed", seconds=0.15,
               sampler={"prompt": {"dataset": str(shards), "artist": "Nobody", "index": "all"},
                        "prompt_seconds": 0.05})  # fmt: skip


def test_continue_extends_earlier_codes_and_keeps_them(models: dict, tmp_path: Path) -> None:
    first, longer = tmp_path / "first", tmp_path / "longer"
    sample(models, first, seconds=0.1)
    summary = sample(models, longer, "continue", seconds=0.2, artist=None, genre=None, lyrics=None,
                     sampler={"codes_from": str(first)})  # fmt: skip
    assert summary["audio_seconds"] == pytest.approx(int(0.2 * SAMPLE_RATE) // 16 * 16 / SAMPLE_RATE, abs=1e-3)
    for level, hop in HOPS.items():
        before, after = codes_of(first, level), codes_of(longer, level)
        assert after.shape[1] == int(0.2 * SAMPLE_RATE) // 16 * 16 // hop
        assert torch.equal(after[:, : before.shape[1]], before)
    assert json.loads((longer / "request.json").read_text())["artists"] == ["Alice Cooper", "bob marley"]


def test_upsample_samples_only_the_levels_below_the_given_codes(models: dict, tmp_path: Path) -> None:
    first, upsampled = tmp_path / "first", tmp_path / "upsampled"
    sample(models, first, seconds=0.1)
    sample(models, upsampled, "upsample", seconds=None, artist=None, genre=None, lyrics=None,
           sampler={"codes_from": str(first)})  # fmt: skip
    assert torch.equal(codes_of(upsampled, 1), codes_of(first, 1))  # the top level is read, not sampled
    assert codes_of(upsampled, 0).shape == codes_of(first, 0).shape
    assert (upsampled / "level_0" / "sample_1.wav").is_file()
    top_only = {**models, "priors": models["priors"][1:]}  # no top prior: no alignment, still upsampled
    out = tmp_path / "no_top"
    sample(top_only, out, "upsample", seconds=None, sampler={"codes_from": str(first)})
    assert codes_of(out, 0).shape == codes_of(first, 0).shape and not (out / "alignment").exists()


# ---------------------------------------------------------------------------- alignment
def expected_lyric_span(total: int, n_ctx: int, hop: int, n_tokens: int, song: int | None = None) -> tuple[int, int]:
    """The first and last lyric characters the windows over `total` codes see, in a song of `song` samples."""
    tokens = LyricsProcessor("v2").tokenize(LYRICS)
    samples = total * 16 if song is None else song
    columns = set()
    for start in window_starts(total, n_ctx, hop):
        _, indices = lyric_window(tokens, n_tokens, samples, start * 16, n_ctx * 16)
        columns |= {int(i) for i in indices if i >= 0}
    return min(columns), max(columns)


@pytest.mark.parametrize("top", ["encoder", "prefix"])
def test_alignment_is_monotonic_and_covers_the_lyric_windows(models: dict, tmp_path: Path, top: str) -> None:
    if top == "prefix":  # a single encoder-decoder top prior: prime attention to a lyric prefix
        models = make_models(tmp_path / "models", TOP_PREFIX)
    out = tmp_path / "aligned"
    sample(models, out, seconds=0.3)
    total = codes_of(out, 1).shape[1]
    first, last = expected_lyric_span(total, 32, 16, 12)
    text = LyricsProcessor("v2").clean(LYRICS)
    for i in range(2):
        alignment = json.loads((out / "alignment" / f"sample_{i}.json").read_text())
        window = alignment["lyrics_window"]
        assert (window["first_char"], window["last_char"]) == (first, last)
        assert window["text"] == text[first : last + 1]
        starts = [word["start"] for word in alignment["words"]]
        ends = [word["end"] for word in alignment["words"]]
        assert starts == sorted(starts) and ends == sorted(ends)
        assert all(s <= e for s, e in zip(starts, ends, strict=True))
        assert starts[0] == 0.0 and ends[-1] == pytest.approx(total * 16 / SAMPLE_RATE, abs=1e-3)
        assert " ".join(word["word"] for word in alignment["words"]) in " ".join(text.split())
        page = (out / "alignment" / f"sample_{i}.html").read_text()
        assert "data:audio/wav;base64," in page and ["Alice Cooper", "bob marley"][i] in page


@pytest.mark.slow  # about 15 s: the default suite keeps a margin under 10 minutes
def test_a_clip_that_opens_a_longer_song_is_conditioned_on_that_song(models: dict, tmp_path: Path) -> None:
    whole, opening = tmp_path / "whole", tmp_path / "opening"
    sample(models, whole, seconds=0.3)
    song_seconds = float(np.random.default_rng().uniform(2.0, 6.0))
    sample(models, opening, seconds=0.3, song_seconds=song_seconds)
    assert json.loads((opening / "request.json").read_text())["song_seconds"] == [song_seconds] * 2
    assert "song_seconds" not in json.loads((whole / "request.json").read_text())
    # Every window's timing signal says the song's length; the clip alone is the song without song_seconds.
    sampler = build("sampler", {"_component_": "ancestral", **models})
    clip = int(0.3 * SAMPLE_RATE) // 16 * 16
    for given, expected in ((None, [clip, clip]), ([song_seconds, 0.1], [int(song_seconds * SAMPLE_RATE), clip])):
        request = SampleRequest(["unknown"] * 2, [["unknown"]] * 2, [LYRICS] * 2, seconds=0.3, song_seconds=given)
        sampler.prepare(request, SampleStore(tmp_path / "prepared"), progress=False)
        for start in (0, 16):  # a song shorter than its clip is the clip
            timing = sampler.window_labels(1, [0, 1], start, {})[0]["timing"]
            assert timing[:, 0].tolist() == expected and timing[:, 1].tolist() == [start * 16] * 2
    # The lyrics are spread over the whole song, so the clip's windows see its first characters only.
    total = codes_of(opening, 1).shape[1]
    first, last = expected_lyric_span(total, 32, 16, 12, song=int(song_seconds * SAMPLE_RATE))
    window = json.loads((opening / "alignment" / "sample_0.json").read_text())["lyrics_window"]
    assert (window["first_char"], window["last_char"]) == (first, last)
    assert last < expected_lyric_span(total, 32, 16, 12)[1]
    with pytest.raises(JukeboxError, match=r"song_seconds=0.1 must be at least seconds \(0.3\)"):
        sample(models, tmp_path / "short", seconds=0.3, song_seconds=0.1)


# ---------------------------------------------------------------------------- command line
def test_unknown_artist_and_genre_get_did_you_mean_from_the_vocabulary(models: dict, tmp_path: Path) -> None:
    with pytest.raises(
        JukeboxError, match="artist 'Alice Coper' is not in the vocabulary .*did you mean 'Alice Cooper'"
    ):
        sample(models, tmp_path / "a", artist="Alice Coper")
    with pytest.raises(JukeboxError, match="genre 'regae' is not in the vocabulary .*did you mean 'reggae'"):
        sample(models, tmp_path / "b", genre="rock, regae")


def test_the_sample_command_reads_lyrics_from_a_file(models: dict, tmp_path: Path, capsys) -> None:
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("la la ${not an interpolation}\nsecond line")
    out = tmp_path / "cli"
    code = main([
        "sample", "ancestral", f"output_dir={out}", f"sampler.vqvae={models['vqvae']}",
        f"sampler.priors=[{models['priors'][0]}, {models['priors'][1]}]", "artist=bob marley", "genre=reggae",
        f"lyrics=@{lyrics}", "seconds=0.1", "n_samples=1", "progress=false",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    request = json.loads((out / "request.json").read_text())
    assert request["lyrics"] == ["la la ${not an interpolation}\nsecond line"]
    assert (out / "level_0" / "sample_0.wav").is_file() and (out / "alignment" / "sample_0.html").is_file()
    assert main(["sample", "ancestral", f"output_dir={out}2", f"sampler.vqvae={models['vqvae']}",
                 f"sampler.priors=[{models['priors'][0]}]", "artist=nobody", "seconds=0.1"]) == 2  # fmt: skip
    assert "not in the vocabulary" in capsys.readouterr().err


def test_the_command_refuses_lengths_outside_the_priors_training_range(models: dict, tmp_path: Path) -> None:
    with pytest.raises(JukeboxError, match="outside the song lengths"):
        sample(models, tmp_path / "long", seconds=61.0)


def test_two_processes_share_the_samples_and_draw_what_one_process_draws(models: dict, tmp_path: Path) -> None:
    import sys

    recipe = {
        "pipeline": "sample", "artist": ["Alice Cooper", "bob marley"], "genre": "rock", "lyrics": LYRICS,
        "seconds": 0.1, "n_samples": 2, "batch_size": 1, "progress": False,
        "sampler": {"_component_": "ancestral", **models, "hop_fraction": 0.5},
    }  # fmt: skip
    path = tmp_path / "ddp.yaml"
    path.write_text(json.dumps(recipe))
    command = [sys.executable, "-m", "jukebox_pl.cli", "run", str(path), f"output_dir={tmp_path / 'ddp'}",
               "trainer.devices=2", "trainer.strategy=ddp"]  # fmt: skip
    finished = run_processes(command)
    assert finished.returncode == 0, finished.stderr[-2000:]
    run_recipe(recipes.load(str(path), [f"output_dir={tmp_path / 'one'}"]))
    for level in HOPS:
        assert torch.equal(codes_of(tmp_path / "ddp", level), codes_of(tmp_path / "one", level))


def test_bad_prompts_and_sources_are_refused_before_anything_is_sampled(models: dict, tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    soundfile.write(short, np.full(SAMPLE_RATE // 100, 0.1), SAMPLE_RATE)  # 10 ms
    with pytest.raises(JukeboxError, match="short.wav: the prompt is 0.01 s long, shorter than the 0.05 s"):
        sample(models, tmp_path / "a", "primed", sampler={"prompt": str(short), "prompt_seconds": 0.05})
    with pytest.raises(JukeboxError, match="missing.wav"):
        sample(
            models, tmp_path / "b", "primed", sampler={"prompt": str(tmp_path / "missing.wav"), "prompt_seconds": 0.05}
        )
    with pytest.raises(JukeboxError, match="nowhere: not a sampling run"):
        sample(models, tmp_path / "c", "continue", sampler={"codes_from": str(tmp_path / "nowhere")})
    sample(models, tmp_path / "first", seconds=0.1)
    with pytest.raises(JukeboxError, match="is not longer than"):
        sample(models, tmp_path / "d", "continue", seconds=0.1, sampler={"codes_from": str(tmp_path / "first")})
    for name in "abcd":  # refused before the run is recorded or anything sampled
        assert not (tmp_path / name / "request.json").exists() and not (tmp_path / name / "codes").exists()
