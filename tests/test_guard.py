"""The Dask guard with real processes: scheduler, workers and clients from real environments of
the runnable channel, some of them from another lock or lying about what they run; and its
reader of identities, over generated garbage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envbuild import dask as guard
from envbuild.testing.cluster import ARRAY_SUM, LocalCluster, running

from .conftest import runnable_spec

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
slow = pytest.mark.slow

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


@slow
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


@slow
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


@slow
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


@slow
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


@slow
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


@slow
def test_check_without_the_guard_on_the_scheduler_says_how_to_load_it(
    locks: dict[str, Lock], tmp_path: Path
) -> None:
    ours = locks["ours"]
    cluster = LocalCluster(ours.spec, ours.lock, tmp_path, ours.prefixes, preload=())
    with running(cluster, workers=1):
        refused = _client(cluster, ours, 1)
    assert refused.returncode != 0
    assert "dask scheduler --preload envbuild.dask" in refused.stdout + refused.stderr


# --- lying workers and a lying scheduler, in real processes ---------------------------------------

LIAR = r'''
"""--preload PATH: with ENVBUILD_TEST_LIAR set, a worker that lies about what it runs (after
envbuild.dask has said the truth), or a scheduler that answers clients with garbage."""
import os

import envbuild.dask


def lie(how):
    real = envbuild.dask.identity()
    if how in ("string", "lingering"):
        return "I run the right lock, trust me"
    if how == "packages-list":
        return {**real, "lock": None, "packages": [f"{n}={v}" for n, v in real["packages"].items()]}
    if how == "huge":
        junk = {f"junk-{i}": "1.0" for i in range(200_000)}
        return {**real, "packages": {**real["packages"], **junk}}
    if how == "nested":
        deep = None
        for level in range(40):
            deep = [{"level": level, "inner": deep}, 1.5, b"bytes", None]
        packages = {n: {"version": v, "deep": deep} for n, v in real["packages"].items()}
        return {**real, "packages": packages}
    raise SystemExit(f"no such lie: {how}")


def dask_setup(server):
    how = os.environ.get("ENVBUILD_TEST_LIAR")
    if how == "scheduler" and hasattr(server, "workers") and hasattr(server, "handlers"):
        answer = {"scheduler": "trust me", "workers": ["tcp://10.0.0.1:1"], "unreadable": 7}
        server.handlers["envbuild_identities"] = lambda comm=None: answer
    elif how and how != "scheduler" and hasattr(server, "startup_information"):
        if how == "absent":
            del server.startup_information["envbuild"]
            return
        told = lie(how)
        server.startup_information["envbuild"] = lambda worker: told
        if how == "lingering":  # deaf to the scheduler's request to leave: it is removed
            server.stream_handlers["close"] = lambda **kwargs: None
'''

#: How each liar lies -> what the scheduler's refusal says.
LIES = {
    "string": "unreadable identity: a string, not a mapping",
    "packages-list": "unreadable identity: 'packages' is a list, not a mapping",
    "huge": re.compile(r"unreadable identity: 2000\d\d packages \(at most 10000\)"),
    "nested": re.compile(r"unreadable identity: the version of package '[^']+' is a mapping"),
    "lingering": "unreadable identity: a string, not a mapping",
    "absent": "no envbuild identity: started without --preload envbuild.dask",
}

TASKS = r'''
"""Submit tasks without pause until the stop file exists; each task appends its worker's name
to the tally file (so a task counts even if its worker goes before its result comes back).
envbuild.dask.check(client) every 0.1 s meanwhile; prints what it passed and raised."""
import json, os, sys, time
from pathlib import Path

from dask.distributed import Client, wait

import envbuild.dask

scheduler_file, tally, ready, stop = sys.argv[1:5]


def record(tally, i):
    from distributed import get_worker

    fd = os.open(tally, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{get_worker().name}\n".encode())
    finally:
        os.close(fd)
    time.sleep(0.01)
    return i


checks = {"passed": 0, "mismatch": [], "other": []}


def note(kind, text):
    if text not in checks[kind] and len(checks[kind]) < 50:
        checks[kind].append(text)


with Client(scheduler_file=scheduler_file, timeout="60s") as client:
    client.wait_for_workers(1, timeout=120)
    pending, submitted, results, checked = set(), 0, 0, 0.0
    while not Path(stop).exists():
        while len(pending) < 8:
            pending.add(client.submit(record, tally, submitted, pure=False))
            submitted += 1
        try:
            done, pending = wait(pending, timeout=1, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        results += len(done)
        if results:
            Path(ready).touch()
        if time.monotonic() - checked > 0.1:
            checked = time.monotonic()
            try:
                envbuild.dask.check(client)
                checks["passed"] += 1
            except envbuild.dask.EnvironmentMismatch as exc:
                note("mismatch", str(exc))
            except Exception as exc:
                note("other", f"{type(exc).__name__}: {exc}"[:500])
    client.cancel(list(pending))
print(json.dumps({"submitted": submitted, "results": results, "checks": checks}))
'''


def _start_worker_address(log: str) -> str | None:
    found = re.search(r"Start worker at:\s+(tcp://\S+)", log)
    return found.group(1) if found else None


@slow
def test_workers_with_unreadable_identities_are_refused_and_run_nothing(
    locks: dict[str, Lock], tmp_path: Path
) -> None:
    ours = locks["ours"]
    liar = tmp_path / "liar.py"
    liar.write_text(LIAR)
    run = tmp_path / "run"
    preload = ("envbuild.dask", str(liar))
    cluster = LocalCluster(ours.spec, ours.lock, run, ours.prefixes, preload=preload)
    tally, ready, stop = tmp_path / "tally", tmp_path / "ready", tmp_path / "stop"
    (tmp_path / "tasks.py").write_text(TASKS)
    command = [ENVBUILD, "run", "--role", "client", "--prefix", str(ours.prefixes["client"])]
    command += ["-f", str(ours.spec), "--lockfile", str(ours.lock), "--", "python"]
    command += [str(tmp_path / "tasks.py"), str(cluster.scheduler_file), *map(str, (tally, ready))]
    exited: dict[str, int | None] = {}
    with running(cluster, workers=1):
        client = subprocess.Popen(
            [*command, str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 180
            while not ready.exists() and client.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert ready.exists(), f"the client ran no task: {cluster.tail('scheduler', 20)}"
            for how in LIES:
                cluster.add_worker(f"liar-{how}", env={"ENVBUILD_TEST_LIAR": how})
            processes = dict(cluster.processes)
            deadline = time.monotonic() + 90  # each must go: at once, or when removed (5 s)
            for how in LIES:
                with_time_left = max(0.1, deadline - time.monotonic())
                try:
                    exited[how] = processes[f"liar-{how}"].wait(timeout=with_time_left)
                except subprocess.TimeoutExpired:
                    exited[how] = None
            time.sleep(2)  # tasks go on after the liars left
            stop.touch()
            out, err = client.communicate(timeout=120)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        scheduler_log = cluster.log("scheduler").read_text()
        logs = {how: cluster.log(f"liar-{how}").read_text() for how in LIES}
    assert client.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    ran = Counter(tally.read_text().split())
    refusals = [line for line in scheduler_log.splitlines() if "distributed.envbuild" in line]
    refusals = [line for line in refusals if "refused" in line]
    seen = {}
    for how in LIES:
        address = _start_worker_address(logs[how])
        assert address, logs[how][-2000:]
        mine = [line for line in refusals if f"worker {address}" in line]
        seen[how] = {"tasks": ran[f"liar-{how}"], "refusals": mine, "exited": exited[how]}
    raised = summary["checks"]["other"]
    summary_of_seen = json.dumps({"liars": seen, "check() raised": raised}, indent=1)[:6000]
    # Every liar ran nothing, was refused once (one log line naming why) and is gone.
    assert {how: s["tasks"] for how, s in seen.items()} == dict.fromkeys(LIES, 0), summary_of_seen
    for how, says in LIES.items():
        assert len(seen[how]["refusals"]) == 1, summary_of_seen
        line = seen[how]["refusals"][0]
        assert re.search(says, line) if isinstance(says, re.Pattern) else says in line, line
        assert seen[how]["exited"] is not None, f"liar-{how} is still running: {logs[how][-2000:]}"
    assert "Reason: envbuild: worker tcp://" in logs["string"]
    # The good worker worked all along; check() only ever raised EnvironmentMismatch, and
    # named the liar that lingered (deaf to the request to leave) while it was there.
    assert ran["worker-0"] > 100, ran
    assert summary["checks"]["other"] == [], summary["checks"]
    lingering = _start_worker_address(logs["lingering"])
    wanted = f"worker {lingering}: unreadable identity: a string, not a mapping"
    assert any(wanted in message for message in summary["checks"]["mismatch"]), summary["checks"]
    assert summary["checks"]["passed"] > 0


@slow
def test_check_refuses_an_answer_from_the_scheduler_that_it_cannot_read(
    locks: dict[str, Lock], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = locks["ours"]
    liar = tmp_path / "liar.py"
    liar.write_text(LIAR)
    monkeypatch.setenv("ENVBUILD_TEST_LIAR", "scheduler")
    preload = ("envbuild.dask", str(liar))
    cluster = LocalCluster(ours.spec, ours.lock, tmp_path / "run", ours.prefixes, preload=preload)
    with running(cluster, workers=1):
        refused = _client(cluster, ours, 1)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    message = json.loads(refused.stdout)["mismatch"]
    assert "scheduler: unreadable identity: a string, not a mapping" in message
    assert "the scheduler's list of workers is unreadable" in message


# --- the reader, over generated garbage -----------------------------------------------------------

#: What a comm can carry (msgpack: lists arrive as tuples), nested.
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.integers(0, 6000).map(lambda n: "x" * n)
    | st.sampled_from(["a\nb", "\x00", "\u2028", "sha256:" + "0" * 64])
)
_KEYS = st.text(max_size=10) | st.integers() | st.binary(max_size=4) | st.none()
GARBAGE = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_KEYS, inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = ["lock", "variant", "target", "roles", "prefix", "python", "packages", "other"]


def _real() -> dict[str, Any]:
    return {**guard.identity(), "lock": "sha256:" + "1" * 64, "roles": ("scheduler", "worker")}


@st.composite
def near_identities(draw: st.DrawFn) -> object:
    """A real identity with one part replaced by garbage: a field, a package's name or
    version, or the whole of it."""
    found = _real()
    where = draw(st.sampled_from([*FIELDS, "a package name", "a package version", "all"]))
    junk = draw(GARBAGE)
    if where == "all":
        return junk
    if where == "a package name":
        found["packages"] = {**found["packages"], junk if isinstance(junk, str | int) else 1: "1.0"}
    elif where == "a package version":
        found["packages"] = {**found["packages"], "numpy": junk}
    else:
        found[where] = junk
    return found


def _assert_read(found: object) -> None:
    try:
        read = guard.read_identity(found)
    except guard.UnreadableIdentity as exc:
        why = str(exc)
        assert why.isprintable() and len(why) < 400, why
        return
    if read is None:
        assert found is None
        return
    assert set(read) == {"lock", "variant", "target", "roles", "prefix", "python", "packages"}
    texts = [read[f] for f in ("lock", "variant", "target", "python") if read[f] is not None]
    texts += [*(read["roles"] or []), *read["packages"], *read["packages"].values()]
    assert all(type(t) is str and t.isprintable() and len(t) <= 256 for t in texts), read
    assert read["prefix"] is None or read["prefix"].isprintable()


@settings(max_examples=400, deadline=None)
@given(st.one_of(GARBAGE, near_identities()))
def test_the_reader_refuses_what_it_cannot_read_and_raises_nothing_else(found: object) -> None:
    _assert_read(found)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        GARBAGE,
        st.fixed_dictionaries(
            {"scheduler": st.one_of(GARBAGE, near_identities())},
            optional={
                "workers": GARBAGE
                | st.dictionaries(_KEYS, st.one_of(GARBAGE, near_identities()), max_size=3),
                "unreadable": GARBAGE | st.dictionaries(_KEYS, GARBAGE, max_size=3),
            },
        ),
    )
)
def test_check_raises_only_environment_mismatch_on_any_answer(found: object) -> None:
    try:
        guard.compare(_real(), found)
    except guard.EnvironmentMismatch as exc:
        assert str(exc).isprintable(), str(exc)  # one line, whatever the scheduler sent


def _as_sent(value: object) -> object:
    """``value`` as a Dask comm delivers it (msgpack, use_list=False: lists become tuples)."""
    if isinstance(value, dict):
        return {k: _as_sent(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_as_sent(v) for v in value)
    return value


def test_a_real_identity_reads_as_itself_after_the_trip() -> None:
    real = _real()
    read = guard.read_identity(_as_sent(real))
    assert read == {**real, "roles": list(real["roles"])}
    assert guard.read_identity(None) is None  # no identity: the caller refuses it as such
    assert guard.compare(read, {"scheduler": real, "workers": {"tcp://a:1": real}})


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda r: "a string", "a string, not a mapping"),
        (lambda r: {**r, "packages": list(r["packages"])}, "'packages' is a list, not a mapping"),
        (lambda r: {**r, "packages": None}, "'packages' is nothing, not a mapping"),
        (
            lambda r: {**r, "packages": {f"p{i}": "1" for i in range(10_001)}},
            "10001 packages (at most 10000)",
        ),
        (lambda r: {**r, "lock": "sha256:1\nrefused nothing"}, "'lock' holds control characters"),
        (lambda r: {**r, "prefix": "/" * 5000}, "'prefix' has 5000 characters (at most 4096)"),
        (lambda r: {**r, "roles": [["worker"]]}, "a role is a list, not a string"),
        (lambda r: {**r, **{f"f{i}": 1 for i in range(40)}}, "47 fields (at most 32)"),
        (
            lambda r: {**r, "packages": {"numpy": {"version": "2.0.2"}}},
            "the version of package 'numpy' is a mapping, not a string",
        ),
        (lambda r: {**r, "packages": {7: "1.0"}}, "a package name is a number, not a string"),
    ],
)
def test_each_unreadable_identity_is_refused_saying_why(change: Any, why: str) -> None:
    with pytest.raises(guard.UnreadableIdentity) as refused:
        guard.read_identity(change(_real()))
    assert str(refused.value) == why


class _Hostile:
    """An object a comm could unpickle, equal to nothing without raising."""

    def __hash__(self) -> int:
        return hash("lock")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")


def test_objects_that_raise_on_comparison_are_unreadable_too() -> None:
    with pytest.raises(guard.UnreadableIdentity, match="cannot be compared"):
        guard.read_identity({_Hostile(): 1, "packages": {}})
    with pytest.raises(guard.EnvironmentMismatch, match=r"cannot be compared|unreadable"):
        guard.compare(_real(), {"scheduler": _real(), "workers": {_Hostile(): _real()}})
