"""The component registry: kinds, ``@register``, lookup, ``build`` and lazy plugin discovery.

Every part of jukebox-pl that a recipe can name (a VQ-VAE, a bottleneck, a prior, a
pipeline...) is registered here under a *kind* and a *name*. Third-party distributions add
components through the ``jukebox_pl.plugins`` entry-point group; those entry points are
loaded on the first lookup miss or listing, never on ``import jukebox_pl``.

Example::

    from jukebox_pl.registry import register, build

    @register("loss", "l1")
    class L1(torch.nn.Module): ...

    loss = build("loss", {"_component_": "l1"})

A dotted path (``package.module:Object``) reaches any importable object without registering
it; importing it runs that module's code, and building it calls the object with the recipe's
arguments. ``forbid_dotted_paths()`` (the command line's ``--no-dotted-paths``) or
``JUKEBOX_PL_NO_DOTTED_PATHS=1`` refuses every dotted path before anything is imported, so
that a recipe from elsewhere can reach only registered components.

A recipe stored with a model (an export's ``recipe.yaml``, a checkpoint's record) is built inside
``installed_components_only()``: there a name reaches only a component that jukebox-pl or an
installed plugin distribution registered, and a dotted path or any other name is refused before
it is imported or called, unless the user trusts the model's code (``trust_code()``, the command
line's ``--trust-code``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata as metadata
import inspect
import os
import re
import sys
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from jukebox_pl.errors import PluginWarning, RegistryError, UntrustedCodeError, did_you_mean

ENTRY_POINT_GROUP = "jukebox_pl.plugins"
CORE_DISTRIBUTION = "jukebox-pl"
COMPONENT_KEY = "_component_"
NO_PLUGINS_ENV = "JUKEBOX_PL_NO_PLUGINS"
NO_DOTTED_PATHS_ENV = "JUKEBOX_PL_NO_DOTTED_PATHS"

# Each kind's required base class, as "module:Qualname"; imported only when needed so that
# the registry itself costs nothing at import time.
DEFAULT_KINDS: dict[str, str] = {
    "vqvae": "pytorch_lightning:LightningModule",
    "bottleneck": "torch.nn:Module",
    "prior": "pytorch_lightning:LightningModule",
    "conditioner": "pytorch_lightning:LightningModule",
    "sampler": "pytorch_lightning:LightningModule",
    "datamodule": "pytorch_lightning:LightningDataModule",
    "metric": "torchmetrics:Metric",
    "callback": "pytorch_lightning:Callback",
    "pipeline": "jukebox_pl.pipelines.base:Pipeline",
    "strategy": "pytorch_lightning.strategies:Strategy",
    "loss": "torch.nn:Module",
    "optimizer": "torch.optim:Optimizer",
    "lr_scheduler": "torch.optim.lr_scheduler:LRScheduler",
}

# Modules whose import registers the built-in components. They are imported on the first
# lookup, not on `import jukebox_pl`.
CORE_MODULES: tuple[str, ...] = (
    "jukebox_pl.pipelines.train",
    "jukebox_pl.pipelines.stages",
    "jukebox_pl.data.datamodule",
    "jukebox_pl.data.codes",
    "jukebox_pl.optim",
    "jukebox_pl.vqvae.bottleneck",
    "jukebox_pl.vqvae.losses",
    "jukebox_pl.vqvae.model",
    "jukebox_pl.metrics.spectral",
    "jukebox_pl.metrics.codebook",
    "jukebox_pl.conditioners.label",
    "jukebox_pl.conditioners.upper_codes",
    "jukebox_pl.conditioners.lyrics",
    "jukebox_pl.priors.prior",
    "jukebox_pl.pipelines.encode",
    "jukebox_pl.pipelines.sample",
    "jukebox_pl.pipelines.finetune",
    "jukebox_pl.callbacks",
    "jukebox_pl.samplers.ancestral",
    "jukebox_pl.samplers.primed",
    "jukebox_pl.samplers.continuation",
    "jukebox_pl.samplers.upsample",
    "jukebox_pl.pipelines.evaluate",
    "jukebox_pl.pipelines.report",
    "jukebox_pl.pipelines.musicality",
    "jukebox_pl.pipelines.evidence",
)


def import_object(path: str) -> Any:
    """Import ``package.module:Object`` (the object may be dotted: ``mod:Class.attr``)."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise RegistryError(f"'{path}' is not a dotted path of the form package.module:Object")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module '{module_name}' for '{path}': {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise RegistryError(
                f"module '{module_name}' has no attribute '{qualname}'{did_you_mean(part, names)}"
            ) from None
    return obj


