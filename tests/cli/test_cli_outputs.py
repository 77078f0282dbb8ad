"""``embgrad explain --model hf:DIR`` on random-init token-classification and QA heads: the
head is detected from the folder and the matrix views are written."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from embgrad.cli import main  # noqa: E402

pytestmark = pytest.mark.hf


def _save(model, path):
    from embgrad.models import minilm

    model.save_pretrained(path)
    tf.AutoTokenizer.from_pretrained(minilm.model_path()).save_pretrained(path)
    return f"hf:{path}"


def _cfg(**kw):
    return tf.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=64, **kw,
    )  # fmt: skip


def test_explain_detects_a_token_classifier_and_writes_the_matrix(tmp_path, capsys):
    torch.manual_seed(0)
    labels = {0: "O", 1: "LOC", 2: "PER"}
    model = tf.BertForTokenClassification(_cfg(num_labels=3, id2label=labels))
    spec = _save(model, tmp_path / "ner")
    out = tmp_path / "out"
    rc = main(["explain", "--model", spec, "--text", "Paris is nice", "--text", "Ada",
               "--format", "json,html", "--out", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads(next(out.glob("*.json")).read_text())
    assert doc["kind"] == "token_classification"
    first, second = doc["items"]
    assert len(first["generated"]) == len(first["scores"]) == 3  # paris, is, nice
    assert any(name in first["generated"][0] for name in labels.values())
    assert len(second["generated"]) == 1 and "probability" in first["step_scores"]
    assert next(out.glob("*.html")).read_text().count("<table>") == 2


def test_explain_question_answering_with_pair(tmp_path):
    torch.manual_seed(0)
    spec = _save(tf.BertForQuestionAnswering(_cfg()), tmp_path / "qa")
    out = tmp_path / "out"
    rc = main(["explain", "--model", spec, "--text", "Who wrote it?", "--pair",
               "Ada wrote the program.", "--format", "json", "--out", str(out)])  # fmt: skip
    assert rc == 0
    (item,) = json.loads(next(out.glob("*.json")).read_text())["items"]
    assert item["kind"] == "question_answering" and len(item["generated"]) == 3
    assert item["source_length"] == 4  # who wrote it ?
    assert main(["explain", "--model", spec, "--text", "Who?", "--format", "json",
                 "--out", str(tmp_path / "o2")]) == 2  # fmt: skip
