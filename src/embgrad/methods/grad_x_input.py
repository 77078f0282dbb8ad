"""``grad_x_input``: gradient × input, the first-order contribution of each token."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ._passes import Base, LossFn
from .base import Method, Scores, choice, reduce_tokens, register

Reduce = Literal["sum", "norm"]


@register
class GradXInput(Method):
    """Per-token g_t · x_t, with g_t = df/dx_t and x_t the word-embedding output (D,).

    ``attributions`` is g ⊙ x (B, T, D); scores are its signed sum over D (``reduce="sum"``,
    the default: Σ_t scores is f's first-order change when every x_t goes to 0) or its L2 norm.
    """

    name = "grad_x_input"
    summary = "gradient × input: signed sum over the embedding of g ⊙ x"
    option_help: ClassVar[dict[str, str]] = {
        "reduce": "'sum' (signed, default) or 'norm' (L2 norm of g ⊙ x)"
    }
    single_pass = True

    def _attribute(
        self, base: Base, inputs: Any, loss_fn: LossFn, *, reduce: Reduce = "sum"
    ) -> Scores:
        choice("reduce", reduce, ("sum", "norm"))
        attr = base.grad * base.x()
        return Scores(
            method=self.name,
            scores=reduce_tokens(attr, reduce),
            losses=base.losses,
            ids=base.ids,
            signed=reduce_tokens(attr, "sum"),
            attributions=attr,
            info={"reduce": reduce},
        )
