"""Where one ``envbuild lock -q --update-all`` spends its time, phase by phase, in-process.

Run in the spec's folder as a fresh process (``bench_lock.py`` runs it several times and
reports medians); prints one JSON object of milliseconds. The phases that raw rattler also
pays (starting Python, importing rattler and asyncio, the solves) are listed apart from
envbuild's own. Timers wrap envbuild's functions; nothing is changed.

Usage: python benchmarks/lock_phases.py   (in a folder with envbuild.yaml)
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import contextlib  # noqa: E402 - timed from the first line
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import envbuild.cli  # noqa: E402

CLI = time.perf_counter()
from envbuild.lock import locking  # noqa: E402

LOCKING = time.perf_counter()
import asyncio  # noqa: E402, F401 - envbuild imports it to solve; raw does too

import rattler  # noqa: E402

RATTLER = time.perf_counter()
spent: dict[str, float] = {}


def timed(owner: Any, name: str, label: str) -> None:
    function: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - begun

    setattr(owner, name, wrapper)


def main() -> None:
    solve = rattler.solve

    async def solved(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            return await solve(*args, **kwargs)
        finally:
            longest = spent.get("solves (longest of the concurrent ones)", 0.0)
            spent["solves (longest of the concurrent ones)"] = max(
                longest, time.perf_counter() - begun
            )

    rattler.solve = solved
    timed(locking, "load_spec", "spec: YAML, pydantic import and validation")
    timed(locking, "_resolve", "resolve: solves, alignment, post-processing")
    timed(locking, "write_lock", "write the lock")
    sys.argv = ["envbuild", "lock", "-q", "--update-all"]
    begun = time.perf_counter()
    with contextlib.suppress(SystemExit):
        envbuild.cli.app()
    command = time.perf_counter() - begun
    shares = {
        "import envbuild.cli (typer, click)": CLI - STARTED,
        "import envbuild.lock.locking": LOCKING - CLI,
        "import asyncio, rattler (raw too)": RATTLER - LOCKING,
        **spent,
        "the lock command in all": command,
    }
    print(json.dumps({k: round(v * 1000, 1) for k, v in shares.items()}))
    sys.stdout.flush()
    os._exit(0)  # as envbuild does after a solve


if __name__ == "__main__":
    main()
