"""The core's scenarios, run over every backend: the fake and each real framework (the kits of
``tests/shared/fakes/mirrors.py``), so a new backend inherits the core's suite by adding a kit.

Each scenario builds a :class:`FakeModel`, mirrors it in the kit's framework (same tables, same
forward) and compares ``embgrad.gradients`` on the mirror with the fake's own slow oracle: one
forward and one backward per sample, each on that sample alone (numpy, no embgrad), or where
samples interact one backward of L_i per sample over the full batch. float32 tables; the oracle
runs in float64 on the same values: 1e-5 relative."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import embgrad
from embgrad.errors import BatchAxisError, CouplingError, LossError, NoLookupError
from fakes.mirrors import KITS, FakeKit
from fakes.numpy_backend import FakeModel, trace, vjp

pytestmark = pytest.mark.usefixtures("fake_backend")  # tests/core/conftest.py

B, T, D, V = 3, 4, 5, 7  # pairwise different; B·T ≠ T


@pytest.fixture(params=KITS)
def kit(request: pytest.FixtureRequest) -> FakeKit:
    return request.param()  # type: ignore[no-any-return]


def make_fake(**options: Any) -> FakeModel:
    return FakeModel(V, D, dtype=np.float32, **options)


def make_ids(fake: FakeModel, batch: int, length: int, seed: int = 1) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, V, size=(batch, length))
    return ids.T.copy() if fake.layout == "TB" else ids


def make_x(batch: int) -> np.ndarray:
    return np.random.default_rng(5).normal(size=(batch, D)).astype(np.float32)


def as64(fake: FakeModel) -> FakeModel:
    """The same model in float64 (the oracle's precision), same table values."""
    for emb in (fake.word, fake.position):
        if emb is not None:
            emb.weight = emb.weight.astype(np.float64)
    fake.dtype = np.dtype(np.float64)
    return fake


def loop_oracle(
    fake: FakeModel, ids: np.ndarray, x: np.ndarray | None, loss: Any, replace: Any = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """{role: per-sample gradient (batch roles) or batch sum (position)}, and the float input's
    per-sample gradient: B forwards of one sample each, B backwards (float64)."""
    fake = as64(fake)
    axis = 1 if fake.layout == "TB" else 0
    per: dict[str, list[np.ndarray]] = {}
    per_x: list[np.ndarray] = []
    for i in range(ids.shape[axis]):
        args = (np.take(ids, [i], axis=axis),)
        if x is not None:
            args += (x[i : i + 1].astype(np.float64),)
        losses, caps, floats = trace(fake, args, {}, loss, replace=replace)
        grads = vjp(losses, np.ones(1), [c.handle for c in caps] + list(floats.values()))
        for c, g in zip(caps, grads, strict=False):
            per.setdefault(c.role, []).append(g)
        per_x.extend(grads[len(caps) :])
    want = {
        role: np.sum(gs, axis=0) if role == "position" else np.concatenate(gs, axis=axis)
        for role, gs in per.items()
    }
    return want, (np.concatenate(per_x) if per_x else None)


def jacobian_oracle(fake: FakeModel, ids: np.ndarray, loss: Any) -> np.ndarray:
    """The word lookup's slice i of dL_i/d out over the full batch (B backwards)."""
    fake = as64(fake)
    losses, caps, _ = trace(fake, (ids,), {}, loss)
    word = next(c for c in caps if c.role == "word")
    rows = []
    for i in range(losses.shape[0]):
        e = np.zeros(losses.shape[0])
        e[i] = 1.0
        rows.append(vjp(losses, e, [word.handle])[0][i])
    return np.stack(rows)


def lookup(res: embgrad.Gradients, role: str) -> embgrad.LookupGrad:
    (name,) = [n for n in res.layers if res[n].role == role]
    return res[name]


def close(kit: FakeKit, got: Any, want: np.ndarray) -> None:
    got = kit.numpy(got).astype(np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(scale, 1e-30))


def run(
    kit: FakeKit, fake: FakeModel, ids: np.ndarray, x: np.ndarray | None = None, **kw: Any
) -> embgrad.Gradients:
    inputs = kit.ids(ids) if x is None else (kit.ids(ids), kit.floats(x))
    loss = kit.loss(kw.pop("loss", "tanh"))
    return embgrad.gradients(kit.model(fake), inputs, loss, **kw)


def compare(
    kit: FakeKit, fake: FakeModel, ids: np.ndarray, x: np.ndarray | None = None, **kw: Any
) -> embgrad.Gradients:
    """The harness: ``gradients`` on the kit's mirror against the fake's per-sample loop."""
    loss = kw.get("loss", "tanh")
    res = run(kit, fake, ids, x, **kw)
    want, want_x = loop_oracle(fake, ids, x, FakeKit().loss(loss), kw.get("replace"))
    roles = {res[n].role for n in res.layers}
    assert roles <= set(want) and roles == (set(want) if kw.get("layers") is None else roles)
    for role in roles:
        g, got = want[role], lookup(res, role).output_grad
        close(kit, got, g.reshape(kit.numpy(got).shape) if fake.fold else g)
    if x is not None:
        (key,) = res.input_grads
        close(kit, res.input_grads[key], want_x)  # type: ignore[arg-type]
    assert res.framework == kit.name
    return res


# -- the harness over layouts, broadcast positions, float inputs and every check ---------------
@pytest.mark.parametrize("check", ["auto", "probe", "exact", "off"])
@pytest.mark.parametrize("layout", ["BT", "TB"])
@pytest.mark.parametrize("position", [None, "1d", "2d"])
def test_matches_the_per_sample_loop(kit: FakeKit, check: str, layout: str, position: Any) -> None:
    fake = make_fake(layout=layout, position=position)
    x = make_x(B) if position != "1d" else None
    res = compare(kit, fake, make_ids(fake, B, T), x, check=check)
    assert res.check == ("probe" if check == "auto" else check)
    assert lookup(res, "word").batch_axis == (1 if layout == "TB" else 0)
    if position:
        assert lookup(res, "position").batch_axis is None
        assert "batch sums" in lookup(res, "position").note
    # the sparse per-sample table rows, built through the kit's Ops, scatter the same gradients
    ids = make_ids(fake, B, T)
    grad = kit.numpy(lookup(res, "word").output_grad).astype(np.float64)
    if layout == "TB":
        ids, grad = ids.T, grad.transpose(1, 0, 2)
    want = np.zeros((B, V, D))
    for b in range(B):
        np.add.at(want[b], ids[b], grad[b])
    close(kit, lookup(res, "word").table_grad().to_dense(), want)


@pytest.mark.parametrize("check", ["auto", "probe", "exact", "off"])
def test_single_sample(kit: FakeKit, check: str) -> None:
    fake = make_fake(position="1d", couple=True)  # coupling is harmless with one sample
    res = compare(kit, fake, make_ids(fake, 1, T), check=check)
    assert res.check == "single"


def test_quadratic_loss(kit: FakeKit) -> None:
    fake = make_fake(position="2d")
    compare(kit, fake, make_ids(fake, B, T), make_x(B), loss="quad")


# -- batch axes --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["BT", "TB"])
def test_ties_are_resolved_by_the_probe_and_remembered(kit: FakeKit, layout: str) -> None:
    fake = make_fake(layout=layout, position="1d")
    ids = make_ids(fake, B, B)  # T == B: both axes (and the positions' axis) have size B
    model = kit.model(fake)
    loss = kit.loss("tanh")
    with pytest.raises(BatchAxisError, match="ambiguous"):
        embgrad.gradients(model, kit.ids(ids), loss, check="off")
    first = embgrad.gradients(model, kit.ids(ids), loss, check="auto")
    again = embgrad.gradients(model, kit.ids(ids), loss, check="auto")
    assert (first.check, again.check) == ("probe", "probe-cached")
    want, _ = loop_oracle(fake, ids, None, FakeKit().loss("tanh"))
    for res in (first, again):
        assert lookup(res, "word").batch_axis == (1 if layout == "TB" else 0)
        assert lookup(res, "position").batch_axis is None
        close(kit, lookup(res, "word").output_grad, want["word"])
        close(kit, lookup(res, "position").output_grad, want["position"])


def test_batch_axis_given(kit: FakeKit) -> None:
    fake = make_fake(layout="TB")  # an int applies to every lookup
    res = compare(kit, fake, make_ids(fake, B, T), make_x(B), check="off", batch_axis=1)
    assert lookup(res, "word").batch_axis == 1


def test_a_folded_batch_is_found_by_the_probe(kit: FakeKit) -> None:
    fake = make_fake(fold=True)
    res = compare(kit, fake, make_ids(fake, B, T))
    word = lookup(res, "word")
    assert word.batch_axis == 0 and tuple(word.output_grad.shape) == (B, T, D)
    assert "folded" in word.note


def test_a_declared_fold_needs_no_probe(kit: FakeKit) -> None:
    fake = make_fake(fold=True)
    ids = make_ids(fake, B, T)
    with pytest.raises(BatchAxisError, match="runs no probe"):
        run(kit, fake, ids, check="off")
    res = compare(kit, fake, ids, check="off", batch_axis="folded")
    assert lookup(res, "word").batch_axis == 0 and "declared" in lookup(res, "word").note


def test_interleaved_rows_are_no_fold(kit: FakeKit) -> None:
    fake = make_fake(fold=True, layout="TB")  # (T, B) ids flattened: row t·B + b
    with pytest.raises(BatchAxisError, match="interleaved"):
        run(kit, fake, make_ids(fake, B, T))


# -- coupling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("check", ["auto", "probe"])
def test_coupling_is_detected(kit: FakeKit, check: str) -> None:
    fake = make_fake(couple=True)
    with pytest.raises(CouplingError, match="samples interact"):
        run(kit, fake, make_ids(fake, B, T), check=check)


def test_coupled_samples_exact_loop(kit: FakeKit) -> None:
    fake = make_fake(couple=True)
    ids = make_ids(fake, B, T)
    res = run(kit, fake, ids, check="exact")
    close(kit, lookup(res, "word").output_grad, jacobian_oracle(fake, ids, FakeKit().loss("tanh")))


# -- selection, reachability, substitution, losses ----------------------------------------------
def test_layers_select_by_role(kit: FakeKit) -> None:
    fake = make_fake(position="1d")
    res = compare(kit, fake, make_ids(fake, B, T), layers="position")
    assert [res[n].role for n in res.layers] == ["position"]
    with pytest.raises(NoLookupError, match="selects none"):
        run(kit, fake, make_ids(fake, B, T), layers="nothing*")


def test_unreached_lookups_are_left_out_or_refused(kit: FakeKit) -> None:
    fake = make_fake(position="1d", detach="position")
    ids = make_ids(fake, B, T)
    res = run(kit, fake, ids)
    assert [res[n].role for n in res.layers] == ["word"] and len(res.unreached) == 1
    with pytest.raises(NoLookupError, match="do not reach"):
        run(kit, fake, ids, layers="position")


def test_no_reached_lookup_is_an_error(kit: FakeKit) -> None:
    fake = make_fake(detach="word")
    with pytest.raises(NoLookupError, match="reach none"):
        run(kit, fake, make_ids(fake, B, T), make_x(B))


@pytest.mark.parametrize("check", ["auto", "exact"])
def test_replace_takes_gradients_at_the_substitute(kit: FakeKit, check: str) -> None:
    fake = make_fake(position="1d")

    def replace(name: str, role: str, out: Any) -> Any:
        return out * 0.5 if role == "word" else None

    compare(kit, fake, make_ids(fake, B, T), check=check, replace=replace)


def test_a_scalar_loss_is_refused(kit: FakeKit) -> None:
    fake = make_fake()
    with pytest.raises(LossError, match="scalar"):
        run(kit, fake, make_ids(fake, B, T), loss="scalar")
