"""Untrusted files: a poisoned pickle in every place jukebox-pl loads one is refused and never runs; the recipe
stored with a model reaches only installed code unless trusted (trust_code=True, --trust-code); dotted paths in
recipes and stored checkpoints are refused before import by --no-dotted-paths or JUKEBOX_PL_NO_DOTTED_PATHS=1.

The payloads are a pickled object whose loading calls ``Path.touch(marker)``, a stored recipe whose component is
``os:system`` with ``command: touch MARKER``, and a module that touches the marker when imported: the marker file
exists afterwards only if a loader ran code from the file.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import run_console_script, run_python
from sampling_models import TOP, UPSAMPLER, VOCABULARIES, VQVAE, export_model

import jukebox_pl
from jukebox_pl import recipe_validation, recipes, registry, trust
from jukebox_pl.checkpoints.export import FORMAT, CheckpointError, export, load_codec, load_vocabularies, stored_recipe
from jukebox_pl.checkpoints.openai import read_state_dict
from jukebox_pl.data.code_shards import codes_from_npz

REFUSED = "refused: the file holds more than tensors (code objects: unpickling it would call"
FORBIDDEN = "is a dotted path: it would import and run code from module"
UNTRUSTED = (
    "a model's stored recipe may name only components that jukebox-pl or an installed plugin registers; if you "
    "trust where this model comes from, allow its code with trust_code=True (jukebox_pl.load) or --trust-code "
    "(command line)"
)


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class CopyPayload(Payload):
    """Unpickling this copies a file onto ``marker`` with a module-level function (pickled as its own global)."""

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.marker))


def train_checkpoint(
    path: Path, payload: Payload | None = None, spec: dict | None = None, state: dict | None = None
) -> Path:
    """A checkpoint as the train pipeline writes it (a tiny VQ-VAE, its recipe), optionally carrying `payload`.

    `state` is the weights; by default, those of `spec` built, or none for a spec by dotted path (building it
    would import the module the tests watch).
    """
    spec = spec or VQVAE
    torch.manual_seed(0)
    if state is None:
        state = {} if trust.is_dotted_path(spec["_component_"]) else registry.build(None, spec).state_dict()
    checkpoint = {
        "state_dict": state,
        "global_step": 3,
        "jukebox_pl": {"format": FORMAT, "recipe": json.dumps({"model": spec}), "component": "model"},
    }
    if payload is not None:
        checkpoint["hyper_parameters"] = {"note": payload}
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload_ran"


@pytest.fixture
def poisoned(tmp_path: Path, marker: Path) -> Path:
    return train_checkpoint(tmp_path / "poisoned.ckpt", Payload(marker))


def refused(err: str, path: Path) -> bool:
    return f"{path}: {REFUSED}" in err and "Traceback" not in err


# --------------------------------------------------------------------------------- the payload
@pytest.mark.parametrize("payload", [Payload, CopyPayload])
def test_the_payloads_run_when_unpickled_without_weights_only(tmp_path: Path, marker: Path, payload) -> None:
    torch.save({"x": payload(marker)}, tmp_path / "live.ckpt")
    torch.load(tmp_path / "live.ckpt", weights_only=False)
    assert marker.exists(), "the test payloads must be live, or the refusals below prove nothing"


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path, marker: torch.save({"state_dict": {}, "x": Payload(marker)}, path),
         f"{REFUSED} getattr); jukebox-pl loads checkpoints with torch.load(weights_only=True), which never runs code"),
        (lambda path, marker: torch.save({"state_dict": {}, "x": CopyPayload(marker)}, path),
         f"{REFUSED} shutil.copyfile)"),
        (lambda path, marker: path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2)),
         f"{REFUSED} getattr)"),
        (lambda path, marker: path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=4)),
         "refused: the file holds more than tensors (pickle data that a tensors-only reader rejects: Unsupported"),
        (lambda path, marker: path.write_text("not a checkpoint"),
         "not a readable checkpoint (neither a zip archive nor a pickle)"),
    ],
    ids=["method", "function", "legacy-pickle", "protocol-4-pickle", "text"],
)  # fmt: skip
def test_the_refusal_says_what_the_file_would_call(tmp_path: Path, marker: Path, write, message: str) -> None:
    path = tmp_path / "suspect.ckpt"
    write(path, marker)
    with pytest.raises(CheckpointError) as error:
        jukebox_pl.load(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert not marker.exists()


def test_the_same_checkpoint_without_the_payload_loads(tmp_path: Path) -> None:
    clean = train_checkpoint(tmp_path / "clean.ckpt")
    assert hasattr(jukebox_pl.load(clean), "encode")


# ------------------------------------------------------------------------------ every load path
@pytest.mark.parametrize(
    "reader",
    [jukebox_pl.load, load_vocabularies, stored_recipe, lambda path: load_codec(path, "encode: vqvae", "mono")],
    ids=["load", "load_vocabularies", "stored_recipe", "load_codec"],
)
def test_loading_a_poisoned_checkpoint_is_refused_naming_the_file(reader, poisoned: Path, marker: Path) -> None:
    with pytest.raises(jukebox_pl.JukeboxError) as error:
        reader(poisoned)
    assert str(error.value).removeprefix("encode: vqvae: ").startswith(f"{poisoned}: {REFUSED}")
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_export_of_a_poisoned_checkpoint_exits_2_and_writes_nothing(run_cli, poisoned: Path, marker: Path) -> None:
    code, out, err = run_cli("export", poisoned, poisoned.parent / "exported")
    assert code == 2 and out == ""
    assert refused(err, poisoned)
    assert not marker.exists() and not (poisoned.parent / "exported").exists()


def test_evaluate_with_a_poisoned_checkpoint_exits_2(run_cli, tmp_path: Path, poisoned: Path, marker: Path) -> None:
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(yaml.safe_dump({"pipeline": "evaluate", "output_dir": str(tmp_path / "run"),
                                      "checkpoints": {"suspect": str(poisoned)}, "data": str(tmp_path)}))  # fmt: skip
    code, _, err = run_cli("run", recipe)
    assert code == 2
    assert err.startswith("error: evaluate: checkpoints.suspect: ") and refused(err, poisoned)
    assert not marker.exists() and not (tmp_path / "run" / "report.json").exists()


@pytest.mark.parametrize("poisoned_model", ["vqvae", "prior"])
def test_a_sampler_given_a_poisoned_model_exits_2(
    run_cli, tmp_path: Path, poisoned: Path, marker: Path, poisoned_model: str
) -> None:
    vqvae = poisoned if poisoned_model == "vqvae" else export_model("vqvae", VQVAE, tmp_path / "vqvae", seed=0)
    prior = poisoned if poisoned_model == "prior" else tmp_path / "no_prior_reached"
    code, _, err = run_cli("sample", "ancestral", f"output_dir={tmp_path / 'run'}", f"sampler.vqvae={vqvae}",
                           f"sampler.priors=[{prior}]")  # fmt: skip
    assert code == 2
    assert refused(err, poisoned)
    assert not marker.exists() and not list((tmp_path / "run").glob("**/*.wav"))


def test_fine_tuning_a_poisoned_base_exits_2(run_cli, tmp_path: Path, poisoned: Path, marker: Path) -> None:
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(yaml.safe_dump({
        "pipeline": "finetune", "output_dir": str(tmp_path / "run"), "init_from": str(poisoned),
        "new_artists": ["Nina Simone"], "new_genres": [],
        "data": {"_component_": "code_shards", "path": str(tmp_path / "codes"), "level": 1, "n_ctx": 32},
    }))  # fmt: skip
    code, _, err = run_cli("run", recipe)
    assert code == 2
    assert refused(err, poisoned)
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_a_poisoned_last_checkpoint_is_refused_before_resuming(
    run_cli, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump({
        "pipeline": "train", "output_dir": str(tmp_path / "run"),
        "model": {"_component_": "toy_components:TinyAutoencoder", "channels": 4},
        "data": {"_component_": "sine_tones", "batch_size": 4, "train_size": 8, "val_size": 4, "sample_length": 256},
        "loggers": [],
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False},
    }))  # fmt: skip
    code, _, err = run_cli("run", recipe)
    assert code == 0, err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["loops"]["payload"] = Payload(marker)
    torch.save(checkpoint, last)
    written = last.read_bytes()

    def fit(*args, **kwargs):
        raise AssertionError("Trainer.fit reached: under FSDP, Lightning's loader would unpickle the file")

    monkeypatch.setattr(pl.Trainer, "fit", fit)  # refused by name before Lightning's loader sees it
    code, _, err = run_cli("run", recipe, "trainer.max_steps=4")
    assert code == 2
    assert refused(err, last)
    assert not marker.exists()
    assert last.read_bytes() == written, "nothing trained on and nothing overwrote the refused checkpoint"


def test_openai_import_of_a_poisoned_file_exits_2(run_cli, tmp_path: Path, marker: Path) -> None:
    weights = tmp_path / "vqvae.pth.tar"
    torch.save({"model": {"bottleneck.level_blocks.0.k": torch.zeros(2, 2)}, "hps": Payload(marker)}, weights)
    with pytest.raises(CheckpointError, match="refused: the file holds more than tensors"):
        read_state_dict(weights)
    code, _, err = run_cli("import", "openai", "--model", "5b", "--vqvae", weights, "--out", tmp_path / "out")
    assert code == 2
    assert refused(err, weights)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_export_whose_safetensors_file_is_a_pickle_is_refused(tmp_path: Path, marker: Path) -> None:
    folder = Path(export_model("vqvae", VQVAE, tmp_path / "vqvae", seed=0))
    torch.save({"weights": Payload(marker)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors file"):
        jukebox_pl.load(folder)
    assert not marker.exists()


def test_codes_holding_pickled_objects_are_refused(tmp_path: Path, marker: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, level0=np.array([Payload(marker)], dtype=object))
    with pytest.raises(jukebox_pl.JukeboxError, match="train-000000.tar: sample a: refused: the codes hold pickled"):
        codes_from_npz(buffer.getvalue(), "train-000000.tar: sample a")
    assert not marker.exists()


# ---------------------------------------------------------------------------------- dotted paths
@pytest.fixture
def planted(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module, importable from tmp_path, that touches `marker` when imported and offers `Model` (a toy
    autoencoder) and `VQVAE` (tiny_vqvae); returns its name."""
    name = f"planted_{tmp_path.name}"
    lines = [
        f"from pathlib import Path; Path({str(marker)!r}).touch()",
        "from toy_components import TinyAutoencoder as Model",
        "from jukebox_pl.vqvae.model import tiny_vqvae as VQVAE",
    ]
    (tmp_path / f"{name}.py").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def dotted_recipe(tmp_path: Path, planted: str) -> Path:
    path = tmp_path / "dotted.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: train
        output_dir: {tmp_path / "run"}
        vars:
          model: {planted}:Model
        model:
          _component_: ${{vars.model}}
          channels: 4
        data:
          _component_: sine_tones
          batch_size: 4
          train_size: 8
          val_size: 4
          sample_length: 256
        loggers: []
        trainer:
          accelerator: cpu
          max_steps: 2
          limit_val_batches: 1
          enable_progress_bar: false
          enable_model_summary: false
    """))  # fmt: skip
    return path


@pytest.mark.parametrize(
    "arguments",
    [["--no-dotted-paths", "run"], ["run", "--no-dotted-paths"], ["--no-dotted-paths", "validate"],
     ["show", "--no-dotted-paths"], ["--no-dotted-paths", "sample"]],
    ids=["run", "run-after", "validate", "show", "sample"],
)  # fmt: skip
def test_no_dotted_paths_refuses_the_recipe_before_importing_anything(
    run_cli, dotted_recipe: Path, planted: str, marker: Path, tmp_path: Path, arguments: list[str]
) -> None:
    code, out, err = run_cli(*arguments, dotted_recipe)
    assert code == 2 and out == ""
    assert err == (
        f"error: {dotted_recipe}: model._component_: '{planted}:Model' {FORBIDDEN} '{planted}', and dotted paths "
        "are forbidden by --no-dotted-paths (JUKEBOX_PL_NO_DOTTED_PATHS=1); name a registered component instead "
        "(jukebox-pl ls)\n"
    )
    assert not marker.exists() and planted not in sys.modules
    assert not (tmp_path / "run").exists()


def test_the_environment_variable_forbids_dotted_paths_like_the_option(
    run_cli, dotted_recipe: Path, planted: str, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(trust.NO_DOTTED_PATHS_ENV, "1")
    code, _, err = run_cli("validate", dotted_recipe, "callbacks=[{_component_: elsewhere.callbacks:Counter}]")
    assert code == 2
    assert err.startswith("error: 2 components are named by dotted path:\n")
    assert f"{dotted_recipe}: model._component_: '{planted}:Model' {FORBIDDEN}" in err
    assert f"command line: callbacks.0._component_: 'elsewhere.callbacks:Counter' {FORBIDDEN}" in err
    assert not marker.exists() and planted not in sys.modules
    monkeypatch.setenv(trust.NO_DOTTED_PATHS_ENV, "0")
    assert run_cli("validate", dotted_recipe)[0] == 0


def test_without_the_option_the_same_recipe_imports_its_module_and_runs(
    run_cli, dotted_recipe: Path, planted: str, marker: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli("run", dotted_recipe)
    assert code == 0, err
    assert marker.exists() and planted in sys.modules
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_registered_names_and_plugin_components_still_work_without_dotted_paths(run_cli, tmp_path: Path) -> None:
    recipe = tmp_path / "registered.yaml"
    recipe.write_text(yaml.safe_dump({
        "pipeline": "train",
        "model": {"vqvae": {"_component_": "tiny_vqvae", "width": 8, "depth": 1, "emb_width": 8}},
        "data": {"_component_": "sine_tones"},  # from the jukebox-pl-example plugin's entry point
        "callbacks": [{"_component_": "grad_norm"}],
        "strategy": "fsdp_blocks",
    }))  # fmt: skip
    code, out, err = run_cli("--no-dotted-paths", "validate", recipe)
    assert code == 0, err
    assert "datamodule 'sine_tones'" in out and "vqvae 'tiny_vqvae'" in out


def test_a_dotted_path_outside_a_component_key_is_refused_by_the_registry(planted: str, marker: Path) -> None:
    with (
        trust.forbid_dotted_paths(),
        pytest.raises(jukebox_pl.RegistryError, match=f"'{planted}:Model' {FORBIDDEN}"),
    ):
        registry.find(f"{planted}:Model")
    with trust.forbid_dotted_paths(), pytest.raises(jukebox_pl.RecipeError) as error:
        recipe_validation.validate(_recipe_with_strategy(f"{planted}:Model"))
    assert f"inline: strategy._component_: '{planted}:Model' {FORBIDDEN}" in str(error.value)
    assert not marker.exists() and planted not in sys.modules
    assert not trust.dotted_paths_forbidden(), "the switch is off again after the block"


def _recipe_with_strategy(strategy: str) -> recipes.Recipe:
    from omegaconf import OmegaConf

    config = OmegaConf.create({"pipeline": "train", "model": {"_component_": "tiny_vqvae"},
                               "data": {"_component_": "sine_tones"}, "strategy": strategy})  # fmt: skip
    return recipes.Recipe(config, "inline")


def test_a_checkpoint_whose_stored_recipe_names_a_dotted_path_is_refused(
    run_cli, tmp_path: Path, planted: str, marker: Path
) -> None:
    checkpoint = train_checkpoint(tmp_path / "stored.ckpt", spec={"_component_": f"{planted}:Model", "channels": 4})
    code, _, err = run_cli("--no-dotted-paths", "export", checkpoint, tmp_path / "exported")
    assert code == 2
    assert err.startswith(f"error: {checkpoint}: model._component_: '{planted}:Model' {FORBIDDEN}")
    assert not marker.exists() and not (tmp_path / "exported").exists()

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "recipe.yaml").write_text(yaml.safe_dump({
        "model": {"vqvae": {"_component_": "tiny_vqvae", "bottleneck": {"_component_": f"{planted}:Model"}}},
        "export": {"format": FORMAT, "component": "model.vqvae"},
    }))  # fmt: skip
    with trust.forbid_dotted_paths(), pytest.raises(jukebox_pl.RegistryError) as error:
        jukebox_pl.load(folder)
    assert str(error.value).startswith(f"{folder / 'recipe.yaml'}: model.vqvae.bottleneck._component_: '{planted}:")
    assert not marker.exists() and planted not in sys.modules


def test_the_console_script_honours_the_environment_variable(dotted_recipe: Path, planted: str, marker: Path) -> None:
    result = run_console_script("validate", str(dotted_recipe), cwd=dotted_recipe.parent,
                                extra_path=dotted_recipe.parent, JUKEBOX_PL_NO_DOTTED_PATHS="1")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {dotted_recipe}: model._component_: '{planted}:Model' {FORBIDDEN}")
    assert not marker.exists()


# ------------------------------------------------------------------ stored recipes: installed code only
def shared_export(folder: Path, stored: dict, built: dict, kind: str = "vqvae") -> dict[str, torch.Tensor]:
    """An export whose recipe stores `stored` as ``model.KIND``, with the fresh random weights of `built` (the same
    model reached another way): a model as someone else shares it. Returns the weights."""
    module = registry.build(None, built)
    export(module, folder, {"model": {kind: stored}}, f"model.{kind}", VOCABULARIES if kind == "prior" else None)
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def same_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return state.keys() == weights.keys() and all(torch.equal(state[name], weights[name]) for name in weights)


def system_call(marker: Path) -> dict:
    """A component spec that runs a shell command touching `marker`, if anything calls it."""
    return {"_component_": "os:system", "command": f"touch {marker}"}


@pytest.fixture
def system_export(tmp_path: Path, marker: Path) -> Path:
    """The export of the issue: its recipe.yaml names ``os:system`` with a command that touches `marker`."""
    from safetensors.torch import save_file

    folder = tmp_path / "shared"
    folder.mkdir()
    save_file({}, str(folder / "model.safetensors"))
    (folder / "recipe.yaml").write_text(textwrap.dedent(f"""
        model:
          vqvae:
            _component_: os:system
            command: touch {marker}
        export:
          format: {FORMAT}
          component: model.vqvae
    """))  # fmt: skip
    return folder


def test_a_shared_export_naming_os_system_is_refused_and_its_command_never_runs(
    system_export: Path, marker: Path
) -> None:
    with pytest.raises(jukebox_pl.UntrustedCodeError) as error:
        jukebox_pl.load(system_export)
    assert str(error.value) == (
        f"{system_export / 'recipe.yaml'}: model.vqvae._component_: 'os:system' is a dotted path: it would import "
        f"and run code from module 'os'; {UNTRUSTED}"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("stored", "key"),
    [
        (lambda path: {**VQVAE, "_component_": path}, "model.vqvae._component_"),
        (lambda path: {**VQVAE, "bottleneck": {"_component_": path, "codebook_size": 64}},
         "model.vqvae.bottleneck._component_"),
        (lambda path: {**VQVAE, "bottleneck": path}, "model.vqvae.bottleneck._component_"),
    ],
    ids=["the-model", "a-nested-component", "a-bare-name-where-a-spec-goes"],
)  # fmt: skip
def test_a_dotted_path_anywhere_in_a_stored_recipe_is_refused_before_its_module_is_imported(
    tmp_path: Path, planted: str, marker: Path, stored, key: str
) -> None:
    shared_export(tmp_path / "shared", stored(f"{planted}:VQVAE"), VQVAE)
    with pytest.raises(jukebox_pl.UntrustedCodeError) as error:
        jukebox_pl.load(tmp_path / "shared")
    assert str(error.value) == (
        f"{tmp_path / 'shared' / 'recipe.yaml'}: {key}: '{planted}:VQVAE' {FORBIDDEN} '{planted}'; {UNTRUSTED}"
    )
    assert not marker.exists() and planted not in sys.modules


def test_the_same_folder_loads_with_trust_code(tmp_path: Path, planted: str, marker: Path) -> None:
    folder = tmp_path / "shared"
    weights = shared_export(folder, {"_component_": f"{planted}:Model", "channels": 4},
                            {"_component_": "toy_components:TinyAutoencoder", "channels": 4})  # fmt: skip
    with pytest.raises(jukebox_pl.UntrustedCodeError):
        jukebox_pl.load(folder)
    assert not marker.exists()
    model = jukebox_pl.load(folder, trust_code=True)
    assert marker.exists() and type(model).__module__ == "toy_components"
    assert same_weights(model, weights)


def test_a_plugins_registered_name_in_a_stored_recipe_loads_without_trust(tmp_path: Path) -> None:
    levels = [int(n) for n in torch.randint(3, 8, (3,))]
    spec = {**VQVAE, "bottleneck": {"_component_": "fsq", "levels": levels}}  # from the jukebox-pl-fsq plugin
    weights = shared_export(tmp_path / "shared", spec, spec)
    model = jukebox_pl.load(tmp_path / "shared")
    assert type(model.bottlenecks[0]).__name__ == "FSQBottleneck"
    assert model.codebook_sizes == [levels[0] * levels[1] * levels[2]] * len(model.bottlenecks)
    assert same_weights(model, weights)


def test_a_plugin_imported_before_discovery_still_counts_as_installed(tmp_path: Path) -> None:
    spec = {**VQVAE, "bottleneck": {"_component_": "fsq", "levels": [int(n) for n in torch.randint(3, 8, (2,))]}}
    weights = shared_export(tmp_path / "shared", spec, spec)
    torch.save(weights, tmp_path / "weights.pt")
    code = textwrap.dedent(f"""
        import torch
        import jukebox_pl_fsq  # registers `fsq` by being imported, before any lookup discovers the plugins
        import jukebox_pl
        from jukebox_pl import registry
        model, weights = jukebox_pl.load({str(tmp_path / "shared")!r}), torch.load({str(tmp_path / "weights.pt")!r})
        assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in weights.items())
        print(registry.find("fsq").provider)
    """)  # fmt: skip
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "jukebox-pl-fsq"


@pytest.fixture
def registered_at_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A module that registers vqvae `NAME` when imported, as a module a user's dotted path imports may; yields
    (module, NAME), and takes the name out of the registry afterwards."""
    module, name = f"registers_{tmp_path.name}", f"handy_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""
        from jukebox_pl.registry import register
        from toy_components import TinyAutoencoder


        @register("vqvae", "{name}")
        class Handy(TinyAutoencoder):
            \"\"\"Registered when imported.\"\"\"
    """))  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module, name
    registry.REGISTRY._table["vqvae"].pop(name, None)  # the global registry outlives the test


def test_a_name_registered_at_run_time_by_an_imported_module_needs_trust(
    tmp_path: Path, registered_at_run_time: tuple[str, str]
) -> None:
    module, name = registered_at_run_time
    registry.find(f"{module}:Handy")  # the user's own recipe names it by dotted path: its module registers `name`
    spec = {"_component_": name, "channels": 6}
    weights = shared_export(tmp_path / "shared", spec, spec)
    with pytest.raises(jukebox_pl.UntrustedCodeError) as error:
        jukebox_pl.load(tmp_path / "shared")
    assert str(error.value) == (
        f"{tmp_path / 'shared' / 'recipe.yaml'}: model.vqvae._component_: vqvae '{name}' ({module}:Handy) is "
        f"registered by {module} (not installed), which is neither jukebox-pl nor an installed plugin; {UNTRUSTED}"
    )
    assert same_weights(jukebox_pl.load(tmp_path / "shared", trust_code=True), weights)


def test_a_stored_recipe_cannot_pass_arguments_its_component_does_not_declare(tmp_path: Path) -> None:
    width = int(torch.randint(4, 64, ()))
    spec = {**VQVAE, "width": str(width), "command": f"touch {tmp_path / 'ran'}",
            "bottleneck": {"_component_": "ema_vq", "codebook_size": width, "shell": True}}  # fmt: skip
    export(registry.build(None, VQVAE), tmp_path / "shared", {"model": {"vqvae": spec}}, "model.vqvae")
    with pytest.raises(jukebox_pl.RecipeError) as error:
        jukebox_pl.load(tmp_path / "shared")
    recipe = tmp_path / "shared" / "recipe.yaml"
    lines = str(error.value).splitlines()
    assert lines[:2] == [
        "the recipe has 3 problems:",
        f"  {recipe}: model.vqvae.width: expected int, got '{width}' (str)",
    ]
    assert lines[2].startswith(f"  {recipe}: model.vqvae.command: unknown argument 'command' of vqvae 'tiny_vqvae'")
    assert lines[3].startswith(
        f"  {recipe}: model.vqvae.bottleneck.shell: unknown argument 'shell' of bottleneck 'ema_vq'"
    )
    assert len(lines) == 4


def test_the_same_payload_in_a_checkpoints_stored_recipe_is_refused_by_the_api_and_the_cli(
    run_cli, tmp_path: Path, marker: Path
) -> None:
    checkpoint = train_checkpoint(tmp_path / "shared.ckpt", spec=system_call(marker))
    message = f"{checkpoint}: model._component_: 'os:system' {FORBIDDEN} 'os'; {UNTRUSTED}"
    with pytest.raises(jukebox_pl.UntrustedCodeError) as error:
        jukebox_pl.load(checkpoint)
    assert str(error.value) == message
    code, out, err = run_cli("export", checkpoint, tmp_path / "exported")
    assert (code, out, err) == (2, "", f"error: {message}\n")
    assert not marker.exists() and not (tmp_path / "exported").exists()


@pytest.mark.parametrize("where", ["before", "after"], ids=["--trust-code-export", "export---trust-code"])
def test_exporting_a_checkpoint_whose_recipe_names_a_dotted_path_needs_trust_code(
    run_cli, tmp_path: Path, planted: str, marker: Path, where: str
) -> None:
    model = registry.build(None, {"_component_": "toy_components:TinyAutoencoder", "channels": 4})
    spec = {"_component_": f"{planted}:Model", "channels": 4}
    checkpoint = train_checkpoint(tmp_path / "shared.ckpt", spec=spec, state=model.state_dict())
    code, _, err = run_cli("export", checkpoint, tmp_path / "exported")
    assert code == 2 and err.startswith(f"error: {checkpoint}: model._component_: '{planted}:Model' {FORBIDDEN}")
    assert not marker.exists() and not (tmp_path / "exported").exists()
    command = ["--trust-code", "export"] if where == "before" else ["export", "--trust-code"]
    code, _, err = run_cli(*command, checkpoint, tmp_path / "exported")
    assert code == 0, err
    assert marker.exists()
    assert same_weights(jukebox_pl.load(tmp_path / "exported", trust_code=True), model.state_dict())


def test_no_dotted_paths_refuses_a_stored_dotted_path_even_when_code_is_trusted(
    run_cli, tmp_path: Path, planted: str, marker: Path
) -> None:
    checkpoint = train_checkpoint(tmp_path / "shared.ckpt", spec={"_component_": f"{planted}:Model", "channels": 4})
    code, _, err = run_cli("--no-dotted-paths", "export", "--trust-code", checkpoint, tmp_path / "exported")
    assert code == 2
    assert err.startswith(f"error: {checkpoint}: model._component_: '{planted}:Model' {FORBIDDEN} '{planted}', and "
                          "dotted paths are forbidden by --no-dotted-paths")  # fmt: skip
    with trust.forbid_dotted_paths(), pytest.raises(jukebox_pl.RegistryError, match="forbidden by --no-dotted"):
        jukebox_pl.load(checkpoint, trust_code=True)
    assert not marker.exists() and planted not in sys.modules


def test_sampling_from_a_downloaded_folder_runs_its_code_only_with_trust_code(
    run_cli, tmp_path: Path, planted: str, marker: Path
) -> None:
    downloaded = tmp_path / "downloaded"
    shared_export(downloaded / "vqvae" / "model", {**VQVAE, "_component_": f"{planted}:VQVAE"}, VQVAE)
    export_model("prior", TOP, downloaded / "top_prior" / "model", 1, VOCABULARIES)
    export_model("prior", UPSAMPLER, downloaded / "upsampler" / "model", 2, VOCABULARIES)
    command = ["sample", "ancestral", f"vars.models={downloaded}", f"output_dir={tmp_path / 'run'}", "seconds=0.1",
               "n_samples=1", "progress=false", "artist=Alice Cooper", "genre=rock", "lyrics=la la la"]  # fmt: skip
    code, _, err = run_cli(*command)
    assert code == 2
    assert err == (
        f"error: {downloaded / 'vqvae' / 'model' / 'recipe.yaml'}: model.vqvae._component_: '{planted}:VQVAE' "
        f"{FORBIDDEN} '{planted}'; {UNTRUSTED}\n"
    )
    assert not marker.exists() and planted not in sys.modules and not list(tmp_path.glob("run/**/*.wav"))
    code, _, err = run_cli(*command, "--trust-code")
    assert code == 0, err
    assert marker.exists() and list(tmp_path.glob("run/level_0/*.wav"))


def test_fine_tuning_from_a_downloaded_prior_refuses_the_code_its_recipe_names(
    run_cli, tmp_path: Path, marker: Path
) -> None:
    base = tmp_path / "downloaded" / "prior"
    shared_export(base, {**TOP, "lyrics": system_call(marker)}, TOP, kind="prior")
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(yaml.safe_dump({
        "pipeline": "finetune", "output_dir": str(tmp_path / "run"), "init_from": str(base),
        "new_artists": ["Nina Simone"], "new_genres": [],
        "data": {"_component_": "code_shards", "path": str(tmp_path / "codes"), "level": 1, "n_ctx": 32},
    }))  # fmt: skip
    code, _, err = run_cli("run", recipe)
    assert code == 2
    where = f"{base / 'recipe.yaml'}: model.prior.lyrics._component_"
    assert err == f"error: {where}: 'os:system' {FORBIDDEN} 'os'; {UNTRUSTED}\n"
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_a_run_never_builds_the_recipe_stored_in_its_checkpoint(run_cli, tmp_path: Path, marker: Path) -> None:
    recipe = tmp_path / "toy.yaml"
    model = {"_component_": "toy_components:TinyAutoencoder", "channels": 4}  # the user's own recipe: dotted paths run
    recipe.write_text(yaml.safe_dump({
        "pipeline": "train", "output_dir": str(tmp_path / "run"), "model": model,
        "data": {"_component_": "sine_tones", "batch_size": 4, "train_size": 8, "val_size": 4, "sample_length": 256},
        "loggers": [],
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False},
    }))  # fmt: skip
    assert run_cli("run", recipe)[0] == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["jukebox_pl"]["recipe"] = json.dumps({"model": system_call(marker)})
    torch.save(checkpoint, last)
    with pytest.raises(jukebox_pl.UntrustedCodeError):
        jukebox_pl.load(last)
    code, out, err = run_cli("run", recipe, "trainer.max_steps=4")
    assert code == 0, err
    assert out.split("resumed_from")[1].split()[0] == str(last)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 4 and json.loads(resumed["jukebox_pl"]["recipe"])["model"] == model
    assert not marker.exists()


def test_the_model_of_every_packaged_training_recipe_is_built_from_installed_code_only() -> None:
    """What the demo and every packaged recipe export loads without trust: their models name registered components."""
    from omegaconf import OmegaConf

    from jukebox_pl.pipelines.train import model_entry

    checked = []
    for name in recipes.packaged_recipes():
        recipe = recipes.load(name)
        if recipe.config.get("pipeline") != "train":
            continue
        key, spec = model_entry(OmegaConf.to_container(recipe.config.model, resolve=True))
        with trust.installed_components_only():
            recipe_validation.validate_spec(spec, key, recipe.source)
        checked.append(name)
    assert {"vqvae/tiny_demo", "prior/top_tiny_demo", "prior/upsampler_tiny_demo"} <= set(checked)
