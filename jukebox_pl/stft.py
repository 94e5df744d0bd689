"""The one STFT magnitude of jukebox-pl and Jukebox's STFT resolutions.

The VQ-VAE's spectral losses, the reconstruction metrics and the spectrogram plots all
measure audio through `stft_magnitude`, so that a loss and the metric that reports it see
the same spectrum.

Example::

    magnitude = stft_magnitude(audio, *JUKEBOX_STFT)  # (B, 1025, frames)
"""

from __future__ import annotations

import torch

# Jukebox's DefaultSTFTValues (openai/jukebox utils/audio_utils.py): n_fft 2048, hop 256, window 6 * hop.
# Jukebox measures spectral convergence and the data's spectral bandwidth at this resolution.
JUKEBOX_STFT = (2048, 256, 1536)

# Jukebox's multi-resolution spectral loss (hparams.py multispec_loss_n_fft, multispec_loss_hop_length,
# multispec_loss_window_size).
MULTISPEC_N_FFTS = (2048, 1024, 512)
MULTISPEC_HOP_LENGTHS = (240, 120, 50)
MULTISPEC_WINDOW_LENGTHS = (1200, 600, 240)


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop_length: int, window_length: int) -> torch.Tensor:
    """|STFT| of audio ``(B, T)`` or ``(B, C, T)`` (channels averaged): ``(B, n_fft // 2 + 1, frames)``.

    Float32 whatever the input dtype, a periodic Hann window, centred frames.
    """
    if audio.dim() == 3:
        audio = audio.mean(dim=1)
    audio = audio.float()
    if audio.shape[-1] <= n_fft // 2:
        raise ValueError(
            f"a {n_fft}-point STFT needs more than {n_fft // 2} samples, got {audio.shape[-1]}: use longer crops "
            "(data.sample_length) or smaller spectral-loss resolutions"
        )
    window = torch.hann_window(window_length, device=audio.device)
    spectrum = torch.stft(audio, n_fft, hop_length, window_length, window, center=True, return_complex=True)
    return spectrum.abs()
