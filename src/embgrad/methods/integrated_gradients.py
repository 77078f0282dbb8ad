"""``integrated_gradients`` over the word-embedding outputs, steps batched into samples.

IG_t,d = (x − b)_t,d · ∫₀¹ ∂f/∂z_t,d (b + α(x − b)) dα, with the integral replaced by a
quadrature rule Σ_s w_s g(α_s) — the same rules and step sizes as Captum's
``LayerIntegratedGradients`` (Gauss–Legendre, Riemann left/right/middle/trapezoid). Every
(sample, step) pair is one row of an expanded batch, run ``internal_batch_size`` rows at a time
in one forward and one backward each; f(baseline) comes from an extra α = 0 row (weight 0) where
the rule has none, and f(x) from the plain pass at the inputs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from ._arrays import to_numpy
from ._passes import MASK_HELP, Base, LossFn, alpha_shape, expanded_passes, native_rows, row_weights
from .base import Context, Method, Scores, choice, pass_defaults, register

Rule = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]
RULES: tuple[str, ...] = get_args(Rule)
NAMED_BASELINES = ("zeros", "pad", "mask")


#: the most quadrature points: each point is one forward and one backward per sample, so
#: 10,000 points already cost 10,000 passes per text, while Gauss–Legendre's completeness delta
#: stops shrinking at float32 rounding after a few hundred at most
MAX_N_STEPS = 10_000


def quadrature(n_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Points α (n,) in [0, 1] and weights w (n,) of ``rule`` with ``n_steps`` points.

    Captum's (``captum.attr._utils.approximation_methods``), so results match
    ``LayerIntegratedGradients``; note that its ``riemann_trapezoid`` weights are 1/n with the
    two end points halved, summing to 1 − 1/n. Gauss–Legendre's nodes come from
    :func:`gauss_legendre` in O(n) memory (numpy's ``leggauss``, which Captum calls, builds an
    n × n matrix: 7 GB and minutes at 30,000 points).
    """
    check_steps(n_steps, rule)
    n = int(n_steps)
    if rule == "gausslegendre":
        x, w = gauss_legendre(n)
        return 0.5 * (x + 1.0), 0.5 * w
    if rule == "riemann_trapezoid":  # Captum's step sizes: 1/n, halved at both ends
        w = np.full(n, 1.0 / n)
        w[[0, -1]] *= 0.5
        return np.linspace(0.0, 1.0, n), w
    start = {"riemann_left": 0.0, "riemann_right": 1.0 / n, "riemann_middle": 0.5 / n}[rule]
    return start + np.arange(n) / n, np.full(n, 1.0 / n)


def check_steps(n_steps: Any, rule: str) -> None:
    """InputError unless ``rule`` is known and ``n_steps`` a whole number in its range."""
    choice("rule", rule, RULES)
    least = 1 if rule == "gausslegendre" else 2
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < least:
        raise InputError(f"n_steps must be an integer ≥ 1 (≥ 2 for Riemann rules), got {n_steps!r}")
    if n_steps > MAX_N_STEPS:
        raise InputError(
            f"n_steps={n_steps} is more than {MAX_N_STEPS:,}: every step is one forward and one "
            "backward per sample, and the completeness delta stops shrinking at float32 "
            "rounding long before (50 is Captum's default; check the `delta` of a few hundred)"
        )


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes x (ascending, in (−1, 1)) and weights w of ``n`` points, as numpy's
    ``leggauss`` (to ~1e-15), in O(n) memory: Newton's method on P_n from Tricomi's
    approximation of the nodes (error O(n⁻⁴), so two or three steps converge), P_n by its
    three-term recurrence, half the nodes by symmetry. O(n²) time (10,000 points: about a
    second), against ``leggauss``'s O(n²) memory and O(n³) time."""
    m = (n + 1) // 2  # the nodes in [0, 1), largest first
    k = np.arange(1, m + 1, dtype=np.float64)
    x = (1.0 - 1.0 / (8.0 * n**2) + 1.0 / (8.0 * n**3)) * np.cos(np.pi * (4 * k - 1) / (4 * n + 2))
    dp = np.ones_like(x)
    for _ in range(100):
        p0, p1 = np.ones_like(x), x.copy()
        for j in range(2, n + 1):
            p0, p1 = p1, ((2 * j - 1) * x * p1 - (j - 1) * p0) / j
        dp = n * (x * p1 - p0) / (x * x - 1.0)
        step = p1 / dp
        x = x - step
        if np.max(np.abs(step)) < 1e-15:
            break
    p0, p1 = np.ones_like(x), x.copy()  # P_n' at the converged nodes, for the weights
    for j in range(2, n + 1):
        p0, p1 = p1, ((2 * j - 1) * x * p1 - (j - 1) * p0) / j
    dp = n * (x * p1 - p0) / (x * x - 1.0)
    w = 2.0 / ((1.0 - x * x) * dp * dp)
    if n % 2:  # the middle node is 0 exactly
        x[-1] = 0.0
    nodes = np.concatenate([-x, x[::-1][n % 2 :]])
    weights = np.concatenate([w, w[::-1][n % 2 :]])
    return nodes, weights


