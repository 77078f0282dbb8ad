"""Token classification (NER, POS): for each explained position t of a text, the attribution
of log p(label_t | x) to every input token.

A bidirectional encoder's every output position reads every input, so each (text, position)
is its own row of the engine (:class:`TokenRows`): the text's inputs repeated, the row's
quantity picked at its position. HF ``...ForTokenClassification`` models: log-softmax of the
(N, T, C) logits at the position, for the given label or the predicted one. Any other model
(Gluon included): ``loss_fn(outputs, rows)`` returns one quantity per position, (N, T), for
the N rows it was fed (``rows[n]`` row n's sample), and embgrad picks each row's position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from ..methods._arrays import repeat_samples, to_numpy
from .rows import Chunk, Outputs, StepLoss, WholeInputRows, logits_of


class PositionLoss:
    """The user's per-position quantities (N, T) picked at each row's position: (N,)."""

    def __init__(
        self, loss_fn: Callable[..., Any], samples: np.ndarray, positions: np.ndarray
    ) -> None:
        self.loss_fn, self.samples, self.positions = loss_fn, samples, positions
        self.seen: dict[str, np.ndarray] = {}

    def __call__(self, outputs: Any, rows: np.ndarray | None = None) -> Any:
        index = np.arange(self.samples.shape[0]) if rows is None else np.asarray(rows)
        q = self.loss_fn(outputs, self.samples[index])
        shape = tuple(int(s) for s in getattr(q, "shape", ()))
        if len(shape) != 2 or shape[0] != index.shape[0]:
            raise InputError(
                f"loss_fn returned shape {shape}; for token classification it must return one "
                f"quantity per position, (N, T) = ({index.shape[0]}, T), for the N rows fed"
            )
        return ops_for(q).pick_positions(q, self.positions[index])


class TokenRows(WholeInputRows):
    """Row (b, k): text b's inputs, explained at position ``positions[b, k]``."""

    kind: ClassVar[str] = "token_classification"

    def __init__(
        self,
        inputs: Any,
        outputs: Outputs,
        positions: np.ndarray,
        *,
        batch_axis: int,
        width: int,
        loss_fn: Callable[..., Any] | None,
    ) -> None:
        super().__init__(outputs)
        self.inputs, self.positions, self.axis = inputs, positions, batch_axis
        self._width, self.loss_fn = width, loss_fn

    def shared(self) -> tuple[Any, Any]:
        """The inputs of the B texts as given and the loss of every row (b, k) picked from
        their outputs: one forward for all rows (``outputs.shared``)."""
        rows = self.outputs.rows(0, self.outputs.shape[1])
        b, k = rows[:, 0], rows[:, 1]
        pos = self.positions[b, k]
        batch = self.outputs.shape[0]
        user = self.loss_fn

        def per_row(x: Any, index: np.ndarray) -> Any:
            ops = ops_for(x)
            return ops.pick_positions(ops.take_rows(x, b[index], 0), pos[index])

        if user is not None:

            def quantities(outputs: Any, index: np.ndarray) -> Any:
                return per_row(user(outputs, np.arange(batch)), index)

            return self.inputs, _Picked(quantities, rows.shape[0])

        def pick(outputs: Any, index: np.ndarray) -> Any:
            return per_row(_token_logits(outputs), index)

        return self.inputs, StepLoss(pick, self.outputs.targets[b, k].copy(), None)

    def chunk(self, k0: int, k1: int) -> Chunk:
        rows = self.outputs.rows(k0, k1)
        b, k = rows[:, 0], rows[:, 1]
        sub = repeat_samples(self.inputs, b, self.outputs.shape[0], self.axis)
        pos = self.positions[b, k]
        loss: Any
        if self.loss_fn is not None:
            loss = PositionLoss(self.loss_fn, b, pos)
        else:

            def pick(outputs: Any, index: np.ndarray) -> Any:
                logits = _token_logits(outputs)
                return ops_for(logits).pick_positions(logits, pos[index])

            loss = StepLoss(pick, self.outputs.targets[b, k].copy(), None)
        return Chunk(sub, loss, rows, {"word": None})


class _Picked:
    """A loss over all rows from one batch's outputs: ``quantities(outputs, index)``."""

    def __init__(self, quantities: Callable[[Any, np.ndarray], Any], n: int) -> None:
        self.quantities, self.n = quantities, n
        self.seen: dict[str, np.ndarray] = {}

    def __call__(self, outputs: Any, rows: np.ndarray | None = None) -> Any:
        index = np.arange(self.n) if rows is None else np.asarray(rows)
        return self.quantities(outputs, index)


