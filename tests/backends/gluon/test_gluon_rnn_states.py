"""Issue 21 item 7: a fused ``rnn.LSTM`` given real-valued begin states as inputs crashed the
process (segfault, double free, a hang, or a false CouplingError) when the probe differentiated
the retained graph w.r.t. other variables than the first backward. Each case runs in a child
process with a time limit (``child_rnn_states.py``), repeated, and must match the oracle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mxnet")

pytestmark = pytest.mark.gluon

CHILD = Path(__file__).with_name("child_rnn_states.py")
SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.mark.parametrize("kind", ["plain", "hybrid", "exported", "lm"])
def test_begin_states_as_inputs_do_not_crash(kind: str, tmp_path: Path) -> None:
    if kind == "lm":
        pytest.importorskip("gluonnlp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, str(CHILD), kind, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{kind}: the child hung (no result in 240 s)")
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, f"{kind}: exit code {done.returncode}\n{tail}"
    assert done.stdout.startswith("OK"), tail
