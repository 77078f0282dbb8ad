"""The HTML report in a real browser (Debian's headless Chromium): it loads with no console
messages, every token is there as text, a screenshot is taken, and hovering a token shows its
score and its verified HotFlip candidates. Skipped where Chromium is not installed
(``make test`` installs it as root: ``apt-get install -y chromium``)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from embgrad.items import TokenAttribution
from embgrad.render.html import render_html

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium, as root; "
    "`make venv` does it when run as root)",
)
TOKENS = ["[CLS]", "say", "<script>", "a&b", '"quoted"', "naïve", "</span>", "[SEP]"]


def item() -> TokenAttribution:
    return TokenAttribution(
        text='say <script> a&b "quoted" naïve </span>',
        tokens=TOKENS,
        scores=[0.0, -0.5, 1.0, 0.25, -0.125, 0.5, 0.75, 0.0],
        loss=0.8125,
        table_grad_norm=1.5,
        delta=None,
        hotflip=[
            {
                "position": 2,
                "token": "<script>",
                "replacement": "<b>",
                "estimate": -0.3,
                "verified": -0.25,
                "direction": "decrease",
            },
            {
                "position": 5,
                "token": "naïve",
                "replacement": "x'y",
                "estimate": -0.1,
                "verified": None,
                "direction": "decrease",
            },
        ],
        truncated=False,
        method="hotflip",
        target=None,
    )


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [BROWSER or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def console(stderr: str) -> list[str]:
    """The page's console messages (errors and uncaught exceptions among them)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class Tokens(HTMLParser):
    """The text of every ``span.tok`` and of ``#tip`` in a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[str] = []
        self.tip = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "span" and a.get("class") == "tok":
            self._in, self.tokens = "tok", [*self.tokens, ""]
        elif a.get("id") == "tip":
            self._in = "tip"

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "tok":
            self.tokens[-1] += data
        elif self._in == "tip":
            self.tip += data


def dump(tmp_path: Path, page: str, name: str) -> tuple[Tokens, list[str]]:
    path = tmp_path / name
    path.write_text(page, encoding="utf-8")
    run = chromium(tmp_path, "--dump-dom", path.as_uri())
    parsed = Tokens()
    parsed.feed(run.stdout)
    return parsed, console(run.stderr)


def test_report_loads_without_console_messages_and_shows_every_token(tmp_path):
    page = render_html([item()], title="browser <test>")
    parsed, messages = dump(tmp_path, page, "report.html")
    assert messages == []
    assert parsed.tokens == TOKENS  # every token, as text (escaped in the page)
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,600",
             (tmp_path / "report.html").as_uri())  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_broken_page_is_reported(tmp_path):  # the console check can fail
    page = render_html([item()]).replace("</body>", "<script>notDefined();</script></body>")
    _, messages = dump(tmp_path, page, "broken.html")
    assert any("Uncaught ReferenceError" in m for m in messages)


def test_hovering_a_token_shows_its_score_and_verified_candidates(tmp_path):
    hover = (
        "<script>var t=document.querySelectorAll('.tok');"
        "t[{i}].dispatchEvent(new MouseEvent('mouseover',{{bubbles:true}}));</script></body>"
    )
    page = render_html([item()])
    parsed, messages = dump(tmp_path, page.replace("</body>", hover.format(i=2)), "hover2.html")
    assert messages == []
    assert parsed.tip.splitlines() == [
        "score +1",
        "→ <b>: verified -0.2500 (estimate -0.3000, decrease)",
    ]
    shot = tmp_path / "hover.png"  # what a reader sees: the tooltip under the token
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,400",
             (tmp_path / "hover2.html").as_uri())  # fmt: skip
    assert shot.stat().st_size > 10_000
    parsed, _ = dump(tmp_path, page.replace("</body>", hover.format(i=5)), "hover5.html")
    assert parsed.tip.splitlines() == [
        "score +0.5",
        "→ x'y: verified n/a (estimate -0.1000, decrease)",
    ]
    parsed, _ = dump(tmp_path, page.replace("</body>", hover.format(i=1)), "hover1.html")
    assert parsed.tip.splitlines() == ["score -0.5"]  # no candidates at this token
    parsed, _ = dump(tmp_path, page, "still.html")
    assert parsed.tip == ""  # nothing shown before a hover
