"""Issue 22 (items 8, 10, 11, 12, 20) and issue 23 (item 3) for ``embgrad explain``: no
traceback for an unloadable model folder, bytes that are not UTF-8 or an --out that cannot be
written; text is drawn literally in the PNG and bidi controls are visible in the HTML; the
quick start's commands run one after another with the default --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from embgrad import cli
from embgrad.items import TokenAttribution
from embgrad.render import write


def _never(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the model was loaded before the checks")


def _cli(*argv: str | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    src = str(Path(cli.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, *sys.path]))
    return subprocess.run([sys.executable, "-m", "embgrad.cli", *argv], capture_output=True,
                          env=env, cwd=cwd, timeout=300)  # fmt: skip


@pytest.mark.hf
def test_an_unloadable_model_folder_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10,
                                                    "hidden_size": 4}))  # fmt: skip
    done = _cli("explain", "--model", f"hf:{folder}", "--text", "hi", "--format", "json",
                "--out", str(tmp_path / "o"))  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "cannot load it" in err and "Traceback" not in err


def test_text_that_is_not_utf8_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    done = _cli("explain", "--text", b"caf\xe9 au lait", "--format", "json",
                "--out", str(tmp_path / "o"))  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "not valid UTF-8" in err and "Traceback" not in err


def test_out_below_a_file_or_read_only_is_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    monkeypatch.setattr("embgrad.explain.load", _never)
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert cli.main(["explain", "--text", "hi", "--out", str(a_file / "sub"),
                     "--format", "json"]) == 1  # fmt: skip
    assert "is a file" in capsys.readouterr().err


def _item(text: str, tokens: list[str]) -> TokenAttribution:
    return TokenAttribution(text=text, tokens=tokens, scores=[0.5] * len(tokens), loss=0.1,
                            table_grad_norm=1.0, delta=None, hotflip=[], truncated=False,
                            method="gradient", target=None)  # fmt: skip


def test_dollar_signs_are_drawn_literally_in_the_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    item = _item("costs $\\frac{ and $x^2 $", ["costs", "$\\frac{", "$x^2", "$"])
    view = write.View([item], titles=["$\\alpha_{"])
    path = write.save(view, "png", tmp_path / "h.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_bidi_overrides_are_not_written_raw_in_html_headings() -> None:
    item = _item("abc \u202edcba", ["abc", "\u202edcba"])
    page = write.text(write.View([item], titles=["[1] \u202egnp.exe"]), "html")
    assert "\u202e" not in page
    assert "⟨U+202E⟩" in page


@pytest.mark.hf
def test_the_quick_start_runs_twice_with_the_default_out(tmp_path: Path) -> None:
    first = _cli("explain", "--format", "json,html", cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    again = _cli("explain", "--format", "json,html", cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "embgrad-out" / "report.html").is_file()


def test_a_folder_the_user_names_is_not_overwritten_and_messages_speak_cli(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    monkeypatch.setattr("embgrad.explain.load", _never)
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "embgrad-out"  # made by the user, not by embgrad: kept
    own.mkdir()
    (own / "report.html").write_text("mine")
    for argv in (["explain", "--text", "hi"], ["explain", "--text", "hi", "--out", str(own)]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert "already there; add --overwrite" in err
        assert "exist(s)" not in err and "overwrite=True" not in err
    assert (own / "report.html").read_text() == "mine"


@pytest.mark.hf
def test_a_full_disk_while_writing_the_outputs_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    import errno

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "x"))

    monkeypatch.setattr(write, "save", full)
    assert cli.main(["explain", "--text", "a fine day", "--labels", "good,bad",
                     "--out", str(tmp_path / "o"), "--format", "json"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "No space left on device" in err and "choose another --out" in err
