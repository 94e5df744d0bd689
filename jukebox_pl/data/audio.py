"""Audio files in and out: soundfile for decoding and encoding, soxr for resampling.

Files are read by their content, not their name: WAV, FLAC, Ogg Vorbis, Opus, MP3 and AIFF
through libsndfile (MP3 and Opus need libsndfile 1.1 or later, which the soundfile wheels
bundle), MP4/M4A and ADTS AAC through PyAV when it is installed (the ``m4a`` extra).

`read_song` also decides whether a file is fit for a dataset: unreadable, empty,
truncated, non-finite, silent or too short files, files of more than two channels, files
sampled below 8 kHz and files that are not audio at all raise `BadAudio` with the reason.
What the decoders print on their own (mpg123's resync notes, FFmpeg's warnings) is kept off
the terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from jukebox_pl.errors import JukeboxError, first_line

# Integer PCM is kept as integers so that it reaches FLAC bit-exact.
_INTEGER_SUBTYPES = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24}
SILENCE_PEAK = 1e-4  # about -80 dBFS: below this the whole file counts as silent
MIN_SAMPLE_RATE = 8000  # telephone quality; a file sampled below it has lost what the models learn from
MAX_CHANNELS = 2  # mono or stereo: Jukebox's data, and what the augmentations mix
# What a music library may hold, by name; files are still read by their content.
LIBSNDFILE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif")
PYAV_SUFFIXES = (".m4a", ".aac", ".mp4")
SUPPORTED_SUFFIXES = LIBSNDFILE_SUFFIXES + PYAV_SUFFIXES
_PYAV_FORMATS = ("MP4/M4A", "AAC")  # containers and codecs libsndfile does not read
_FORMAT_SUFFIXES = {
    "WAV": (".wav",),
    "FLAC": (".flac",),
    "Ogg Vorbis": (".ogg", ".oga"),
    "Ogg Opus": (".opus", ".ogg", ".oga"),
    "MP3": (".mp3",),
    "AIFF": (".aiff", ".aif"),
    "MP4/M4A": (".m4a", ".mp4", ".aac"),
    "AAC": (".aac",),
}


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
        return self.samples.astype(np.float32) / np.float32(2**31) if self.samples.dtype == np.int32 else self.samples


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, before decoding: enough for a dry run's table."""

    frames: int
    sample_rate: int
    channels: int
    format: str  # "MP3", "Ogg Opus", "MP4/M4A", ... (by content)
    subtype: str = ""  # libsndfile's subtype (PCM_16, VORBIS...); empty for PyAV

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def sniff(head: bytes) -> str | None:
    """The audio format the first bytes of a file announce, or None for none we know."""
    if head[:4] in (b"RIFF", b"RF64"):
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "Ogg Opus" if b"OpusHead" in head[:64] else "Ogg Vorbis"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if head[:3] == b"ID3":
        return "MP3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "AAC" if head[1] & 0x06 == 0 else "MP3"  # layer bits 00: an ADTS (AAC) frame
    return None


