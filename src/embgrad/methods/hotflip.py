"""``hotflip``: first-order estimates of every single-token substitution, ranked per position.

Swapping token w at position t for w' changes f by about (e_w' − e_w) · g_t (Ebrahimi et al.
2018), g_t = df/dx_t. For all positions and all V candidates this is one matrix product
G (N, D) · Eᵀ (D, V) minus the current tokens' e_w · g_t — computed in row blocks of at most
``max_bytes`` so a long batch does not need an (N, V) array at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import InputError
from ._arrays import to_numpy
from ._passes import Base, LossFn
from .base import Context, Method, Scores, choice, register

Direction = Literal["increase", "decrease", "abs"]


@register
class HotFlip(Method):
    """Top-``k`` substitutions per position by the first-order score (e_w' − e_w) · g_t.

    Options:
        k: candidates per position (default 3).
        direction: rank by ``"increase"`` of f (default, classic HotFlip), ``"decrease"``, or
            ``"abs"`` (largest change either way). Scores keep their sign.
        exclude_ids: token ids never proposed and whose positions are not flipped (special
            tokens); the lookup's ``padding_idx`` is always excluded.
        mask: (B, T) bool, positions that may be flipped (e.g. the attention mask).
        max_bytes: memory bound of one block of the (positions × V) score matrix.

    ``scores`` (B, T) is the best candidate's score per position (0 where not flipped);
    ``hotflip[b]`` lists ``{"position", "token_id", "replacement_id", "score", "rank"}``.
    """

    name = "hotflip"
    summary = "HotFlip: best single-token swap per position by first-order score (e'-e).g"
    option_help: ClassVar[dict[str, str]] = {
        "k": "candidates per position (default 3)",
        "direction": "rank by 'increase' (default), 'decrease' or 'abs' change of f",
        "exclude_ids": "token ids never proposed nor flipped (special tokens)",
        "mask": "(B, T) bool positions that may be flipped",
        "max_bytes": "memory bound of one block of the score matrix (default 256 MiB)",
    }
    single_pass = True

    @classmethod
    def defaults(cls, ctx: Context) -> dict[str, Any]:
        """Flip only real tokens (``ctx.mask``), never special tokens; the caller's direction."""
        out: dict[str, Any] = {}
        if ctx.direction is not None:
            out["direction"] = ctx.direction
        special = ctx.special_ids
        if special is None and ctx.tokenizer is not None:
            special = tuple(getattr(ctx.tokenizer, "all_special_ids", None) or ())
        if special is not None:
            out["exclude_ids"] = list(special)
        if ctx.mask is not None:
            out["mask"] = ctx.mask
        return out

    def _attribute(
        self,
        base: Base,
        inputs: Any,
        loss_fn: LossFn,
        *,
        k: int = 3,
        direction: Direction = "increase",
        exclude_ids: Sequence[int] | None = None,
        mask: Any = None,
        max_bytes: int = 256 * 2**20,
    ) -> Scores:
        choice("direction", direction, ("increase", "decrease", "abs"))
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an integer ≥ 1, got {k!r}")
        table = base.weight()
        vocab = table.shape[0]
        excluded = np.zeros(vocab, dtype=bool)
        ids_out = [int(i) for i in (exclude_ids or ())]
        if base.padding_idx is not None:
            ids_out.append(int(base.padding_idx))
        bad = [i for i in ids_out if not 0 <= i < vocab]
        if bad:
            raise InputError(f"exclude_ids {bad} are outside the table (V={vocab})")
        excluded[ids_out] = True
        keep = ~excluded[base.ids]
        if mask is not None:
            m = to_numpy(mask)
            if m.shape != keep.shape:
                raise InputError(f"mask has shape {m.shape}, expected (B, T) {keep.shape}")
            keep &= m.astype(bool)
        where = np.argwhere(keep)
        cand, score = self._top(
            base, table, where, excluded, min(k, vocab - 1), direction, max_bytes
        )
        best = np.zeros(base.ids.shape)
        lists: list[list[dict[str, Any]]] = [[] for _ in range(base.batch)]
        for (b, t), row_ids, row_scores in zip(where, cand, score, strict=True):
            best[b, t] = row_scores[0]
            for r, (w, s) in enumerate(zip(row_ids, row_scores, strict=True)):
                lists[b].append(
                    {
                        "position": int(t),
                        "token_id": int(base.ids[b, t]),
                        "replacement_id": int(w),
                        "score": float(s),
                        "rank": r,
                    }
                )
        return Scores(
            method=self.name,
            scores=best,
            losses=base.losses,
            ids=base.ids,
            hotflip=lists,
            info={"k": k, "direction": direction},
        )

    @staticmethod
    def _top(
        base: Base,
        table: np.ndarray,
        where: np.ndarray,
        excluded: np.ndarray,
        k: int,
        direction: str,
        max_bytes: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k candidate ids and their signed scores (N, k) for the positions ``where``."""
        n, vocab = where.shape[0], table.shape[0]
        cand = np.zeros((n, k), dtype=np.int64)
        score = np.zeros((n, k), dtype=np.float64)
        if n == 0:
            return cand, score
        g = base.grad[where[:, 0], where[:, 1]].astype(table.dtype)  # (N, D)
        cur_ids = base.ids[where[:, 0], where[:, 1]]
        cur = np.einsum("nd,nd->n", g, table[cur_ids])  # e_w · g
        block = max(1, int(max_bytes) // (vocab * table.dtype.itemsize))
        for s in range(0, n, block):
            e = min(n, s + block)
            full = g[s:e] @ table.T - cur[s:e, None]  # (n, V): (e_w' − e_w) · g
            key = {"increase": full, "decrease": -full, "abs": np.abs(full)}[direction]
            key[:, excluded] = -np.inf
            key[np.arange(e - s), cur_ids[s:e]] = -np.inf
            top = np.argpartition(-key, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(key, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            cand[s:e] = top
            score[s:e] = np.take_along_axis(full, top, axis=1)
        return cand, score
