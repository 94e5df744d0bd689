"""Example jukebox-pl plugin: importing this module registers its components."""

from jukebox_pl_example.callbacks import GradNormLogger
from jukebox_pl_example.tones import SineTones

__all__ = ["GradNormLogger", "SineTones"]
