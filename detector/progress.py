"""Progress on long work: a tqdm bar on a terminal, short plain lines elsewhere.

A bar redrawn many times a second is right for a person watching a terminal and wrong
for CI logs, ``nohup`` files and pipes, where every redraw becomes a line (or a
carriage-return mess). :func:`progress` looks at where the output goes: a terminal gets
tqdm; anything else gets :class:`LineProgress`, which prints one line when the work
starts, at every ``step_percent`` of it (or every ``LINE_EVERY_S`` seconds when the
total is unknown) and one when it ends.

Both have the part of tqdm's interface this project uses: iterate over it, ``update(n)``,
``set_postfix(dict)``, ``close()``, and ``with``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TextIO

STEP_PERCENT = 25  # a plain line at every quarter of the work
LINE_EVERY_S = 30.0  # a plain line this often when the total is unknown


class ProgressBar(Protocol):
    """What :func:`progress` returns (tqdm, :class:`LineProgress` or a silent one), for
    type hints."""

    n: int

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


class LineProgress:
    """tqdm's interface, printing a few whole lines instead of redrawing a bar.

    Args:
        iterable: what to iterate over (optional, as in tqdm).
        total: the amount of work; ``len(iterable)`` when it has one.
        desc: what is being done, starts every line.
        unit: the unit of ``total`` (e.g. ``"batch"``).
        file: where lines go (standard error by default).
        step_percent: a line each time this many percent more are done.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        file: TextIO | None = None,
        step_percent: int = STEP_PERCENT,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file
        self.step = max(1, min(100, step_percent))
        self.n = 0
        self.postfix = ""
        self._started = time.perf_counter()
        self._last_line = self._started
        self._next_percent = self.step
        self._closed = False
        self._write("started" + (f", {total} {unit}" if total is not None else ""))

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress has no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; print a line when a step is crossed."""
        self.n += n
        now = time.perf_counter()
        if self.total:
            percent = 100 * self.n / self.total
            if percent >= self._next_percent and self.n < self.total:
                self._next_percent = (int(percent) // self.step + 1) * self.step
                self._write(self._status(now))
        elif now - self._last_line >= LINE_EVERY_S:
            self._write(self._status(now))

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Values shown at the end of the next line (``key=value``)."""
        items = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        """Print the closing line (once)."""
        if not self._closed:
            self._closed = True
            self._write("done, " + self._status(time.perf_counter()))

    def _status(self, now: float) -> str:
        elapsed = now - self._started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{done} {self.unit}{percent} in {elapsed:.1f} s, {rate:.2f} {self.unit}/s{extra}"

    def _write(self, text: str) -> None:
        self._last_line = time.perf_counter()
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + text, file=self.file or sys.stderr, flush=True)


class _Silent:
    """The interface with no output (progress turned off)."""

    def __init__(self, iterable: Iterable | None = None):
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress has no iterable")
        for item in self.iterable:
            yield item
            self.n += 1

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (standard error by default) is an interactive terminal."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    file: TextIO | None = None,
):
    """A progress display for a loop or a count: tqdm on a terminal, else plain lines.

    Args:
        iterable, total, desc, unit: as tqdm's.
        enabled: ``False`` shows nothing (the object still counts).
        leave: keep the finished bar on the terminal (tqdm only).
        file: the stream (standard error by default); its ``isatty()`` decides.
    """
    if not enabled:
        return _Silent(iterable)
    if is_terminal(file):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=file)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=file)


def write_message(text: str, file: TextIO | None = None) -> None:
    """Print one line (standard error by default) without breaking a bar being drawn:
    on a terminal through ``tqdm.write``, which clears and redraws the bars around it."""
    stream = file or sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)
