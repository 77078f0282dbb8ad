"""The documentation site (issue 23): ``mkdocs build --strict`` (warnings are errors: a broken
link, a page missing from the build, a docstring the API reference cannot read) builds every
page of ``docs/`` offline, and every page renders in headless Chromium, served over HTTP,
without a console message (no script error, no resource that fails to load). Skipped with the
reason where MkDocs or Chromium is not installed."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
    pytest.importorskip(
        module, reason=f"{module} is not installed (the docs extra: pip install 'embgrad[docs]'; "
        "`make venv` installs requirements/docs.txt)",
    )  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WARNING" not in run.stderr, run.stderr[-3000:]
    return out


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if p.name != "404.html")


def test_every_docs_page_is_built(site: Path) -> None:
    built = {p.relative_to(site).with_suffix("").as_posix() for p in _pages(site)}
    sources = {
        p.relative_to(ROOT / "docs").with_suffix("").as_posix()
        for p in (ROOT / "docs").rglob("*.md")
    }
    assert sources <= built, sorted(sources - built)
    for must in ("index", "getting-started", "how-to/gluon", "reference/api", "design",
                 "benchmarks/index", "threads", "methods"):  # fmt: skip
        assert must in built


def test_the_api_reference_comes_from_the_docstrings(site: Path) -> None:
    page = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for name in ("gradients", "attribute", "attribute_generation", "Attribution",
                 "GenerationAttribution", "SparseRows", "InputError", "RunConfig"):  # fmt: skip
        assert (
            f'id="embgrad.{name}"' in page
            or f'id="embgrad.errors.{name}"' in page
            or (f'id="embgrad.data.{name}"' in page)
        ), name
    # a sentence of attribute()'s docstring, rendered
    assert "one of" in page and "list_methods" in page


def test_the_benchmark_pages_hold_the_results_and_their_plots(site: Path) -> None:
    page = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "embgrad benchmarks" in page and "--8&lt;--" not in page and "--8<--" not in page
    for plot in ("time_vs_batch.png", "memory_vs_vocab.png"):
        assert f'src="plots/{plot}"' in page
        assert (site / "benchmarks" / "plots" / plot).read_bytes()[:4] == b"\x89PNG"


def test_the_site_asks_the_network_for_nothing(site: Path) -> None:
    for p in _pages(site):
        text = p.read_text(encoding="utf-8")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, p
        assert 'src="http' not in text, p  # scripts, images: all local


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site over HTTP on a free local port (as a web server would serve it)."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(
    BROWSER is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium, as root; "
    "`make test` does it when run as root)",
)
def test_every_page_renders_in_chromium_without_console_messages(
    site: Path, served: str, tmp_path: Path
) -> None:
    failures = []
    for page in _pages(site):
        url = f"{served}/{page.relative_to(site).as_posix()}"
        run = subprocess.run(
            [BROWSER or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=3000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        messages = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
        if run.returncode != 0 or messages or "<h1" not in run.stdout:
            failures.append((url, run.returncode, messages[:3]))
    assert not failures, failures
