"""Progress while images are written, pulled and pushed: bytes per task, on stderr.

On a terminal, one line per task redrawn in place (at most 5 times a second); piped (CI
logs), a plain line when each task ends; nothing at all with ``--quiet`` or ``--json``.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


def size_text(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class Task:
    """One task's bytes: ``advance(n)`` from any thread; ends when its total is reached or
    when it is closed."""

    def __init__(self, progress: Progress, label: str, total: int) -> None:
        self.progress, self.label, self.total = progress, label, total
        self.done = 0
        self.started = time.perf_counter()
        self.drawn = 0.0
        self.closed = False

    def advance(self, count: int) -> None:
        with self.progress.lock:
            self.done += count
            if self.total and self.done >= self.total:
                self._close()
            elif self.progress.tty and time.perf_counter() - self.drawn > 0.2:
                self.drawn = time.perf_counter()
                share = f" {100 * self.done // self.total:3d} %" if self.total else ""
                amount = f"{size_text(self.done)} / {size_text(self.total)}"
                self.progress.write(f"\r  {self.label}: {amount}{share}\x1b[K")

    def close(self) -> None:
        with self.progress.lock:
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        seconds = time.perf_counter() - self.started
        amount = f"{size_text(self.done)} " if self.done else ""
        line = f"  {self.label}: {amount}in {seconds:.1f} s"
        self.progress.write(f"\r{line}\x1b[K\n" if self.progress.tty else f"{line}\n")

    def __call__(self, count: int) -> None:
        self.advance(count)

    def __enter__(self) -> Task:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()


class Progress:
    """Where tasks report; ``enabled=False`` reports nothing."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()

    def task(self, label: str, total: int) -> Task:
        return Task(self, label, total)
