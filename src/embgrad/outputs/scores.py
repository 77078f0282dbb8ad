"""Step scores: numbers about each explained output besides its attribution (the
probability of the explained token, the entropy of its distribution, ...), in a registry like
the methods': ``register_step_score(name)`` on a function of :class:`StepArgs`.

Every row builder whose loss sees a distribution (generation steps, token labels) reports the
registered scores of the forward at the inputs; ``attribute_generation(step_scores=...)`` and
the results name them. A score that does not apply (``contrast_probability`` without a
contrast) returns None and is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class StepArgs:
    """What a step score reads, numpy: ``logprobs`` (N, V) float64 normalised log-probabilities
    of the N explained outputs, ``targets`` (N,) the explained ids, ``contrast`` (N,) or None."""

    logprobs: np.ndarray
    targets: np.ndarray
    contrast: np.ndarray | None = None


StepScore = Callable[[StepArgs], "np.ndarray | None"]
_SCORES: dict[str, StepScore] = {}


def register_step_score(name: str) -> Callable[[StepScore], StepScore]:
    """Decorator registering ``fn(args: StepArgs) -> (N,) | None`` as step score ``name``."""

    def add(fn: StepScore) -> StepScore:
        if name in _SCORES:
            raise ValueError(f"a step score named {name!r} is already registered")
        _SCORES[name] = fn
        return fn

    return add


def list_step_scores() -> list[str]:
    """Names of the registered step scores, sorted."""
    return sorted(_SCORES)


def check_step_scores(names: object) -> tuple[str, ...]:
    """``names`` as a tuple of registered score names; InputError listing the known ones."""
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, (list, tuple)):
        raise InputError(f"step_scores must be a list of names, got {type(names).__name__}")
    bad = sorted(set(names) - set(_SCORES))
    if bad:
        raise InputError(
            f"unknown step score(s) {', '.join(map(str, bad))}; choose from "
            + ", ".join(list_step_scores())
        )
    return tuple(names)


def compute(args: StepArgs) -> dict[str, np.ndarray]:
    """Every registered score that applies, name → (N,)."""
    out = {}
    for name, fn in _SCORES.items():
        value = fn(args)
        if value is not None:
            out[name] = np.asarray(value, dtype=np.float64)
    return out


def _rows(args: StepArgs) -> np.ndarray:
    return np.arange(args.targets.shape[0])


@register_step_score("probability")
def probability(args: StepArgs) -> np.ndarray:
    """p(y) of the explained output."""
    return np.exp(args.logprobs[_rows(args), args.targets])


@register_step_score("entropy")
def entropy(args: StepArgs) -> np.ndarray:
    """The entropy (nats) of the output's distribution."""
    return -(np.exp(args.logprobs) * args.logprobs).sum(axis=1)


@register_step_score("contrast_probability")
def contrast_probability(args: StepArgs) -> np.ndarray | None:
    """p(y') of the contrast output (None without a contrast)."""
    if args.contrast is None:
        return None
    return np.exp(args.logprobs[_rows(args), args.contrast])
