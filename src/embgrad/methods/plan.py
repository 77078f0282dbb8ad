"""The one pass planner of the library: how rows are grouped into forward/backward passes.

Two callers, one set of constants:

* repeated-sample passes of the methods (integrated-gradient steps, SmoothGrad draws;
  :func:`plan_passes`): rows sorted by their sample's length, each pass cut to its longest row;
* the explained-output driver (``embgrad.outputs``; :func:`plan_outputs`): consecutive output
  indices (generation steps, explained positions) whose rows × width stay under a budget.

Both close a pass at a length change once it holds :data:`MIN_PASS_TOKENS` tokens and the next
length would make more than :data:`MAX_PAD_FRACTION` of it padding: tiny passes cost more per
token than a little padding, big ones should not compute much of it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError

#: the default bound of one pass: rows × positions. Activation memory grows with it:
#: MiniLM-L6, 4 texts x 256 tokens, IG at 50 steps peaked at 1.3 GB RSS with 4096 against
#: 3.7 GB with 16384, at a time cost within this machine's noise (benchmarks/RESULTS-passes.md)
PASS_TOKENS = 4096
#: a pass is closed at a length change only once it holds this many tokens ...
MIN_PASS_TOKENS = 1024
#: ... and only if running the next length's rows in it would make this fraction of it padding
MAX_PAD_FRACTION = 0.125


def default_pass_rows(positions: int) -> int:
    """Rows per pass under the default bound: :data:`PASS_TOKENS` // positions, at least 1."""
    return max(1, PASS_TOKENS // max(1, positions))


def plan_passes(
    rows: np.ndarray, chunk: int, lengths: np.ndarray | None, full: int
) -> list[tuple[np.ndarray, int]]:
    """Split the expanded rows into passes: ``[(positions into rows, length), ...]``.

    Without ``lengths``: consecutive chunks of ``chunk`` rows at the full length. With them
    (per caller sample): rows sorted by their sample's length (stable), each pass padded only to
    its longest row; a pass ends when it holds ``chunk`` rows, or at a length change when it
    holds :data:`MIN_PASS_TOKENS` tokens and taking the next length's rows would make more than
    :data:`MAX_PAD_FRACTION` of it padding.
    """
    n = int(rows.shape[0])
    if lengths is None:
        return [(np.arange(s, min(n, s + chunk)), full) for s in range(0, n, chunk)]
    row_len = np.maximum(lengths[rows], 1)  # an all-pad sample still needs one position
    order = np.argsort(row_len, kind="stable")
    sorted_len = row_len[order]
    passes: list[tuple[np.ndarray, int]] = []
    start = 0
    for i in range(1, n + 1):
        if i < n and i - start < chunk and not _close_before(sorted_len, start, i, chunk):
            continue
        passes.append((order[start:i], int(sorted_len[i - 1])))
        start = i
    return passes


def _close_before(sorted_len: np.ndarray, start: int, i: int, chunk: int) -> bool:
    """Whether the pass holding sorted rows ``start:i`` ends before row i (a length change)."""
    cur, nxt = int(sorted_len[i - 1]), int(sorted_len[i])
    if nxt == cur:
        return False
    size = i - start
    group = int(np.searchsorted(sorted_len, nxt, side="right")) - i  # rows of the next length
    padding = size * (nxt - cur) / (min(chunk, size + group) * nxt)
    return size * cur >= MIN_PASS_TOKENS and padding > MAX_PAD_FRACTION


def plan_outputs(
    active: np.ndarray, width: Callable[[int], int], tokens_per_pass: int | None
) -> list[tuple[int, int]]:
    """Consecutive output ranges [k0, k1) whose rows × width(k1) stay under ``tokens_per_pass``
    (default :data:`PASS_TOKENS`).

    ``active`` (B, K) bool: the rows that exist (sample b has output k). ``width(k1)`` is the
    row width of a chunk ending before output k1 (its longest row; generation rows grow with
    the step); a chunk also closes once it holds :data:`MIN_PASS_TOKENS` tokens if the next
    output would make more than :data:`MAX_PAD_FRACTION` of it padding."""
    budget = PASS_TOKENS if tokens_per_pass is None else tokens_per_pass
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 1:
        raise InputError(f"tokens_per_pass must be a positive integer, got {tokens_per_pass!r}")
    per_out = active.sum(axis=0)
    out, k0, kk = [], 0, int(active.shape[1])
    while k0 < kk:
        k1 = k0 + 1
        while k1 < kk:
            rows = per_out[k0 : k1 + 1].sum()
            tokens = rows * width(k1 + 1)
            if tokens > budget:
                break
            held = per_out[k0:k1].sum() * width(k1)
            needed = sum(int(per_out[k]) * width(k + 1) for k in range(k0, k1 + 1))
            if held >= MIN_PASS_TOKENS and 1 - needed / max(tokens, 1) > MAX_PAD_FRACTION:
                break
            k1 += 1
        if per_out[k0:k1].sum():
            out.append((k0, k1))
        k0 = k1
    return out
