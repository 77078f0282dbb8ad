"""The core's decisions (capture.py, probe.py), exercised through a numpy fake framework.

Every rule runs through one harness, :func:`compare`: ``embgrad.gradients`` on a
:class:`FakeModel` against a slow oracle that knows nothing of embgrad — one forward and one
backward per sample, each on that sample alone (``loop_oracle``) — or, where samples interact
or dropout draws masks over the whole batch, one backward of L_i per sample over the full batch
(``jacobian_oracle``). A few closed forms pin the fake's own autodiff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import embgrad
from embgrad import backends
from embgrad.core import registry
from embgrad.errors import (
    BatchAxisError,
    CouplingError,
    InputError,
    LossError,
    NoLookupError,
    UnsupportedModelError,
)
from fakes.numpy_backend import (
    FakeBackend,
    FakeEmbedding,
    FakeModel,
    PositionEmbedding,
    Tensor,
    WordEmbedding,
    trace,
    vjp,
)

WORD = "embeddings.word_embeddings"
POS = "embeddings.position_embeddings"
TANH_W = np.array([0.7, -1.3, 0.4, 2.0, -0.5])


pytestmark = pytest.mark.usefixtures("fake_backend")  # tests/core/conftest.py


# -- losses ------------------------------------------------------------------------------------
def tanh_loss(h: Tensor) -> Tensor:
    """L_i = Σ_t w · tanh(h_it)."""
    return (h.tanh() * TANH_W[: h.shape[-1]]).sum(axis=(1, 2))


def quad_loss(h: Tensor) -> Tensor:
    """L_i = ½ Σ_t ||h_it||² + Σ h_it."""
    return (h * h * 0.5 + h).sum(axis=(1, 2))


# -- inputs and oracles ------------------------------------------------------------------------
def make_ids(model: FakeModel, batch: int, length: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.word.weight.shape[0], size=(batch, length))
    return ids.T.copy() if model.layout == "TB" else ids


def _split(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    return (inputs if isinstance(inputs, tuple) else (inputs,)), {}


def _batch_lookup(name: str) -> bool:
    return not name.startswith(POS)


def _dtype_rtol(model: FakeModel) -> float:
    return 1e-12 if model.dtype == np.float64 else 1e-5


def loop_oracle(
    model: FakeModel, inputs: Any, loss_fn: Callable[[Any], Any], replace: Any = None
) -> tuple[dict[str, np.ndarray], dict[str | int, np.ndarray]]:
    """Per-sample gradients from B forwards, each on one sample alone, and B backwards."""
    args, kwargs = _split(inputs)
    ids_axis = 1 if model.layout == "TB" else 0

    def sample(i: int, key: Any, x: Any) -> Any:
        if not isinstance(x, np.ndarray):
            return x
        axis = ids_axis if x.dtype.kind in "iu" else 0
        return np.take(x, [i], axis=axis)

    ids = args[0] if args else kwargs["ids"]
    batch = ids.shape[ids_axis]
    out: dict[str, list[np.ndarray]] = {}
    out_in: dict[str | int, list[np.ndarray]] = {}
    for i in range(batch):
        a = tuple(sample(i, k, x) for k, x in enumerate(args))
        kw = {k: sample(i, k, x) for k, x in kwargs.items()}
        losses, caps, floats = trace(model, a, kw, loss_fn, replace=replace)
        assert losses.shape == (1,)
        grads = vjp(losses, np.ones(1), [c.handle for c in caps] + list(floats.values()))
        for c, g in zip(caps, grads, strict=False):
            out.setdefault(c.name, []).append(g)
        for k, g in zip(floats, grads[len(caps) :], strict=True):
            out_in.setdefault(k, []).append(g)
    per = {
        n: np.concatenate(gs, axis=ids_axis) if _batch_lookup(n) else np.sum(gs, axis=0)
        for n, gs in out.items()
    }
    return per, {k: np.concatenate(gs, axis=0) for k, gs in out_in.items()}


def jacobian_oracle(
    model: FakeModel, inputs: Any, loss_fn: Callable[[Any], Any], *, seed: int, train: bool
) -> dict[str, np.ndarray]:
    """Slice i of dL_i/d out over the full batch (one forward with ``seed``, B backwards)."""
    args, kwargs = _split(inputs)
    was, model.training = model.training, train
    try:
        losses, caps, _ = trace(model, args, kwargs, loss_fn, seed=seed)
    finally:
        model.training = was
    axis = 1 if model.layout == "TB" else 0
    batch = losses.shape[0]
    per: dict[str, list[np.ndarray]] = {c.name: [] for c in caps}
    for i in range(batch):
        e = np.zeros(batch)
        e[i] = 1.0
        for c, g in zip(caps, vjp(losses, e, [c.handle for c in caps]), strict=True):
            per[c.name].append(np.take(g, i, axis=axis) if _batch_lookup(c.name) else g)
    return {
        n: np.stack(gs, axis=axis) if _batch_lookup(n) else np.sum(gs, axis=0)
        for n, gs in per.items()
    }


def assert_close(got: Any, want: np.ndarray, rtol: float) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    scale = float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-30))


def compare(
    model: FakeModel,
    inputs: Any,
    loss_fn: Callable[[Any], Any] = tanh_loss,
    *,
    check: str = "auto",
    expect: str | None = None,
    **kw: Any,
) -> embgrad.Gradients:
    """The harness: ``gradients`` against the per-sample loop, every lookup and float input."""
    res = embgrad.gradients(model, inputs, loss_fn, check=check, **kw)  # type: ignore[arg-type]
    want, want_in = loop_oracle(model, inputs, loss_fn, kw.get("replace"))
    rtol = _dtype_rtol(model)
    selected = [n for n in want if n in res]
    assert selected, (list(want), res.layers)
    for name in selected:
        assert_close(res[name].output_grad, want[name], rtol)
        if len(res.losses) > 1:  # with B = 1 a leading size-1 axis is as good as none
            assert res[name].per_sample == _batch_lookup(name)
    if kw.get("input_grads", True):
        assert set(res.input_grads) == set(want_in)
        for k, g in want_in.items():
            assert_close(res.input_grads[k], g, rtol)
    else:
        assert res.input_grads == {}
    assert res.framework == "fake"
    batch = len(res.losses)
    # a probe that ran says "probe" (with check="auto" too), as Gradients.check documents
    how = expect or ("single" if batch == 1 else "probe" if check == "auto" else check)
    assert res.check == how
    assert (res.probe_residual is not None) == (how == "probe")
    assert model.training is False and model.events[-1] == "close"
    return res


# -- the fake itself ---------------------------------------------------------------------------
def test_autodiff_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    a0, b0, x0 = rng.normal(size=(3, 4, 2)), rng.normal(size=(4, 2)), rng.normal(size=(3, 2))

    def f(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
        h = (a + b).transpose((1, 0, 2)).transpose((1, 0, 2))
        h = h - h.mean(axis=0, keepdims=True)
        h = h * x.reshape((3, 1, 2))
        return (h.tanh() * 1.5 + h * h - 2.0).sum(axis=(1, 2))

    cot = rng.normal(size=3)
    leaves = [Tensor(a0), Tensor(b0), Tensor(x0)]
    grads = vjp(f(*leaves), cot, leaves)
    for k, base in enumerate((a0, b0, x0)):
        num = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            vals = []
            for step in (1e-6, -1e-6):
                moved = [t.value.copy() for t in leaves]
                moved[k][idx] += step
                vals.append(float(cot @ f(*map(Tensor, moved)).value))
            num[idx] = (vals[0] - vals[1]) / 2e-6
        np.testing.assert_allclose(grads[k], num, rtol=1e-6, atol=1e-8)


def test_closed_form_tanh_with_positions() -> None:
    """dL_i/d out_it = w ⊙ (1 - tanh²(h_it)); the position gradient is its batch sum."""
    model = FakeModel(dim=3, position="1d")
    ids = make_ids(model, 4, 5)
    h = model.word.weight[ids] + model.position.weight[np.arange(5)]  # type: ignore[union-attr]
    g = TANH_W[:3] * (1 - np.tanh(h) ** 2)
    res = compare(model, ids)
    np.testing.assert_allclose(res[WORD].output_grad, g, rtol=1e-13)
    np.testing.assert_allclose(res[POS].output_grad, g.sum(axis=0), rtol=1e-13)


# -- the harness over shapes, layouts and every check ------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 4),
    dim=st.integers(1, 3),
    vocab=st.integers(2, 6),
    layout=st.sampled_from(["BT", "TB"]),
    position=st.sampled_from([None, "1d", "2d"]),
    floats=st.booleans(),
    dtype=st.sampled_from([np.float64, np.float32]),
    check=st.sampled_from(["auto", "probe", "exact", "off"]),
    retained=st.booleans(),
    quad=st.booleans(),
)
def test_harness(
    batch: int,
    length: int,
    dim: int,
    vocab: int,
    layout: str,
    position: str | None,
    floats: bool,
    dtype: Any,
    check: str,
    retained: bool,
    quad: bool,
) -> None:
    # check="off" cannot tell B == T apart (BatchAxisError, tested below) and trusts a (T,)
    # position axis of size B; "exact" has no probe to tell either (see test_exact_*).
    assume(not (batch == length and batch > 1 and check in ("off", "exact")))
    model = FakeModel(
        vocab, dim, layout=layout, position=position, dtype=dtype, retained_exact=retained
    )
    ids = make_ids(model, batch, length, seed=batch * 10 + length)
    x = np.random.default_rng(5).normal(size=(batch, dim)).astype(dtype)
    inputs: Any = (ids, x) if floats else ids
    res = compare(model, inputs, quad_loss if quad else tanh_loss, check=check)
    assert res.batch_size == batch
    # with B = T = 1 both axes have size 1 and either is right: the first is reported
    assert res[WORD].batch_axis == (1 if layout == "TB" and batch * length > 1 else 0)
    if position and batch > 1:
        assert res[POS].batch_axis is None


# -- batch axes --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["BT", "TB"])
def test_batch_axis_given(layout: str) -> None:
    axis = 1 if layout == "TB" else 0
    model = FakeModel(layout=layout)
    ids = make_ids(model, 3, 4)
    for one in (axis, axis - 2):  # an int applies to every lookup
        res = compare(model, ids, check="off", batch_axis=one)
        assert res[WORD].batch_axis == axis
    model = FakeModel(layout=layout, position="1d")
    mappings: list[dict[str, int | None]] = [{WORD: axis, POS: None}, {WORD: axis}]
    for mapping in mappings:  # a name left out is found as usual
        for check in ("off", "probe", "exact"):
            res = compare(model, ids, check=check, batch_axis=mapping)
            assert res[WORD].batch_axis == axis and res[POS].batch_axis is None
    with pytest.raises(InputError, match="whose ids have shape"):  # the int reaches (T,) too
        embgrad.gradients(model, ids, tanh_loss, batch_axis=1 if layout == "TB" else -2)


@pytest.mark.parametrize(
    ("given", "match"),
    [
        (2, "batch_axis=2"),
        (-3, "batch_axis=-3"),
        ("0", "batch_axis='0'"),
        (1, "not the batch size 3"),
        ({WORD: 1}, "not the batch size 3"),
        ({WORD: 0, POS: 0}, "not the batch size 3"),
    ],
)
def test_batch_axis_invalid(given: Any, match: str) -> None:
    model = FakeModel(position="1d")
    ids = make_ids(model, 3, 4)
    with pytest.raises(InputError, match=match):
        embgrad.gradients(model, ids, tanh_loss, batch_axis=given)
    # a value that is no axis at all is refused before the model is opened
    assert model.events == ([] if given == "0" else ["open:eval", "close"])


@pytest.mark.parametrize("layout", ["BT", "TB"])
def test_ambiguous_axes(layout: str) -> None:
    """B == T: check='off' refuses to guess, the probe resolves it, a given axis settles it."""
    model = FakeModel(layout=layout)
    ids = make_ids(model, 3, 3)
    axis = 1 if layout == "TB" else 0
    with pytest.raises(BatchAxisError, match=WORD):
        embgrad.gradients(model, ids, tanh_loss, check="off")
    res = compare(model, ids, check="probe")
    assert res[WORD].batch_axis == axis
    # the remembered verdict carries the resolved axis: no BatchAxisError, no probe
    before = model.counts["backward"]
    res = embgrad.gradients(model, ids, tanh_loss, check="auto")
    assert res.check == "probe-cached" and res[WORD].batch_axis == axis
    assert model.counts["backward"] == before + 1
    res = compare(model, ids, check="off", batch_axis=axis)
    assert res[WORD].batch_axis == axis


def test_ambiguous_axes_exact() -> None:
    """The exact loop resolves ties by where sample i's gradient lives."""
    for layout in ("BT", "TB"):
        model = FakeModel(layout=layout)
        res = compare(model, make_ids(model, 3, 3), check="exact")
        assert res[WORD].batch_axis == (1 if layout == "TB" else 0)


