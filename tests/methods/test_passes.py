"""How the expanded passes (integrated-gradient steps, SmoothGrad draws) are planned: every row
exactly once, within ``internal_batch_size``, and with a mask only as long as their samples."""

from __future__ import annotations

import numpy as np
import pytest

from embgrad.errors import InputError
from embgrad.methods import _passes
from embgrad.methods import plan as plan_module
from embgrad.methods._passes import valid_lengths
from embgrad.methods.plan import plan_passes


def covers_each_row_once(plan: list[tuple[np.ndarray, int]], n: int) -> bool:
    seen = np.concatenate([sel for sel, _ in plan])
    return sorted(seen.tolist()) == list(range(n))


def test_without_lengths_passes_are_consecutive_chunks_at_full_length():
    rows = np.repeat(np.arange(3), 4)
    plan = plan_passes(rows, 5, None, 9)
    assert [sel.tolist() for sel, _ in plan] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert {length for _, length in plan} == {9}


def test_with_lengths_each_pass_is_as_long_as_its_longest_row(monkeypatch):
    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)
    monkeypatch.setattr(plan_module, "MAX_PAD_FRACTION", 0.0)
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
    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 20)
    monkeypatch.setattr(plan_module, "MAX_PAD_FRACTION", 0.0)
    lengths = np.array([2, 3, 10, 11])
    rows = np.repeat(np.arange(4), 2)
    plan = plan_passes(rows, 100, lengths, 12)
    assert covers_each_row_once(plan, rows.shape[0])
    # at the change 2 → 3 the pass holds 2 rows x 2 = 4 tokens, at 3 → 10 4 x 3 = 12: both
    # under 20, so they run padded to 10; at 10 → 11 it holds 6 x 10 = 60 and closes
    assert [(len(sel), length) for sel, length in plan] == [(6, 10), (2, 11)]


def test_a_length_change_that_adds_little_padding_keeps_one_pass(monkeypatch):
    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)
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


def _pool(mix: str, seq_first: bool = False):
    """A tiny torch model: masked mean pooling of tanh(embeddings) → one score per sample.

    ``mix`` adds the mean over every position, padding included, to each position first:
    ``"all"`` for every sample, ``"detached"`` without a gradient through it (so the padding's
    gradient is 0 but the outputs still depend on it), ``"gate"`` multiplying by 1 + that
    detached mean (so the real tokens' gradients depend on it), ``"sample3"`` for sample 3 only.
    """
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
            mean = h.mean(1, keepdim=True)
            if mix == "all":
                h = h + mean
            elif mix == "detached":
                h = h + mean.detach()
            elif mix == "gate":
                h = h * (1.0 + mean.detach())
            elif mix == "sample3":
                h = h + mean * (ids[:, :1, None] == 4)
            m = mask.unsqueeze(-1).float()
            return self.lin((h * m).sum(1) / m.sum(1)).squeeze(-1)

    return Pool().eval()


def _ragged():
    torch = pytest.importorskip("torch")
    ids = torch.tensor(
        [[3, 4, 5, 6, 7, 0], [8, 9, 0, 0, 0, 0], [1, 2, 3, 0, 0, 0], [4, 5, 6, 0, 0, 0]]
    )  # lengths 5, 2, 3, 3: samples 2 and 3 share a pass
    return {"ids": ids, "mask": (ids > 0).long()}


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
@pytest.mark.parametrize(
    ("mix", "seq_first", "scale", "padding"),
    [
        ("none", False, 1.0, "skipped"),
        ("none", False, 1e-6, "skipped"),
        ("all", False, 1.0, "computed: the loss has a gradient at positions after"),
        ("all", False, 1e-6, "computed: the loss has a gradient at positions after"),
        ("detached", False, 1.0, "computed: the model's loss or gradient changes"),
        ("gate", False, 1e-6, "computed: the model's loss or gradient changes"),
        ("sample3", False, 1.0, "computed: the loss has a gradient at positions after"),
        ("none", True, 1.0, "computed: the lookup's batch axis is 1"),
    ],
)
def test_padding_is_skipped_only_where_results_stay_the_same(
    monkeypatch, method, mix, seq_first, scale, padding
):
    from embgrad.methods import get_method

    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)
    monkeypatch.setattr(plan_module, "MAX_PAD_FRACTION", 0.0)
    model, inputs = _pool(mix, seq_first), _ragged()
    m = get_method(method)(model)
    opts = {"n_steps": 4} if method == "integrated_gradients" else {"n_samples": 3}

    def loss(out):  # scale 1e-6: losses far below any absolute tolerance
        return out * scale

    full = m.attribute(inputs, loss, **opts)
    cut = m.attribute(inputs, loss, mask=inputs["mask"], **opts)
    assert full.info["padding"] == "computed"
    assert cut.info["padding"].startswith(padding)
    lengths = {n for _, n in cut.info["passes"]}
    assert lengths == ({2, 3, 5} if padding == "skipped" else {6})
    top = np.abs(full.attributions).max()
    assert np.abs(cut.attributions - full.attributions).max() <= 1e-5 * top


