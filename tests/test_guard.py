"""The Dask guard with real processes: scheduler, workers and clients from real environments of
the runnable channel, some of them from another lock."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from envbuild.testing.cluster import ARRAY_SUM, LocalCluster, running

from .conftest import runnable_spec

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
pytestmark = pytest.mark.slow

CLIENT = r"""
import json, sys
from dask.distributed import Client
import envbuild.dask
with Client(scheduler_file=sys.argv[1], timeout="60s") as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=120)
    try:
        envbuild.dask.check(client)
    except envbuild.dask.EnvironmentMismatch as exc:
        print(json.dumps({"mismatch": str(exc)}))
        sys.exit(3)
    print(json.dumps({"sum": int(client.submit(sum, range(1000)).result())}))
"""


@dataclass
class Lock:
    spec: Path
    lock: Path
    prefixes: dict[str, Path]

    def other(self, role: str) -> dict[str, Path]:
        return {"prefix": self.prefixes[role], "spec": self.spec, "lock": self.lock}


def _locked(folder: Path, channel: Path, cache: Path, edit: object = str) -> Lock:
    folder.mkdir(parents=True)
    spec = runnable_spec(folder, channel, edit=edit)  # type: ignore[arg-type]
    run = {"cwd": folder, "check": True, "capture_output": True}
    subprocess.run([ENVBUILD, "lock", "-q", "-f", spec], **run)  # type: ignore[call-overload]
    prefixes = {r: folder / "envs" / r for r in ("client", "scheduler", "worker")}
    for role, prefix in prefixes.items():
        command = [ENVBUILD, "env", "-q", "--role", role, "--prefix", prefix, "-f", spec]
        subprocess.run([*command, "--cache-dir", cache], **run)  # type: ignore[call-overload]
    return Lock(spec, folder / "envbuild.lock", prefixes)


@pytest.fixture(scope="module")
def locks(runnable_channel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Lock]:
    """The example's lock, and another one (no pandas: a different environment)."""
    root = tmp_path_factory.mktemp("guard")
    cache = root / "pkgs"
    return {
        "ours": _locked(root / "ours", runnable_channel, cache),
        "other": _locked(
            root / "other", runnable_channel, cache, edit=lambda s: s.replace("  - pandas\n", "")
        ),
    }


def _client(cluster: LocalCluster, lock: Lock, workers: int) -> subprocess.CompletedProcess[str]:
    script = cluster.workdir / "guard_client.py"
    script.write_text(CLIENT)
    command = [ENVBUILD, "run", "--role", "client", "--prefix", str(lock.prefixes["client"])]
    command += ["-f", str(lock.spec), "--lockfile", str(lock.lock), "--", "python", str(script)]
    return subprocess.run(
        [*command, str(cluster.scheduler_file), str(workers)],
        capture_output=True,
        text=True,
        timeout=180,
    )


def _wait_for_exit(cluster: LocalCluster, name: str, timeout: float = 60) -> int:
    process = dict(cluster.processes)[name]
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} was not closed: {cluster.tail(name, 20)}")


def test_one_lock_different_variants_work_together(locks: dict[str, Lock], tmp_path: Path) -> None:
    ours = locks["ours"]
    cluster = LocalCluster(ours.spec, ours.lock, tmp_path, ours.prefixes)
    with running(cluster, workers=1):
        cluster.add_worker("cpu-worker", role="client")  # the client's CPU variant as a worker
        result = cluster.compute(workers=2)
        checked = _client(cluster, ours, 2)
    assert result["array_sum"] == ARRAY_SUM
    targets = sorted(p["target"] for p in result["processes"].values())  # type: ignore[union-attr]
    assert targets == ["cpu/linux-64", "cpu/linux-64", "cuda-12.4/linux-64", "cuda-12.4/linux-64"]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout) == {"sum": 499500}


