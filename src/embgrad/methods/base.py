"""The method protocol, its result type and the registry (``register`` / ``list_methods``).

Every method has the same call shape (captum-style)::

    scores = Method(model, layer="word").attribute(inputs, loss_fn, **options)

``loss_fn(outputs)`` (or ``loss_fn(outputs, rows)``, see ``_passes``) returns the per-sample
quantity being explained, shape (B,). Options are keyword-only arguments of the method's
``_attribute``; their names, defaults and help come from there, so the CLI's help and error
messages are built from the registry, never written by hand.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

import numpy as np

from ..errors import InputError
from ._passes import Base, LossFn, base_pass

_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound="type[Method]")


@dataclass
class Scores:
    """What one method computed for a batch, in numpy, batch first.

    Attributes:
        method: the method's registry name.
        scores: (B, T) float64, one number per token (what it means: the method's ``summary``).
        losses: f(x), the explained per-sample quantity at the inputs, (B,) float64.
        ids: the word ids (B, T) int64.
        signed: (B, T) signed per-token sums where ``scores`` are magnitudes, else None.
        attributions: (B, T, D) per-dimension attributions (gradient×input, integrated
            gradients) or the (mean) gradient (gradient, SmoothGrad); None for HotFlip.
        delta: (B,) completeness delta |Σ attributions − (f(x) − f(baseline))| (integrated
            gradients), else None.
        hotflip: per sample, a list of candidate swaps
            ``{"position", "token_id", "replacement_id", "estimate", "verified", "rank"}``
            (HotFlip), else None.
        base: the plain gradient pass at the inputs (kept for table-gradient norms).
        info: method-specific facts (baseline, rule, steps, sigma, ...).
    """

    method: str
    scores: np.ndarray
    losses: np.ndarray
    ids: np.ndarray
    signed: np.ndarray | None = None
    attributions: np.ndarray | None = None
    delta: np.ndarray | None = None
    hotflip: list[list[dict[str, Any]]] | None = None
    base: Base | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What a caller knows about a batch, from which methods take their option defaults.

    Attributes:
        mask: (B, T) bool, the real tokens (the attention mask), or None.
        tokenizer: the texts' tokenizer (``pad_token_id``, ``mask_token_id``), or None.
        special_ids: token ids never proposed nor flipped (special tokens), or None.
        direction: the default ranking direction of substitutions, or None (the method's).
        skip_padding: passes may stop at each sample's last real token (models that ignore the
            padding through the attention mask).
        token_baselines: baselines made of the tokenizer's pad / mask tokens are wanted.
        tokens_per_pass: a bound on rows × tokens of one forward/backward, or None.
        flips_shown: how many substitutions per text the caller shows, or None: a method that
            measures its suggestions measures at least that many.
    """

    mask: np.ndarray | None = None
    tokenizer: Any = None
    special_ids: tuple[int, ...] | None = None
    direction: str | None = None
    skip_padding: bool = False
    token_baselines: bool = False
    tokens_per_pass: int | None = None
    flips_shown: int | None = None


class Method:
    """One attribution method over the outputs of one embedding lookup (the word lookup).

    Args:
        model: a ``torch.nn.Module`` or an ``mxnet.gluon.Block``.
        layer: which lookup to attribute to: a role (default ``"word"``), a call-site name or a
            glob (see ``embgrad.gradients(layers=)``).
        mode: ``"eval"`` (default) or ``"train"``.
        check: the independence check of ``embgrad.gradients`` (``"auto"`` by default).
        batch_axis: the inputs' batch axis when it is not 0 ((T, B) layouts): the ``rows`` of
            the plain pass's ``loss_fn(outputs, rows)`` count samples along it.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    #: help text per option (keyword of ``_attribute``), shown by ``embgrad methods``
    option_help: ClassVar[dict[str, str]] = {}
    #: the method needs only the plain gradient at the inputs (no extra passes)
    single_pass: ClassVar[bool] = False
    #: options that take arrays or id lists made from the batch (the Explainer sets them):
    #: settable from Python, not from the command line, and not listed there
    array_options: ClassVar[tuple[str, ...]] = ("mask", "exclude_ids")
    #: options every output records with their value as run, given or not (they change the
    #: numbers and a reader must know them: integrated gradients' baseline)
    recorded_options: ClassVar[tuple[str, ...]] = ()
    #: the method attributes a quantity to every token (False: it proposes swaps, HotFlip), so
    #: it can explain each output of a generation, a tagger or a span
    attributes_outputs: ClassVar[bool] = True
    #: the method proposes token swaps (HotFlip): callers that show swaps beside any method's
    #: scores ask the registry for it (:func:`swap_method`) instead of naming it
    suggests_swaps: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        *,
        layer: str = "word",
        mode: str = "eval",
        check: str = "auto",
        batch_axis: int | None = None,
    ) -> None:
        self.model, self.layer, self.mode, self.check = model, layer, mode, check
        self.batch_axis = batch_axis

    def attribute(self, inputs: Any, loss_fn: LossFn, **options: Any) -> Scores:
        """Attributions for a batch; see the class docstring for the options."""
        opts = self.validate(options)
        base = base_pass(
            self.model, inputs, loss_fn, layer=self.layer, mode=self.mode, check=self.check,
            rows_axis=self.batch_axis,
        )  # fmt: skip
        return self.from_base(base, inputs, loss_fn, **opts)

    def plain_pass(self, inputs: Any, loss_fn: LossFn) -> Base:
        """The plain gradient pass at the inputs that :meth:`from_base` builds on."""
        return base_pass(
            self.model, inputs, loss_fn, layer=self.layer, mode=self.mode, check=self.check,
            rows_axis=self.batch_axis,
        )  # fmt: skip

    def from_base(self, base: Base, inputs: Any, loss_fn: LossFn, **options: Any) -> Scores:
        """Attributions given an already computed plain gradient pass at the same inputs."""
        scores = self._attribute(base, inputs, loss_fn, **self.validate(options))
        scores.base = base
        return scores

    @classmethod
    def defaults(cls, ctx: Context) -> dict[str, Any]:
        """Option defaults this method takes from what the caller knows (``ctx``); callers
        ``setdefault`` them, so options given explicitly win. None here: the plain defaults."""
        return {}

    @property
    def expanded_check(self) -> str:
        """The check for repeated-sample passes: with ``"auto"`` the plain pass already checked
        that samples are independent (a property of the model and loss), so they skip it."""
        return "off" if self.check == "auto" else self.check

    #: ``_attribute(self, base, inputs, loss_fn, *, option=default, ...) -> Scores``: each
    #: method's computation; its keyword-only arguments are the method's options.
    _attribute: Callable[..., Scores]

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Option name → default, from the keyword-only arguments of ``_attribute``."""
        sig = inspect.signature(cls._attribute)
        return {p.name: p.default for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY}

    @classmethod
    def cli_options(cls) -> dict[str, Any]:
        """The options settable from the command line (all but :attr:`array_options`)."""
        return {k: v for k, v in cls.options().items() if k not in cls.array_options}

    @classmethod
    def as_run(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` plus the defaults of :attr:`recorded_options` not given: what outputs
        record (JSON ``options``, Parquet metadata, the HTML report's header)."""
        defaults = cls.options()
        return {**{k: defaults[k] for k in cls.recorded_options}, **options}

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` if every name is an option of this method and every value has the
        option's type (from ``_attribute``'s annotations); InputError naming the first bad
        one otherwise — cheap, so callers run it before loading a model."""
        known = cls.options()
        bad = sorted(set(options) - set(known))
        if bad:
            close = [m for b in bad for m in difflib.get_close_matches(b, known, n=2)]
            raise InputError(
                f"method {cls.name!r} has no option(s) {', '.join(bad)}"
                + (f" (did you mean {', '.join(dict.fromkeys(close))}?)" if close else "")
                + "; its options are: "
                + (", ".join(f"{k} (default {v!r})" for k, v in known.items()) or "none")
            )
        try:
            hints = typing.get_type_hints(cls._attribute)
        except Exception:  # an annotation that does not resolve: names checked only
            hints = {}
        for key, value in options.items():
            if key in hints and not _has_type(value, hints[key]):
                raise InputError(
                    f"method {cls.name!r}: option {key}={value!r} is not "
                    f"{_type_words(hints[key])} (see `embgrad methods`)"
                )
        return options


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` (int, float, str, bool, Literal, Sequence[X], X | None;
    anything else is accepted)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool
        )
    if hint is str:
        return isinstance(value, str)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
        if isinstance(value, np.ndarray):
            return True
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(
            _has_type(v, args[0]) if args else True for v in value
        )
    return True


def _type_words(hint: Any) -> str:
    """``hint`` for people: ``one of 'a', 'b'``, ``an int or None``, ..."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_words(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    names = {int: "an int", float: "a number", str: "a string", bool: "True or False"}
    if hint in names:
        return names[hint]
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
        return "a list"
    return str(hint)


def register(cls: M) -> M:
    """Class decorator adding a :class:`Method` subclass to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"a method named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of the registered attribution methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; InputError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = suggest(name, list_methods())
        raise InputError(
            f"unknown method {name!r}"
            + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
            + f"; choose one of: {', '.join(list_methods())}"
        ) from None


def swap_method() -> type[Method] | None:
    """The registered single-pass method that proposes token swaps (HotFlip), or None."""
    found = [c for c in _REGISTRY.values() if c.suggests_swaps and c.single_pass]
    return found[0] if found else None


def suggest(name: Any, known: Sequence[str]) -> list[str]:
    """The names of ``known`` close to a misspelt ``name``: by spelling (difflib), by prefix,
    or by initials (``ig`` → ``integrated_gradients``)."""
    if not isinstance(name, str) or not name:
        return []
    low = name.lower().replace("-", "_")
    out = difflib.get_close_matches(low, known, n=3, cutoff=0.6)
    out += [k for k in known if k.startswith(low) or low.startswith(k)]
    out += [k for k in known if "_" in k and "".join(w[0] for w in k.split("_")) == low]
    return list(dict.fromkeys(out))


def pass_defaults(ctx: Context) -> dict[str, Any]:
    """Defaults of methods that run repeated-sample passes (integrated gradients, SmoothGrad):
    a pass size bounded by ``ctx.tokens_per_pass`` and padding skipped where allowed."""
    out: dict[str, Any] = {}
    if ctx.tokens_per_pass is not None and ctx.mask is not None:
        out["internal_batch_size"] = max(1, ctx.tokens_per_pass // max(1, ctx.mask.shape[1]))
    if ctx.skip_padding and ctx.mask is not None:
        out["mask"] = ctx.mask
    return out


def choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """InputError unless ``value`` is one of ``allowed`` (message built from ``allowed``)."""
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")


def reduce_tokens(x: np.ndarray, how: str) -> np.ndarray:
    """(B, T, D) → (B, T): ``"norm"`` (L2 over D) or ``"sum"`` (signed sum over D)."""
    if how == "norm":
        return np.sqrt(np.einsum("btd,btd->bt", x, x, dtype=np.float64))
    return x.sum(axis=-1, dtype=np.float64)
