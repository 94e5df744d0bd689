"""The ``sample`` pipeline: build a sampler, say what to sample, and run it with ``Trainer.predict``.

The recipe names the sampler (``ancestral``, ``primed``, ``continue``, ``upsample``) with the
models it loads, and at the top level what to sample: ``artist``, ``genre``, ``lyrics``
(``lyrics=@lyrics.txt`` reads a file), ``seconds``, ``n_samples``, ``seed``, and ``song_seconds``:
the length of the song each clip opens (openai/jukebox's ``total_sample_length_in_seconds``), which
places the timing signal and the lyric windows; by default a dataset song prompted from gives its
own length, and otherwise each clip is a whole song. A list of artists, genres, lyrics or song
lengths is shared out over the samples in turn; one sample's several genres are
separated by commas. ``labels_from: DATASET`` (a shards folder) gives the samples that name no
artist the dataset's artists in turn, most songs first, each with the genres of their first song.
``Trainer.predict`` deals batches of sample indices to the devices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from torch.utils.data import DataLoader

from jukebox_pl.data.shard_reader import artist_labels
from jukebox_pl.errors import JukeboxError
from jukebox_pl.pipelines.base import REUSED, Pipeline, RunContext, quiet_trainer
from jukebox_pl.recipes import KwargsOf
from jukebox_pl.registry import build, register
from jukebox_pl.samplers.base import Sampler, SampleRequest
from jukebox_pl.samplers.store import SampleStore

logger = logging.getLogger(__name__)
# Arguments the pipeline owns.
_TRAINER_OWNED = ("logger", "default_root_dir", "enable_checkpointing", "enable_progress_bar", "callbacks")
_LABELS = ("artists", "genres", "lyrics", "song_seconds")  # what a sampler's source (a run, a prompt) may supply


def per_sample(value: str | Sequence[str], n_samples: int, name: str) -> list[str]:
    """One value per sample: a single value for all, or a list shared out in turn."""
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    if not values:
        raise JukeboxError(f"sample: {name} is an empty list")
    return [values[i % len(values)] for i in range(n_samples)]


def split_genres(genre: str) -> list[str]:
    """A sample's genres: comma-separated names, blanks dropped; none means 'unknown'."""
    names = [name.strip() for name in genre.split(",") if name.strip()]
    return names or ["unknown"]


