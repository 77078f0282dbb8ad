"""The issue-19 benchmarks still run: each script in its tiny ``--quick`` mode produces its
tables (no timing is asserted: the machine may be loaded), and the numbers they check against
independent computations (by hand, Captum) agree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("captum")
pytestmark = [pytest.mark.hf, pytest.mark.peers, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_mislabel_data_is_seeded_and_flips_a_tenth_of_the_training_labels() -> None:
    import mislabel_data

    a, b = mislabel_data.load(per_class=12, n_test=10), mislabel_data.load(per_class=12, n_test=10)
    assert a.fingerprint() == b.fingerprint()
    assert len(a.train_texts) == 50 and len(a.test_texts) == 10
    assert sum(a.flipped) == 5
    for y, c, f in zip(a.train_labels, a.clean_labels, a.flipped, strict=True):
        assert (y != c) == f
    assert not set(a.train_texts) & set(a.test_texts)


def test_bench_mislabel_quick_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    import bench_mislabel

    assert bench_mislabel.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| ranking | top 5 % | top 10 % | top 20 % | seconds |" in out
    assert "FAILED" not in out
    for name in (
        "embgrad self-influence, exact, all rows",
        "embgrad self-influence, top_rows=10, skip_special",
        "loss (last checkpoint)",
        "Captum TracInCPFast (final layer)",
        "random (expected)",
    ):
        assert f"| {name} |" in out
    diffs = [float(x) for x in re.findall(r"max relative difference (\S+)", out)]
    assert len(diffs) == 4 and max(diffs) < 1e-6


def test_bench_influence_quick_prints_every_part(capsys: pytest.CaptureFixture[str]) -> None:
    import bench_influence

    assert bench_influence.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "### Index building vs the floor" in out
    assert "| embgrad build, path= |" in out
    assert "### One test text against n training texts" in out
    assert "V = 128,000" in out
    assert "indexed examples" in out and "| top_rows=10 |" in out
    # embgrad and Captum score alike (the last column of the Captum table)
    diffs = [float(x) for x in re.findall(r"\| ([0-9.]+e[-+][0-9]+) \|", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-4
