"""InfluenceIndex on PyTorch models against the dense oracle: one ordinary backward per example,
the word table's ``weight.grad``, dot products per checkpoint, weighted."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from embgrad import InfluenceIndex  # noqa: E402
from embgrad.errors import InputError, NoLookupError  # noqa: E402
from models_torch import NoLookup, TinyText  # noqa: E402
from oracle_influence import close, dense_grads, keep_top_rows, scores  # noqa: E402
from oracle_torch import assert_untouched, snapshot  # noqa: E402

V, D, C = 23, 6, 3
WORD = lambda m: m.word.weight  # noqa: E731


def _model(seed: int) -> TinyText:
    torch.manual_seed(seed)
    return TinyText(vocab=V, dim=D, classes=C).eval()


def _data(seed: int, lengths: list[int], batch: int):
    """Ragged batches (B = ``batch``, T from ``lengths``), ids from 1 (0 is padding) with a few
    shared tokens, and labels; plus the examples one at a time for the oracle."""
    g = torch.Generator().manual_seed(seed)
    batches, singles = [], []
    for t in lengths:
        ids = torch.randint(1, 9, (batch, t), generator=g)  # a small id range: shared tokens
        batches.append(ids)
        singles += [ids[i : i + 1] for i in range(batch)]
    labels = torch.randint(0, C, (len(singles),), generator=g)
    return batches, singles, labels


@pytest.fixture(scope="module")
def run():
    """Three checkpoints (the live model, a state dict, another model), weights, ragged data:
    train B = 3 (cut to 2 + 1 by batch_size=2), T ∈ {5, 7}, n_train = 9; test B = 2,
    T ∈ {6, 8}, n_test = 4."""
    model = _model(0)
    ckpts = [model, _model(1).state_dict(), _model(2)]
    weights = [0.5, 2.0, 1.25]
    train, train_1, y_train = _data(0, [5, 7, 5], 3)
    test, test_1, y_test = _data(1, [6, 8], 2)
    models = [model, _model(1), _model(2)]
    g_train = [dense_grads(m, train_1, y_train, WORD) for m in models]
    g_test = [dense_grads(m, test_1, y_test, WORD) for m in models]
    return dict(
        model=model, ckpts=ckpts, weights=weights, train=train, y_train=y_train, test=test,
        y_test=y_test, g_train=g_train, g_test=g_test,
    )  # fmt: skip


def test_scores_equal_dense_weight_grad_dot_products_over_weighted_checkpoints(run):
    idx = InfluenceIndex.build(
        run["model"], run["train"], labels=run["y_train"], checkpoints=run["ckpts"],
        weights=run["weights"], batch_size=2,
    )  # fmt: skip
    inf = idx.query(run["test"], labels=run["y_test"])
    expected = scores(run["g_train"], run["g_test"], run["weights"])
    assert inf.scores.dtype == np.float64 and inf.scores.shape == (4, 9)
    close(inf.scores, expected)
    self_expected = sum(
        w * np.einsum("jvd,jvd->j", g, g)
        for g, w in zip(run["g_train"], run["weights"], strict=True)
    )
    close(idx.self_influence(), self_expected)
    for i in range(4):
        for j in range(9):
            assert sum(inf.by_token(i, j).values()) == pytest.approx(inf.scores[i, j], abs=1e-12)


def test_loss_fn_with_rows_indexes_its_own_targets_across_batches(run):
    y_tr, y_te = run["y_train"], run["y_test"]

    def loss_train(logits, rows):
        return nn.functional.cross_entropy(logits, y_tr[torch.as_tensor(rows)], reduction="none")

    def loss_test(logits, rows):
        return nn.functional.cross_entropy(logits, y_te[torch.as_tensor(rows)], reduction="none")

    idx = InfluenceIndex.build(
        run["model"], run["train"], loss_train, checkpoints=run["ckpts"], weights=run["weights"]
    )
    close(
        idx.query(run["test"], loss_test).scores,
        scores(run["g_train"], run["g_test"], run["weights"]),
    )


def test_a_one_argument_loss_fn_over_one_batch(run):
    ids = run["train"][0]
    y = run["y_train"][:3]
    idx = InfluenceIndex.build(
        run["model"], ids, lambda logits: nn.functional.cross_entropy(logits, y, reduction="none")
    )
    expected = scores([g[:3] for g in run["g_train"][:1]], run["g_test"][:1], [1.0])
    close(idx.query(run["test"], labels=run["y_test"]).scores, expected)


def test_top_rows_equals_the_hand_truncated_oracle_and_none_the_exact_one(run):
    k = 2
    idx = InfluenceIndex.build(
        run["model"], run["train"], labels=run["y_train"], checkpoints=run["ckpts"],
        weights=run["weights"], top_rows=k,
    )  # fmt: skip
    truncated = [keep_top_rows(g, k) for g in run["g_train"]]
    inf = idx.query(run["test"], labels=run["y_test"])
    close(inf.scores, scores(truncated, run["g_test"], run["weights"]))
    assert not np.allclose(inf.scores, scores(run["g_train"], run["g_test"], run["weights"]))
    self_expected = sum(
        w * np.einsum("jvd,jvd->j", g, g) for g, w in zip(truncated, run["weights"], strict=True)
    )
    close(idx.self_influence(), self_expected)


def test_skip_special_drops_the_rows_on_both_sides(run):
    skip = [1, 3]

    def drop(g):
        g = g.copy()
        g[:, skip] = 0
        return g

    idx = InfluenceIndex.build(
        run["model"], run["train"], labels=run["y_train"], checkpoints=run["ckpts"],
        weights=run["weights"], skip_special=skip,
    )  # fmt: skip
    inf = idx.query(run["test"], labels=run["y_test"])
    expected = scores(
        [drop(g) for g in run["g_train"]], [drop(g) for g in run["g_test"]], run["weights"]
    )
    close(inf.scores, expected)
    for i in range(4):
        for j in range(9):
            assert not set(inf.by_token(i, j)) & set(skip)


class Tok:
    all_special_ids = (1, 3)

    def convert_ids_to_tokens(self, i):
        return f"tok{i}"


def test_skip_special_true_reads_the_tokenizer_and_by_token_names_tokens(run):
    a = InfluenceIndex.build(
        run["model"], run["train"], labels=run["y_train"], skip_special=True, tokenizer=Tok()
    )
    b = InfluenceIndex.build(run["model"], run["train"], labels=run["y_train"], skip_special=[3, 1])
    ia, ib = a.query(run["test"], labels=run["y_test"]), b.query(run["test"], labels=run["y_test"])
    np.testing.assert_array_equal(ia.scores, ib.scores)
    tokens = {t for i in range(4) for j in range(9) for t in ia.by_token(i, j)}
    assert tokens and all(t.startswith("tok") for t in tokens)
    with pytest.raises(InputError, match="needs tokenizer="):
        InfluenceIndex.build(run["model"], run["train"], labels=run["y_train"], skip_special=True)


def test_top_lists_proponents_and_opponents_in_order(run):
    idx = InfluenceIndex.build(run["model"], run["train"], labels=run["y_train"])
    inf = idx.query(run["test"], labels=run["y_test"])
    for top in inf.top(3):
        row = inf.scores[top.test]
        assert (
            list(top.proponents) == [j for j in np.argsort(-row, kind="stable") if row[j] > 0][:3]
        )
        assert list(top.opponents) == [j for j in np.argsort(row, kind="stable") if row[j] < 0][:3]
        np.testing.assert_array_equal(top.proponent_scores, row[top.proponents])


def test_batches_as_tuples_mappings_and_one_big_batch_give_the_same_scores(run):
    model, y = run["model"], run["y_train"]
    ids = torch.cat([torch.nn.functional.pad(b, (0, 7 - b.shape[1])) for b in run["train"]])
    ids = ids.clamp(min=0)  # padding 0 is TinyText's padding_idx: no rows, no score
    ref = InfluenceIndex.build(model, [b for b in ids.split(3)], labels=y).query(
        run["test"], labels=run["y_test"]
    )
    for train in (ids, (ids,), [(b,) for b in ids.split(4)], [{"ids": b} for b in ids.split(2)]):
        got = InfluenceIndex.build(model, train, labels=y, batch_size=5)
        close(got.query(run["test"], labels=run["y_test"]).scores, ref.scores)


class Tied(nn.Module):
    """A word table also used as the output projection (lookup path only counts)."""

    def __init__(self, table: torch.Tensor | None = None) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.word = nn.Embedding(V, D)
        self.head = nn.Linear(D, D)
        self.tied = True

    def forward(self, ids):
        h = torch.tanh(self.head(self.word(ids).mean(1)))
        return h @ self.word.weight[:C].T


class Untied(nn.Module):
    """Tied's twin whose lookup reads a separate copy: its ``word.weight.grad`` is the lookup
    path's gradient alone."""

    def __init__(self, tied: Tied) -> None:
        super().__init__()
        self.word = copy.deepcopy(tied.word)
        self.head = copy.deepcopy(tied.head)
        self.out = nn.Parameter(tied.word.weight.detach().clone())

    def forward(self, ids):
        h = torch.tanh(self.head(self.word(ids).mean(1)))
        return h @ self.out[:C].T


