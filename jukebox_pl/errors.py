"""User-facing errors and the "did you mean" helper shared by the registry, recipes and CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class JukeboxError(Exception):
    """An error caused by the user's input: the CLI prints its message alone and exits with 2."""


class RegistryError(JukeboxError):
    """A component could not be registered or found."""


class UntrustedCodeError(RegistryError):
    """A stored recipe (of an export or checkpoint) names code that jukebox-pl and the installed plugins do
    not provide, and the user has not trusted it (``trust_code=True``, ``--trust-code``)."""


class RecipeError(JukeboxError):
    """A recipe could not be loaded, composed, overridden or validated."""


class RecipeWarning(UserWarning):
    """Something in a recipe was changed for the user, e.g. arguments dropped by a component swap."""


class PluginWarning(UserWarning):
    """A plugin distribution failed to load; the others still work."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (OmegaConf's add full_key/object_type lines), or its type's name."""
    text = str(getattr(exc, "msg", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x' or 'y'?)', the registered or valid names nearest to `word` (best first), or an empty
    string when nothing is close."""
    candidates = sorted(set(candidates))
    matches = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    if not matches:
        # Prefix and substring hits catch abbreviations that difflib's ratio misses.
        lowered = word.lower()
        matches = [c for c in candidates if lowered and (lowered in c.lower() or c.lower() in lowered)][:3]
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)" if matches else ""
