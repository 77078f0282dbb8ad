"""``embgrad run`` on token-classification and question-answering heads (random-init, saved
and loaded through ``hf:PATH``): one row per text holding its matrix, labels / span, the same
numbers as the Python API, resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf

ROWS = [
    {"text": "Paris is lovely", "ctx": "Ada wrote it."},
    {"text": "Who wrote the program?", "ctx": "The program was written by Ada in 1843."},
    {"text": "Ada Lovelace", "ctx": "In London."},
]


def _save(model: Any, path: Path) -> str:
    from embgrad.models import minilm

    model.save_pretrained(path)
    tf.AutoTokenizer.from_pretrained(minilm.model_path()).save_pretrained(path)
    return f"hf:{path}"


def _cfg(**kw: Any) -> Any:
    return tf.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=64, **kw,
    )  # fmt: skip


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return data


def test_token_classifier_rows_match_the_api_and_resume(tmp_path: Path, capsys: Any) -> None:
    from embgrad.cli import main
    from embgrad.models.load import load
    from embgrad.outputs import attribute_tokens

    torch.manual_seed(0)
    names = {0: "O", 1: "LOC", 2: "PER"}
    spec = _save(tf.BertForTokenClassification(_cfg(num_labels=3, id2label=names)), tmp_path / "m")
    out = tmp_path / "out"
    cmd = ["run", "--data", str(_data(tmp_path)), "--text-column", "text", "--model", spec,
           "--out", str(out), "--rows-per-shard", "2", "--batch-size", "2"]  # fmt: skip
    assert main(cmd) == 0, capsys.readouterr().err
    rows = sorted(pq.read_table(out / "data").to_pylist(), key=lambda r: r["row"])
    assert [r["row"] for r in rows] == [0, 1, 2]
    loaded = load(spec)
    api = attribute_tokens(loaded.model, [r["text"] for r in ROWS], tokenizer=loaded.tokenizer)
    for b, row in enumerate(rows):
        k = int((api.positions[b] >= 0).sum())
        assert row["positions"] == api.positions[b, :k].tolist()
        assert row["labels"] == api.label_names[b][:k]
        got = np.array(row["scores"])
        assert got.shape == (k, int(api.mask[b].sum()))
        np.testing.assert_allclose(got, api.scores[b, :k][:, api.mask[b]], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(row["probability"], api.probabilities[b, :k], rtol=1e-6)
        assert row["span"] is None
    (out / "data" / "part-000001.parquet").unlink()
    assert main(cmd) == 0
    assert sorted(pq.read_table(out / "data").to_pylist(), key=lambda r: r["row"]) == rows


def test_question_answering_rows_hold_the_span(tmp_path: Path, capsys: Any) -> None:
    from embgrad.cli import main

    torch.manual_seed(0)
    spec = _save(tf.BertForQuestionAnswering(_cfg()), tmp_path / "qa")
    out = tmp_path / "out"
    data = _data(tmp_path)
    base = ["run", "--data", str(data), "--text-column", "text", "--model", spec,
            "--out", str(out)]  # fmt: skip
    assert main(base) != 0  # no contexts: refused before anything is written
    assert not (out / "data").exists()
    assert main([*base, "--pair-column", "ctx"]) == 0, capsys.readouterr().err
    rows = sorted(pq.read_table(out / "data").to_pylist(), key=lambda r: r["row"])
    for row in rows:
        s, e = row["span"]
        assert s <= e and len(row["rows"]) == 3 and row["source_length"] > 0
        assert np.array(row["scores"]).shape == (3, len(row["tokens"]))


def test_the_explainer_sends_a_head_to_explain_outputs(tmp_path: Path) -> None:
    from embgrad.errors import InputError
    from embgrad.explain import Explainer

    torch.manual_seed(0)
    spec = _save(tf.BertForTokenClassification(_cfg(num_labels=2)), tmp_path / "m")
    ex = Explainer.from_spec(spec)
    with pytest.raises(InputError, match="explain_outputs"):
        ex.explain(["Paris"])
    (fields,) = ex.explain_outputs(["Paris is nice"])
    assert fields["positions"] == [1, 2, 3] and len(fields["rows"]) == 3
