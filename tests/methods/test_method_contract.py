"""The methods' contract: EVERY registered method, in both frameworks, on one tiny classifier.

Each method is checked for
- its result's shapes and dtypes (scores (B, T) float64, losses (B,), ids (B, T) int64, ...);
- independence from its pass-size options (``internal_batch_size``, ``verify_rows``,
  ``max_bytes``: whichever it has), to 1e-5;
- padding invariance: the same texts padded longer give the same results on the real tokens
  (and 0 on the padding), with the method's ``mask`` option where it has one;
- agreement with its slow oracle in ``tests/shared/oracle_methods.py`` (one text at a time,
  unpadded, float64, one ``torch.autograd.grad`` per point), to 1e-5.

A new method needs one :data:`SPECS` entry (its options here and its oracle); the registry is
read at import, so a method without one fails :func:`test_every_registered_method_has_a_spec`.
Methods that propose swaps (``attributes_outputs`` False: HotFlip, its search) are compared by
their candidates and their measured changes instead of per-dimension attributions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle_methods as om  # noqa: E402
from embgrad.methods import get_method, list_methods  # noqa: E402
from embgrad.methods import plan as plan_module  # noqa: E402

# B, T, the padded T, D, hidden, classes, V: pairwise different, odd
B, T, T_PAD, D, H, C, V = 3, 7, 11, 5, 9, 13, 17
LENGTHS = (5, 7, 2)  # one text fills T, the others are padded
TARGETS = np.array([4, 0, 11])
PAD = 0
PARAMS = om.pooled_params(V, D, H, C)
TEXTS = [np.random.default_rng(5 + i).integers(1, V, size=n) for i, n in enumerate(LENGTHS)]

#: the options that only bound a pass's size, with values that cut this batch differently
PASS_SIZES = {"internal_batch_size": (1, 4), "verify_rows": (1, 4), "max_bytes": (1, 200)}


@dataclass(frozen=True)
class Spec:
    """How the contract runs one method: its ``options`` and its ``oracle``
    (``oracle(params, texts, targets, T, **options) -> dict`` of expected arrays: any of
    ``losses``, ``scores``, ``signed``, ``attributions``, ``delta``, and ``flips`` (per text,
    {(position, replacement id): estimate}) for methods that propose swaps); ``padding`` False
    with the reason where the method's results depend on the padded length by design."""

    options: dict[str, Any]
    oracle: Callable[..., dict[str, Any]] | None
    padding: str | None = None


SPECS: dict[str, Spec] = {
    "gradient": Spec({}, om.oracle_gradient),
    "grad_x_input": Spec({}, om.oracle_grad_x_input),
    "integrated_gradients": Spec(
        {"n_steps": 5, "baseline": "zeros", "rule": "gausslegendre"},
        om.oracle_integrated_gradients,
    ),
    "smoothgrad": Spec(
        {"n_samples": 3, "sigma": 0.5, "seed": 7},
        om.oracle_smoothgrad,
        padding="its noise is one draw of shape (B·n, T, D): a longer T draws other noise",
    ),
    "hotflip": Spec(
        {"k": 2, "verify": 3, "exclude_ids": [PAD], "replacements": "pieces"}, om.oracle_hotflip
    ),
    "hotflip_search": Spec(
        {
            "goal": 0.4,
            "direction": "increase",
            "budget": 2,
            "beam": 2,
            "k": 2,
            "verify": 3,
            "exclude_ids": [PAD],
            "replacements": "pieces",
        },
        None,  # replayed step by step below (every step's estimate and measured change)
    ),
}

METHODS = list_methods()


def test_every_registered_method_has_a_spec():
    missing = sorted(set(METHODS) - set(SPECS))
    assert not missing, f"add a SPECS entry (options, oracle) for the new method(s) {missing}"


# --- the two frameworks' versions of the classifier --------------------------------------------


def padded(length: int) -> tuple[np.ndarray, np.ndarray]:
    """The texts as ids (B, length) padded with PAD, and their mask (B, length)."""
    ids = np.full((B, length), PAD, dtype=np.int64)
    for b, t in enumerate(TEXTS):
        ids[b, : len(t)] = t
    return ids, ids != PAD


class TorchPooled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(V, D)
        self.lin1, self.lin2 = torch.nn.Linear(D, H), torch.nn.Linear(H, C)
        with torch.no_grad():
            self.embed.weight.copy_(torch.as_tensor(PARAMS["table"]))
            self.lin1.weight.copy_(torch.as_tensor(PARAMS["w1"].T))
            self.lin1.bias.copy_(torch.as_tensor(PARAMS["b1"]))
            self.lin2.weight.copy_(torch.as_tensor(PARAMS["w2"].T))
            self.lin2.bias.copy_(torch.as_tensor(PARAMS["b2"]))

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        h = torch.tanh(self.lin1(self.embed(input_ids)))
        m = attention_mask.to(h.dtype)[..., None]
        return self.lin2((h * m).sum(1) / m.sum(1))


