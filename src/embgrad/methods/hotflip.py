"""``hotflip``: single-token substitutions picked by their first-order estimate, then verified.

Swapping token w at position t for w' changes f by about (e_w' − e_w) · g_t (Ebrahimi et al.
2018), g_t = df/dx_t. For all positions and all V candidates this is one matrix product
G (N, D) · Eᵀ (D, V) minus the current tokens' e_w · g_t — computed in row blocks of at most
``max_bytes`` so a long batch does not need an (N, V) array at once.

The estimate is only a way to pick candidates: it is often off by tens of percent and sometimes
has the wrong sign. So the best ``verify`` candidates of each sample are run through the model
with the token replaced (batched: one forward, no backward, per ``verify_rows`` flipped rows)
and ``verified`` = f(x') − f(x) is measured with the same ``loss_fn``; candidates are ranked by
it in the requested direction (see :func:`verify_flips`).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from ._arrays import map_arrays, repeat_samples, to_numpy
from ._passes import Base, LossFn, bind_rows, forward_losses
from .base import Context, Method, Scores, choice, register

Direction = Literal["increase", "decrease", "abs"]
Replacements = Literal["words", "pieces"]

#: the marks tokenizers put on pieces: WordPiece continues a word with "##"; byte-level BPE
#: (GPT-2, RoBERTa) and SentencePiece start a word with "Ġ" / "▁"
_CONTINUES, _STARTS = ("##",), ("Ġ", "▁")
_KINDS: weakref.WeakKeyDictionary[Any, np.ndarray | None] = weakref.WeakKeyDictionary()


def continuing_pieces(tokenizer: Any) -> np.ndarray | None:
    """(V,) bool over the tokenizer's vocabulary: True where a token continues a word rather
    than starting one (WordPiece's ``##ay``; for byte-level BPE and SentencePiece, a token
    without the word-start mark ``Ġ`` / ``▁``), or None where the tokenizer marks neither
    (then HotFlip cannot tell, and proposes any token). Cached per tokenizer."""
    try:
        return _KINDS[tokenizer]
    except (KeyError, TypeError):
        pass
    out = _continuing(tokenizer)
    with contextlib.suppress(TypeError):  # a tokenizer that takes no weak reference
        _KINDS[tokenizer] = out
    return out


def _continuing(tokenizer: Any) -> np.ndarray | None:
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    try:
        size = len(tokenizer)
        tokens = [str(t) for t in convert(list(range(size)))] if convert else []
    except Exception:  # not an HF-like tokenizer: no classification
        return None
    if not tokens:
        return None
    for marks, starts in ((_CONTINUES, False), (_STARTS, True)):
        for mark in marks:
            hit = np.fromiter((t.startswith(mark) for t in tokens), dtype=bool, count=len(tokens))
            if hit.mean() >= 0.05:  # the vocabulary uses this mark (a few stray ones do not)
                return ~hit if starts else hit
    return None


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
        verify: per sample, how many candidates are run through the model to measure
            f(x') − f(x): the best of each position first (positions by their best estimate),
            then the second best of each, ... (default 4; 0: estimates only).
        verify_rows: flipped rows per verification forward (memory bound; default 64).
        replacements: ``"words"`` (default): a token is replaced only by a token of its own
            kind — a word (or a word's first piece) by a word, a piece that continues a word
            (WordPiece's ``##ay``, a BPE token without ``Ġ``) by such a piece — so a whole
            word is never swapped for a fragment that glues onto its neighbour (``movie →
            ##ay``); ``"pieces"``: any token. Needs to know the kinds: ``continues``, set from
            the tokenizer (:func:`continuing_pieces`); without it every token is proposed.
        continues: (V,) bool, the tokens that continue a word (set from the tokenizer).

    ``scores`` (B, T) is the best candidate's estimate per position (0 where not flipped);
    ``hotflip[b]`` lists ``{"position", "token_id", "replacement_id", "estimate", "verified",
    "rank"}`` (``verified`` None where not measured), verified candidates first, best first by
    ``verified`` in ``direction``, then the others by ``estimate``; ``rank`` is the candidate's
    rank by estimate at its position.
    """

    name = "hotflip"
    attributes_outputs = False
    suggests_swaps = True
    summary = "HotFlip: best single-token swap per position by first-order score (e'-e).g"
    option_help: ClassVar[dict[str, str]] = {
        "k": "candidates per position (default 3)",
        "direction": "rank by 'increase' (default), 'decrease' or 'abs' change of f",
        "exclude_ids": "token ids never proposed nor flipped (special tokens)",
        "mask": "(B, T) bool positions that may be flipped",
        "max_bytes": "memory bound of one block of the score matrix (default 256 MiB)",
        "verify": "candidates per sample run through the model, f(x')-f(x) (0: estimates only)",
        "verify_rows": "flipped rows per verification forward (memory bound)",
        "replacements": "'words' (a word by a word, a ##piece by a piece) or 'pieces' (any token)",
    }
    single_pass = True
    array_options: ClassVar[tuple[str, ...]] = ("mask", "exclude_ids", "continues")

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
            if ctx.tokens_per_pass is not None:
                out["verify_rows"] = max(1, ctx.tokens_per_pass // max(1, ctx.mask.shape[1]))
        if ctx.flips_shown is not None:
            out["verify"] = ctx.flips_shown  # every suggestion shown is measured
        if ctx.tokenizer is not None:
            kinds = continuing_pieces(ctx.tokenizer)
            if kinds is not None:
                out["continues"] = kinds
        return out

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        """As every method's, plus the counts' ranges (``k``, ``verify``, ``verify_rows``,
        ``max_bytes``), so a bad one is refused before the gradient pass."""
        super().validate(options)
        check_counts(options, {"k": 1, "verify": 0, "verify_rows": 1, "max_bytes": 1})
        return options

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
        verify: int = 4,
        verify_rows: int = 64,
        replacements: Replacements = "words",
        continues: Any = None,
    ) -> Scores:
        choice("direction", direction, ("increase", "decrease", "abs"))
        choice("replacements", replacements, ("words", "pieces"))
        check_counts(
            {"k": k, "verify": verify, "verify_rows": verify_rows, "max_bytes": max_bytes},
            {"k": 1, "verify": 0, "verify_rows": 1, "max_bytes": 1},
        )
        if verify and self.mode == "train":
            raise InputError(_TRAIN_VERIFY)
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
        # a kept position's own id is never excluded: it and the excluded ids are not proposed
        allowed = vocab - 1 - int(excluded.sum())
        if allowed < 1 and where.size:
            raise InputError(
                f"exclude_ids leave no replacement token in a table of {vocab} rows; exclude fewer"
            )
        kinds = _kinds(continues, vocab) if replacements == "words" else None
        cand, score, ok = self._top(
            base, table, where, excluded, max(1, min(k, allowed)), direction, max_bytes,
            kinds=kinds,
        )  # fmt: skip
        best = np.zeros(base.ids.shape)
        lists: list[list[dict[str, Any]]] = [[] for _ in range(base.batch)]
        for (b, t), row_ids, row_scores, row_ok in zip(where, cand, score, ok, strict=True):
            best[b, t] = row_scores[0] if row_ok[0] else 0.0
            for r, (w, s) in enumerate(zip(row_ids[row_ok], row_scores[row_ok], strict=True)):
                lists[b].append(
                    {
                        "position": int(t),
                        "token_id": int(base.ids[b, t]),
                        "replacement_id": int(w),
                        "estimate": float(s),
                        "verified": None,
                        "rank": r,
                    }
                )
        for cands in lists:
            cands.sort(key=lambda c: rank_value(c["estimate"], direction), reverse=True)
        if verify:
            # the best candidate of each position first (positions by estimate), then the
            # second best of each, ...: a budget spread over positions, not spent on one
            picked = [sorted(c, key=lambda c: c["rank"])[:verify] for c in lists]
            todo = [c for cands in picked for c in cands]
            rows = np.asarray([b for b, cands in enumerate(picked) for _ in cands], np.int64)
            change = verify_flips(
                self.model, inputs, loss_fn, base, rows, todo, mode=self.mode, chunk=verify_rows
            )
            for c, v in zip(todo, change, strict=True):
                c["verified"] = float(v)
            for cands in lists:
                cands.sort(key=lambda c: flip_key(c, direction), reverse=True)
        return Scores(
            method=self.name,
            scores=best,
            losses=base.losses,
            ids=base.ids,
            hotflip=lists,
            info={
                "k": k,
                "direction": direction,
                "verify": int(verify),
                "replacements": replacements if kinds is not None else "pieces",
            },
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
        *,
        kinds: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k candidate ids, their signed scores and whether each is a real candidate
        (N, k) for the positions ``where``; with ``kinds`` (V,) bool, only tokens of the
        current token's kind are candidates (a position may then have fewer than k)."""
        n, vocab = where.shape[0], table.shape[0]
        cand = np.zeros((n, k), dtype=np.int64)
        score = np.zeros((n, k), dtype=np.float64)
        ok = np.ones((n, k), dtype=bool)
        if n == 0:
            return cand, score, ok
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
            if kinds is not None:  # another kind of token than the current one: not proposed
                key[kinds[cur_ids[s:e]][:, None] != kinds[None, :]] = -np.inf
            top = np.argpartition(-key, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(key, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            cand[s:e] = top
            score[s:e] = np.take_along_axis(full, top, axis=1)
            ok[s:e] = np.isfinite(np.take_along_axis(key, top, axis=1))
        return cand, score, ok


#: what each count option bounds, for the errors of :func:`check_counts`
_COUNT_WHY = {
    "max_bytes": " (bytes of one block of the score matrix; the default is 256 MiB)",
}


def check_counts(options: Mapping[str, Any], lows: Mapping[str, int]) -> None:
    """InputError unless each option of ``lows`` present in ``options`` is a whole number at
    least its low bound (``max_bytes=0`` would make every block one row by accident, a
    negative one is a mistake)."""
    for name, low in lows.items():
        if name not in options:
            continue
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(
                f"{name} must be an integer ≥ {low}{_COUNT_WHY.get(name, '')}, got {value!r}"
            )


def check_goal(goal: Any) -> None:
    """InputError unless ``goal`` is a finite number > 0 (an infinite goal is never reached:
    the search would spend its whole budget for nothing)."""
    ok = isinstance(goal, (int, float, np.integer, np.floating)) and not isinstance(goal, bool)
    if not ok or not goal > 0 or not math.isfinite(goal):
        raise InputError(
            f"goal must be a finite number > 0 (the change of f to reach), got {goal!r}"
        )


def _kinds(continues: Any, vocab: int) -> np.ndarray | None:
    """``continues`` as (V,) bool over the table's rows (rows past the tokenizer's vocabulary:
    word starts), or None."""
    if continues is None:
        return None
    arr = np.asarray(to_numpy(continues)).astype(bool).reshape(-1)
    out = np.zeros(vocab, dtype=bool)
    out[: min(vocab, arr.shape[0])] = arr[:vocab]
    return out


_TRAIN_VERIFY = (
    "HotFlip verification measures f(x') - f(x) with separate forwards; in mode='train' their "
    "dropout draws differ, so the measured changes would be noise: use mode='eval', or verify=0 "
    "for first-order estimates only"
)


def rank_value(change: float, direction: str) -> float:
    """How good a change of f is for ``direction`` (larger is better)."""
    if direction == "decrease":
        return -change
    if direction == "abs":
        return abs(change)
    return change


def flip_key(cand: dict[str, Any], direction: str) -> tuple[bool, float]:
    """Sort key (descending) of a candidate: verified ones first, by their measured change,
    then the others by their estimate."""
    v = cand.get("verified")
    if v is not None:
        return True, rank_value(float(v), direction)
    return False, rank_value(float(cand["estimate"]), direction)


def word_ids_input(inputs: Any, base: Base) -> Any:
    """The input array holding the word lookup's ids (the one equal to the captured ids)."""
    want = to_numpy(base.lookup.ids)
    found: list[Any] = []

    def look(x: Any) -> Any:
        a = to_numpy(x)
        if a.shape == want.shape and np.array_equal(a, want):  # (gluonnlp feeds float ids)
            found.append(x)
        return x

    map_arrays(inputs, look)
    if len(found) != 1:
        raise InputError(
            f"cannot verify HotFlip candidates: {len(found)} of the inputs equal the ids of "
            f"lookup {base.name!r} (need exactly one, to replace tokens in it); pass verify=0 "
            "for first-order estimates only"
        )
    return found[0]


def verify_flips(
    model: Any,
    inputs: Any,
    loss_fn: LossFn,
    base: Base,
    rows: np.ndarray,
    cands: Sequence[dict[str, Any]],
    *,
    mode: str,
    chunk: int,
) -> np.ndarray:
    """f(x') − f(x) per candidate (float64): x' is sample ``rows[i]`` with the token at
    ``cands[i]["position"]`` replaced by ``cands[i]["replacement_id"]``.

    The flipped inputs are the samples' inputs (``repeat_samples``) with the word ids replaced;
    one forward (no backward) per ``chunk`` rows, through ``loss_fn(outputs, rows)`` so that
    per-sample constants (targets, partner embeddings) follow each row's sample.
    """
    out = np.zeros(len(cands), dtype=np.float64)
    if not len(cands):
        return out
    ids_in = word_ids_input(inputs, base)
    ax = base.batch_axis
    pos = np.asarray([c["position"] for c in cands], dtype=np.int64)
    new = np.asarray([c["replacement_id"] for c in cands], dtype=np.int64)
    for s in range(0, len(cands), chunk):
        sel = slice(s, s + chunk)
        index = rows[sel]
        flipped = base.ids[index].copy()
        flipped[np.arange(flipped.shape[0]), pos[sel]] = new[sel]
        native = ops_for(ids_in).from_numpy(np.moveaxis(flipped, 0, ax) if ax else flipped, ids_in)
        sub = _replace_ids(inputs, repeat_samples(inputs, index, base.batch, ax), ids_in, native)
        got = forward_losses(model, sub, bind_rows(loss_fn, index), mode=mode)
        out[sel] = got - base.losses[index]
    return out


def _replace_ids(inputs: Any, sub: Any, ids_in: Any, native: Any) -> Any:
    """``sub`` (the repeated inputs) with the entry that was ``ids_in`` among ``inputs``
    replaced by ``native``."""
    if isinstance(inputs, Mapping):
        key = next(k for k, v in inputs.items() if v is ids_in)
        return {**sub, key: native}
    if isinstance(inputs, tuple):
        i = next(i for i, v in enumerate(inputs) if v is ids_in)
        return (*sub[:i], native, *sub[i + 1 :])
    return native
