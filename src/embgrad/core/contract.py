"""The small protocol between the framework-free core and one framework.

A backend does four things, all reversible: switch the model into the requested mode and into a
state where every embedding lookup runs through Python (``open``), run the forward with each
lookup's output replaced by ``output + delta`` for a zero ``delta`` it can differentiate against
(``Session.forward``), take one backward for a given per-sample cotangent w.r.t. those deltas
only (``Session.backward``, which also says which lookups the losses do not reach), and restore
everything on exit, errors included.

:class:`Session` is a :class:`typing.Protocol`: ``TorchSession`` and the Gluon sessions
implement it structurally, and mypy checks that (``open`` is typed to yield a ``Session``).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from .ops import Ops
from .site import CallSite, SiteView

Mode = Literal["eval", "train"]

#: ``replace(name, role, output) -> new output or None`` lets callers substitute a lookup's output
#: (integrated gradients, SmoothGrad); gradients are then taken at the substituted value.
Replace = Callable[[str, str, Any], Any]


@dataclass(eq=False)
class Capture(SiteView):
    """One embedding lookup the forward performed: its :class:`CallSite` and its arrays.

    ``out_shape[:-1]`` is the shape searched for the batch axis (``ids.shape`` for a plain
    lookup, ``(n_bags,)`` for an embedding bag).  ``rows`` is set for lookups whose output is not
    one row per id (embedding bags): given the output gradient (native) it returns working
    arrays ``(output_index, ids, grads)`` — for each id, the output row (bag) it feeds and the
    gradient that reaches its table row.
    """

    site: CallSite
    ids: Any
    out_shape: tuple[int, ...]
    #: what the backend differentiates against (a delta or the output leaf)
    handle: Any = None
    rows: Callable[[Any], tuple[Any, Any, Any]] | None = None
    #: the lookup's output as the model used it (after ``replace``), detached, native
    output: Any = None
    #: the table's values (V, D), detached, native — for HotFlip and baselines
    weight: Any = None


@dataclass(eq=False)
class Forward:
    """What one recorded forward produced: per-sample losses, lookups and float inputs."""

    losses: Any
    captures: list[Capture]
    float_inputs: dict[str | int, Any] = field(default_factory=dict)
    state: Any = None
    #: checks of this forward's inputs left until after the backward is queued (ids on a GPU:
    #: one read from the device instead of one per lookup); raises InputError. None: nothing left
    verify: Callable[[], None] | None = None
    #: lookups the backend saw and could not capture: description -> why (reported on the
    #: result beside the unreached ones, never silent)
    unsplit: dict[str, str] = field(default_factory=dict)


class Session(Protocol):
    """A model opened for gradient capture; lives inside ``Backend.open``'s context."""

    #: the backend's array operations on its working arrays
    ops: Ops
    #: the framework's name (``embgrad.backends.FRAMEWORKS``)
    framework: str
    #: False where a second backward over a retained graph is not exact (MXNet re-draws dropout
    #: masks): the core then re-runs the forward with the same seed instead.
    retained_backward_is_exact: bool

    def check_inputs(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Cheap checks before any forward (devices, empty arrays); raise InputError."""

    def forward(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loss_fn: Callable[[Any], Any],
        *,
        seed: int,
        replace: Replace | None,
    ) -> Forward:
        """Run ``loss_fn(model(*args, **kwargs))`` once with every lookup captured.

        Each lookup output ``out`` is replaced by ``replace(name, role, out)`` when ``replace``
        is given and returns non-None (same shape and dtype required); ``seed`` seeds the
        framework's random generators where the mode draws (dropout)."""

    def evaluate(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], loss_fn: Callable[[Any], Any]
    ) -> Any:
        """``loss_fn(model(*args, **kwargs))`` only: no lookup captured and no autograd graph
        recorded (a plain forward in the session's mode, e.g. to measure f at flipped inputs).
        Returns the native losses."""

    def backward(
        self,
        fwd: Forward,
        cotangent: Any,
        select: list[int],
        *,
        inputs: bool,
        retain: bool,
    ) -> tuple[list[Any | None], dict[str | int, Any]]:
        """Gradients of ``sum(cotangent * losses)`` w.r.t. the outputs of ``fwd.captures[k]`` for
        each index k in ``select`` (indices, because the core may re-run the forward and then
        address the new Forward's captures), and w.r.t. the float inputs when ``inputs``.
        ``cotangent`` is a numpy float64 array of shape (B,). Returns native arrays.

        A selected lookup whose output the losses do not reach through the autograd graph
        (``no_grad``, ``detach``, ``stop_gradient``/``BlockGrad``) gets None, not zeros: the
        framework says so (an unused input of the gradient call, a graph that does not lead
        there), and the core decides what to do. A reached lookup whose gradient happens to be
        zero (masked positions) gets its zeros. Float inputs that are not reached get zeros."""

    def to_native(self, x: Any, like: Any) -> Any:
        """A working array (see ``ops.work``) back to the framework's array type, like ``like``."""


class Backend(abc.ABC):
    """One framework. Subclasses import their framework lazily, inside methods."""

    framework: ClassVar[str]
    extra: ClassVar[str]

    @staticmethod
    @abc.abstractmethod
    def accepts(model: Any) -> bool:
        """Whether ``model`` belongs to this framework (without importing it if not loaded)."""

    @abc.abstractmethod
    def open(self, model: Any, *, mode: Mode) -> contextlib.AbstractContextManager[Session]:
        """Prepare ``model`` for capture; restore every piece of its state on exit."""

    #: top-level packages whose models ignore positions after a sample's last real token (their
    #: attention masks / valid lengths), so passes may stop there
    padding_masked_by: ClassVar[tuple[str, ...]] = ()

    def masks_padding(self, model: Any) -> bool:
        """Whether ``model`` comes from a model library known to mask padding out."""
        return type(model).__module__.split(".")[0] in self.padding_masked_by

    @staticmethod
    def array_ops(array_type: type) -> Ops | None:
        """The :class:`Ops` for arrays of ``array_type`` if they are this framework's, else None
        (without importing the framework if it is not loaded)."""
        return None

    @abc.abstractmethod
    def array(self, model: Any, a: Any) -> Any:
        """A numpy array as the framework's array, on ``model``'s device, keeping its dtype
        (model inputs built from numpy, e.g. tokenized ids)."""
