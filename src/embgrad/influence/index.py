"""``InfluenceIndex``: TracIn-WE over per-sample embedding-table gradients.

influence(z_train, z_test) = Σ_c w_c · ⟨G_c(z_train), G_c(z_test)⟩, G_c(z) the per-sample
gradient of z's loss w.r.t. the selected table(s) at checkpoint c (lookup path only, as
``table_grad()`` defines it). G(z) is non-zero only on z's rows, so the index stores each
training example's rows once per checkpoint (``Segment``/``Postings``, an inverted index by
table row) and a query reads only the posting lists of the test examples' rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import bar
from ..backends.weights import CheckpointSlot
from .batches import check_labels, count_examples, iter_batches, loss_for
from .build import KEEP, Examples, Job, check_count, check_top_rows, checkpoints_and_weights
from .engines import EngineName, check_engine, open_engine
from .result import ExampleRows, Influence
from .rows import TableRows, special_ids
from .segment import MemorySource, Segment, Source

LossFn = Callable[..., Any]


class InfluenceIndex:
    """An index of training examples' per-checkpoint embedding-table gradients.

    Build with :meth:`build` (in memory, or Parquet shards with ``path=``), re-open a stored
    one with :meth:`open`; :meth:`query` scores test examples against every training example,
    :meth:`self_influence` ranks training examples (mislabel candidates).
    """

    def __init__(
        self,
        model: Any,
        *,
        states: list[Any],
        weights: list[float],
        layer: Any,
        top_rows: int | None,
        skip: np.ndarray | None,
        tokenizer: Any,
        batch_size: int,
        source: Source,
        roles: dict[str, str],
        path: Path | None = None,
    ) -> None:
        self.model = model
        self.weights = list(weights)
        self.layer = layer
        self.top_rows = top_rows
        self.skip_special = None if skip is None else skip.tolist()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.path = path
        self._states = states
        self._skip = skip
        self._source = source
        self._n = source.n_train
        self._roles = dict(roles)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: Any,
        train: Any,
        loss_fn: LossFn | None = None,
        *,
        labels: Any = None,
        layer: Any = "word",
        checkpoints: Sequence[Any] | None = None,
        weights: Sequence[float] | None = None,
        top_rows: int | None = None,
        tokenizer: Any = None,
        batch_size: int = 32,
        path: str | Path | None = None,
        skip_special: Any = None,
        engine: EngineName = "local",
        workers: int | None = None,
    ) -> InfluenceIndex:
        """Index the training examples ``train``.

        Args:
            model: a torch ``nn.Module`` or a Gluon ``Block``; with ``checkpoints`` it only
                gives the architecture. Never modified (weights, ``.grad``, modes, flags).
            train: one batch (array, tuple, Mapping such as a ``BatchEncoding``) or an
                iterable of batches; examples are numbered 0 … n−1 in order.
            loss_fn: ``loss_fn(outputs)`` or ``loss_fn(outputs, rows)`` → per-example losses
                (B,); ``rows`` holds the batch's example numbers. Or ``labels=``.
            labels: one class per training example → cross-entropy of the (B, C) logits
                (``.logits`` of HF outputs).
            layer: which lookups' tables (any ``layers=`` of :func:`embgrad.gradients`);
                several tables are summed.
            checkpoints: models or state dicts of one training run (the sum runs over them).
            weights: one per checkpoint (e.g. its learning rate); 1.0 each by default.
            top_rows: keep each training example's k largest-norm rows per checkpoint
                (TracIn-WE-topk); None keeps all (exact). The test side is always exact.
            tokenizer: names tokens in :meth:`Influence.by_token`; ``skip_special=True``
                reads its special ids.
            batch_size: the largest batch run at once (larger batches are cut).
            path: a folder to store the index in as Parquet shards (resumable).
            skip_special: None (all rows, exact TracIn-WE), True (the tokenizer's special ids)
                or a list of ids: those word-table rows are left out on both sides.
            engine: ``"local"`` (this process) or ``"ray"`` (a pool of ``workers`` Ray actors,
                each with a copy of the model; PyTorch models; same result).
        """
        states, w = checkpoints_and_weights(model, checkpoints, weights)
        top = check_top_rows(top_rows)
        skip = special_ids(skip_special, tokenizer)
        check_engine(engine, workers)
        label_arr = check_labels(labels, train, "training")
        loss = loss_for(loss_fn, label_arr, "training")
        run = functools.partial(
            open_engine, engine, model, states=states, layer=layer, skip=skip, loss=loss,
            top=top, workers=workers,
        )  # fmt: skip
        if path is not None:
            from .store import build_stored

            return build_stored(
                cls, model, train, loss, label_arr, Path(path), run,
                states=states, weights=w, layer=layer, top_rows=top, skip=skip,
                tokenizer=tokenizer, batch_size=batch_size,
            )  # fmt: skip
        segments: list[Segment] = []
        n = 0
        with run() as eng, bar(count_examples(train) or 0, "influence index", "ex") as shown:
            for seg in eng.map(_jobs(train, batch_size, shown)):
                segments.append(seg)
                n += seg.count
        check_count(label_arr, n)
        merged = Segment.merge(segments, len(states))
        return cls(
            model, states=states, weights=w, layer=layer, top_rows=top, skip=skip,
            tokenizer=tokenizer, batch_size=batch_size, source=MemorySource(merged),
            roles=merged.roles,
        )  # fmt: skip

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: Any,
        *,
        checkpoints: Sequence[Any] | None = None,
        weights: Sequence[float] | None = None,
        layer: Any = KEEP,
        top_rows: Any = KEEP,
        skip_special: Any = KEEP,
        tokenizer: Any = None,
        batch_size: int | None = None,
    ) -> InfluenceIndex:
        """Re-open an index built with ``path=``. ``model``, ``checkpoints`` and ``weights``
        must be those it was built with (their weights are hashed and compared); ``layer``,
        ``top_rows`` and ``skip_special`` default to the stored ones and, when given, must
        equal them. ``batch_size`` (queries) defaults to the build's."""
        from .store import open_stored

        return open_stored(
            cls, Path(path), model, checkpoints=checkpoints, weights=weights, layer=layer,
            top_rows=top_rows, skip_special=skip_special, tokenizer=tokenizer,
            batch_size=batch_size,
        )  # fmt: skip

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def n_checkpoints(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return (
            f"InfluenceIndex(n_train={self._n}, checkpoints={len(self._states)}, "
            f"layer={self.layer!r}, top_rows={self.top_rows}{where})"
        )

    def self_influence(self) -> np.ndarray:
        """(n_train,) float64: Σ_c w_c ‖G_c(z_j)‖² over the stored rows (exact unless
        ``top_rows``), the diagonal of a query of the training set against itself."""
        return np.asarray(self.weights, dtype=np.float64) @ self._source.self_squares()

    def train_rows(self, j: int, rows: np.ndarray | None = None) -> ExampleRows:
        """(checkpoint, table) → (rows, values) of training example ``j`` (at least its
        ``rows`` when given)."""
        out: ExampleRows = {}
        for key, p in self._source.segment_of(j, rows).postings.items():
            rows, values = p.of_example(j)
            if len(rows):
                out[key] = (rows, values)
        return out

    def token_name(self, table: str, row: int) -> Any:
        """A table row as a token string (word tables with a tokenizer) or its id."""
        tok = self.tokenizer
        if tok is not None and self._roles.get(table) == "word":
            convert = getattr(tok, "convert_ids_to_tokens", None)
            if convert is not None:
                return convert(int(row))
        return int(row)

    # -- querying ----------------------------------------------------------------------------
    def query(self, test: Any, loss_fn: LossFn | None = None, *, labels: Any = None) -> Influence:
        """Score every test example against every training example.

        ``test`` is batched like ``train``; ``loss_fn`` / ``labels=`` as in :meth:`build`
        (``rows`` numbering the test examples). Returns :class:`Influence` with
        ``scores`` (n_test, n_train) float64.
        """
        label_arr = check_labels(labels, test, "test")
        loss = loss_for(loss_fn, label_arr, "test")
        parts: list[list[TableRows]] = []
        n = 0
        with CheckpointSlot(self.model) as slot:
            runner = Examples(slot, self._states, self.layer, self._skip)
            for batch, count in iter_batches(test, self.batch_size):
                parts.append(runner.run(batch, loss, n, count))
                n += count
        check_count(label_arr, n, "test")
        flat = _flatten(parts)
        scores = np.zeros((n, self._n), dtype=np.float64)
        rows = [r for _, r, _ in flat.values()]
        touched = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
        for seg in self._source.segments(touched):
            for key, p in seg.postings.items():
                if key in flat:
                    ex, row, values = flat[key]
                    p.accumulate(ex, row, values, self.weights[key[0]], scores)
        tables = {t for _, t in flat} | {t for p in parts for c in p for t in c}
        return Influence(
            scores, _per_example(flat, n), self.train_rows, self.weights, self.token_name,
            several_tables=len(tables) > 1,
        )  # fmt: skip


def _jobs(train: Any, batch_size: int, shown: Any) -> Iterator[Job]:
    n = 0
    for batch, count in iter_batches(train, batch_size):
        yield batch, n, count
        n += count
        shown.update(count)


def _flatten(
    parts: list[list[TableRows]],
) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(checkpoint, table) → (example, row, values float64) over all test batches."""
    acc: dict[tuple[int, str], list[Any]] = {}
    for per_ckpt in parts:
        for c, tables in enumerate(per_ckpt):
            for t, r in tables.items():
                acc.setdefault((c, t), []).append(r)
    return {
        key: (
            np.concatenate([r.example for r in rs]),
            np.concatenate([r.row for r in rs]),
            np.concatenate([r.values for r in rs]).astype(np.float64),
        )
        for key, rs in acc.items()
    }


def _per_example(
    flat: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]], n: int
) -> list[ExampleRows]:
    out: list[ExampleRows] = [{} for _ in range(n)]
    for key, (ex, row, values) in flat.items():
        bounds = np.searchsorted(ex, np.arange(n + 1))
        for i in range(n):
            a, b = int(bounds[i]), int(bounds[i + 1])
            if b > a:
                out[i][key] = (row[a:b], values[a:b])
    return out
