"""Generation steps as samples: for every (sample b, step k) one row whose quantity is
log p(y_k | x, y_<k) (minus log p(y'_k) with a contrast).

The engine's one backward needs every sample to own its rows of the lookup output, so each step
gets its own row: a causal model reads, for step k, only the prompt and y_<k. Rows are built in
chunks of consecutive steps (bounded memory for long continuations):

* HF decoder-only (:func:`decoder_rows`): row (b, k) holds sample b's real prompt tokens and
  y_<k, right-aligned (left padding with the attention mask, position ids from the mask, as HF
  generation does), so the step's next-token logits are at the last position and the model
  projects onto the vocabulary there only (``logits_to_keep=1``).
* HF encoder–decoder (:func:`seq2seq_rows`): the source as given and the decoder inputs
  (start, y_0 … y_{c−2}) of the chunk; row (b, k) picks its logits at decoder position k.
* any other model (:func:`repeated_rows`): the user's teacher-forced inputs, repeated per step;
  ``logprobs_fn(outputs)`` (N, K, V) gives the log-probabilities and row (b, k) picks [k, y_k].

Everything here is framework-free (``ops_for``); :class:`StepLoss` is the loss_fn of the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import backend_for, is_array, ops_for
from ..errors import InputError
from .base import TOKENIZER_LOCK

#: rows × positions of one chunk of steps, unless the caller says otherwise
TOKENS_PER_PASS = 4096


def to_np(x: Any) -> np.ndarray:
    return ops_for(x).to_numpy(x) if is_array(x) else np.asarray(x)


@dataclass
class Steps:
    """The continuation to explain: targets, their mask and the optional contrast, numpy (B, K).

    ``active`` (B, K) bool: steps with a real target (trailing padding excluded)."""

    targets: np.ndarray
    active: np.ndarray
    contrast: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.targets.shape[0]), int(self.targets.shape[1])


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
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"targets must be integer token ids, got dtype {y.dtype}")
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


@dataclass
class Chunk:
    """One pass of rows: ``inputs`` (native, N rows), their ``loss`` and where rows go.

    ``rows`` (N, 2): (b, k) per row. ``columns[key]`` (N, W_key) int: for each position of
    the row in that lookup's output, the result column it belongs to, −1 for none (None: the
    positions as the model saw them, each its own column). With two
    lookups (``"source"``, ``"target"``), ``ids[key]`` (N, W_key) tells them apart."""

    inputs: Any
    loss: StepLoss
    rows: np.ndarray
    columns: dict[str, np.ndarray | None]
    ids: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class StepLoss:
    """The rows' quantity from the model's outputs: log p(y) (− log p(y')) at each row's step.

    ``pick(outputs, rows) -> (N', V)`` native log-probabilities or logits of the rows' steps
    (``normalized``: they are log-probabilities, checked to sum to 1). The first call (the
    forward at the inputs) keeps the step scores ``probability`` and ``entropy`` (N,)."""

    pick: Callable[[Any, np.ndarray], Any]
    targets: np.ndarray
    contrast: np.ndarray | None
    normalized: bool = False
    seen: dict[str, np.ndarray] = field(default_factory=dict)

    def __call__(self, outputs: Any, rows: np.ndarray | None = None) -> Any:
        """(N',) quantities; ``rows`` (N',): the chunk row of each row of the outputs (repeated
        rows of integrated gradients / SmoothGrad), all rows in order when None."""
        n = self.targets.shape[0]
        index = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        scores = self.pick(outputs, index)
        ops = ops_for(scores)
        if not self.seen and np.array_equal(index, np.arange(n)):
            self._keep(ops.to_numpy(ops.detach(scores)).astype(np.float64))
        q = ops.log_softmax_pick(scores, self.targets[index])
        if self.contrast is not None:
            q = q - ops.log_softmax_pick(scores, self.contrast[index])
        return q

    def _keep(self, s: np.ndarray) -> None:
        n = self.targets.shape[0]
        if s.shape[0] != n or s.ndim != 2:
            raise InputError(f"the step log-probabilities have shape {s.shape}; expected ({n}, V)")
        top = s.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
        if self.normalized and not np.all(np.abs(lse) < 1e-3):
            raise InputError(
                "logprobs_fn must return log-probabilities: its rows sum to "
                f"{float(np.exp(lse).min()):.4g}…{float(np.exp(lse).max()):.4g} in probability, "
                "not 1 (apply log_softmax over the vocabulary)"
            )
        lp = s - lse[:, None]
        p = np.exp(lp)
        self.seen["probability"] = p[np.arange(n), self.targets]
        self.seen["entropy"] = -(p * lp).sum(axis=1)
        if self.contrast is not None:
            self.seen["contrast_probability"] = p[np.arange(n), self.contrast]


def _rows(steps: Steps, k0: int, k1: int) -> np.ndarray:
    b, k = np.nonzero(steps.active[:, k0:k1])
    order = np.lexsort((b, k))  # step-major: rows of one step together
    return np.stack([b[order], k[order] + k0], axis=1).astype(np.int64)


#: a chunk of steps is closed early once it holds this many tokens ...
MIN_PASS_TOKENS = 1024
#: ... and taking the next step would make more than this fraction of it padding
MAX_PAD_FRACTION = 0.125


def plan(
    steps: Steps, width: Callable[[int], int], tokens_per_pass: int | None
) -> list[tuple[int, int]]:
    """Consecutive step ranges [k0, k1) whose rows × width(k1) stay under ``tokens_per_pass``.

    ``width(k1)`` is the row width of a chunk ending before step k1 (its longest row); a chunk
    also closes once it holds :data:`MIN_PASS_TOKENS` tokens if the next step would make more
    than :data:`MAX_PAD_FRACTION` of it padding (rows of early steps padded to the last's)."""
    budget = TOKENS_PER_PASS if tokens_per_pass is None else int(tokens_per_pass)
    if budget < 1:
        raise InputError(f"tokens_per_pass must be a positive integer, got {tokens_per_pass!r}")
    per_step = steps.active.sum(axis=0)
    out, k0, kk = [], 0, steps.shape[1]
    while k0 < kk:
        k1 = k0 + 1
        while k1 < kk:
            rows = per_step[k0 : k1 + 1].sum()
            tokens = rows * width(k1 + 1)
            if tokens > budget:
                break
            held = per_step[k0:k1].sum() * width(k1)
            needed = sum(int(per_step[k]) * width(k + 1) for k in range(k0, k1 + 1))
            if held >= MIN_PASS_TOKENS and 1 - needed / max(tokens, 1) > MAX_PAD_FRACTION:
                break
            k1 += 1
        if per_step[k0:k1].sum():
            out.append((k0, k1))
        k0 = k1
    return out


def decoder_rows(
    prompt: Prompt, steps: Steps, k0: int, k1: int, *, lookup: str, keep_one: bool
) -> Chunk:
    """Rows of steps [k0, k1) of an HF decoder-only LM (see the module docstring)."""
    rows = _rows(steps, k0, k1)
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
    if keep_one:
        inputs["logits_to_keep"] = 1

    def pick(outputs: Any, _rows: np.ndarray) -> Any:
        logits = _logits(outputs)
        last = np.full(int(logits.shape[0]), int(logits.shape[1]) - 1)
        return ops_for(logits).pick_positions(logits, last)

    loss = StepLoss(pick, steps.targets[rows[:, 0], rows[:, 1]], _contrast(steps, rows))
    return Chunk(inputs, loss, rows, {lookup: cols})


def seq2seq_rows(prompt: Prompt, steps: Steps, start_id: int, k0: int, k1: int) -> Chunk:
    """Rows of steps [k0, k1) of an HF encoder–decoder LM: each row's source is its sample's
    real tokens left-aligned (right padding, the attention mask), the decoder inputs (start,
    y_0 … y_{k1−2}); row (b, k) picks decoder position k. Columns: ``"source"`` as given,
    ``"target"`` the decoder inputs (step k reads 0 … k)."""
    rows = _rows(steps, k0, k1)
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
    start = np.full((steps.shape[0], 1), start_id, dtype=np.int64)
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

    loss = StepLoss(pick, steps.targets[b_idx, rows[:, 1]], _contrast(steps, rows))
    return Chunk(
        inputs, loss, rows, {"source": s_cols, "target": d_cols}, {"source": src, "target": dec}
    )


def repeated_rows(
    inputs: Any,
    repeat: Callable[[Any, np.ndarray], Any],
    logprobs_fn: Callable[[Any], Any],
    steps: Steps,
    k0: int,
    k1: int,
    *,
    lookup: str,
) -> Chunk:
    """Rows of steps [k0, k1) of any model: its own inputs repeated per step, ``logprobs_fn``
    (N, K, V) picked at [k, y_k]; every lookup position keeps its column (``columns`` None)."""
    rows = _rows(steps, k0, k1)
    kk = steps.shape[1]
    sub = repeat(inputs, rows[:, 0])

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
        pick, steps.targets[rows[:, 0], rows[:, 1]], _contrast(steps, rows), normalized=True
    )
    return Chunk(sub, loss, rows, {lookup: None})


def _contrast(steps: Steps, rows: np.ndarray) -> np.ndarray | None:
    return None if steps.contrast is None else steps.contrast[rows[:, 0], rows[:, 1]]


def _logits(outputs: Any) -> Any:
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if logits is None:
        raise InputError(
            "the model's outputs have no logits; pass logprobs_fn(outputs) -> (B, K, V)"
        )
    return logits


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
