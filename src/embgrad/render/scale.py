"""The colour scale shared by every renderer, and the labels that describe a result."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from ..items import TokenAttribution

WHITE = (255, 255, 255)
RED = (178, 24, 43)  # the ends of matplotlib's RdBu
BLUE = (33, 102, 172)
LEGEND = "colour = score / max |score| of each text: blue negative, white 0, red positive"


def normalized(scores: Sequence[float]) -> list[float]:
    """Scores divided by their largest magnitude, in [−1, 1] (all 0 if every score is 0)."""
    top = max((abs(s) for s in scores), default=0.0)
    return [s / top if top > 0 else 0.0 for s in scores]


def rgb(v: float) -> tuple[int, int, int]:
    """The colour of a normalized score v ∈ [−1, 1]: white at 0, RED at +1, BLUE at −1."""
    v = max(-1.0, min(1.0, v))
    end = RED if v >= 0 else BLUE
    a = abs(v)
    return (
        round(WHITE[0] + (end[0] - WHITE[0]) * a),
        round(WHITE[1] + (end[1] - WHITE[1]) * a),
        round(WHITE[2] + (end[2] - WHITE[2]) * a),
    )


def ink(v: float) -> str:
    """Text colour readable on ``rgb(v)``."""
    return "white" if abs(v) > 0.6 else "black"


def quantity(item: TokenAttribution, default: str | None = None) -> str:
    """What ``item.loss`` is, for labels: ``log p(label)``, the caller's word, or ``f(x)``."""
    if default:
        return default
    return f"log p({item.target})" if item.target is not None else "f(x)"


def summary(item: TokenAttribution, what: str | None = None) -> str:
    """One line: method, explained quantity and its value, delta, truncation."""
    parts = [f"method {item.method}", f"{quantity(item, what)} = {item.loss:.4f}"]
    if item.target is not None:
        parts.append(f"target {item.target}")
    if item.delta is not None:
        parts.append(f"IG delta {item.delta:.2e}")
    if item.truncated:
        parts.append(truncation(item))
    return " · ".join(parts)


#: the longest heading (title and text) a view prints; longer texts are shortened
HEADING_CHARS = 160


def truncation(item: TokenAttribution) -> str:
    """``truncated to 256 of 2,731 tokens`` (the counts where known), for a truncated item."""
    n = getattr(item, "n_tokens", None)
    if n is not None and n > len(item.tokens):
        return f"TRUNCATED to {len(item.tokens):,} of {n:,} tokens"
    return f"TRUNCATED to the model's limit ({len(item.tokens):,} tokens)"


def heading(title: str, item: TokenAttribution, limit: int = HEADING_CHARS) -> str:
    """``title text``, the text shortened at a word boundary to at most ``limit`` characters
    (a 2,000-word text must not print all its words as a heading)."""
    return textwrap.shorten(f"{title} {item.text}", limit, placeholder=" …")


def change(x: Any) -> str:
    """A change of f for display (``+0.1504``), or ``n/a`` when not measured."""
    return "n/a" if x is None else f"{float(x):+.4f}"
