"""Bad input through the command line: one clear message naming what and where, exit code 2, and nothing
written before damaged. Every case here is a row of docs/errors.md, whose message must match it."""

from __future__ import annotations

import hashlib
import json
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import without_last_sample, write_song
from safetensors.torch import load_file, save_file
from sampling_models import VQVAE, make_models

from jukebox_pl import registry
from jukebox_pl.checkpoints.export import CHECKPOINT_KEY, FORMAT, export
from jukebox_pl.cli import main

DOCS = Path(__file__).parent.parent / "docs" / "errors.md"


@dataclass(frozen=True)
class Case:
    """A bad input: `make(root, models)` writes it and returns the command and the files that must survive."""

    id: str
    make: Callable[[Path, dict], tuple[list[str], list[Path]]]
    message: str  # a regex the stderr must match (the `error:` or `warning:` line)
    code: int = 2


# ---------------------------------------------------------------------------- data shards
def _shards(bad: Callable[[Path], None] | None = None, rows: str = "", *options: str):  # options: the second run's
    """A dataset built once from a good song; then `bad` adds a file (or `rows` add metadata) and the same
    command runs again with --strict: the first dataset must survive the failure."""

    def make(root: Path, models: dict) -> tuple[list[str], list[Path]]:
        audio, out, metadata = root / "audio", root / "out", root / "metadata.jsonl"
        write_song(audio / "good.wav", 2.5, 22050, seed=1)
        metadata.write_text(json.dumps({"path": "good.wav", "artist": "Nina Simone", "genre": "jazz"}) + "\n")
        command = ["data", "shards", "--audio", audio, "--metadata", metadata, "--out", out, "--strict",
                   "--sample-rate", "22050", "--min-seconds", "1"]  # fmt: skip
        assert main([str(a) for a in command]) == 0
        if bad is not None:
            bad(audio)
            rows_added = json.dumps({"path": "bad.wav", "artist": "Bob Marley", "genre": "reggae"}) + "\n"
        else:
            rows_added = ""
        metadata.write_text(metadata.read_text() + rows_added + rows)
        return [*command, *options], [out]

    return make


def _corrupt(audio: Path) -> None:
    (audio / "bad.wav").write_bytes(b"RIFF" + np.random.default_rng().bytes(600))


def _empty(audio: Path) -> None:
    sf.write(audio / "bad.wav", np.zeros((0, 1), np.float32), 22050)


