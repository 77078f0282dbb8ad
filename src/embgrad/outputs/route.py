"""``embgrad.attribute``: one entry, and a registry that sends each request to the task that
explains it — token classification, question answering, or one quantity per text.

A task joins with :func:`register_task`: a name, ``accepts(model, request) -> bool`` (the
model and the keyword arguments given) and the function that runs it, called as
``run(model, inputs, loss_fn=..., target=..., method=..., tokenizer=..., **rest)``. Tasks are
tried in registration order; a request no task accepts explains one quantity per text
(``methods.api.attribute``: ``loss_fn``, a class ``target`` or zero-shot labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..methods.api import attribute as attribute_texts
from ..tasks.inputs import tokenized
from .qa_api import attribute_qa, is_qa_model
from .tokens_api import attribute_tokens, is_token_classifier


@dataclass(frozen=True)
class Route:
    name: str
    accepts: Callable[[Any, dict[str, Any]], bool]
    run: Callable[..., Any]


_ROUTES: list[Route] = []


def register_task(
    name: str, accepts: Callable[[Any, dict[str, Any]], bool]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``run`` as the task ``name`` for the requests ``accepts`` takes."""

    def add(run: Callable[..., Any]) -> Callable[..., Any]:
        if any(r.name == name for r in _ROUTES):
            raise ValueError(f"a task named {name!r} is already registered")
        _ROUTES.append(Route(name, accepts, run))
        return run

    return add


def list_tasks() -> list[str]:
    """The registered tasks, in the order they are tried (then: one quantity per text)."""
    return [r.name for r in _ROUTES]


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
    return attribute_tokens(model, inputs, target, loss_fn=loss_fn, **kwargs)


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
    * otherwise one quantity per text: ``loss_fn``, a class ``target`` or zero-shot
      ``candidate_labels`` (see ``embgrad.methods.api.attribute``).

    Texts (a string or a list of them) are tokenized with ``tokenizer``.
    """
    if kwargs.get("positions", 0) is None:
        del kwargs["positions"]
    request = {"loss_fn": loss_fn, "target": target, **kwargs}
    for route in _ROUTES:
        if route.accepts(model, request):
            return route.run(
                model, inputs, loss_fn=loss_fn, target=target, method=method,
                tokenizer=tokenizer, **kwargs,
            )  # fmt: skip
    inputs = tokenized(model, inputs, tokenizer, "attribute")
    return attribute_texts(
        model, inputs, loss_fn, target=target, method=method, tokenizer=tokenizer, **kwargs
    )
