"""Benchmark `envbuild lock` on a conda-forge-shaped channel (>= 50,000 records, >= 3,000 names).

Everything is measured in one run, against baselines measured in the same run:

1. ``lock()`` for the dask-gpu example (spec to written lock: parse, plan, every solve,
   consistency checks, write) against the sum of raw ``rattler.solve`` calls for the same
   targets, specs and virtual packages, plus the one Gateway those calls share (lock() makes
   one too; ``rattler.solve`` without ``gateway=`` would make one per call). Each side runs in
   a fresh process with its libraries imported before its timer starts; goal: at most 1.2x.
2. ``envbuild lock`` with an unchanged spec, as a command: goal at most 0.3 s, zero solves.
3. ``envbuild --help``: goal at most 0.2 s.

Figures on a shared machine are noisy: each is the median of several runs, interleaved.
Usage: python benchmarks/bench_lock.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from forge import write_forge

from envbuild.locking import plan_for
from envbuild.spec import load_spec

REPO = Path(__file__).parent.parent
BIN = Path(sys.executable).parent

RAW_SOLVES = r"""
import asyncio, json, os, sys, time
from rattler import BuildString, Gateway, GenericVirtualPackage, PackageName, Subdir, Version, solve

plan = json.loads(sys.argv[1])

async def main():
    started = time.perf_counter()
    gateway = Gateway()  # one Gateway, as lock() makes one: both sides pay for it once
    total = time.perf_counter() - started
    for target in plan["targets"]:
        declared = [GenericVirtualPackage(PackageName(n), Version(v), BuildString(b))
                    for n, v, b in (vp.split("=") for vp in target["virtual_packages"])]
        started = time.perf_counter()
        await solve(plan["channels"], target["specs"], gateway=gateway,
                    platforms=[Subdir(target["platform"]), Subdir("noarch")],
                    virtual_packages=declared)
        total += time.perf_counter() - started
    print(total)
    sys.stdout.flush()
    os._exit(0)  # a normal shutdown right after solving can abort: see envbuild.conda.Solver


asyncio.run(main())
"""

# Like the raw side (rattler imported before its timer), envbuild's modules are imported
# first; everything lock() does after that is timed: reading the spec, planning, the Gateway,
# every solve, consistency checks, writing the lock.
ENVBUILD_LOCK = r"""
import sys, time
from pathlib import Path
import rattler, envbuild.conda, envbuild.resolve
from envbuild.locking import lock
started = time.perf_counter()
outcome = lock(Path(sys.argv[1]), update_all=True)
print(time.perf_counter() - started, outcome.solves)
"""

RAW_SCRIPT = "raw_solves.py"


def wall(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def python(code: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    ).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-"))
    try:
        started = time.perf_counter()
        _, records, names = write_forge(work / "channel")
        print(f"channel: {records} records, {names} names ({time.perf_counter() - started:.1f} s)")
        spec = work / "envbuild.yaml"
        spec.write_text(
            (REPO / "examples" / "dask-gpu" / "envbuild.yaml")
            .read_text()
            .replace("[../../build/demo-channel]", "[./channel]")
        )
        plan = plan_for(load_spec(spec))
        raw_plan = json.dumps(
            {
                "channels": list(plan.channels),
                "targets": [
                    {
                        "platform": r.target.platform,
                        "specs": list(r.specs),
                        "virtual_packages": list(r.virtual_packages),
                    }
                    for r in plan.requests
                ],
            }
        )

        raw, ours, solves = [], [], set()
        for _ in range(args.runs):
            raw.append(float(python(RAW_SOLVES, raw_plan)))
            seconds, count = python(ENVBUILD_LOCK, str(spec)).split()
            ours.append(float(seconds))
            solves.add(int(count))
        envbuild = str(BIN / "envbuild")
        # Whole commands from a cold start, for the record (interpreter and imports included).
        (work / RAW_SCRIPT).write_text(RAW_SOLVES)
        cold_raw = [wall([sys.executable, RAW_SCRIPT, raw_plan], work) for _ in range(args.runs)]
        cold_ours = [wall([envbuild, "lock", "-q", "--update-all"], work) for _ in range(args.runs)]
        noop = [wall([envbuild, "lock", "-q"], work) for _ in range(args.runs * 2)]
        help_ = [wall([envbuild, "--help"], work) for _ in range(args.runs * 2)]
        bare = [wall([sys.executable, "-c", "pass"], work) for _ in range(args.runs * 2)]
        status = json.loads(
            subprocess.run(
                [envbuild, "lock", "--json"], cwd=work, check=True, capture_output=True, text=True
            ).stdout
        )

        packages = len(json.loads((work / "envbuild.lock").read_text())["packages"])
        m_raw, m_ours = statistics.median(raw), statistics.median(ours)
        ratio = m_ours / m_raw
        results = [
            (
                "lock() vs sum of raw rattler.solve",
                ratio <= 1.2,
                f"{m_ours:.3f} s vs {m_raw:.3f} s = {ratio:.2f}x (goal <= 1.2x); "
                f"{len(plan.requests)} targets, {packages} packages, {sorted(solves)} solves",
            ),
            (
                "envbuild lock, unchanged spec",
                statistics.median(noop) <= 0.3 and status["solves"] == 0,
                f"{statistics.median(noop):.3f} s, {status['solves']} solves, status "
                f"{status['status']} (goal <= 0.3 s, 0 solves)",
            ),
            (
                "envbuild --help",
                statistics.median(help_) <= 0.2,
                f"{statistics.median(help_):.3f} s (goal <= 0.2 s)",
            ),
            ("baseline: python -c pass", True, f"{statistics.median(bare):.3f} s"),
            (
                "cold commands (for the record)",
                True,
                f"envbuild lock --update-all {statistics.median(cold_ours):.3f} s; python script "
                f"with the raw solves {statistics.median(cold_raw):.3f} s",
            ),
        ]
        print(f"medians of {args.runs} runs (raw/lock) and {args.runs * 2} runs (commands):")
        for name, met, text in results:
            print(f"  {'ok  ' if met else 'MISS'}  {name:<36} {text}")
        return 0 if all(met for _, met, _ in results) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
