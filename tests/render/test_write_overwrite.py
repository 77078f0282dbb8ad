"""The writer never replaces a file silently: ``overwrite=`` (``--overwrite``), checked before
anything is written."""

from __future__ import annotations

import numpy as np
import pytest

from embgrad.errors import InputError
from embgrad.items import TokenAttribution
from embgrad.methods.result import Attribution
from embgrad.render import write


def _att() -> Attribution:
    item = TokenAttribution(text="a b", tokens=["a", "b"], scores=[0.5, -0.25], loss=0.1,
                            table_grad_norm=1.0, delta=None, hotflip=[], truncated=False,
                            method="gradient", target=None)  # fmt: skip
    return Attribution(items=[item], method="gradient", raw=None, mask=np.ones((1, 2), bool))


def test_to_json_and_to_html_refuse_an_existing_file_unless_overwrite(tmp_path):
    att = _att()
    path = tmp_path / "a.json"
    att.to_json(path)
    path.write_text("mine")
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        att.to_json(path)
    assert path.read_text() == "mine"
    att.to_json(path, overwrite=True)
    assert path.read_text().startswith("{")
    html = tmp_path / "a.html"
    html.write_text("mine")
    with pytest.raises(InputError, match="exists"):
        att.to_html(html)
    att.to_html(html, overwrite=True)
    assert "<html" in html.read_text().lower()
    with pytest.raises(InputError, match="is a folder"):
        att.to_json(tmp_path)


def test_save_all_checks_every_file_before_writing_any(tmp_path):
    view = write.View(_att().items)
    (tmp_path / "report.html").write_text("mine")
    with pytest.raises(InputError, match=r"report\.html"):
        write.save_all(view, ["json", "html"], tmp_path)
    assert not (tmp_path / "attributions.json").exists()  # nothing written
    paths = write.save_all(view, ["json", "html"], tmp_path, overwrite=True)
    assert [p.name for p in paths] == ["attributions.json", "report.html"]
    a_file = tmp_path / "attributions.json"
    with pytest.raises(InputError, match="is an existing file"):
        write.save_all(view, ["json"], a_file)