# ------------------------------------------------------------------------ dotted paths
_dotted_paths_forbidden = False  # set by forbid_dotted_paths(); the environment variable also forbids them


def dotted_paths_forbidden() -> bool:
    """Whether components may be named only by registered name (``--no-dotted-paths`` or the variable)."""
    return _dotted_paths_forbidden or os.environ.get(NO_DOTTED_PATHS_ENV, "").strip() not in ("", "0")


@contextlib.contextmanager
def forbid_dotted_paths(forbid: bool = True) -> Iterator[None]:
    """Within the block (if `forbid`), any component named by ``package.module:Object`` is an error."""
    global _dotted_paths_forbidden
    previous = _dotted_paths_forbidden
    _dotted_paths_forbidden = previous or forbid
    try:
        yield
    finally:
        _dotted_paths_forbidden = previous


def is_dotted_path(name: Any) -> bool:
    """A component name of the form ``package.module:Object`` (registered names never hold ':')."""
    return isinstance(name, str) and ":" in name


def walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, value) below `node`, parents before children."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(node, Mapping):
        items = node.items()
    elif isinstance(node, list | tuple):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, value
        yield from walk(value, path)


def dotted_paths_in(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(key path, dotted path) of every ``_component_`` in `tree` that names its component by dotted path."""
    components = [(path, value) for path, value in walk(tree, prefix) if path.rpartition(".")[2] == COMPONENT_KEY]
    return [(path, value) for path, value in components if is_dotted_path(value)]


def refuse_dotted_paths(found: Sequence[tuple[str, str]]) -> None:
    """Raise one error for the (where, dotted path) pairs in `found`, if any: they are forbidden."""
    if not found:
        return
    lines = [f"{where}: {_forbidden(path)}" if where else _forbidden(path) for where, path in found]
    if len(lines) == 1:
        raise RegistryError(lines[0])
    raise RegistryError(f"{len(lines)} components are named by dotted path:\n  " + "\n  ".join(lines))


def _forbidden(path: str) -> str:
    module = path.partition(":")[0]
    return (
        f"'{path}' is a dotted path: it would import and run code from module '{module}', and dotted paths "
        f"are forbidden by --no-dotted-paths ({NO_DOTTED_PATHS_ENV}=1); name a registered component instead "
        "(jukebox-pl ls)"
    )


# ---------------------------------------------------------------------- stored recipes
# Set by trust_code() (--trust-code): stored recipes may name any component, as the user's own recipes may.
_code_trusted: ContextVar[bool] = ContextVar("jukebox_pl_code_trusted", default=False)
# Set by installed_components_only() while a stored recipe is checked and built.
_installed_only: ContextVar[bool] = ContextVar("jukebox_pl_installed_only", default=False)
STORED_RECIPE_RULE = "a model's stored recipe may name only components that jukebox-pl or an installed plugin registers"
TRUST_HINT = (
    "if you trust where this model comes from, allow its code with trust_code=True (jukebox_pl.load) "
    "or --trust-code (command line)"
)


def code_trusted() -> bool:
    """Whether stored recipes may name any component (``--trust-code``)."""
    return _code_trusted.get()


@contextlib.contextmanager
def trust_code(trust: bool = True) -> Iterator[None]:
    """Within the block (if `trust`), the recipes stored with models may name any component, dotted paths included."""
    token = _code_trusted.set(_code_trusted.get() or trust)
    try:
        yield
    finally:
        _code_trusted.reset(token)


def installed_components_required() -> bool:
    """Whether names must resolve to components of jukebox-pl or an installed plugin (a stored recipe is built)."""
    return _installed_only.get()


@contextlib.contextmanager
def installed_components_only(trust: bool = False) -> Iterator[None]:
    """Within the block, unless `trust` or ``trust_code()``, a name reaches only a component registered by jukebox-pl
    or an installed plugin distribution; a dotted path, or a name that anything else registered (a module that a
    dotted path imported, say), raises UntrustedCodeError before it is imported or called."""
    token = _installed_only.set(not (trust or code_trusted()))
    try:
        yield
    finally:
        _installed_only.reset(token)


def refuse_untrusted(found: Sequence[str]) -> None:
    """Raise one UntrustedCodeError for the refusals in `found` (each ``FILE: KEY: reason``), if any."""
    if not found:
        return
    if len(found) == 1:
        raise UntrustedCodeError(f"{found[0]}; {STORED_RECIPE_RULE}; {TRUST_HINT}")
    raise UntrustedCodeError(
        f"{len(found)} components of a stored recipe are not installed code:\n  "
        + "\n  ".join(found)
        + f"\n{STORED_RECIPE_RULE}; {TRUST_HINT}"
    )


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
        var_keyword = [name for name, p in parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD]
        for name in var_keyword:
            del parameters[name]
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
    signature = inspect.signature(target)
    signature = signature.replace(parameters=list(parameters_of(target).values()))
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


def spec_arguments(target: Any) -> set[str]:
    """Names of `target`'s arguments annotated with `SpecOf`: left unbuilt by ``build``."""
    hints: dict[str, Any] = {}
    for init in inits_of(target):
        try:
            hints = typing.get_type_hints(init, include_extras=True) | hints
        except Exception:  # noqa: BLE001 - unresolvable annotations: nothing is marked
            continue
    return {name for name, hint in hints.items() if annotation_marker(hint, SpecOf) is not None}


def annotation_marker(annotation: Any, marker: type[Any]) -> Any:
    """The `marker` (a `SpecOf`, a recipe's `KwargsOf`) inside `annotation` (also inside ``X | None``), if any."""
    for candidate in [annotation, *typing.get_args(annotation)]:
        if typing.get_origin(candidate) is typing.Annotated:
            for meta in candidate.__metadata__:
                if isinstance(meta, marker):
                    return meta
    return None


@dataclass(frozen=True)
class Component:
    """One registered class or builder function."""

    kind: str | None  # None: reached by dotted path and of no registered kind
    name: str
    target: Callable[..., Any]
    provider: str  # the distribution that registered it

    @property
    def path(self) -> str:
        return object_path(self.target)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.target) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def describe(self) -> str:
        kind = self.kind or "object"
        return f"{kind} '{self.name}' ({self.path})"


