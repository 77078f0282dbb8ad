"""Lookups the losses do not reach, and losses that match no sample axis (the core's decisions,
through the numpy fake backend).

A lookup whose output is cut off the graph (``FakeModel(detach=...)``, like ``.detach()``,
``no_grad`` or ``BlockGrad``) gets None from the session's backward; the core leaves it out with
a note under ``layers="auto"`` and refuses it when named. A reached lookup whose gradient is
zero (masked positions) keeps its zeros with no note. Losses of a length no lookup's ids has an
axis of are refused with LossError.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import embgrad
from embgrad.errors import LossError, NoLookupError
from fakes.numpy_backend import FakeModel, Tensor, trace, vjp

WORD = "embeddings.word_embeddings"
POS = "embeddings.position_embeddings"
CHECKS = ["auto", "probe", "exact", "off"]


pytestmark = pytest.mark.usefixtures("fake_backend")  # tests/core/conftest.py


def tanh_loss(h: Tensor) -> Tensor:
    return (h.tanh() * np.array([0.7, -1.3, 0.4])).sum(axis=(1, 2))


def ids_of(model: FakeModel, batch: int = 3, length: int = 4) -> np.ndarray:
    return np.random.default_rng(1).integers(0, model.word.weight.shape[0], size=(batch, length))


def oracle(model: FakeModel, ids: np.ndarray, loss_fn: Any) -> dict[str, np.ndarray]:
    """dL_i/d out for every lookup: slice i of backward i (word), batch sum (positions)."""
    losses, caps, _ = trace(model, (ids,), {}, loss_fn)
    batch = losses.shape[0]
    per: dict[str, list[np.ndarray]] = {c.name: [] for c in caps}
    for i in range(batch):
        e = np.zeros(batch)
        e[i] = 1.0
        for c, g in zip(caps, vjp(losses, e, [c.handle for c in caps]), strict=True):
            per[c.name].append(g)
    return {
        n: np.stack([g[i] for i, g in enumerate(gs)]) if n == WORD else np.sum(gs, axis=0)
        for n, gs in per.items()
    }


# -- part 3: lookups the losses do not reach ------------------------------------------------------
@pytest.mark.parametrize("check", CHECKS)
def test_unreached_lookup_left_out_with_note(check: str) -> None:
    model = FakeModel(position="1d", detach="position")
    ids = ids_of(model)
    res = embgrad.gradients(model, ids, tanh_loss, check=check)
    assert res.layers == [WORD]
    assert list(res.unreached) == [POS]
    assert "autograd graph" in res.unreached[POS] and "detach" in res.unreached[POS]
    assert len(res.notes) == 1 and POS in res.notes[0]
    np.testing.assert_allclose(res[WORD].output_grad, oracle(model, ids, tanh_loss)[WORD], 1e-12)
    assert res[WORD].per_sample and res[WORD].note == ""
    with pytest.raises(KeyError, match="left out: the losses do not reach"):
        res[POS]
    assert model.events[-1] == "close"


def test_unreached_remembered_probe_keeps_axes() -> None:
    """The remembered verdict (check='auto') is stored for the whole selection; the second call
    reuses it with the unreached lookup left out again."""
    model = FakeModel(position="1d", detach="position")
    ids = ids_of(model)
    first = embgrad.gradients(model, ids, tanh_loss)
    second = embgrad.gradients(model, ids, tanh_loss)
    assert (first.check, second.check) == ("probe", "probe-cached")
    assert second.layers == [WORD] and list(second.unreached) == [POS]
    np.testing.assert_array_equal(first[WORD].output_grad, second[WORD].output_grad)
    assert second[WORD].batch_axis == 0


@pytest.mark.parametrize("check", CHECKS)
def test_no_reached_lookup_is_an_error(check: str) -> None:
    model = FakeModel(detach="word")
    with pytest.raises(NoLookupError) as err:
        embgrad.gradients(model, ids_of(model), tanh_loss, check=check)
    msg = str(err.value)
    assert WORD in msg and "reach none" in msg
    assert "no_grad" in msg and "detach" in msg and "BlockGrad" in msg
    assert model.events[-1] == "close" and model.training is False


@pytest.mark.parametrize(("layers", "name"), [(WORD, WORD), ("position", POS), ([WORD, POS], WORD)])
@pytest.mark.parametrize("check", ["auto", "exact"])
def test_named_unreached_lookup_is_an_error(layers: Any, name: str, check: str) -> None:
    model = FakeModel(position="1d", detach="word" if name == WORD else "position")
    with pytest.raises(NoLookupError, match=f"selects lookup\\(s\\) '{name}'.*autograd graph"):
        embgrad.gradients(model, ids_of(model), tanh_loss, layers=layers, check=check)
    assert model.events[-1] == "close"


@pytest.mark.parametrize("check", CHECKS)
def test_reached_zero_gradient_stays_zeros_without_note(check: str) -> None:
    """Masked positions, and a lookup whose every gradient is zero, are reached: zeros, no note."""
    model = FakeModel(position="1d")
    ids = ids_of(model)
    mask = np.ones((3, 4, 1))
    mask[:, 2:] = 0.0

    def masked(h: Tensor) -> Tensor:
        return tanh_loss(h * mask)

    res = embgrad.gradients(model, ids, masked, check=check)
    assert res.layers == [WORD, POS] and res.unreached == {} and res.notes == []
    want = oracle(model, ids, masked)
    np.testing.assert_allclose(res[WORD].output_grad, want[WORD], 1e-12)
    assert not np.any(res[WORD].output_grad[:, 2:]) and np.all(res[WORD].output_grad[:, :2])
    assert res[WORD].note == ""

    res = embgrad.gradients(model, ids, lambda h: tanh_loss(h * 0.0), check=check)
    assert res.layers == [WORD, POS] and res.unreached == {}
    assert not np.any(res[WORD].output_grad) and not np.any(res[POS].output_grad)


# -- part 4: losses that match no sample axis ----------------------------------------------------
def doubled(h: Tensor) -> Tensor:
    """2·B losses from (B, T, D): each sample's positions split in two halves."""
    b, t, d = h.shape
    return h.reshape((2 * b, t // 2, d)).sum(axis=(1, 2))


@pytest.mark.parametrize("check", CHECKS)
def test_losses_matching_no_axis_are_refused(check: str) -> None:
    model = FakeModel()
    with pytest.raises(LossError) as err:
        embgrad.gradients(model, ids_of(model, 4, 6), doubled, check=check)
    assert str(err.value).startswith(
        f"loss_fn returned 8 losses, but no lookup's ids has an axis of size 8: '{WORD}' (4, 6)."
    )
    assert model.events[-1] == "close"


def test_losses_matching_no_axis_name_every_lookup() -> None:
    model = FakeModel(position="1d")
    with pytest.raises(LossError, match=f"'{WORD}' \\(4, 6\\), '{POS}' \\(6,\\)"):
        embgrad.gradients(model, ids_of(model, 4, 6), doubled)


def test_declared_no_batch_axis_is_batch_sum() -> None:
    """batch_axis={name: None} for every selected lookup says the ids have no batch axis: the
    batch sum, as before."""
    model = FakeModel()
    ids = ids_of(model, 4, 6)
    res = embgrad.gradients(model, ids, doubled, batch_axis={WORD: None})
    assert res[WORD].batch_axis is None and "batch sums" in res[WORD].note
    losses, caps, _ = trace(model, (ids,), {}, doubled)
    (want,) = vjp(losses, np.ones(8), [caps[0].handle])
    np.testing.assert_allclose(res[WORD].output_grad, want, 1e-12)


@pytest.mark.parametrize("layers", ["auto", "position"])
def test_position_ids_beside_batched_word_keep_batch_sums(layers: str) -> None:
    """Only the position lookup selected: the word lookup's batch axis still proves the losses
    match the samples, so the position lookup's (T,) ids are broadcast, summed over the batch."""
    model = FakeModel(position="1d")
    ids = ids_of(model, 3, 4)
    res = embgrad.gradients(model, ids, tanh_loss, layers=layers)
    assert res[POS].batch_axis is None
    np.testing.assert_allclose(res[POS].output_grad, oracle(model, ids, tanh_loss)[POS], 1e-12)
