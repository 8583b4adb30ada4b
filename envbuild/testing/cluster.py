"""A Dask cluster of role environments on this machine, for the tests and ``make demo``.

The scheduler and each worker run from their own environment through ``envbuild run`` (the
worker behind the GPU check, in warn mode when asked: a machine without a GPU then says so
and starts anyway); the client script runs from the client's environment. Processes start
in sessions of their own and are stopped by process group (a worker is a nanny and its
child), then killed if they linger.

    python -m envbuild.testing.cluster -f SPEC --lockfile LOCK --workdir DIR [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envbuild.testing import demo_client

ARRAY_SUM = 499_999_500_000  # sum(range(1_000_000))
GROUPBY = {0: 135, 1: 145, 2: 155}
XARRAY_SUM = [3, 5, 7]  # DataArray([[0, 1, 2], [3, 4, 5]]).sum("x")
ENVBUILD = str(Path(sys.executable).parent / "envbuild")


class ClusterError(Exception):
    """A process did not start or the computation failed; the message says which and why."""


@dataclass
class LocalCluster:
    """Scheduler and workers started from role environments."""

    spec: Path
    lock: Path
    workdir: Path
    prefixes: Mapping[str, Path]
    check_mode: str = "warn"  # ENVBUILD_GPU_CHECK for workers
    preload: Sequence[str] = ("envbuild.dask",)
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def scheduler_file(self) -> Path:
        return self.workdir / "scheduler.json"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def _run(
        self, role: str, command: Sequence[str], *, other: Mapping[str, Path] | None = None
    ) -> list[str]:
        """``envbuild run`` of ``command`` in ``role``'s environment; ``other`` (prefix, spec,
        lock) runs it from another environment, unverified (a stranger joining)."""
        if other:
            where = ["--prefix", str(other["prefix"]), "--no-verify"]
            where += ["-f", str(other["spec"]), "--lockfile", str(other["lock"])]
        else:
            where = ["--prefix", str(self.prefixes[role])]
            where += ["-f", str(self.spec), "--lockfile", str(self.lock)]
        return [ENVBUILD, "run", "--role", role, *where, "--", *command]

    def _start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        with self.log(name).open("wb") as log:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        self.processes.append((name, process))

    def start(self, workers: int = 1, *, worker_env: Mapping[str, str] | None = None) -> str:
        """Start the scheduler and ``workers`` workers; the scheduler's address."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.scheduler_file.unlink(missing_ok=True)
        preload = [arg for p in self.preload for arg in ("--preload", p)]
        self._start(
            "scheduler",
            self._run(
                "scheduler",
                [
                    "dask",
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(self.scheduler_file),
                    *preload,
                ],
            ),
            {},
        )
        address = self._wait_for_scheduler()
        for index in range(workers):
            self.add_worker(f"worker-{index}", env=worker_env)
        return address

    def add_worker(
        self,
        name: str,
        *,
        role: str = "worker",
        env: Mapping[str, str] | None = None,
        other: Mapping[str, Path] | None = None,
    ) -> None:
        """A worker started from ``role``'s environment (or ``other``'s: see ``_run``),
        through the GPU check."""
        role_file = self.workdir / f"{name}-role.json"
        subprocess.run(
            [
                ENVBUILD,
                "export",
                "-f",
                str((other or {}).get("spec", self.spec)),
                "--lockfile",
                str((other or {}).get("lock", self.lock)),
                "--format",
                "role-file",
                "--role",
                role,
                "-o",
                str(role_file),
            ],
            check=True,
            capture_output=True,
        )
        preload = [arg for p in self.preload for arg in ("--preload", p)]
        command = [
            "python",
            "-m",
            "envbuild.gpucheck",
            "--requirements",
            str(role_file),
            "--",
            "dask",
            "worker",
            "--scheduler-file",
            str(self.scheduler_file),
            "--name",
            name,
            "--nthreads",
            "2",
            "--host",
            "127.0.0.1",
            "--no-dashboard",
            *preload,
        ]
        environment = {"ENVBUILD_GPU_CHECK": self.check_mode, **(env or {})}
        self._start(name, self._run(role, command, other=other), environment)

    def _wait_for_scheduler(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scheduler_file.is_file():
                try:
                    address: str = json.loads(self.scheduler_file.read_text())["address"]
                    return address
                except (ValueError, KeyError):
                    pass
            process = dict(self.processes)["scheduler"]
            if process.poll() is not None:
                raise ClusterError(
                    f"the scheduler exited ({process.returncode}): {self.tail('scheduler')}"
                )
            time.sleep(0.1)
        raise ClusterError(f"no scheduler after {timeout:.0f} s: {self.tail('scheduler')}")

    def gpu_check_report(self, name: str) -> list[str]:
        """What the GPU check printed in front of process ``name``."""
        try:
            text = self.log(name).read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.startswith("envbuild gpu check")]

    def tail(self, name: str, lines: int = 5) -> str:
        try:
            text = self.log(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def client(
        self, workers: int = 1, *, role: str = "client", timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """The demo client, run from ``role``'s environment."""
        command = ["python", demo_client.__file__, str(self.scheduler_file), str(workers)]
        return subprocess.run(
            self._run(role, command), capture_output=True, text=True, timeout=timeout
        )

    def compute(self, workers: int = 1) -> dict[str, object]:
        """Run the demo client and check its results; what it printed."""
        done = self.client(workers)
        if done.returncode != 0:
            raise ClusterError(
                f"the client exited {done.returncode}: {done.stderr.strip()[-800:]}; "
                f"scheduler: {self.tail('scheduler')}"
            )
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        check_results(result)
        return result

    def stop(self) -> None:
        """Stop every process: SIGTERM to its group, SIGKILL after 10 s."""
        for _, process in self.processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


@contextmanager
def running(cluster: LocalCluster, workers: int = 1) -> Iterator[LocalCluster]:
    """``cluster`` started, and stopped whatever happens."""
    try:
        cluster.start(workers)
        yield cluster
    finally:
        cluster.stop()


def check_results(result: Mapping[str, Any]) -> None:
    """ClusterError unless the demo client's results are right: the sums, and one xarray
    (or none) in every process, from its own environment, which computed where the
    environments have it."""
    got = (result["array_sum"], {int(k): v for k, v in result["groupby"].items()})
    if got != (ARRAY_SUM, GROUPBY):
        raise ClusterError(f"wrong results: {got}")
    processes = result["processes"].values()
    found = {str(s.get("xarray") or "none").split()[0] for s in processes}
    if len(found) != 1:
        raise ClusterError(f"the processes import different xarrays: {sorted(found)}")
    strays = [s for s in processes if s.get("xarray") and s["prefix"] not in s["xarray"]]
    if strays:  # the wheel installed in the environment, not one found elsewhere
        raise ClusterError(f"xarray from outside the environment: {strays[0]['xarray']}")
    if found != {"none"} and result.get("xarray_sum") != XARRAY_SUM:
        raise ClusterError(f"wrong xarray result: {result.get('xarray_sum')}")


def summary(result: Mapping[str, object]) -> str:
    """What the demo prints: the results, then every process and the environment it runs."""
    lines = [
        f"dask.array: sum(arange(1_000_000)) = {result['array_sum']}",
        f"pandas groupby on a worker: {result['groupby']}",
        "every process runs:",
    ]
    processes: Mapping[str, Mapping[str, object]] = result["processes"]  # type: ignore[assignment]
    for name, stamp in processes.items():
        lock = str(stamp.get("lock") or "no stamp")
        lines.append(f"  {name:<32} {stamp.get('target')!s:<20} lock {lock[:19]}…")
    locks = {s.get("lock") for s in processes.values()}
    lines.append(
        "one lock everywhere" if len(locks) == 1 else f"DIFFERENT LOCKS: {sorted(map(str, locks))}"
    )
    versions = {str(s.get("xarray") or "none").split()[0] for s in processes.values()}
    if versions != {"none"}:
        lines.append(
            f"xarray (a PyPI wheel) {', '.join(sorted(versions))} imported by the client, the "
            f"scheduler and every worker; on a worker: sum('x') = {result.get('xarray_sum')}"
        )
    lines.append(f"envbuild.dask.check(client): {result.get('guard')}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m envbuild.testing.cluster", description=__doc__)
    parser.add_argument("-f", "--file", type=Path, required=True, dest="spec")
    parser.add_argument("--lockfile", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    prefixes = {role: args.workdir / "envs" / role for role in ("client", "scheduler", "worker")}
    cluster = LocalCluster(args.spec, args.lockfile, args.workdir, prefixes)
    started = time.perf_counter()
    try:
        with running(cluster, args.workers):
            result = cluster.compute(args.workers)
            print("worker-0 started behind the GPU check:")
            print("\n".join(f"  {line}" for line in cluster.gpu_check_report("worker-0")))
    except ClusterError as exc:
        print(f"envbuild demo cluster: error: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    print(f"cluster started, computed and stopped in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
