"""embgrad's exception types.

Every error embgrad raises on purpose is an :class:`EmbgradError`; catch that to catch them all.
Each subclass also derives from the builtin a caller would expect, so ``except ValueError`` keeps
working for bad input::

    EmbgradError
    ├── UnsupportedModelError (TypeError)   the model's type has no backend, or its
    │                                       backend cannot see into it (TorchScript)
    ├── MissingExtraError (ImportError)     an optional dependency is not installed
    ├── InputError (ValueError)             bad inputs: ids out of range / non-integral,
    │                                       empty batch, mixed devices, bad options
    ├── LossError (ValueError)              loss_fn returned a scalar, wrong shape, NaN/inf,
    │                                       or a count no lookup's ids has an axis of
    ├── NoLookupError (LookupError)         no embedding lookup found, `layers=` selects none,
    │                                       or the losses reach none (or a named one) through
    │                                       the autograd graph (no_grad, detach, BlockGrad)
    ├── BatchAxisError (ValueError)         the batch axis of a lookup cannot be determined
    ├── CouplingError (RuntimeError)        samples interact: one backward is not per-sample
    └── DenseTooLargeError (MemoryError)    a dense result would exceed the byte limit
"""

from __future__ import annotations


class EmbgradError(Exception):
    """Base class of every error embgrad raises on purpose."""


class UnsupportedModelError(EmbgradError, TypeError):
    """The model's type is not handled by any backend, or is one its backend cannot see the
    lookups of (a TorchScript module: pass the eager ``torch.nn.Module``)."""


class MissingExtraError(EmbgradError, ImportError):
    """An optional dependency is missing; the message gives the exact install command."""


class InputError(EmbgradError, ValueError):
    """The inputs (or an option) are invalid; nothing was computed."""


class LossError(EmbgradError, ValueError):
    """``loss_fn`` did not return finite per-sample losses of shape (B,)."""


class NoLookupError(EmbgradError, LookupError):
    """The forward performed no embedding lookup, ``layers=`` selected none, or the losses do
    not reach the selected lookups (or one named in ``layers=``) through the autograd graph."""


class BatchAxisError(EmbgradError, ValueError):
    """The batch axis of a lookup's ids is ambiguous; pass ``batch_axis=``."""


class CouplingError(EmbgradError, RuntimeError):
    """Samples interact (e.g. BatchNorm in training mode, a loss mixing samples)."""


class DenseTooLargeError(EmbgradError, MemoryError):
    """A dense result was requested whose size exceeds ``max_bytes``."""


def missing_extra(package: str, extra: str) -> MissingExtraError:
    """Build the error for a missing optional dependency, with the install command."""
    return MissingExtraError(
        f"{package} is not installed; it is needed here. Install it with: "
        f"pip install 'embgrad[{extra}]'"
    )
