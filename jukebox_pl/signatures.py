"""Reading components' signatures: the arguments a class or builder function takes.

A component's arguments include those of the base classes its ``**kwargs`` reach
(`parameters_of`); an argument annotated with `SpecOf` is a component spec that the receiver
builds itself; `preset` makes a named configuration of a class with other defaults.
"""

from __future__ import annotations

import copy
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jukebox_pl.errors import RegistryError


def object_path(obj: Any) -> str:
    """``module:Qualname`` of a class or function, for messages."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


@dataclass(frozen=True)
class SpecOf:
    """``Annotated`` marker: this argument is a `kind` component spec that the receiver builds itself.

    ``build`` passes such a spec through unbuilt (a VQ-VAE builds one bottleneck per level
    from it), and the recipe validator checks it against the component's signature,
    treating `provided` arguments as set by the receiver.
    """

    kind: str
    provided: tuple[str, ...] = ()


# Base classes whose ``__init__(*args, **kwargs)`` says nothing about a component's arguments.
_FRAMEWORK_PACKAGES = frozenset({"builtins", "torch", "pytorch_lightning", "lightning", "torchmetrics"})


def inits_of(target: Any) -> list[Any]:
    """`target`'s ``__init__`` and, while each passes ``**kwargs`` on, those of the base classes it extends.

    A subclass that adds arguments and hands the rest to its parent (``def __init__(self, prompt,
    **settings)``) is checked against both signatures, not accepted blindly.
    """
    if not inspect.isclass(target):
        return [target]
    inits = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls) or cls.__module__.split(".")[0] in _FRAMEWORK_PACKAGES:
            continue
        inits.append(cls.__init__)
        if not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
        ):
            break
    return inits or [target.__init__]


def parameters_of(target: Any) -> Mapping[str, inspect.Parameter]:
    """Every parameter of `target`, with those of the base classes its ``**kwargs`` reach (`inits_of`)."""
    parameters = dict(inspect.signature(target).parameters)
    for init in inits_of(target)[1:]:
        parameters = {name: p for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        for name, parameter in list(inspect.signature(init).parameters.items())[1:]:  # [0] is self
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                parameters.setdefault(name, parameter)
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:  # reached through **kwargs: by keyword only
                parameters.setdefault(name, parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    return dict(sorted(parameters.items(), key=lambda item: item[1].kind))  # a valid signature's order


def preset(target: type, name: str, summary: str, **defaults: Any) -> Callable[..., Any]:
    """A builder of `target` with other defaults: a named configuration that recipes override key by key.

    The builder's signature is `target`'s with `defaults` filled in, so validation and
    ``jukebox-pl show`` see every argument.
    """
    signature = inspect.signature(target).replace(parameters=list(parameters_of(target).values()))
    unknown = sorted(set(defaults) - set(signature.parameters))
    if unknown:
        raise RegistryError(f"preset '{name}': {object_path(target)} has no argument {', '.join(unknown)}")

    def builder(**arguments: Any) -> Any:
        return target(**{**copy.deepcopy(defaults), **arguments})

    parameters = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p for p in signature.parameters.values()
    ]
    builder.__signature__ = signature.replace(parameters=parameters, return_annotation=target)  # type: ignore[attr-defined]
    hints = [typing.get_type_hints(init, include_extras=True) for init in reversed(inits_of(target))]
    builder.__annotations__ = {key: value for hint in hints for key, value in hint.items()} | {"return": target}
    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = sys._getframe(1).f_globals.get("__name__", __name__)
    builder.__doc__ = summary
    return builder


def type_hints(target: Any) -> dict[str, Any]:
    """The resolved annotations of `target`'s arguments, those of the base classes its ``**kwargs`` reach too."""
    hints: dict[str, Any] = {}
    for init in reversed(inits_of(target)):
        try:
            hints.update(typing.get_type_hints(init, include_extras=True))
        except Exception:  # noqa: BLE001 - unresolvable forward references: fall back to what resolves
            for name, parameter in list(inspect.signature(init).parameters.items())[1:]:
                if parameter.annotation is not inspect.Parameter.empty and not isinstance(parameter.annotation, str):
                    hints[name] = parameter.annotation
    return hints


def spec_arguments(target: Any) -> set[str]:
    """Names of `target`'s arguments annotated with `SpecOf`: left unbuilt by ``build``."""
    return {name for name, hint in type_hints(target).items() if annotation_marker(hint, SpecOf) is not None}


def annotation_marker(annotation: Any, marker: type[Any]) -> Any:
    """The `marker` (a `SpecOf`, a recipe's `KwargsOf`) inside `annotation` (also inside ``X | None``), if any."""
    for candidate in [annotation, *typing.get_args(annotation)]:
        if typing.get_origin(candidate) is typing.Annotated:
            for meta in candidate.__metadata__:
                if isinstance(meta, marker):
                    return meta
    return None
