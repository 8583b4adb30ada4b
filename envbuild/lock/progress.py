"""Progress on stderr while long work runs; silent when asked to be."""

from __future__ import annotations

import sys
from typing import TextIO

from envbuild.lock.lockfile import Target


class StderrReporter:
    """One line per solved target, with its time."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def solved(self, target: Target, seconds: float, packages: int) -> None:
        print(
            f"  solved {target!s:<28} {packages:>5} packages  {seconds:6.2f} s",
            file=self.stream,
            flush=True,
        )

    def note(self, message: str) -> None:
        print(f"  {message}", file=self.stream, flush=True)


class SilentReporter:
    """Reports nothing (``--quiet``, library use)."""

    def solved(self, target: Target, seconds: float, packages: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass
