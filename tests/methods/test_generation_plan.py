"""Chunks of generation steps (``methods.plan.plan_outputs``) and the input checks, no framework."""

from __future__ import annotations

import numpy as np
import pytest

from embgrad.errors import InputError
from embgrad.methods import plan as planner
from embgrad.outputs import generation as gen


def _steps(b: int, k: int) -> gen.Steps:
    return gen.check_steps(np.ones((b, k), dtype=np.int64), None, None, b)


def test_chunks_cover_every_step_once_within_the_budget():
    steps = _steps(2, 40)

    def width(k1: int) -> int:
        return 32 + k1 - 1

    for budget in (64, 500, 4096, 10**6):
        chunks = planner.plan_outputs(steps.active, width, budget)
        covered = [k for k0, k1 in chunks for k in range(k0, k1)]
        assert covered == list(range(40))
        for k0, k1 in chunks:
            assert k1 - k0 == 1 or 2 * (k1 - k0) * width(k1) <= budget


def test_a_chunk_closes_at_one_eighth_padding_once_it_is_big_enough():
    steps = _steps(1, 512)
    chunks = planner.plan_outputs(steps.active, lambda k1: 32 + k1 - 1, 10**9)
    assert len(chunks) > 1
    for k0, k1 in chunks[:-1]:
        held = (k1 - k0) * (32 + k1 - 1)
        needed = sum(32 + k for k in range(k0, k1))
        assert held >= planner.MIN_PASS_TOKENS or k1 - k0 == 1
        if held >= 2 * planner.MIN_PASS_TOKENS:  # small chunks may hold more padding
            assert 1 - needed / held <= planner.MAX_PAD_FRACTION


def test_bad_targets_masks_and_contrasts_are_refused():
    with pytest.raises(InputError, match=r"expected \(B, K\) = \(2, K"):
        gen.check_steps(np.ones((3, 4), dtype=np.int64), None, None, 2)
    with pytest.raises(InputError, match="integer token ids"):
        gen.check_steps(np.full((2, 4), 0.5), None, None, 2)
    with pytest.raises(InputError, match="trailing padding"):
        gen.check_steps(np.ones((1, 3), dtype=np.int64), np.array([[1, 0, 1]]), None, 1)
    with pytest.raises(InputError, match="contrast has shape"):
        gen.check_steps(np.ones((1, 3), dtype=np.int64), None, np.ones((1, 2), dtype=int), 1)
    steps = gen.check_steps(np.full((1, 3), 7), None, None, 1)
    with pytest.raises(InputError, match=r"outside the vocabulary \[0, 5\)"):
        gen.check_vocab(steps, 5)
    with pytest.raises(InputError, match="tokens_per_pass must be a positive integer"):
        planner.plan_outputs(steps.active, lambda k: k, 0)