def torch_case(length: int) -> tuple[Any, Any, Any]:
    ids, mask = padded(length)
    inputs = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask).long()}

    def loss(out: Any, rows: np.ndarray) -> Any:
        r = torch.as_tensor(TARGETS[rows])
        return torch.log_softmax(out, -1)[torch.arange(len(rows)), r]

    return TorchPooled().eval(), inputs, loss


def gluon_case(length: int) -> tuple[Any, Any, Any]:
    mx = pytest.importorskip("mxnet")
    from mxnet import gluon, nd

    class GluonPooled(gluon.Block):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.embed = gluon.nn.Embedding(V, D)
                self.lin1 = gluon.nn.Dense(H, flatten=False, in_units=D)
                self.lin2 = gluon.nn.Dense(C, in_units=H)

        def forward(self, ids: Any, mask: Any) -> Any:
            h = nd.tanh(self.lin1(self.embed(ids)))
            m = mask.expand_dims(2)
            return self.lin2((h * m).sum(axis=1) / m.sum(axis=1))

    net = GluonPooled()
    net.initialize(mx.init.Zero())
    net.embed.weight.set_data(nd.array(PARAMS["table"]))
    net.lin1.weight.set_data(nd.array(PARAMS["w1"].T))
    net.lin1.bias.set_data(nd.array(PARAMS["b1"]))
    net.lin2.weight.set_data(nd.array(PARAMS["w2"].T))
    net.lin2.bias.set_data(nd.array(PARAMS["b2"]))
    ids, mask = padded(length)

    def loss(out: Any, rows: np.ndarray) -> Any:
        return nd.pick(nd.log_softmax(out, axis=-1), nd.array(TARGETS[rows]), axis=-1)

    return net, (nd.array(ids), nd.array(mask)), loss


FRAMEWORKS = ["torch", pytest.param("gluon", marks=pytest.mark.gluon)]
CASES = {"torch": torch_case, "gluon": gluon_case}


@pytest.fixture(autouse=True)
def _small_passes(monkeypatch):
    monkeypatch.setattr(plan_module, "MIN_PASS_TOKENS", 1)  # tiny passes cut at each length
    monkeypatch.setattr(plan_module, "MAX_PAD_FRACTION", 0.0)


def run(framework: str, name: str, length: int = T, **extra: Any) -> Any:
    """``name`` on the texts padded to ``length``, with its spec's options, its ``mask`` option
    where it has one, and ``extra``."""
    model, inputs, loss = CASES[framework](length)
    cls = get_method(name)
    opts = {**SPECS[name].options, **extra}
    if "mask" in cls.options():
        opts.setdefault("mask", padded(length)[1])
    return cls(model).attribute(inputs, loss, **opts)


# --- comparisons ---------------------------------------------------------------------------------


