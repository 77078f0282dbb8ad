"""The explained quantities: a class's log-probability, or a pair's cosine similarity.

Both are per-sample quantities f_i (B,) built from a model's outputs with the native array
operations of ``ops_for`` (one implementation per framework, in ``embgrad.backends``).
``loss_fn(outputs, rows)`` follows the contract of ``embgrad.methods`` (``rows``: each output
row's sample in the caller's batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backends import is_array, ops_for
from ..errors import InputError


def first_array(outputs: Any, attr: str) -> Any:
    """``outputs.<attr>`` (HF ModelOutput), the array itself, or the first element of a tuple."""
    if hasattr(outputs, attr):
        return getattr(outputs, attr)
    if is_array(outputs):
        return outputs
    if isinstance(outputs, (tuple, list)) and outputs and is_array(outputs[0]):
        return outputs[0]
    raise InputError(
        f"cannot find {attr} in the model's outputs of type {type(outputs).__name__}: expected "
        f"an array, a tuple whose first element is one, or an object with .{attr}"
    )


def mean_pool_normalized(hidden: Any, mask: Any) -> Any:
    """Mean of ``hidden`` (B, T, D) over the positions where ``mask`` (B, T) is 1, L2-normalised."""
    return ops_for(hidden).mean_pool_normalized(hidden, mask)


def pass_mask(hidden: Any, mask: Any, what: str) -> Any:
    """The attention mask (B, T') of a pass cut to the hidden state's T positions (a pass run
    only to its samples' last real token cuts nothing but padding)."""
    n = int(hidden.shape[1])
    if mask.shape[1] > n:
        if ops_for(mask).to_numpy(mask[:, n:]).any():
            raise InputError(
                f"the model's last hidden state has {n} positions but the attention mask "
                f"{int(mask.shape[1])}: {what} similarity needs one hidden state per token"
            )
        mask = mask[:, :n]
    return mask


class ClassLogProb:
    """f_i = log p(target_i | x_i) from (B, classes) logits; one target per caller sample.

    With ``targets=None`` the first call (rows = the caller's batch) explains each sample's
    predicted class (the argmax) and keeps it in ``targets`` for later calls.
    """

    def __init__(self, targets: Sequence[int] | np.ndarray | None) -> None:
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)

    def __call__(self, outputs: Any, rows: np.ndarray) -> Any:
        logits = first_array(outputs, "logits")
        if logits.ndim != 2:
            raise InputError(
                "a target needs (B, classes) logits from the model; got outputs of shape "
                f"{tuple(logits.shape)} (for an encoder, explain a pair's similarity instead)"
            )
        n_cls = int(logits.shape[-1])
        if self.targets is None:
            self.targets = ops_for(logits).to_numpy(logits).argmax(-1).astype(np.int64)
        if self.targets.size and (self.targets.min() < 0 or self.targets.max() >= n_cls):
            raise InputError(
                f"target index out of range: the model has {n_cls} classes, got "
                f"{sorted(set(self.targets.tolist()))}"
            )
        return ops_for(logits).log_softmax_pick(logits, self.targets[rows])


class PairSimilarity:
    """f_j = cos(e_j, stopgrad(e_partner(j))), e = mean-pooled, L2-normalised last hidden state.

    The first call (rows = the caller's batch, which holds both sentences of every pair) takes
    the partner's embedding from the same batch, detached; it keeps all embeddings (numpy) so
    later calls on repeated samples (integrated gradients, SmoothGrad) use those constants. The
    gradient w.r.t. sentence j's tokens is exactly that of cos(e_j, e_partner) since e_partner
    does not depend on them; samples stay independent, so one backward is exact.

    Args:
        partner: (B,) int, the batch index of each sentence's partner.
        mask: callable rows → the attention mask (B', T) of those rows, native; cut to the
            outputs' length when a pass ran only up to its samples' last real token.
    """

    def __init__(self, partner: np.ndarray, mask: Callable[[np.ndarray], Any]) -> None:
        self.partner = np.asarray(partner, dtype=np.int64)
        self.mask = mask
        self.embeddings: np.ndarray | None = None

    def __call__(self, outputs: Any, rows: np.ndarray) -> Any:
        hidden = first_array(outputs, "last_hidden_state")
        ops = ops_for(hidden)
        emb = ops.mean_pool_normalized(hidden, pass_mask(hidden, self.mask(rows), "a pair"))
        if self.embeddings is None:
            if not np.array_equal(rows, np.arange(self.partner.shape[0])):
                raise InputError("the first pass of a pair similarity must hold every sentence")
            other = ops.take_rows(ops.detach(emb), self.partner, 0)
            self.embeddings = ops.to_numpy(emb).astype(np.float64)
        else:
            other = ops.from_numpy(self.embeddings[self.partner[rows]], emb)
        return ops.row_dot(emb, other)


class LabelSimilarity:
    """f_i = log softmax_k(cos(e_i, l_k) / temperature)[target_i]: zero-shot classification
    of a text by the similarity of its embedding e_i (mean-pooled, L2-normalised last hidden
    state, as :class:`PairSimilarity`) to the label descriptions' embeddings l_k (constants).

    With ``targets=None`` the first call (rows = the caller's batch) explains each text's
    predicted label (the most similar) and keeps it in ``targets`` for later calls.

    Args:
        label_embeddings: (K, D) float, L2-normalised embeddings of the label descriptions.
        targets: (B,) int label indices, or None (predicted).
        mask: callable rows → the attention mask (B', T) of those rows, native.
        temperature: the softmax temperature over cosine similarities.
    """

    def __init__(
        self,
        label_embeddings: np.ndarray,
        targets: np.ndarray | None,
        mask: Callable[[np.ndarray], Any],
        temperature: float,
    ) -> None:
        self.label_embeddings = np.asarray(label_embeddings, dtype=np.float64)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.mask, self.temperature = mask, float(temperature)

    def logits(self, outputs: Any, rows: np.ndarray) -> Any:
        """(B', K) cos(e_i, l_k) / temperature, native."""
        hidden = first_array(outputs, "last_hidden_state")
        ops = ops_for(hidden)
        emb = ops.mean_pool_normalized(hidden, pass_mask(hidden, self.mask(rows), "a label"))
        sims = ops.row_dots(emb, ops.from_numpy(self.label_embeddings, emb))
        return sims * (1.0 / self.temperature)

    def __call__(self, outputs: Any, rows: np.ndarray) -> Any:
        logits = self.logits(outputs, rows)
        ops = ops_for(logits)
        if self.targets is None:
            if not np.array_equal(rows, np.arange(rows.shape[0])) or rows.shape[0] == 0:
                raise InputError("the first pass of a zero-shot label must hold every text")
            self.targets = ops.to_numpy(logits).argmax(-1).astype(np.int64)
        return ops.log_softmax_pick(logits, self.targets[rows])


def id2label(model: Any) -> dict[int, str]:
    """The model config's class ids → label names (empty when it has none)."""
    config = getattr(model, "config", None)
    mapping = getattr(config, "id2label", None) or {}
    return {int(k): str(v) for k, v in mapping.items()}


def target_items(targets: Any, n: int) -> list[Any]:
    """Targets as a list of n items: one for every text (a scalar, a one-item list, a 0-d
    array) or one per text (a list, tuple or torch / MXNet / numpy array)."""
    if is_array(targets):  # a torch / MXNet / numpy array of indices, 0-d included
        targets = ops_for(targets).to_numpy(targets)
    if isinstance(targets, np.ndarray):
        targets = targets.reshape(-1).tolist()
    items = list(targets) if isinstance(targets, (list, tuple)) else [targets]
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise InputError(f"got {len(items)} targets for {n} texts; give one, or one per text")
    return items


def resolve_targets(target: Any, batch: int, labels: dict[str, int] | None) -> np.ndarray:
    """Target(s) → (B,) class indices: an int, a label name, or one of those per sample."""
    out = []
    for t in target_items(target, batch):
        if (isinstance(t, (int, np.integer)) and not isinstance(t, bool)) or (
            isinstance(t, str) and t.lstrip("-").isdigit()
        ):
            out.append(int(t))
        elif isinstance(t, str) and labels and t in labels:
            out.append(int(labels[t]))
        else:
            known = ", ".join(sorted(labels)) if labels else "none (use class indices)"
            raise InputError(f"unknown target {t!r}; the model's labels are: {known}")
    return np.asarray(out, dtype=np.int64)
