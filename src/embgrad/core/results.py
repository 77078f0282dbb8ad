"""Result types: :class:`Gradients` (one call) and :class:`LookupGrad` (one lookup call site)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .site import CallSite, SiteView
from .sparse import SparseRows, combine


class LookupGrad(SiteView):
    """Per-sample gradients of one embedding lookup call site.

    Attributes:
        site: the :class:`CallSite` record (also readable as ``name``, ``role``, ``module``,
            ``table``, ``aliases``, ``vocab_size``, ``dim``, ``owner``, ``padding_idx``,
            ``tied``): ``name`` is the unique call-site name (module path; ``#2`` for a second
            call of the same block); ``role`` is ``"word"``, ``"position"``, ``"token_type"``,
            ``"input"`` (other input lookups) or ``"output"`` (lookups on output weights, e.g.
            sampled softmax; not selected by default); ``table`` is the table's canonical name
            — a tensor registered under several names (tied / shared tables) has one, its first
            registration, the same for every call site that reads it — and ``aliases`` all its
            registered names, canonical first; ``tied`` says the table also feeds something
            other than a lookup (e.g. a tied decoder), so the table gradient here covers the
            lookup path only — it differs from ``weight.grad`` by design.
        output_grad: dL_i/d out_i, framework-native, same layout as the lookup output, e.g.
            (B, T, D); for a lookup without batch axis (``batch_axis is None``) the batch sum.
        ids: the ids the lookup received (framework-native, as given: Gluon feeds float32).
        batch_axis: axis of ``ids`` (and of ``output_grad``) that indexes samples, or None when
            the ids have no batch axis (position ids of shape (T,)): then results are batch sums.
        note: a human-readable remark (tied weights, batch-summed, ...), "" when none.
        output: the lookup's output as the model used it (detached, native), e.g. the
            embeddings x for gradient×input; None if the backend did not keep it.
        weight: the table's values (V, D), detached, native (HotFlip); None if unavailable.
    """

    def __init__(
        self,
        site: CallSite,
        *,
        output_grad: Any,
        ids: Any,
        batch_axis: int | None,
        note: str,
        rows: Callable[[], SparseRows],
        output: Any = None,
        weight: Any = None,
    ) -> None:
        self.site = site
        self.output_grad = output_grad
        self.ids = ids
        self.batch_axis = batch_axis
        self.note = note
        self.output = output
        self.weight = weight
        self._build_rows = rows
        self._rows: SparseRows | None = None

    @property
    def per_sample(self) -> bool:
        """True when ``output_grad`` and the table gradient are per sample (not batch sums)."""
        return self.batch_axis is not None

    def table_grad(self, dense: bool = False, max_bytes: int | None = None) -> Any:
        """Per-sample gradient of the table through this lookup.

        Returns :class:`SparseRows` (B, V, D) — ``.to_native()`` gives a torch sparse COO
        tensor or an MXNet row_sparse (B·V, D) array — or, with ``dense=True``, a dense (B, V, D)
        array refused with DenseTooLargeError above ``max_bytes`` (default 1 GiB).
        """
        if self._rows is None:
            self._rows = self._build_rows()
        return self._rows.to_dense(max_bytes) if dense else self._rows

    def table_grad_norms(self) -> Any:
        """(B,) L2 norms of the per-sample table gradients, without any dense (B, V, D)."""
        return self.table_grad().norms()

    def __repr__(self) -> str:
        shape = tuple(getattr(self.output_grad, "shape", ()))
        return (
            f"LookupGrad({self.name!r}, role={self.role!r}, table={self.table!r}, "
            f"output_grad{shape}, batch_axis={self.batch_axis})"
        )


class Gradients:
    """Everything one :func:`embgrad.gradients` call computed.

    Attributes:
        losses: the per-sample losses (B,), framework-native, detached.
        layers: names of the captured lookups, in call order.
        input_grads: gradients w.r.t. the floating-point inputs, keyed by position (int) or
            keyword (str); per sample under the same independence the probe checks.
        check: how exactness was established: ``"probe"``, ``"probe-cached"``, ``"exact"``,
            ``"off"`` or ``"single"`` (B = 1: nothing to check).
        probe_residual: the probe's largest relative residual (0 = independent), or None.
        mode: ``"eval"`` or ``"train"``.
        framework: ``"gluon"`` or ``"torch"``.
        unreached: lookups selected by ``layers="auto"`` and left out because the losses do not
            reach their outputs through the autograd graph (detached, ``no_grad``,
            ``stop_gradient``/``BlockGrad``): name → why. Their gradient is not zero, it is
            undefined here, so they are not in :attr:`layers`.
        notes: remarks on the whole call: one per left-out lookup, saying why.
    """

    def __init__(
        self,
        *,
        losses: Any,
        lookups: list[LookupGrad],
        input_grads: dict[str | int, Any],
        check: str,
        probe_residual: float | None,
        mode: str,
        framework: str,
        unreached: dict[str, str] | None = None,
    ) -> None:
        self.losses = losses
        self._lookups = {lk.name: lk for lk in lookups}
        self.input_grads = input_grads
        self.check = check
        self.probe_residual = probe_residual
        self.mode = mode
        self.framework = framework
        self.unreached: dict[str, str] = dict(unreached or {})

    @property
    def notes(self) -> list[str]:
        """One remark per lookup left out of the result (see :attr:`unreached`)."""
        return [f"lookup {name!r} left out: {why}" for name, why in self.unreached.items()]

    @property
    def layers(self) -> list[str]:
        return list(self._lookups)

    @property
    def batch_size(self) -> int:
        return int(self.losses.shape[0])

    def __getitem__(self, name: str) -> LookupGrad:
        try:
            return self._lookups[name]
        except KeyError:
            if name in self.unreached:
                raise KeyError(f"lookup {name!r} was left out: {self.unreached[name]}") from None
            raise KeyError(
                f"no captured lookup named {name!r}; captured: {', '.join(self._lookups)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._lookups

    def __iter__(self) -> Iterator[LookupGrad]:
        return iter(self._lookups.values())

    def __len__(self) -> int:
        return len(self._lookups)

    def by_role(self, role: str) -> list[LookupGrad]:
        """The lookups with the given role (e.g. ``"word"``), in call order."""
        return [lk for lk in self if lk.role == role]

    @property
    def tables(self) -> dict[str, list[str]]:
        """Canonical table name → every call site that looked the table up."""
        out: dict[str, list[str]] = {}
        for lk in self:
            out.setdefault(lk.table, []).append(lk.name)
        return out

    def table_grad(self, table: str, dense: bool = False, max_bytes: int | None = None) -> Any:
        """Per-sample gradient of ``table`` summed over every call site that looked it up.

        ``table`` is the table's canonical name (a key of :attr:`tables`) or any other name
        under which the model registers the same tensor (``LookupGrad.aliases``).
        """
        canonical = {alias: lk.table for lk in self for alias in lk.aliases}
        if table not in canonical:
            raise KeyError(f"no captured table named {table!r}; tables: {', '.join(self.tables)}")
        rows = combine([self[n].table_grad() for n in self.tables[canonical[table]]])
        return rows.to_dense(max_bytes) if dense else rows

    def __repr__(self) -> str:
        return (
            f"Gradients(framework={self.framework!r}, batch={self.batch_size}, "
            f"layers={self.layers}, check={self.check!r})"
        )
