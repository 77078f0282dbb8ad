"""Benchmark embgrad against its peers, side by side; writes RESULTS.md and plots/*.png.

Usage::

    python benchmarks/run_all.py            # the full plan (issue 4), < 30 min on 2 cores
    python benchmarks/run_all.py --quick    # every peer on small shapes, < 5 min
    python benchmarks/run_all.py --only MiniLM --only LSTM   # workloads whose name matches
    python benchmarks/run_all.py --from-json benchmarks/out/results.json   # report only

For each workload: a memory worker per method (a fresh process: build the model, run once,
``ru_maxrss``), then one timing worker that interleaves every method that ran (warm-up, then
rounds). See ``_harness.py`` for the protocol and ``report.py`` for what RESULTS.md says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import (  # noqa: E402
    TIMEOUT,
    MethodResult,
    WorkerSpec,
    apply_memory_run,
    apply_timing_run,
    available_mb,
    fmt_seconds,
    run_worker,
)
from plan import Workload, full_plan, quick_plan  # noqa: E402
from report import Measured, machine, write_results  # noqa: E402


@dataclasses.dataclass
class Settings:
    quick: bool
    rounds: int
    warmup: int
    mem_cap_mb: float
    max_run_s: float
    jobs: int
    threads: int = 1
    seed: int = 0
    round_budget_s: float = 10.0  # fast workloads get more rounds, up to this time
    setup_s: float = 120.0  # allowance for imports + model construction in a worker
    memory_workers: bool = True  # False (--quick): peaks from the timing worker's warm-ups

    def env(self) -> dict[str, str]:
        """Environment of every worker: thread counts, offline hubs, a private MXNet home."""
        n = str(self.threads)
        return {
            "BENCH_THREADS": n,
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "MXNET_HOME": str(HERE.parent / ".cache" / "mxnet"),
            "PYTHONWARNINGS": "ignore",
        }

    def public(self) -> dict[str, Any]:
        """The settings as RESULTS.md lists them."""
        return {
            "mode": "quick" if self.quick else "full",
            "rounds": self.rounds,
            "warmup": self.warmup,
            "mem_cap_mb": round(self.mem_cap_mb),
            "max_run_s": self.max_run_s,
            "round_budget_s": self.round_budget_s,
            "threads per worker (torch intra-op, OpenMP, MKL)": self.threads,
            "peak RSS from": "one fresh process per method"
            if self.memory_workers
            else "the timing worker (VmHWM reset before each warm-up run; approximate)",
            "memory workers in parallel (light workloads)": self.jobs,
        }


def default_threads() -> int:
    """All cores on an idle machine, else 1 (see ``--threads``)."""
    return (os.cpu_count() or 1) if os.getloadavg()[0] < 0.5 else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, every peer (< 5 min)")
    ap.add_argument("--only", action="append", default=[], help="workload name substring")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (≥ 5 for the report)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs per method")
    ap.add_argument(
        "--mem-cap-gb", type=float, default=10.0, help="RSS above which a run is killed"
    )
    ap.add_argument("--max-run-s", type=float, default=None, help="longest single run timed")
    ap.add_argument("--jobs", type=int, default=2, help="memory workers run in parallel")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per worker; default: all cores if the machine is idle (1-min load\n"
        "average < 0.5), else 1 (multi-threaded OpenMP regions slow down up to 10x\n"
        "whenever another process wants a core)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--json", type=Path, default=HERE / "out" / "results.json")
    ap.add_argument("--from-json", type=Path, default=None, help="rewrite the report only")
    return ap.parse_args(argv)


# -- measuring ------------------------------------------------------------------------------------
def memory_pass(wl: Workload, results: dict[str, MethodResult], s: Settings) -> None:
    """One fresh worker per method: one run, ``ru_maxrss``; also learns failures early."""
    jobs = 1 if wl.heavy else s.jobs
    run_limit = jobs * s.max_run_s  # parallel workers slow each other: allow for it
    timeout = s.setup_s + run_limit
    cap = min(s.mem_cap_mb, 0.9 * available_mb() / jobs)

    def one(method: str) -> None:
        spec = WorkerSpec(wl.framework, wl.builder, wl.params, [method], warmup=1, seed=s.seed)
        run = run_worker(
            spec, timeout_s=timeout, mem_cap_mb=cap, run_limit_s=run_limit, env=s.env()
        )
        apply_memory_run(results[method], run, cap, run_limit)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, wl.methods))
    for r in results.values():
        if r.ok and r.first_s is not None and r.first_s > run_limit:
            r.fail(TIMEOUT, f"one run took {r.first_s:.0f} s, above the {s.max_run_s:.0f} s limit")


def rounds_for(per_round_s: float, s: Settings) -> int:
    """At least ``s.rounds``; more (up to 4×) for fast workloads, whose runs are noisier."""
    extra = int(s.round_budget_s / max(per_round_s, 1e-3))
    return max(s.rounds, min(4 * s.rounds, extra))


def timing_pass(wl: Workload, results: dict[str, MethodResult], s: Settings) -> None:
    """One worker interleaving every method that ran; reruns without a method that killed it."""
    for attempt in range(3):
        todo = [m for m in wl.methods if results[m].ok and not results[m].times]
        if not todo:
            return
        todo = list(dict.fromkeys([b for b in ("floor", "train") if results[b].ok] + todo))
        per_round = sum(results[m].first_s or s.max_run_s for m in todo)
        rounds = rounds_for(per_round, s)
        timeout = s.setup_s + 3 * per_round * (s.warmup + rounds)
        spec = WorkerSpec(
            wl.framework,
            wl.builder,
            wl.params,
            todo,
            s.warmup,
            rounds,
            s.seed,
            s.max_run_s,
            hwm=not s.memory_workers,
        )
        run = run_worker(
            spec,
            timeout_s=timeout,
            mem_cap_mb=s.mem_cap_mb,
            run_limit_s=3 * s.max_run_s,
            env=s.env(),
        )
        culprit = apply_timing_run(results, run, s.mem_cap_mb, 3 * s.max_run_s, run_id=attempt)
        if culprit is None:
            return


def measure(wl: Workload, s: Settings) -> Measured:
    """Memory workers (unless ``s.memory_workers`` is off), then the timing worker."""
    results = {m: MethodResult(m) for m in wl.methods}
    if s.memory_workers or not wl.timed:
        memory_pass(wl, results, s)
    if wl.timed:
        timing_pass(wl, results, s)
    return Measured(wl, results)


# -- persistence ----------------------------------------------------------------------------------
def to_json(
    measured: list[Measured],
    settings: Settings,
    wall_s: float,
    command: str,
    info: dict[str, str] | None = None,
) -> str:
    """Everything measured, to rewrite the report later (``--from-json``)."""
    return json.dumps(
        {
            "settings": dataclasses.asdict(settings),
            "wall_s": wall_s,
            "command": command,
            "machine": info or machine(),
            "measured": [
                {
                    "workload": dataclasses.asdict(m.workload),
                    "results": {k: dataclasses.asdict(r) for k, r in m.results.items()},
                }
                for m in measured
            ],
        },
        indent=1,
    )


def from_json(text: str) -> tuple[list[Measured], Settings, float, str, dict[str, str] | None]:
    data = json.loads(text)
    measured = []
    for item in data["measured"]:
        w = item["workload"]
        wl = Workload(**{**w, "methods": tuple(w["methods"]), "notes": tuple(w["notes"])})
        measured.append(Measured(wl, {k: MethodResult(**r) for k, r in item["results"].items()}))
    settings = Settings(**data["settings"])
    return measured, settings, data["wall_s"], data["command"], data.get("machine")


def write_all(
    measured: list[Measured],
    s: Settings,
    wall_s: float,
    command: str,
    out: Path,
    info: dict[str, str] | None = None,
) -> None:
    """RESULTS.md and the plots next to it."""
    from plots import memory_vs_vocab, time_vs_batch

    plot_dir = out.parent / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    try:
        plots = [
            p
            for p in (
                time_vs_batch(measured, plot_dir),
                memory_vs_vocab(measured, plot_dir, s.mem_cap_mb),
            )
            if p is not None
        ]
    except ImportError as e:  # matplotlib missing: the tables still say everything
        print(f"plots skipped ({e}); pip install 'embgrad[viz]'", file=sys.stderr)
    mode = "quick" if s.quick else "full"
    write_results(
        out,
        measured,
        command=command,
        mode=mode,
        settings=s.public(),
        wall_s=wall_s,
        plots=plots,
        info=info,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        measured, s, wall, command, info = from_json(args.from_json.read_text())
        write_all(measured, s, wall, command, args.out, info)
        print(f"wrote {args.out}")
        return 0
    s = Settings(
        quick=args.quick,
        rounds=args.rounds,
        warmup=args.warmup,
        mem_cap_mb=args.mem_cap_gb * 1024,
        max_run_s=args.max_run_s or (20.0 if args.quick else 30.0),
        jobs=args.jobs,
        threads=args.threads or default_threads(),
        memory_workers=not args.quick,
    )
    plan = quick_plan() if args.quick else full_plan()
    if args.only:
        plan = [w for w in plan if any(o.lower() in w.key.lower() for o in args.only)]
    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    command += "".join(f" --only '{o}'" for o in args.only)
    info = machine()  # before the run: the code and versions that are measured
    start = time.perf_counter()
    measured = []
    for i, wl in enumerate(plan, 1):
        t0 = time.perf_counter()
        m = measure(wl, s)
        measured.append(m)
        bad = [f"{k}={r.status}" for k, r in m.results.items() if not r.ok]
        floor = m.results.get("floor")
        fl = fmt_seconds(floor.median_s) if floor and floor.ok else "–"
        print(
            f"[{i}/{len(plan)}] {wl.key}: {time.perf_counter() - t0:.0f} s, floor {fl}"
            + (f"; not run: {', '.join(bad)}" if bad else ""),
            flush=True,
        )
    wall = time.perf_counter() - start
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(to_json(measured, s, wall, command, info))
    write_all(measured, s, wall, command, args.out, info)
    print(f"wrote {args.out} in {wall / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