# -- broadcast ids -----------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["1d", "2d"])
@pytest.mark.parametrize(
    ("length", "check"),
    # T == B = 3: a (T,) axis of the batch size, told apart by the probe only (see below)
    [(4, c) for c in ("auto", "probe", "exact", "off")] + [(3, "auto"), (3, "probe")],
)
def test_broadcast_position_ids(position: str, length: int, check: str) -> None:
    model = FakeModel(position=position)
    res = compare(model, make_ids(model, 3, length), check=check)
    pos = res[POS]
    assert pos.batch_axis is None and not pos.per_sample
    assert "batch sums" in pos.note and res[WORD].note == ""
    assert pos.output_grad.shape == ((length, 3) if position == "1d" else (1, length, 3))
    rows = pos.table_grad()
    assert rows.shape == (1, 16, 3) and not rows.per_sample
    dense = rows.to_dense()
    np.testing.assert_allclose(
        dense[0, :length], pos.output_grad.reshape(length, 3), rtol=1e-13, atol=1e-15
    )
    assert not dense[0, length:].any()


def test_broadcast_ids_off_trusts_size_b_axis() -> None:
    """check='off' with (T,) position ids and T == B trusts the shapes: axis 0 has the batch
    size, so it is taken for the batch axis (pinned: per_sample claims what is a batch sum);
    batch_axis={name: None} says otherwise and gives the batch sum."""
    model = FakeModel(position="1d")
    ids = make_ids(model, 3, 3)
    res = embgrad.gradients(model, ids, tanh_loss, check="off", batch_axis={WORD: 0})
    assert res[POS].batch_axis == 0 and res[POS].per_sample
    res = compare(model, ids, check="off", batch_axis={WORD: 0, POS: None})
    assert res[POS].batch_axis is None
    res = compare(model, ids, check="exact", batch_axis={WORD: 0, POS: None})
    assert res[POS].batch_axis is None


