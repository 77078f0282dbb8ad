"""The issue-12 benchmarks still run: the GPU floor check's timing code on a tiny BERT on the
CPU (``gpu_check.py --dry-run``; CI has no GPU) and the small-batch benchmark's smoke run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_gpu_check_dry_run_times_fp32_and_bf16_on_the_cpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import gpu_check

    assert gpu_check.main(["--device", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "torch.float32 on cpu" in out and "torch.bfloat16 on cpu" in out
    assert "bad ids refused" in out


def test_bench_small_quick_reports_every_path(capsys: pytest.CaptureFixture[str]) -> None:
    import bench_small

    assert bench_small.main(["--quick", "--only", "minilm-B1-T8", "bag-V1M-B32"]) == 0
    out = capsys.readouterr().out
    for key in ("embgrad_ratio", "floor+mode_ratio", "floor_ms", "bag-V1M-B32"):
        assert key in out


def test_gpu_check_bad_ids_pass_through_the_deferred_check_of_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check a GPU run makes of bad ids, through the path non-CPU devices take."""
    import gpu_check
    from embgrad.backends import torch_record

    monkeypatch.setattr(torch_record, "_DEFER_ON_CPU", True)
    assert gpu_check.bad_ids_check("cpu") == []


def test_bench_outputs_quick_checks_and_reports_every_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import bench_outputs

    assert bench_outputs.main(["--quick", "--batch", "3", "--length", "7"]) == 0
    out = capsys.readouterr().out
    for path in ("embgrad", "floor", "loop"):
        assert f"| {path} |" in out
