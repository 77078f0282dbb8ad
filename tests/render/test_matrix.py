"""The generation views: one matrix per generation (steps × input tokens) in HTML, JSON, PNG and
the terminal, built from a hand-made result (no framework needed)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from embgrad.methods.gen_result import GenerationAttribution


def _decoder_result() -> GenerationAttribution:
    # 2 samples, prompt P = 3 (sample 1 left-padded by one), K = 3 targets (sample 1: 2 real)
    b, p, k = 2, 3, 3
    scores = np.zeros((b, k, p + k))
    for s in range(b):
        for step in range(k):
            scores[s, step, : p + step] = np.arange(1, p + step + 1) * (s + 1)
    scores[1, :, 0] = 0  # the padding column
    mask = np.array([[1, 1, 1], [0, 1, 1]], dtype=bool)
    active = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)
    p_steps = np.array([[0.5, 0.25, 0.125], [0.9, 0.8, np.nan]])
    return GenerationAttribution(
        method="gradient",
        kind="decoder",
        scores=scores,
        signed=scores,
        step_scores={"probability": p_steps, "entropy": p_steps * 2},
        quantity=np.log(p_steps),
        targets=np.array([[7, 8, 9], [4, 5, 0]]),
        target_mask=active,
        contrast=None,
        prompt_length=p,
        column_mask=np.concatenate([mask, active], axis=1),
        tokens=[["<script>", "b", "c", "x", "y", "z"], ["[PAD]", "e", "f", "u", "v", "[PAD]"]],
        target_tokens=[["x", "y", "z"], ["u", "v"]],
    )


def test_items_hold_the_real_steps_and_the_columns_they_read():
    first, second = _decoder_result().items
    assert first.generated == ["x", "y", "z"] and first.tokens == ["<script>", "b", "c", "x", "y"]
    assert np.array(first.scores).shape == (3, 5)
    assert first.scores[0] == [1, 2, 3, 0, 0] and first.scores[2] == [1, 2, 3, 4, 5]
    assert second.generated == ["u", "v"] and second.tokens == ["e", "f", "u"]
    assert second.scores == [[4, 6, 0], [4, 6, 8]]
    assert second.step_scores["probability"] == [0.9, 0.8] and second.text == "e f"


def test_json_html_png_and_terminal(tmp_path):
    res = _decoder_result()
    doc = json.loads(res.to_json(tmp_path / "a.json"))
    assert doc["method"] == "gradient" and doc["kind"] == "decoder"
    assert [len(i["scores"]) for i in doc["items"]] == [3, 2]
    page = res.to_html(tmp_path / "a.html")
    assert "&lt;script&gt;" in page and "<script>" not in page and "probability" in page
    framed = res._repr_html_()  # sandboxed: the page's CSS stays out of the notebook
    assert framed.startswith("<iframe srcdoc=") and " sandbox" in framed
    pytest.importorskip("matplotlib")
    res.plot(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    rich = pytest.importorskip("rich.console")
    buf = io.StringIO()
    res.show(console=rich.Console(file=buf, width=100, color_system=None), top=2)
    out = buf.getvalue()
    assert "'z' (probability 0.125, entropy 0.25): y(+5) x(+4)" in out
