"""``embgrad.attribute_generation``: which input tokens drove each generated token.

Every (sample b, step k) is one row of the engine: the rows of a chunk of steps are built by
the kind's row builder (``outputs.generation``; a causal model reads only the prompt and y_<k
for step k) and explained by the registered method in one forward and one backward per chunk
(``outputs.driver``); results are scattered back to (B, K, L) — step k of sample b equals that
step run on the sample alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..methods.base import get_method, list_methods
from ..methods.gen_result import GenerationAttribution
from ..tasks.inputs import tokenized
from . import generation as gen
from .driver import Driver, explain
from .rows import RowBuilder
from .scores import check_step_scores

STEP_SCORES = ("probability", "entropy")


def step_method(method: str, what: str = "generation steps") -> Any:
    """The registered method class, if it attributes a quantity to every token
    (``Method.attributes_outputs``; HotFlip proposes swaps instead)."""
    cls = get_method(method)
    if not cls.attributes_outputs:
        ok = [m for m in list_methods() if get_method(m).attributes_outputs]
        raise InputError(
            f"method {method!r} does not attribute {what}; choose one of: " + ", ".join(ok)
        )
    return cls


def attribute_generation(
    model: Any,
    inputs: Any,
    targets: Any = None,
    *,
    method: str = "gradient",
    logprobs_fn: Callable[[Any], Any] | None = None,
    contrast: Any = None,
    step_scores: Sequence[str] = STEP_SCORES,
    return_grads: bool = False,
    target_mask: Any = None,
    generate: int | None = None,
    tokenizer: Any = None,
    layer: str = "word",
    tokens_per_pass: int | None = None,
    batch_axis: int | None = None,
    mode: str = "eval",
    check: str = "auto",
    **options: Any,
) -> GenerationAttribution:
    """Per generated (or forced) token y_k, the attribution of log p(y_k | x, y_<k) to every
    input token.

    Args:
        model: an HF ``...ForCausalLM`` / ``...ForConditionalGeneration`` (logits derived
            automatically), or any torch / Gluon LM with ``logprobs_fn``.
        inputs: HF: ``{"input_ids", "attention_mask"}`` of B prompts (left or right padding),
            or the prompts as strings with ``tokenizer``; embgrad builds the teacher-forced
            inputs. Other models: the teacher-forced inputs in the model's own format (e.g.
            (T, B) ids of a gluonnlp LM: prompt and targets but the last), called as is.
        targets: (B, K) ids of the continuation (padding allowed with ``target_mask``; float
            arrays of whole numbers are accepted), or None with ``generate=K`` (greedy, HF).
        logprobs_fn: ``logprobs_fn(outputs) -> (N, K, V)`` log-probabilities aligned with
            targets (required for non-HF models; rows summing to 1 in probability, checked).
        contrast: (B, K) ids; the quantity becomes log p(y_k) − log p(y'_k).
        step_scores: registered step scores (``outputs.scores``: ``"probability"``,
            ``"entropy"``, ``"contrast_probability"``) per step, (B, K).
        return_grads: keep ``.grads`` (B, K, L, D) (and ``.target_grads``), the raw per-step
            gradients (or the method's per-dimension attributions).
        tokens_per_pass: rows × positions of one pass (chunks of steps; bounds memory).
        batch_axis: the batch axis of ``inputs`` for non-HF models (1 for (T, B) layouts); by
            default the axis of the first input whose size is B (targets' rows), else 0.
        **options: the method's options (``embgrad methods``).

    Returns:
        :class:`GenerationAttribution`: ``.scores`` (B, K, L) (decoder-only: L = P + K, the
        prompt as given then the K targets; encoder–decoder: (B, K, S) over the source and
        ``.target_scores`` (B, K, K) over the decoder inputs), ``.step_scores``, ``.delta``.
    """
    cls = step_method(method)
    cls.validate(options)
    step_scores = check_step_scores(step_scores)
    inputs = tokenized(model, inputs, tokenizer, "attribute_generation")
    hf = _hf_kind(model, logprobs_fn)
    prompt = gen.hf_prompt(inputs) if hf is not None else None
    if generate is not None:
        if targets is not None or prompt is None:
            raise InputError("generate=K needs an HF LM and no targets (it makes them)")
        targets, target_mask = gen.greedy(model, prompt, int(generate), hf == "seq2seq")
    if targets is None:
        raise InputError("give targets (B, K) ids of the continuation, or generate=K")
    axis = 0 if prompt is not None else _batch_axis(inputs, targets, batch_axis)
    batch = prompt.ids.shape[0] if prompt is not None else _batch_on(inputs, axis)
    steps = gen.check_steps(targets, target_mask, contrast, batch)
    config = getattr(model, "config", None)
    gen.check_vocab(steps, getattr(config, "vocab_size", None))
    builder = _builder(model, hf, prompt, steps, inputs, logprobs_fn, axis)
    explainer = cls(model, layer=layer, mode=mode, check=check, batch_axis=axis)
    driver = explain(
        builder, explainer, options, tokens_per_pass=tokens_per_pass, return_grads=return_grads
    )
    return _result(driver, builder, cls.name, step_scores, tokenizer)


def _builder(
    model: Any,
    hf: str | None,
    prompt: gen.Prompt | None,
    steps: gen.Steps,
    inputs: Any,
    logprobs_fn: Any,
    axis: int,
) -> RowBuilder:
    """The row builder of this kind of LM, after the kind's own checks."""
    config = getattr(model, "config", None)
    if prompt is None:
        return gen.CustomRows(inputs, logprobs_fn, steps, axis)
    limit = gen.position_limit(config)
    if hf == "decoder":
        gen.check_positions(prompt, steps, limit, encoder=False)
        return gen.DecoderRows(prompt, steps, keep_one="logits_to_keep" in _forward_params(model))
    gen.check_positions(prompt, steps, limit, encoder=True)
    longest = int(prompt.mask.sum(axis=1).max())
    if limit and longest > limit:
        raise InputError(
            f"a source has {longest} tokens, beyond the model's position limit of {limit}"
        )
    return gen.Seq2SeqRows(prompt, steps, _decoder_start(config))


def _hf_kind(model: Any, logprobs_fn: Any) -> str | None:
    """``"decoder"`` / ``"seq2seq"`` for an HF LM, None for a model with ``logprobs_fn``."""
    if logprobs_fn is not None:
        if not callable(logprobs_fn):
            raise InputError("logprobs_fn must be callable: outputs -> (N, K, V)")
        return None
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "generate"):
        raise InputError(
            f"{type(model).__name__} is not a HuggingFace LM (no config / generate): pass "
            "logprobs_fn(outputs) -> (N, K, V) log-probabilities aligned with targets"
        )
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "decoder"


def _decoder_start(config: Any) -> int:
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(config, "bos_token_id", None)
    if start is None:
        raise InputError(
            "the model's config has no decoder_start_token_id (nor bos_token_id): set "
            "model.config.decoder_start_token_id"
        )
    return int(start)


def _forward_params(model: Any) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        return set()


def _batch_axis(inputs: Any, targets: Any, given: int | None) -> int:
    """The inputs' batch axis: as given, else the first input's axis whose size is the targets'
    row count B (0 when both or neither are)."""
    if given is not None:
        if not isinstance(given, int) or isinstance(given, bool) or given < 0:
            raise InputError(f"batch_axis must be an axis index (0 or 1), got {given!r}")
        return given
    shape = tuple(int(s) for s in getattr(gen.first_input(inputs), "shape", ()))
    b = int(gen.to_np(targets).shape[0]) if getattr(targets, "shape", None) else None
    if b is not None and len(shape) >= 2 and shape[0] != b and shape[1] == b:
        return 1
    return 0


def _batch_on(inputs: Any, axis: int) -> int:
    shape = getattr(gen.first_input(inputs), "shape", None)
    if not shape or len(shape) <= axis:
        raise InputError(f"could not tell the batch size of the inputs on axis {axis}")
    return int(shape[axis])


def _result(
    driver: Driver,
    builder: Any,
    method: str,
    step_scores: Sequence[str],
    tokenizer: Any,
) -> GenerationAttribution:
    names = _token_names(tokenizer)
    steps = builder.outputs
    main = builder.main
    target_tokens = tokens = None
    if names is not None:
        target_tokens = [names(steps.targets[b][steps.active[b]]) for b in range(steps.shape[0])]
        tokens = builder.tokens(names)
    return GenerationAttribution(
        method=method,
        kind=builder.kind,
        scores=driver.scores[main],
        signed=driver.signed[main],
        target_scores=driver.scores.get("target"),
        target_signed=driver.signed.get("target"),
        target_grads=driver.grads.get("target"),
        step_scores={s: driver.seen[s] for s in step_scores if s in driver.seen},
        quantity=driver.quantity,
        targets=steps.targets,
        target_mask=steps.active,
        contrast=steps.contrast,
        prompt_length=builder.prompt_length,
        column_mask=builder.column_mask(driver.scores[main].shape[2]),
        tokens=tokens,
        target_tokens=target_tokens,
        tokenizer=tokenizer,
        grads=driver.grads.get(main),
        delta=driver.delta,
        info=driver.info,
    )


def _token_names(tokenizer: Any) -> Callable[[np.ndarray], list[str]] | None:
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return None
    return lambda ids: [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]
