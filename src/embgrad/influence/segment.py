"""The inverted index: posting lists by table row, and the query kernel.

A :class:`Segment` covers the training examples ``[first, first + count)`` (all of them in
memory, or one Parquet shard). For each (checkpoint, table) it holds :class:`Postings`: the
stored rows sorted by (table row, example), with the start of each row's posting list, so the
training examples that share a row with a test example are found by a binary search and their
gradient rows read as one contiguous block. A query touches only the posting lists of the test
examples' rows: its cost is the number of postings touched times D, never n_train × V × D.
Dot products are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .rows import Rows

#: postings read (and converted to float64) at once, bounding a query's working memory
CHUNK = 8192


@dataclass(frozen=True)
class Postings:
    """One table at one checkpoint: ``keys`` (u,) the distinct rows, ascending; ``starts``
    (u + 1,) where each row's postings begin; ``example`` (n,) and ``values`` (n, D) sorted by
    (row, example)."""

    keys: np.ndarray
    starts: np.ndarray
    example: np.ndarray
    values: np.ndarray

    @staticmethod
    def build(parts: Iterable[Rows]) -> Postings:
        parts = list(parts)
        example = np.concatenate([p.example for p in parts])
        row = np.concatenate([p.row for p in parts])
        values = np.concatenate([p.values for p in parts])
        return Postings.from_sorted(*_by_row(example, row, values))

    @staticmethod
    def from_sorted(example: np.ndarray, row: np.ndarray, values: np.ndarray) -> Postings:
        if len(row):
            change = np.flatnonzero(np.diff(row)) + 1
            keys = row[np.concatenate([[0], change])]
            starts = np.concatenate([[0], change, [len(row)]])
        else:
            keys = np.zeros(0, np.int64)
            starts = np.zeros(1, np.int64)
        return Postings(keys.astype(np.int64), starts.astype(np.int64), example, values)

    @property
    def row(self) -> np.ndarray:
        """(n,) the table row of every posting."""
        return np.repeat(self.keys, np.diff(self.starts))

    def of_example(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of training example ``j`` (ascending rows)."""
        sel = np.flatnonzero(self.example == j)
        return self.row[sel], self.values[sel]

    def accumulate(
        self,
        t_sample: np.ndarray,
        t_row: np.ndarray,
        t_values: np.ndarray,
        weight: float,
        out: np.ndarray,
    ) -> None:
        """``out[s, e] += weight · ⟨test row, posting⟩`` for every posting sharing a row with
        the test rows (``t_sample`` (m,), ``t_row`` (m,), ``t_values`` (m, D) float64; each
        (sample, row) once)."""
        if not len(self.keys) or not len(t_row):
            return
        pos = np.searchsorted(self.keys, t_row)
        clipped = np.minimum(pos, len(self.keys) - 1)
        hit = np.flatnonzero(self.keys[clipped] == t_row)
        if not len(hit):
            return
        order = hit[np.argsort(pos[hit], kind="stable")]
        upos = pos[order]
        bounds = np.flatnonzero(np.diff(upos)) + 1
        for group in np.split(order, bounds):
            u = int(pos[group[0]])
            tests = t_values[group]  # (m_r, D)
            samples = t_sample[group]
            lo, hi = int(self.starts[u]), int(self.starts[u + 1])
            for a in range(lo, hi, CHUNK):
                b = min(hi, a + CHUNK)
                block = self.values[a:b]
                if len(group) == 1:  # one test vector: einsum casts in its buffer (2x faster)
                    dots = np.einsum("nd,d->n", block, tests[0], dtype=np.float64)[None]
                else:
                    dots = tests @ block.astype(np.float64, copy=False).T  # (m_r, n)
                if weight != 1.0:
                    dots *= weight
                out[np.ix_(samples, self.example[a:b])] += dots


def _by_row(
    example: np.ndarray, row: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((example, row))
    return example[order], row[order], values[order]


@dataclass
class Segment:
    """Training examples ``[first, first + count)``: ``postings[(checkpoint, table)]``,
    ``selfsq`` (n_checkpoints, count) float64, each example's Σ of squared stored-row norms,
    and each table's lookup role."""

    first: int
    count: int
    postings: dict[tuple[int, str], Postings]
    selfsq: np.ndarray
    roles: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def merge(segments: list[Segment], n_checkpoints: int) -> Segment:
        """One segment of consecutive segments (an in-memory index after building)."""
        if not segments:
            return Segment(0, 0, {}, np.zeros((n_checkpoints, 0)))
        keys: list[tuple[int, str]] = []
        for s in segments:
            keys += [k for k in s.postings if k not in keys]
        postings = {}
        for key in keys:
            parts = [s.postings[key] for s in segments if key in s.postings]
            postings[key] = Postings.from_sorted(
                *_by_row(
                    np.concatenate([p.example for p in parts]),
                    np.concatenate([p.row for p in parts]),
                    np.concatenate([p.values for p in parts]),
                )
            )
        selfsq = np.concatenate([s.selfsq for s in segments], axis=1)
        roles = {t: r for s in segments for t, r in s.roles.items()}
        count = sum(s.count for s in segments)
        return Segment(segments[0].first, count, postings, selfsq, roles)


class Source(Protocol):
    """Where an index's segments come from: memory, or Parquet shards read one at a time."""

    n_train: int

    def segments(self, rows: np.ndarray | None = None) -> Iterator[Segment]:
        """Every segment, in example order (holding at least the postings of ``rows``)."""
        ...

    def segment_of(self, j: int, rows: np.ndarray | None = None) -> Segment:
        """The segment holding training example ``j`` (at least its ``rows``)."""
        ...

    def self_squares(self) -> np.ndarray:
        """(n_checkpoints, n_train) float64: each example's squared stored-row norms."""
        ...


class MemorySource:
    """One merged in-memory segment."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.n_train = segment.count

    def segments(self, rows: np.ndarray | None = None) -> Iterator[Segment]:
        yield self.segment

    def segment_of(self, j: int, rows: np.ndarray | None = None) -> Segment:
        return self.segment

    def self_squares(self) -> np.ndarray:
        return self.segment.selfsq
