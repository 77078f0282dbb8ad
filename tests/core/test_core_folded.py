"""A batch folded into a lookup's leading axis (issue 21 item 11: ELMo's character CNN looks up
ids reshaped from (B, T, C) to (B·T, C)), and ``batch_axis`` argument checks (issue 22 item 16),
through the numpy fake: exact per-sample gradients against the one-sample-at-a-time loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import embgrad
from embgrad.errors import BatchAxisError, InputError, LossError
from fakes.numpy_backend import FakeModel, Tensor

WORD = "embeddings.word_embeddings"
B, T, D, V = 3, 5, 4, 11  # pairwise different; B·T = 15 ≠ T

pytestmark = pytest.mark.usefixtures("fake_backend")  # tests/core/conftest.py


def tanh_loss(h: Tensor) -> Tensor:
    return (h.tanh() * np.array([0.7, -1.3, 0.4, 2.0])).sum(axis=(1, 2))


def coupled_loss(h: Tensor) -> Tensor:
    """Every sample's loss also sees the batch mean: samples interact."""
    return ((h - h.mean(axis=0, keepdims=True)).tanh()).sum(axis=(1, 2))


def ids(shape: tuple[int, ...] = (B, T), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=shape)


def loop(model: FakeModel, x: np.ndarray) -> np.ndarray:
    """dL_b/d out for each sample b run alone: (B, T, D) (each sample's rows of the fold)."""
    rows = []
    for b in range(x.shape[0]):
        one = embgrad.gradients(model, x[b : b + 1], tanh_loss, check="off")
        rows.append(np.asarray(one[WORD].output_grad).reshape(T, D))
    return np.stack(rows)


def table_loop(model: FakeModel, x: np.ndarray, want: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], V, D))
    for b in range(x.shape[0]):
        np.add.at(out[b], x[b], want[b])
    return out


@pytest.mark.parametrize(
    ("check", "batch_axis"),
    [
        ("auto", None),
        ("probe", None),
        ("off", "folded"),
        ("exact", "folded"),
        ("probe", {WORD: "folded"}),
    ],
)
def test_folded_batch_is_split_per_sample(check: str, batch_axis: Any) -> None:
    model = FakeModel(V, D, fold=True)
    x = ids()
    res = embgrad.gradients(model, x, tanh_loss, check=check, batch_axis=batch_axis)  # type: ignore[arg-type]
    lk = res[WORD]
    want = loop(model, x)
    assert lk.batch_axis == 0 and lk.per_sample
    assert np.asarray(lk.ids).shape == (B, T)
    np.testing.assert_allclose(np.asarray(lk.output_grad), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(lk.ids), x)
    table = lk.table_grad(dense=True)
    np.testing.assert_allclose(
        np.asarray(table), table_loop(model, x, want), rtol=1e-12, atol=1e-12
    )
    assert "folded" in lk.note
    assert model.events[-1] == "close"


def test_folded_batch_verdict_is_remembered() -> None:
    model = FakeModel(V, D, fold=True)
    first = embgrad.gradients(model, ids(), tanh_loss)
    again = embgrad.gradients(model, ids(seed=2), tanh_loss)
    assert (first.check, again.check) == ("probe", "probe-cached")
    np.testing.assert_allclose(
        np.asarray(again[WORD].output_grad), loop(model, ids(seed=2)), rtol=1e-12, atol=1e-12
    )
    other = embgrad.gradients(model, ids((4, T)), tanh_loss)  # another B: still folded
    assert np.asarray(other[WORD].output_grad).shape == (4, T, D)


def test_folded_batch_unprobed_is_refused() -> None:
    model = FakeModel(V, D, fold=True)
    with pytest.raises(BatchAxisError, match=r"folded in .*check='off'.*batch_axis=\{'embeddings"):
        embgrad.gradients(model, ids(), tanh_loss, check="off")
    assert model.events[-1] == "close"