def test_exact_broadcast_ids_of_batch_size() -> None:
    """(T,) position ids with T == B: the exact loop must give the batch sum, not slice i of
    sample i's position gradient (it did before the broadcast rule was applied there too)."""
    model = FakeModel(position="1d")
    compare(model, make_ids(model, 3, 3), check="exact", batch_axis={WORD: 0})


# -- coupling ----------------------------------------------------------------------------------
def _coupled_closed_form(model: FakeModel, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact per-sample, summed-slice) gradients of tanh_loss after batch-mean centring."""
    out = model.word.weight[ids]
    centred = out - out.mean(axis=0, keepdims=True)
    g = TANH_W[: out.shape[-1]] * (1 - np.tanh(centred) ** 2)
    batch = out.shape[0]
    return g * (1 - 1 / batch), g - g.mean(axis=0, keepdims=True)


@pytest.mark.parametrize("check", ["auto", "probe"])
def test_coupling_detected(check: str) -> None:
    model = FakeModel(couple=True)
    ids = make_ids(model, 4, 3)
    for _ in range(2):  # a failed probe is not remembered: the second call probes again
        with pytest.raises(CouplingError, match="samples interact in lookup"):
            embgrad.gradients(model, ids, tanh_loss, check=check)  # type: ignore[arg-type]
    assert model.counts["backward"] == 4
    assert model.events == ["open:eval", "close"] * 2


@pytest.mark.parametrize("retained", [True, False])
def test_coupling_exact_is_right(retained: bool) -> None:
    model = FakeModel(couple=True, retained_exact=retained)
    ids = make_ids(model, 4, 3)
    res = embgrad.gradients(model, ids, tanh_loss, check="exact")
    exact, _ = _coupled_closed_form(model, ids)
    assert res.check == "exact" and res.probe_residual is None
    np.testing.assert_allclose(res[WORD].output_grad, exact, rtol=1e-12)
    assert_close(
        res[WORD].output_grad,
        jacobian_oracle(model, ids, tanh_loss, seed=0, train=False)[WORD],
        1e-12,
    )
    assert model.counts["backward"] == 4
    assert model.counts["forward"] == (1 if retained else 4)


def test_coupling_off_trusts() -> None:
    """check='off' returns slice i of Σ_j dL_j/d out — wrong for coupled samples, by design."""
    model = FakeModel(couple=True)
    ids = make_ids(model, 4, 3)
    res = embgrad.gradients(model, ids, tanh_loss, check="off")
    exact, summed = _coupled_closed_form(model, ids)
    np.testing.assert_allclose(res[WORD].output_grad, summed, rtol=1e-12, atol=1e-15)
    assert not np.allclose(res[WORD].output_grad, exact)
    assert model.counts["backward"] == 1


# -- the remembered verdict --------------------------------------------------------------------
def test_remembered_verdict() -> None:
    model = FakeModel(position="1d")
    ids = make_ids(model, 3, 4)
    compare(model, ids, check="auto")
    assert model.counts["backward"] == 2  # the sum and the probe
    res = embgrad.gradients(model, ids, tanh_loss, check="auto")
    assert res.check == "probe-cached" and res.probe_residual is None
    assert res[POS].batch_axis is None and res[WORD].batch_axis == 0
    assert model.counts["backward"] == 3  # one backward, no probe
    want, _ = loop_oracle(model, ids, tanh_loss)
    assert_close(res[WORD].output_grad, want[WORD], 1e-12)
    # "probe" probes every time; "off" never does
    compare(model, ids, check="probe")
    assert model.counts["backward"] == 5
    compare(model, ids, check="off")
    assert model.counts["backward"] == 6
    # another batch size and length: the same structure, no probe (issue 12)
    compare(model, make_ids(model, 2, 6), check="auto", expect="probe-cached")
    assert model.counts["backward"] == 7
    # another loss function's code, another selection: probe again
    for loss, b, layers in ((quad_loss, 3, "auto"), (tanh_loss, 3, "word")):
        before = model.counts["backward"]
        res = compare(model, make_ids(model, b, 4), loss, check="auto", layers=layers)
        assert model.counts["backward"] == before + 2
    # a fresh model of the same structure has no verdict
    other = FakeModel(position="1d")
    compare(other, ids, check="auto")
    assert other.counts["backward"] == 2


def test_remembered_verdict_per_mode() -> None:
    model = FakeModel()
    ids = make_ids(model, 3, 2)
    compare(model, ids, check="auto")
    res = compare(model, ids, check="auto", mode="train")
    assert res.mode == "train" and model.counts["backward"] == 4


# -- B = 1 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("check", ["auto", "probe", "exact", "off"])
def test_single_sample(check: str) -> None:
    model = FakeModel(position="1d", couple=True)  # coupling is harmless with one sample
    ids = make_ids(model, 1, 4)
    res = compare(model, ids, check=check)
    assert res.check == "single" and model.counts["backward"] == 1


# -- layer selection ---------------------------------------------------------------------------
class WideWord(WordEmbedding):
    pass


@pytest.mark.parametrize(
    ("layers", "want"),
    [
        ("auto", [WORD, POS]),
        (WORD, [WORD]),
        ("*position*", [POS]),
        ("embeddings.*", [WORD, POS]),
        ("word", [WORD]),
        ("position", [POS]),
        (f"{POS}.weight", [POS]),
        (WordEmbedding, [WORD]),
        (PositionEmbedding, [POS]),
        (FakeEmbedding, [WORD, POS, "decoder"]),
        (["word", PositionEmbedding], [WORD, POS]),
        ("output", ["decoder"]),
        (("decoder", "*word*"), [WORD, "decoder"]),
    ],
)
def test_layer_selection(layers: Any, want: list[str]) -> None:
    model = FakeModel(position="1d", output_lookup=True)
    res = compare(model, make_ids(model, 3, 4), layers=layers)
    assert sorted(res.layers) == sorted(want)


@pytest.mark.parametrize(
    ("layers", "error", "match"),
    [
        ("nothing*", NoLookupError, "selects none"),
        (WideWord, NoLookupError, "selects none"),
        ([], NoLookupError, "selects none"),
        (3, InputError, "layers= takes names"),
    ],
)
def test_layer_selection_none(layers: Any, error: type[Exception], match: str) -> None:
    model = FakeModel(position="1d")
    with pytest.raises(error, match=match):
        embgrad.gradients(model, make_ids(model, 3, 4), tanh_loss, layers=layers)
    assert model.events == ["open:eval", "close"]


def test_no_lookups() -> None:
    model = FakeModel(lookups=False)
    x = np.ones((3, 2))
    with pytest.raises(NoLookupError, match="no embedding lookup"):
        embgrad.gradients(model, (np.zeros((3, 2), dtype=np.int64), x), tanh_loss)
    assert model.events == ["open:eval", "close"]


# -- loss validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("loss_fn", "batch", "nan", "error", "match"),
    [
        (lambda h: h.sum(), 3, False, LossError, "returned a scalar"),
        (lambda h: h.sum(axis=2), 3, False, LossError, r"returned shape \(3, 4\)"),
        (lambda h: h.value.sum(axis=(1, 2)), 3, False, LossError, "not a fake Tensor"),
        (tanh_loss, 0, False, InputError, "the batch is empty"),
        (tanh_loss, 3, True, LossError, r"non-finite losses .* sample\(s\) \[1\]"),
    ],
)
def test_loss_validation(
    loss_fn: Any, batch: int, nan: bool, error: type[Exception], match: str
) -> None:
    model = FakeModel(dim=2)
    x = np.ones((batch, 2))
    if nan:
        x[1, 0] = np.nan
    with pytest.raises(error, match=match):
        embgrad.gradients(model, (make_ids(model, batch, 4), x), loss_fn)
    assert model.events == ["open:eval", "close"] and model.training is False


@pytest.mark.parametrize("check", ["off", "auto", "probe"])
def test_loss_values_are_read_only_after_the_backward(
    monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    """Reading the losses on the host (the finite check) before the backward would make a GPU
    wait for the forward before any backward kernel is queued: the core reads them after."""
    from embgrad.core.ops import NumpyOps
    from fakes.numpy_backend import FakeSession

    model = FakeModel()
    losses: list[np.ndarray] = []
    reads: list[int] = []  # backwards run so far, at each read of the losses' values
    forward, to_numpy = FakeSession.forward, NumpyOps.to_numpy

    def spy_forward(self: Any, *a: Any, **k: Any) -> Any:
        fwd = forward(self, *a, **k)
        losses.append(fwd.losses)
        return fwd

    def spy_to_numpy(self: Any, x: Any) -> np.ndarray:
        if any(x is arr for arr in losses):
            reads.append(model.counts["backward"])
        return to_numpy(self, x)

    monkeypatch.setattr(FakeSession, "forward", spy_forward)
    monkeypatch.setattr(NumpyOps, "to_numpy", spy_to_numpy)
    ids = make_ids(model, 3, 4)
    embgrad.gradients(model, ids, tanh_loss, check=check)  # type: ignore[arg-type]
    assert reads and min(reads) >= 1


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"check": "never"}, InputError, "check='never'"),
        ({"mode": "test"}, InputError, "mode='test'"),
        ({"loss_fn": "loss"}, InputError, "loss_fn must be callable"),
    ],
)
def test_argument_validation(kw: dict[str, Any], error: type[Exception], match: str) -> None:
    model = FakeModel()
    args = {"loss_fn": tanh_loss, **kw}
    with pytest.raises(error, match=match):
        embgrad.gradients(model, make_ids(model, 2, 2), **args)
    assert model.events == []  # refused before the model is opened


def test_inputs_checked_by_session() -> None:
    model = FakeModel()
    with pytest.raises(InputError, match="not a numpy array"):
        embgrad.gradients(model, [[1, 2]], tanh_loss)
    with pytest.raises(InputError, match="str keys"):
        embgrad.gradients(model, {0: make_ids(model, 2, 2)}, tanh_loss)
    assert model.events == ["open:eval", "close"]


# -- replace= ----------------------------------------------------------------------------------
@pytest.mark.parametrize("check", ["auto", "exact", "off"])
def test_replace(check: str) -> None:
    seen: list[tuple[str, str]] = []

    def replace(name: str, role: str, out: np.ndarray) -> np.ndarray | None:
        seen.append((name, role))
        return out * 0.25 + 0.5 if role == "word" else None

    model = FakeModel(position="2d")
    ids = make_ids(model, 3, 4)
    res = compare(model, ids, check=check, replace=replace)
    sub = model.word.weight[ids] * 0.25 + 0.5
    h = sub + model.position.weight[np.arange(4)][None]  # type: ignore[union-attr]
    np.testing.assert_allclose(
        res[WORD].output_grad, TANH_W[:3] * (1 - np.tanh(h) ** 2), rtol=1e-13
    )
    np.testing.assert_array_equal(res[WORD].output, sub)
    np.testing.assert_array_equal(res[POS].output, model.position.weight[np.arange(4)][None])  # type: ignore[union-attr]
    assert (WORD, "word") in seen and (POS, "position") in seen
    plain = embgrad.gradients(model, ids, tanh_loss, check=check)  # type: ignore[arg-type]
    assert not np.allclose(plain[WORD].output_grad, res[WORD].output_grad)


def test_replace_wrong_shape() -> None:
    model = FakeModel()
    with pytest.raises(InputError, match="replace"):
        embgrad.gradients(model, make_ids(model, 2, 3), tanh_loss, replace=lambda n, r, o: o[:1])
    assert model.events == ["open:eval", "close"]


# -- float inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("check", ["auto", "probe", "exact", "off"])
@pytest.mark.parametrize("layout", ["BT", "TB"])
def test_float_input_grads(check: str, layout: str) -> None:
    model = FakeModel(layout=layout, position="1d")
    ids = make_ids(model, 3, 4)
    x = np.random.default_rng(2).normal(size=(3, 3))
    res = compare(model, (ids, x), check=check)
    assert set(res.input_grads) == {1} and res.input_grads[1].shape == (3, 3)
    cached = "probe-cached" if check == "auto" else None
    res = compare(model, {"ids": ids, "x": x}, check=check, expect=cached)
    assert set(res.input_grads) == {"x"}
    res = compare(model, (ids, x), check=check, input_grads=False, expect=cached)
    assert res.input_grads == {}


def test_float_input_closed_form() -> None:
    """h = W[ids] ⊙ x_i: dL_i/dx_i = Σ_t w ⊙ (1 - tanh²(h_it)) ⊙ W[ids_it]."""
    model = FakeModel(dim=3)
    ids = make_ids(model, 3, 4)
    x = np.random.default_rng(2).normal(size=(3, 3))
    out = model.word.weight[ids]
    g = TANH_W[:3] * (1 - np.tanh(out * x[:, None]) ** 2)
    res = embgrad.gradients(model, (ids, x), tanh_loss)
    np.testing.assert_allclose(res.input_grads[1], (g * out).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(res[WORD].output_grad, g * x[:, None], rtol=1e-13)


# -- sparse table rows -------------------------------------------------------------------------
def dense_table_oracle(
    ids: np.ndarray, grads: np.ndarray, vocab: int, padding_idx: int | None
) -> np.ndarray:
    """(B, V, D): sample i's row v is Σ_t [ids_it == v] g_it, the padding row zero."""
    batch, length = ids.shape
    out = np.zeros((batch, vocab, grads.shape[-1]), dtype=grads.dtype)
    for i in range(batch):
        for t in range(length):
            if ids[i, t] != padding_idx:
                out[i, ids[i, t]] += grads[i, t]
    return out


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 5),
    vocab=st.integers(2, 5),
    padding=st.booleans(),
    layout=st.sampled_from(["BT", "TB"]),
    check=st.sampled_from(["auto", "exact", "off"]),
    data=st.data(),
)
def test_table_grad(
    batch: int, length: int, vocab: int, padding: bool, layout: str, check: str, data: Any
) -> None:
    assume(not (batch == length and batch > 1 and check != "auto"))
    model = FakeModel(vocab, 2, layout=layout, padding_idx=0 if padding else None)
    ids_bt = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(0, vocab - 1), min_size=length, max_size=length),
                min_size=batch,
                max_size=batch,
            )
        ),
        dtype=np.int64,
    ).reshape(batch, length)
    ids_bt[0, 0] = ids_bt[0, -1]  # a duplicate id in one sample
    ids = ids_bt.T.copy() if layout == "TB" else ids_bt
    res = compare(model, ids, check=check)
    lk = res[WORD]
    grads = lk.output_grad.transpose(1, 0, 2) if layout == "TB" else lk.output_grad
    want = dense_table_oracle(ids_bt, grads, vocab, model.word.padding_idx)
    rows = lk.table_grad()
    assert rows.shape == (batch, vocab, 2) and rows.per_sample
    np.testing.assert_allclose(rows.to_dense(), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        res.table_grad(f"{WORD}.weight", dense=True), want, rtol=1e-12, atol=1e-15
    )
    sample, row, _ = rows.numpy()
    if padding:
        assert 0 not in row.tolist()
    assert len(set(zip(sample.tolist(), row.tolist(), strict=True))) == rows.nnz  # summed
    np.testing.assert_allclose(
        lk.table_grad_norms(), np.linalg.norm(want.reshape(batch, -1), axis=1), rtol=1e-12
    )


