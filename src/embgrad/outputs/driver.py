"""The driver for explained outputs: plan rows (sample, output) in memory-bounded chunks, run
each chunk through the registered method, scatter the rows back to (B, K, columns).

Written once for every kind of explained output; the kind's own logic lives in its
:class:`~embgrad.outputs.rows.RowBuilder`. A chunk with one lookup key is one
``Method.attribute`` call; a chunk with two (an encoder–decoder's source and target word
lookups) is one plain pass explained once per lookup.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, NoLookupError
from ..methods._passes import base_passes
from ..methods.base import Context, Method, Scores
from ..methods.plan import PASS_TOKENS, plan_outputs
from . import shared
from .rows import Chunk, RowBuilder


def explain(
    builder: RowBuilder,
    method: Method,
    options: dict[str, Any],
    *,
    tokens_per_pass: int | None = None,
    return_grads: bool = False,
) -> Driver:
    """Every chunk of ``builder``'s outputs through ``method``; the filled :class:`Driver`."""
    driver = Driver(method, options, builder, return_grads)
    if shared.applies(builder, method):
        rows = int(builder.outputs.active.sum())
        main = str(getattr(builder, "main", "word"))

        def scatter(chunk: Chunk, sc: Scores) -> None:
            driver.info["passes"].append((main, rows, None))
            driver.info["shared_forward"] = True
            driver.scatter(main, chunk, None, sc)

        if shared.run(builder, method, driver.options_for(rows), scatter):
            return driver
    for k0, k1 in plan_outputs(builder.outputs.active, builder.width, tokens_per_pass):
        driver.run(builder.chunk(k0, k1))
    return driver


class Driver:
    """Runs the method on each chunk of rows and scatters rows back to (B, K, columns).

    After the chunks: ``scores`` / ``signed`` / ``grads`` key → (B, K, W[, D]); ``quantity``
    (B, K) the explained quantity; ``delta`` (B, K) or None; ``seen`` the step scores (B, K);
    ``info["passes"]`` (key, rows, width) per pass."""

    def __init__(
        self, method: Method, options: dict[str, Any], builder: RowBuilder, return_grads: bool
    ) -> None:
        self.method, self.options = method, options
        self.shape = builder.outputs.shape
        self.return_grads, self.widths = return_grads, dict(builder.widths)
        self.scores: dict[str, np.ndarray] = {}
        self.signed: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.quantity = np.full(self.shape, np.nan)
        self.delta: np.ndarray | None = None
        self.seen: dict[str, np.ndarray] = {}
        self.info: dict[str, Any] = {"passes": []}

    def run(self, chunk: Chunk) -> None:
        n = int(chunk.rows.shape[0])
        for key, cols in chunk.columns.items():
            width = None if cols is None else int(cols.shape[1])
            self.info["passes"].append((key, n, width))
        if len(chunk.columns) == 1:
            ((key, cols),) = chunk.columns.items()
            sc = self.method.attribute(chunk.inputs, chunk.loss, **self.options_for(n))
            self.scatter(key, chunk, cols, sc)
            return
        # several word lookups (an encoder–decoder's): one plain pass, each explained on its own
        m = self.method
        bases = base_passes(
            m.model, chunk.inputs, chunk.loss, layer=m.layer, mode=m.mode, check=m.check
        )
        for key, cols in chunk.columns.items():
            found = [b for b in bases.values() if np.array_equal(b.ids, chunk.ids[key])]
            if len(found) != 1:
                raise NoLookupError(
                    f"found no single {m.layer!r} lookup reading the {key} ids among "
                    f"{', '.join(bases)}; pass layer= (a glob matching both word lookups)"
                )
            sc = m.from_base(found[0], chunk.inputs, chunk.loss, **self.options_for(n))
            self.scatter(key, chunk, cols, sc)

    def options_for(self, rows: int) -> dict[str, Any]:
        """The method's options, with its defaults for a batch of ``rows`` rows: passes of
        repeated rows (integrated gradients, SmoothGrad) hold ≤ PASS_TOKENS rows × 64."""
        opts = dict(self.options)
        ctx = Context(tokens_per_pass=PASS_TOKENS, mask=np.ones((rows, 64), dtype=bool))
        for key, value in type(self.method).defaults(ctx).items():
            opts.setdefault(key, value)
        return opts

    def scatter(self, key: str, chunk: Chunk, cols: np.ndarray | None, sc: Scores) -> None:
        rows = chunk.rows
        n, width = sc.scores.shape
        if cols is None:  # the positions as the model saw them
            cols = np.broadcast_to(np.arange(width), (n, width))
        if sc.scores.shape != cols.shape:
            raise InputError(
                f"the lookup's output has shape {sc.scores.shape} (rows, positions), the rows "
                f"were built for {cols.shape}"
            )
        if key not in self.scores:
            self._allocate(key, self.widths.get(key) or width, sc)
        b, k = rows[:, 0], rows[:, 1]
        r, w = np.nonzero(cols >= 0)
        c = cols[r, w]
        self.scores[key][b[r], k[r], c] = sc.scores[r, w]
        signed = sc.signed if sc.signed is not None else sc.scores
        self.signed[key][b[r], k[r], c] = signed[r, w]
        if key in self.grads and sc.attributions is not None:
            self.grads[key][b[r], k[r], c] = sc.attributions[r, w]
        self.quantity[b, k] = sc.losses
        if sc.delta is not None:
            if self.delta is None:
                self.delta = np.full(self.shape, np.nan)
            self.delta[b, k] = sc.delta
        for name, val in getattr(chunk.loss, "seen", {}).items():
            self.seen.setdefault(name, np.full(self.shape, np.nan))[b, k] = val

    def _allocate(self, key: str, width: int, sc: Scores) -> None:
        bb, kk = self.shape
        self.widths[key] = width
        self.scores[key] = np.zeros((bb, kk, width))
        self.signed[key] = np.zeros((bb, kk, width))
        if self.return_grads and sc.attributions is not None:
            d = int(sc.attributions.shape[-1])
            self.grads[key] = np.zeros((bb, kk, width, d), dtype=np.float32)
