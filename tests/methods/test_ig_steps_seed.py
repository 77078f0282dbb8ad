"""Integrated gradients' quadrature in O(n) memory with a stated bound on ``n_steps``, and
SmoothGrad's ``seed`` checked (issue 22, items 13 and 14): clear embgrad errors before any pass."""

from __future__ import annotations

import numpy as np
import pytest

from embgrad import cli
from embgrad.errors import InputError
from embgrad.methods import get_method
from embgrad.methods.integrated_gradients import MAX_N_STEPS, gauss_legendre, quadrature


@pytest.mark.parametrize("n", [*range(1, 40), 64, 101, 250, 517])
def test_gauss_legendre_nodes_and_weights_equal_numpys(n):
    x, w = gauss_legendre(n)
    want_x, want_w = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(x, want_x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(w, want_w, rtol=0, atol=1e-13)


def test_the_largest_rule_is_exact_on_polynomials_and_needs_no_n_by_n_matrix():
    a, w = quadrature(MAX_N_STEPS, "gausslegendre")  # leggauss: an 800 MB matrix here
    assert a.shape == w.shape == (MAX_N_STEPS,) and np.all(np.diff(a) > 0)
    assert a[0] > 0 and a[-1] < 1
    assert abs(w.sum() - 1) < 1e-12 and abs((w * a**7).sum() - 1 / 8) < 1e-12


@pytest.mark.parametrize(
    ("n_steps", "rule", "message"),
    [
        (MAX_N_STEPS + 1, "gausslegendre", "n_steps=10001 is more than 10,000"),
        (10**9, "riemann_left", "one forward and one backward per sample"),
        (0, "gausslegendre", "n_steps must be an integer ≥ 1"),
        (1, "riemann_trapezoid", "≥ 2 for Riemann rules"),
        (True, "gausslegendre", "n_steps"),
    ],
)
def test_n_steps_out_of_range_is_refused_with_the_reason(n_steps, rule, message):
    with pytest.raises(InputError, match=message):
        quadrature(n_steps, rule)
    with pytest.raises(InputError, match=message):  # the check the CLI runs before loading
        get_method("integrated_gradients").validate({"n_steps": n_steps, "rule": rule})


@pytest.mark.parametrize("seed", [-1, -5, "abc", 1.5, True])
def test_a_bad_seed_is_an_input_error(seed):
    with pytest.raises(InputError, match="seed"):
        get_method("smoothgrad").validate({"seed": seed})


@pytest.mark.parametrize("seed", [None, 0, 7, 2**70, np.int64(3)])
def test_good_seeds_pass(seed):
    get_method("smoothgrad").validate({"seed": seed})


@pytest.mark.parametrize(
    ("opt", "message"),
    [
        ("seed=-5", "seed must be a whole number ≥ 0"),
        ("seed=abc", "option seed='abc' is not an int or None"),
    ],
)
def test_cli_seed_errors_are_one_line_before_the_model_loads(monkeypatch, capsys, opt, message):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("embgrad.explain.Explainer.from_spec", never)
    argv = ["explain", "--text", "x", "--method", "smoothgrad", "-O", opt, "--format", "json"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("embgrad: error:") and message in err and "Traceback" not in err


def test_cli_n_steps_over_the_bound_is_refused_before_the_model_loads(monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("embgrad.explain.Explainer.from_spec", never)
    argv = ["explain", "--text", "x", "--method", "integrated_gradients", "-O",
            "n_steps=1000000000", "--format", "json"]  # fmt: skip
    assert cli.main(argv) == 1
    assert "more than 10,000" in capsys.readouterr().err


def test_smoothgrad_with_a_negative_seed_from_python_is_an_input_error():
    torch = pytest.importorskip("torch")
    import embgrad

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2)
    )
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InputError, match="seed must be a whole number"):
        embgrad.attribute(model, ids, target=[0, 1], method="smoothgrad", seed=-1)
