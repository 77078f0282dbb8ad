"""``embgrad.attribute_generation``: which input tokens drove each generated token.

Every (sample b, step k) is one sample of the engine: the rows of a chunk of steps are built by
``tasks.generation`` (a causal model reads only the prompt and y_<k for step k) and explained by
the registered method in one forward and one backward per chunk; results are scattered back to
(B, K, L) — step k of sample b equals that step run on the sample alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, NoLookupError
from ..tasks import generation as gen
from ._arrays import repeat_samples
from ._passes import base_passes, batch_size_hint
from .base import Context, Method, Scores, get_method
from .gen_result import GenerationAttribution

STEP_SCORES = ("probability", "entropy")
#: methods giving per-dimension attributions (HotFlip proposes swaps: not a step attribution)
STEP_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "smoothgrad")


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
    batch_axis: int = 0,
    mode: str = "eval",
    check: str = "auto",
    **options: Any,
) -> GenerationAttribution:
    """Per generated (or forced) token y_k, the attribution of log p(y_k | x, y_<k) to every
    input token.

    Args:
        model: an HF ``...ForCausalLM`` / ``...ForConditionalGeneration`` (logits derived
            automatically), or any torch / Gluon LM with ``logprobs_fn``.
        inputs: HF: ``{"input_ids", "attention_mask"}`` of B prompts (left or right padding);
            embgrad builds the teacher-forced inputs. Other models: the teacher-forced inputs
            in the model's own format (e.g. (T, B) ids of a gluonnlp LM: prompt and targets
            but the last), called as is.
        targets: (B, K) ids of the continuation (padding allowed with ``target_mask``), or None
            with ``generate=K`` (greedy, HF models).
        logprobs_fn: ``logprobs_fn(outputs) -> (N, K, V)`` log-probabilities aligned with
            targets (required for non-HF models; rows summing to 1 in probability, checked).
        contrast: (B, K) ids; the quantity becomes log p(y_k) − log p(y'_k).
        step_scores: any of ``"probability"``, ``"entropy"`` (nats) per step, (B, K).
        return_grads: keep ``.grads`` (B, K, L, D) (and ``.target_grads``), the raw per-step
            gradients (or the method's per-dimension attributions).
        tokens_per_pass: rows × positions of one pass (chunks of steps; bounds memory).
        batch_axis: the batch axis of ``inputs`` for non-HF models (1 for (T, B) layouts).
        **options: the method's options (``embgrad methods``).

    Returns:
        :class:`GenerationAttribution`: ``.scores`` (B, K, L) (decoder-only: L = P + K, the
        prompt as given then the K targets; encoder–decoder: (B, K, S) over the source and
        ``.target_scores`` (B, K, K) over the decoder inputs), ``.step_scores``, ``.delta``.
    """
    cls = get_method(method)
    if cls.name not in STEP_METHODS:
        raise InputError(
            f"method {method!r} does not attribute generation steps; choose one of: "
            + ", ".join(STEP_METHODS)
        )
    cls.validate(options)
    bad = sorted(set(step_scores) - set(STEP_SCORES))
    if bad:
        raise InputError(f"unknown step score(s) {', '.join(bad)}; choose from {STEP_SCORES}")
    kind = _kind(model, logprobs_fn)
    batch = batch_size_hint(inputs) if batch_axis == 0 else _batch_on(inputs, batch_axis)
    prompt = gen.hf_prompt(inputs) if kind != "custom" else None
    if generate is not None:
        if targets is not None or prompt is None:
            raise InputError("generate=K needs an HF LM and no targets (it makes them)")
        targets, target_mask = gen.greedy(model, prompt, int(generate), kind == "seq2seq")
    if targets is None:
        raise InputError("give targets (B, K) ids of the continuation, or generate=K")
    steps = gen.check_steps(targets, target_mask, contrast, batch)
    config = getattr(model, "config", None)
    gen.check_vocab(steps, getattr(config, "vocab_size", None))
    explainer = cls(model, layer=layer, mode=mode, check=check)
    if kind == "decoder":
        assert prompt is not None
        gen.check_positions(prompt, steps, gen.position_limit(config), encoder=False)
        runner = _Runner(
            explainer, options, steps, return_grads, {"word": prompt.length + steps.shape[1]}
        )
        keep = "logits_to_keep" in _forward_params(model)
        n_real = int(prompt.mask.sum(axis=1).max())
        for k0, k1 in gen.plan(steps, lambda k: n_real + k - 1, tokens_per_pass):
            runner.run(gen.decoder_rows(prompt, steps, k0, k1, lookup="word", keep_one=keep))
    elif kind == "seq2seq":
        assert prompt is not None
        limit = gen.position_limit(config)
        gen.check_positions(prompt, steps, limit, encoder=True)
        if limit and int(prompt.mask.sum(axis=1).max()) > limit:
            raise InputError(
                f"a source has {int(prompt.mask.sum(axis=1).max())} tokens, beyond the model's "
                f"position limit of {limit}"
            )
        start = _decoder_start(config)
        widths = {"source": prompt.length, "target": steps.shape[1]}
        runner = _Runner(explainer, options, steps, return_grads, widths)
        n_real = int(prompt.mask.sum(axis=1).max())
        for k0, k1 in gen.plan(steps, lambda k: n_real + k, tokens_per_pass):
            runner.run(gen.seq2seq_rows(prompt, steps, start, k0, k1))
    else:
        assert logprobs_fn is not None
        runner = _Runner(explainer, options, steps, return_grads, {"word": None})

        def repeat(x: Any, idx: np.ndarray) -> Any:
            return repeat_samples(x, idx, batch, batch_axis)

        width = _width(inputs, batch_axis)
        for k0, k1 in gen.plan(steps, lambda k: width, tokens_per_pass):
            runner.run(gen.repeated_rows(inputs, repeat, logprobs_fn, steps, k0, k1, lookup="word"))
    return runner.result(cls.name, kind, step_scores, tokenizer, prompt)


def _kind(model: Any, logprobs_fn: Any) -> str:
    if logprobs_fn is not None:
        if not callable(logprobs_fn):
            raise InputError("logprobs_fn must be callable: outputs -> (N, K, V)")
        return "custom"
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
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        return set()


def _batch_on(inputs: Any, axis: int) -> int:
    first = inputs
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()))
    elif isinstance(inputs, tuple):
        first = inputs[0]
    shape = getattr(first, "shape", None)
    if not shape or len(shape) <= axis:
        raise InputError(f"could not tell the batch size of the inputs on axis {axis}")
    return int(shape[axis])


def _width(inputs: Any, axis: int) -> int:
    """Positions per row of the first input (for pass sizes): its size on the other axis."""
    first = inputs
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()))
    elif isinstance(inputs, tuple):
        first = inputs[0]
    shape = tuple(int(s) for s in getattr(first, "shape", ()))
    return shape[1 - axis] if len(shape) >= 2 and axis in (0, 1) else 1


def _n_rows(chunk: gen.Chunk) -> int:
    return int(chunk.rows.shape[0])


class _Runner:
    """Runs the method on each chunk of rows and scatters rows back to (B, K, columns)."""

    def __init__(
        self,
        method: Method,
        options: dict[str, Any],
        steps: gen.Steps,
        return_grads: bool,
        widths: Mapping[str, int | None],
    ) -> None:
        self.method, self.options, self.steps = method, options, steps
        self.return_grads, self.widths = return_grads, dict(widths)
        self.scores: dict[str, np.ndarray] = {}
        self.signed: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.quantity = np.full(steps.shape, np.nan)
        self.delta: np.ndarray | None = None
        self.seen: dict[str, np.ndarray] = {}
        self.info: dict[str, Any] = {"passes": []}

    def run(self, chunk: gen.Chunk) -> None:
        for key, cols in chunk.columns.items():
            width = None if cols is None else int(cols.shape[1])
            self.info["passes"].append((key, int(chunk.rows.shape[0]), width))
        if len(chunk.columns) == 1:
            ((key, cols),) = chunk.columns.items()
            sc = self.method.attribute(chunk.inputs, chunk.loss, **self._options(_n_rows(chunk)))
            self._scatter(key, chunk, cols, sc)
            return
        # an encoder–decoder: both word lookups from one plain pass, each explained on its own
        m = self.method
        bases = base_passes(
            m.model, chunk.inputs, chunk.loss, layer=m.layer, mode=m.mode, check=m.check
        )
        for key, cols in chunk.columns.items():
            found = [b for b in bases.values() if np.array_equal(b.ids, chunk.ids[key])]
            if len(found) != 1:
                raise NoLookupError(
                    f"found no single {m.layer!r} lookup reading the {key} ids among "
                    f"{', '.join(bases)}; pass layer= (a glob matching both word lookups)"
                )
            sc = m.from_base(found[0], chunk.inputs, chunk.loss, **self._options(_n_rows(chunk)))
            self._scatter(key, chunk, cols, sc)

    def _options(self, rows: int) -> dict[str, Any]:
        """The method's options, with its defaults for a batch of ``rows`` rows: passes of
        repeated rows (integrated gradients, SmoothGrad) hold ≤ TOKENS_PER_PASS rows × 64."""
        opts = dict(self.options)
        ctx = Context(tokens_per_pass=gen.TOKENS_PER_PASS, mask=np.ones((rows, 64), dtype=bool))
        for key, value in type(self.method).defaults(ctx).items():
            opts.setdefault(key, value)
        return opts

    def _scatter(self, key: str, chunk: gen.Chunk, cols: np.ndarray | None, sc: Scores) -> None:
        rows = chunk.rows
        n, width = sc.scores.shape
        if cols is None:  # the positions as the model saw them
            cols = np.broadcast_to(np.arange(width), (n, width))
        if sc.scores.shape != cols.shape:
            raise InputError(
                f"the lookup's output has shape {sc.scores.shape} (rows, positions), the rows "
                f"were built for {cols.shape}"
            )
        if key not in self.scores:
            self._allocate(key, self.widths.get(key) or width, sc)
        b, k = rows[:, 0], rows[:, 1]
        r, w = np.nonzero(cols >= 0)
        c = cols[r, w]
        self.scores[key][b[r], k[r], c] = sc.scores[r, w]
        signed = sc.signed if sc.signed is not None else sc.scores
        self.signed[key][b[r], k[r], c] = signed[r, w]
        if key in self.grads and sc.attributions is not None:
            self.grads[key][b[r], k[r], c] = sc.attributions[r, w]
        self.quantity[b, k] = sc.losses
        if sc.delta is not None:
            if self.delta is None:
                self.delta = np.full(self.steps.shape, np.nan)
            self.delta[b, k] = sc.delta
        for name, val in chunk.loss.seen.items():
            self.seen.setdefault(name, np.full(self.steps.shape, np.nan))[b, k] = val

    def _allocate(self, key: str, width: int, sc: Scores) -> None:
        bb, kk = self.steps.shape
        self.widths[key] = width
        self.scores[key] = np.zeros((bb, kk, width))
        self.signed[key] = np.zeros((bb, kk, width))
        if self.return_grads and sc.attributions is not None:
            d = int(sc.attributions.shape[-1])
            self.grads[key] = np.zeros((bb, kk, width, d), dtype=np.float32)

    def result(
        self,
        method: str,
        kind: str,
        step_scores: Sequence[str],
        tokenizer: Any,
        prompt: gen.Prompt | None,
    ) -> GenerationAttribution:
        names = _token_names(tokenizer)
        steps = self.steps
        target_tokens = None
        tokens = None
        if names is not None:
            target_tokens = [
                names(steps.targets[b][steps.active[b]]) for b in range(steps.shape[0])
            ]
            if prompt is not None and kind == "decoder":
                tokens = [
                    names(prompt.ids[b]) + names(steps.targets[b]) for b in range(steps.shape[0])
                ]
            elif prompt is not None:
                tokens = [names(prompt.ids[b]) for b in range(steps.shape[0])]
        main = "source" if kind == "seq2seq" else "word"
        return GenerationAttribution(
            method=method,
            kind=kind,
            scores=self.scores[main],
            signed=self.signed[main],
            target_scores=self.scores.get("target"),
            target_signed=self.signed.get("target"),
            target_grads=self.grads.get("target"),
            step_scores={s: self.seen[s] for s in step_scores if s in self.seen},
            quantity=self.quantity,
            targets=steps.targets,
            target_mask=steps.active,
            contrast=steps.contrast,
            prompt_length=prompt.length if prompt is not None and kind == "decoder" else 0,
            column_mask=_column_mask(kind, prompt, steps, self.scores[main].shape[2]),
            tokens=tokens,
            target_tokens=target_tokens,
            tokenizer=tokenizer,
            grads=self.grads.get(main),
            delta=self.delta,
            info=self.info,
        )


def _column_mask(kind: str, prompt: gen.Prompt | None, steps: gen.Steps, width: int) -> np.ndarray:
    """(B, L) bool: the columns that are real tokens (prompt padding excluded)."""
    b = steps.shape[0]
    if kind == "decoder" and prompt is not None:
        return np.concatenate([prompt.mask, steps.active], axis=1)
    if prompt is not None:
        return prompt.mask.copy()
    return np.ones((b, width), dtype=bool)


def _token_names(tokenizer: Any) -> Callable[[np.ndarray], list[str]] | None:
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return None
    return lambda ids: [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]
