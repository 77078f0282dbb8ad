"""``embgrad`` on the command line: outputs, help from the registry, exit codes and messages."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import types

import pytest

from embgrad import cli, list_methods

OUTPUTS = pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")


def test_methods_command_and_help_come_from_the_registry(capsys):
    assert cli.main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert cli.main(["explain", "--help"]) == 0
    helptext = capsys.readouterr().out
    for name in list_methods():
        assert f"{name}:" in listed and name in helptext
    assert "-O n_steps=... (default 50): number of quadrature points, at most 10,000\n" in listed
    assert "truncated" in helptext
    for line in listed.splitlines():
        assert line.count("default") <= 1 or "(default:" in line, line  # said once
    assert "mask=" not in listed and "exclude_ids" not in listed  # arrays: not from the CLI


def test_a_data_cli_module_adds_its_subcommand(monkeypatch):
    mod = types.ModuleType("embgrad.data.cli")
    mod.__spec__ = importlib.machinery.ModuleSpec("embgrad.data.cli", None)
    mod.add_parser = lambda sub: sub.add_parser("run", help="fake").set_defaults(
        func=lambda args, parser: 7
    )
    monkeypatch.setitem(sys.modules, "embgrad.data.cli", mod)
    assert cli.main(["run"]) == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "--method", "lime", "--text", "x"], "unknown method 'lime'; choose one of"),
        (["explain", "--method", "ig", "--text", "x"], "did you mean 'integrated_gradients'"),
        (["explain", "--method", "integrated_gradient"], "did you mean 'integrated_gradients'"),
        (["explain", "--format", "pdf"], "unknown format(s) pdf"),
        (["explain", "--pair", "x"], "--pair needs --text"),
        (["explain", "-O", "n_steps"], "KEY=VALUE"),
        ([], "required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_version_and_python_dash_m(capsys):
    from embgrad._version import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"embgrad {__version__}"
    done = subprocess.run([sys.executable, "-m", "embgrad", "--version"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == f"embgrad {__version__}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--text", "hi", "--labels", "a"], "--labels: give at least two labels"),
        (["--text", "hi", "--labels", "a,b", "--target", "c"], "target 'c' is not one of"),
        (["--text", "hi", "--target", "neutral"], "not one of the labels: 'positive'"),
        (["--text", "hi", "--pair", "x", "--labels", "a,b"], "one or the other"),
        (["--text", "hi", "--labels", "a,b", "--labels-file", "f"], "not both"),
        (["--text", "hi", "--method", "smoothgrad", "-O", "n_samples=1.5"], "is not an int"),
        (["--text", "hi", "--method", "hotflip", "-O", "exclude_ids=[1]"], "set by embgrad"),
        (["--text", "hi", "--hotflip-k", "-1"], "--hotflip-k must be"),
        (["--text", "hi", "--model", "nowhere"], "give hf:PATH"),
    ],
)
def test_explain_checks_fail_fast_before_the_model_loads(monkeypatch, capsys, argv, message):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the checks")

    monkeypatch.setattr("embgrad.explain.load", never)
    assert cli.main(["explain", *argv]) == 1
    assert message in capsys.readouterr().err


def test_existing_outputs_are_refused_before_the_work_unless_overwrite(tmp_path, monkeypatch,
                                                                       capsys):  # fmt: skip
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the checks")

    monkeypatch.setattr("embgrad.explain.load", never)
    (tmp_path / "attributions.json").write_text("{}")
    assert cli.main(["explain", "--text", "hi", "--out", str(tmp_path), "--format", "json"]) == 1
    assert "already there; add --overwrite" in capsys.readouterr().err
    a_file = tmp_path / "attributions.json"
    assert cli.main(["explain", "--text", "hi", "--out", str(a_file), "--format", "json"]) == 1
    assert "is an existing file" in capsys.readouterr().err
    assert a_file.read_text() == "{}"


def test_a_missing_model_exits_1_with_one_line_and_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "embgrad.cli", "explain", "--model", f"hf:{tmp_path}/none",
         "--text", "hi"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"embgrad: error: model path does not exist: '{tmp_path}/none'"


@pytest.mark.hf
@OUTPUTS
def test_explain_writes_json_html_and_png(tmp_path, capsys):
    pytest.importorskip("transformers")
    argv = ["explain", "--text", "<script>alert(1)</script> is code", "--pair", "some html",
            "--format", "json,html", "--format", "png", "--out", str(tmp_path), "--hotflip-k", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    assert f"embgrad: wrote {tmp_path}/report.html" in capsys.readouterr().out
    doc = json.loads((tmp_path / "attributions.json").read_text())
    assert {
        "embgrad_version",
        "model",
        "framework",
        "method",
        "options",
        "quantity",
        "items",
    } <= set(doc)
    assert doc["method"] == "gradient" and doc["quantity"] == "cosine similarity"
    assert len(doc["items"]) == 2
    types_ = {"text": str, "tokens": list, "scores": list, "value": float, "table_grad_norm": float,
              "hotflip": list, "truncated": bool, "method": str}  # fmt: skip
    for item in doc["items"]:
        assert set(item) == set(types_) | {"delta", "target", "n_tokens"}
        assert all(isinstance(item[k], t) for k, t in types_.items())
        assert len(item["tokens"]) == len(item["scores"]) and len(item["hotflip"]) == 2
        keys = {"position", "token", "replacement", "estimate", "verified", "direction"}
        assert set(item["hotflip"][0]) == keys
        assert all(isinstance(h["verified"], float) for h in item["hotflip"])
    page = (tmp_path / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    png = (tmp_path / "heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


@pytest.mark.hf
def test_explain_exit_codes_for_empty_and_too_long_texts(tmp_path, capsys):
    pytest.importorskip("transformers")
    assert cli.main(["explain", "--text", " ", "--pair", "x", "--format", "json"]) == 1
    assert capsys.readouterr().err.strip() == (
        "embgrad: error: text 0 is empty; give non-empty texts"
    )
    argv = ["explain", "--text", "long " * 300, "--pair", "x", "--format", "terminal,json",
            "--out", str(tmp_path), "--hotflip-k", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "TRUNCATED" in capsys.readouterr().out
    items = json.loads((tmp_path / "attributions.json").read_text())["items"]
    assert [i["truncated"] for i in items] == [True, False] and len(items[0]["tokens"]) == 256


@pytest.mark.hf
@OUTPUTS
def test_explain_without_arguments_explains_the_bundled_pairs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["explain"]) == 0
    out = capsys.readouterr().out
    assert "pair 1A" in out and "pair 4B" in out and "hotflip:" in out
    assert "cosine similarity" in out
    assert (tmp_path / "embgrad-out" / "report.html").stat().st_size > 1000
    assert (tmp_path / "embgrad-out" / "heatmap.png").stat().st_size > 5000


@pytest.mark.hf
@OUTPUTS
def test_explain_a_single_text_with_the_bundled_model(tmp_path, capsys):
    pytest.importorskip("transformers")
    argv = ["explain", "--text", "I loved this movie", "--out", str(tmp_path), "--format",
            "terminal,json", "--hotflip-k", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "no labels given: explaining zero-shot sentiment" in captured.err
    assert "zero-shot" in captured.out and "target positive" in captured.out
    doc = json.loads((tmp_path / "attributions.json").read_text())
    assert doc["labels"] == ["positive", "negative"] and "zero-shot" in doc["quantity"]
    assert doc["items"][0]["target"] == "positive" and doc["items"][0]["value"] < 0
    argv = ["explain", "--text", "I loved this movie", "--labels", "cinema,sport,cooking",
            "--out", str(tmp_path), "--format", "json", "--overwrite"]  # fmt: skip
    assert cli.main(argv) == 0
    doc = json.loads((tmp_path / "attributions.json").read_text())
    assert doc["labels"] == ["cinema", "sport", "cooking"] and "note" not in doc
    assert doc["items"][0]["target"] == "cinema"


def test_importing_embgrad_its_cli_and_explainer_imports_no_framework():
    code = (
        "import sys, embgrad, embgrad.cli, embgrad.explain, embgrad.render.html; "
        "embgrad.list_methods(); embgrad.cli.build_parser(); "
        "bad = [m for m in ('torch', 'mxnet', 'matplotlib', 'rich', 'transformers', 'captum')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
