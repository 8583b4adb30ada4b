"""Paired, order-alternating measurements of whole commands, reported as min/median/max.

On a shared 2-core machine absolute times drift from minute to minute. Every case of a
comparison therefore runs once per round, in an order that rotates from round to round, and
ratios are taken within a round (pairs) before their median is reported.

Commands run as on a user's machine: with bytecode caches (``prepare()`` compiles envbuild's
modules and drops PYTHONDONTWRITEBYTECODE, which some shells set and which would make every
run compile envbuild from source while its dependencies use pip's caches).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
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
        environment = {**os.environ, **(self.env or {})}
        environment.pop("PYTHONDONTWRITEBYTECODE", None)
        started = time.perf_counter()
        done = subprocess.run(
            list(self.argv),
            cwd=self.cwd,
            env=environment,
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


def prepare() -> None:
    """Compile envbuild's modules, as pip does for the packages it installs."""
    import compileall

    import envbuild

    compileall.compile_dir(Path(envbuild.__file__).parent, quiet=1)


def order(names: Sequence[str], number: int) -> list[str]:
    """The order of round ``number``: a cyclic Latin square. Rotated by one each round, so
    over ``len(names)`` rounds every case takes every position exactly once (with two cases:
    ab, ba, ab, ...). Runs whose count is a multiple of the number of cases are balanced."""
    shift = number % len(names)
    return list(names[shift:]) + list(names[:shift])


def rounds(
    cases: Mapping[str, Command | Callable[[int], Command]], runs: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every case once per round, in ``order``; ``warmup`` rounds are discarded. A case
    may be a function of the round number (fresh folders per round)."""
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for number in range(warmup + runs):
        for name in order(names, number):
            case = cases[name]
            command = case if isinstance(case, Command) else case(number)
            # What the previous case wrote must not be flushed during this one's time.
            os.sync()
            seconds = command.wall()
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