def close(got: Any, want: Any, what: str, tol: float = 1e-5, scale: float | None = None) -> None:
    """``got`` equals ``want`` to ``tol`` relative to ``want``'s largest entry (or ``scale``)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    if scale is None:
        scale = max(float(np.abs(want).max(initial=0.0)), 1e-12)
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= tol * scale, f"{what}: off by {err:.3g} (scale {scale:.3g})"


def flips_of(res: Any) -> list[list[tuple[int, int, int]]]:
    """Each text's proposed swaps (position, token id, replacement id), in the method's order."""
    return [[(c["position"], c["token_id"], c["replacement_id"]) for c in cands]
            for cands in res.hotflip]  # fmt: skip


def same_results(got: Any, want: Any, length: int = T) -> None:
    """``got`` equals ``want`` on the first ``length`` positions (to 1e-5)."""
    close(got.losses, want.losses, "losses")
    close(got.scores[:, :length], want.scores[:, :length], "scores")
    for key in ("attributions", "signed"):
        if getattr(want, key) is not None:
            close(getattr(got, key)[:, :length], getattr(want, key)[:, :length], key)
    if want.delta is not None:
        # a difference of float32 sums: compared on the scale of f
        close(got.delta, want.delta, "delta", scale=float(np.abs(want.losses).max()))
    if want.hotflip is not None:
        assert flips_of(got) == flips_of(want)
        for a, b in zip(got.hotflip, want.hotflip, strict=True):
            for key in ("estimate", "verified"):
                va = [np.nan if c.get(key) is None else c[key] for c in a]
                vb = [np.nan if c.get(key) is None else c[key] for c in b]
                assert np.array_equal(np.isnan(va), np.isnan(vb)), key
                if va:
                    close(np.nan_to_num(va), np.nan_to_num(vb), key)


# --- the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", METHODS)
def test_shapes_and_dtypes(name, framework):
    res, cls = run(framework, name), get_method(name)
    assert res.method == name
    assert res.scores.shape == (B, T) and res.scores.dtype == np.float64
    assert res.losses.shape == (B,) and res.losses.dtype == np.float64
    assert res.ids.shape == (B, T) and res.ids.dtype == np.int64
    assert np.array_equal(res.ids, padded(T)[0])
    assert np.isfinite(res.scores).all()
    if res.attributions is not None:
        assert res.attributions.shape == (B, T, D)
    if res.signed is not None:
        assert res.signed.shape == (B, T)
    if res.delta is not None:
        assert res.delta.shape == (B,) and (res.delta >= 0).all()
    if cls.attributes_outputs:
        assert res.hotflip is None and res.attributions is not None
    else:  # a method that proposes swaps: one list per text, on real tokens only
        assert res.hotflip is not None and len(res.hotflip) == B
        mask = padded(T)[1]
        for b, cands in enumerate(res.hotflip):
            assert cands and all(mask[b, c["position"]] for c in cands)
            assert all(c["replacement_id"] != PAD for c in cands)


PASS_CASES = [
    (name, option, value)
    for name in METHODS
    for option, values in PASS_SIZES.items()
    if option in get_method(name).options()
    for value in values
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("name", "option", "value"), PASS_CASES)
def test_results_do_not_depend_on_the_pass_size(name, option, value, framework):
    same_results(run(framework, name, **{option: value}), run(framework, name))


def test_every_repeated_pass_method_has_a_pass_size_case():
    for name in METHODS:
        if not get_method(name).single_pass:
            assert any(case[0] == name for case in PASS_CASES), name


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", METHODS)
def test_padding_longer_changes_nothing_on_the_real_tokens(name, framework):
    if SPECS[name].padding is not None:
        pytest.skip(f"{name}: {SPECS[name].padding}")
    short, long = run(framework, name, T), run(framework, name, T_PAD)
    same_results(long, short)
    mask = padded(T)[1]
    assert (short.scores[~mask] == 0).all()
    assert (long.scores[:, T:] == 0).all()


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", [m for m in METHODS if SPECS.get(m, Spec({}, None)).oracle])
def test_the_oracle_run_one_text_at_a_time(name, framework):
    spec = SPECS[name]
    want = spec.oracle(PARAMS, TEXTS, TARGETS, T, **spec.options)
    masks = [True, False] if "mask" in get_method(name).options() else [True]
    for masked in masks:
        res = run(framework, name, **({} if masked else {"mask": None}))
        for key in ("losses", "scores", "signed", "attributions"):
            if key in want:
                close(getattr(res, key), want[key], f"{key} (mask option: {masked})")
        if masked and "passes" in res.info:  # the mask cut the passes at the texts' lengths
            assert {n for _, n in res.info["passes"]} == set(LENGTHS), res.info["passes"]
        if "delta" in want:  # a difference of float32 sums: compared on the scale of f
            scale = float(np.abs(want["losses"]).max())
            close(res.delta, want["delta"], f"delta (mask option: {masked})", scale=scale)
        if "flips" in want:  # the proposed swaps, and every measured change, alone
            for b, cands in enumerate(res.hotflip):
                got = {(c["position"], c["replacement_id"]): c["estimate"] for c in cands}
                assert set(got) == set(want["flips"][b])
                close(list(got.values()), [want["flips"][b][key] for key in got], "estimates")
                measured = [c for c in cands if c["verified"] is not None]
                assert len(measured) == min(spec.options["verify"], len(cands))
                close(
                    [c["verified"] for c in measured],
                    [om.flip_change(PARAMS, TEXTS[b], int(TARGETS[b]),
                                    [(c["position"], c["replacement_id"])]) for c in measured],
                    "verified",
                )  # fmt: skip


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_hotflip_search_replays_one_text_at_a_time(framework):
    opts = SPECS["hotflip_search"].options
    res = run(framework, "hotflip_search")
    for b, steps in enumerate(res.hotflip):
        ids, target = TEXTS[b], int(TARGETS[b])
        assert 1 <= len(steps) <= opts["budget"]
        assert [c["step"] for c in steps] == list(range(1, len(steps) + 1))
        done: list[tuple[int, int]] = []
        prev = 0.0
        want_scores = np.zeros(T)
        for c in steps:
            swap = (c["position"], c["replacement_id"])
            assert c["token_id"] == (dict(done).get(swap[0], ids[swap[0]]))
            est = om.oracle_hotflip_search_step(PARAMS, ids, target, done, swap)
            close([c["estimate"]], [est], "step estimate")
            done.append(swap)
            change = om.flip_change(PARAMS, ids, target, done)
            close([c["verified"]], [change], "step's measured change")
            want_scores[swap[0]] = change - prev
            prev = change
        close(res.scores[b], want_scores, "scores")
        assert res.info["reached"][b] == (prev >= opts["goal"])
