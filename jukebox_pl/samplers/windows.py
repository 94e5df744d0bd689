"""Windowed sampling: where each window of a prior's context starts, and what it is conditioned on.

A prior sees `n_ctx` codes at a time. Longer audio is sampled window by window, each
window moving `hop = hop_fraction * n_ctx` codes past the last and taking the codes it
overlaps as its prompt (openai/jukebox ``sample.py``: ``sample_level``,
``utils/sample_utils.py``: ``get_starts``; Jukebox's defaults are hop fractions 0.5, 0.5
and 0.125 for levels 0, 1 and 2). For every window the labels are recomputed: the timing
signal places it in the song, the lyric window is the characters around its midpoint, and
an upsampler reads the codes of the level above over the same stretch of audio.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from jukebox_pl.data.text import lyric_window

PAD_CODE = 0


def window_starts(total: int, n_ctx: int, hop: int) -> list[int]:
    """Start positions of the windows that cover `total` codes, `hop` apart; the last ends at `total`.

    A level shorter than one window is one window at 0 (of `total` codes). The last window is
    moved back to end exactly at `total`, so that it has a full context (as Jukebox does).
    """
    if total <= 0 or n_ctx <= 0 or hop <= 0:
        raise ValueError(f"windows need total, n_ctx and hop > 0; got {total}, {n_ctx}, {hop}")
    return [0] if total <= n_ctx else [*range(0, total - n_ctx, hop), total - n_ctx]


def window_hop(n_ctx: int, hop_fraction: float, step: int = 1) -> int:
    """Codes between two windows: ``hop_fraction * n_ctx``, a positive multiple of `step`."""
    if not 0 < hop_fraction <= 1:
        raise ValueError(f"hop_fraction must be in (0, 1], got {hop_fraction}")
    hop = int(n_ctx * hop_fraction) // step * step
    if hop <= 0:
        raise ValueError(f"hop_fraction {hop_fraction} of n_ctx {n_ctx} is less than {step} code(s)")
    return hop


def window_seed(seed: int, level: int, start: int, first_sample: int) -> int:
    """A 63-bit seed for one window of one batch: the same run draws the same codes, resumed or not."""
    digest = hashlib.sha256(f"{seed}/{level}/{start}/{first_sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def upper_window(upper: torch.Tensor, start: int, length: int, ratio: int) -> torch.Tensor:
    """The codes of the level above (B, T_up) over codes start..start+length of this one: (B, ⌈length / ratio⌉).

    Past the end of the level above the window is padded with code 0.
    """
    if start % ratio:
        raise ValueError(f"a window at code {start} does not start on a code of the level above (every {ratio})")
    first, count = start // ratio, -(-length // ratio)
    window = upper[:, first : first + count]
    if window.shape[1] < count:
        window = torch.nn.functional.pad(window, (0, count - window.shape[1]), value=PAD_CODE)
    return window


def lyric_windows(
    songs: Sequence[np.ndarray], n_tokens: int, total_samples: Sequence[int], offset: int, window_samples: int
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Each sample's lyric window (B, n_tokens) for a window at `offset` samples of a song of `total_samples[b]`
    samples, and the character indices."""
    windows = [
        lyric_window(tokens, n_tokens, total, offset, window_samples)
        for tokens, total in zip(songs, total_samples, strict=True)
    ]
    tokens = torch.from_numpy(np.stack([tokens for tokens, _ in windows]))
    return tokens, [indices for _, indices in windows]
