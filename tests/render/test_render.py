"""The renderers on hand-made results: escaping, legend and labels, widths, files, extras."""

from __future__ import annotations

import io
import sys

import pytest

from embgrad.errors import MissingExtraError
from embgrad.items import TokenAttribution, items_to_json


def item(**kw) -> TokenAttribution:
    base = dict(
        text='say <script>alert("x")</script> & more',
        tokens=["[CLS]", "say", "<script>", "alert", "&", "[SEP]"],
        scores=[0.1, -0.5, 1.0, 0.25, 0.0, -0.05],
        loss=0.8125,
        table_grad_norm=1.5,
        delta=0.00123,
        hotflip=[
            {
                "position": 2,
                "token": "<script>",
                "replacement": "<b>",
                "estimate": -0.3,
                "verified": -0.25,
                "direction": "decrease",
            }
        ],
        truncated=False,
        method="integrated_gradients",
        target="pos<itive>",
    )
    base.update(kw)
    return TokenAttribution(**base)


def test_html_is_one_file_with_escaped_tokens_legend_and_labels():
    from embgrad.render.html import render_html

    page = render_html([item(), item(truncated=True, delta=None, target=None)])
    assert page.count("<script>") == 1 and "&lt;script&gt;" in page  # only the tooltip's own
    assert "&lt;b&gt;" in page and "pos&lt;itive&gt;" in page
    assert "src=" not in page and "href=" not in page and "@import" not in page
    assert "blue negative" in page and "linear-gradient" in page  # the legend
    assert "method: integrated_gradients" in page
    assert "IG delta 1.23e-03" in page and "target pos&lt;itive&gt;" in page
    assert "TRUNCATED" in page


def test_terminal_degrades_to_plain_text_when_not_a_tty():
    Console = pytest.importorskip("rich.console").Console

    from embgrad.render.terminal import render_terminal

    out = io.StringIO()
    render_terminal([item()], console=Console(file=out, width=100))
    text = out.getvalue()
    assert "\x1b[" not in text  # no escape codes
    assert "<script>(+1)" in text and "say(-0.5)" in text
    assert "'<script>' -> '<b>' (verified -0.2500, est. -0.3000, decrease)" in text


def test_terminal_colours_fit_in_100_columns():
    Console = pytest.importorskip("rich.console").Console

    from embgrad.render.terminal import render_terminal

    out = io.StringIO()
    long = item(tokens=["token"] * 60, scores=[float(i) for i in range(60)], text="word " * 60)
    render_terminal([long], console=Console(file=out, width=100, force_terminal=True))
    text = out.getvalue()
    from rich.text import Text

    assert "\x1b[" in text  # coloured
    assert " token +59 " in Text.from_ansi(text).plain  # ... with the numbers
    widths = [Text.from_ansi(line).cell_len for line in text.splitlines()]
    assert max(widths) <= 100


@pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")
def test_png_is_a_labelled_non_empty_image(tmp_path):
    pytest.importorskip("matplotlib")
    from embgrad.render.png import heatmap_figure, write_png

    path = write_png([item(), item(tokens=["a"] * 25, scores=[1.0] * 25)], tmp_path / "h.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    texts = [t.get_text() for t in heatmap_figure([item()]).axes[0].texts]
    assert "<script>" in texts and any("integrated_gradients" in t for t in texts)


def test_json_keeps_every_field():
    import json

    doc = json.loads(items_to_json([item()], {"method": "integrated_gradients"}))
    assert set(doc) == {"embgrad_version", "method", "items"}
    assert doc["items"][0]["tokens"][2] == "<script>" and doc["items"][0]["delta"] == 0.00123


@pytest.mark.parametrize(("module", "renderer"), [("rich", "terminal"), ("matplotlib", "png")])
def test_a_missing_extra_names_the_install_command(monkeypatch, module, renderer):
    monkeypatch.setitem(sys.modules, module, None)
    for name in list(sys.modules):
        if name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)
    from embgrad.render.png import write_png
    from embgrad.render.terminal import render_terminal

    with pytest.raises(MissingExtraError, match=r"pip install 'embgrad\[viz\]'"):
        if renderer == "terminal":
            render_terminal([item()])
        else:
            write_png([item()], "unused.png")


def test_long_texts_get_short_headings_that_say_how_much_was_kept():
    Console = pytest.importorskip("rich.console").Console

    from embgrad.render.html import render_html
    from embgrad.render.terminal import render_terminal

    words = " ".join(f"word{i}" for i in range(2000))
    long = item(text=words, truncated=True, n_tokens=2731, tokens=["w"] * 256, scores=[0.1] * 256)
    page = render_html([long])
    head = page.split("<h2>")[1].split("</h2>")[0]
    assert len(head) <= 160 and head.startswith("[1] word0 word1") and head.endswith("…")
    assert "TRUNCATED to 256 of 2,731 tokens" in page
    for force in (False, True):
        out = io.StringIO()
        render_terminal([long], console=Console(file=out, width=100, force_terminal=force))
        text = out.getvalue()
        assert "word1999" not in text and "word30 " not in text
        assert "TRUNCATED to 256 of 2,731 tokens" in text
