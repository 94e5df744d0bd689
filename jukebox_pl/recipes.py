"""Recipes: load YAML, compose ``base:`` files, apply overrides, validate before building.

A recipe is an OmegaConf YAML mapping with a ``pipeline:`` key, sections that the pipeline
takes as arguments (``model``, ``data``, ``trainer``...), and components written as
``{_component_: NAME, **kwargs}``. ``base: [a.yaml, vqvae/small]`` composes other recipes
first; paths are relative to the including file, and bare names are looked up in the
packaged ``recipes/`` tree. Every key remembers the file (or command-line override) that set
it last, so that errors can say where to fix them.

A component named by dotted path (``package.module:Object``) runs that module's code when the
recipe is validated or run; with dotted paths forbidden (``trust.forbid_dotted_paths``,
``--no-dotted-paths``), `load` refuses such a recipe before anything is imported.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from jukebox_pl import registry, trust
from jukebox_pl.errors import RecipeError, RecipeWarning, RegistryError, did_you_mean, first_line
from jukebox_pl.signatures import parameters_of
from jukebox_pl.trust import walk

COMPONENT_KEY = registry.COMPONENT_KEY
BASE_KEY = "base"
# Top-level keys the runner reads itself; every other top-level key is a pipeline argument.
# `vars` holds values that other keys share through ${vars.name}: sample rate, hop lengths...
RUNNER_KEYS = ("pipeline", "output_dir", "vars")
COMMAND_LINE = "command line"
MISSING = "???"  # OmegaConf's mandatory-value marker
_BACKSLASHES_THEN_INTERPOLATION = re.compile(r"(\\*)\$\{")
# A key path for an override: names joined by dots, or [bracketed] names (which may hold dots).
_KEY_PATH = re.compile(r"(?:[^.\[\]]+|\[[^\[\]]+\])(?:\.[^.\[\]]+|\[[^\[\]]+\])*")


@dataclass(frozen=True)
class KwargsOf:
    """``Annotated`` marker: this mapping holds keyword arguments for `target`.

    The validator binds the mapping's keys against `target`'s signature, as it does for a
    component. `exclude` names arguments that the component sets itself.
    """

    target: str | Any
    exclude: tuple[str, ...] = ()

    def resolve(self) -> Any:
        return registry.import_object(self.target) if isinstance(self.target, str) else self.target


# ---------------------------------------------------------------------------- finding files
def recipes_root() -> Path:
    """The packaged recipe tree: inside the wheel, or ``recipes/`` of a source checkout."""
    package_dir = Path(__file__).resolve().parent
    packaged = package_dir / "_recipes"
    return packaged if packaged.is_dir() else package_dir.parent / "recipes"


def packaged_recipes() -> list[str]:
    """Names (``vqvae/small``) of every recipe in the packaged tree."""
    root = recipes_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))  # none: no tree


def locate(reference: str, relative_to: Path | None = None) -> Path:
    """The file a recipe reference names: a path (relative to `relative_to` or the working
    directory), else a name in the packaged tree, with or without ``.yaml``."""
    for base in (relative_to or Path.cwd(), recipes_root()):
        path = base / reference
        for candidate in (path, path.with_name(path.name + ".yaml")):
            if candidate.is_file():
                return candidate.resolve()
    where = f" (from {relative_to})" if relative_to is not None else ""
    raise RecipeError(
        f"recipe '{reference}' not found{where}: not a file, and not a packaged recipe"
        f"{did_you_mean(reference.removesuffix('.yaml'), packaged_recipes())}"
    )


# ------------------------------------------------------------------------------- the recipe
@dataclass
class Swap:
    """A component replaced by a later file or an override; `inherited` keys may not fit it."""

    old: str
    new: str
    inherited: set[str]
    origin: str


@dataclass
class Recipe:
    """A composed recipe with overrides applied, not yet validated or resolved."""

    config: DictConfig
    source: str
    origins: dict[str, str] = field(default_factory=dict)
    swaps: dict[str, Swap] = field(default_factory=dict)

    def origin(self, path: str) -> str:
        """The file (or "command line") that set `path` or its nearest parent."""
        parts = path.split(".") if path else []
        keys = (".".join(parts[:end]) for end in range(len(parts), 0, -1))  # the path, then each parent
        return next((self.origins[key] for key in keys if key in self.origins), self.source)

    def resolved(self, allow_missing: bool = False) -> dict[str, Any]:
        """The recipe as plain containers with every ``${...}`` resolved (``???`` kept if allowed)."""
        try:
            return OmegaConf.to_container(self.config, resolve=True, throw_on_missing=not allow_missing)  # type: ignore[return-value]
        except OmegaConfBaseException as exc:
            key = str(getattr(exc, "full_key", "") or "")
            raise RecipeError(f"{self.origin(key)}: {key or '<top>'}: {first_line(exc)}") from None
        except RecursionError:
            raise RecipeError(
                f"{self.source}: an interpolation (such as ${{oc.select:...}}) places a node inside itself, "
                "so the recipe never ends"
            ) from None

    def to_yaml(self, resolve: bool = True) -> str:
        return resolved_yaml(self.resolved(allow_missing=True)) if resolve else OmegaConf.to_yaml(self.config)


def load(reference: str, overrides: Sequence[str] = ()) -> Recipe:
    """Load a recipe by path or packaged name, compose its bases, apply `overrides`."""
    path = locate(reference)
    composer = _Composer()
    config = composer.load(path)
    recipe = Recipe(config, str(path), composer.origins, composer.swaps)
    for override in overrides:
        apply_override(recipe, override)
    if trust.dotted_paths_forbidden():
        refuse_dotted_paths(recipe)
    _drop_unfit_inherited_arguments(recipe)
    return recipe


def refuse_dotted_paths(recipe: Recipe) -> None:
    """One error naming every key that holds a dotted-path component (and the file that set it), if any.

    Read from the resolved recipe, so that ``_component_: ${vars.model}`` is seen as what it names; a
    recipe whose interpolations do not resolve is scanned as written (it cannot be built anyway).
    """
    try:
        tree: Any = recipe.resolved(allow_missing=True)
    except RecipeError:
        tree = OmegaConf.to_container(recipe.config, resolve=False)
    # An interpolation left unresolved (`${oc.env:X}`) holds a ':' but names nothing yet.
    found = [(key, path) for key, path in trust.dotted_paths_in(tree) if "${" not in path]
    if trust.is_dotted_path(tree.get("pipeline")):
        found.insert(0, ("pipeline", tree["pipeline"]))
    trust.refuse_dotted_paths([(f"{recipe.origin(key)}: {key}", path) for key, path in found])


class _Composer:
    """Loads files depth-first in merge order, so later writers overwrite recorded origins."""

    def __init__(self) -> None:
        self.origins: dict[str, str] = {}
        self.swaps: dict[str, Swap] = {}
        self._stack: list[Path] = []

    def load(self, path: Path) -> DictConfig:
        if path in self._stack:
            chain = " -> ".join(str(p) for p in [*self._stack, path])
            raise RecipeError(f"recipes include each other in a cycle: {chain}")
        try:
            config = OmegaConf.load(path)
        except Exception as exc:  # noqa: BLE001 - YAML errors come in many types
            raise RecipeError(f"{path}: not a readable YAML recipe: {exc}") from None
        if not isinstance(config, DictConfig):
            raise RecipeError(f"{path}: a recipe must be a YAML mapping, not a {type(config).__name__}")
        self._stack.append(path)
        try:
            return self.compose(config, str(path), path.parent)
        finally:
            self._stack.pop()

    def compose(self, config: DictConfig, source: str, directory: Path) -> DictConfig:
        bases = config.pop(BASE_KEY, None) if BASE_KEY in config else None
        if isinstance(bases, str):
            bases = [bases]
        elif bases is not None and not OmegaConf.is_list(bases):
            raise RecipeError(f"{source}: base: must be a file name or a list of them, not {bases!r}")
        merged = OmegaConf.create({})
        for base in bases or []:
            merged = self.merge(merged, self.load(locate(str(base), directory)), origin=None)
        return self.merge(merged, config, origin=source)

    def merge(self, merged: DictConfig, layer: DictConfig, origin: str | None) -> DictConfig:
        """Merge `layer` over `merged`, noting swapped components and (if `origin`) key origins."""
        below = OmegaConf.to_container(merged, resolve=False)
        above = OmegaConf.to_container(layer, resolve=False)
        swap_origin = origin or "a base recipe"
        for path, node in walk(above):
            if not isinstance(node, dict):
                continue
            old = _lookup(below, path)
            if path in self.swaps:
                self.swaps[path].inherited -= set(node)
            if (
                COMPONENT_KEY in node
                and isinstance(old, dict)
                and old.get(COMPONENT_KEY) not in (None, node[COMPONENT_KEY])
            ):
                inherited = set(old) - set(node) - {COMPONENT_KEY}
                self.swaps[path] = Swap(str(old[COMPONENT_KEY]), str(node[COMPONENT_KEY]), inherited, swap_origin)
        clash = _container_clash(below, above)
        if clash is not None:
            path, new, old = clash
            raise RecipeError(
                f"{origin or self.origins.get(path, 'a base recipe')}: {path}: a {new} cannot be merged over "
                f"the {old} that an earlier recipe sets there; write a {old}, or rename the key"
            )
        if origin is not None:
            for path, _ in walk(above):
                self.origins[path] = origin
        return OmegaConf.merge(merged, layer)  # type: ignore[return-value]


def _container_clash(below: Any, above: Any, prefix: str = "") -> tuple[str, str, str] | None:
    """(path, kind above, kind below) of the first key where `above` puts a list over a mapping of
    `below` or the reverse: OmegaConf merges mappings key by key and replaces lists, but cannot mix them."""
    if not isinstance(below, dict) or not isinstance(above, dict):
        return None
    kinds = {dict: "mapping", list: "list"}
    for key, value in above.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        old = below.get(key)
        if type(value) in kinds and type(old) in kinds and type(value) is not type(old):
            return path, kinds[type(value)], kinds[type(old)]
        found = _container_clash(old, value, path)
        if found is not None:
            return found
    return None


def _lookup(node: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def resolved_yaml(data: Mapping[str, Any]) -> str:
    """YAML of a resolved recipe that reads back the same: a literal ``${`` left in a value (lyrics, a
    path) is written escaped, so that loading the file does not take it for an interpolation."""

    def escaped(value: Any) -> Any:
        if isinstance(value, str):
            return literal(value)
        if isinstance(value, Mapping):
            return {key: escaped(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [escaped(item) for item in value]
        return value

    return OmegaConf.to_yaml(OmegaConf.create(escaped(dict(data))))


def literal(text: str) -> str:
    """`text` written so that OmegaConf reads it back as itself, not as an interpolation.

    OmegaConf reads ``\\${`` as a literal ``${``, and backslashes just before ``${`` as escaped
    backslashes (``\\\\${x}`` is a backslash, then ``${x}``), so each of those is doubled too.
    """
    return _BACKSLASHES_THEN_INTERPOLATION.sub(lambda match: match[1] * 2 + "\\${", text)


# -------------------------------------------------------------------------------- overrides
def parse_value(text: str) -> Any:
    """A command-line value in YAML syntax: ``3``, ``1e-4``, ``[1, 2]``, ``{a: 1}``, ``a=b``.

    ``@FILE`` is the text of FILE as a string (``lyrics=@lyrics.txt``); ``@@...`` is a literal
    string that starts with ``@``.
    """
    if text.startswith("@@"):
        return text[1:]
    if text.startswith("@"):
        try:
            contents = Path(text[1:]).expanduser().read_text(encoding="utf-8")
        # RuntimeError: ~user of no such user; ValueError: not UTF-8, or a NUL in the path.
        except (OSError, RuntimeError, ValueError) as exc:
            raise RecipeError(f"{COMMAND_LINE}: cannot read {text!r} ({type(exc).__name__}: {exc})") from None
        return literal(contents)  # file text is data, not an interpolation
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]), resolve=False)["value"]  # type: ignore[index]
    except Exception as exc:  # noqa: BLE001
        raise RecipeError(f"cannot parse override value {text!r}: {exc}") from None


def apply_override(recipe: Recipe, override: str) -> None:
    """Apply one ``key=value`` or ``~key`` override to `recipe` in place.

    Assigning a name to a component node (``model.prior=other``), or a new ``_component_``,
    swaps the component and keeps the arguments that the new one accepts.
    """
    config = recipe.config
    if override.startswith("~"):
        key = override[1:]
        _check_key(key, override)
        parent_key, _, leaf = key.rpartition(".")
        parent = _select(config, parent_key) if parent_key else config
        if isinstance(parent, ListConfig) and leaf.isdigit() and int(leaf) < len(parent):
            del parent[int(leaf)]
            return
        # keys(), not `in parent`: that is False for a ??? value or an interpolation that does not resolve.
        if not isinstance(parent, DictConfig) or leaf not in parent.keys():
            siblings = list(parent.keys()) if isinstance(parent, DictConfig) else []
            raise RecipeError(f"{COMMAND_LINE}: cannot delete '{key}': no such key{did_you_mean(leaf, siblings)}")
        del parent[leaf]
        return
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"{COMMAND_LINE}: override {override!r} is neither key=value nor ~key")
    _check_key(key, override)
    value = parse_value(text)
    node_key = key.removesuffix("." + COMPONENT_KEY)  # model.prior=NAME and model.prior._component_=NAME both swap
    current = _select(config, node_key)
    if isinstance(current, DictConfig) and COMPONENT_KEY in current and isinstance(value, str):
        old = str(current[COMPONENT_KEY])
        if old != value:
            inherited = {str(k) for k in current.keys()} - {COMPONENT_KEY}
            recipe.swaps[node_key] = Swap(old, value, inherited, COMMAND_LINE)
        current[COMPONENT_KEY] = value
        recipe.origins[f"{node_key}.{COMPONENT_KEY}"] = COMMAND_LINE
        return
    parent_key, _, leaf = key.rpartition(".")
    parent = _select(config, parent_key) if parent_key else None
    try:
        if isinstance(parent, ListConfig) and leaf.isdigit() and int(leaf) == len(parent):
            parent.append(value)  # one past the end appends: callbacks.2={...}
        else:
            OmegaConf.update(config, key, value, merge=False, force_add=True)
    except (OmegaConfBaseException, IndexError, TypeError, ValueError) as exc:  # a name as a list index, say
        raise RecipeError(f"{COMMAND_LINE}: cannot set '{key}': {first_line(exc)}") from None
    recipe.origins[key] = COMMAND_LINE
    for path, _ in walk(value, key):
        recipe.origins[path] = COMMAND_LINE
    for swap_path, swap in recipe.swaps.items():
        if key.startswith(swap_path + "."):
            swap.inherited.discard(key[len(swap_path) + 1 :].split(".")[0])


def _check_key(key: str, override: str) -> None:
    if not _KEY_PATH.fullmatch(key):
        raise RecipeError(
            f"{COMMAND_LINE}: override {override!r}: '{key}' is not a key path such as model.channels or callbacks.0"
        )


def _select(config: DictConfig, key: str) -> Any:
    """The node at `key`; None where there is none (a name as a list index, say), or where it is an
    interpolation that does not resolve."""
    return OmegaConf.select(config, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)


def _drop_unfit_inherited_arguments(recipe: Recipe) -> None:
    """After a swap, drop inherited arguments the new component does not accept, and say so."""
    for path, swap in recipe.swaps.items():
        node = OmegaConf.select(recipe.config, path, default=None, throw_on_missing=False)
        if not isinstance(node, DictConfig) or not swap.inherited:
            continue
        try:
            component = registry.find(str(node[COMPONENT_KEY]))
            parameters = parameters_of(component.target)
        except (RegistryError, ValueError, TypeError):
            continue  # validation reports the unknown component
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        dropped = sorted(k for k in swap.inherited if k in node and k not in parameters)
        for key in dropped:
            del node[key]
        if dropped:
            warnings.warn(
                f"{swap.origin}: {path}: swapping '{swap.old}' for '{swap.new}' dropped the arguments "
                f"it does not accept: {', '.join(dropped)}",
                RecipeWarning,
                stacklevel=3,
            )


# ------------------------------------------------------------------- what a component takes
def arguments(target: Any) -> dict[str, inspect.Parameter]:
    """The keyword arguments a recipe may give `target`: its own and, while it hands ``**kwargs`` on, those of the
    classes it extends (what the validator checks a component's keys against)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in parameters_of(target).items() if p.kind in named}
