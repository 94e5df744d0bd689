"""Audio files in and out: soundfile for decoding and encoding, soxr for resampling.

`read_song` also decides whether a file is fit for a dataset: unreadable, empty,
truncated, non-finite, silent or too short files, files of more than two channels and files
sampled below 8 kHz raise `BadAudio` with the reason.
"""

from __future__ import annotations

import contextlib
import io
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from jukebox_pl.errors import JukeboxError

# Integer PCM is kept as integers so that it reaches FLAC bit-exact.
_INTEGER_SUBTYPES = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24}
SILENCE_PEAK = 1e-4  # about -80 dBFS: below this the whole file counts as silent
MIN_SAMPLE_RATE = 8000  # telephone quality; a file sampled below it has lost what the models learn from
MAX_CHANNELS = 2  # mono or stereo: Jukebox's data, and what the augmentations mix
SUPPORTED_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".aiff", ".aif")


class BadAudio(JukeboxError):
    """A file that cannot go into a dataset; `reason` says why in a few words."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class Song:
    """Decoded audio, (frames, channels), as int32 (integer PCM, not resampled) or float32."""

    samples: np.ndarray
    sample_rate: int
    bits: int | None  # integer PCM bit depth, None for float data

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    def as_float(self) -> np.ndarray:
        if self.samples.dtype == np.int32:
            return self.samples.astype(np.float32) / np.float32(2**31)
        return self.samples


def read_song(path: str | Path, sample_rate: int | None = None, min_seconds: float = 0.0) -> Song:
    """Decode `path`, check it, and resample to `sample_rate` if given and different."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise BadAudio(path, f"unreadable ({_short(exc)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise BadAudio(path, "empty (no audio frames)")
    if info.channels > MAX_CHANNELS:
        raise BadAudio(path, f"{info.channels} channels: only mono and stereo audio is supported (mix it down first)")
    if info.samplerate < MIN_SAMPLE_RATE:
        raise BadAudio(path, f"sampled at {info.samplerate} Hz, below {MIN_SAMPLE_RATE} Hz: too low for music")
    bits = _INTEGER_SUBTYPES.get(info.subtype)
    try:
        samples, rate = sf.read(str(path), dtype="int32" if bits else "float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise BadAudio(path, f"corrupt or truncated ({_short(exc)})") from None
    declared = _declared_wav_frames(path) or info.frames
    if len(samples) == 0:
        raise BadAudio(path, "empty (no audio frames)")
    if len(samples) < declared:
        raise BadAudio(path, f"truncated: {len(samples)} of {declared} frames present")
    song = Song(samples, rate, bits)
    if bits is None and not np.isfinite(samples).all():
        raise BadAudio(path, "contains NaN or infinite samples")
    if np.abs(song.as_float()).max() < SILENCE_PEAK:
        raise BadAudio(path, f"silent (peak below {SILENCE_PEAK:g})")
    if len(samples) / rate < min_seconds:
        raise BadAudio(path, f"too short: {len(samples) / rate:.2f} s < {min_seconds:g} s")
    if sample_rate is not None and rate != sample_rate:
        song = Song(resample(song.as_float(), rate, sample_rate), sample_rate, None)
    return song


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(frames, channels) float audio from one rate to another (soxr, high quality)."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def encode_flac(song: Song) -> bytes:
    """FLAC bytes of `song`: 16/24-bit PCM as it came, float data clipped to 24-bit."""
    buffer = io.BytesIO()
    if song.bits is not None:
        subtype = "PCM_16" if song.bits <= 16 else "PCM_24"
        sf.write(buffer, song.samples, song.sample_rate, format="FLAC", subtype=subtype)
    else:
        sf.write(buffer, np.clip(song.samples, -1.0, 1.0), song.sample_rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def decode(data: bytes, source: str = "audio data") -> tuple[np.ndarray, int]:
    """(frames, channels) float32 audio and its rate, from encoded bytes (FLAC, WAV...).

    Bytes that do not decode, or decode to no frames or to NaN, raise `BadAudio` naming `source`
    (a shard and its member, say).
    """
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(source, f"not decodable audio ({_short(exc)})") from None
    if len(samples) == 0:
        raise BadAudio(source, "empty (no audio frames)")
    if not np.isfinite(samples).all():
        raise BadAudio(source, "contains NaN or infinite samples")
    return samples, rate


def _declared_wav_frames(path: str | Path) -> int | None:
    # libsndfile quietly shortens a truncated WAV to what is there; the header says how
    # long it should be.
    if Path(path).suffix.lower() != ".wav":
        return None
    with contextlib.suppress(wave.Error, EOFError, OSError):
        with wave.open(str(path), "rb") as handle:
            return handle.getnframes()
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("Error : ", "")