@dataclass(frozen=True)
class Plugin:
    """One entry point of the ``jukebox_pl.plugins`` group and how its loading went."""

    entry_point: str
    distribution: str
    version: str
    value: str
    error: str | None = None  # "ExceptionType: message" when it failed to load


class Registry:
    """Kinds, their components, and the plugins that were discovered."""

    def __init__(
        self,
        kinds: Mapping[str, str] | None = None,
        core_modules: Iterable[str] = (),
    ) -> None:
        self._kind_bases: dict[str, str] = dict(DEFAULT_KINDS if kinds is None else kinds)
        self._resolved_bases: dict[str, type] = {}
        self._table: dict[str, dict[str, Component]] = {kind: {} for kind in self._kind_bases}
        self._core_modules = tuple(core_modules)
        self._core_loaded = False
        self._plugins_loaded = False
        self._loading_distribution: str | None = None
        self._added_while_loading: list[tuple[str, str]] = []
        self._module_distributions: Mapping[str, list[str]] | None = None
        self._plugin_modules: dict[str, str] | None = None  # top-level module of each entry point -> distribution
        self.plugins: list[Plugin] = []

    # ------------------------------------------------------------------ kinds
    @property
    def kinds(self) -> list[str]:
        return list(self._kind_bases)

    def add_kind(self, kind: str, base: str | type) -> None:
        """Declare a new family of components whose members must subclass `base`."""
        if kind in self._kind_bases:
            raise RegistryError(f"kind '{kind}' already exists (base {self._kind_bases[kind]})")
        self._kind_bases[kind] = base if isinstance(base, str) else object_path(base)
        if not isinstance(base, str):
            self._resolved_bases[kind] = base
        self._table[kind] = {}

    def base_class(self, kind: str) -> type:
        self._check_kind(kind)
        if kind not in self._resolved_bases:
            self._resolved_bases[kind] = import_object(self._kind_bases[kind])
        return self._resolved_bases[kind]

    def _check_kind(self, kind: str) -> None:
        if kind not in self._kind_bases:
            raise RegistryError(
                f"unknown kind '{kind}'{did_you_mean(kind, self._kind_bases)}; kinds are: {', '.join(self._kind_bases)}"
            )

    # ------------------------------------------------------------ registering
    def register(self, kind: str, name: str) -> Callable[[Any], Any]:
        """Decorator: register a class or builder function as `kind` component `name`."""

        def decorator(target: Any) -> Any:
            self.add(kind, name, target)
            return target

        return decorator

    def add(self, kind: str, name: str, target: Any) -> Component:
        self._check_kind(kind)
        if not name or not isinstance(name, str) or any(c in name for c in ":/ "):
            raise RegistryError(f"invalid {kind} name {name!r}: use letters, digits, '_', '-' and '.'")
        component = Component(kind, name, target, self._provider_of(target))
        self._check_base(component)
        existing = self._table[kind].get(name)
        if existing is not None and existing.path != component.path:
            raise RegistryError(
                f"{kind} '{name}' is registered twice: by {existing.provider} ({existing.path}) "
                f"and by {component.provider} ({component.path}); one of them must take another name"
            )
        self._table[kind][name] = component
        if self._loading_distribution is not None:
            self._added_while_loading.append((kind, name))
        return component

    def _check_base(self, component: Component) -> None:
        assert component.kind is not None
        target, base = component.target, self.base_class(component.kind)
        if inspect.isclass(target):
            if not issubclass(target, base):
                raise RegistryError(
                    f"cannot register {component.describe()} from {component.provider}: "
                    f"a {component.kind} must subclass {object_path(base)}"
                )
            return
        if not callable(target):
            raise RegistryError(
                f"cannot register {component.kind} '{component.name}': {target!r} is neither a class "
                "nor a builder function"
            )
        returned = _return_annotation(target)
        if inspect.isclass(returned) and not issubclass(returned, base):
            raise RegistryError(
                f"cannot register {component.describe()} from {component.provider}: it is annotated "
                f"to return {object_path(returned)}, but a {component.kind} must be a {object_path(base)}"
            )

    def _provider_of(self, target: Any) -> str:
        if self._loading_distribution is not None:
            return self._loading_distribution
        top = getattr(target, "__module__", "").split(".")[0]
        if top == "jukebox_pl":
            return CORE_DISTRIBUTION
        if self._module_distributions is None:
            self._module_distributions = metadata.packages_distributions()
        owners = self._module_distributions.get(top)
        if owners:
            return owners[0]
        # An editable install maps no modules to its distribution; a plugin imported before discovery
        # (`import PLUGIN_MODULE`) is still known by the module its entry point names.
        return self._plugins_by_module().get(top, f"{top} (not installed)")

    def _plugins_by_module(self) -> dict[str, str]:
        """The top-level module of every installed ``jukebox_pl.plugins`` entry point, and its distribution."""
        if self._plugin_modules is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
            self._plugin_modules = {ep.value.split(":")[0].split(".")[0]: _distribution_name(ep) for ep in entry_points}
        return self._plugin_modules

    # ---------------------------------------------------------------- lookups
    def _load_core(self) -> None:
        if self._core_loaded:
            return
        self._core_loaded = True
        for module in self._core_modules:
            importlib.import_module(module)

    def get(self, kind: str, name: str) -> Component:
        """The component `name` of `kind`; a ``package.module:Object`` path is accepted too."""
        self._check_kind(kind)
        self._load_core()
        component = self._table[kind].get(name)
        if component is None:
            self.load_plugins()
            component = self._table[kind].get(name)
        if component is None and ":" in name:
            component = self._from_path(name, kind)
        if component is None:
            raise RegistryError(self._unknown_message(kind, name))
        return self._reachable(component)

    def find(self, name: str, kind: str | None = None) -> Component:
        """Look `name` up in `kind`, or, when no kind is given, in whichever kind has it.

        ``kind/name`` names the kind explicitly; ``package.module:Object`` imports an object.
        """
        if kind is not None:
            return self.get(kind, name)
        prefix, sep, rest = name.partition("/")
        if sep and prefix in self._kind_bases:
            return self.get(prefix, rest)
        if ":" in name:
            return self._from_path(name, None)
        self._load_core()
        self.load_plugins()
        owners = [k for k, table in self._table.items() if name in table]
        if len(owners) == 1:
            return self._reachable(self._table[owners[0]][name])
        if len(owners) > 1:
            choices = " or ".join(f"'{k}/{name}'" for k in owners)
            raise RegistryError(f"'{name}' is registered in several kinds; write {choices}")
        everything = [n for table in self._table.values() for n in table]
        raise RegistryError(f"unknown component '{name}'{did_you_mean(name, everything)}" + self._plugin_hint())

    def _reachable(self, component: Component) -> Component:
        """`component`, unless a stored recipe is being built and no installed distribution provides it."""
        if installed_components_required() and not self._installed(component.provider):
            raise UntrustedCodeError(
                f"{component.describe()} is registered by {component.provider}, which is neither "
                f"{CORE_DISTRIBUTION} nor an installed plugin"
            )
        return component

    def _installed(self, provider: str) -> bool:
        """Whether `provider` is jukebox-pl or an installed distribution that declares a plugin entry point."""
        plugins = {_normalized(distribution) for distribution in self._plugins_by_module().values()}
        return provider == CORE_DISTRIBUTION or _normalized(provider) in plugins

    def _from_path(self, path: str, kind: str | None) -> Component:
        if dotted_paths_forbidden():
            refuse_dotted_paths([("", path)])
        if installed_components_required():
            module = path.partition(":")[0]
            raise UntrustedCodeError(f"'{path}' is a dotted path: it would import and run code from module '{module}'")
        target = import_object(path)
        if not callable(target):
            raise RegistryError(f"'{path}' is {target!r}, which is neither a class nor a function")
        if kind is None and inspect.isclass(target):
            # Only an unambiguous base names the kind: four kinds share LightningModule.
            matching = [k for k in self._kind_bases if issubclass(target, self.base_class(k))]
            kind = matching[0] if len(matching) == 1 else None
        component = Component(kind, path, target, self._provider_of(target))
        if kind is not None:
            self._check_base(component)
        return component

    def _unknown_message(self, kind: str, name: str) -> str:
        known = sorted(self._table[kind])
        message = f"unknown {kind} '{name}'{did_you_mean(name, known)}"
        message += f"; registered {kind} components: {', '.join(known) if known else 'none'}"
        elsewhere = [k for k, table in self._table.items() if name in table]
        if elsewhere:
            message += f"; '{name}' is a {' and a '.join(elsewhere)} component"
        return message + self._plugin_hint()

    def _plugin_hint(self) -> str:
        failed = [p for p in self.plugins if p.error]
        if not failed:
            return ""
        names = ", ".join(f"{p.entry_point} ({p.distribution})" for p in failed)
        return f"; plugins that failed to load: {names} (see `jukebox-pl ls`)"

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        self._load_core()
        self.load_plugins()
        return sorted(self._table[kind])

    def components(self, kind: str | None = None) -> list[Component]:
        """Every registered component (of `kind`), in kind order then by name."""
        kinds = [kind] if kind is not None else self.kinds
        for k in kinds:
            self._check_kind(k)
        self._load_core()
        self.load_plugins()
        return [self._table[k][n] for k in kinds for n in sorted(self._table[k])]

    # --------------------------------------------------------------- building
    def build(self, kind: str | None, spec: Any, *, recursive: bool = True, **kwargs: Any) -> Any:
        """Instantiate a component from a name or a ``{_component_: name, **kwargs}`` mapping.

        With `recursive`, nested mappings that carry ``_component_`` (also inside lists) are
        built first and passed in as objects.
        """
        spec = _to_plain(spec)
        if isinstance(spec, str):
            name, arguments = spec, {}
        elif isinstance(spec, Mapping) and COMPONENT_KEY in spec:
            arguments = dict(spec)
            name = arguments.pop(COMPONENT_KEY)
        else:
            raise RegistryError(f"a component spec is a name or a mapping with '{COMPONENT_KEY}', not {spec!r}")
        component = self.find(name, kind)
        arguments.update(kwargs)
        if recursive:
            unbuilt = spec_arguments(component.target)
            arguments = {key: value if key in unbuilt else self._build_value(value) for key, value in arguments.items()}
        try:
            inspect.signature(component.target).bind(**arguments)
        except TypeError as exc:
            raise RegistryError(f"cannot build {component.describe()}: {exc}") from None
        except ValueError:  # some builtins have no signature; let the call itself check
            pass
        built = component.target(**arguments)
        if component.kind is not None and not isinstance(built, self.base_class(component.kind)):
            raise RegistryError(
                f"{component.describe()} returned {type(built).__name__}, "
                f"but a {component.kind} must be a {object_path(self.base_class(component.kind))}"
            )
        return built

    def _build_value(self, value: Any) -> Any:
        if isinstance(value, Mapping) and COMPONENT_KEY in value:
            return self.build(None, value)
        if isinstance(value, list):
            return [self._build_value(item) for item in value]
        return value

    # ---------------------------------------------------------------- plugins
    def load_plugins(self) -> None:
        """Import every ``jukebox_pl.plugins`` entry point once; failures become warnings."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if os.environ.get(NO_PLUGINS_ENV, "").strip() not in ("", "0"):
            return
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for entry_point in sorted(entry_points, key=lambda ep: (_distribution_name(ep), ep.name)):
            self._load_entry_point(entry_point)

    def _load_entry_point(self, entry_point: metadata.EntryPoint) -> None:
        distribution = _distribution_name(entry_point)
        version = entry_point.dist.version if entry_point.dist is not None else "?"
        self._loading_distribution = distribution
        self._added_while_loading = []
        error = None
        try:
            loaded = entry_point.load()
            if inspect.isfunction(loaded):
                loaded()  # a registration hook; a module registers by being imported
            elif not isinstance(loaded, ModuleType):
                raise RegistryError(
                    f"entry point '{entry_point.value}' must name a module or a function, not {loaded!r}"
                )
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
            error = f"{type(exc).__name__}: {exc}"
            for kind, name in self._added_while_loading:
                self._table[kind].pop(name, None)
            warnings.warn(
                f"plugin '{entry_point.name}' from {distribution} {version} failed to load "
                f"({entry_point.value}): {error}; its components are unavailable, the others still work",
                PluginWarning,
                stacklevel=3,
            )
        finally:
            self._loading_distribution = None
            self._added_while_loading = []
        self.plugins.append(Plugin(entry_point.name, distribution, version, entry_point.value, error))


def _distribution_name(entry_point: metadata.EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist is not None else entry_point.value.split(".")[0]


def _normalized(distribution: str) -> str:
    """A distribution name as packaging compares them (PEP 503): ``Jukebox_PL.example`` is ``jukebox-pl-example``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _return_annotation(function: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(function).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations are simply not checked here
        return None


def _to_plain(value: Any) -> Any:
    """OmegaConf containers to plain dicts and lists (interpolations resolved)."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


REGISTRY = Registry(core_modules=CORE_MODULES)
register = REGISTRY.register
get = REGISTRY.get
find = REGISTRY.find
names = REGISTRY.names
components = REGISTRY.components
build = REGISTRY.build
load_plugins = REGISTRY.load_plugins
add_kind = REGISTRY.add_kind
