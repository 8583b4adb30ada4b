"""Paired, order-alternating measurements of whole commands, reported as min/median/max.

On a shared 2-core machine absolute times drift from minute to minute. Every case of a
comparison therefore runs once per round, in an order that rotates from round to round, and
ratios are taken within a round (pairs) before their median is reported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Command:
    """A whole command as a user runs it (fresh process)."""

    argv: Sequence[str]
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    expect: int | None = 0

    def wall(self) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            list(self.argv),
            cwd=self.cwd,
            env={**os.environ, **(self.env or {})},
            capture_output=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if self.expect is not None and done.returncode != self.expect:
            raise RuntimeError(
                f"{' '.join(self.argv)} exited {done.returncode}:\n"
                f"{done.stdout.decode()}{done.stderr.decode()}"
            )
        return seconds


def rounds(cases: Mapping[str, Command], runs: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Run every case once per round, rotating the order; ``warmup`` rounds are discarded."""
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for number in range(warmup + runs):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        if number % 2:
            order.reverse()
        for name in order:
            seconds = cases[name].wall()
            if number >= warmup:
                times[name].append(seconds)
    return times


def spread(values: Sequence[float], unit: str = "s") -> str:
    """``min 0.101 / median 0.120 / max 0.190 s``."""
    digits = 2 if unit == "x" else 3
    return (
        f"min {min(values):.{digits}f} / median {statistics.median(values):.{digits}f} / "
        f"max {max(values):.{digits}f} {unit}"
    )


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios of two paired series."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


@dataclass
class Goals:
    """Collects results; every goal is reported, misses at the end (not at the first)."""

    lines: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def record(self, name: str, text: str, met: bool | None = None) -> None:
        mark = "    " if met is None else ("ok  " if met else "MISS")
        self.lines.append(f"  {mark}  {name:<44} {text}")
        print(self.lines[-1], flush=True)
        if met is False:
            self.misses.append(name)

    def finish(self) -> int:
        if self.misses:
            print(f"missed {len(self.misses)} goal(s): {', '.join(self.misses)}")
            return 1
        print("every goal met")
        return 0
