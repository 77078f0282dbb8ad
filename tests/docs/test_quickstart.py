"""The README's quick start (and the site's copy of it) runs top to bottom (issue 23): every
command in its ``bash`` block, in order, in a fresh folder, exits 0 — the second `explain` does
not trip over the first one's outputs — and writes what the text says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from embgrad import cli

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.hf, pytest.mark.slow]


def quick_start(path: Path) -> list[list[str]]:
    """The ``embgrad`` commands of the first bash block after "## Quick start"."""
    text = path.read_text(encoding="utf-8")
    section = text[text.index("## Quick start") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [c[1:] for c in commands if c and c[0] == "embgrad"]


def test_readme_and_getting_started_show_the_same_quick_start():
    assert quick_start(ROOT / "README.md") == quick_start(ROOT / "docs/getting-started.md")


def test_the_quick_start_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    commands = quick_start(ROOT / "README.md")
    assert len(commands) >= 4
    for argv in commands:
        code = cli.main(argv)
        assert code == 0, (argv, capsys.readouterr().err[-2000:])
    capsys.readouterr()
    outs = [Path(a[a.index("--out") + 1]) for a in commands if "--out" in a]
    assert len(set(outs)) == len(outs)  # one folder per command: nothing to overwrite
    for out in outs:
        for name in ("report.html", "heatmap.png"):
            assert (tmp_path / out / name).is_file(), out / name