# -- training-mode randomness ------------------------------------------------------------------
@pytest.mark.parametrize("retained", [True, False])
@pytest.mark.parametrize("check", ["auto", "probe", "exact"])
def test_dropout_reseeded(retained: bool, check: str) -> None:
    """Train mode draws dropout masks from the seed; every re-run forward of one call gets the
    same seed, so the probe passes and the exact loop is exact."""
    model = FakeModel(dropout=0.5, retained_exact=retained)
    ids = make_ids(model, 4, 3)
    res = embgrad.gradients(model, ids, tanh_loss, check=check, mode="train", seed=7)  # type: ignore[arg-type]
    assert len(set(model.seeds)) == 1
    n_fwd = {"auto": 2, "probe": 2, "exact": 4}[check] if not retained else 1
    assert model.counts["forward"] == n_fwd
    want = jacobian_oracle(model, ids, tanh_loss, seed=model.seeds[0], train=True)
    assert_close(res[WORD].output_grad, want[WORD], 1e-12)
    assert (res[WORD].output_grad == 0).any()  # some entries dropped
    assert model.training is False and res.mode == "train"
    # the same seed gives the same masks, another seed others; eval mode draws none
    again = embgrad.gradients(model, ids, tanh_loss, check="off", mode="train", seed=7)
    np.testing.assert_array_equal(again[WORD].output_grad, res[WORD].output_grad)
    other = embgrad.gradients(model, ids, tanh_loss, check="off", mode="train", seed=8)
    assert not np.array_equal(other[WORD].output_grad, res[WORD].output_grad)
    compare(model, ids, check="off")


