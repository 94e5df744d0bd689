"""Spectrogram pictures and audio files of reconstructions, for validation logs and reports."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jukebox_pl.atomic import atomic_write_bytes
from jukebox_pl.stft import JUKEBOX_STFT, stft_magnitude

FLOOR_DB = -80.0


def log_spectrogram(audio: torch.Tensor) -> np.ndarray:
    """Mono audio ``(T,)`` or ``(C, T)`` -> dB magnitude ``(frequencies, frames)``, 0 dB = the loudest bin."""
    magnitude = stft_magnitude(audio.reshape(1, -1, audio.shape[-1]), *JUKEBOX_STFT)[0]  # Jukebox's SC resolution
    decibels = 20 * torch.log10(magnitude.clamp(min=1e-7))
    return (decibels - decibels.max()).clamp(min=FLOOR_DB).numpy()


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure: Any) -> bytes:
    """`figure`, laid out, as PNG bytes at 80 dpi; the figure is closed."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    pyplot().close(figure)
    return buffer.getvalue()


def spectrogram_figure(rows: Mapping[str, torch.Tensor], sample_rate: int, title: str = "") -> bytes:
    """PNG bytes of one spectrogram per row (name -> mono audio), stacked with a shared time axis."""
    figure, axes = pyplot().subplots(len(rows), 1, figsize=(8, 2.2 * len(rows)), squeeze=False, sharex=True)
    for axis, (name, audio) in zip(axes[:, 0], rows.items(), strict=True):
        spectrogram = log_spectrogram(audio)
        seconds = audio.shape[-1] / sample_rate
        axis.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", vmin=FLOOR_DB, vmax=0,
                    extent=(0.0, seconds, 0.0, sample_rate / 2000))  # fmt: skip
        axis.set_ylabel("kHz")
        axis.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    if title:
        figure.suptitle(title, fontsize=10)
    return png_bytes(figure)


def flac_bytes(audio: torch.Tensor, sample_rate: int) -> bytes:
    """``(C, T)`` float audio in [-1, 1] as 16-bit FLAC bytes."""
    import soundfile

    buffer = io.BytesIO()
    samples = audio.float().clamp(-1, 1).reshape(-1, audio.shape[-1]).t().numpy()
    soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def log_reconstructions(
    batch: Mapping[str, torch.Tensor], sample_rate: int, folder: Path, loggers: Sequence[Any], step: int
) -> None:
    """Write, per item, a FLAC per row and one PNG of all rows' spectrograms; send both to TensorBoard."""
    from pytorch_lightning.loggers import TensorBoardLogger

    folder.mkdir(parents=True, exist_ok=True)
    for item in range(next(iter(batch.values())).shape[0]):
        rows = {name: audio[item] for name, audio in batch.items()}
        png = spectrogram_figure(rows, sample_rate, title=f"item {item}, step {step}")
        atomic_write_bytes(folder / f"item{item}.png", png)
        for name, audio in rows.items():
            atomic_write_bytes(folder / f"item{item}_{name.replace(' ', '')}.flac", flac_bytes(audio, sample_rate))
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                from PIL import Image

                image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                logger.experiment.add_image(f"reconstructions/item{item}", image, step, dataformats="HWC")
                for name, audio in rows.items():
                    mono = audio.float().reshape(-1, audio.shape[-1]).mean(0).clamp(-1, 1)
                    logger.experiment.add_audio(f"reconstructions/item{item}/{name}", mono, step, sample_rate)
