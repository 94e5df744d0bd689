"""A small music library written on the fly: tagged files of several formats, lyric files, an untagged
artist folder, a file whose name lies about its content, and files that are not songs."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from audio_fixtures import write_song
from mutagen import File as TaggedFile
from mutagen.id3 import ID3, TCON, TIT2, TPE2, USLT
from mutagen.mp4 import MP4

HAS_PYAV = importlib.util.find_spec("av") is not None


@dataclass
class Library:
    """The folder and what each song should become (by file name)."""

    root: Path
    expected: dict[str, dict] = field(default_factory=dict)  # name -> artist, genres, title, lyrics, times
    skipped: dict[str, str] = field(default_factory=dict)  # name -> words of its skip reason


def lrc_text(lines: list[str], times: list[float], offset_ms: int = 0) -> str:
    stamps = [f"[{int(t // 60):02d}:{t % 60:05.2f}]{line}" for t, line in zip(times, lines, strict=True)]
    header = ["[ar:Ignored When Tagged]", f"[offset:{offset_ms:+d}]"] if offset_ms else ["[ar:Ignored When Tagged]"]
    return "\n".join(header + stamps) + "\n"


def write_m4a(path: Path, seconds: float, sample_rate: int, seed: int | None = None) -> None:
    """AAC in an MP4 container, written by FFmpeg through PyAV."""
    import av

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * rng.uniform(200, 600) * t)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def make_library(root: Path, seconds: float = 3.0, seed: int | None = None) -> Library:
    """Songs of several formats and labels; the line times of the .lrc file are random."""
    rng = np.random.default_rng(seed)
    library = Library(root)
    times = np.round(np.sort(rng.uniform(0.0, seconds - 0.2, size=3)), 2).tolist()
    lines = ["first line sung", "second line here", "and the last one"]

    # FLAC with Vorbis comments, a multi-genre tag and a time-stamped .lrc beside it.
    flac = root / "Tag Artist" / "First Album" / "01 - Opening.flac"
    write_song(flac, seconds, 44100, seed=int(rng.integers(1 << 30)))
    tags = TaggedFile(flac)
    tags.update({"artist": ["The Tagged Band"], "genre": ["Rock; Pop", "rock"], "title": ["Opening Song"]})
    tags.save()
    flac.with_suffix(".lrc").write_text(lrc_text(lines, times), encoding="utf-8")
    library.expected[flac.name] = {"artist": "The Tagged Band", "genres": ["Rock", "Pop"], "title": "Opening Song",
                                   "lyrics": "\n".join(lines), "times": times}  # fmt: skip

    # Ogg Vorbis, 22.05 kHz mono, with lyrics embedded in its tags.
    ogg = root / "Tag Artist" / "First Album" / "02 - Second.ogg"
    ogg.parent.mkdir(parents=True, exist_ok=True)
    write_song(root / "scratch.wav", seconds, 22050, channels=1, seed=int(rng.integers(1 << 30)))
    sf.write(ogg, sf.read(root / "scratch.wav")[0], 22050, format="OGG", subtype="VORBIS")
    (root / "scratch.wav").unlink()
    tags = TaggedFile(ogg)
    tags.update({"artist": ["The Tagged Band"], "genre": ["Jazz", "Soul/Funk"], "lyrics": ["embedded words"]})
    tags.save()
    library.expected[ogg.name] = {"artist": "The Tagged Band", "genres": ["Jazz", "Soul", "Funk"],
                                  "title": "Second", "lyrics": "embedded words"}  # fmt: skip

    # No tags: the folders name the artist (a disc folder is passed over), upper-case extension, a .txt beside it.
    wav = root / "Folder Artist" / "Some Album" / "CD1" / "03 Track Name.WAV"
    write_song(wav, seconds, 48000, seed=int(rng.integers(1 << 30)))
    (wav.parent / "03 Track Name.txt").write_text("plain text lyrics\nsecond line\n", encoding="utf-8")
    library.expected[wav.name] = {"artist": "Folder Artist", "genres": [], "title": "Track Name",
                                  "lyrics": "plain text lyrics\nsecond line\n"}  # fmt: skip

    # MP3 with ID3: only an album artist, a genre with a slash; spaces and non-ASCII letters in the path.
    mp3 = root / "Ünïcödé Folder" / "sóng with spaces.mp3"
    mp3.parent.mkdir(parents=True, exist_ok=True)
    audio = write_song(root / "scratch.wav", seconds, 44100, seed=int(rng.integers(1 << 30)))
    (root / "scratch.wav").unlink()
    sf.write(mp3, audio, 44100, format="MP3")
    tags = ID3()
    tags.add(TPE2(encoding=3, text=["Álbum Ärtist"]))
    tags.add(TCON(encoding=3, text=["Electronic/Dance"]))
    tags.add(TIT2(encoding=3, text=["Sóng"]))
    tags.add(USLT(encoding=3, lang="eng", desc="", text="ünïcödé lyrics"))
    tags.save(mp3)
    library.expected[mp3.name] = {"artist": "Álbum Ärtist", "genres": ["Electronic", "Dance"], "title": "Sóng",
                                  "lyrics": "ünïcödé lyrics"}  # fmt: skip

    # Opus at 48 kHz straight in the root folder, tagged.
    opus = root / "loose track.opus"
    audio = write_song(root / "scratch.wav", seconds, 48000, seed=int(rng.integers(1 << 30)))
    (root / "scratch.wav").unlink()
    sf.write(opus, audio, 48000, format="OGG", subtype="OPUS")
    tags = TaggedFile(opus)
    tags.update({"artist": ["Opus Player"], "genre": ["Ambient"]})
    tags.save()
    library.expected[opus.name] = {"artist": "Opus Player", "genres": ["Ambient"], "title": "loose track",
                                   "lyrics": ""}  # fmt: skip

    # A FLAC file named .mp3 is read by its content.
    liar = root / "Liar" / "really flac.mp3"
    liar.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(flac, liar)
    library.expected[liar.name] = {"artist": "The Tagged Band", "genres": ["Rock", "Pop"], "title": "Opening Song",
                                   "lyrics": ""}  # fmt: skip

    if HAS_PYAV:  # AAC in an M4A with MP4 tags
        m4a = root / "Apple Artist" / "aac song.m4a"
        m4a.parent.mkdir(parents=True, exist_ok=True)
        write_m4a(m4a, seconds, 44100, seed=int(rng.integers(1 << 30)))
        tags = MP4(m4a)
        tags["\xa9ART"], tags["\xa9gen"], tags["\xa9nam"] = ["M4A Artist"], ["Classical"], ["Aac Title"]
        tags.save()
        library.expected[m4a.name] = {"artist": "M4A Artist", "genres": ["Classical"], "title": "Aac Title",
                                      "lyrics": ""}  # fmt: skip

    # Not songs: text named .mp3 (skipped, saying so), bytes of no format (skipped), a cover (passed over).
    (root / "Liar" / "notes.mp3").write_text("these are my notes, not a song\n" * 4)
    library.skipped["notes.mp3"] = "not an audio file: named .mp3, but it holds text"
    (root / "Liar" / "blob.xyz").write_bytes(rng.integers(0, 256, size=256, dtype=np.uint8).tobytes())
    library.skipped["blob.xyz"] = "not an audio file (.xyz)"
    (root / "Tag Artist" / "First Album" / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    return library