def probe(path: str | Path, min_seconds: float = 0.0) -> AudioInfo:
    """The header of `path`, checked (readable audio, frames, channels, rate, length); `BadAudio` otherwise."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise BadAudio(path, f"unreadable ({exc.strerror or exc})") from None
    kind = sniff(head)
    if kind in _PYAV_FORMATS:
        info = _probe_with_pyav(path, kind)
    else:
        try:
            with quiet_stderr():
                found = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            # libsndfile's message for content it does not know can be "File does not exist or is not a
            # regular file (possibly a pipe?)": say what the file holds instead.
            reason = _short(exc) if kind is not None else _not_audio(path, head)
            raise BadAudio(path, f"unreadable ({reason})") from None
        named = kind or found.format
        info = AudioInfo(found.frames, found.samplerate, found.channels, named, found.subtype)
    if info.frames <= 0 or info.sample_rate <= 0:
        raise BadAudio(path, "empty (no audio frames)")
    if info.channels > MAX_CHANNELS:
        raise BadAudio(path, f"{info.channels} channels: only mono and stereo audio is supported (mix it down first)")
    if info.sample_rate < MIN_SAMPLE_RATE:
        raise BadAudio(path, f"sampled at {info.sample_rate} Hz, below {MIN_SAMPLE_RATE} Hz: too low for music")
    _check_length(path, info.seconds, min_seconds)
    return info


def read_song(path: str | Path, sample_rate: int | None = None, min_seconds: float = 0.0) -> Song:
    """Decode `path`, check it, and resample to `sample_rate` if given and different."""
    info = probe(path)
    if info.format in _PYAV_FORMATS:
        samples, rate, bits = _decode_with_pyav(path), info.sample_rate, None
        declared = 0
    else:
        samples, rate, bits = _decode_with_libsndfile(path, info)
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
    _check_length(path, len(samples) / rate, min_seconds)
    if sample_rate is not None and rate != sample_rate:
        song = Song(resample(song.as_float(), rate, sample_rate), sample_rate, None)
    return song


def _check_length(path: str | Path, seconds: float, min_seconds: float) -> None:
    if seconds < min_seconds:
        raise BadAudio(path, f"too short: {seconds:.2f} s < {min_seconds:g} s")


def _decode_with_libsndfile(path: str | Path, info: AudioInfo) -> tuple[np.ndarray, int, int | None]:
    bits = _INTEGER_SUBTYPES.get(info.subtype)
    try:
        with quiet_stderr():
            samples, rate = sf.read(str(path), dtype="int32" if bits else "float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise BadAudio(path, f"corrupt or truncated ({_short(exc)})") from None
    return samples, rate, bits


def _pyav(path: str | Path, kind: str) -> object:
    try:
        import av
    except ImportError:
        raise BadAudio(
            path, f"unreadable ({_named(kind, path)}: reading it needs PyAV: pip install 'jukebox-pl[m4a]')"
        ) from None
    return av


def _probe_with_pyav(path: str | Path, kind: str) -> AudioInfo:
    av = _pyav(path, kind)
    try:
        with quiet_stderr(), av.open(str(path)) as container:
            if not container.streams.audio:
                raise BadAudio(path, f"unreadable ({_named(kind, path)} without an audio stream)")
            stream = container.streams.audio[0]
            rate, channels = int(stream.rate or 0), len(stream.codec_context.layout.channels)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / 1_000_000  # av.time_base: microseconds
    except av.FFmpegError as exc:
        raise BadAudio(path, f"unreadable ({_named(kind, path)}: {_short(exc)})") from None
    return AudioInfo(round(seconds * rate), rate, channels, kind)


def _decode_with_pyav(path: str | Path) -> np.ndarray:
    """(frames, channels) float32 of the first audio stream, decoded by FFmpeg through PyAV."""
    av = _pyav(path, "MP4/M4A")
    chunks = []
    try:
        with quiet_stderr(), av.open(str(path)) as container:
            to_float = av.AudioResampler(format="fltp")  # planar float32, the stream's own rate and layout
            for frame in container.decode(container.streams.audio[0]):
                chunks += [converted.to_ndarray() for converted in to_float.resample(frame)]
            chunks += [converted.to_ndarray() for converted in to_float.resample(None)]
    except av.FFmpegError as exc:
        raise BadAudio(path, f"corrupt or truncated ({_short(exc)})") from None
    if not chunks:
        raise BadAudio(path, "empty (no audio frames)")
    return np.ascontiguousarray(np.concatenate(chunks, axis=1).T, dtype=np.float32)


def _named(kind: str, path: str | Path) -> str:
    """The words for a file of `kind` ("an MP4/M4A file"), and its name when that says otherwise."""
    suffix = Path(path).suffix.lower()
    lie = f" named {suffix or 'without an extension'}" if suffix not in _FORMAT_SUFFIXES.get(kind, ()) else ""
    return f"{'an' if kind[0] in 'AEFIMO' else 'a'} {kind} file{lie}"


def _not_audio(path: str | Path, head: bytes) -> str:
    """Why a file libsndfile refused and whose first bytes announce no audio format is not audio."""
    suffix = Path(path).suffix.lower()
    text = ""
    for cut in range(4):  # the 64 bytes read may end inside a character
        with contextlib.suppress(UnicodeDecodeError):
            text = head[: len(head) - cut].decode("utf-8")
            break
    if not head:
        content = "it is an empty file"
    elif text and "".join(text.split()).isprintable():
        content = f"it holds text ({text[:24].strip()!r}...)"
    else:
        content = f"its content is no audio format known (it starts with bytes {head[:8].hex(' ')})"
    named = f"named {suffix}, but " if suffix else ""
    return f"not an audio file: {named}{content}"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Keep what C libraries print on file descriptor 2 (mpg123's "Note: Trying to resync...", FFmpeg's
    warnings) off the terminal; Python's own errors still arrive as exceptions."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (an embedded interpreter): nothing to keep quiet
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(frames, channels) float audio from one rate to another (soxr, high quality)."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def mono(audio: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 audio -> (frames,): the mean of the channels, the mono mix every model hears."""
    return audio.mean(axis=1, dtype=np.float32)


def encode_flac(song: Song) -> bytes:
    """FLAC bytes of `song`: 16/24-bit PCM as it came, float data clipped to 24-bit."""
    buffer = io.BytesIO()
    subtype = "PCM_16" if song.bits is not None and song.bits <= 16 else "PCM_24"
    samples = song.samples if song.bits is not None else np.clip(song.samples, -1.0, 1.0)
    sf.write(buffer, samples, song.sample_rate, format="FLAC", subtype=subtype)
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
    with contextlib.suppress(wave.Error, EOFError, OSError), wave.open(str(path), "rb") as handle:
        return handle.getnframes()
    return None


def _short(exc: BaseException) -> str:
    return first_line(exc).replace("Error : ", "")
