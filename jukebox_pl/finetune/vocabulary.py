"""Teaching a prior new artists and genres: extend its vocabularies and grow its label embeddings.

Known names keep their ids (a checkpoint's ids never change meaning); new names are appended,
and the label conditioner's embedding tables gain one row per new name. The new rows start as
a copy of the ``unknown`` row, as the mean of the named rows, or as a copy of one named
artist or genre; every old row stays bit-identical.

Example::

    artists, added = extend(vocabularies["artists"], ["Nina Simone"])
    weight = grow_rows(prior.labels.artist_emb.weight, len(artists), "copy", source=artists.id("Billie Holiday"))
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Literal

import torch

from jukebox_pl.data.labels import UNKNOWN_ID, Vocabulary
from jukebox_pl.errors import JukeboxError, did_you_mean

InitStrategy = Literal["unknown", "mean", "copy"]


def extend(vocabulary: Vocabulary, names: Iterable[str]) -> tuple[Vocabulary, list[str]]:
    """A copy of `vocabulary` with `names` appended (names it knows keep their ids), and the names added."""
    extended = copy.deepcopy(vocabulary)
    added = []
    for name in names:
        if name not in extended:
            extended.add(name)
            added.append(name)
    return extended, added


def grow_rows(
    weight: torch.Tensor, rows: int, strategy: InitStrategy, source: int | None = None, start: int | None = None
) -> torch.Tensor:
    """`weight` (old_rows, width) with rows `start`..`rows` (the new names' ids) initialised, grown to `rows` rows
    when it has fewer; rows before `start` are unchanged, and so are spare rows past `rows`.

    `start` (default: every old row is named) is the old vocabulary's size: a table may have more rows than its
    vocabulary has names, and its spare rows were never trained. ``unknown``: copies of row 0; ``mean``: the mean
    of the named rows 1..`start` (row 0 if there are none); ``copy``: copies of row `source`.
    """
    old = weight.shape[0]
    start = old if start is None else start
    if not 0 < start <= old:
        raise ValueError(f"the first new row must be in [1, {old}], got {start}")
    if rows < start:
        raise ValueError(f"cannot shrink a vocabulary of {start} names to {rows}")
    if strategy == "unknown":
        row = weight[UNKNOWN_ID]
    elif strategy == "mean":
        row = weight[1:start].mean(dim=0) if start > 1 else weight[UNKNOWN_ID]
    elif strategy == "copy":
        if source is None or not 0 <= source < start:
            raise ValueError(f"init strategy 'copy' needs a source row in [0, {start}), got {source}")
        row = weight[source]
    else:
        raise ValueError(f"unknown init strategy {strategy!r}; use 'unknown', 'mean' or 'copy'")
    grown = weight.new_empty(max(rows, old), weight.shape[1])
    grown[:old] = weight
    grown[start:rows] = row
    return grown


def source_row(vocabulary: Vocabulary, name: str | None, where: str) -> int:
    """The id of the existing `name` whose row new rows copy; a clear error when it is not there."""
    if not name:
        raise JukeboxError(f"{where}: init_strategy 'copy' needs the name of an existing {vocabulary.kind} to copy")
    if name not in vocabulary:
        raise JukeboxError(
            f"{where}: {vocabulary.kind} {name!r} to copy is not in the checkpoint's vocabulary of "
            f"{len(vocabulary) - 1} {vocabulary.kind}s{did_you_mean(name, vocabulary.known_names())}"
        )
    return vocabulary.id(name)
