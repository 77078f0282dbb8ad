"""Sparse per-sample table rows against a dense, obviously-right numpy scatter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embgrad import DenseTooLargeError
from embgrad.core.ops import NumpyOps
from embgrad.core.sparse import build_rows, combine

OPS = NumpyOps()


def dense_oracle(sample, ids, grads, shape, padding_idx=None):
    """(B, V, D) by a Python loop over positions: the slow, obviously-right reference."""
    out = np.zeros(shape, dtype=np.float64)
    for s, i, g in zip(sample, ids, grads, strict=True):
        if padding_idx is not None and i == padding_idx:
            continue
        out[s, i] += g
    return out


def random_case(rng, b=4, t=7, v=11, d=3):
    ids = rng.integers(0, v, size=(b, t))
    grads = rng.standard_normal((b, t, d)).astype(np.float32)
    sample = np.broadcast_to(np.arange(b)[:, None], (b, t))
    return sample.reshape(-1), ids.reshape(-1), grads.reshape(-1, d), (b, v, d)


def test_rows_equal_dense_scatter_with_duplicates_summed():
    rng = np.random.default_rng(0)
    sample, ids, grads, shape = random_case(rng, v=5)  # small V: many duplicates per sample
    rows = build_rows(OPS, [(sample, ids, grads)], shape)
    np.testing.assert_allclose(rows.to_dense(), dense_oracle(sample, ids, grads, shape), rtol=1e-6)
    keys = rows.sample * shape[1] + rows.row
    assert np.all(np.diff(keys) > 0), "rows are coalesced and sorted by (sample, row)"
    assert rows.values.dtype == np.float32


def test_rows_hold_only_the_rows_each_sample_used():
    rng = np.random.default_rng(1)
    sample, ids, grads, shape = random_case(rng, v=1000)
    rows = build_rows(OPS, [(sample, ids, grads)], shape)
    for b in range(shape[0]):
        used = np.unique(ids[sample == b])
        got, _ = rows.for_sample(b)
        np.testing.assert_array_equal(got, used)


def test_padding_idx_row_gets_no_gradient():
    rng = np.random.default_rng(2)
    sample, ids, grads, shape = random_case(rng, v=4)
    rows = build_rows(OPS, [(sample, ids, grads)], shape, padding_idx=0)
    assert 0 not in rows.row.tolist()
    np.testing.assert_allclose(
        rows.to_dense(), dense_oracle(sample, ids, grads, shape, padding_idx=0), rtol=1e-6
    )


def test_norms_equal_dense_norms_without_densifying():
    rng = np.random.default_rng(3)
    sample, ids, grads, shape = random_case(rng, v=6)
    rows = build_rows(OPS, [(sample, ids, grads)], shape)
    dense = dense_oracle(sample, ids, grads, shape)
    np.testing.assert_allclose(
        rows.norms(), np.linalg.norm(dense.reshape(shape[0], -1), axis=1), rtol=1e-6
    )


def test_combine_sums_call_sites_of_one_table():
    rng = np.random.default_rng(4)
    a = random_case(rng, v=8)
    b = random_case(rng, v=8)
    rows = combine([build_rows(OPS, [a[:3]], a[3]), build_rows(OPS, [b[:3]], b[3])])
    expected = dense_oracle(*a[:3], a[3]) + dense_oracle(*b[:3], b[3])
    np.testing.assert_allclose(rows.to_dense(), expected, rtol=1e-5, atol=1e-6)


def test_scipy_view_is_b_times_v_by_d():
    rng = np.random.default_rng(5)
    sample, ids, grads, shape = random_case(rng)
    rows = build_rows(OPS, [(sample, ids, grads)], shape)
    csr = rows.to_scipy()
    b, v, d = shape
    assert csr.shape == (b * v, d)
    np.testing.assert_allclose(csr.toarray().reshape(shape), rows.to_dense())


def test_dense_request_above_byte_limit_is_refused_with_its_size():
    rows = build_rows(
        OPS,
        [(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones((1, 768), np.float32))],
        (128, 30522, 768),
    )
    with pytest.raises(DenseTooLargeError, match=r"11\.2 GiB.*max_bytes"):
        rows.to_dense()
    assert "11.2 GiB" in repr(rows)
    small = build_rows(
        OPS, [(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones((1, 2)))], (1, 3, 2)
    )
    with pytest.raises(DenseTooLargeError):
        small.to_dense(max_bytes=8)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 5),
    t=st.integers(1, 9),
    v=st.integers(1, 30),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_rows_match_dense_oracle_for_drawn_shapes(b, t, v, d, seed):
    rng = np.random.default_rng(seed)
    sample, ids, grads, shape = random_case(rng, b=b, t=t, v=v, d=d)
    rows = build_rows(OPS, [(sample, ids, grads)], shape)
    np.testing.assert_allclose(
        rows.to_dense(), dense_oracle(sample, ids, grads, shape), rtol=1e-5, atol=1e-6
    )
    assert rows.nnz == len(np.unique(sample * v + ids))


def test_without_scipy_to_scipy_names_the_sparse_extra_that_holds_it(monkeypatch):
    """scipy is a runtime extra of its own (and in gluon's, whose snippet uses to_scipy):
    the hint installs it, not the dev tools (issue 23)."""
    import sys
    from pathlib import Path

    import tomllib

    from embgrad.errors import MissingExtraError

    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())[
        "project"
    ]["optional-dependencies"]
    assert any(r.startswith("scipy") for r in extras["sparse"])
    assert any(r.startswith("scipy") for r in extras["gluon"])
    rng = np.random.default_rng(6)
    sample, ids, grads, shape = random_case(rng)
    rows = build_rows(OPS, [(sample, ids, grads)], shape)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'embgrad\[sparse\]'"):
        rows.to_scipy()