def test_a_worker_from_another_lock_is_refused_and_the_cluster_keeps_working(
    locks: dict[str, Lock], tmp_path: Path
) -> None:
    ours, other = locks["ours"], locks["other"]
    cluster = LocalCluster(ours.spec, ours.lock, tmp_path, ours.prefixes)
    with running(cluster, workers=1):
        cluster.add_worker("stranger", other=other.other("worker"))
        _wait_for_exit(cluster, "stranger")
        result = cluster.compute(workers=1)
        checked = _client(cluster, ours, 1)
        scheduler_log = cluster.log("scheduler").read_text()
    refusal = [
        line
        for line in scheduler_log.splitlines()
        if "distributed.envbuild" in line and "refused" in line
    ]
    assert len(refusal) == 1, scheduler_log[-2000:]
    ours_digest = json.loads((ours.prefixes["scheduler"] / "etc/envbuild/stamp.json").read_text())[
        "lock"
    ]
    theirs_digest = json.loads((other.prefixes["worker"] / "etc/envbuild/stamp.json").read_text())[
        "lock"
    ]
    assert ours_digest != theirs_digest
    assert f"runs lock {theirs_digest[:19]}… (cuda-12.4/linux-64)" in refusal[0]
    assert f"runs lock {ours_digest[:19]}… (cuda-12.4/linux-64)" in refusal[0]
    # The worker was told why, in its own log, and left (taking its nanny along).
    stranger_log = cluster.log("stranger").read_text()
    assert "Reason: envbuild: worker tcp://127.0.0.1:" in stranger_log
    assert f"the scheduler runs lock {ours_digest[:19]}" in stranger_log
    # The cluster works on with the good worker, and the client sees no stranger.
    assert result["array_sum"] == ARRAY_SUM
    assert len(result["processes"]) == 3  # type: ignore[arg-type]
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_client_from_another_lock_is_told_before_anything_runs(
    locks: dict[str, Lock], tmp_path: Path
) -> None:
    ours, other = locks["ours"], locks["other"]
    cluster = LocalCluster(ours.spec, ours.lock, tmp_path, ours.prefixes)
    with running(cluster, workers=1):
        refused = _client(cluster, other, 1)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    message = json.loads(refused.stdout)["mismatch"]
    assert message.startswith("this client runs lock ")
    assert "scheduler runs lock " in message and "worker tcp://127.0.0.1:" in message
    assert "another lock: every role must run the same one" in message
    assert "sum" not in refused.stdout


def test_without_stamps_a_version_that_differs_is_named(
    locks: dict[str, Lock], tmp_path: Path
) -> None:
    ours = locks["ours"]
    # The worker's environment as another tool would leave it: no stamp, and toolz at
    # another version than the scheduler's (a copy would not do: entry points name the
    # python of the prefix they were installed into).
    stray = tmp_path / "stray"
    made = [ENVBUILD, "env", "-q", "--role", "worker", "--prefix", stray, "-f", ours.spec]
    subprocess.run(made, check=True, capture_output=True)
    (stray / "etc/envbuild/stamp.json").unlink()
    record = next((stray / "conda-meta").glob("toolz-*.json"))
    record.write_text(record.read_text().replace('"version": "0.12.1"', '"version": "0.12.0"'))
    cluster = LocalCluster(ours.spec, ours.lock, tmp_path / "run", ours.prefixes)
    with running(cluster, workers=1):
        cluster.add_worker("stray", other={"prefix": stray, "spec": ours.spec, "lock": ours.lock})
        _wait_for_exit(cluster, "stray")
        log = cluster.log("scheduler").read_text()
    refusal = next(line for line in log.splitlines() if "refused" in line)
    assert "without an envbuild stamp" in refusal
    assert "toolz 0.12.0 (expected 0.12.1)" in refusal


def test_show_prints_the_stamp_of_an_environment(locks: dict[str, Lock]) -> None:
    ours, other = locks["ours"], locks["other"]
    shown = subprocess.run(
        [ENVBUILD, "show", "--prefix", ours.prefixes["worker"], "--json", "-f", ours.spec],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(shown.stdout)
    assert found["target"] == "cuda-12.4/linux-64" and found["this-lock"] is True
    assert found["roles"] == ["scheduler", "worker"]
    stranger = subprocess.run(
        [ENVBUILD, "show", "--prefix", other.prefixes["worker"], "-f", ours.spec],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ANOTHER lock than the one in use" in stranger.stdout


def test_check_without_the_guard_on_the_scheduler_says_how_to_load_it(
    locks: dict[str, Lock], tmp_path: Path
) -> None:
    ours = locks["ours"]
    cluster = LocalCluster(ours.spec, ours.lock, tmp_path, ours.prefixes, preload=())
    with running(cluster, workers=1):
        refused = _client(cluster, ours, 1)
    assert refused.returncode != 0
    assert "dask scheduler --preload envbuild.dask" in refused.stdout + refused.stderr
