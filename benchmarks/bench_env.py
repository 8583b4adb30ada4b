"""Benchmark `envbuild env` against a raw `rattler.install` of the same records, same run.

A local channel of real archives (the dask-gpu fixture plus 180 packages with payload files)
gives a ~200-package environment. Cold: empty package cache and prefix; warm: the cache is
filled, the prefix is new. envbuild's side is ``create_env()`` (hash every local archive,
install, write the marker); the raw side is the ``rattler.install`` call alone. Each side runs
in a fresh process with its libraries imported and its records built before its timer.
Goal: at most 1.2x, cold and warm.

Usage: python benchmarks/bench_env.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envbuild.locking import lock
from envbuild.testing.catalog import dask_gpu_packages
from envbuild.testing.channel import Package, write_channel

FILLER = 180

RAW = r"""
import asyncio, os, sys, time
from pathlib import Path
from rattler import Subdir, install
from envbuild.conda import to_rattler
from envbuild.lockfile import Target, read_lock
target = read_lock(Path(sys.argv[1])).target(Target("cpu", "linux-64"))
records = [to_rattler(p) for p in target.packages]
async def main():
    started = time.perf_counter()
    await install(records, target_prefix=sys.argv[2], cache_dir=Path(sys.argv[3]),
                  platform=Subdir("linux-64"), show_progress=False)
    print(time.perf_counter() - started, len(records))
    sys.stdout.flush()
    os._exit(0)  # see envbuild.conda.Solver: no interpreter shutdown right after rattler work
asyncio.run(main())
"""

ENVBUILD = r"""
import os, sys, time
from pathlib import Path
import rattler, envbuild.conda
from envbuild.environments import create_env
from envbuild.lockfile import Target, read_lock
lock = read_lock(Path(sys.argv[1]))
target = lock.target(Target("cpu", "linux-64"))
started = time.perf_counter()
outcome = create_env(lock, target, Path(sys.argv[2]), cache_dir=Path(sys.argv[3]))
print(time.perf_counter() - started, outcome.packages)
sys.stdout.flush()
os._exit(0)
"""


def filler(index: int) -> Package:
    body = "".join(f"line {index} {k}\n" for k in range(400))  # ~5 KB per file
    return Package(
        name=f"bench-{index:03d}",
        version="1.0",
        build="h0_0",
        subdir="linux-64",
        depends=(f"bench-{index - 1:03d}",) if index else (),
        files={f"share/bench/{index:03d}/{k}.txt": body for k in range(4)},
    )


def run(code: str, *args: object) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-env-"))
    try:
        packages = [
            *dask_gpu_packages(),
            *(filler(i) for i in range(FILLER)),
            Package(
                name="bench-all",
                version="1.0",
                noarch="generic",
                depends=(f"bench-{FILLER - 1:03d}",),
            ),
        ]
        write_channel(work / "channel", packages, subdirs=("linux-64", "osx-arm64", "noarch"))
        spec = work / "envbuild.yaml"
        spec.write_text(
            "name: bench\nchannels: [./channel]\nplatforms: [linux-64]\n"
            "dependencies: [python 3.11.*, dask, numpy, bench-all]\n"
            "roles: {client: {gpu: false}, scheduler: {gpu: false}, worker: {gpu: false}}\n"
        )
        lock(spec)
        lock_path = work / "envbuild.lock"
        figures: dict[str, list[float]] = {
            k: [] for k in ("raw cold", "envbuild cold", "raw warm", "envbuild warm")
        }
        count = 0
        for run_number in range(args.runs):
            for side, code in (("raw", RAW), ("envbuild", ENVBUILD)):
                cache = work / f"cache-{side}-{run_number}"
                cold, count = run(code, lock_path, work / f"{side}-cold-{run_number}", cache)
                warm, _ = run(code, lock_path, work / f"{side}-warm-{run_number}", cache)
                figures[f"{side} cold"].append(cold)
                figures[f"{side} warm"].append(warm)
            for leftover in work.glob(f"*-{run_number}"):
                shutil.rmtree(leftover)
        medians = {k: statistics.median(v) for k, v in figures.items()}
        print(f"{count}-package environment, medians of {args.runs} runs:")
        met = True
        for state in ("cold", "warm"):
            raw, ours = medians[f"raw {state}"], medians[f"envbuild {state}"]
            ratio = ours / raw
            met &= ratio <= 1.2
            print(
                f"  {'ok  ' if ratio <= 1.2 else 'MISS'}  {state}: envbuild {ours:.3f} s vs "
                f"raw rattler.install {raw:.3f} s = {ratio:.2f}x (goal <= 1.2x)"
            )
        started = time.perf_counter()
        subprocess.run(
            [
                str(Path(sys.executable).parent / "envbuild"),
                "env",
                "-q",
                "--role",
                "worker",
                "--prefix",
                str(work / "cli"),
                "--cache-dir",
                str(work / "cli-cache"),
            ],
            cwd=work,
            check=True,
        )
        seconds = time.perf_counter() - started
        print(f"  for the record: `envbuild env` as a cold command {seconds:.3f} s")
        return 0 if met else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
