"""The notebook views, in a real Jupyter kernel: ``examples/notebook.ipynb`` executed with
nbclient on an ipykernel of this interpreter; an ``Attribution`` displays as HTML, its
``plot()`` as a PNG, and its repr is one short line."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

pytestmark = [pytest.mark.hf, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_example_notebook_shows_html_report_and_png_heatmap(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    # the kernel is this interpreter (ipykernel's native spec), importing this checkout
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve() or spec.argv[0] in (
        "python", "python3", sys.executable
    )  # fmt: skip
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    )
    nb = nbformat.read(ROOT / "examples/notebook.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    # no red warnings: huggingface_hub's tqdm.auto warns "IProgress not found" in a kernel
    # without ipywidgets (issue 23); nothing is written to stderr at all
    stderr = [o["text"] for c in code for o in c.outputs if o.get("name") == "stderr"]
    assert not stderr, stderr
    printed = "".join(o["text"] for o in code[0].outputs if o.get("name") == "stdout")
    assert (
        printed.startswith("<Attribution method='grad_x_input': 2 text(s)") and len(printed) < 200
    )
    html = [o for o in code[1].outputs if "text/html" in o.get("data", {})]
    assert html and "<iframe srcdoc=" in html[0]["data"]["text/html"]
    assert "guitar" in html[0]["data"]["text/html"]
    png = [o for o in code[2].outputs if "image/png" in o.get("data", {})]
    assert png and base64.b64decode(png[0]["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<Figure" not in str(code[2].outputs)
    flips = code[3].outputs[0]["data"]["text/html"]
    assert "verified change" in flips
    (tmp_path / "heatmap.png").write_bytes(base64.b64decode(png[0]["data"]["image/png"]))


def test_attribution_repr_is_short_and_plot_displays_as_png():
    pytest.importorskip("torch")
    import numpy as np

    from embgrad.items import TokenAttribution
    from embgrad.methods.result import Attribution

    items = [TokenAttribution(text="word " * 500, tokens=["w"] * 500, scores=[0.5] * 500,
                              loss=0.1, table_grad_norm=1.0, delta=None, hotflip=[],
                              truncated=False, method="gradient", target=None)] * 5  # fmt: skip
    att = Attribution(items=items, method="gradient", raw=None, mask=np.ones((5, 500), bool))
    text = repr(att)
    assert len(text) < 250 and "5 text(s), 2500 tokens" in text and "(2 more)" in text
    assert att._repr_html_().startswith("<iframe srcdoc=")
    fig = att.plot()
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.figure.get_size_inches()[0] == 12 and callable(fig.savefig)
