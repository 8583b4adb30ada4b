"""Progress of long work on stderr, in the CLI's style: one line rewritten in place on a
terminal; when piped, a plain line every few seconds and one at the end of work that took a
while (CI logs stay short, and a quick command prints nothing); nothing when the command is
quiet or prints JSON."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[int, int], None]


def bar(what: str, *, quiet: bool = False, stream: TextIO | None = None) -> Progress | None:
    """A callback ``(done, total)`` that shows ``what: done/total`` (None when quiet)."""
    if quiet:
        return None
    out = stream or sys.stderr
    live = hasattr(out, "isatty") and out.isatty()
    started = last = time.monotonic()

    def update(done: int, total: int) -> None:
        nonlocal last
        if live:
            end = "\n" if done >= total else ""
            print(f"\r  {what}: {done}/{total}", end=end, file=out, flush=True)
            return
        now = time.monotonic()
        finished = done >= total and now - started >= PIPED_FINAL
        if finished or now - last >= PIPED_EVERY:
            last = now
            print(f"  {what}: {done}/{total} ({now - started:.1f} s)", file=out, flush=True)

    return update


#: Seconds between progress lines when piped, and the least work that ends with one.
PIPED_EVERY = 5.0
PIPED_FINAL = 1.0
