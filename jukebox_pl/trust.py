"""What code a recipe may reach: dotted paths, and the recipes stored with models.

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
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from jukebox_pl.errors import RegistryError, UntrustedCodeError

COMPONENT_KEY = "_component_"  # the key of a recipe mapping that names its component (also in registry)
NO_DOTTED_PATHS_ENV = "JUKEBOX_PL_NO_DOTTED_PATHS"


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
    token = _installed_only.set(not (trust or _code_trusted.get()))
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