def _token_logits(outputs: Any) -> Any:
    logits = logits_of(outputs, hint="pass loss_fn(outputs, rows) -> (N, T)")
    if len(logits.shape) != 3:
        raise InputError(
            f"token classification needs (N, T, labels) logits; the model gave "
            f"{tuple(logits.shape)}"
        )
    return logits


def default_positions(mask: np.ndarray, ids: np.ndarray, special: set[int]) -> list[np.ndarray]:
    """Per text, every real (``mask``) non-special token's position."""
    keep = mask & ~np.isin(ids, list(special)) if special else mask
    return [np.flatnonzero(row) for row in keep]


def word_starts(encoding: Any, n: int) -> list[np.ndarray] | None:
    """Per text, the first sub-token of every word (a fast tokenizer's ``word_ids``), or None."""
    if not hasattr(encoding, "word_ids"):
        return None
    out = []
    for b in range(n):
        try:
            words = encoding.word_ids(b)
        except (ValueError, AttributeError):
            return None
        seen: set[int] = set()
        starts = []
        for t, w in enumerate(words):
            if w is not None and w not in seen:
                seen.add(w)
                starts.append(t)
        out.append(np.asarray(starts, dtype=np.int64))
    return out


def check_positions(positions: Any, batch: int, width: int) -> list[np.ndarray]:
    """``positions`` (one list per text, or one list for a single text) as int arrays."""
    if isinstance(positions, np.ndarray) and positions.ndim == 2:
        positions = [row[row >= 0] for row in positions]
    if positions and all(isinstance(p, (int, np.integer)) for p in positions) and batch == 1:
        positions = [positions]
    if not isinstance(positions, (list, tuple)) or len(positions) != batch:
        raise InputError(
            f"positions must give one list of token positions per text ({batch}), got "
            f"{type(positions).__name__}"
        )
    out = []
    for b, p in enumerate(positions):
        a = np.asarray(p, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= width):
            raise InputError(
                f"text {b}: positions {sorted(set(a.tolist()))} outside its {width} tokens"
            )
        out.append(a)
    if not any(a.size for a in out):
        raise InputError("no position to explain (every text has none)")
    return out


def resolve_labels(
    target: Any, positions: list[np.ndarray], label2id: dict[str, int] | None, n_labels: int | None
) -> np.ndarray:
    """(B, K) label indices, −1 where predicted: ``target`` None, one label for all, or one list
    per text with a label (name or index) per explained position."""
    batch, kk = len(positions), max(a.size for a in positions)
    out = np.full((batch, kk), -1, dtype=np.int64)
    if target is None:
        return out

    def one(t: Any) -> int:
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            i = int(t)
        elif isinstance(t, str) and label2id and t in label2id:
            i = int(label2id[t])
        else:
            known = ", ".join(sorted(label2id)) if label2id else "none (use label indices)"
            raise InputError(f"unknown label {t!r}; the model's labels are: {known}")
        if n_labels is not None and not 0 <= i < n_labels:
            raise InputError(f"label index {i} out of range: the model has {n_labels} labels")
        return i

    if not isinstance(target, (list, tuple, np.ndarray)):
        for b, a in enumerate(positions):
            out[b, : a.size] = one(target)
        return out
    if len(target) != batch:
        raise InputError(f"got {len(target)} target lists for {batch} texts; give one per text")
    for b, (a, labels) in enumerate(zip(positions, target, strict=True)):
        labels = [labels] * a.size if not isinstance(labels, (list, tuple, np.ndarray)) else labels
        if len(labels) != a.size:
            raise InputError(
                f"text {b}: {len(labels)} labels for {a.size} explained positions; give one each"
            )
        out[b, : a.size] = [one(t) for t in labels]
    return out


def as_matrix(positions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) positions (−1 where none) and the (B, K) active mask."""
    kk = max(a.size for a in positions)
    pos = np.full((len(positions), kk), -1, dtype=np.int64)
    for b, a in enumerate(positions):
        pos[b, : a.size] = a
    return pos, pos >= 0


def ids_and_mask(inputs: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(B, T) ids and attention mask of HF-style inputs (numpy), where present."""
    if not isinstance(inputs, dict):
        return None, None
    ids = inputs.get("input_ids")
    mask = inputs.get("attention_mask")
    ids_np = None if ids is None else to_numpy(ids).astype(np.int64)
    if ids_np is None:
        return None, None
    m = np.ones(ids_np.shape, dtype=bool) if mask is None else to_numpy(mask).astype(bool)
    return ids_np, m
