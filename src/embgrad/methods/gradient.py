"""``gradient``: the per-token gradient of the explained quantity (saliency)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ._passes import Base, LossFn
from .base import Method, Scores, choice, reduce_tokens, register

Reduce = Literal["norm", "sum"]


@register
class Gradient(Method):
    """Per-token gradient g_t = df/dx_t of the word-embedding output x_t (D,).

    Scores: ``reduce="norm"`` gives ||g_t||₂ (how sensitive f is to token t), ``"sum"`` the
    signed Σ_d g_t,d; ``signed`` always holds the signed sum, ``attributions`` g (B, T, D).
    """

    name = "gradient"
    summary = "per-token gradient: L2 norm (or signed sum) of df/d embedding"
    option_help: ClassVar[dict[str, str]] = {
        "reduce": "'norm' (L2 norm over the embedding) or 'sum' (signed sum)"
    }
    single_pass = True

    def _attribute(
        self, base: Base, inputs: Any, loss_fn: LossFn, *, reduce: Reduce = "norm"
    ) -> Scores:
        choice("reduce", reduce, ("norm", "sum"))
        return Scores(
            method=self.name,
            scores=reduce_tokens(base.grad, reduce),
            losses=base.losses,
            ids=base.ids,
            signed=reduce_tokens(base.grad, "sum"),
            attributions=base.grad,
            info={"reduce": reduce},
        )
