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


def test_pairs_are_indexed_and_queried_as_the_api_does(setup, tmp_path):
    pairs = [("a great film", "I liked it", 1), ("the plot was dull", "boring", 0),
             ("great acting", "dull plot", 0), ("moving music", "great", 1)]  # fmt: skip
    data = tmp_path / "pairs.csv"
    data.write_text("a,b,y\n" + "\n".join(f"{a},{b},{y}" for a, b, y in pairs) + "\n")
    idx, out = tmp_path / "pidx", tmp_path / "pq"
    root = setup["root"]
    assert main(["influence", "index", "--model", f"hf:{root / 'model'}", "--data", str(data),
                 "--text-column", "a", "--pair-column", "b", "--label-column", "y",
                 "--out", str(idx)]) == 0  # fmt: skip
    assert main(["influence", "query", "--index", str(idx), "--text", "great film",
                 "--pair", "liked", "--label", "1", "-k", "4", "--format", "json",
                 "--out", str(out)]) == 0  # fmt: skip
    rec = json.loads((out / "influence.json").read_text())[0]
    tok = setup["tok"]
    enc = tok([a for a, _, _ in pairs], [b for _, b, _ in pairs], padding=True, return_tensors="pt")
    api = InfluenceIndex.build(
        setup["model"], dict(enc), labels=torch.tensor([y for *_, y in pairs])
    )
    test = tok(["great film"], ["liked"], return_tensors="pt")
    scores = api.query(dict(test), labels=torch.tensor([1])).scores[0]
    got = {r["example"]: r["score"] for r in rec["proponents"] + rec["opponents"]}
    assert got and all(s == pytest.approx(scores[j], rel=1e-5) for j, s in got.items())
    assert rec["pair"] == "liked"


def test_query_reads_test_texts_and_labels_from_a_data_file(setup, tmp_path):
    out = tmp_path / "d"
    argv = ["influence", "query", "--index", str(setup["idx"]), "--data", str(setup["data"]),
            "--label-column", "label", "-k", "2", "--format", "json,parquet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    records = json.loads((out / "influence.json").read_text())
    assert [r["text"] for r in records] == [t for t, _ in TRAIN]
    assert [r["label"] for r in records] == [y for _, y in TRAIN]
    # the proponents are the API's for the same texts and labels
    idx, _ = _api_scores(setup, ["x"], [0])
    inf = idx.query(dict(setup["tok"]([t for t, _ in TRAIN], padding=True, return_tensors="pt")),
                    labels=torch.tensor([1 if y == "positive" else 0 for _, y in TRAIN]))  # fmt: skip
    for i, r in enumerate(records):
        assert [p["example"] for p in r["proponents"]] == inf.top(2)[i].proponents.tolist()


def test_bad_rows_go_to_errors_jsonl_and_the_rest_is_indexed(setup, tmp_path, capsys):
    lines = [
        json.dumps({"text": "a great film", "label": "positive"}),
        "{not json",
        json.dumps({"text": "", "label": "negative"}),
        json.dumps({"text": "dull plot", "label": "neutral"}),
        json.dumps({"text": "dull plot", "label": None}),
        json.dumps({"text": "loved it", "label": 1}),
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    idx = tmp_path / "midx"
    argv = ["influence", "index", "--model", f"hf:{setup['root'] / 'model'}", "--data", str(data),
            "--label-column", "label", "--out", str(idx)]  # fmt: skip
    assert main(argv) == 0
    assert "4 bad row(s)" in capsys.readouterr().err
    errors = [json.loads(x) for x in (idx / "errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [1, 2, 3, 4]
    assert "neutral" in errors[2]["error"] and "label" in errors[3]["error"]
    kept = [json.loads(x) for x in (idx / "examples.jsonl").read_text().splitlines()]
    assert [(k["row"], k["text"]) for k in kept] == [(0, "a great film"), (5, "loved it")]
    out = tmp_path / "mq"
    assert main(["influence", "self", "--index", str(idx), "--format", "json",
                 "--out", str(out)]) == 0  # fmt: skip
    assert {r["row"] for r in json.loads((out / "self_influence.json").read_text())} == {0, 5}
