"""``embgrad.attribute`` and the ``Explainer``: one registry that sends each request to the task
that explains it — token classification, question answering, or one quantity per text.

A task joins with :func:`register_task`: a name, ``accepts(model, request) -> bool`` (the
model and the keyword arguments given; the ``Explainer`` adds its model's ``kind``) and the
function that runs it, called as ``run(model, inputs, loss_fn=..., target=..., method=...,
tokenizer=..., **rest)``; it returns a result with ``items``, and — for several outputs per
text — ``run_rows()``, the fields of one data-run row per text. Tasks are tried in
registration order; the last, which takes every request, explains one quantity per text: its
:attr:`Route.task` (``tasks.task_for``) picks the caller's ``loss_fn``, a class target,
zero-shot labels or a pair's similarity, for ``attribute`` (texts or a tokenized batch) and
for the ``Explainer`` (texts, in batches) alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..methods.api import attribute_task, batch_size_hint
from ..tasks import Task, task_for
from ..tasks.heads import id2label
from ..tasks.inputs import is_texts, tokenized
from .qa_api import attribute_qa, is_qa_model
from .tokens_api import attribute_tokens, is_token_classifier


@dataclass(frozen=True)
class Route:
    """One registered task: ``run`` explains what ``accepts`` takes; ``task`` (one quantity
    per text only) builds the :class:`~embgrad.tasks.Task` a caller feeds batch by batch."""

    name: str
    accepts: Callable[[Any, dict[str, Any]], bool]
    run: Callable[..., Any]
    task: Callable[..., Task] | None = None


_ROUTES: list[Route] = []

#: the task that takes every request: one quantity per text
ONE_QUANTITY = "one_quantity"


def register_task(
    name: str,
    accepts: Callable[[Any, dict[str, Any]], bool],
    *,
    task: Callable[..., Task] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``run`` as the task ``name`` for the requests ``accepts`` takes; it is
    tried before the one-quantity task, which takes every request."""

    def add(run: Callable[..., Any]) -> Callable[..., Any]:
        if any(r.name == name for r in _ROUTES):
            raise ValueError(f"a task named {name!r} is already registered")
        catch_all = [i for i, r in enumerate(_ROUTES) if r.name == ONE_QUANTITY]
        _ROUTES.insert(catch_all[0] if catch_all else len(_ROUTES), Route(name, accepts, run, task))
        return run

    return add


def list_tasks() -> list[str]:
    """The registered tasks, in the order they are tried."""
    return [r.name for r in _ROUTES]


def find_task(model: Any, request: dict[str, Any]) -> Route:
    """The first registered task that accepts ``request`` on ``model``."""
    return next(r for r in _ROUTES if r.accepts(model, request))


@register_task("question_answering", lambda model, req: is_qa_model(model))
def _qa(model: Any, inputs: Any, *, loss_fn: Any, target: Any, **kwargs: Any) -> Any:
    if loss_fn is not None or target is not None or kwargs.get("positions") is not None:
        raise InputError(
            "a question-answering model explains a span: give span=(s, e) or nothing (the "
            "predicted span), not loss_fn / target / positions"
        )
    return attribute_qa(model, inputs, **kwargs)


@register_task(
    "token_classification",
    lambda model, req: req.get("positions") is not None or is_token_classifier(model),
)
def _tokens(model: Any, inputs: Any, *, loss_fn: Any, target: Any, **kwargs: Any) -> Any:
    if kwargs.pop("candidate_labels", None) is not None:
        raise InputError("candidate_labels apply to sentence encoders, not token tagging")
    if kwargs.pop("pairs", None) is not None:
        raise InputError(
            "pairs= are the contexts of question answering; token classification explains each "
            "text's own tokens: give the texts alone"
        )
    return attribute_tokens(model, inputs, target, loss_fn=loss_fn, **kwargs)


def _one_quantity(
    model: Any,
    inputs: Any,
    *,
    loss_fn: Any,
    target: Any,
    tokenizer: Any = None,
    pairs: Any = None,
    candidate_labels: Any = None,
    **kwargs: Any,
) -> Any:
    texts = ([inputs] if isinstance(inputs, str) else list(inputs)) if is_texts(inputs) else None
    if pairs is not None and texts is not None and isinstance(pairs, str):
        pairs = [pairs]
    rows: Any = texts if texts is not None else batch_size_hint(inputs)
    task = task_for(None, rows, pairs, target, labels=id2label(model), candidate_labels=candidate_labels,
                    loss_fn=loss_fn)  # fmt: skip
    if texts is not None:  # both sentences of every pair go into one batch
        inputs = tokenized(model, task.rows(), tokenizer, "attribute")
    return attribute_task(model, inputs, task, tokenizer=tokenizer, **kwargs)


register_task(ONE_QUANTITY, lambda model, req: True, task=task_for)(_one_quantity)


def attribute(
    model: Any,
    inputs: Any,
    loss_fn: Callable[..., Any] | None = None,
    *,
    target: Any = None,
    method: str = "gradient",
    tokenizer: Any = None,
    **kwargs: Any,
) -> Any:
    """Token attributions of ``model`` on a batch, by the registered ``method``; what is
    explained follows from the model and the arguments (:func:`list_tasks`):

    * an HF ``...ForQuestionAnswering`` model: the answer span
      (:func:`~embgrad.outputs.qa_api.attribute_qa`: contexts as ``pairs=``, ``span=``);
    * an HF ``...ForTokenClassification`` model, or ``positions=`` given: one row per explained
      position (:func:`~embgrad.outputs.tokens_api.attribute_tokens`);
    * otherwise one quantity per text (``tasks.task_for``): ``loss_fn(outputs)`` or
      ``loss_fn(outputs, rows)`` → (B,); a class ``target`` (an index, a label name of
      ``model.config.label2id``, or one per text): log p(target | x); zero-shot
      ``candidate_labels`` on a sentence encoder (``target`` then names one of them; default
      the predicted one; needs ``tokenizer``); or, with texts, ``pairs=`` on an encoder: each
      sentence's cosine similarity to its partner's embedding (two results per pair).
      The rest goes to :func:`~embgrad.methods.api.attribute_task` (``layer``, ``mode``,
      ``check`` and the method's options).

    Texts (a string or a list of them) are tokenized with ``tokenizer``.
    """
    if kwargs.get("positions", 0) is None:
        del kwargs["positions"]
    request = {"loss_fn": loss_fn, "target": target, **kwargs}
    route = find_task(model, request)
    return route.run(model, inputs, loss_fn=loss_fn, target=target, method=method,
                     tokenizer=tokenizer, **kwargs)  # fmt: skip
