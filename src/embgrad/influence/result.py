"""The result of a query: scores, proponents / opponents, and the per-token breakdown."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

#: (checkpoint, table) → (rows, values) of one example
ExampleRows = dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Top:
    """One test example's most influential training examples.

    ``proponents`` / ``opponents``: training example numbers, the largest positive scores first
    / the most negative first (at most k each; fewer when fewer scores have that sign), with
    their scores in ``proponent_scores`` / ``opponent_scores``.
    """

    test: int
    proponents: np.ndarray
    proponent_scores: np.ndarray
    opponents: np.ndarray
    opponent_scores: np.ndarray


class Influence:
    """TracIn-WE influence of training examples on test examples.

    Attributes:
        scores: (n_test, n_train) float64, ``scores[i, j] = Σ_c w_c ⟨G_c(train j), G_c(test i)⟩``
            over the selected tables (lookup path), exact unless the index keeps ``top_rows``.
    """

    def __init__(
        self,
        scores: np.ndarray,
        test_rows: list[ExampleRows],
        train_rows: Callable[[int, np.ndarray], ExampleRows],
        weights: Sequence[float],
        token_name: Callable[[str, int], Any],
        several_tables: bool,
    ) -> None:
        self.scores = scores
        self._test_rows = test_rows
        self._train_rows = train_rows
        self._weights = list(weights)
        self._name = token_name
        self._several = several_tables

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.scores.shape[0]), int(self.scores.shape[1]))

    def __repr__(self) -> str:
        return f"Influence(n_test={self.shape[0]}, n_train={self.shape[1]})"

    def top(self, k: int = 10) -> list[Top]:
        """Per test example: its ``k`` proponents (largest positive scores) and ``k`` opponents
        (most negative scores)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}")
        out = []
        for i, row in enumerate(self.scores):
            order = np.argsort(-row, kind="stable")
            pro = order[row[order] > 0][:k]
            neg = np.argsort(row, kind="stable")
            opp = neg[row[neg] < 0][:k]
            out.append(Top(i, pro, row[pro], opp, row[opp]))
        return out

    def _check(self, i: int, j: int) -> tuple[int, int]:
        n_test, n_train = self.shape
        for name, v, n in (("test", i, n_test), ("train", j, n_train)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not -n <= v < n:
                raise InputError(f"{name} example {v!r} out of range: there are {n}")
        return int(i) % n_test, int(j) % n_train

    def by_token(self, i: int, j: int) -> dict[Any, float]:
        """{token: contribution} over the table rows test ``i`` and train ``j`` share; the
        contributions sum to ``scores[i, j]``. Tokens are strings when the index has a
        tokenizer, else row ids; with several tables, keys are (table, token)."""
        i, j = self._check(i, j)
        test = self._test_rows[i]
        shared = [r for r, _ in test.values()]
        train = self._train_rows(
            j, np.unique(np.concatenate(shared)) if shared else np.zeros(0, np.int64)
        )
        out: dict[Any, float] = {}
        for key, (rows, values) in train.items():
            if key not in test:
                continue
            t_rows, t_values = test[key]
            common, a, b = np.intersect1d(rows, t_rows, assume_unique=True, return_indices=True)
            if not len(common):
                continue
            dots = np.einsum(
                "nd,nd->n", values[a].astype(np.float64), t_values[b].astype(np.float64)
            )
            w = self._weights[key[0]]
            for r, d in zip(common.tolist(), dots.tolist(), strict=True):
                name = self._name(key[1], int(r))
                token = (key[1], name) if self._several else name
                out[token] = out.get(token, 0.0) + w * d
        return out
