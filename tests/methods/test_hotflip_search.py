"""``hotflip_search`` against brute force on a tiny model: with a beam wide enough to be
exhaustive it finds the fewest flips reaching the goal and the best text at that length, and
every reported step's change is the model run on the flipped ids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import embgrad  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from embgrad.methods import get_method  # noqa: E402

V = 6


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb, self.lin = nn.Embedding(V, 3), nn.Linear(3, 3)
        self.w = nn.Parameter(torch.randn(3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.lin(self.emb(ids))) @ self.w
        return (h * torch.tensor([1.0, -2.0, 3.0])).sum(1) + h.prod(1)


def f(model: Tiny, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids)).numpy().astype(np.float64)


def brute(model: Tiny, row: np.ndarray, flips: int) -> float:
    """The largest f(x') − f(x) over every text with exactly ``flips`` positions changed."""
    texts = []
    for pos in itertools.combinations(range(row.shape[0]), flips):
        for vals in itertools.product(range(V), repeat=flips):
            if all(row[p] != v for p, v in zip(pos, vals, strict=True)):
                t = row.copy()
                t[list(pos)] = vals
                texts.append(t)
    return float(f(model, np.stack(texts)).max() - f(model, row[None])[0])


def test_exhaustive_search_finds_the_shortest_and_best_sequence_of_flips():
    model = Tiny()
    ids = np.array([[0, 1, 2], [3, 4, 5], [2, 2, 0]])
    one = [brute(model, r, 1) for r in ids]
    two = [brute(model, r, 2) for r in ids]
    assert two[0] > one[0]  # sample 0 needs two flips for a goal between them
    goal = (one[0] + two[0]) / 2
    res = get_method("hotflip_search")(model).attribute(
        torch.as_tensor(ids), lambda out: out, goal=goal, direction="increase", budget=2,
        beam=1000, k=V - 1, verify=100, verify_rows=7,
    )  # fmt: skip
    fx = f(model, ids)
    for b, seq in enumerate(res.hotflip):
        want_len = 1 if one[b] >= goal else (2 if two[b] >= goal else None)
        assert res.info["reached"][b] == (want_len is not None)
        if want_len is None:
            assert len(seq) == 2 and seq[-1]["verified"] == pytest.approx(two[b], abs=1e-6)
            continue
        assert len(seq) == want_len
        best = one[b] if want_len == 1 else two[b]
        assert seq[-1]["verified"] == pytest.approx(best, abs=1e-6)
        text = ids[b].copy()
        for i, step in enumerate(seq):  # every step verified: the model on the text so far
            assert step["step"] == i + 1 and step["token_id"] == text[step["position"]]
            text[step["position"]] = step["replacement_id"]
            want = f(model, text[None])[0] - fx[b]
            assert abs(step["verified"] - want) <= 1e-5 * max(1.0, abs(want))
        assert len({s["position"] for s in seq}) == len(seq)


def test_a_narrow_beam_still_verifies_every_step_and_attribute_reports_them():
    model = Tiny()
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    att = embgrad.attribute(model, ids, lambda out: out, method="hotflip_search",
                            goal=1e9, budget=3, beam=1, k=1, verify=1)  # fmt: skip
    assert att.raw.info["reached"] == [False, False]
    fx = f(model, ids.numpy())
    for b, item in enumerate(att.items):
        assert [h["position"] for h in item.hotflip] == [h["position"] for h in att.raw.hotflip[b]]
        text = ids[b].numpy().copy()
        for step in att.raw.hotflip[b]:
            text[step["position"]] = step["replacement_id"]
            assert step["verified"] == pytest.approx(f(model, text[None])[0] - fx[b], abs=1e-5)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"goal": 0}, "goal must be a finite number > 0"),
        ({"budget": 0}, "budget must be"),
        ({"direction": "abs"}, "direction='abs' is not one of"),
    ],
)
def test_bad_options_are_named(opts, message):
    with pytest.raises(InputError, match=message):
        get_method("hotflip_search")(Tiny()).attribute(
            torch.tensor([[0, 1, 2]]), lambda o: o, **opts
        )


class Counting(Tiny):
    """Counts its forwards: a refused option must be refused before any pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(ids)


@pytest.mark.parametrize(
    ("method", "opts", "message"),
    [
        ("hotflip", {"max_bytes": 0}, r"max_bytes must be an integer ≥ 1 \(bytes"),
        ("hotflip", {"max_bytes": -5}, r"max_bytes must be an integer ≥ 1.*got -5"),
        ("hotflip", {"verify_rows": 0}, "verify_rows must be an integer ≥ 1"),
        ("hotflip", {"k": 0}, "k must be an integer ≥ 1"),
        ("hotflip_search", {"max_bytes": 0}, "max_bytes must be an integer ≥ 1"),
        ("hotflip_search", {"max_bytes": -5}, "max_bytes must be an integer ≥ 1"),
        ("hotflip_search", {"goal": float("inf")}, r"goal must be a finite number > 0.*inf"),
        ("hotflip_search", {"goal": float("nan")}, "goal must be a finite number > 0"),
        ("hotflip_search", {"goal": np.float64(-np.inf)}, "goal must be a finite number > 0"),
        ("hotflip_search", {"verify_rows": 0}, "verify_rows must be an integer ≥ 1"),
    ],
)
def test_bad_counts_and_an_infinite_goal_are_refused_before_any_pass(method, opts, message):
    model = Counting()
    with pytest.raises(InputError, match=message):
        get_method(method)(model).attribute(torch.tensor([[0, 1, 2]]), lambda o: o, **opts)
    assert model.calls == 0
    with pytest.raises(InputError, match=message):  # and through the one-call front door
        embgrad.attribute(model, torch.tensor([[0, 1, 2]]), lambda o: o, method=method, **opts)
    assert model.calls == 0
