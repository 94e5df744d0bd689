"""Recipes: composition with base:, overrides, component swaps, validation before building."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from jukebox_pl import recipe_validation, recipes
from jukebox_pl.errors import RecipeError, RecipeWarning

TOY = "toy_components:TinyAutoencoder"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def toy_recipe(tmp_path: Path) -> Path:
    return write(
        tmp_path / "toy.yaml",
        f"""
        pipeline: train
        output_dir: {tmp_path / "run"}
        model:
          _component_: {TOY}
          channels: 4
          stride: 2
        data:
          _component_: sine_tones
          batch_size: 2
        trainer:
          max_steps: 2
        """,
    )


def test_base_files_compose_in_order_and_later_files_win(tmp_path):
    a, b, c = (random.randint(1, 1000) for _ in range(3))
    write(tmp_path / "parts" / "first.yaml", f"x: {a}\ny: {a}\nz: {a}\n")
    write(tmp_path / "parts" / "second.yaml", f"y: {b}\nz: {b}\n")
    main = write(tmp_path / "main.yaml", f"base: [parts/first.yaml, parts/second]\nz: {c}\n")
    recipe = recipes.load(str(main))
    assert recipe.resolved() == {"x": a, "y": b, "z": c}
    assert recipe.origin("x").endswith("first.yaml")
    assert recipe.origin("y").endswith("second.yaml")
    assert recipe.origin("z").endswith("main.yaml")


def test_nested_bases_resolve_relative_to_the_file_that_names_them(tmp_path):
    value = random.randint(1, 10**6)
    write(tmp_path / "deep" / "leaf.yaml", f"leaf: {value}\n")
    write(tmp_path / "deep" / "middle.yaml", "base: leaf.yaml\nmiddle: ${leaf}\n")
    main = write(tmp_path / "main.yaml", "base: [deep/middle.yaml]\ntop: ${middle}\n")
    assert recipes.load(str(main)).resolved() == {"leaf": value, "middle": value, "top": value}


def test_packaged_recipe_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = recipes.load("common/trainer_cpu")
    assert recipe.resolved()["trainer"]["accelerator"] == "cpu"
    main = write(tmp_path / "elsewhere" / "r.yaml", "base: [common/trainer_cpu]\ntrainer: {max_steps: 3}\n")
    resolved = recipes.load(str(main)).resolved()
    assert resolved["trainer"]["accelerator"] == "cpu" and resolved["trainer"]["max_steps"] == 3


def test_unknown_recipe_name_suggests_packaged_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="did you mean 'common/trainer_cpu'"):
        recipes.load("common/trainer_cpo")


def test_cyclic_bases_are_refused_with_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match=r"cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        recipes.load(str(tmp_path / "a.yaml"))


def test_invalid_yaml_names_the_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "a: [1, 2\n")
    with pytest.raises(RecipeError, match="bad.yaml: not a readable YAML recipe"):
        recipes.load(str(bad))


def test_overrides_parse_yaml_values_and_keep_equals_signs(tmp_path):
    main = write(tmp_path / "r.yaml", "a: {b: 1, c: 2}\nname: x\n")
    rate = random.uniform(1e-5, 1e-3)
    recipe = recipes.load(
        str(main),
        [
            "a.b=3",
            f"a.rate={rate}",
            "a.items=[1, 2, 3]",
            "a.map={k: v, n: 2}",
            "name=key=value",
            "~a.c",
            "new.deep=true",
        ],
    )
    assert recipe.resolved() == {
        "a": {"b": 3, "rate": pytest.approx(rate), "items": [1, 2, 3], "map": {"k": "v", "n": 2}},
        "name": "key=value",
        "new": {"deep": True},
    }
    assert recipe.origin("a.b") == "command line"
    assert recipe.origin("name").endswith("r.yaml") is False


def test_overrides_reach_into_lists_append_and_delete_items(tmp_path):
    main = write(tmp_path / "r.yaml", "items: [{n: 1}, {n: 2}, {n: 3}]\n")
    value = random.randint(10, 99)
    recipe = recipes.load(str(main), [f"items.1.n={value}", "items.3={n: 4}", "~items.0"])
    assert recipe.resolved() == {"items": [{"n": value}, {"n": 3}, {"n": 4}]}
    with pytest.raises(RecipeError, match="cannot set 'items.7'"):
        recipes.load(str(main), ["items.7={n: 8}"])


def test_malformed_overrides_are_refused(tmp_path):
    main = write(tmp_path / "r.yaml", "a: {b: 1}\n")
    with pytest.raises(RecipeError, match="neither key=value nor ~key"):
        recipes.load(str(main), ["a.b"])
    with pytest.raises(RecipeError, match=r"cannot delete 'a.bb': no such key \(did you mean 'b'"):
        recipes.load(str(main), ["~a.bb"])


def test_swapping_a_component_drops_arguments_the_new_one_does_not_accept(toy_recipe):
    with pytest.warns(RecipeWarning, match=r"model: swapping .*make_autoencoder' dropped .*: stride"):
        recipe = recipes.load(str(toy_recipe), ["model=toy_components:make_autoencoder"])
    assert recipe.resolved()["model"] == {"_component_": "toy_components:make_autoencoder", "channels": 4}
    recipe_validation.validate(recipe)


def test_swapping_through_the_component_key_behaves_the_same(toy_recipe):
    with pytest.warns(RecipeWarning, match="dropped"):
        recipe = recipes.load(str(toy_recipe), ["model._component_=toy_components:make_autoencoder"])
    assert "stride" not in recipe.resolved()["model"]


def test_a_swap_in_a_child_recipe_keeps_only_fitting_inherited_arguments(toy_recipe, tmp_path):
    child = write(
        tmp_path / "child.yaml",
        f"base: {toy_recipe.name}\nmodel:\n  _component_: toy_components:make_autoencoder\n  channels: 16\n",
    )
    with pytest.warns(RecipeWarning, match=f"{child}: model: swapping"):
        recipe = recipes.load(str(child))
    assert recipe.resolved()["model"] == {"_component_": "toy_components:make_autoencoder", "channels": 16}


def test_arguments_written_alongside_a_swap_are_still_checked(toy_recipe, tmp_path):
    child = write(
        tmp_path / "child.yaml",
        f"base: {toy_recipe.name}\nmodel:\n  _component_: toy_components:make_autoencoder\n  chanels: 16\n",
    )
    with pytest.warns(RecipeWarning):
        recipe = recipes.load(str(child))
    with pytest.raises(RecipeError, match=rf"{child}: model.chanels: unknown argument .*did you mean 'channels'"):
        recipe_validation.validate(recipe)


def test_a_misspelt_key_is_reported_with_file_key_path_and_suggestion(toy_recipe, tmp_path):
    child = write(tmp_path / "child.yaml", f"base: {toy_recipe.name}\ndata:\n  batch_sise: 4\n")
    with pytest.raises(RecipeError) as caught:
        recipe_validation.validate(recipes.load(str(child)))
    message = str(caught.value)
    assert f"{child}: data.batch_sise: unknown argument 'batch_sise' of datamodule 'sine_tones'" in message
    assert "did you mean 'batch_size'" in message


def test_every_problem_is_reported_in_one_error(toy_recipe):
    recipe = recipes.load(str(toy_recipe), ["model.chanels=3", "data.batch_size=two", "trainer.max_step=3"])
    with pytest.raises(RecipeError) as caught:
        recipe_validation.validate(recipe)
    message = str(caught.value)
    assert "3 problems" in message
    assert "model.chanels: unknown argument" in message
    assert "data.batch_size: expected int, got 'two' (str)" in message
    assert "trainer.max_step: unknown argument 'max_step' of pytorch_lightning" in message
    assert "did you mean 'max_steps'" in message


def test_the_trainer_section_is_checked_against_the_lightning_trainer(toy_recipe):
    with pytest.raises(RecipeError, match=r"trainer.precision: expected .*got 'bf17-mixed'"):
        recipe_validation.validate(recipes.load(str(toy_recipe), ["trainer.precision=bf17-mixed"]))
    with pytest.raises(RecipeError, match="trainer.callbacks: 'callbacks' .* is set by jukebox-pl"):
        recipe_validation.validate(recipes.load(str(toy_recipe), ["trainer.callbacks=[]"]))
    recipe_validation.validate(recipes.load(str(toy_recipe), ["trainer.precision=bf16-mixed", "trainer.devices=1"]))


def test_a_missing_required_argument_is_reported(tmp_path):
    main = write(tmp_path / "r.yaml", f"pipeline: train\nmodel: {{_component_: '{TOY}'}}\n")
    with pytest.raises(RecipeError, match=r"r.yaml: data: missing required argument 'data' of pipeline 'train'"):
        recipe_validation.validate(recipes.load(str(main)))


def test_all_mandatory_values_are_reported_at_once(toy_recipe):
    recipe = recipes.load(str(toy_recipe), ["model.lr=???", "data.seed=???", "trainer.max_steps=???"])
    with pytest.raises(RecipeError) as caught:
        recipe_validation.validate(recipe)
    message = str(caught.value)
    for key in ("model.lr", "data.seed", "trainer.max_steps"):
        assert f"command line: {key}: mandatory value '???' is not set" in message


def test_interpolation_to_a_missing_key_names_the_key_and_file(toy_recipe):
    with pytest.raises(RecipeError, match=r"command line: output_dir: Interpolation key 'paths.root' not found"):
        recipe_validation.validate(recipes.load(str(toy_recipe), ["output_dir=${paths.root}/run"]))


def test_unknown_component_and_pipeline_are_reported_with_suggestions(toy_recipe):
    with pytest.raises(
        RecipeError, match=r"data._component_: unknown component 'sine_tone' \(did you mean 'sine_tones'"
    ):
        recipe_validation.validate(recipes.load(str(toy_recipe), ["data=sine_tone"]))
    with pytest.raises(RecipeError, match=r"pipeline: unknown pipeline 'trian' \(did you mean 'train'"):
        recipe_validation.validate(recipes.load(str(toy_recipe), ["pipeline=trian"]))


def test_yaml_lists_fit_tuple_annotations_and_strings_fit_paths(toy_recipe, tmp_path):
    shape = [random.randint(1, 9) for _ in range(3)]
    good = f"model.activation={{_component_: 'toy_components:ShapedNoise', shape: {shape}, root: {tmp_path}, scale: 3}}"
    checked = recipe_validation.validate(recipes.load(str(toy_recipe), [good]))
    assert any("ShapedNoise" in description for description in checked)
    bad = "model.activation={_component_: 'toy_components:ShapedNoise', shape: [a], root: 5, scale: x}"
    with pytest.raises(RecipeError) as caught:
        recipe_validation.validate(recipes.load(str(toy_recipe), [bad]))
    message = str(caught.value)
    assert "3 problems" in message
    assert "model.activation.shape: expected tuple[int, ...], got ['a']" in message
    assert "model.activation.root: expected pathlib.Path, got 5 (int)" in message
    assert "model.activation.scale: expected" in message


def test_a_nested_component_of_the_wrong_class_is_reported(toy_recipe):
    # TinyAutoencoder's activation is annotated nn.Module; a datamodule does not fit there.
    recipe = recipes.load(str(toy_recipe), ["model.activation={_component_: sine_tones}"])
    with pytest.raises(RecipeError, match=r"model.activation._component_: datamodule 'sine_tones' .* is not a Module"):
        recipe_validation.validate(recipe)


def test_components_inside_lists_are_each_validated(toy_recipe):
    recipe = recipes.load(str(toy_recipe), ["callbacks=[{_component_: grad_norm, norm_typ: 2}]"])
    with pytest.raises(RecipeError, match=r"callbacks.0.norm_typ: unknown argument .*did you mean 'norm_type'"):
        recipe_validation.validate(recipe)


@pytest.mark.parametrize("key", ["a[0", "a..b", ".a", "a.", "a.c.[0]", "[!-}\n9"])
def test_an_override_key_that_is_not_a_key_path_is_refused_not_half_applied(tmp_path, key):
    main = write(tmp_path / "r.yaml", "a: {b: 1, c: [1, 2]}\n")
    with pytest.raises(RecipeError, match=r"is not a key path such as model.channels"):
        recipes.load(str(main), [f"{key}=1"])
    with pytest.raises(RecipeError, match=r"is not a key path"):
        recipes.load(str(main), [f"~{key}"])
    assert recipes.load(str(main), ["a[b]=2"]).resolved()["a"]["b"] == 2  # brackets that close still work


def test_overrides_through_lists_and_unresolved_interpolations_are_recipe_errors(tmp_path):
    main = write(tmp_path / "r.yaml", "a: {b: 1, c: [1, 2]}\n")
    with pytest.raises(RecipeError, match=r"cannot set 'a.c.name.x': Index 'name' \(str\) is not an int"):
        recipes.load(str(main), ["a.c.name.x=1"])
    with pytest.raises(RecipeError, match=r"cannot set 'a.c.:'"):
        recipes.load(str(main), ["a.c.:=1"])
    value = random.randint(1, 1000)
    # The first override leaves an interpolation to a key that does not exist; the second replaces it.
    assert recipes.load(str(main), ["x=${missing}", f"x={value}"]).resolved()["x"] == value


def test_a_value_file_path_with_a_nul_or_an_unknown_user_is_a_recipe_error(tmp_path):
    main = write(tmp_path / "r.yaml", "a: 1\n")
    with pytest.raises(RecipeError, match=r"cannot read '@x\\x00y' \(ValueError: embedded null byte\)"):
        recipes.load(str(main), ["lyrics=@x\x00y"])
    with pytest.raises(RecipeError, match=r"cannot read '@~no_such_user_here/x' \(RuntimeError"):
        recipes.load(str(main), ["lyrics=@~no_such_user_here/x"])


@pytest.mark.parametrize("text", ["a\\${b}", "\\${", "two \\\\${x} and ${y}", "end \\"])
def test_file_text_with_backslashes_before_an_interpolation_stays_literal(tmp_path, text):
    main = write(tmp_path / "r.yaml", "a: 1\n")
    (tmp_path / "lyrics.txt").write_text(text)
    recipe = recipes.load(str(main), [f"lyrics=@{tmp_path / 'lyrics.txt'}"])
    assert recipe.resolved()["lyrics"] == text
    resolved = write(tmp_path / "resolved.yaml", recipe.to_yaml())
    assert recipes.load(str(resolved)).resolved()["lyrics"] == text


def test_an_interpolation_that_puts_a_node_inside_itself_is_a_recipe_error(tmp_path):
    main = write(tmp_path / "r.yaml", "a: [[1]]\n")
    recipe = recipes.load(str(main), ["a.0=${oc.select:a}"])
    with pytest.raises(RecipeError, match=r"r.yaml: an interpolation .* places a node inside itself"):
        recipe.resolved()


def test_a_list_over_a_mapping_of_a_base_is_refused_with_file_and_key(tmp_path):
    write(tmp_path / "base.yaml", "vars: {rate: 100}\nmodel: {layers: [1, 2]}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nvars: []\n")
    with pytest.raises(RecipeError, match=r"child.yaml: vars: a list cannot be merged over the mapping"):
        recipes.load(str(child))
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel: {layers: {n: 2}}\n")
    with pytest.raises(RecipeError, match=r"child.yaml: model.layers: a mapping cannot be merged over the list"):
        recipes.load(str(child))


def test_a_mandatory_value_can_be_deleted(tmp_path):
    main = write(tmp_path / "r.yaml", "vars: {data_dir: '???', rate: 1}\ndata: {path: '${vars.data_dir}/shards'}\n")
    recipe = recipes.load(str(main), ["~vars.data_dir", "~data.path"])
    assert recipe.resolved() == {"vars": {"rate": 1}, "data": {}}
