"""A datamodule of synthetic harmonic tones: audio with known pitch, for smoke tests and demos."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from jukebox_pl.registry import register


def harmonic_tone(
    frequency: float, amplitude: float, decay: float, n_harmonics: int, sample_rate: int, length: int
) -> torch.Tensor:
    """One mono tone of shape (length,): harmonics at 1/k amplitude under an exponential decay."""
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    harmonics = torch.arange(1, n_harmonics + 1, dtype=torch.float64)
    # Harmonics above Nyquist would alias; silence them.
    weights = torch.where(harmonics * frequency < sample_rate / 2, 1.0 / harmonics, 0.0)
    waves = torch.sin(2 * math.pi * frequency * harmonics[:, None] * t[None, :])  # (H, T)
    tone = (weights[:, None] * waves).sum(0) / weights.sum()
    return (amplitude * torch.exp(-decay * t) * tone).float()


class _ToneDataset(Dataset):
    def __init__(self, size: int, seed: int, sample_rate: int, sample_length: int, n_harmonics: int) -> None:
        self.size, self.seed = size, seed
        self.sample_rate, self.sample_length, self.n_harmonics = sample_rate, sample_length, n_harmonics

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        midi_note = torch.randint(36, 96, (), generator=generator).item()
        frequency = 440.0 * 2 ** ((midi_note - 69) / 12)
        amplitude = 0.1 + 0.8 * torch.rand((), generator=generator).item()
        decay = 4.0 * torch.rand((), generator=generator).item()
        audio = harmonic_tone(frequency, amplitude, decay, self.n_harmonics, self.sample_rate, self.sample_length)
        return {"audio": audio[None, :], "frequency": torch.tensor(frequency, dtype=torch.float32)}


@register("datamodule", "sine_tones")
class SineTones(pl.LightningDataModule):
    """Random harmonic tones (MIDI notes 36-95) with decaying envelopes; validation is the same every epoch."""

    def __init__(
        self,
        sample_rate: int = 22050,
        sample_length: int = 4096,
        batch_size: int = 8,
        train_size: int = 256,
        val_size: int = 32,
        n_harmonics: int = 6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if sample_length <= 0 or batch_size <= 0:
            raise ValueError("sample_length and batch_size must be positive")
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        # A new seed per epoch gives fresh tones; the trainer's epoch is not known here,
        # so the training set is drawn from the base seed and reshuffled by the loader.
        dataset = _ToneDataset(h.train_size, h.seed + 1, h.sample_rate, h.sample_length, h.n_harmonics)
        return DataLoader(dataset, batch_size=h.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        h = self.hparams
        dataset = _ToneDataset(h.val_size, h.seed, h.sample_rate, h.sample_length, h.n_harmonics)
        return DataLoader(dataset, batch_size=h.batch_size, shuffle=False)
