"""Callbacks for the crash tests: one kills its own training process in the middle of writing a checkpoint, one
makes every step last a minimum time.

Recipes reach them by dotted path (``crash_probe:KillDuringCheckpointWrite``) with ``tests/`` on PYTHONPATH.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class KillDuringCheckpointWrite(pl.Callback):
    """On the `at`-th write of ``last.ckpt``, writes half of it to the temporary file and sends SIGKILL to the
    process: what a crash or an out-of-memory kill does halfway through a save."""

    def __init__(self, at: int) -> None:
        self.at, self.writes = at, 0
        original = torch.save

        def save(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(target, (str, os.PathLike)) and Path(target).name.startswith(".last.ckpt."):
                self.writes += 1
                if self.writes == self.at:
                    buffer = io.BytesIO()
                    original(obj, buffer, *args, **kwargs)
                    data = buffer.getvalue()
                    with open(target, "wb") as handle:
                        handle.write(data[: len(data) // 2])
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
            original(obj, target, *args, **kwargs)

        torch.save = save


class SlowSteps(pl.Callback):
    """Makes each training step last at least `seconds`, so that a test killing the run within a bounded time after
    its first checkpoint always interrupts it, however fast the machine (the arithmetic is unchanged)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)