@register
class IntegratedGradients(Method):
    """Integrated gradients from a baseline b to the word-embedding outputs x.

    Options:
        n_steps: quadrature points (default 50, as Captum; at most :data:`MAX_N_STEPS`).
        rule: ``"gausslegendre"`` (default) or ``"riemann_left|right|middle|trapezoid"``.
        baseline: ``"zeros"`` (the default everywhere: ``embgrad.attribute``, the
            ``Explainer``, ``embgrad explain`` and ``embgrad run``), ``"pad"`` / ``"mask"``
            (that token's embedding at every position; ids from ``pad_id`` / ``mask_id``, the
            tokenizer's where one is known, or the lookup's ``padding_idx``), an int token id,
            or an array (D,), (T, D) or (B, T, D) (numpy or native). Why zeros: it needs
            nothing the model may lack (GPT-2 has no pad token; many lookups no
            ``padding_idx``), so one text gives the same numbers through every front door and
            framework; it is Captum's default and the original paper's choice for text; and a
            transformer's position (and token type) embeddings are still added after the word
            lookup, so the baseline is "the positions without words", while a ``[PAD]`` row
            is a vector the model only ever saw at masked-out positions, no more neutral.
        internal_batch_size: rows (sample × step) per forward/backward; None: as many as fit
            in ``_passes.PASS_TOKENS`` (4096) rows × tokens, so memory stays bounded.
        mask: (B, T), 1 at real tokens (the attention mask): passes run only up to their
            samples' last real token, skipping the padding, and those positions get 0. Right
            for models that ignore the positions after it (attention-masked transformers); a
            check of f(x) with and without them keeps the padding for models that read it
            (``info["padding"]`` says which). ``loss_fn`` must accept outputs of the cut length
            (cut per-sample constants to the outputs' length). ``info["passes"]``: (rows,
            length) per pass.

    Scores are Σ_d IG_t,d (signed); ``attributions`` IG (B, T, D); ``delta`` the per-sample
    completeness gap |Σ_t,d IG − (f(x) − f(b))|, which shrinks as ``n_steps`` grows.
    """

    name = "integrated_gradients"
    summary = "integrated gradients from a baseline embedding (Gauss-Legendre / Riemann steps)"
    option_help: ClassVar[dict[str, str]] = {
        "n_steps": f"number of quadrature points, at most {MAX_N_STEPS:,} (default 50)",
        "rule": "quadrature: " + ", ".join(RULES),
        "baseline": "'zeros' (default: the same for the CLI and Python), 'pad', 'mask', a token id, or an array (D,)/(T,D)/(B,T,D)",
        "pad_id": "token id for baseline='pad' (default: the tokenizer's pad token, else the lookup's padding_idx)",
        "mask_id": "token id for baseline='mask' (default: the tokenizer's mask token)",
        "internal_batch_size": "rows (sample x step) per forward+backward (default: at most 4096 rows x tokens)",
        "mask": MASK_HELP,
    }

    recorded_options: ClassVar[tuple[str, ...]] = ("baseline", "n_steps", "rule")

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        """As every method's, plus ``n_steps`` and ``rule`` in range (before any pass runs)."""
        super().validate(options)
        if "n_steps" in options or "rule" in options:
            check_steps(options.get("n_steps", 50), options.get("rule", "gausslegendre"))
        return options

    @classmethod
    def defaults(cls, ctx: Context) -> dict[str, Any]:
        """The pad and mask tokens' ids from the tokenizer, for ``baseline="pad"`` / ``"mask"``
        (the baseline itself stays ``"zeros"`` unless asked: one default for every caller);
        the pass size and padding as for every repeated-sample method."""
        out = pass_defaults(ctx)
        if ctx.tokenizer is not None:
            for key, attr in (("pad_id", "pad_token_id"), ("mask_id", "mask_token_id")):
                token = getattr(ctx.tokenizer, attr, None)
                if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
                    out[key] = int(token)
        return out

    def _attribute(
        self,
        base: Base,
        inputs: Any,
        loss_fn: LossFn,
        *,
        n_steps: int = 50,
        rule: Rule = "gausslegendre",
        baseline: Any = "zeros",
        pad_id: int | None = None,
        mask_id: int | None = None,
        internal_batch_size: int | None = None,
        mask: Any = None,
    ) -> Scores:
        alphas, weights = quadrature(n_steps, rule)
        zero_at = np.flatnonzero(alphas == 0.0)
        if zero_at.size == 0:  # one α = 0 row with weight 0 gives f(baseline)
            alphas, weights = np.append(alphas, 0.0), np.append(weights, 0.0)
        n_pts, batch = alphas.shape[0], base.batch
        b_np = self._baseline(base, baseline, pad_id, mask_id)
        rows = np.repeat(np.arange(batch), n_pts)
        row_alpha = np.tile(alphas, batch)
        ax = base.batch_axis

        def transform(out: Any, sel: np.ndarray) -> Any:
            a = ops_for(out).from_numpy(row_alpha[sel].reshape(alpha_shape(out, ax)), out)
            if b_np is None:
                return out * a
            if b_np.ndim == 1:
                b = ops_for(out).from_numpy(b_np, out)
            else:  # (B, T, D) rows, cut to the pass's length (mask=)
                b = native_rows(b_np[rows[sel]][:, : out.shape[1 - ax]], out, ax)
            return b + a * (out - b)

        acc = np.zeros(base.grad.shape, dtype=np.float64)
        f_base = np.zeros(batch)
        m = row_weights(rows, np.tile(weights, batch), batch)
        at_zero = np.tile(alphas == 0.0, batch)
        info: dict[str, Any] = {}
        for sel, grad, losses in expanded_passes(
            self.model, inputs, loss_fn, base, rows, transform, internal_batch_size=
            internal_batch_size, mode=self.mode, check=self.expanded_check, mask=mask, info=info,
            desc="integrated gradients",
        ):  # fmt: skip
            flat = grad.reshape(sel.shape[0], -1).astype(np.float64)
            acc += (m[:, sel] @ flat).reshape(acc.shape)
            hit = at_zero[sel]
            f_base[rows[sel][hit]] = losses[hit]
        diff = base.x().astype(np.float64) - (0.0 if b_np is None else _broadcast(b_np, base))
        attr = diff * acc
        delta = np.abs(attr.sum(axis=(1, 2)) - (base.losses - f_base))
        return Scores(
            method=self.name,
            scores=attr.sum(axis=-1),
            losses=base.losses,
            ids=base.ids,
            attributions=attr,
            delta=delta,
            info={
                "n_steps": n_steps,
                "rule": rule,
                "baseline": baseline if isinstance(baseline, (str, int)) else "array",
                "f_baseline": f_base,
                **info,  # the passes run and whether the padding was skipped
            },
        )

    @staticmethod
    def _baseline(
        base: Base, baseline: Any, pad_id: int | None, mask_id: int | None
    ) -> np.ndarray | None:
        """None for zeros, else a numpy baseline (D,) or (B, T, D) in the output's dtype."""
        dtype = base.x().dtype
        if isinstance(baseline, str):
            choice("baseline", baseline, NAMED_BASELINES)
            if baseline == "zeros":
                return None
            token = pad_id if baseline == "pad" else mask_id
            if token is None and baseline == "pad":
                token = base.padding_idx
            if token is None:
                raise InputError(
                    f"baseline={baseline!r} needs the token id: pass {baseline}_id=<id>"
                )
            baseline = int(token)
        if isinstance(baseline, (int, np.integer)) and not isinstance(baseline, bool):
            table = base.weight()
            if not 0 <= int(baseline) < table.shape[0]:
                raise InputError(
                    f"baseline token id {baseline} is outside the table (V={table.shape[0]})"
                )
            return table[int(baseline)].astype(dtype)
        arr = to_numpy(baseline)
        shape, want = arr.shape, base.x().shape
        if shape == want[2:]:
            return arr.astype(dtype)
        if shape == want[1:]:
            return np.broadcast_to(arr, want).astype(dtype)
        if shape == want:
            return arr.astype(dtype)
        raise InputError(
            f"baseline array has shape {shape}; expected (D,) {want[2:]}, (T, D) {want[1:]} "
            f"or (B, T, D) {want} (batch first)"
        )


def _broadcast(b: np.ndarray, base: Base) -> np.ndarray:
    return np.broadcast_to(b.astype(np.float64), base.x().shape)
