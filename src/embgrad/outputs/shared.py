"""One forward, K cotangents: every explained output of a batch from a single forward.

Replicating each (sample, output) as its own row costs about 3K forward-units for a
bidirectional encoder, against 1 + 2K for one forward and one backward per output over the
retained graph. Where the backend takes several cotangents at once (``batched_backward``:
torch's batched gradients, one vmapped backward) and the method needs only the gradient at the
inputs (``Method.single_pass``), the driver takes this path: one forward of the B samples, the
rows' quantities q_n picked from the full batch's outputs, and the backward of Σ_n c_kn q_n for
cotangents c_k that are 1 on the rows of output k — for independent samples, slice b of that
gradient is row (b, k)'s own. One more cotangent, ±2^j per sample, is the coupling probe of
``embgrad.gradients`` (its slice b must equal v_b Σ_k slice b); a model that couples samples,
an ambiguous lookup or ``check="exact"`` go back to replication, which the engine checks.
Cotangents are taken in chunks of rows × positions ≤ the pass budget (memory).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from ..backends import backend_for
from ..methods._passes import Base
from ..methods.base import Method
from ..methods.plan import PASS_TOKENS
from .rows import Chunk, RowBuilder

#: the probe's tolerance, relative to each sample's gradient norm
PROBE_RTOL = 1e-4
#: passed probes, as the engine remembers them (``check="auto"``): per model, the (kind of
#: rows, the user's loss code, mode, layer) that proved independent; our state, not the
#: model's. ``check="probe"`` probes every call
_PASSED: weakref.WeakKeyDictionary[Any, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def applies(builder: RowBuilder, method: Method) -> bool:
    """Whether this path may run: a builder offering a shared forward, a single-pass method."""
    return (
        getattr(builder, "shared", None) is not None
        and type(method).single_pass
        and type(method).attributes_outputs
        and method.check != "exact"
        and (method.batch_axis or 0) == 0
    )


def run(builder: Any, method: Method, options: dict[str, Any], scatter: Callable) -> bool:
    """Explain every row of ``builder`` from one forward; False (nothing done) when the model
    or backend does not allow it, so the caller replicates rows instead."""
    model = method.model
    backend = backend_for(model)
    inputs, loss = builder.shared()
    rows = builder.outputs.rows(0, builder.outputs.shape[1])
    n, batch = int(rows.shape[0]), builder.outputs.shape[0]
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else ((inputs,), {})
    with backend.open(model, mode=method.mode) as session:  # type: ignore[arg-type]
        if not getattr(session, "batched_backward", False):
            return False
        session.check_inputs(args, kwargs)
        fwd = session.forward(args, kwargs, loss, seed=0, replace=None)
        found = [
            i
            for i, c in enumerate(fwd.captures)
            if (c.name == method.layer or (method.layer == "word" and c.role == "word"))
            and c.rows is None
            and tuple(c.out_shape[:1]) == (batch,)
        ]
        if len(found) != 1:
            return False
        cap = fwd.captures[found[0]]
        ops = session.ops
        kk = builder.outputs.shape[1]
        code = getattr(getattr(builder, "loss_fn", None), "__code__", None)
        key = (type(builder).__name__, code, method.mode, method.layer)
        known = method.check == "auto" and key in _PASSED.get(model, set())
        probe = method.check != "off" and batch > 1 and not known
        cot = np.zeros((kk + int(probe), n))
        cot[rows[:, 1], np.arange(n)] = 1.0
        if probe:
            v = 2.0 ** np.random.default_rng(0).integers(-2, 3, batch)
            v *= np.where(np.arange(batch) % 2, -1.0, 1.0)
            cot[kk] = v[rows[:, 0]]
        width = int(np.prod(cap.out_shape[1:-1])) if len(cap.out_shape) > 2 else 1
        step = max(1, PASS_TOKENS // max(1, batch * width))
        parts = []
        for s in range(0, cot.shape[0], step):
            last = s + step >= cot.shape[0]
            (g,), _ = session.backward(fwd, cot[s : s + step], [found[0]], inputs=False,
                                       retain=not last)  # fmt: skip
            if g is None:
                return False
            parts.append(ops.to_numpy(ops.work(g)))
        if fwd.verify is not None:
            fwd.verify()
        grads = np.concatenate(parts, axis=0)  # (K [+1], B, T, D)
        losses = ops.to_numpy(ops.work(fwd.losses)).astype(np.float64)
        x = None if cap.output is None else ops.to_numpy(ops.work(cap.output))
        ids = ops.to_numpy(ops.work(cap.ids)).astype(np.int64)
    if not np.all(np.isfinite(losses)):
        return False  # the engine's path names the bad rows
    if probe:
        if not _independent(grads[:kk], grads[kk], v):
            return False
        with contextlib.suppress(TypeError):  # no weak reference: probe every call
            _PASSED.setdefault(model, set()).add(key)
    b, k = rows[:, 0], rows[:, 1]
    base = Base(
        lookup=cast(Any, None),  # no table gradient on this path (methods read the rows only)
        losses=losses,
        grad=grads[k, b].astype(np.float32),
        output=None if x is None else x[b],
        ids=ids[b],
        batch_axis=0,
    )
    sc = method.from_base(base, None, loss, **options)
    scatter(Chunk(None, loss, rows, {builder.main: None}), sc)
    return True


def _independent(g: np.ndarray, probe: np.ndarray, v: np.ndarray) -> bool:
    """Slice b of the probe's gradient equals v_b · Σ_k slice b, per sample, to PROBE_RTOL."""
    want = v[:, None] * g.sum(axis=0).reshape(probe.shape[0], -1)
    got = probe.reshape(probe.shape[0], -1)
    scale = np.sqrt((want**2).sum(axis=1)) + 1e-30
    return bool(np.all(np.sqrt(((got - want) ** 2).sum(axis=1)) <= PROBE_RTOL * scale))