@register("pipeline", "sample")
@dataclass
class SamplePipeline(Pipeline):
    """Sample `n_samples` clips of `seconds` with a sampler; resumes an interrupted run in the same folder."""

    sampler: Mapping[str, Any]
    artist: str | list[str] | None = None
    genre: str | list[str] | None = None
    lyrics: str | list[str] | None = None
    seconds: float | None = None
    song_seconds: float | list[float] | None = None
    n_samples: int = 1
    batch_size: int | None = None  # None: every sample in one batch
    seed: int = 0
    trainer: Annotated[Mapping[str, Any], KwargsOf("pytorch_lightning:Trainer", _TRAINER_OWNED)] | None = None
    progress: bool = True
    labels_from: str | None = None
    # A folder that holds a run with other settings: refused, or that run moved into replaced-K/ first.
    if_settings_changed: str = "refuse"

    def __post_init__(self) -> None:
        if self.if_settings_changed not in ("refuse", "set_aside"):
            raise JukeboxError(f"sample: if_settings_changed is 'refuse' or 'set_aside', not "
                               f"{self.if_settings_changed!r}")  # fmt: skip
        if self.n_samples < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise JukeboxError(
                f"sample: n_samples ({self.n_samples}) and batch_size ({self.batch_size}) must be positive"
            )

    def request(self, sampler: Sampler) -> SampleRequest:
        """What to sample; labels not given come from the run a ``continue``/``upsample`` sampler starts from, or
        from the dataset songs a ``primed`` sampler is prompted with."""
        earlier = sampler.source_request() or {}
        n = self.n_samples
        if "total_samples" in earlier and n > len(earlier["artists"]):  # continuing or upsampling a run's samples
            raise JukeboxError(f"sample: n_samples={n}, but the run it starts from has {len(earlier['artists'])}")
        # Labels not given come from where the sampler starts: a run's samples, or the prompts' songs in turn.
        earlier = {key: [value[i % len(value)] for i in range(n)] for key, value in earlier.items() if key in _LABELS}
        artists = per_sample(self.artist, n, "artist") if self.artist is not None else earlier.get("artists")
        if self.genre is not None:
            genres = [split_genres(genre) for genre in per_sample(self.genre, n, "genre")]
        else:
            genres = earlier.get("genres")
        lyrics = per_sample(self.lyrics, n, "lyrics") if self.lyrics is not None else earlier.get("lyrics")
        if artists is None and self.labels_from is not None:  # the dataset's artists, in turn
            found = artist_labels(self.labels_from)
            artists = [found[i % len(found)][0] for i in range(n)]
            genres = genres or [found[i % len(found)][1] for i in range(n)]
        song_seconds = earlier.get("song_seconds")
        if self.song_seconds is not None:
            given = [self.song_seconds] if isinstance(self.song_seconds, int | float) else list(self.song_seconds)
            if not given or min(given) <= 0 or (self.seconds is not None and min(given) < self.seconds):
                raise JukeboxError(f"sample: song_seconds={self.song_seconds} must be at least seconds "
                                   f"({self.seconds}): it is the length of the song each clip opens")  # fmt: skip
            song_seconds = [float(given[i % len(given)]) for i in range(n)]
        return SampleRequest(
            artists=list((artists or ["unknown"] * n)[:n]),
            genres=[list(g) for g in (genres or [["unknown"]] * n)[:n]],
            lyrics=list((lyrics or [""] * n)[:n]),
            seconds=self.seconds,
            seed=self.seed,
            song_seconds=song_seconds,
        )

    def run(self, context: RunContext) -> Mapping[str, Any]:
        sampler = build("sampler", self.sampler)
        if not isinstance(sampler, Sampler):
            raise JukeboxError(f"sampler: {self.sampler.get('_component_')} is not a jukebox_pl Sampler")
        request = self.request(sampler)
        store = SampleStore(context.run_dir)
        sampler.prepare(request, store, progress=self.progress)
        record = {**asdict(request), "total_samples": sampler.total, "settings": sampler.describe()}
        if record["song_seconds"] is None:  # runs recorded before the option still resume
            del record["song_seconds"]
        changed = store.changed(record)
        if changed and self.if_settings_changed == "set_aside":
            aside = store.set_aside()
            logger.info(f"{context.run_dir}: sampled before with other {', '.join(changed)}; now in {aside}")
        store.claim(record)
        indices = DataLoader(
            list(range(request.n_samples)), batch_size=self.batch_size or self.n_samples, shuffle=False
        )
        trainer = quiet_trainer(context.run_dir, self.trainer, enable_progress_bar=False)
        began = time.perf_counter()
        trainer.predict(sampler, dataloaders=indices, return_predictions=False)
        elapsed = time.perf_counter() - began
        summary: dict[str, Any] = {
            "run_dir": str(context.run_dir),
            "samples": request.n_samples,
            "audio_seconds": round(sampler.total / sampler.sample_rate, 3),
            "wall_seconds": round(elapsed, 1),
            REUSED: not sampler.timings,  # a finished run: every level was read back, none sampled
        }
        for level, timing in sorted(sampler.timings.items(), reverse=True):
            summary[f"level_{level}_tokens_per_second"] = round(timing["tokens"] / max(timing["seconds"], 1e-9), 1)
        finest = min(sampler.sampled_levels())
        summary["audio"] = str(store.wav_path(finest, 0).parent)
        alignment = store.alignment_dir()
        if alignment.is_dir():
            summary["alignment"] = str(alignment)
        return summary
