"""Benchmark `envbuild env` against a raw `rattler.install` of the same records.

A local channel of real archives (the dask-gpu fixture plus 180 packages with payload files)
gives a ~200-package environment. Whole commands, fresh processes, paired rounds in rotating
order, min/median/max (see paired.py):

- ``envbuild env --role worker --prefix P --cache-dir C``: reads the spec and lock, hashes
  every local archive against the lock, installs, writes the stamp;
- the strongest alternative: a Python script that reads the same target from the lock's
  pixi.lock export with rattler's own LockFile and calls ``rattler.install`` (no archive
  check: rattler does not hash local archives).

Cold: empty package cache and prefix; warm: the cache is filled, the prefix is new.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paired import Command, Goals, prepare, ratios, rounds, spread

from envbuild.lock.locking import lock
from envbuild.testing.catalog import dask_gpu_packages
from envbuild.testing.channel import Package, write_channel

FILLER = 180
ENVBUILD = str(Path(sys.executable).parent / "envbuild")

RAW = r"""
import asyncio, os, sys
from pathlib import Path
from rattler import LockFile, Subdir, install
environment = LockFile.from_path(Path(sys.argv[1])).environment("cuda-12.4")
linux = next(p for p in environment.platforms() if str(p.subdir) == "linux-64")
records = environment.conda_repodata_records_for_platform(linux)
asyncio.run(install(records, target_prefix=sys.argv[2], cache_dir=Path(sys.argv[3]),
                    platform=Subdir("linux-64"), show_progress=False))
sys.stdout.flush()
os._exit(0)  # as envbuild does: no interpreter shutdown right after rattler work
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-env-"))
    goals = Goals()
    prepare()
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
            "dependencies: [python 3.11.*, dask, numpy, bench-all]\ngpu-dependencies: [cupy]\n"
            "roles: {client: {gpu: false}, scheduler: {gpu: false}, "
            "worker: {gpu: {cuda: '12.4'}}}\n"
        )
        outcome = lock(spec)
        count = len(next(t for t in outcome.lock.targets if t.variant == "cuda-12.4").packages)
        subprocess.run(
            [ENVBUILD, "export", "--format", "pixi", "-o", "pixi.lock"],
            cwd=work,
            check=True,
            capture_output=True,
        )
        (work / "raw.py").write_text(RAW)

        def case(side: str, state: str) -> Callable[[int], Command]:
            """Round ``number``'s command: a new prefix; cold: an emptied package cache."""

            def command(number: int) -> Command:
                cache = work / f"cache-{side}-{number}"
                if state == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                prefix = str(work / f"{side}-{state}-{number}")
                if side == "raw":
                    argv = [sys.executable, "raw.py", "pixi.lock", prefix, str(cache)]
                else:
                    argv = [ENVBUILD, "env", "-q", "--role", "worker", "--prefix", prefix]
                    argv += ["--cache-dir", str(cache)]
                return Command(argv, cwd=work)

            return command

        print(f"{count}-package environment; {args.runs} paired rounds, rotating order:")
        for state in ("cold", "warm"):
            if state == "warm":  # fill each round's caches first
                for number in range(args.runs + 1):
                    for side in ("envbuild", "raw"):
                        case(side, "cold")(number).wall()
            times = rounds({side: case(side, state) for side in ("envbuild", "raw")}, args.runs)
            ratio = ratios(times["envbuild"], times["raw"])
            goals.record(f"envbuild env, {state}", spread(times["envbuild"]))
            goals.record(f"raw rattler.install, {state}", spread(times["raw"]))
            goals.record(
                f"  ratio per round, {state} (goal <= 1.2x)",
                spread(ratio, "x"),
                statistics.median(ratio) <= 1.2,
            )
            for leftover in [*work.glob("envbuild-*"), *work.glob("raw-*")]:
                shutil.rmtree(leftover, ignore_errors=True)
        return goals.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
