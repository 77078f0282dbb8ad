"""The slow, obviously right TracIn-WE: one ordinary backward per example, the dense
``weight.grad`` of the word table, dot products per checkpoint, weighted."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def dense_grads(
    model: torch.nn.Module,
    examples: Sequence[Any],
    labels: Sequence[int],
    table: Callable[[torch.nn.Module], torch.Tensor],
    call: Callable[[torch.nn.Module, Any], torch.Tensor] = lambda m, x: m(x),
) -> np.ndarray:
    """(n, V, D) float64: per example, ``table(m).grad`` after one backward of its loss."""
    m = copy.deepcopy(model).eval()
    out = []
    for x, y in zip(examples, labels, strict=True):
        m.zero_grad(set_to_none=True)
        logits = call(m, x)
        F.cross_entropy(logits, torch.tensor([int(y)])).backward()
        g = table(m).grad
        out.append(np.zeros(tuple(table(m).shape)) if g is None else g.double().numpy().copy())
    return np.stack(out)


def scores(train: list[np.ndarray], test: list[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ_c w_c ⟨G_c(test i), G_c(train j)⟩ from dense per-checkpoint gradients (n, V, D)."""
    out = 0.0
    for g_tr, g_te, w in zip(train, test, weights, strict=True):
        out = out + w * np.einsum("ivd,jvd->ij", g_te, g_tr)
    return np.asarray(out)


def keep_top_rows(g: np.ndarray, k: int) -> np.ndarray:
    """Each example's k largest-norm rows of a dense (n, V, D) gradient, the rest zeroed."""
    out = np.zeros_like(g)
    for i in range(g.shape[0]):
        norms = np.linalg.norm(g[i], axis=1)
        nz = np.flatnonzero(norms > 0)
        keep = nz[np.argsort(-norms[nz], kind="stable")][:k]
        out[i, keep] = g[i, keep]
    return out


def close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-30)
    err = np.abs(actual - expected).max()
    assert err <= rtol * scale, f"max abs err {err:.3g} vs scale {scale:.3g}"