def test_a_tied_table_counts_the_lookup_path_only(run):
    tied = Tied().eval()
    twin = Untied(tied).eval()
    train, train_1, y = _data(3, [5, 6], 3)
    test, test_1, y_test = _data(4, [3], 2)
    idx = InfluenceIndex.build(tied, train, labels=y)
    expected = scores(
        [dense_grads(twin, train_1, y, WORD)], [dense_grads(twin, test_1, y_test, WORD)], [1.0]
    )
    close(idx.query(test, labels=y_test).scores, expected)


def test_the_users_model_and_checkpoints_are_untouched(run):
    model = _model(0).train()
    other = _model(2)
    model.word.weight.grad = torch.ones(V, D)
    model.out.weight.requires_grad_(False)
    before, before_other = snapshot(model), snapshot(other)
    state = _model(1).state_dict()
    state_copy = {k: v.clone() for k, v in state.items()}
    idx = InfluenceIndex.build(
        model, run["train"], labels=run["y_train"], checkpoints=[state, other, model]
    )
    idx.query(run["test"], labels=run["y_test"])
    with pytest.raises(InputError):
        idx.query(run["test"], labels=run["y_test"][:2])
    assert_untouched(before, model)
    assert_untouched(before_other, other)
    for k, v in state.items():
        assert torch.equal(v, state_copy[k])


