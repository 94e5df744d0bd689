"""jukebox-pl: Jukebox-style music generation (hierarchical VQ-VAE + transformer priors) as a
modular PyTorch Lightning framework.

Importing the package is cheap: components and plugins are loaded on first use.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from jukebox_pl.errors import JukeboxError, RecipeError, RegistryError, UntrustedCodeError
from jukebox_pl.registry import build, components, find, get, names, register

if TYPE_CHECKING:
    from torch import nn


def load(path: str | Path, map_location: str = "cpu", trust_code: bool = False) -> nn.Module:
    """Rebuild a component from an export folder (safetensors + recipe) or a train-pipeline checkpoint.

    The recipe stored with the weights may name only components of jukebox-pl and installed plugins;
    `trust_code=True` lets it name any code, dotted paths included: only for a model whose source you trust.
    """
    from jukebox_pl.checkpoints.export import load as load_checkpoint

    return load_checkpoint(path, map_location, trust_code)


try:
    __version__ = version("jukebox-pl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "JukeboxError",
    "RecipeError",
    "RegistryError",
    "UntrustedCodeError",
    "__version__",
    "build",
    "components",
    "find",
    "get",
    "load",
    "names",
    "register",
]
