"""Generation steps as explained outputs: for every (sample b, step k) one row whose quantity
is log p(y_k | x, y_<k) (minus log p(y'_k) with a contrast).

The engine's one backward needs every sample to own its rows of the lookup output, so each step
gets its own row: a causal model reads, for step k, only the prompt and y_<k. The row builders
(``outputs.rows.RowBuilder``), one per kind of LM:

* :class:`DecoderRows` (HF decoder-only): row (b, k) holds sample b's real prompt tokens and
  y_<k, right-aligned (left padding with the attention mask, position ids from the mask, as HF
  generation does), so the step's next-token logits are at the last position and the model
  projects onto the vocabulary there only (``logits_to_keep=1``).
* :class:`Seq2SeqRows` (HF encoder–decoder): the source as given and the decoder inputs
  (start, y_0 … y_{c−2}) of the chunk; row (b, k) picks its logits at decoder position k.
* :class:`CustomRows` (any other model): the user's teacher-forced inputs, repeated per step;
  ``logprobs_fn(outputs)`` (N, K, V) gives the log-probabilities and row (b, k) picks [k, y_k].

Everything here is framework-free (``ops_for``); ``rows.StepLoss`` is the loss_fn of the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..backends import backend_for, is_array, ops_for
from ..errors import InputError
from ..methods._arrays import repeat_samples
from ..tasks.base import TOKENIZER_LOCK
from .rows import Chunk, Outputs, RowBuilder, StepLoss, logits_of

#: the continuation explained: ``Outputs`` whose targets are token ids
Steps = Outputs


def to_np(x: Any) -> np.ndarray:
    return ops_for(x).to_numpy(x) if is_array(x) else np.asarray(x)


def integral(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` as int64 ids; float arrays (Gluon's convention for ids) must hold whole numbers."""
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise InputError(f"{what} must be integer token ids, got dtype {a.dtype}")


def check_steps(targets: Any, target_mask: Any, contrast: Any, batch: int) -> Steps:
    """:class:`Steps` from the caller's (B, K) ids; InputError naming what is wrong."""
    y = to_np(targets)
    if y.ndim == 1 and batch == 1:
        y = y[None]
    if y.ndim != 2 or y.shape[0] != batch or y.shape[1] < 1:
        raise InputError(
            f"targets has shape {tuple(y.shape)}; expected (B, K) = ({batch}, K ≥ 1) token ids, "
            "one row per prompt of inputs"
        )
    y = integral(y, "targets")
    active = np.ones(y.shape, dtype=bool)
    if target_mask is not None:
        m = to_np(target_mask)
        if m.shape != y.shape:
            raise InputError(f"target_mask has shape {m.shape}; expected targets' {y.shape}")
        active = m.astype(bool)
        if np.any(np.diff(active.astype(np.int8), axis=1) > 0):
            raise InputError(
                "target_mask must be 1 for each continuation's tokens, then 0 (trailing padding)"
            )
    c = None
    if contrast is not None:
        c = to_np(contrast)
        if c.shape == y.shape and np.issubdtype(c.dtype, np.floating):
            c = integral(c, "contrast")
        if c.shape != y.shape or not np.issubdtype(c.dtype, np.integer):
            raise InputError(
                f"contrast has shape {c.shape} ({c.dtype}); expected integer ids shaped like "
                f"targets {y.shape}"
            )
        c = c.astype(np.int64)
    return Steps(y.astype(np.int64), active, c)


def check_vocab(steps: Steps, vocab: int | None) -> None:
    if vocab is None:
        return
    for name, ids in (("targets", steps.targets), ("contrast", steps.contrast)):
        if ids is not None:
            bad = (ids[steps.active] < 0) | (ids[steps.active] >= vocab)
            if np.any(bad):
                raise InputError(f"{name} holds ids outside the vocabulary [0, {vocab})")


@dataclass
class Prompt:
    """The prompts of an HF model: ids and mask (B, P) numpy, and each sample's real tokens."""

    ids: np.ndarray
    mask: np.ndarray
    like: Any  # a native int array (device, type) to build new inputs from

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    def real(self, b: int) -> np.ndarray:
        """Positions (columns) of sample b's real tokens."""
        return np.flatnonzero(self.mask[b])