# -- the session is restored -------------------------------------------------------------------
def test_restored_after_error_in_forward() -> None:
    model = FakeModel()

    def boom(h: Tensor) -> Tensor:
        assert model.training and model.events[-1] == "open:train"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        embgrad.gradients(model, make_ids(model, 2, 2), boom, mode="train")
    assert model.events == ["open:train", "close"] and model.training is False
    assert model._recorder is None


# -- the registry ------------------------------------------------------------------------------
def test_registry() -> None:
    model = FakeModel()
    assert isinstance(backends.backend_for(model), FakeBackend)
    assert registry._CACHE[FakeModel] is backends.backend_for(model)
    backends.register_backend(FakeBackend)  # idempotent
    assert registry._REGISTERED.count(FakeBackend) == 1 and FakeModel not in registry._CACHE
    backends.unregister_backend(FakeBackend)
    with pytest.raises(UnsupportedModelError, match="FakeModel"):
        backends.backend_for(model)
    backends.unregister_backend(FakeBackend)  # no-op
    backends.register_backend(FakeBackend)
    assert isinstance(backends.backend_for(model), FakeBackend)


@pytest.mark.parametrize("layout", ["BT", "TB"])
@pytest.mark.parametrize("check", ["auto", "probe", "exact", "off"])
def test_one_sample_one_token(layout: str, check: str) -> None:
    """B = T = 1: both id axes have size 1 and either is right (this raised BatchAxisError)."""
    model = FakeModel(layout=layout, position="2d")
    res = compare(model, make_ids(model, 1, 1), check=check)
    assert res.check == "single" and res[WORD].batch_axis == 0


