"""``hotflip_search``: the shortest sequence of verified token flips that changes f by ``goal``.

A beam search over flips (Ebrahimi et al. 2018's beam over HotFlip steps), every step verified:

1. For each text of the beam (at first, the input itself) one gradient pass gives the
   first-order estimate of every single flip (:meth:`HotFlip._top`, ``k`` per position, at
   positions not yet flipped); the ``verify`` best of each text, spread over positions, are run
   through the model (``hotflip.verify_flips``): f(x') − f(x) measured.
2. A flipped text whose measured change reaches ``goal`` in ``direction`` ends the search for
   its sample: it is the shortest found (fewest flips), the best such one at that length.
3. Otherwise the ``beam`` best flipped texts by measured change (distinct texts) go on to the
   next step, up to ``budget`` flips.

All samples of the batch and all texts of a beam step share one gradient pass and batched
forwards (``verify_rows`` rows each). With ``beam``, ``k`` and ``verify`` at least the number of
candidates, the search is exhaustive (breadth first): the tests compare it with brute force.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import InputError
from ._arrays import repeat_samples, to_numpy
from ._passes import Base, LossFn, base_pass, takes_rows
from .base import Context, Method, Scores, choice, register
from .hotflip import (
    _TRAIN_VERIFY,
    HotFlip,
    Replacements,
    _replace_ids,
    check_counts,
    check_goal,
    rank_value,
    word_ids_input,
)

Direction = Literal["increase", "decrease"]
#: the least value of each count option
_LOWS = {"budget": 1, "beam": 1, "k": 1, "verify": 1, "verify_rows": 1, "max_bytes": 1}


@register
class HotFlipSearch(Method):
    """Beam search over verified flips for the fewest that change f by ``goal``.

    Options:
        goal: the change of f to reach, > 0: f(x') − f(x) ≥ goal (``direction="increase"``)
            or ≤ −goal (``"decrease"``, the default: an adversarial edit of a similarity or a
            class log-probability).
        budget: at most this many flips per text (default 3).
        beam: flipped texts kept per step (default 4).
        k: candidates per position by first-order estimate (default 3).
        verify: candidates per text of the beam run through the model per step (default 8).
        exclude_ids, mask: as for ``hotflip`` (ids never proposed nor flipped; positions that
            may be flipped).
        verify_rows: rows per forward (memory bound); max_bytes: as for ``hotflip``.

    ``hotflip[b]`` is the sequence found (or, if none reached the goal, the best at ``budget``
    flips), one dict per step in order: ``{"position", "token_id", "replacement_id",
    "estimate" (the step's first-order estimate), "verified" (f after this step − f(x),
    measured), "step"}``; ``scores`` (B, T) is each flipped position's measured step change;
    ``info["reached"]`` says per sample whether the goal was reached.
    """

    name = "hotflip_search"
    attributes_outputs = False
    summary = "HotFlip beam search: fewest verified flips changing f by the goal"
    option_help: ClassVar[dict[str, str]] = {
        "goal": "change of f to reach (> 0, in the direction)",
        "direction": "'decrease' (default) or 'increase' f",
        "budget": "most flips per text",
        "beam": "flipped texts kept per step",
        "k": "candidates per position by first-order estimate",
        "verify": "candidates per text run through the model per step",
        "exclude_ids": "token ids never proposed nor flipped (special tokens)",
        "mask": "(B, T) bool positions that may be flipped",
        "verify_rows": "rows per verification forward (memory bound)",
        "max_bytes": "memory bound of one block of the score matrix",
        "replacements": "'words' (a word by a word, a ##piece by a piece) or 'pieces' (any token)",
    }
    array_options: ClassVar[tuple[str, ...]] = ("mask", "exclude_ids", "continues")

    @classmethod
    def defaults(cls, ctx: Context) -> dict[str, Any]:
        """As for ``hotflip`` (special tokens and padding never flipped), but its own direction."""
        out = HotFlip.defaults(ctx)
        out.pop("direction", None)
        out.pop("verify", None)  # its own budget of measured candidates per step
        return out

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        """As every method's, plus ``goal`` (finite, > 0) and the counts' ranges, so a bad one
        is refused before the gradient pass."""
        super().validate(options)
        if "goal" in options:
            check_goal(options["goal"])
        check_counts(options, _LOWS)
        return options

    def _attribute(
        self,
        base: Base,
        inputs: Any,
        loss_fn: LossFn,
        *,
        goal: float = 0.1,
        direction: Direction = "decrease",
        budget: int = 3,
        beam: int = 4,
        k: int = 3,
        verify: int = 8,
        exclude_ids: Sequence[int] | None = None,
        mask: Any = None,
        verify_rows: int = 64,
        max_bytes: int = 256 * 2**20,
        replacements: Replacements = "words",
        continues: Any = None,
    ) -> Scores:
        choice("direction", direction, ("increase", "decrease"))
        check_goal(goal)
        check_counts(
            {"budget": budget, "beam": beam, "k": k, "verify": verify,
             "verify_rows": verify_rows, "max_bytes": max_bytes},
            _LOWS,
        )  # fmt: skip
        if self.mode == "train":
            raise InputError(_TRAIN_VERIFY)
        if mask is not None:
            mask = to_numpy(mask).astype(bool)
            if mask.shape != tuple(base.ids.shape):
                raise InputError(f"mask has shape {mask.shape}, expected (B, T) {base.ids.shape}")
        flip = HotFlip(self.model, layer=self.layer, mode=self.mode, check=self.check)
        opts = {"k": k, "direction": direction, "exclude_ids": exclude_ids, "mask": mask,
                "max_bytes": max_bytes, "verify": verify, "verify_rows": verify_rows,
                "replacements": replacements, "continues": continues}  # fmt: skip
        ids_in = word_ids_input(inputs, base)  # fails early if flips cannot be made
        f0 = base.losses
        # a state: (sample, flipped ids (T,), steps so far); the first beam holds the inputs
        states: list[tuple[int, np.ndarray, list[dict[str, Any]]]] = [
            (b, base.ids[b].copy(), []) for b in range(base.batch)
        ]
        found: dict[int, list[dict[str, Any]]] = {}
        best: dict[int, list[dict[str, Any]]] = {}
        for step in range(budget):
            if not states:
                break
            rows = np.asarray([s for s, _, _ in states], dtype=np.int64)
            sub, sub_loss = self._flipped(inputs, base, ids_in, loss_fn, rows, states)
            sbase = base_pass(self.model, sub, sub_loss, layer=base.name, mode=self.mode,
                              check=self.expanded_check, batch_axis=base.batch_axis)  # fmt: skip
            taken = np.zeros(sbase.ids.shape, dtype=bool)
            for i, (_, _, steps) in enumerate(states):
                taken[i, [c["position"] for c in steps]] = True
            m = ~taken if mask is None else (~taken & mask[rows])
            cands = flip.from_base(sbase, sub, sub_loss, **{**opts, "mask": m}).hotflip or []
            grown: dict[int, list[tuple[float, tuple[int, ...], np.ndarray, list[Any]]]] = {}
            for i, (sample, ids, steps) in enumerate(states):
                for c in cands[i]:
                    if c["verified"] is None:
                        continue
                    total = float(sbase.losses[i] + c["verified"] - f0[sample])
                    new = ids.copy()
                    new[c["position"]] = c["replacement_id"]
                    rec = {"position": c["position"], "token_id": c["token_id"],
                           "replacement_id": c["replacement_id"], "estimate": c["estimate"],
                           "verified": total, "step": step + 1}  # fmt: skip
                    grown.setdefault(sample, []).append(
                        (rank_value(total, direction), tuple(new.tolist()), new, [*steps, rec])
                    )
            states = []
            for sample, options in grown.items():
                options.sort(key=lambda o: o[0], reverse=True)
                top = options[0]
                if top[0] >= goal:
                    found[sample] = top[3]
                    continue
                if sample not in best or top[0] > rank_value(best[sample][-1]["verified"],
                                                             direction):  # fmt: skip
                    best[sample] = top[3]
                seen: set[tuple[int, ...]] = set()
                for _, key, new, steps in options:
                    if key not in seen and len(seen) < beam:
                        seen.add(key)
                        states.append((sample, new, steps))
        scores = np.zeros(base.ids.shape)
        lists: list[list[dict[str, Any]]] = []
        for b in range(base.batch):
            seq = found.get(b, best.get(b, []))
            prev = 0.0
            for c in seq:
                scores[b, c["position"]] = c["verified"] - prev
                prev = c["verified"]
            lists.append(seq)
        return Scores(
            method=self.name,
            scores=scores,
            losses=base.losses,
            ids=base.ids,
            hotflip=lists,
            info={
                "goal": float(goal),
                "direction": direction,
                "budget": int(budget),
                "reached": [b in found for b in range(base.batch)],
            },
        )

    @staticmethod
    def _flipped(
        inputs: Any,
        base: Base,
        ids_in: Any,
        loss_fn: LossFn,
        rows: np.ndarray,
        states: Sequence[tuple[int, np.ndarray, list[dict[str, Any]]]],
    ) -> tuple[Any, LossFn]:
        """The inputs of the beam's texts (sample ``rows[i]`` with state i's ids) and the loss
        of their rows (per-sample constants follow each row's sample)."""
        from ..backends import ops_for

        ids = np.stack([s[1] for s in states])
        ax = base.batch_axis
        native = ops_for(ids_in).from_numpy(np.moveaxis(ids, 0, ax) if ax else ids, ids_in)
        sub = _replace_ids(inputs, repeat_samples(inputs, rows, base.batch, ax), ids_in, native)
        if not takes_rows(loss_fn):
            return sub, loss_fn

        def loss(outputs: Any, r: np.ndarray) -> Any:
            return loss_fn(outputs, rows[r])

        return sub, loss