def test_bad_input_gets_clear_embgrad_errors(run):
    m, tr, y = run["model"], run["train"], run["y_train"]
    cases = [
        (dict(labels=y[:5]), "5 labels for 9 training examples"),
        (dict(labels=y, checkpoints=[TinyText(vocab=V + 1, dim=D, classes=C)]), "architecture"),
        (dict(labels=y, checkpoints=[{"word.weight": torch.zeros(V, D)}]), "missing"),
        (dict(labels=y, checkpoints=[m, m], weights=[1.0]), "1 weights for 2 checkpoint"),
        (dict(labels=y, checkpoints=[]), "checkpoints is empty"),
        (dict(labels=y, checkpoints=[m, 3]), "model or a state dict"),
        (dict(labels=y, top_rows=0), "top_rows"),
        (dict(labels=y, batch_size=0), "batch_size"),
        (dict(), "need a loss"),
        (dict(labels=y.float()), "one integer class"),
        (dict(labels=y, skip_special="cls"), "skip_special"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InputError, match=match):
            InfluenceIndex.build(m, tr, **kwargs)
    with pytest.raises(InputError, match="not both"):
        InfluenceIndex.build(m, tr, lambda o: o.sum(1), labels=y)
    with pytest.raises(InputError, match="iterable of batches"):
        InfluenceIndex.build(m, 3, labels=y)
    with pytest.raises(NoLookupError):
        InfluenceIndex.build(NoLookup(), torch.randn(3, 4), lambda o: o)
    with pytest.raises(InputError, match="labels"):
        InfluenceIndex.build(m, iter(tr), labels=y[:8])  # a generator: found at the end
    idx = InfluenceIndex.build(m, tr, labels=y)
    inf = idx.query(run["test"], labels=run["y_test"])
    with pytest.raises(InputError, match="out of range"):
        inf.by_token(4, 0)
    with pytest.raises(InputError, match="k must be"):
        inf.top(0)


def test_several_selected_tables_are_summed_and_by_token_keys_name_the_table(run):
    model = run["model"]
    g = torch.Generator().manual_seed(7)
    train = [(b, torch.randint(0, 2, b.shape, generator=g)) for b in run["train"]]
    test = [(b, torch.randint(0, 2, b.shape, generator=g)) for b in run["test"]]
    singles = [(x[i : i + 1], t[i : i + 1]) for x, t in train for i in range(x.shape[0])]
    singles_test = [(x[i : i + 1], t[i : i + 1]) for x, t in test for i in range(x.shape[0])]

    def call(m, x):
        return m(x[0], x[1])

    idx = InfluenceIndex.build(model, train, labels=run["y_train"], layer=["word", "token_type"])
    inf = idx.query(test, labels=run["y_test"])
    expected = 0
    for table in (WORD, lambda m: m.token_type.weight):
        g_tr = dense_grads(model, singles, run["y_train"], table, call)
        g_te = dense_grads(model, singles_test, run["y_test"], table, call)
        expected = expected + scores([g_tr], [g_te], [1.0])
    close(inf.scores, expected)
    parts = inf.by_token(1, 2)
    assert {t for t, _ in parts} <= {"word.weight", "token_type.weight"}
    assert sum(parts.values()) == pytest.approx(inf.scores[1, 2], abs=1e-12)
