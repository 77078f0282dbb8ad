"""``smoothgrad``: gradients averaged over Gaussian noise added to the embedding outputs."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import InputError
from ._passes import MASK_HELP, Base, LossFn, expanded_passes, native_rows, row_weights
from .base import Context, Method, Scores, choice, pass_defaults, register

Reduce = Literal["norm", "sum"]


def check_seed(seed: Any) -> None:
    """InputError unless ``seed`` is None or a whole number ≥ 0 (what numpy's generators take)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(
            f"seed must be a whole number ≥ 0 (or None for fresh noise each call), got {seed!r}"
        )


@register
class SmoothGrad(Method):
    """SmoothGrad (Smilkov et al. 2017) on the word-embedding outputs x.

    Draw k = 0..n_samples−1 of sample b uses x_b + ε, ε ~ N(0, (sigma · s)²) elementwise, where s
    is the standard deviation of the embedding table's entries (the embedding scale; the
    outputs' standard deviation if the backend kept no table). The noise is drawn in one go:
    ``default_rng(seed).standard_normal((B · n_samples, T, D), float32)``, row b · n_samples + k
    for draw k of sample b, so results do not depend on ``internal_batch_size``.

    Scores: ``reduce="norm"`` (default) averages ||g_t||₂ over the draws, ``"sum"`` averages
    Σ_d g_t,d; ``attributions`` is the mean gradient (B, T, D).

    ``mask`` (B, T), 1 at real tokens: as for ``integrated_gradients``, passes run only up to
    their samples' last real token where that leaves f(x) unchanged (checked; ``loss_fn`` gets
    outputs of that length); the positions after it get 0.
    """

    name = "smoothgrad"
    summary = "gradient averaged over noisy copies of the embeddings (sigma x embedding scale)"
    option_help: ClassVar[dict[str, str]] = {
        "n_samples": "noisy copies per input (default 16)",
        "sigma": "noise standard deviation relative to the embedding scale (default 0.1)",
        "seed": "seed of the noise, a whole number >= 0 (default 0)",
        "reduce": "'norm' (mean per-token L2 norm, default) or 'sum' (mean signed sum)",
        "internal_batch_size": "noisy rows per forward+backward (default: at most 4096 rows x tokens)",
        "mask": MASK_HELP,
    }

    @classmethod
    def defaults(cls, ctx: Context) -> dict[str, Any]:
        """The pass size and padding as for every repeated-sample method."""
        return pass_defaults(ctx)

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        """As every method's, plus ``seed``: None or a whole number ≥ 0 (numpy's seeds)."""
        super().validate(options)
        if "seed" in options:
            check_seed(options["seed"])
        return options

    def _attribute(
        self,
        base: Base,
        inputs: Any,
        loss_fn: LossFn,
        *,
        n_samples: int = 16,
        sigma: float = 0.1,
        seed: int | None = 0,
        reduce: Reduce = "norm",
        internal_batch_size: int | None = None,
        mask: Any = None,
    ) -> Scores:
        choice("reduce", reduce, ("norm", "sum"))
        check_seed(seed)
        if not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be an integer ≥ 1, got {n_samples!r}")
        if not sigma >= 0:
            raise InputError(f"sigma must be ≥ 0, got {sigma!r}")
        batch = base.batch
        scale = float(sigma) * self._scale(base)
        rows = np.repeat(np.arange(batch), n_samples)
        noise = np.random.default_rng(seed).standard_normal(
            (rows.shape[0], *base.grad.shape[1:]), dtype=np.float32
        )
        noise *= np.float32(scale)
        ax = base.batch_axis

        def transform(out: Any, sel: np.ndarray) -> Any:
            return out + native_rows(noise[sel][:, : out.shape[1 - ax]], out, ax)

        mean = np.zeros(base.grad.shape, dtype=np.float64)
        token = np.zeros(base.grad.shape[:2], dtype=np.float64)
        m = row_weights(rows, np.full(rows.shape[0], 1.0 / n_samples), batch)
        info: dict[str, Any] = {}
        for sel, grad, _ in expanded_passes(
            self.model, inputs, loss_fn, base, rows, transform, internal_batch_size=
            internal_batch_size, mode=self.mode, check=self.expanded_check, mask=mask, info=info,
            desc="smoothgrad",
        ):  # fmt: skip
            g = grad.astype(np.float64)
            part = m[:, sel]
            mean += (part @ g.reshape(sel.shape[0], -1)).reshape(mean.shape)
            per_token = np.sqrt((g * g).sum(-1)) if reduce == "norm" else g.sum(-1)
            token += part @ per_token
        return Scores(
            method=self.name,
            scores=token,
            losses=base.losses,
            ids=base.ids,
            signed=mean.sum(-1),
            attributions=mean,
            info={
                "n_samples": n_samples,
                "sigma": sigma,
                "noise_std": scale,
                "seed": seed,
                **info,  # the passes run and whether the padding was skipped
            },
        )

    @staticmethod
    def _scale(base: Base) -> float:
        if base.lookup.weight is not None:
            return float(base.weight().std(dtype=np.float64))
        return float(base.x().std(dtype=np.float64))
