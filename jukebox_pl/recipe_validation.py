"""Recipe validation: every component's keys and values checked against its signature, before anything is built.

`validate` checks a whole recipe (the runner's keys, the pipeline's arguments, each nested
``{_component_: NAME, ...}`` against what NAME accepts, values against type hints) and
reports every problem at once, each with the file or override that set it; `validate_spec`
checks one stored component spec (a checkpoint's model) the same way.

Example::

    from jukebox_pl.recipes import load
    checked = validate(load("vqvae/tiny_demo"))  # the components it checked
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from jukebox_pl import registry, trust
from jukebox_pl.errors import RecipeError, RegistryError, UntrustedCodeError, did_you_mean
from jukebox_pl.recipes import (
    COMPONENT_KEY,
    MISSING,
    RUNNER_KEYS,
    KwargsOf,
    Recipe,
    refuse_dotted_paths,
)
from jukebox_pl.recipes import arguments as keyword_arguments
from jukebox_pl.signatures import SpecOf, annotation_marker, object_path, parameters_of, type_hints
from jukebox_pl.trust import walk


@dataclass
class _Problems:
    recipe: Recipe
    lines: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    untrusted: list[str] = field(default_factory=list)  # names refused by trust.installed_components_only

    def add(self, path: str, message: str) -> None:
        self.lines.append(self.where(path) + message)

    def where(self, path: str) -> str:
        return f"{self.recipe.origin(path)}: {path or '<top>'}: "

    def raise_any(self) -> None:
        """One error for everything found: the refused names first, as nothing else matters until they are allowed."""
        trust.refuse_untrusted(self.untrusted)
        if self.lines:
            count = len(self.lines)
            raise RecipeError(
                f"the recipe has {count} problem{'s' if count > 1 else ''}:\n  " + "\n  ".join(self.lines)
            )


def validate(recipe: Recipe) -> list[str]:
    """Check the whole recipe before anything is built; return the components checked.

    Missing ``???`` values are reported together; then every component's arguments (and
    every ``KwargsOf`` section such as ``trainer``) are bound against the signatures: an
    unknown key, a missing required argument or a wrong type is reported with the file,
    the key path and the nearest valid names. All problems come in one RecipeError.
    """
    if trust.dotted_paths_forbidden():
        refuse_dotted_paths(recipe)
    written = OmegaConf.to_container(recipe.config, resolve=False)
    missing = [path for path, value in walk(written) if value == MISSING]
    if missing:
        lines = [f"{recipe.origin(key)}: {key}: mandatory value '???' is not set" for key in missing]
        raise RecipeError(
            "the recipe leaves mandatory values unset (set them with key=value):\n  " + "\n  ".join(lines)
        )
    resolved = recipe.resolved()
    problems = _Problems(recipe)
    pipeline_name = resolved.get("pipeline")
    if not isinstance(pipeline_name, str) or not pipeline_name:
        raise RecipeError(
            f"{recipe.source}: pipeline: missing; a recipe names what `run` executes, e.g. "
            f"'pipeline: train' (pipelines: {', '.join(registry.names('pipeline'))})"
        )
    arguments = {k: v for k, v in resolved.items() if k not in RUNNER_KEYS}
    try:
        pipeline = registry.get("pipeline", pipeline_name)
    except RegistryError as exc:
        raise RecipeError(f"{recipe.origin('pipeline')}: pipeline: {exc}") from None
    shared = resolved.get("vars")
    if shared is not None and not isinstance(shared, dict):
        problems.add("vars", f"vars: holds named values for ${{vars.NAME}}, so it must be a mapping, not {shared!r}")
    output_dir = resolved.get("output_dir")
    if output_dir is not None and not isinstance(output_dir, str):
        problems.add("output_dir", f"expected a directory path, got {output_dir!r}")
    _check_call(pipeline.target, pipeline.describe(), arguments, "", problems, ())
    problems.checked.insert(0, pipeline.describe())
    problems.raise_any()
    return problems.checked


def validate_spec(spec: Any, key: str, source: str) -> None:
    """Check one component spec at `key` of a recipe stored in `source` (the model of an export or checkpoint)
    as `validate` checks a recipe's components, before anything is built.

    Unknown arguments, missing ones and wrong types come in one RecipeError; names that
    ``trust.installed_components_only`` refuses come first, in one UntrustedCodeError.
    """
    problems = _Problems(Recipe(OmegaConf.create({}), source))
    if isinstance(spec, str):
        spec = {COMPONENT_KEY: spec}
    if not isinstance(spec, Mapping) or COMPONENT_KEY not in spec:
        raise RecipeError(
            f"{source}: {key}: a component spec is a name or a mapping with '{COMPONENT_KEY}', not {spec!r}"
        )
    _check_spec(spec, key, problems, None)
    problems.raise_any()


def _check_spec(
    spec: Mapping[str, Any], path: str, problems: _Problems, annotation: Any, marker: SpecOf | None = None
) -> None:
    name = spec[COMPONENT_KEY]
    key = f"{path}.{COMPONENT_KEY}" if path else COMPONENT_KEY
    if not isinstance(name, str):
        problems.add(key, f"a component name must be a string, not {name!r}")
        return
    try:
        component = registry.find(name)
    except UntrustedCodeError as exc:
        problems.untrusted.append(problems.where(key) + str(exc))
        return
    except RegistryError as exc:
        problems.add(key, str(exc))
        return
    expected = _expected_classes(annotation)
    if expected and inspect.isclass(component.target) and not issubclass(component.target, expected):
        needed = " or ".join(c.__name__ for c in expected)
        problems.add(key, f"{component.describe()} is not a {needed}, which this argument needs")
    problems.checked.append(component.describe())
    arguments = {k: v for k, v in spec.items() if k != COMPONENT_KEY}
    _check_call(component.target, component.describe(), arguments, path, problems, marker.provided if marker else ())


def _check_call(
    target: Any, description: str, arguments: Mapping[str, Any], path: str, problems: _Problems, exclude: Sequence[str]
) -> None:
    try:
        parameters = parameters_of(target)
    except (ValueError, TypeError):
        return  # no introspectable signature: nothing to check against
    hints = type_hints(target)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    valid = [name for name in keyword_arguments(target) if name not in exclude]
    for key, value in arguments.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key in exclude:
            problems.add(key_path, f"'{key}' of {description} is set by jukebox-pl, not by the recipe")
            continue
        if key not in valid and not takes_any:
            problems.add(
                key_path,
                f"unknown argument '{key}' of {description}{did_you_mean(str(key), valid)}; "
                f"valid arguments: {', '.join(valid) or 'none'}",
            )
            continue
        _check_value(value, hints.get(key), key_path, problems)
    for name in valid:
        parameter = parameters[name]
        if parameter.default is inspect.Parameter.empty and name not in arguments:
            key_path = f"{path}.{name}" if path else name
            problems.add(key_path, f"missing required argument '{name}' of {description}")


def _check_value(value: Any, annotation: Any, path: str, problems: _Problems) -> None:
    marker = annotation_marker(annotation, SpecOf)
    if marker is not None and isinstance(value, str):
        value = {COMPONENT_KEY: value}
    if isinstance(value, Mapping) and COMPONENT_KEY in value:
        # The receiver builds a `SpecOf` spec itself, with the arguments it provides: not an object of the annotation.
        _check_spec(value, path, problems, None if marker else annotation, marker)
        return
    kwargs_of = annotation_marker(annotation, KwargsOf)
    if kwargs_of is not None and isinstance(value, Mapping):
        target = kwargs_of.resolve()
        _check_call(target, object_path(target), value, path, problems, kwargs_of.exclude)
        return
    if any(isinstance(child, Mapping) and COMPONENT_KEY in child for _, child in walk(value)):
        # A container of components (a list of callbacks): each component checks its own arguments.
        _check_components_in(value, path, problems)
        return
    error = _type_error(value, annotation)
    if error is not None:
        problems.add(path, error)


def _check_components_in(value: Any, path: str, problems: _Problems) -> None:
    if isinstance(value, Mapping) and COMPONENT_KEY in value:
        _check_spec(value, path, problems, None)
    elif isinstance(value, Mapping):
        for key, child in value.items():
            _check_components_in(child, f"{path}.{key}", problems)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_components_in(child, f"{path}.{index}", problems)


def _expected_classes(annotation: Any) -> tuple[type, ...]:
    """The classes a component must be one of to fit `annotation`; empty when unknown."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        found = [_expected_classes(member) for member in members]
        return () if any(not classes for classes in found) else tuple(c for classes in found for c in classes)
    return (annotation,) if inspect.isclass(annotation) and annotation is not typing.Any else ()


def _type_error(value: Any, annotation: Any) -> str | None:
    """Why `value` (from YAML) does not fit `annotation`, or None when it fits.

    YAML has no tuples or paths: a list fits a tuple annotation and a string fits a Path.
    """
    if annotation is None or annotation is typing.Any or annotation is inspect.Parameter.empty:
        return None
    from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

    for candidate in (value, _as_tuples(value), _as_paths(value)):
        try:
            check_type(candidate, annotation, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
            return None
        except TypeCheckError:
            continue
        except Exception:  # noqa: BLE001 - an annotation typeguard cannot evaluate is not checked
            return None
    shown = inspect.formatannotation(annotation).replace("typing.", "")
    return f"expected {shown}, got {value!r} ({type(value).__name__})"


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def _as_paths(value: Any) -> Any:
    if isinstance(value, str):
        return Path(value)
    if isinstance(value, list):
        return [_as_paths(v) for v in value]
    return value
