"""One integrated-gradients default for every front door (issue 23): ``embgrad explain``, the
``Explainer``, ``embgrad.attribute`` and ``embgrad run`` explain the same text with the same
baseline ("zeros") and give the same numbers; every output records the baseline used."""

from __future__ import annotations

import json

import numpy as np
import pytest

import embgrad
from embgrad import cli
from embgrad.methods import get_method

TEXT = "I loved this movie"
LABELS = ["positive", "negative"]
RECORDED = {"baseline": "zeros", "n_steps": 8, "rule": "gausslegendre"}


def test_the_default_baseline_is_zeros_in_the_signature_the_listing_and_the_error():
    ig = get_method("integrated_gradients")
    assert ig.options()["baseline"] == "zeros"
    assert ig.as_run({"n_steps": 8}) == RECORDED
    assert ig.as_run({"baseline": "pad"})["baseline"] == "pad"  # given wins
    assert get_method("gradient").as_run({}) == {}  # methods without recorded options


def test_embgrad_methods_states_the_baseline_default_once(capsys):
    assert cli.main(["methods"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "-O baseline=" in ln)
    assert "(default 'zeros')" in line and line.count("default") == 1, line


def test_the_option_error_names_zeros_as_the_default(capsys):
    assert cli.main(["explain", "--method", "integrated_gradients", "-O", "baselin=pad"]) == 1
    err = capsys.readouterr().err
    assert "did you mean baseline" in err and "baseline (default 'zeros')" in err


@pytest.mark.hf
def test_cli_explainer_and_attribute_give_the_same_numbers_and_record_the_baseline(tmp_path):
    pytest.importorskip("transformers")
    from embgrad.explain import Explainer
    from oracle_methods import minilm

    out = tmp_path / "out"
    argv = ["explain", "--text", TEXT, "--labels", ",".join(LABELS), "--method",
            "integrated_gradients", "-O", "n_steps=8", "--format", "json,html", "--out",
            str(out), "--hotflip-k", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    doc = json.loads((out / "attributions.json").read_text())
    assert doc["options"] == RECORDED
    assert "baseline=zeros" in (out / "report.html").read_text()
    cli_scores = np.asarray(doc["items"][0]["scores"])

    model, tok = minilm()
    att = embgrad.attribute(
        model, dict(tok([TEXT], return_tensors="pt")), candidate_labels=LABELS,
        tokenizer=tok, method="integrated_gradients", n_steps=8,
    )  # fmt: skip
    py_scores = att.scores[0]
    assert att.raw.info["baseline"] == "zeros" and att.options == RECORDED
    assert json.loads(att.to_json())["options"] == RECORDED
    assert "baseline=zeros" in att.to_html()

    items = Explainer.from_spec().explain(
        [TEXT], candidate_labels=LABELS, method="integrated_gradients", hotflip_k=0, n_steps=8
    )
    ex_scores = np.asarray(items[0].scores)
    assert cli_scores.shape == py_scores.shape == ex_scores.shape
    scale = np.abs(py_scores).max()
    np.testing.assert_allclose(cli_scores, py_scores, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(ex_scores, py_scores, rtol=1e-5, atol=1e-5 * scale)
    # embgrad run: the same numbers in the Parquet rows, the baseline in the file metadata
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from embgrad.data import RunConfig, run

    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"text": TEXT}) + "\n")
    run(RunConfig(data=data, text_column="text", out=tmp_path / "run",
                  method="integrated_gradients", options={"n_steps": 8}, hotflip_k=0,
                  candidate_labels=tuple(LABELS)), progress=False)  # fmt: skip
    table = pq.read_table(tmp_path / "run" / "data")
    run_scores = np.asarray(table.column("scores").to_pylist()[0])
    np.testing.assert_allclose(run_scores, py_scores, rtol=1e-5, atol=1e-5 * scale)
    meta = json.loads(table.schema.metadata[b"embgrad"])
    assert meta["options"] == RECORDED
    # and the numbers are IG from zeros: the explicit baseline gives the same
    again = embgrad.attribute(
        model, dict(tok([TEXT], return_tensors="pt")), candidate_labels=LABELS,
        tokenizer=tok, method="integrated_gradients", n_steps=8, baseline="zeros",
    )  # fmt: skip
    np.testing.assert_array_equal(again.scores[0], py_scores)
    pad = embgrad.attribute(
        model, dict(tok([TEXT], return_tensors="pt")), candidate_labels=LABELS,
        tokenizer=tok, method="integrated_gradients", n_steps=8, baseline="pad",
    )  # fmt: skip
    assert pad.options["baseline"] == "pad"  # the tokenizer's [PAD] id, taken from tok
    assert not np.allclose(pad.scores[0], py_scores)