def test_interleaved_fold_is_refused_saying_what_happened() -> None:
    """(T, B) ids flattened: row t·B + b is sample b's; the (B, k) reading fails the probe."""
    model = FakeModel(V, D, fold=True, layout="TB")
    with pytest.raises(BatchAxisError, match=r"shape \(15,\).*15 = 3·5.*interleaved"):
        embgrad.gradients(model, ids((T, B)), tanh_loss)


def test_coupled_fold_is_refused_saying_what_happened() -> None:
    model = FakeModel(V, D, fold=True)
    with pytest.raises(BatchAxisError, match=r"folded in.*residual.*interact"):
        embgrad.gradients(model, ids(), coupled_loss)


def test_no_multiple_is_a_loss_error() -> None:
    model = FakeModel(V, D, fold=True)

    def doubled(h: Tensor) -> Tensor:  # 2·B = 6 losses: 15 rows are not a multiple of 6
        s = tanh_loss(h)
        return Tensor(np.concatenate([s.value, s.value]))

    with pytest.raises(LossError, match="Nor can a batch of 6 be folded"):
        embgrad.gradients(model, ids(), doubled)


def test_declared_fold_that_does_not_fit() -> None:
    model = FakeModel(V, D)  # (B, T) ids: leading axis B itself, no fold
    with pytest.raises(InputError, match=r"a folded batch needs a leading axis that is a multiple"):
        embgrad.gradients(model, ids(), tanh_loss, batch_axis="folded")


# -- batch_axis arguments (issue 22 item 16) -------------------------------------------------------
def test_batch_axis_unknown_key_is_refused_naming_the_lookups() -> None:
    model = FakeModel(V, D, position="1d")
    with pytest.raises(
        InputError, match=r"'embedings\.word'.*match no lookup.*'embeddings\.word_embeddings'"
    ):
        embgrad.gradients(model, ids(), tanh_loss, batch_axis={"embedings.word": 0})
    assert model.events == ["open:eval", "close"]


@pytest.mark.parametrize("given", [True, False, 1.0, "0", [0]])
def test_batch_axis_that_is_not_an_axis(given: Any) -> None:
    model = FakeModel(V, D)
    with pytest.raises(InputError, match="is not an axis"):
        embgrad.gradients(model, ids(), tanh_loss, batch_axis=given)
    assert model.events == []  # refused before the model is touched


def test_batch_axis_numpy_integer_is_an_axis() -> None:
    model = FakeModel(V, D, layout="TB")
    res = embgrad.gradients(model, ids((T, B)), tanh_loss, batch_axis=np.int64(1), check="off")
    assert res[WORD].batch_axis == 1
    res = embgrad.gradients(model, ids((T, B)), tanh_loss, batch_axis={WORD: np.int32(-1)})
    assert res[WORD].batch_axis == 1


def test_negative_batch_axis_is_reported_as_given() -> None:
    model = FakeModel(V, D)
    with pytest.raises(InputError, match=r"batch_axis=-1 \(axis 1\) for lookup .* has size 5"):
        embgrad.gradients(model, ids(), tanh_loss, batch_axis=-1)


def test_folded_beside_a_batched_lookup_keeps_both_per_sample() -> None:
    """A declared fold beside a lookup with an ordinary batch axis (ELMo's characters beside a
    word lookup): the unfolded view's extra axis must not turn the other into batch sums."""
    model = FakeModel(V, D, fold=True, position="2d")  # position ids (1, T): batch sums
    x = ids()
    pos = "embeddings.position_embeddings"
    for check in ("exact", "probe"):
        res = embgrad.gradients(model, x, tanh_loss, check=check, batch_axis={WORD: "folded"})
        assert res[WORD].batch_axis == 0 and res[pos].batch_axis is None
        np.testing.assert_allclose(
            np.asarray(res[WORD].output_grad), loop(model, x), rtol=1e-12, atol=1e-12
        )
