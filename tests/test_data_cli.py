"""`jukebox-pl data shards` and the data_shards / stages pipelines through recipes."""

from __future__ import annotations

import json
import textwrap

from audio_fixtures import make_dataset, write_song


def test_data_shards_command_reports_counts_and_bad_files(run_cli, tmp_path):
    metadata = make_dataset(tmp_path, n_songs=4, seconds=2.5)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF" + bytes(32))
    with open(metadata, "a") as handle:
        handle.write(json.dumps({"path": "broken.wav", "artist": "X"}) + "\n")
    code, out, err = run_cli(
        "data",
        "shards",
        "--audio",
        tmp_path / "audio",
        "--metadata",
        metadata,
        "--out",
        tmp_path / "out",
        "--sample-rate",
        "22050",
    )
    assert code == 0, err
    assert out.startswith("wrote 4 songs") and "3 artists" in out and "skipped 1" in out
    assert f"skipped {tmp_path / 'audio' / 'broken.wav'}: unreadable" in err


def test_quiet_keeps_progress_lines_off_stderr_and_the_summary_on_stdout(run_cli, tmp_path):
    metadata = make_dataset(tmp_path, n_songs=2, seconds=2.5)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF" + bytes(32))
    with open(metadata, "a") as handle:
        handle.write(json.dumps({"path": "broken.wav", "artist": "X"}) + "\n")
    arguments = ("data", "shards", "--audio", tmp_path / "audio", "--metadata", metadata, "--out", tmp_path / "out")
    code, out, err = run_cli("-q", *arguments)
    assert code == 0 and out.startswith("wrote 2 songs") and "skipped 1" in out
    assert "broken.wav" not in err
    code, _, err = run_cli("--verbose", *arguments)
    assert code == 0 and "resuming" in err


def test_data_shards_strict_exits_2_naming_the_file(run_cli, tmp_path):
    write_song(tmp_path / "audio" / "ok.wav", 2.5)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF" + bytes(32))
    (tmp_path / "m.csv").write_text("path,artist\nok.wav,A\nbroken.wav,B\n")
    code, _, err = run_cli(
        "data",
        "shards",
        "--audio",
        tmp_path / "audio",
        "--metadata",
        tmp_path / "m.csv",
        "--out",
        tmp_path / "o",
        "--strict",
    )
    assert code == 2 and "broken.wav: unreadable" in err and "--strict" in err
    assert not (tmp_path / "o" / "dataset.json").exists()


def test_stages_recipe_runs_the_shard_stage_then_reuses_it(run_cli, tmp_path):
    make_dataset(tmp_path, n_songs=3, seconds=2.5)
    recipe = tmp_path / "stages.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""
            pipeline: stages
            output_dir: {tmp_path / "run"}
            stages:
              shards:
                _component_: data_shards
                audio: {tmp_path / "audio"}
                metadata: {tmp_path / "metadata.jsonl"}
                out: {tmp_path / "shards"}
                sample_rate: 22050
            """
        )
    )
    code, out, err = run_cli("run", recipe)
    assert code == 0, err
    assert "=== stage 1/1: shards ===" in err and "songs=3" in out
    modified = (tmp_path / "shards" / "dataset.json").stat().st_mtime_ns
    shard_times = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("*.tar")}
    code, out, err = run_cli("run", recipe)
    assert code == 0 and "resuming" in err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("*.tar")} == shard_times
    assert (tmp_path / "shards" / "dataset.json").stat().st_mtime_ns >= modified
    code, _, err = run_cli("validate", recipe, "stages.shards.sample_rat=3")
    assert code == 2 and "stages.shards.sample_rat: unknown argument" in err and "did you mean 'sample_rate'" in err


def test_a_recipe_stage_runs_another_recipe_with_overrides_in_the_stage_folder(run_cli, tmp_path):
    make_dataset(tmp_path, n_songs=3, seconds=2.5)
    (tmp_path / "shards.yaml").write_text(
        textwrap.dedent(
            f"""
            pipeline: data_shards
            output_dir: {tmp_path / "elsewhere"}
            audio: {tmp_path / "audio"}
            metadata: {tmp_path / "metadata.jsonl"}
            out: {tmp_path / "wrong"}
            """
        )
    )
    (tmp_path / "chain.yaml").write_text(
        textwrap.dedent(
            f"""
            pipeline: stages
            output_dir: {tmp_path / "run"}
            stages:
              data:
                _component_: recipe
                recipe: shards.yaml
                overrides: ["out={tmp_path / "shards"}", "sample_rate=22050"]
            """
        )
    )
    code, out, err = run_cli("run", tmp_path / "chain.yaml")
    assert code == 0 and "songs=3" in out, err
    manifest = json.loads((tmp_path / "shards" / "dataset.json").read_text())
    assert manifest["sample_rate"] == 22050 and manifest["counts"]["songs"] == 3
    assert not (tmp_path / "wrong").exists() and not (tmp_path / "elsewhere").exists()
    assert "out: " in (tmp_path / "run" / "data" / "recipe.yaml").read_text()  # the inner run's record
    bad_later_stage = "stages.later={_component_: recipe, recipe: shards.yaml, overrides: [sample_rat=3]}"
    code, _, err = run_cli("run", tmp_path / "chain.yaml", "output_dir=" + str(tmp_path / "run2"), bad_later_stage)
    assert code == 2 and "sample_rat" in err
    assert "=== stage" not in err, "no stage runs when a later stage's recipe is invalid"
