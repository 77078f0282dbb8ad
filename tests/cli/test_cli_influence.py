"""``embgrad influence index / query / self`` on a small random-init HF classifier saved to tmp
with the bundled tokenizer: the scores equal the API's, outputs are written and escaped, bad
input is one line on stderr (exit 1), and an index resumes only the same command."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pyarrow")

from embgrad import InfluenceIndex  # noqa: E402
from embgrad.cli import main  # noqa: E402
from oracle_methods import minilm  # noqa: E402

pytestmark = pytest.mark.hf

TRAIN = [
    ("a great and moving film", "positive"),
    ("the plot was dull", "negative"),
    ("great acting, dull plot", "negative"),
    ("I loved the music <b>", "positive"),
    ("the film was too long", "negative"),
    ("moving music and great acting", "positive"),
    ("dull", "negative"),
]


def _save(path, seed):
    from transformers import BertConfig, BertForSequenceClassification

    _, tok = minilm()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=2, max_position_embeddings=64,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
        architectures=["BertForSequenceClassification"],
    )  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("influence")
    model, tok = _save(root / "model", 0)
    other, _ = _save(root / "ckpt", 1)
    data = root / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in TRAIN) + "\n")
    idx = root / "idx"
    argv = [
        "influence", "index", "--model", f"hf:{root / 'model'}", "--data", str(data),
        "--label-column", "label", "--checkpoint", str(root / "model"),
        "--checkpoint", str(root / "ckpt"), "--weight", "0.5", "--weight", "2",
        "--batch-size", "3", "--out", str(idx),
    ]  # fmt: skip
    assert main(argv) == 0
    return dict(root=root, model=model, other=other, tok=tok, data=data, idx=idx, argv=argv)


def _api_scores(setup, texts, labels):
    tok = setup["tok"]
    enc = tok([t for t, _ in TRAIN], padding=True, return_tensors="pt")
    y = torch.tensor([1 if lab == "positive" else 0 for _, lab in TRAIN])
    idx = InfluenceIndex.build(
        setup["model"], [dict(enc)], labels=y, checkpoints=[setup["model"], setup["other"]],
        weights=[0.5, 2.0],
    )  # fmt: skip
    # the CLI pads each batch of 3 to its own length; padding changes nothing in BERT
    test = tok(texts, padding=True, return_tensors="pt")
    return idx, idx.query(dict(test), labels=torch.tensor(labels))


def test_query_writes_the_apis_scores_with_shared_tokens_in_every_format(setup, tmp_path, capsys):
    out = tmp_path / "q"
    argv = [
        "influence", "query", "--index", str(setup["idx"]), "--text", "great music",
        "--text", "a dull film", "--label", "positive", "--label", "negative", "-k", "3",
        "--format", "terminal,html,json,parquet", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1] great music" in printed and "proponents" in printed
    records = json.loads((out / "influence.json").read_text())
    _, inf = _api_scores(setup, ["great music", "a dull film"], [1, 0])
    for i, rec in enumerate(records):
        assert rec["label"] == ["positive", "negative"][i]
        top = inf.top(3)[i]
        assert [r["example"] for r in rec["proponents"]] == top.proponents.tolist()
        for r in rec["proponents"] + rec["opponents"]:
            assert r["score"] == pytest.approx(inf.scores[i, r["example"]], rel=1e-5)
            assert sum(t["contribution"] for t in r["tokens"]) == pytest.approx(
                r["score"], rel=1e-6
            )
            assert r["text"] == TRAIN[r["example"]][0]
    html = (out / "influence.html").read_text()
    assert "&lt;b&gt;" in html or "<b>" not in html  # texts are escaped
    assert 'class="hl"' in html  # shared tokens highlighted
    import pyarrow.parquet as pq

    table = pq.read_table(out / "influence.parquet").to_pylist()
    assert {r["kind"] for r in table} <= {"proponent", "opponent"} and table
    # outputs are never overwritten silently
    assert main(argv) == 1
    assert "exist" in capsys.readouterr().err


def test_self_ranks_by_the_apis_self_influence(setup, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["influence", "self", "--index", str(setup["idx"]), "--top", "4",
            "--format", "json,html,parquet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    records = json.loads((out / "self_influence.json").read_text())
    idx, _ = _api_scores(setup, ["x"], [0])
    expected = idx.self_influence()
    order = np.argsort(-expected, kind="stable")[:4]
    assert [r["example"] for r in records] == order.tolist()
    for r in records:
        assert r["score"] == pytest.approx(expected[r["example"]], rel=1e-5)
        assert r["label"] == TRAIN[r["example"]][1]
    assert "&lt;b&gt;" in (out / "self_influence.html").read_text() or len(records) < 4


def test_the_same_command_resumes_and_another_is_refused(setup, capsys):
    assert main(setup["argv"]) == 0  # everything already indexed: hashes checked, nothing redone
    other = [a if a != "0.5" else "0.25" for a in setup["argv"]]
    assert main(other) == 1
    assert "another command" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_1(setup, tmp_path, capsys):
    root = setup["root"]
    bad_label = tmp_path / "bad.jsonl"
    bad_label.write_text(json.dumps({"text": "x", "label": "neutral"}) + "\n")
    cases = [
        (["influence", "index", "--model", f"hf:{root / 'model'}", "--data", str(bad_label),
          "--label-column", "label", "--out", str(tmp_path / "a")], "neutral"),
        (["influence", "index", "--model", f"hf:{root / 'model'}", "--data", str(setup["data"]),
          "--label-column", "missing", "--out", str(tmp_path / "b")], "no column 'missing'"),
        (["influence", "index", "--model", f"hf:{root / 'model'}", "--data", str(setup["data"]),
          "--checkpoint", str(root / "ckpt"), "--weight", "1", "--weight", "2",
          "--out", str(tmp_path / "c")], "2 --weight for 1 --checkpoint"),
        (["influence", "query", "--index", str(tmp_path / "nothing"), "--text", "x",
          "--out", str(tmp_path / "d")], "no influence index"),
        (["influence", "query", "--index", str(setup["idx"]), "--out", str(tmp_path / "e")],
         "--text"),
        (["influence", "query", "--index", str(setup["idx"]), "--text", "x", "--label", "maybe",
          "--out", str(tmp_path / "f")], "maybe"),
    ]  # fmt: skip
    for argv, match in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err and err.count("\n") == 1, err


def test_query_without_label_uses_the_predicted_class(setup, tmp_path):
    out = tmp_path / "p"
    argv = ["influence", "query", "--index", str(setup["idx"]), "--text", "great music",
            "--format", "json", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "influence.json").read_text())[0]
    with torch.no_grad():
        logits = setup["model"](**setup["tok"](["great music"], return_tensors="pt")).logits
    assert rec["label"] == ["negative", "positive"][int(logits.argmax())]