def hf_prompt(inputs: Any) -> Prompt:
    """The prompt of an HF LM call: ``input_ids`` and ``attention_mask`` (all ones if absent)."""
    if is_array(inputs):
        inputs = {"input_ids": inputs}
    if not isinstance(inputs, Mapping) or not is_array(inputs.get("input_ids")):
        raise InputError(
            "for a HuggingFace LM, inputs must be a dict with input_ids (B, P) and optionally "
            "attention_mask (a tokenizer's output), or the (B, P) ids"
        )
    extra = sorted(set(inputs) - {"input_ids", "attention_mask", "token_type_ids"})
    if extra:
        raise InputError(
            f"inputs has {', '.join(extra)}: give only input_ids and attention_mask; embgrad "
            "builds the teacher-forced inputs (and position ids) from the prompt and targets"
        )
    ids = to_np(inputs["input_ids"]).astype(np.int64)
    if ids.ndim != 2:
        raise InputError(f"input_ids has shape {ids.shape}; expected (B, P)")
    mask = inputs.get("attention_mask")
    m = np.ones(ids.shape, dtype=bool) if mask is None else to_np(mask).astype(bool)
    if m.shape != ids.shape:
        raise InputError(f"attention_mask has shape {m.shape}; expected input_ids' {ids.shape}")
    if not np.all(m.any(axis=1)):
        raise InputError("every prompt needs at least one real token (attention_mask all 0)")
    return Prompt(ids, m, inputs["input_ids"])


def check_positions(prompt: Prompt, steps: Steps, limit: int | None, encoder: bool) -> None:
    """InputError when a teacher-forced sequence exceeds the model's position limit."""
    if not limit:
        return
    k = steps.active.sum(axis=1)
    need = k if encoder else prompt.mask.sum(axis=1) + k - 1
    if int(need.max()) > limit:
        b = int(np.argmax(need))
        what = "targets" if encoder else "prompt plus targets"
        raise InputError(
            f"sample {b}: {what} need {int(need[b])} positions, beyond the model's position "
            f"limit of {limit} (max_position_embeddings); shorten the prompt or the continuation"
        )


class DecoderRows(RowBuilder):
    """Rows of an HF decoder-only LM (see the module docstring)."""

    kind: ClassVar[str] = "decoder"
    main = "word"

    def __init__(self, prompt: Prompt, steps: Steps, *, keep_one: bool) -> None:
        super().__init__(steps)
        self.prompt, self.keep_one = prompt, keep_one
        self.n_real = int(prompt.mask.sum(axis=1).max())

    @property
    def widths(self) -> dict[str, int | None]:
        return {"word": self.prompt.length + self.outputs.shape[1]}

    def width(self, k1: int) -> int:
        return self.n_real + k1 - 1

    def chunk(self, k0: int, k1: int) -> Chunk:
        prompt, steps = self.prompt, self.outputs
        rows = steps.rows(k0, k1)
        n_real = prompt.mask.sum(axis=1)
        width = int(n_real[rows[:, 0]].max() + rows[:, 1].max()) if rows.size else 1
        p_len = prompt.length
        ids = np.zeros((rows.shape[0], width), dtype=np.int64)
        mask = np.zeros(ids.shape, dtype=np.int64)
        cols = np.full(ids.shape, -1, dtype=np.int64)
        for r, (b, k) in enumerate(rows):
            real = prompt.real(b)
            seq = np.concatenate([prompt.ids[b, real], steps.targets[b, :k]])
            start = width - seq.shape[0]
            ids[r, start:] = seq
            mask[r, start:] = 1
            cols[r, start:] = np.concatenate([real, p_len + np.arange(k)])
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        ops = ops_for(prompt.like)
        inputs = {
            "input_ids": ops.from_numpy(ids, prompt.like),
            "attention_mask": ops.from_numpy(mask, prompt.like),
            "position_ids": ops.from_numpy(pos, prompt.like),
        }
        if self.keep_one:
            inputs["logits_to_keep"] = 1

        def pick(outputs: Any, _rows: np.ndarray) -> Any:
            logits = _logits(outputs)
            last = np.full(int(logits.shape[0]), int(logits.shape[1]) - 1)
            return ops_for(logits).pick_positions(logits, last)

        loss = StepLoss(pick, steps.targets[rows[:, 0], rows[:, 1]], steps.contrast_of(rows))
        return Chunk(inputs, loss, rows, {"word": cols})

    def tokens(self, names: Callable[[np.ndarray], list[str]]) -> list[list[str]]:
        t = self.outputs.targets
        return [names(self.prompt.ids[b]) + names(t[b]) for b in range(t.shape[0])]

    def column_mask(self, width: int) -> np.ndarray:
        return np.concatenate([self.prompt.mask, self.outputs.active], axis=1)

    @property
    def prompt_length(self) -> int:
        return self.prompt.length


