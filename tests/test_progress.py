"""Progress: tqdm on a terminal, a few plain lines elsewhere."""

from __future__ import annotations

import io

from detector.progress import LineProgress, progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    items = list(progress(range(100), desc="epoch 1/3", unit="batch", file=out))
    assert items == list(range(100))
    lines = out.getvalue().splitlines()
    # started, 25 %, 50 %, 75 %, done: no redraws, no carriage returns
    assert len(lines) == 5, lines
    assert all(line.startswith("epoch 1/3: ") for line in lines)
    assert "\r" not in out.getvalue()
    assert "100 batch" in lines[0]
    assert [("(25%)" in lines[1]), ("(50%)" in lines[2]), ("(75%)" in lines[3])] == [True] * 3
    assert lines[-1].startswith("epoch 1/3: done, 100/100 batch (100%)")


def test_postfix_and_manual_updates():
    out = io.StringIO()
    with progress(total=4, desc="video", unit="frame", file=out) as bar:
        for _ in range(4):
            bar.update(1)
            bar.set_postfix({"loss": "0.5"})
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("video: done, 4/4 frame") and last.endswith("loss=0.5")


def test_close_prints_once_and_unknown_total():
    out = io.StringIO()
    bar = LineProgress(desc="x", file=out)
    bar.update(3)
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [lines[0], lines[1]] and lines[1].startswith("x: done, 3 it")


def test_terminal_gets_tqdm_and_disabled_prints_nothing():
    from tqdm import tqdm

    bar = progress(range(3), file=FakeTerminal())
    assert isinstance(bar, tqdm)
    bar.close()
    out = io.StringIO()
    silent = progress(range(3), enabled=False, file=out)
    assert list(silent) == [0, 1, 2] and silent.n == 3
    assert out.getvalue() == ""