def _truncated(audio: Path) -> None:
    write_song(audio / "bad.wav", 2.0, 22050)
    data = (audio / "bad.wav").read_bytes()
    (audio / "bad.wav").write_bytes(data[: len(data) // 2])


def _non_finite(value: float) -> Callable[[Path], None]:
    def write(audio: Path) -> None:
        samples = np.random.default_rng().uniform(-0.5, 0.5, (44100, 1)).astype(np.float32)
        samples[np.random.default_rng().integers(44100)] = value
        sf.write(audio / "bad.wav", samples, 22050, subtype="FLOAT")

    return write


def _channels(audio: Path) -> None:
    write_song(audio / "bad.wav", 2.0, 22050, channels=6)


def _low_rate(audio: Path) -> None:
    write_song(audio / "bad.wav", 2.0, 4000)


def _cut_shard(root: Path, models: dict) -> tuple[list[str], list[Path]]:
    """A two-song dataset whose shard lost its second song: cut where that song's first member starts,
    the rest reads as a whole tar holding one song."""
    audio, out, metadata = root / "audio", root / "out", root / "metadata.jsonl"
    rows = []
    for index in range(2):
        write_song(audio / f"song{index}.wav", 1.5, 22050, seed=index)
        rows.append(json.dumps({"path": f"song{index}.wav", "artist": "Nina Simone", "genre": "jazz"}))
    metadata.write_text("\n".join(rows) + "\n")
    assert main(["data", "shards", "--audio", str(audio), "--metadata", str(metadata), "--out", str(out),
                 "--sample-rate", "22050", "--min-seconds", "1", "--validation-fraction", "0"]) == 0  # fmt: skip
    shard = out / json.loads((out / "dataset.json").read_text())["shards"]["train"][0]["name"]
    shard.write_bytes(without_last_sample(shard.read_bytes()))
    return ["run", "eval/spectral", f"output_dir={root / 'eval'}", f"checkpoints={{tiny: {models['vqvae']}}}",
            f"data={out}", "split=train", "crops=2", "crop_seconds=0.5"], [out]  # fmt: skip


# ---------------------------------------------------------------------------- recipes
def _recipe(*overrides: str, recipe: str = "vqvae/tiny_demo"):
    def make(root: Path, models: dict) -> tuple[list[str], list[Path]]:
        out = root / "run"
        out.mkdir()
        (out / "notes.txt").write_text("an earlier run's file")
        return ["run", recipe, f"output_dir={out}", *overrides], [out]

    return make


# ---------------------------------------------------------------------------- sampling
def _sample(*overrides: str):
    """A finished sample run in the folder first; the bad command must leave it as it was."""

    def make(root: Path, models: dict) -> tuple[list[str], list[Path]]:
        out = root / "samples"
        common = ["sample", "ancestral", f"output_dir={out}", f"sampler.vqvae={models['vqvae']}",
                  f"sampler.priors=[{models['priors'][0]},{models['priors'][1]}]", "seconds=0.1", "n_samples=1",
                  "progress=false", "sampler.hop_fraction=0.5"]  # fmt: skip
        assert main([*common, "artist=Alice Cooper", "genre=rock", "lyrics=la la"]) == 0
        return [*common, *overrides], [out]

    return make


def _fresh_sample(*overrides: str):
    def make(root: Path, models: dict) -> tuple[list[str], list[Path]]:
        return ["sample", "ancestral", f"output_dir={root / 'samples'}", f"sampler.vqvae={models['vqvae']}",
                f"sampler.priors=[{models['priors'][0]},{models['priors'][1]}]", "seconds=0.1", "n_samples=1",
                "progress=false", "sampler.hop_fraction=0.5", "artist=Alice Cooper", "genre=rock",
                *overrides], []  # fmt: skip

    return make


def _other_preset(root: Path, models: dict) -> tuple[list[str], list[Path]]:
    """An export folder whose weights come from a wider VQ-VAE than its recipe describes."""
    folder = root / "vqvae"
    wider = {**VQVAE, "width": VQVAE.get("width", 16) * 2}
    export(registry.build(None, wider), root / "wider", recipe={"model": wider}, key="model")
    export(registry.build(None, VQVAE), folder, recipe={"model": VQVAE}, key="model")
    save_file(load_file(str(root / "wider" / "model.safetensors")), str(folder / "model.safetensors"))
    command, protected = _sample()(root, models)
    return [*command, f"sampler.vqvae={folder}"], protected


def _code_in_recipe(root: Path, models: dict) -> tuple[list[str], list[Path]]:
    """A shared export folder whose recipe.yaml names ``os:system`` with a command, given to a sampler."""
    folder = root / "vqvae"
    payload = {"_component_": "os:system", "command": f"touch {root / 'pwned.txt'}"}
    export(registry.build(None, VQVAE), folder, recipe={"model": {"vqvae": payload}}, key="model.vqvae")
    command, _ = _sample()(root, models)
    return [*command, f"sampler.vqvae={folder}"], [folder]


CASES = [
    Case("audio-corrupt", _shards(_corrupt), r"bad\.wav: unreadable \(.*\) \(--strict stops at the first bad file\)"),
    Case("audio-empty", _shards(_empty), r"bad\.wav: empty \(no audio frames\)"),
    Case("audio-truncated", _shards(_truncated),
         r"bad\.wav: (truncated: \d+ of \d+ frames present|corrupt or truncated)"),
    Case("audio-nan", _shards(_non_finite(np.nan)), r"bad\.wav: contains NaN or infinite samples"),
    Case("audio-inf", _shards(_non_finite(np.inf)), r"bad\.wav: contains NaN or infinite samples"),
    Case("audio-channels", _shards(_channels), r"bad\.wav: 6 channels: only mono and stereo audio is supported"),
    Case("audio-sample-rate", _shards(_low_rate), r"bad\.wav: sampled at 4000 Hz, below 8000 Hz: too low for music"),
    Case("option-sample-rate", _shards(None, "", "--sample-rate", "0"),
         r"sample rate 0 Hz: give the dataset's rate in Hz, at least 8000"),
    Case("metadata-row", _shards(None, "{not json\n"), r"metadata\.jsonl:2: not valid JSON \(.*\)"),
    Case("metadata-missing-file", _shards(None, json.dumps({"path": "gone.wav", "artist": "x"}) + "\n"),
         r"gone\.wav: missing \(no such file\)"),
    Case("shard-cut", _cut_shard,
         r"train-000000\.tar: holds 1 song, but its dataset's dataset\.json records 2 \(a truncated or damaged shard"),
    Case("recipe-missing", _recipe(recipe="vqvae/tiny_dmeo"),
         r"recipe 'vqvae/tiny_dmeo' not found: not a file, and not a packaged recipe"),
    Case("recipe-typo", _recipe("model.vqvae.widht=8"),
         r"command line: model\.vqvae\.widht: unknown argument 'widht' of vqvae 'demo_vqvae' .*did you mean 'width'"),
    Case("recipe-type", _recipe("model.vqvae.width=wide"),
         r"command line: model\.vqvae\.width: expected int, got 'wide' \(str\)"),
    Case("recipe-component", _recipe("model.vqvae.bottleneck=emma_vq"),
         r"model\.vqvae\.bottleneck\._component_: unknown component 'emma_vq' \(did you mean 'ema_vq'"),
    Case("recipe-interpolation", _recipe("data.path=${vars.codes}/shards"),
         r"command line: data\.path: Interpolation key 'vars\.codes' not found"),
    Case("artist-unknown", _sample("artist=Alice Coper"),
         r"artist 'Alice Coper' is not in the vocabulary of .*top \(\d+ artists\) \(did you mean 'Alice Cooper'\?\)"),
    Case("genre-unknown", _sample("artist=Alice Cooper", "genre=rok"),
         r"genre 'rok' is not in the vocabulary of .*top \(\d+ genres\) \(did you mean 'rock'\?\)"),
    Case("lyrics-emoji", _fresh_sample("lyrics=la la 🎵 über alles ✨"),
         r"warning: lyrics of sample 0: the v2 lyric vocabulary has no token for '🎵' '✨'; dropped", code=0),
    Case("lyrics-overlong", _fresh_sample("lyrics=" + "la " * 20000), r"^(?![\s\S]*error:)", code=0),
    Case("checkpoint-other-preset", _other_preset,
         r"vqvae/model\.safetensors: does not fit JukeboxVQVAE built from its recipe:\s+encoders\.0\.0\.0\.weight: "
         r"checkpoint has shape \(32, 1, 4\), the model \(16, 1, 4\)"),
    Case("checkpoint-missing", _sample("artist=Alice Cooper", "sampler.vqvae=models/gone"), r"models/gone"),
    Case("checkpoint-code", _code_in_recipe,
         r"vqvae/recipe\.yaml: model\.vqvae\._component_: 'os:system' is a dotted path: it would import and run code "
         r"from module 'os'; a model's stored recipe may name only components that jukebox-pl or an installed plugin "
         r"registers; if you trust where this model comes from, allow its code with trust_code=True "
         r"\(jukebox_pl\.load\) or --trust-code \(command line\)"),
]  # fmt: skip


def _digest(paths: list[Path]) -> dict[str, str]:
    """Every file under `paths`, by content."""
    found = {}
    for root in paths:
        for file in sorted(p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()):
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_one_clear_message_and_damages_nothing(case: Case, models: dict, tmp_path: Path, capsys):
    command, protected = case.make(tmp_path, models)
    capsys.readouterr()
    before = _digest(protected)
    code = main([str(part) for part in command])
    err = capsys.readouterr().err
    assert code == case.code, err
    assert re.search(case.message, err), err
    assert err.count("error:") == (1 if case.code else 0), err  # one message, not a traceback or a cascade
    assert "Traceback" not in err
    assert _digest(protected) == before  # what was there before is byte for byte the same


def test_a_full_disk_while_writing_keeps_the_previous_export(tmp_path: Path, models: dict) -> None:
    """The disk fills up (simulated by a file size limit) while `jukebox-pl export` replaces an export."""
    torch.manual_seed(0)
    module = registry.build(None, VQVAE)
    record = {"format": FORMAT, "recipe": json.dumps({"model": VQVAE}), "component": "model"}
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), CHECKPOINT_KEY: record}, checkpoint)
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), str(out)]) == 0
    before = _digest([out])
    limit = (out / "model.safetensors").stat().st_size // 2

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    finished = subprocess.run([sys.executable, "-m", "jukebox_pl.cli", "export", str(checkpoint), str(out)],
                              capture_output=True, text=True, preexec_fn=small_disk, timeout=300)  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    assert re.search(r"error: cannot write .*model\.safetensors.*: File too large \(the disk or your quota is full\); "
                     r"files written before are kept", finished.stderr), finished.stderr  # fmt: skip
    assert _digest([out]) == before and not list(out.glob(".*.tmp"))


def test_every_case_is_in_the_docs_with_the_message_it_gets() -> None:
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\| `([a-z0-9-]+)` \| (.*?) \| (.*) \| (\d) \|$", line)
        if match:
            rows[match[1]] = (match[3], int(match[4]))
    ids = [case.id for case in CASES] + ["disk-full", "plugin-broken"]
    assert sorted(rows) == sorted(ids)
    for case in CASES:
        documented, code = rows[case.id]
        assert code == case.code, case.id
        if case.code:  # the documented message is one the pattern accepts
            text = documented.strip("`").replace("\\|", "|")
            assert re.search(case.message.removeprefix("warning: "), text), (case.id, text)
