"""The coupling probe's weights and residual, on arrays whose coupling is known."""

from __future__ import annotations

import numpy as np

from embgrad.core import probe


def test_probe_weights_are_signed_powers_of_two_and_neighbours_differ():
    v = probe.probe_weights(64, np.random.default_rng(0))
    mags = np.abs(v)
    np.testing.assert_array_equal(np.exp2(np.round(np.log2(mags))), mags)
    assert np.all(mags[1:] != mags[:-1])
    assert set(np.sign(v)) == {-1.0, 1.0}


def test_residual_is_zero_for_independent_samples_in_float32():
    rng = np.random.default_rng(1)
    b, t, d = 6, 5, 4
    per_sample = rng.standard_normal((b, t, d)).astype(np.float32)  # g_i lives in slice i
    v = probe.probe_weights(b, rng)
    g = per_sample  # sum over i of g_i: slice i is g_i
    gv = (v[:, None, None] * per_sample).astype(np.float32)  # power-of-two scaling: exact
    assert probe.residual(g, gv, v, axis=0) == 0.0


def test_residual_flags_coupled_samples():
    rng = np.random.default_rng(2)
    b, t, d = 6, 5, 4
    # dL_j/d emb_i nonzero for all i, j (e.g. batch statistics): G = sum_j J_j, Gv = sum_j v_j J_j
    jac = rng.standard_normal((b, b, t, d))
    v = probe.probe_weights(b, rng)
    g = jac.sum(axis=0)
    gv = np.tensordot(v, jac, axes=1)
    assert probe.residual(g, gv, v, axis=0) > 0.1


def test_residual_along_batch_axis_one_for_time_major_layouts():
    rng = np.random.default_rng(3)
    t, b, d = 5, 4, 3
    g = rng.standard_normal((t, b, d))
    v = probe.probe_weights(b, rng)
    gv = g * v[None, :, None]
    assert probe.residual(g, gv, v, axis=1) < 1e-12
    assert probe.residual(g, gv, v, axis=0) > 0.1 if t == b else True


def test_candidate_axes_are_the_axes_of_batch_size():
    assert probe.candidate_axes((8, 50), 8) == [0]
    assert probe.candidate_axes((50, 8), 8) == [1]
    assert probe.candidate_axes((8, 8), 8) == [0, 1]
    assert probe.candidate_axes((50,), 8) == []
