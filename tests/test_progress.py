"""The one progress-bar wrapper: explain / pass bars on a terminal only, ``embgrad run``'s bar
shown when asked and keeping the others quiet while it is."""

from __future__ import annotations

from typing import Any

import pytest

from embgrad import _progress

pytest.importorskip("tqdm")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "_tty", lambda: True)
    monkeypatch.setattr(_progress, "DELAY_S", 0.0)


def test_a_shown_run_bar_keeps_the_other_bars_quiet(terminal: None, capsys: Any) -> None:
    from embgrad.data.progress import run_bar

    with run_bar(10, 2, enabled=True) as outer:
        assert outer.shown
        with _progress.bar(5, "inner") as inner:
            assert not inner.shown
        outer.update(8)
    with _progress.bar(5, "after") as after:  # quiet again only while the run bar was open
        assert after.shown
    err = capsys.readouterr().err
    assert "embgrad run" in err and "10/10" in err and "inner" not in err


def test_a_hidden_run_bar_does_not_silence_anything(terminal: None) -> None:
    from embgrad.data.progress import run_bar

    with run_bar(10, enabled=False) as outer:
        assert not outer.shown
        with _progress.bar(5, "inner") as inner:
            assert inner.shown


def test_bars_need_a_terminal_and_two_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "_tty", lambda: False)
    assert not _progress.bar(5, "x").shown
    monkeypatch.setattr(_progress, "_tty", lambda: True)
    assert not _progress.bar(1, "x").shown
    with _progress.quiet():
        assert not _progress.bar(5, "x").shown


def test_the_other_bars_speak_again_when_closing_the_run_bar_fails(
    terminal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embgrad.data.progress import run_bar

    outer = run_bar(10, enabled=True)

    def broken() -> None:
        raise OSError("stderr went away")

    with pytest.raises(OSError), outer:
        monkeypatch.setattr(outer, "close", broken)
    monkeypatch.undo()
    assert _progress._QUIET == [0]
    outer._bar.close()  # the real tqdm bar, closed by hand
