"""The benchmark harness (benchmarks/): statistics, tables, the worker protocol, failure paths.

Runs on the framework-free toy workload (``benchmarks/_toy.py``) in a few seconds, so the
harness cannot rot silently between benchmark runs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _harness as h  # noqa: E402
import run_all  # noqa: E402
from _worker import classify, order_for_round  # noqa: E402
from plan import METHODS, Workload, full_plan, quick_plan  # noqa: E402
from report import Measured, measure_table, write_results  # noqa: E402


def test_median_and_ratio_ignore_missing_values() -> None:
    assert h.median([3.0, 1.0, 2.0]) == 2.0
    assert h.median([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(h.median([]))
    assert h.ratio(3.0, 2.0) == 1.5
    assert math.isnan(h.ratio(1.0, 0.0))
    assert math.isnan(h.ratio(None, 1.0))


def test_paired_ratio_pairs_rounds_of_the_same_worker_only() -> None:
    num = {"0:0": 2.0, "0:1": 4.0, "0:2": 30.0, "1:0": 5.0}
    den = {"0:0": 1.0, "0:1": 2.0, "0:2": 10.0}
    assert h.paired_ratio(num, den) == 2.0  # median of 2, 2, 3; "1:0" has no partner


def test_formatting_and_markdown_table() -> None:
    assert h.fmt_seconds(0.01234) == "12.3 ms"
    assert h.fmt_seconds(1.234) == "1.23 s"
    assert h.fmt_seconds(math.nan) == "–"
    assert h.fmt_ratio(1.234) == "1.23×"
    assert h.fmt_ratio(123.4) == "123×"
    assert h.fmt_mb(512) == "512 MB"
    assert h.fmt_mb(20480) == "20.0 GB"
    table = h.md_table(["a", "b"], [["1", "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_rounds_rotate_and_reverse_so_each_method_sees_every_neighbour() -> None:
    ms = ["a", "b", "c"]
    orders = [order_for_round(ms, r) for r in range(3)]
    assert orders[0] == ["a", "b", "c"]
    assert orders[1] == ["a", "c", "b"]  # rotated by 1, reversed
    assert all(sorted(o) == ms for o in orders)
    assert len({o[0] for o in orders}) > 1  # no method always runs first


def test_classify_failures() -> None:
    assert classify(h.Unsupported("no"))[0] == h.UNSUPPORTED
    assert classify(NotImplementedError("no"))[0] == h.UNSUPPORTED
    assert classify(MemoryError())[0] == h.OOM
    assert classify(RuntimeError("DefaultCPUAllocator: can't allocate memory"))[0] == h.OOM
    assert classify(ValueError("boom"))[0] == h.ERROR


def test_worker_runs_interleaved_rounds_and_reports_failures() -> None:
    spec = h.WorkerSpec(
        "toy", "toy", {"sleep_s": 0.001}, ["sleep", "sleep2", "unsupported", "error"], 1, 5
    )
    run = h.run_worker(spec, timeout_s=30, mem_cap_mb=4096)
    results = {m: h.MethodResult(m) for m in spec.methods}
    assert h.apply_timing_run(results, run, 4096, 30) is None
    assert len(results["sleep"].times) == 5 and len(results["sleep2"].times) == 5
    assert results["sleep"].median_s > 0
    assert results["unsupported"].status == h.UNSUPPORTED
    assert "refuses" in results["unsupported"].detail
    assert results["error"].status == h.ERROR and "crashed" in results["error"].detail
    assert run.events[-1]["ev"] == "end"


def test_worker_over_the_memory_cap_is_killed_and_marked_oom() -> None:
    spec = h.WorkerSpec("toy", "toy", {"alloc_mb": 400}, ["alloc"], warmup=1)
    run = h.run_worker(spec, timeout_s=30, mem_cap_mb=150)
    assert run.killed == h.OOM
    res = h.MethodResult("alloc")
    h.apply_memory_run(res, run, 150, 30)
    assert res.status == h.OOM


def test_a_hanging_method_is_killed_and_named_the_culprit() -> None:
    spec = h.WorkerSpec("toy", "toy", {}, ["sleep", "hang"], warmup=1, rounds=2)
    run = h.run_worker(spec, timeout_s=2, mem_cap_mb=4096)
    assert run.killed == h.TIMEOUT
    results = {m: h.MethodResult(m) for m in spec.methods}
    assert h.apply_timing_run(results, run, 4096, 2) == "hang"
    assert results["hang"].status == h.TIMEOUT
    assert results["sleep"].ok


def test_failed_peers_are_shown_as_failed_in_the_report(tmp_path: Path) -> None:
    methods = ("floor", "train", "embgrad", "vmap", "backpack", "opacus", "loop", "vmap_table")
    wl = Workload("toy", "toy", {"batch": 1, "sleep_s": 0.001, "alloc_mb": 20}, "Toy", methods)
    s = run_all.Settings(
        quick=True, rounds=5, warmup=1, mem_cap_mb=4096, max_run_s=0.5, jobs=2, setup_s=2.0
    )
    measured = run_all.measure(wl, s)
    status = {k: r.status for k, r in measured.results.items()}
    assert status == {
        "floor": h.OK,
        "train": h.OK,
        "embgrad": h.OK,
        "vmap": h.OK,
        "backpack": h.UNSUPPORTED,
        "opacus": h.ERROR,
        "loop": h.TIMEOUT,
        "vmap_table": h.OK,
    }
    assert len(measured.results["embgrad"].times) >= 5
    assert measured.results["vmap_table"].peak_mb > measured.results["floor"].peak_mb
    table = measure_table([measured], "table")
    assert table is not None and "**unsupported: " in table and "BackPACK" in table
    out = tmp_path / "RESULTS.md"
    write_results(
        out, [measured], command="test", mode="quick", settings=s.public(), wall_s=1.0, plots=[]
    )
    text = out.read_text()
    assert "Methods that did not run" in text and "**timeout**" in text and "**error**" in text
    back = run_all.from_json(run_all.to_json([measured], s, 1.0, "test"))[0][0]
    assert back.results["backpack"].status == h.UNSUPPORTED


@pytest.mark.parametrize("plan", [full_plan, quick_plan])
def test_plans_name_only_known_methods_and_always_time_the_baselines(
    plan: Callable[[], list[Workload]],
) -> None:
    for wl in plan():
        assert set(wl.methods) <= set(METHODS)
        assert {"floor", "train"} <= set(wl.methods)
    assert any(not wl.timed for wl in plan())  # the vocabulary sweep


def test_measured_ratios_are_nan_when_the_floor_failed() -> None:
    wl = Workload("toy", "toy", {"batch": 1}, "Toy", ("floor", "embgrad"))
    floor = h.MethodResult("floor", status=h.OOM)
    ours = h.MethodResult("embgrad", times={"0:0": 1.0})
    m = Measured(wl, {"floor": floor, "embgrad": ours})
    assert math.isnan(m.time_ratio("embgrad", "floor"))


def test_quick_mode_reads_each_warm_up_runs_peak_inside_the_timing_worker() -> None:
    spec = h.WorkerSpec("toy", "toy", {"alloc_mb": 120}, ["sleep", "alloc"], 1, 1, hwm=True)
    run = h.run_worker(spec, timeout_s=30, mem_cap_mb=4096)
    results = {m: h.MethodResult(m) for m in spec.methods}
    h.apply_timing_run(results, run, 4096, 30)
    assert results["alloc"].peak_mb is not None and results["sleep"].peak_mb is not None
    assert results["alloc"].peak_mb > results["sleep"].peak_mb + 100
