"""How the expanded passes (integrated-gradient steps, SmoothGrad draws) are planned: every row
exactly once, within ``internal_batch_size``, and with a mask only as long as their samples."""

from __future__ import annotations

import numpy as np
import pytest

from embgrad.errors import InputError
from embgrad.methods import _passes
from embgrad.methods._passes import plan_passes, valid_lengths


def covers_each_row_once(plan: list[tuple[np.ndarray, int]], n: int) -> bool:
    seen = np.concatenate([sel for sel, _ in plan])
    return sorted(seen.tolist()) == list(range(n))


def test_without_lengths_passes_are_consecutive_chunks_at_full_length():
    rows = np.repeat(np.arange(3), 4)
    plan = plan_passes(rows, 5, None, 9)
    assert [sel.tolist() for sel, _ in plan] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert {length for _, length in plan} == {9}


def test_with_lengths_each_pass_is_as_long_as_its_longest_row(monkeypatch):
    monkeypatch.setattr(_passes, "MIN_PASS_TOKENS", 1)
    monkeypatch.setattr(_passes, "MAX_PAD_FRACTION", 0.0)
    lengths = np.array([7, 3, 7, 5])
    rows = np.repeat(np.arange(4), 3)
    plan = plan_passes(rows, 4, lengths, 9)
    assert covers_each_row_once(plan, rows.shape[0])
    for sel, length in plan:
        assert len(sel) <= 4
        assert length == lengths[rows[sel]].max()  # padded only to its own longest sample
    # sorted by length: the 3-token sample's rows first, then 5, then both 7s
    assert [length for _, length in plan] == [3, 5, 7, 7]
    assert sum(len(sel) * length for sel, length in plan) < rows.shape[0] * 9


def test_small_length_groups_merge_until_a_pass_is_worth_closing(monkeypatch):
    monkeypatch.setattr(_passes, "MIN_PASS_TOKENS", 20)
    monkeypatch.setattr(_passes, "MAX_PAD_FRACTION", 0.0)
    lengths = np.array([2, 3, 10, 11])
    rows = np.repeat(np.arange(4), 2)
    plan = plan_passes(rows, 100, lengths, 12)
    assert covers_each_row_once(plan, rows.shape[0])
    # at the change 2 → 3 the pass holds 2 rows x 2 = 4 tokens, at 3 → 10 4 x 3 = 12: both
    # under 20, so they run padded to 10; at 10 → 11 it holds 6 x 10 = 60 and closes
    assert [(len(sel), length) for sel, length in plan] == [(6, 10), (2, 11)]


def test_a_length_change_that_adds_little_padding_keeps_one_pass(monkeypatch):
    monkeypatch.setattr(_passes, "MIN_PASS_TOKENS", 1)
    rows = np.repeat(np.arange(8), 4)
    # six samples of 11 tokens, two of 12 (the bundled sentences): 12 in one pass pads 1/16
    one = plan_passes(rows, 100, np.array([11, 11, 11, 12, 11, 11, 12, 11]), 12)
    assert [(len(sel), length) for sel, length in one] == [(32, 12)]
    # 11 and 40 tokens: one pass would be more than half padding
    two = plan_passes(rows, 100, np.array([11, 11, 11, 40, 11, 11, 40, 11]), 40)
    assert [(len(sel), length) for sel, length in two] == [(24, 11), (8, 40)]


def test_an_all_padding_sample_still_runs_one_position():
    assert [(len(sel), n) for sel, n in plan_passes(np.array([0, 0]), 10, np.array([0]), 4)] == [
        (2, 1)
    ]


@pytest.mark.parametrize(
    ("mask", "want"),
    [
        ([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], [3, 4, 1]),  # right padding
        ([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], [4, 4, 4]),  # left padding: nothing cut
        ([[0, 0, 0, 0], [1, 0, 1, 0], [True, True, False, False]], [0, 3, 2]),
    ],
)
def test_valid_lengths_end_at_the_last_real_token(mask, want):
    assert valid_lengths(np.asarray(mask), (3, 4)).tolist() == want


def test_valid_lengths_name_a_wrong_shape():
    with pytest.raises(InputError, match=r"mask has shape \(2, 4\); expected the ids' shape"):
        valid_lengths(np.ones((2, 4)), (3, 4))


class _Pool:
    """Tiny torch models: masked mean pooling of tanh(embeddings) → a score per sample;
    ``mix`` adds the mean over every position (padding included) to each one first."""

    @staticmethod
    def make(mix: bool, seq_first: bool = False):
        torch = pytest.importorskip("torch")

        class Pool(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                torch.manual_seed(0)
                self.emb = torch.nn.Embedding(20, 4)
                self.lin = torch.nn.Linear(4, 1)

            def forward(self, ids, mask):
                h = torch.tanh(self.emb(ids.T if seq_first else ids))
                h = h.transpose(0, 1) if seq_first else h
                if mix:
                    h = h + h.mean(1, keepdim=True)
                m = mask.unsqueeze(-1).float()
                return self.lin((h * m).sum(1) / m.sum(1)).squeeze(-1)

        return Pool().eval()


def _ragged():
    torch = pytest.importorskip("torch")
    ids = torch.tensor([[3, 4, 5, 6, 7, 0], [8, 9, 0, 0, 0, 0], [1, 2, 3, 0, 0, 0]])
    return {"ids": ids, "mask": (ids > 0).long()}


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
@pytest.mark.parametrize(
    ("mix", "seq_first", "padding"),
    [
        (False, False, "skipped"),
        (True, False, "computed: the model's outputs change"),
        (False, True, "computed: the lookup's batch axis is 1"),
    ],
)
def test_padding_is_skipped_only_where_results_stay_the_same(
    monkeypatch, method, mix, seq_first, padding
):
    from embgrad.methods import get_method

    monkeypatch.setattr(_passes, "MIN_PASS_TOKENS", 1)
    monkeypatch.setattr(_passes, "MAX_PAD_FRACTION", 0.0)
    model, inputs = _Pool.make(mix, seq_first), _ragged()
    m = get_method(method)(model)
    opts = {"n_steps": 4} if method == "integrated_gradients" else {"n_samples": 3}
    full = m.attribute(inputs, lambda out: out, **opts)
    cut = m.attribute(inputs, lambda out: out, mask=inputs["mask"], **opts)
    assert full.info["padding"] == "computed"
    assert cut.info["padding"].startswith(padding)
    lengths = {n for _, n in cut.info["passes"]}
    assert lengths == ({2, 3, 5} if padding == "skipped" else {6})
    scale = np.abs(full.attributions).max()
    assert np.abs(cut.attributions - full.attributions).max() <= 1e-5 * scale


def test_pair_similarity_cuts_its_mask_only_where_it_is_padding():
    torch = pytest.importorskip("torch")
    from embgrad.models.heads import PairSimilarity

    hidden = torch.randn(2, 3, 4)
    for tail, ok in ((0, True), (1, False)):
        mask = torch.tensor([[1, 1, 1, tail, 0], [1, 1, 0, 0, 0]])
        sim = PairSimilarity(np.array([1, 0]), lambda rows, m=mask: m[torch.as_tensor(rows)])
        if ok:  # a pass cut after the last real token: the same as the uncut mean
            assert sim(hidden, np.arange(2)).shape == (2,)
        else:  # a model whose outputs are shorter than its tokens (pooling): refused
            with pytest.raises(InputError, match="3 positions but the attention mask 5"):
                sim(hidden, np.arange(2))
