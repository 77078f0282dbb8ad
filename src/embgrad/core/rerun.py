"""A forward that can be run again identically (the probe and the exact loop need more backwards)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .contract import Forward, Replace, Session


class Run:
    """Re-runnable forward with a fixed seed (for exact probes and the per-sample loop)."""

    def __init__(
        self,
        session: Session,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loss_fn: Callable[[Any], Any],
        seed: int,
        replace: Replace | None,
    ) -> None:
        self.session = session
        self.args = args
        self.kwargs = kwargs
        self.loss_fn = loss_fn
        self.seed = seed
        self.replace = replace

    def forward(self) -> Forward:
        return self.session.forward(
            self.args, self.kwargs, self.loss_fn, seed=self.seed, replace=self.replace
        )

    def again(self, fwd: Forward) -> Forward:
        """The forward to use for one more backward: the same graph where that is exact."""
        return fwd if self.session.retained_backward_is_exact else self.forward()