class Seq2SeqRows(RowBuilder):
    """Rows of an HF encoder–decoder LM: each row's source is its sample's real tokens
    left-aligned (right padding, the attention mask), the decoder inputs (start, y_0 …
    y_{k1−2}); row (b, k) picks decoder position k. Columns: ``"source"`` as given,
    ``"target"`` the decoder inputs (step k reads 0 … k)."""

    kind: ClassVar[str] = "seq2seq"
    main = "source"
    prompt_length = 0

    def __init__(self, prompt: Prompt, steps: Steps, start_id: int) -> None:
        super().__init__(steps)
        self.prompt, self.start_id = prompt, start_id
        self.n_real = int(prompt.mask.sum(axis=1).max())

    @property
    def widths(self) -> dict[str, int | None]:
        return {"source": self.prompt.length, "target": self.outputs.shape[1]}

    def width(self, k1: int) -> int:
        return self.n_real + k1

    def chunk(self, k0: int, k1: int) -> Chunk:
        prompt, steps = self.prompt, self.outputs
        rows = steps.rows(k0, k1)
        b_idx = rows[:, 0]
        n_real = prompt.mask.sum(axis=1)
        s_width = int(n_real[b_idx].max())
        src = np.zeros((rows.shape[0], s_width), dtype=np.int64)
        s_mask = np.zeros(src.shape, dtype=np.int64)
        s_cols = np.full(src.shape, -1, dtype=np.int64)
        for r, b in enumerate(b_idx):
            real = prompt.real(b)
            src[r, : real.shape[0]] = prompt.ids[b, real]
            s_mask[r, : real.shape[0]] = 1
            s_cols[r, : real.shape[0]] = real
        width = k1
        start = np.full((steps.shape[0], 1), self.start_id, dtype=np.int64)
        dec = np.concatenate([start, steps.targets[:, : width - 1]], axis=1)[b_idx]
        d_cols = np.where(np.arange(width)[None] <= rows[:, 1:2], np.arange(width)[None], -1)
        ops = ops_for(prompt.like)
        inputs = {
            "input_ids": ops.from_numpy(src, prompt.like),
            "attention_mask": ops.from_numpy(s_mask, prompt.like),
            "decoder_input_ids": ops.from_numpy(dec, prompt.like),
        }

        def pick(outputs: Any, index: np.ndarray) -> Any:
            logits = _logits(outputs)
            return ops_for(logits).pick_positions(logits, rows[index, 1])

        loss = StepLoss(pick, steps.targets[b_idx, rows[:, 1]], steps.contrast_of(rows))
        return Chunk(
            inputs, loss, rows, {"source": s_cols, "target": d_cols}, {"source": src, "target": dec}
        )

    def tokens(self, names: Callable[[np.ndarray], list[str]]) -> list[list[str]]:
        return [names(self.prompt.ids[b]) for b in range(self.outputs.shape[0])]

    def column_mask(self, width: int) -> np.ndarray:
        return self.prompt.mask.copy()


class CustomRows(RowBuilder):
    """Rows of any model: its own inputs repeated per step, ``logprobs_fn`` (N, K, V) picked
    at [k, y_k]; every lookup position keeps its column (``columns`` None)."""

    kind: ClassVar[str] = "custom"
    main = "word"
    prompt_length = 0

    def __init__(
        self, inputs: Any, logprobs_fn: Callable[[Any], Any], steps: Steps, batch_axis: int
    ) -> None:
        super().__init__(steps)
        self.inputs, self.logprobs_fn, self.axis = inputs, logprobs_fn, batch_axis
        self._width = row_width(inputs, batch_axis)

    @property
    def widths(self) -> dict[str, int | None]:
        return {"word": None}

    def width(self, k1: int) -> int:
        return self._width

    def chunk(self, k0: int, k1: int) -> Chunk:
        steps = self.outputs
        rows = steps.rows(k0, k1)
        kk = steps.shape[1]
        sub = repeat_samples(self.inputs, rows[:, 0], steps.shape[0], self.axis)
        logprobs_fn = self.logprobs_fn

        def pick(outputs: Any, index: np.ndarray) -> Any:
            lp = logprobs_fn(outputs)
            shape = tuple(int(s) for s in getattr(lp, "shape", ()))
            if len(shape) != 3 or shape[:2] != (index.shape[0], kk):
                raise InputError(
                    f"logprobs_fn returned shape {shape}; expected (N, K, V) = ({index.shape[0]}, "
                    f"{kk}, V): per row of the batch, log-probabilities aligned with targets"
                )
            return ops_for(lp).pick_positions(lp, rows[index, 1])

        loss = StepLoss(
            pick, steps.targets[rows[:, 0], rows[:, 1]], steps.contrast_of(rows), normalized=True
        )
        return Chunk(sub, loss, rows, {"word": None})

    def tokens(self, names: Callable[[np.ndarray], list[str]]) -> None:
        return None

    def column_mask(self, width: int) -> np.ndarray:
        return np.ones((self.outputs.shape[0], width), dtype=bool)


def first_input(inputs: Any) -> Any:
    """The first array of the inputs (one array, a tuple's first, a dict's first value)."""
    if isinstance(inputs, Mapping):
        return next(iter(inputs.values()), None)
    if isinstance(inputs, (tuple, list)):
        return inputs[0] if inputs else None
    return inputs


def row_width(inputs: Any, axis: int) -> int:
    """Positions per row of the first input (for pass sizes): its size on the other axis."""
    shape = tuple(int(s) for s in getattr(first_input(inputs), "shape", ()))
    return shape[1 - axis] if len(shape) >= 2 and axis in (0, 1) else 1


def _logits(outputs: Any) -> Any:
    return logits_of(outputs, hint="pass logprobs_fn(outputs) -> (B, K, V)")


def position_limit(config: Any) -> int | None:
    """The model's position limit from its HF config (None when it states none)."""
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def greedy(model: Any, prompt: Prompt, k: int, encoder: bool) -> tuple[np.ndarray, np.ndarray]:
    """(targets, target_mask) (B, K): K greedy tokens per prompt from the HF model's
    ``generate`` (deterministic: ``do_sample=False``); after an end-of-sequence token the mask
    is 0. Decoder-only prompts are given to ``generate`` left-padded, as it requires."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"generate must be a positive integer (tokens to generate), got {k!r}")
    config = model.config
    pad = getattr(config, "pad_token_id", None)
    eos = getattr(config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    vocab = getattr(config, "vocab_size", None) or 0
    eos_ids = {e for e in eos_ids if not vocab or 0 <= e < vocab}
    if pad is None or (vocab and not 0 <= pad < vocab):
        pad = min(eos_ids) if eos_ids else 0  # masked out: any id in the vocabulary does
    n_real = prompt.mask.sum(axis=1)
    width = int(n_real.max()) if not encoder else prompt.length
    ids = np.full((prompt.ids.shape[0], width), pad, dtype=np.int64)
    mask = np.zeros(ids.shape, dtype=np.int64)
    for b in range(ids.shape[0]):
        if encoder:
            ids[b], mask[b] = prompt.ids[b], prompt.mask[b]
        else:
            real = prompt.real(b)
            ids[b, width - real.shape[0] :] = prompt.ids[b, real]
            mask[b, width - real.shape[0] :] = 1
    ops = ops_for(prompt.like)
    with backend_for(model).open(model, mode="eval"):  # no dropout; the model's flags restored
        out = model.generate(
            input_ids=ops.from_numpy(ids, prompt.like),
            attention_mask=ops.from_numpy(mask, prompt.like),
            max_new_tokens=k,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
        )
    got = to_np(out).astype(np.int64)[:, 1 if encoder else width :]
    targets = np.full((ids.shape[0], k), pad, dtype=np.int64)
    targets[:, : got.shape[1]] = got[:, :k]
    active = np.zeros(targets.shape, dtype=bool)
    active[:, : got.shape[1]] = True
    for b in range(targets.shape[0]):
        hit = np.flatnonzero(np.isin(targets[b], list(eos_ids)))
        if hit.size:
            active[b, hit[0] + 1 :] = False
    return targets, active


def encode_texts(
    model: Any, tokenizer: Any, texts: list[str], continuations: list[str] | None
) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """An HF LM's prompts (right-padded ids and mask, native) and, given continuations, their
    ids (B, K) and target mask, tokenized without special tokens (the continuation follows the
    prompt as the model would generate it)."""
    if continuations is not None and len(continuations) != len(texts):
        raise InputError(
            f"{len(continuations)} continuation(s) for {len(texts)} text(s): give one "
            "--continuation per --text (or one for all)"
        )
    with TOKENIZER_LOCK:  # padded by hand: the user's tokenizer is left as it is
        rows = tokenizer(list(texts))["input_ids"]
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:  # GPT-2-style tokenizers have none; the mask leaves these positions out
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), int(pad), dtype=np.int64)
    att = np.zeros((len(rows), width), dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
        att[b, : len(row)] = 1
    backend = backend_for(model)
    inputs = {"input_ids": backend.array(model, ids), "attention_mask": backend.array(model, att)}
    if continuations is None:
        return inputs, None, None
    with TOKENIZER_LOCK:
        ids = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    if any(len(i) == 0 for i in ids):
        raise InputError("a continuation is empty (no tokens): give the text to explain")
    k = max(len(i) for i in ids)
    targets = np.zeros((len(ids), k), dtype=np.int64)
    mask = np.zeros(targets.shape, dtype=bool)
    for b, row in enumerate(ids):
        targets[b, : len(row)] = row
        mask[b, : len(row)] = True
    return inputs, targets, mask