def test_train_mode_and_equal_lengths_keep_the_padding_and_say_why(monkeypatch):
    from embgrad.methods import get_method

    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)
    model, inputs = _pool("none"), _ragged()
    train = get_method("integrated_gradients")(model, mode="train")
    got = train.attribute(inputs, lambda out: out, mask=inputs["mask"], n_steps=2)
    assert got.info["padding"].startswith("computed: mode='train'")
    assert {n for _, n in got.info["passes"]} == {6}
    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 10**6)  # every length merged ...
    ids = inputs["ids"][:2].clone()
    ids[0, 5] = 8  # ... into one pass as long as the batch: nothing to cut
    ig = get_method("integrated_gradients")(model)
    got = ig.attribute({"ids": ids, "mask": (ids > 0).long()}, lambda out: out, n_steps=2,
                       mask=(ids > 0).long())  # fmt: skip
    assert got.info["padding"] == "computed: too little to skip"


def test_pair_similarity_cuts_its_mask_only_where_it_is_padding():
    torch = pytest.importorskip("torch")
    from embgrad.tasks.heads import PairSimilarity

    hidden = torch.randn(2, 3, 4)
    for tail, ok in ((0, True), (1, False)):
        mask = torch.tensor([[1, 1, 1, tail, 0], [1, 1, 0, 0, 0]])
        sim = PairSimilarity(np.array([1, 0]), lambda rows, m=mask: m[torch.as_tensor(rows)])
        if ok:  # a pass cut after the last real token: the same as the uncut mean
            assert sim(hidden, np.arange(2)).shape == (2,)
        else:  # a model whose outputs are shorter than its tokens (pooling): refused
            with pytest.raises(InputError, match="3 positions but the attention mask 5"):
                sim(hidden, np.arange(2))


def test_a_model_that_fails_on_shorter_inputs_keeps_the_padding(monkeypatch):
    from embgrad.methods import get_method

    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)
    inner, inputs = _pool("none"), _ragged()

    class FixedLength(type(inner)):  # e.g. a learned projection over all 6 positions
        def forward(self, ids, mask):
            if ids.shape[1] != 6:
                raise RuntimeError(f"expected 6 positions, got {ids.shape[1]}")
            return super().forward(ids, mask)

    model = FixedLength()
    model.load_state_dict(inner.state_dict())
    got = get_method("integrated_gradients")(model.eval()).attribute(
        inputs, lambda out: out, mask=inputs["mask"], n_steps=2
    )
    assert got.info["padding"].startswith("computed: the model failed on inputs cut to")
    assert "expected 6 positions" in got.info["padding"]
    assert {n for _, n in got.info["passes"]} == {6}


def test_a_word_lookup_cut_off_the_graph_is_named_not_replaced_by_another():
    """layer='word' whose lookup the losses do not reach (detached): the error names it; the
    fallback to the model's only other input lookup (positions, no batch axis) is not taken."""
    import torch
    from torch import nn

    import embgrad

    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(20, 4)
            self.pos = nn.Embedding(8, 4)
            self.out = nn.Linear(4, 1)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.word(ids).detach() + self.pos(torch.arange(ids.shape[1]))
            return self.out(h).squeeze(-1).sum(1)

    ids = torch.randint(0, 20, (3, 5))
    with pytest.raises(embgrad.NoLookupError, match=r"'word' \(word\).*autograd graph"):
        _passes.base_pass(Frozen(), ids, lambda o: o)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_the_default_pass_size_is_bounded_whatever_the_steps(monkeypatch, method):
    from embgrad.methods import get_method

    monkeypatch.setattr(plan_module, "PASS_TOKENS", 12)  # 6 positions: 2 rows a pass
    model, inputs = _pool("none"), _ragged()
    m = get_method(method)(model)
    many = {"n_steps": 15} if method == "integrated_gradients" else {"n_samples": 15}
    got = m.attribute(inputs, lambda out: out, **many)
    assert all(rows * length <= 12 for rows, length in got.info["passes"])
    assert sum(rows for rows, _ in got.info["passes"]) >= 4 * 15
    one = m.attribute(inputs, lambda out: out, internal_batch_size=10**6, **many)
    assert len(one.info["passes"]) == 1  # an explicit size still wins
    top = np.abs(one.attributions).max()
    assert np.abs(got.attributions - one.attributions).max() <= 1e-5 * top
    assert plan_module.default_pass_rows(10**6) == 1  # a text longer than the bound: one row


def test_progress_bars_show_passes_on_a_terminal_only(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    from embgrad import _progress
    from embgrad.methods import get_method

    model, inputs = _pool("none"), _ragged()
    ig = get_method("integrated_gradients")(model)
    ig.attribute(inputs, lambda out: out, n_steps=4, internal_batch_size=3)
    assert capsys.readouterr().err == ""  # not a terminal: silent
    monkeypatch.setattr(_progress, "_tty", lambda: True)
    monkeypatch.setattr(_progress, "DELAY_S", 0.0)
    ig.attribute(inputs, lambda out: out, n_steps=4, internal_batch_size=3)
    err = capsys.readouterr().err
    assert "integrated gradients" in err and "/7 " in err and "pass/s" in err  # 20 rows / 3
    with _progress.quiet():  # `embgrad run` shows its own bar instead
        ig.attribute(inputs, lambda out: out, n_steps=4, internal_batch_size=3)
    assert capsys.readouterr().err == ""
