"""The small protocol between the framework-free core and one framework.

A backend does four things, all reversible: switch the model into the requested mode and into a
state where every embedding lookup runs through Python (``open``), run the forward with each
lookup's output replaced by ``output + delta`` for a zero ``delta`` it can differentiate against
(``forward``), take one backward for a given per-sample cotangent w.r.t. those deltas only
(``backward``), and restore everything on exit, errors included.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..core.ops import Ops

Mode = Literal["eval", "train"]

# Roles a lookup can have; "output" lookups (sampled-softmax decoders) are not model inputs.
ROLES = ("word", "position", "token_type", "input", "output")


_ROLE_WORDS = (
    ("position", ("position", "wpe", "pos_emb", "pos_embed", "positional", "relative_attention")),
    ("token_type", ("token_type", "segment", "type_emb")),
    ("word", ("word", "wte", "tok", "shared", "embed_tokens", "input_embed")),
)


def guess_role(name: str) -> str:
    """Role of a lookup from its table's name: 'position', 'token_type', 'word' or 'input'."""
    low = name.lower()
    for role, words in _ROLE_WORDS:
        if any(w in low for w in words):
            return role
    return "input"


@dataclass(eq=False)
class Capture:
    """One embedding lookup the forward performed (one entry per call site and call).

    ``out_shape[:-1]`` is the shape searched for the batch axis (``ids.shape`` for a plain
    lookup, ``(n_bags,)`` for an embedding bag).  ``rows`` is set for lookups whose output is not
    one row per id (embedding bags): given the output gradient (native) it returns working
    arrays ``(output_index, ids, grads)`` — for each id, the output row (bag) it feeds and the
    gradient that reaches its table row.
    """

    name: str
    role: str
    module: str
    table: str
    ids: Any
    out_shape: tuple[int, ...]
    vocab_size: int
    dim: int
    handle: Any = None
    owner: Any = None
    padding_idx: int | None = None
    tied: bool = False
    note: str = ""
    rows: Callable[[Any], tuple[Any, Any, Any]] | None = None
    #: the lookup's output as the model used it (after ``replace``), detached, native
    output: Any = None
    #: the table's values (V, D), detached, native — for HotFlip and baselines
    weight: Any = None
    #: every registered name of the table's tensor, canonical (``table``) first; () = just table
    aliases: tuple[str, ...] = ()


#: ``replace(name, role, output) -> new output or None`` lets callers substitute a lookup's output
#: (integrated gradients, SmoothGrad); gradients are then taken at the substituted value.
Replace = Callable[[str, str, Any], Any]


@dataclass(eq=False)
class Forward:
    """What one recorded forward produced: per-sample losses, lookups and float inputs."""

    losses: Any
    captures: list[Capture]
    float_inputs: dict[str | int, Any] = field(default_factory=dict)
    state: Any = None


class Session(abc.ABC):
    """A model opened for gradient capture; lives inside ``Backend.open``'s context."""

    ops: Ops
    framework: str
    #: False where a second backward over a retained graph is not exact (MXNet re-draws dropout
    #: masks): the core then re-runs the forward with the same seed instead.
    retained_backward_is_exact: bool = True
    #: set by the core before ``forward``: every lookup output ``out`` is replaced by
    #: ``replace(name, role, out)`` when that returns non-None (same shape and dtype required).
    replace: Replace | None = None

    @abc.abstractmethod
    def forward(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loss_fn: Callable[[Any], Any],
        *,
        seed: int,
    ) -> Forward: ...

    @abc.abstractmethod
    def backward(
        self,
        fwd: Forward,
        cotangent: Any,
        select: list[int],
        *,
        inputs: bool,
        retain: bool,
    ) -> tuple[list[Any], dict[str | int, Any]]:
        """Gradients of ``sum(cotangent * losses)`` w.r.t. the outputs of ``fwd.captures[k]`` for
        each index k in ``select`` (indices, because the core may re-run the forward and then
        address the new Forward's captures), and w.r.t. the float inputs when ``inputs``.
        ``cotangent`` is a numpy float64 array of shape (B,). Returns native arrays."""

    def check_inputs(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:  # noqa: B027
        """Cheap checks before any forward (devices, empty arrays); raise InputError."""

    def to_native(self, x: Any, like: Any) -> Any:
        """A working array (see ``ops.work``) back to the framework's array type, like ``like``."""
        return x


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


@contextlib.contextmanager
def restoring(*undo: Callable[[], None]) -> Iterator[None]:
    """Run every undo callback on exit (in reverse), even if one of them fails."""
    try:
        yield
    finally:
        errors = []
        for fn in reversed(undo):
            try:
                fn()
            except Exception as e:  # pragma: no cover - defensive
                errors.append(e)
        if errors:  # pragma: no cover
            raise errors[0]
