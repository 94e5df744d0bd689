"""What a sampling run writes, atomically, so that an interrupted run continues where it stopped.

A run folder::

    request.json                     what was asked: labels per sample, length, seed, mode, settings
    codes/level_{l}/sample_{i}.safetensors   the codes so far, rewritten after every window
    level_{l}/sample_{i}.wav         the audio of a finished level, decoded by the VQ-VAE
    alignment/sample_{i}.json|png|html       the lyric alignment (lyrics-conditioned priors)
    replaced-{k}/                    an earlier run with other settings, set aside (`set_aside`)

Every file is written to a temporary name and renamed, so a file is either the previous
complete version or the new one. Started again with the same request, a run reads the
codes back and samples only the windows that are missing.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from jukebox_pl.atomic import atomic_write_bytes, atomic_write_text
from jukebox_pl.errors import JukeboxError

REQUEST_FILE = "request.json"


class SampleStore:
    """Reads and writes one sampling run's files under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ request
    def changed(self, request: Mapping[str, Any]) -> list[str]:
        """The keys in which the folder's earlier run asked for other than `request`; [] if none or no run."""
        path = self.root / REQUEST_FILE
        if not path.is_file():
            return []
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise JukeboxError(f"{path}: unreadable ({exc}); delete it to start this run afresh") from None
        request = json.loads(json.dumps(request))
        return sorted(key for key in set(earlier) | set(request) if earlier.get(key) != request.get(key))

    def claim(self, request: Mapping[str, Any]) -> None:
        """Record `request`, or check that the folder's earlier run asked for the same thing."""
        changed = self.changed(request)
        if changed:
            raise JukeboxError(
                f"{self.root} holds a sampling run with other settings ({', '.join(changed)} differ); "
                "use another output_dir, or delete that folder to start again"
            )
        if not (self.root / REQUEST_FILE).is_file():
            atomic_write_text(self.root / REQUEST_FILE, json.dumps(request, indent=2) + "\n")

    def set_aside(self) -> Path:
        """Move the earlier run's request, codes, wavs and alignments into the first free ``replaced-K/``."""
        aside = next(path for k in itertools.count(1) if not (path := self.root / f"replaced-{k}").exists())
        aside.mkdir()
        for entry in sorted(self.root.iterdir()):
            if entry.name in (REQUEST_FILE, "codes", "alignment") or entry.name.startswith("level_"):
                entry.rename(aside / entry.name)
        return aside

    def request(self) -> dict[str, Any]:
        path = self.root / REQUEST_FILE
        if not path.is_file():
            raise JukeboxError(f"{self.root}: not a sampling run (no {REQUEST_FILE})")
        return json.loads(path.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ codes
    def codes_path(self, level: int, sample: int) -> Path:
        return self.root / "codes" / f"level_{level}" / f"sample_{sample}.safetensors"

    def save_codes(self, level: int, samples: Sequence[int], codes: torch.Tensor, total: int) -> None:
        """Write each sample's codes (B, T) of `level`; `total` is the length the level will have."""
        from safetensors.torch import save

        for row, sample in enumerate(samples):
            tensors = {"codes": codes[row].detach().to("cpu", torch.int64).contiguous()}
            atomic_write_bytes(self.codes_path(level, sample), save(tensors, metadata={"total": str(total)}))

    def load_codes(self, level: int, samples: Sequence[int]) -> torch.Tensor | None:
        """The saved codes (B, T) of `level` for `samples`, cut to the shortest; None if any is missing.

        A run stopped while it wrote one window's files may leave some samples a window ahead;
        cutting them back is safe because the window is drawn again from the same seed.
        """
        from safetensors.torch import load_file

        rows = []
        for sample in samples:
            path = self.codes_path(level, sample)
            if not path.is_file():
                return None
            try:
                rows.append(load_file(str(path))["codes"])
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
                raise JukeboxError(f"{path}: unreadable codes ({exc}); delete it to sample it again") from None
        length = min(len(row) for row in rows)
        return torch.stack([row[:length] for row in rows])

    # ------------------------------------------------------------------ audio
    def wav_path(self, level: int, sample: int) -> Path:
        return self.root / f"level_{level}" / f"sample_{sample}.wav"

    def save_wavs(self, level: int, samples: Sequence[int], audio: torch.Tensor, sample_rate: int) -> list[Path]:
        """Write audio (B, C, T) in [-1, 1] as 16-bit WAV files, one per sample."""
        for row, sample in enumerate(samples):
            samples_tc = audio[row].detach().float().cpu().clamp(-1, 1).numpy().T  # (T, C)
            buffer = io.BytesIO()
            soundfile.write(buffer, np.ascontiguousarray(samples_tc), sample_rate, format="WAV", subtype="PCM_16")
            atomic_write_bytes(self.wav_path(level, sample), buffer.getvalue())
        return [self.wav_path(level, sample) for sample in samples]

    def alignment_dir(self) -> Path:
        return self.root / "alignment"
