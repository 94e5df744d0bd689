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

What code a recipe may reach (dotted paths, the recipes stored with models) is decided in
`jukebox_pl.trust`.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import os
import re
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from jukebox_pl.errors import PluginWarning, RegistryError, UntrustedCodeError, did_you_mean
from jukebox_pl.signatures import object_path, spec_arguments
from jukebox_pl.trust import COMPONENT_KEY, dotted_paths_forbidden, installed_components_required, refuse_dotted_paths

ENTRY_POINT_GROUP = "jukebox_pl.plugins"
CORE_DISTRIBUTION = "jukebox-pl"
NO_PLUGINS_ENV = "JUKEBOX_PL_NO_PLUGINS"

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
        return (inspect.getdoc(self.target) or "").strip().partition("\n")[0]

    def describe(self) -> str:
        return f"{self.kind or 'object'} '{self.name}' ({self.path})"


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
        return [component.name for component in self.components(kind)]

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
