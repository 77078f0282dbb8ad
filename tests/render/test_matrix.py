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


def _tricky_result() -> GenerationAttribution:
    """The decoder result with a ``$…$`` pair (mathtext, if parsed) and a bidi override
    (U+202E, which reorders the text after it when written raw) among the tokens."""
    res = _decoder_result()
    res.tokens = [
        ["$5", "and", "$x^2$", "x", "y", "z"],
        ["[PAD]", "\u202eevil", "f", "u", "v", "[PAD]"],
    ]
    res.target_tokens = [["x", "$", "z"], ["u", "\u202ev"]]
    return res


def test_the_png_draws_dollars_literally():
    pytest.importorskip("matplotlib")
    from matplotlib.text import Text

    from embgrad.render import matrix

    fig = matrix.figure(_tricky_result().items)
    drawn = [t for t in fig.findobj(Text) if t.get_text()]
    with_dollar = [t for t in drawn if "$" in t.get_text()]
    labels = {t.get_text() for t in with_dollar}
    assert {"$5", "$x^2$", "$"} <= labels, labels  # as written: no "\$" escapes shown
    assert any("$5 and $x^2$" in t.get_text() for t in with_dollar)  # the heading
    for t in drawn:  # every text, not only those with a "$" today
        assert t.get_parse_math() is False, t.get_text()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_bidi_controls_are_visible_marks_in_every_html_view(tmp_path):
    res = _tricky_result()
    page = res.to_html(tmp_path / "b.html")
    framed = res._repr_html_()
    for html in (page, framed):
        assert "\u202e" not in html
    assert "<h2>[2] ⟨U+202E⟩evil f</h2>" in page  # the heading
    assert "<th>⟨U+202E⟩v</th>" in page  # a generated token's row
    assert ">⟨U+202E⟩evil</th>" in page  # an input token's column
    assert 'title="⟨U+202E⟩v ← ⟨U+202E⟩evil:' in page  # a cell's tooltip
    assert "⟨U+202E⟩evil" in framed
    doc = json.loads(res.to_json(tmp_path / "b.json"))  # the data keeps the text as it is
    assert doc["items"][1]["tokens"][0] == "\u202eevil"
