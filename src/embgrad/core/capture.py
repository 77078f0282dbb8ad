"""``gradients``: capture every lookup, one backward, probe, assemble per-sample results.

``gradients()`` reads as the numbered steps of docs/design.md ("Data flow"); each step's
rules live in a module of their own:

1. the arguments (``arguments.py``), checked before the model is touched;
2. ``backend_for(model)`` (``registry.py``: the table the backends install) picks the
   framework adapter; ``backend.open`` switches the model into the requested mode and into a
   state where every lookup is intercepted (restored on exit; the protocol is ``contract.py``);
3. ``session.forward`` runs the model once; each lookup returns ``out + delta`` (``delta`` a zero
   array the backend can differentiate against) and is recorded as a :class:`Capture`; the
   losses' count and values are checked in ``losses.py``, the selection made in ``select.py``;
4. each selected lookup's candidate batch axes (``batch_axes.py``; folded batches in
   ``folded.py``); ``check="exact"`` runs the per-sample loop instead (``exact.py``);
5. a verdict remembered for this structure skips the probe (``verdicts.py``);
6. one backward of Σ_i L_i w.r.t. the deltas only (no parameter gradients) gives
   G = Σ_i dL_i/d out, whose slice i along the batch axis is sample i's gradient when samples
   do not interact;
7. a lookup the losses do not reach through the graph gets None from the backend and is left
   out (``layers="auto"``) or refused (``reach.py``): its zeros would be a false answer;
8. the probe (``probe.py``) checks independence with one more backward;
9. results are wrapped lazily (``assemble.py``): sparse per-sample table rows are only built
   when asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .arguments import BatchAxis, Check, LayerSpec, check_args, check_dense, seeds, split_inputs
from .assemble import lookup_result, rows_fast, wrap
from .batch_axes import candidate_batch_axes, require_unambiguous
from .contract import Mode, Replace
from .exact import exact
from .folded import shaped
from .losses import bad_inputs_first, loss_count, verify
from .probe import run_probe
from .reach import reached, spread, take
from .registry import backend_for
from .rerun import Run
from .results import Gradients
from .select import select_lookups
from .verdicts import probe_key, remember, remembered

__all__ = ["gradients"]


def gradients(
    model: Any,
    inputs: Any,
    loss_fn: Callable[[Any], Any],
    *,
    layers: LayerSpec | Sequence[LayerSpec] = "auto",
    check: Check = "auto",
    mode: Mode = "eval",
    batch_axis: BatchAxis = None,
    seed: int | None = None,
    replace: Replace | None = None,
    input_grads: bool = True,
) -> Gradients:
    """Exact per-sample gradients w.r.t. every embedding lookup of ``model``, in one backward.

    Args:
        model: an ``mxnet.gluon.Block`` (hybridized or not, or a ``SymbolBlock``) or a
            ``torch.nn.Module``. It is not modified: hooks, patches, hybridization, training
            flags, ``requires_grad``, ``grad_req`` and ``.grad`` are as before on every exit.
        inputs: one array (``model(inputs)``), a tuple of positional arguments
            (``model(*inputs)``) or a dict of keyword arguments (``model(**inputs)``).
            Floating-point arrays among them also get gradients (``res.input_grads``).
        loss_fn: ``loss_fn(outputs)`` → per-sample losses of shape (B,). Do not reduce over
            the batch.
        layers: ``"auto"`` (every input lookup; lookups on output weights such as sampled
            softmax are left out; so are lookups the losses do not reach through the autograd
            graph — ``no_grad``, ``detach``, ``stop_gradient``/``BlockGrad`` — listed in
            ``res.unreached``), or a name / glob / role (``"word"``, ``"position"``,
            ``"token_type"``) / table name / block or module class, or a sequence of them
            (each selected lookup must be reached).
        check: ``"auto"`` probes for cross-sample coupling with one extra backward, once per
            (model, mode, loss function, lookup structure: names and ranks, not sizes; the
            batch axes are re-derived per shape), and raises CouplingError if samples
            interact; ``"probe"`` probes on every call; ``"exact"`` runs the exact per-sample
            loop (B backwards, each forward re-seeded identically) and is correct even when
            samples interact; ``"off"`` trusts independence.
        mode: ``"eval"`` (default: dropout off, BatchNorm uses running statistics) or
            ``"train"`` (dropout on; Gluon's ``autograd.record()`` default). The model's own
            flags are restored afterwards.
        batch_axis: the axis of each lookup's ids that indexes samples: found automatically (the
            axis whose size equals len(losses); the probe resolves ties), or an int for every
            lookup, or {lookup name: axis or None} (names as in ``res.layers``; a name that
            matches no lookup is refused). ``"folded"`` (alone or per lookup): the batch is
            folded into the ids' leading axis, B·k rows with rows b·k … (b+1)·k − 1 belonging to
            sample b (ELMo's characters, (B·T, C)); such a lookup is reported unfolded, ids
            (B, k, ...) and output_grad (B, k, ..., D), batch axis 0. When no lookup (nor float
            input) has an axis of size B, a leading axis of a multiple of B is tried as such a
            fold and confirmed by the probe (check "auto"/"probe"). When no lookup's ids (nor a
            float input) has an axis of len(losses) nor such a leading axis, B > 1, the losses
            do not match the samples: LossError.
        seed: seeds the probe weights and the dropout masks of repeated forwards (Gluon).
        replace: ``replace(name, role, output)`` may return a substitute for a lookup's output
            (same shape and dtype), e.g. an interpolation for integrated gradients; gradients
            are then taken at the substitute. Return None to keep the output.
        input_grads: also differentiate w.r.t. floating-point inputs (``res.input_grads``);
            False skips them (e.g. where the framework has no backward for such an input).

    Returns:
        :class:`Gradients`: ``res.layers``, ``res[name].output_grad`` (B, T, D),
        ``res[name].table_grad()`` (sparse per-sample rows), ``res.losses``,
        ``res.input_grads``, ``res.unreached`` / ``res.notes`` (lookups left out).

    Raises:
        EmbgradError: the subclasses InputError, LossError, NoLookupError, BatchAxisError,
            CouplingError and UnsupportedModelError, each naming what was wrong.
    """
    # 1. Check the arguments before touching the model.
    check_args(check, mode, loss_fn, batch_axis, replace, input_grads)
    args, kwargs = split_inputs(inputs)
    check_dense(args, kwargs)
    backend = backend_for(model)
    rng, run_seed = seeds(seed)
    # 2. Open the model: mode switched, lookups intercepted; everything restored on exit.
    with backend.open(model, mode=mode) as session:
        session.check_inputs(args, kwargs)
        run = Run(session, args, kwargs, loss_fn, run_seed, replace)
        # 3. One forward: per-sample losses and every lookup it performed.
        fwd = run.forward()
        # Errors found from here on yield to a bad input the forward let through unread (ids
        # on a GPU are checked after the backward is queued): the user hears of that first.
        with bad_inputs_first(fwd):
            batch = loss_count(session, fwd.losses)
            select = select_lookups(fwd.captures, layers, fwd.unsplit)
            # 4. Candidate batch axes per lookup: the axes of the losses' length (or as given);
            # with none anywhere, a batch folded into a leading axis (B·k rows) is a candidate.
            caps, axes, folded = candidate_batch_axes(
                session, fwd, select, batch, batch_axis, check
            )
            if check == "exact" and batch > 1:
                verify(session, fwd)
                return exact(run, fwd, select, caps, axes, batch, mode, input_grads, layers)
            # 5. Decide whether to probe: a verdict remembered for this structure skips it.
            key = probe_key(loss_fn, mode, fwd, batch, select, batch_axis)
            known = remembered(model, key, axes) if check == "auto" else None
            do_probe = batch > 1 and check in ("auto", "probe") and known is None
            if known is not None:
                axes = [[a] if a is not None else [] for a in known]
            require_unambiguous(caps, axes, batch, do_probe)
            # 6. One backward of the summed losses w.r.t. the lookup outputs only.
            grads, in_grads = session.backward(
                fwd,
                np.ones(batch),
                select,
                inputs=input_grads and bool(fwd.float_inputs),
                retain=do_probe and session.retained_backward_is_exact,
            )
            grads = shaped(caps, grads)
        # The inputs' deferred checks and the losses' values are read only now: a host read
        # before the backward would make a GPU wait for the forward before queueing it.
        verify(session, fwd)
        # 7. Lookups the losses do not reach through the graph: left out (auto) or an error.
        kept, unreached = reached(caps, grads, layers)
        n_selected = len(select)
        select, caps, axes = take(select, kept), take(caps, kept), take(axes, kept)
        grads, folded = take(grads, kept), take(folded, kept)
        # 8. The probe: one more backward with signed weights proves independence.
        residual: float | None = None
        if do_probe:
            rng = rng if rng is not None else np.random.default_rng()
            resolved, residual = run_probe(run, fwd, select, caps, axes, grads, rng, batch, folded)
            remember(model, key, spread(resolved, kept, n_selected))
        else:
            resolved = [a[0] if a else None for a in axes]
        # 9. Results; sparse table rows are built only when asked for.
        how = "single" if batch == 1 else ("probe-cached" if known is not None else check)
        if how == "auto":  # the probe ran: say so (the docstring's values), not the option
            how = "probe"
        lookups = [
            lookup_result(c, g, ax, functools.partial(rows_fast, session, c, g, ax, batch))
            for c, g, ax in zip(caps, grads, resolved, strict=True)
        ]
        return wrap(session, fwd, lookups, in_grads, how, residual, mode, unreached)
