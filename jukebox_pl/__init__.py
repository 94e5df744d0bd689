"""jukebox-pl: Jukebox-style music generation (hierarchical VQ-VAE + transformer priors) as a
modular PyTorch Lightning framework.

Importing the package is cheap: components and plugins are loaded on first use.
"""

from importlib.metadata import PackageNotFoundError, version

from jukebox_pl.errors import JukeboxError, RecipeError, RegistryError
from jukebox_pl.registry import build, components, find, get, names, register


def load(path: str, map_location: str = "cpu"):
    """Rebuild a component from an export folder (safetensors + recipe) or a train-pipeline checkpoint."""
    from jukebox_pl.checkpoints.export import load as load_checkpoint

    return load_checkpoint(path, map_location)


try:
    __version__ = version("jukebox-pl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "JukeboxError",
    "RecipeError",
    "RegistryError",
    "__version__",
    "build",
    "components",
    "find",
    "get",
    "load",
    "names",
    "register",
]
