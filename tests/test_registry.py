"""The registry: registration rules, lookups with suggestions, building specs."""

from __future__ import annotations

import inspect
import random

import pytest
import torch
from torch import nn

from jukebox_pl import registry, signatures
from jukebox_pl.errors import RegistryError
from jukebox_pl.pipelines.train import TrainPipeline


class Scale(nn.Module):
    """Multiply by a constant."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


class Chain(nn.Module):
    """Apply layers in order."""

    def __init__(self, layers: list[nn.Module], bias: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x + self.bias


def test_registered_class_is_found_and_built_with_its_arguments(fresh_registry):
    fresh_registry.register("loss", "scale")(Scale)
    factor = random.uniform(0.5, 4.0)
    built = fresh_registry.build("loss", {"_component_": "scale", "factor": factor})
    x = torch.randn(5)
    assert isinstance(built, Scale)
    torch.testing.assert_close(built(x), factor * x)
    assert fresh_registry.get("loss", "scale").summary == "Multiply by a constant."
    assert fresh_registry.names("loss") == ["scale"]


def test_builder_function_is_registered_and_its_result_type_checked(fresh_registry):
    @fresh_registry.register("loss", "doubled")
    def doubled() -> Scale:
        """Scale by two."""
        return Scale(2.0)

    assert fresh_registry.build("loss", "doubled").factor == 2.0

    @fresh_registry.register("loss", "sneaky")
    def sneaky():
        return "not a module"

    with pytest.raises(RegistryError, match=r"loss 'sneaky' .* returned str, but a loss must be a torch.nn"):
        fresh_registry.build("loss", "sneaky")


def test_duplicate_name_is_refused_naming_both_providers(fresh_registry):
    fresh_registry.register("loss", "scale")(Scale)

    class OtherScale(Scale):
        pass

    with pytest.raises(RegistryError) as caught:
        fresh_registry.register("loss", "scale")(OtherScale)
    message = str(caught.value)
    assert "registered twice" in message
    assert "test_registry:Scale" in message and "OtherScale" in message
    assert fresh_registry.get("loss", "scale").target is Scale


def test_registering_the_same_class_again_is_not_a_duplicate(fresh_registry):
    # Re-importing (reloading) a module registers the same path again; that must not fail.
    fresh_registry.register("loss", "scale")(Scale)
    fresh_registry.register("loss", "scale")(Scale)
    assert fresh_registry.names("loss") == ["scale"]


def test_class_of_the_wrong_base_is_refused(fresh_registry):
    with pytest.raises(RegistryError, match=r"a datamodule must subclass .*LightningDataModule"):
        fresh_registry.register("datamodule", "scale")(Scale)
    with pytest.raises(RegistryError, match="annotated to return"):

        @fresh_registry.register("callback", "bad")
        def bad() -> Scale:
            return Scale()

    assert fresh_registry.names("datamodule") == []


def test_unknown_name_suggests_the_closest_registered_names(fresh_registry):
    fresh_registry.register("loss", "scale")(Scale)
    fresh_registry.register("loss", "chain")(Chain)
    with pytest.raises(RegistryError) as caught:
        fresh_registry.get("loss", "scael")
    assert "did you mean 'scale'" in str(caught.value)
    assert "registered loss components: chain, scale" in str(caught.value)


def test_unknown_name_in_the_wrong_kind_says_which_kind_has_it(fresh_registry):
    fresh_registry.register("loss", "scale")(Scale)
    with pytest.raises(RegistryError, match="'scale' is a loss component"):
        fresh_registry.get("bottleneck", "scale")


def test_unknown_kind_is_refused_with_a_suggestion(fresh_registry):
    with pytest.raises(RegistryError, match="did you mean 'vqvae'"):
        fresh_registry.register("vqvea", "x")(Scale)


def test_nested_specs_are_built_recursively(fresh_registry):
    fresh_registry.register("loss", "scale")(Scale)
    fresh_registry.register("loss", "chain")(Chain)
    factors = [random.uniform(-2, 2) for _ in range(3)]
    bias = random.uniform(-1, 1)
    spec = {"_component_": "chain", "bias": bias, "layers": [{"_component_": "scale", "factor": f} for f in factors]}
    chain = fresh_registry.build("loss", spec)
    x = torch.randn(7)
    torch.testing.assert_close(chain(x), x * factors[0] * factors[1] * factors[2] + bias)


def test_build_without_recursion_passes_nested_specs_as_they_are(fresh_registry):
    received = {}

    @fresh_registry.register("loss", "keeper")
    def keeper(inner: dict) -> Scale:
        received.update(inner)
        return Scale()

    fresh_registry.build("loss", {"_component_": "keeper", "inner": {"_component_": "missing_thing"}}, recursive=False)
    assert received == {"_component_": "missing_thing"}


def test_build_with_an_unknown_argument_names_the_component(fresh_registry):
    fresh_registry.register("loss", "scale")(Scale)
    with pytest.raises(RegistryError, match=r"cannot build loss 'scale' .*unexpected keyword argument 'factr'"):
        fresh_registry.build("loss", {"_component_": "scale", "factr": 2})


def test_dotted_path_reaches_unregistered_objects(fresh_registry):
    built = fresh_registry.build("loss", {"_component_": "torch.nn:Tanh"})
    assert isinstance(built, nn.Tanh)
    with pytest.raises(RegistryError, match="has no attribute 'Tanhh'.*did you mean 'Tanh'"):
        fresh_registry.get("loss", "torch.nn:Tanhh")
    with pytest.raises(RegistryError, match="cannot import module 'no_such_module_xyz'"):
        fresh_registry.get("loss", "no_such_module_xyz:Thing")
    with pytest.raises(RegistryError, match="must subclass"):
        fresh_registry.get("callback", "torch.nn:Tanh")


def test_kind_prefix_disambiguates_a_name_used_by_two_kinds(fresh_registry):
    fresh_registry.register("loss", "shared")(Scale)
    fresh_registry.register("bottleneck", "shared")(Chain)
    with pytest.raises(RegistryError, match="several kinds; write 'bottleneck/shared' or 'loss/shared'"):
        fresh_registry.find("shared")
    assert fresh_registry.find("loss/shared").target is Scale
    assert fresh_registry.find("bottleneck/shared").target is Chain


def test_a_new_kind_can_be_added_with_its_base(fresh_registry):
    fresh_registry.add_kind("activation", nn.Module)
    fresh_registry.register("activation", "scale")(Scale)
    assert fresh_registry.names("activation") == ["scale"]
    with pytest.raises(RegistryError, match="already exists"):
        fresh_registry.add_kind("loss", nn.Module)


def test_global_registry_provides_the_core_train_pipeline():
    component = registry.get("pipeline", "train")
    assert component.target is TrainPipeline
    assert component.provider == "jukebox-pl"
    assert "train" in registry.names("pipeline")


class ScaleWithBias(Scale):
    """A subclass that adds an argument and hands the rest to its parent, as the Lightning models hand theirs to
    their networks."""

    def __init__(self, bias: float = 0.0, **scale: float) -> None:
        super().__init__(**scale)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias


def test_a_preset_sees_the_arguments_a_class_hands_on_to_its_parent() -> None:
    factor, bias = random.uniform(0.5, 4.0), random.uniform(-1, 1)
    builder = signatures.preset(ScaleWithBias, "scale_preset", "A scale with other defaults.", factor=factor)
    assert list(inspect.signature(builder).parameters) == ["bias", "factor"]
    x = torch.randn(5)
    torch.testing.assert_close(builder(bias=bias)(x), factor * x + bias)
    torch.testing.assert_close(builder(factor=2.0)(x), 2.0 * x)
    with pytest.raises(RegistryError, match="no argument factr"):
        signatures.preset(ScaleWithBias, "typo_preset", "A typo.", factr=2.0)
