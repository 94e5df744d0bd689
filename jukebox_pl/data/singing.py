"""A syllable sung at a pitch: espeak-ng speaks it, Praat's PSOLA stretches and tunes it.

The demo dataset sings the lyrics of its scores with this (``jukebox_pl.data.rendering``).
espeak-ng's C library comes bundled by espeakng-loader and is driven through ctypes;
Praat comes as parselmouth. Nothing is downloaded.

Both draw random numbers, from generators that they seed with the clock: `seed_voice` seeds them from a
piece's name. espeak-ng's waveform generator also keeps its state from one utterance to the next (starting the
library again does not reset it), so a piece sings the same only in a process that sang nothing before it:
`jukebox_pl.data.demo` renders every piece in a fresh process.

Example::

    sung = sing("la", [(69, 0.5), (71, 0.25)], "en", 44100)  # A4 then B4: 0.75 s of float32
"""

from __future__ import annotations

import ctypes
import hashlib
from typing import Any

import numpy as np

from jukebox_pl.data.audio import resample
from jukebox_pl.errors import JukeboxError


class _Espeak:
    """espeak-ng's C library (from espeakng-loader), speaking into memory at 22.05 kHz."""

    _callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        self.library = ctypes.CDLL(espeakng_loader.get_library_path())
        self.library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.library.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        synchronous = 2
        self.sample_rate = self.library.espeak_Initialize(synchronous, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise JukeboxError(f"espeak-ng failed to start (code {self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = self._callback_type(self._collect)  # kept alive: C holds the pointer
        self.library.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _collect(self, samples: Any, count: int, events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def speak(self, text: str, voice: str, words_per_minute: int) -> np.ndarray:
        """Monotone speech of `text`, float32 at `self.sample_rate`, silence trimmed."""
        if voice != self._voice:
            if self.library.espeak_SetVoiceByName(voice.encode()) != 0:
                raise JukeboxError(f"espeak-ng has no voice {voice!r}")
            self._voice = voice
        rate, pitch, pitch_range = 1, 3, 4  # espeak_PARAMETER values
        self.library.espeak_SetParameter(rate, int(words_per_minute), 0)
        self.library.espeak_SetParameter(pitch, 50, 0)
        self.library.espeak_SetParameter(pitch_range, 0, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        character_positions, utf8 = 1, 1
        self.library.espeak_Synth(data, len(data), 0, character_positions, 0, utf8, None, None)
        self.library.espeak_Synchronize()
        speech = np.concatenate(self._chunks).astype(np.float32) / 32768 if self._chunks else np.zeros(0, np.float32)
        loud = np.flatnonzero(np.abs(speech) > 0.01)
        return speech[loud[0] : loud[-1] + 1] if len(loud) else speech


_ESPEAK: _Espeak | None = None


def _espeak() -> _Espeak:
    """This process's espeak-ng, started on first use."""
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    return _ESPEAK


def seed_voice(key: str) -> None:
    """Seed the random numbers of espeak-ng and of Praat's overlap-add from `key` (a piece's name)."""
    from parselmouth.praat import run

    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    _espeak().library.espeak_ng_SetRandSeed(seed)
    run(f"random_initializeWithSeedUnsafelyButPredictably ({seed})")


def sing(text: str, notes: list[tuple[int, float]], voice: str, sample_rate: int) -> np.ndarray:
    """One syllable sung on `notes` [(MIDI pitch, seconds)], float32 at `sample_rate`, exactly as long."""
    import parselmouth
    from parselmouth.praat import call

    espeak = _espeak()
    total = sum(duration for _, duration in notes)
    target = round(total * sample_rate)
    # Speak slower for long notes, so that PSOLA has less to stretch.
    words_per_minute = 90 if total > 1.2 else 130 if total > 0.6 else 200 if total > 0.3 else 320
    speech = espeak.speak(text, voice, words_per_minute)
    if len(speech) < 400:
        return np.zeros(target, np.float32)
    sound = parselmouth.Sound(speech.astype(np.float64), sampling_frequency=espeak.sample_rate)
    for _ in range(4):
        if sound.duration >= 0.98 * total:
            break
        # Stretch the vowel (the middle), keep the consonants; Praat's overlap-add stops
        # producing sound past a factor of about 3, so stretch in several passes.
        factor = min(2.9, max(1.0, (total / sound.duration - 0.4) / 0.6))
        sound = _retime(sound, [(0.0, 1.0), (0.18, 1.0), (0.22, factor), (0.78, factor), (0.82, 1.0), (1.0, 1.0)])
    if sound.duration > 1.02 * total:
        sound = _retime(sound, [(0.0, total / sound.duration)])
    manipulation = call(sound, "To Manipulation", 0.01, 60, 600)
    pitch_tier = call("Create PitchTier", "pitch", 0, sound.duration)
    scale, elapsed = sound.duration / total, 0.0
    for index, (pitch, duration) in enumerate(notes):
        frequency = 440.0 * 2 ** ((pitch - 69) / 12)
        begin, end = elapsed * scale, (elapsed + duration) * scale
        call(pitch_tier, "Add point", begin + (0.015 if index else 0.0), frequency)  # short glide between notes
        call(pitch_tier, "Add point", max(begin + 0.016, end), frequency)
        elapsed += duration
    call([pitch_tier, manipulation], "Replace pitch tier")
    sung = call(manipulation, "Get resynthesis (overlap-add)").values[0].astype(np.float32)
    sung = resample(sung[:, None], espeak.sample_rate, sample_rate)[:, 0]
    sung = sung[:target] if len(sung) >= target else np.pad(sung, (0, target - len(sung)))
    fade = min(len(sung) // 4, int(0.02 * sample_rate))
    if fade:
        sung[:fade] *= np.linspace(0, 1, fade, dtype=np.float32)
        sung[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return sung


def _retime(sound: Any, points: list[tuple[float, float]]) -> Any:
    """PSOLA time-stretch by a duration tier given at fractions of the sound's length."""
    from parselmouth.praat import call

    manipulation = call(sound, "To Manipulation", 0.01, 60, 600)
    tier = call("Create DurationTier", "duration", 0, sound.duration)
    for fraction, factor in points:
        call(tier, "Add point", fraction * sound.duration, factor)
    call([tier, manipulation], "Replace duration tier")
    return call(manipulation, "Get resynthesis (overlap-add)")
