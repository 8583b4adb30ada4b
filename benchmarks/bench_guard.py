"""Benchmark the Dask guard: what it adds when a client connects (8 workers) and when a worker
joins.

A real cluster from the runnable channel's role environments (envbuild.testing.cluster):
a scheduler and 8 workers with ``--preload envbuild.dask``. Inside the client's environment,
after connecting: ``envbuild.dask.check(client)`` timed 30 times, interleaved with a plain
RPC to the scheduler (``client.scheduler.identity()``) for scale; min/median/max. The
scheduler's own timing of each worker's check at join (its ``add_worker`` hook), and the
worker-side cost (``identity()`` in a fresh process: its stamp and package list).
Goal: check(client) under 50 ms.

Usage: python benchmarks/bench_guard.py [--workers N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paired import Goals, prepare, spread

from envbuild.testing import runnable
from envbuild.testing.cluster import LocalCluster, running
from envbuild.testing.pypi_index import without_pypi

REPO = Path(__file__).parent.parent
ENVBUILD = str(Path(sys.executable).parent / "envbuild")

CLIENT = r"""
import json, sys, time
from dask.distributed import Client
import envbuild.dask
with Client(scheduler_file=sys.argv[1], timeout="60s") as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=300)
    checks, rpcs = [], []
    for _ in range(30):
        started = time.perf_counter()
        client.sync(client.scheduler.identity)
        rpcs.append(time.perf_counter() - started)
        started = time.perf_counter()
        found = envbuild.dask.check(client)
        checks.append(time.perf_counter() - started)
    print(json.dumps({"check": checks, "rpc": rpcs, "workers": len(found["workers"]),
                      "join": found["join_seconds"]}))
"""

IDENTITY = (
    "import time; t = time.perf_counter(); import envbuild.dask; envbuild.dask.identity(); "
    "print(time.perf_counter() - t)"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    goals = Goals()
    prepare()
    channel = runnable.build(REPO / "build" / "cache" / "runnable")
    with tempfile.TemporaryDirectory(prefix="envbuild-bench-guard-") as tmp:
        work = Path(tmp)
        spec = work / "envbuild.yaml"
        example = without_pypi((REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text())
        spec.write_text(example.replace("[../../build/demo-channel]", f"['{channel}']"))
        subprocess.run([ENVBUILD, "lock", "-q", "-f", str(spec)], cwd=work, check=True)
        prefixes = {r: work / "envs" / r for r in ("client", "scheduler", "worker")}
        for role, prefix in prefixes.items():
            command = [
                ENVBUILD,
                "env",
                "-q",
                "--role",
                role,
                "--prefix",
                str(prefix),
                "-f",
                str(spec),
            ]
            subprocess.run(command, cwd=work, check=True)
        (work / "bench_client.py").write_text(CLIENT)
        cluster = LocalCluster(spec, work / "envbuild.lock", work / "run", prefixes)
        with running(cluster, workers=args.workers):
            run = [
                ENVBUILD,
                "run",
                "--role",
                "client",
                "--prefix",
                str(prefixes["client"]),
                "-f",
                str(spec),
                "--",
            ]
            done = subprocess.run(
                [
                    *run,
                    "python",
                    str(work / "bench_client.py"),
                    str(cluster.scheduler_file),
                    str(args.workers),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
        found = json.loads(done.stdout.strip().splitlines()[-1])
        identities = [
            float(
                subprocess.run(
                    [
                        ENVBUILD,
                        "run",
                        "--role",
                        "worker",
                        "--prefix",
                        str(prefixes["worker"]),
                        "-f",
                        str(spec),
                        "--",
                        "python",
                        "-c",
                        IDENTITY,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            for _ in range(5)
        ]
    check_ms = [s * 1000 for s in found["check"]]
    print(f"{found['workers']} workers; 30 calls each, interleaved:")
    goals.record(
        "envbuild.dask.check(client) (goal < 50 ms)",
        spread(check_ms, "ms"),
        statistics.median(check_ms) < 50,
    )
    goals.record("a plain scheduler RPC, for scale", spread([s * 1000 for s in found["rpc"]], "ms"))
    goals.record(
        "scheduler: the guard's check per joining worker",
        spread([s * 1000 for s in found["join"]], "ms"),
    )
    goals.record(
        "worker: identity() at start (stamp + packages)",
        spread([s * 1000 for s in identities], "ms"),
    )
    return goals.finish()


if __name__ == "__main__":
    sys.exit(main())