# -- the remembered verdict across shapes (issue 12) --------------------------------------------
def test_remembered_verdict_holds_across_ragged_shapes() -> None:
    """The verdict is keyed on the lookup structure, not the sizes: 100 ragged batches, one
    probe, and every answer equals the per-sample loop's."""
    model = FakeModel(position="1d")
    rng = np.random.default_rng(5)
    for k in range(100):
        batch, length = int(rng.integers(2, 9)), int(rng.integers(1, 14))
        ids = make_ids(model, batch, length, seed=k)
        compare(model, ids, check="auto", expect="probe" if k == 0 else "probe-cached")
    assert model.counts["backward"] == 101  # 100 sums and one probe


def test_remembered_axis_is_rederived_at_each_shape() -> None:
    """An axis resolved at B == T is reused where it is still of the batch size."""
    model = FakeModel(layout="TB")
    compare(model, make_ids(model, 3, 3), check="probe")
    res = compare(model, make_ids(model, 4, 4), check="auto", expect="probe-cached")
    assert res[WORD].batch_axis == 1
    res = compare(model, make_ids(model, 5, 2), check="auto", expect="probe-cached")
    assert res[WORD].batch_axis == 1


def test_coupled_model_is_caught_at_a_shape_it_was_not_probed_at() -> None:
    """A failed probe is never remembered, and a single-sample call (no probe) leaves nothing
    to remember: a coupled model raises at every new shape."""
    model = FakeModel(couple=True)
    embgrad.gradients(model, make_ids(model, 1, 4), tanh_loss)  # B=1: independent trivially
    for batch, length in [(3, 4), (5, 2), (2, 7)]:
        with pytest.raises(CouplingError):
            embgrad.gradients(model, make_ids(model, batch, length), tanh_loss)


def test_a_changed_lookup_structure_is_probed_again() -> None:
    """A model that takes another branch for longer inputs (here: a position lookup, and
    samples coupled) is another key: the new branch is probed and the coupling caught."""

    class Branchy(FakeModel):
        def __call__(self, ids: np.ndarray, x: Any = None) -> Tensor:
            long = ids.shape[1] > 5
            self.position = self._pos if long else None
            self.couple = long
            return super().__call__(ids, x)

    model = Branchy(position="1d")
    model._pos = model.position
    compare(model, make_ids(model, 3, 4), check="auto", expect="probe")
    compare(model, make_ids(model, 4, 3), check="auto", expect="probe-cached")
    with pytest.raises(CouplingError):
        embgrad.gradients(model, make_ids(model, 3, 8), tanh_loss)
