"""The demo's evidence and musicality stages end to end on tiny random models and a few synthetic songs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from audio_fixtures import make_dataset
from sampling_models import LABELS, TOP, UPSAMPLER, VQVAE, export_model

from jukebox_pl.checkpoints.export import export
from jukebox_pl.data.code_shards import load_code_manifest
from jukebox_pl.data.shard_reader import split_samples
from jukebox_pl.data.shards import write_shards
from jukebox_pl.pipelines.base import REUSED, RunContext
from jukebox_pl.pipelines.encode import encode_dataset
from jukebox_pl.pipelines.evidence import PriorEvidence
from jukebox_pl.pipelines.musicality import Musicality
from jukebox_pl.registry import build

RATE = 22050
WORDS = ["sing", "along", "la", "lala"]


def export_vqvae(out: Path) -> str:
    """The tiny VQ-VAE with codebooks drawn at random, so that songs encode to many codes."""
    torch.manual_seed(0)
    vqvae = build(None, VQVAE)
    for bottleneck in vqvae.bottlenecks:
        bottleneck.codebook.normal_(0, 0.05)
        bottleneck.initialised.fill_(True)
    export(vqvae, out, {"model": {"vqvae": VQVAE}}, "model.vqvae")
    return str(out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str | list[str]]:
    """Songs whose sung ones record syllable onsets, their shards and codes, and tiny models that read them."""
    root = tmp_path_factory.mktemp("demo")
    # Song keys hash their paths, so which songs are held out depends on the folder: take the first folder whose
    # split holds out songs of two artists (the label test swaps between them) and keeps some for training.
    for attempt in range(50):
        metadata = make_dataset(root / f"songs{attempt}", n_songs=8, seconds=1.5, sample_rate=RATE,
                                distinct_lengths=True)  # fmt: skip
        rows = [json.loads(line) for line in metadata.read_text().splitlines()]
        for row in rows:  # every song sings, one syllable every 0.2 s ("la-la" is two)
            syllables = [part for word in WORDS for part in (["la", "la"] if word == "lala" else [word])]
            row["lyrics"] = " ".join(WORDS)
            row["syllables"] = [{"text": text, "onset": round(0.2 * i, 3), "duration": 0.2}
                                for i, text in enumerate(syllables)]  # fmt: skip
        metadata.write_text("".join(json.dumps(row) + "\n" for row in rows))
        shards = root / f"shards{attempt}"
        write_shards(root / f"songs{attempt}" / "audio", metadata, shards, sample_rate=RATE, validation_fraction=0.5,
                     min_seconds=0.1)  # fmt: skip
        held_out = [json.loads(s["json"])["artist"] for s in split_samples(shards, "validation")]
        if len(set(held_out)) >= 2 and len(held_out) < len(rows):
            break
    vqvae = export_vqvae(root / "vqvae")
    codes = root / "codes"
    encode_dataset(vqvae, shards, codes)
    manifest = load_code_manifest(codes)
    vocabularies = {"artists": manifest["artists"], "genres": manifest["genres"]}
    labels = {**LABELS, "n_artists": len(manifest["artists"]), "n_genres": len(manifest["genres"])}
    top = {**TOP, "labels": labels}
    upsampler = {**UPSAMPLER, "labels": {**labels, "include_time_signal": False}}
    priors = [
        export_model("prior", top, root / "top", 1, vocabularies),
        export_model("prior", upsampler, root / "upsampler", 2, vocabularies),
    ]
    return {"root": root, "shards": shards, "codes": codes, "vqvae": vqvae, "priors": priors}


def test_the_evidence_stage_measures_bits_labels_upper_codes_and_alignment(demo) -> None:
    out = demo["root"] / "evidence"
    summary = PriorEvidence(demo["priors"], str(demo["codes"]), demo["vqvae"]).run(RunContext(out, {}, "test"))
    report = json.loads((out / "evidence.json").read_text())
    top, upsampler = (report["priors"][p] for p in demo["priors"])
    assert top["level"] == 1 and upsampler["level"] == 0
    for evidence in (top, upsampler):
        assert 0 < evidence["unigram_bits"] <= np.log2(256)
        assert evidence["below_unigram"] == pytest.approx(evidence["unigram_bits"] - evidence["bits_per_token"])
        assert evidence["labels_worth"] == pytest.approx(evidence["swapped_labels_bits"] - evidence["bits_per_token"])
        assert np.isfinite(evidence["swapped_labels_bits"]) and evidence["windows"] > 0
    assert upsampler["upper_worth"] == pytest.approx(upsampler["other_upper_bits"] - upsampler["bits_per_token"])
    assert "upper_worth" not in top and "alignment" not in upsampler
    assert top["lyrics_worth"] == pytest.approx(top["other_lyrics_bits"] - top["sung_bits"])
    assert 0 < top["sung_windows"] <= top["windows"] and "lyrics_worth" not in upsampler
    assert f"{top['lyrics_worth']:.3f} bits per token" in (out / "evidence.md").read_text()
    vowels = top["vowels"]  # "sing", "along", "la": three vowels sung over the held-out songs' middle frames
    assert vowels["frames"] > 0 and np.isfinite(vowels["vowel_bits"]) and "vowels" not in upsampler
    assert vowels["vowel_worth"] == pytest.approx(vowels["shuffled_vowel_bits"] - vowels["vowel_bits"])
    assert summary["level_1_sung_vowel_worth_bits"] == round(vowels["vowel_worth"], 3)
    held_out = sum(1 for _ in split_samples(demo["shards"], "validation"))
    alignment = top["alignment"]
    assert len(alignment["songs"]) == held_out and alignment["words"] == held_out * len(WORDS)
    assert 0 <= alignment["median_onset_error"] <= 1.5 and 0 <= alignment["within_tolerance"] <= 1
    assert 0 <= alignment["even_pace"]["median_onset_error"] <= 1.5
    assert 0 <= alignment["attention_alone"]["median_onset_error"] <= 1.5 and alignment["pace_width"] > 0
    assert {"attention_alone", "even_pace"} <= set(alignment["songs"][0])
    assert summary["level_1_bits_below_unigram"] == round(top["below_unigram"], 3)
    assert (
        "| alignment" not in (out / "evidence.md").read_text()
        and "median onset error" in (out / "evidence.md").read_text()
    )
    again = PriorEvidence(demo["priors"], str(demo["codes"]), demo["vqvae"]).run(RunContext(out, {}, "test"))
    assert again[REUSED] is True and {k: v for k, v in again.items() if k != REUSED} == summary


def test_the_musicality_stage_puts_copies_of_the_songs_near_them_and_noise_far(demo) -> None:
    copies = demo["root"] / "copies"
    copies.mkdir()
    songs = sorted(split_samples(demo["shards"], "validation"), key=lambda s: s["__key__"])
    for index, sample in enumerate(songs):  # the held-out songs themselves, as if sampled
        (copies / f"sample_{index}.wav").write_bytes(sample["flac"])
    silent = demo["root"] / "silent"
    silent.mkdir()
    rng = np.random.default_rng()
    gap = float(rng.uniform(1.1, 1.4))
    soundfile.write(silent / "sample_0.wav", np.concatenate([0.3 * rng.standard_normal(RATE // 4),
                                                            np.zeros(int(gap * RATE))]), RATE)  # fmt: skip
    out = demo["root"] / "musicality"
    stage = Musicality(str(demo["shards"]), demo["vqvae"], {"copies": str(copies), "silent": str(silent)})
    summary = stage.run(RunContext(out, {}, "test"))
    report = json.loads((out / "musicality.json").read_text())
    rows = report["rows"]
    assert list(rows) == ["held-out songs", "level 1 reconstruction", "level 0 reconstruction", "copies", "silent",
                          "white noise", "pink noise"]  # fmt: skip
    assert rows["copies"]["frechet"] < 1e-6 * rows["white noise"]["frechet"]
    assert rows["silent"]["longest_silence"] == pytest.approx(gap, abs=0.1)
    assert rows["white noise"]["flatness"] == pytest.approx(0.56, abs=0.03)
    assert rows["white noise"]["clips"] == len(songs)  # as many and as long as the first sample set
    checks = report["checks"]
    assert checks["copies"]["frechet_over_white_noise"] < 1e-6 and checks["copies"]["pitched_over_held_out"] == 1.0
    assert checks["silent"]["passes"] is False
    assert summary["copies longest silence"] == rows["copies"]["longest_silence"]
    assert "| copies |" in (out / "musicality.md").read_text()
    assert stage.run(RunContext(out, {}, "test"))[REUSED] is True


def test_the_report_shows_the_evidence_and_musicality_tables(demo) -> None:
    from jukebox_pl.pipelines.report import RunReport

    run = demo["root"] / "run"
    PriorEvidence(demo["priors"], str(demo["codes"]), demo["vqvae"]).run(RunContext(run / "evidence", {}, "test"))
    clips = run / "clips"
    clips.mkdir(parents=True)
    first = next(iter(split_samples(demo["shards"], "validation")))
    (clips / "sample_0.wav").write_bytes(first["flac"])
    Musicality(str(demo["shards"]), demo["vqvae"], {"clips": str(clips)}).run(RunContext(run / "musicality", {}, "t"))
    RunReport(str(run)).run(RunContext(run / "report", {}, "test"))
    page = (run / "index.html").read_text()
    evidence = json.loads((run / "evidence" / "evidence.json").read_text())["priors"][demo["priors"][0]]
    assert f"{evidence['below_unigram']:.4g}" in page and "median word-onset error" in page
    alone = evidence["alignment"]["attention_alone"]["median_onset_error"]
    assert f"the attention alone: {alone:.2f} s" in page and "with the even-pace prior" in page
    assert "log-mel Fréchet distance" in page and "white noise" in page and 'href="musicality/musicality.md"' in page


def test_a_writers_hidden_bookkeeping_does_not_change_what_its_output_is(tmp_path) -> None:
    from jukebox_pl.pipelines.base import inputs_fingerprint

    folder = tmp_path / "codes"
    folder.mkdir()
    (folder / "dataset.json").write_text("{}")
    before = inputs_fingerprint({"a": 1}, {"codes": folder})
    (folder / ".progress.json").write_text('{"step": 2}')
    assert inputs_fingerprint({"a": 1}, {"codes": folder}) == before
    (folder / "dataset.json").write_text('{"songs": 3}')
    assert inputs_fingerprint({"a": 1}, {"codes": folder}) != before
    assert inputs_fingerprint({"a": 2}, {"codes": folder}) != inputs_fingerprint({"a": 1}, {"codes": folder})
