"""A cluster that really runs: real Python and Dask in the offline channel, `envbuild run`,
and scheduler, worker and client processes started from one lock's role environments."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from envbuild.testing import pypi_index, runnable, wheels
from envbuild.testing.cluster import ARRAY_SUM, GROUPBY, LocalCluster, running

from .conftest import REPO, lock_document, runnable_spec, target_packages
from .test_alignment import Records, assert_invariant, exported

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
ROLES = ("client", "scheduler", "worker")
GPU_STACK = {"cupy", "cuda-cudart", "cuda-version", "fastrlock"}


def envbuild_cli(*args: object, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVBUILD, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def environments(
    runnable_channel: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Path]]:
    """The example locked against the runnable channel, and its three role environments."""
    folder = tmp_path_factory.mktemp("runnable")
    spec = runnable_spec(folder, runnable_channel)
    cache = folder / "pkgs"
    prefixes = {role: folder / "envs" / role for role in ROLES}
    assert envbuild_cli("lock", "-q", "-f", spec, cwd=folder).returncode == 0
    for role, prefix in prefixes.items():
        made = envbuild_cli(
            "env",
            "-q",
            "--role",
            role,
            "--prefix",
            prefix,
            "-f",
            spec,
            "--cache-dir",
            cache,
            cwd=folder,
        )
        assert made.returncode == 0, made.stderr
    return spec, prefixes


def test_the_example_as_shipped_locks_one_consistent_environment(
    runnable_channel: Path, tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    # The example exactly as shipped, with the channel and the wheels where `make demo`
    # puts them.
    example = tmp_path / "examples" / "dask-gpu" / "envbuild.yaml"
    example.parent.mkdir(parents=True)
    shutil.copy(REPO / "examples" / "dask-gpu" / "envbuild.yaml", example)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "demo-channel").symlink_to(runnable_channel)
    pypi_index.main(
        [str(tmp_path / "build" / "demo-wheels"), "--cache", str(REPO / "build" / "cache")]
    )

    records: Records = exported(envbuild, example)

    assert set(records) == {
        "cpu/linux-64",
        "cpu/osx-arm64",
        "cuda-12.4/linux-64",
        "cuda-12.4/linux-aarch64",  # the GH200 workers
    }
    assert_invariant(records, builds_may_differ=GPU_STACK, runtime=())
    gpu, cpu, mac = (records[t] for t in ("cuda-12.4/linux-64", "cpu/linux-64", "cpu/osx-arm64"))
    arm = records["cuda-12.4/linux-aarch64"]
    assert set(arm) == set(gpu) and all(arm[n][0] == gpu[n][0] for n in gpu)  # same versions
    assert set(gpu) - set(cpu) == GPU_STACK and set(cpu) - set(gpu) == set()
    assert gpu["cuda-version"][0] == "12.4" and gpu["cuda-cudart"][0] == "12.4.127"
    assert gpu["cupy"][0] == "13.3.0" and gpu["cupy"][1].startswith("py311cuda12")
    assert gpu["dask"][0] == mac["dask"][0] == "2024.8.2"
    assert gpu["python"][0].startswith("3.11.") and "nvidia-ml-py" in cpu
    document = lock_document(example.parent / "envbuild.lock")
    roles = {r: v["variant"] for r, v in document["roles"].items()}
    assert roles == {"client": "cpu", "scheduler": "cuda-12.4", "worker": "cuda-12.4"}
    # Virtual packages are declared by the spec, not detected: this machine has no GPU.
    declared = document["variants"]["cuda-12.4"]["targets"]["linux-64"]["virtual-packages"]
    assert "__cuda=12.4=0" in declared and "__glibc=2.28=0" in declared
    arm_declared = document["variants"]["cuda-12.4"]["targets"]["linux-aarch64"]
    assert "__archspec=1=aarch64" in arm_declared["virtual-packages"]
    # Its PyPI dependency: one xarray wheel, the same in every target, over conda's pandas.
    (xarray,) = document["pypi-packages"]
    assert (xarray["name"], xarray["version"]) == ("xarray", "2026.2.0")
    assert sorted(xarray["targets"]) == sorted(records)


def test_two_cuda_majors_lock_from_the_same_wheels(runnable_channel: Path, tmp_path: Path) -> None:
    # A T4 scheduler on CUDA 11.8 beside CUDA 12.4 workers: cupy from CuPy's cuda11x and
    # cuda12x wheels, one version.
    spec = runnable_spec(
        tmp_path,
        runnable_channel,
        edit=lambda s: s.replace('cuda: "12.4", compute-capability: ">=7.5"', 'cuda: "11.8"'),
    )
    assert envbuild_cli("lock", "-q", "-f", spec, cwd=tmp_path).returncode == 0
    targets = target_packages(lock_document(tmp_path / "envbuild.lock"))
    old, new = targets["cuda-11.8/linux-64"], targets["cuda-12.4/linux-64"]
    assert old["cupy"]["build"].startswith("py311cuda11")
    assert new["cupy"]["build"].startswith("py311cuda12")
    assert old["cuda-cudart"]["version"] == "11.8.89"
    assert old["numpy"] == new["numpy"] == targets["cpu/linux-64"]["numpy"]


def test_the_channel_is_byte_reproducible(runnable_channel: Path, tmp_path: Path) -> None:
    again = runnable.build(
        tmp_path / "cache",
        wheel_cache=REPO / "build" / "cache" / "runnable" / "wheels",
        offline=True,
        log=lambda message: None,
    )

    def digests(channel: Path) -> dict[str, str]:
        return {
            p.relative_to(channel).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(channel.rglob("*"))
            if p.is_file() and p.name != ".complete"
        }

    first, second = digests(runnable_channel), digests(again)
    assert first == second
    assert len([f for f in first if f.endswith(".conda")]) == 61


def test_role_environments_run_python_and_the_dask_stack(
    environments: tuple[Path, dict[str, Path]],
) -> None:
    spec, prefixes = environments
    for role, prefix in prefixes.items():
        imports = "import dask, distributed, numpy, pandas, pynvml"
        if role != "client":
            imports += ", cupy"
        done = subprocess.run(
            [str(prefix / "bin" / "python"), "-c", f"{imports}; import sys; print(sys.prefix)"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(prefix)
        verified = envbuild_cli(
            "verify", "--role", role, "--prefix", prefix, "-f", spec, "--files", cwd=spec.parent
        )
        assert verified.returncode == 0, verified.stderr
    # Console scripts of a noarch package name the environment's own python; among them the
    # commands the dask Helm chart runs (dask-scheduler, worker.image.dask_worker).
    for script in ("dask", "dask-scheduler", "dask-worker"):
        assert (
            (prefixes["worker"] / "bin" / script)
            .read_text()
            .startswith(f"#!{prefixes['worker']}/bin/python")
        )


def test_a_cluster_from_one_lock_computes_and_every_process_reports_it(
    environments: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    spec, prefixes = environments
    cluster = LocalCluster(spec, spec.parent / "envbuild.lock", tmp_path, prefixes)
    with running(cluster, workers=2):
        result = cluster.compute(workers=2)
        report = cluster.gpu_check_report("worker-0")
    assert result["array_sum"] == ARRAY_SUM
    assert {int(k): v for k, v in result["groupby"].items()} == GROUPBY  # type: ignore[attr-defined]
    processes = result["processes"]
    assert isinstance(processes, dict) and len(processes) == 4  # client, scheduler, 2 workers
    assert len({p["lock"] for p in processes.values()}) == 1
    assert processes["client"]["target"] == "cpu/linux-64"
    assert processes["scheduler"]["target"] == "cuda-12.4/linux-64"
    assert processes["scheduler"]["prefix"] == str(prefixes["scheduler"])
    # No GPU here: the worker's check said so, and warn mode started it anyway.
    assert "no NVIDIA driver found" in report[-1] and "starting anyway" in report[-1]


def test_envbuild_run_activates_passes_exit_codes_and_refuses_a_tampered_environment(
    environments: tuple[Path, dict[str, Path]],
) -> None:
    spec, prefixes = environments
    prefix = prefixes["client"]
    run = ("run", "--role", "client", "--prefix", prefix, "-f", spec, "--")
    probe = (
        "import os, sys; print(os.environ['CONDA_PREFIX'], os.environ['PATH'].split(':')[0], "
        "sys.executable); sys.exit(7)"
    )
    done = envbuild_cli(*run, "python", "-c", probe, cwd=spec.parent)
    assert done.returncode == 7
    conda_prefix, first_path, executable = done.stdout.split()
    assert conda_prefix == str(prefix) and first_path == f"{prefix}/bin"
    assert executable == f"{prefix}/bin/python"
    assert envbuild_cli(*run, "no-such-command", cwd=spec.parent).returncode == 127

    record = next((prefix / "conda-meta").glob("toolz-*.json"))
    original = record.read_text()
    record.write_text(original.replace('"version": "0.12.1"', '"version": "0.12.0"'))
    try:
        refused = envbuild_cli(*run, "python", "-c", "print('ran')", cwd=spec.parent)
        assert refused.returncode == 12 and "ran" not in refused.stdout
        assert (
            "changed: toolz (version)" in refused.stderr
            and "repair it with: envbuild env" in refused.stderr
        )
        forced = envbuild_cli(
            "run",
            "--role",
            "client",
            "--prefix",
            prefix,
            "-f",
            spec,
            "--no-verify",
            "--",
            "python",
            "-c",
            "print('ran')",
            cwd=spec.parent,
        )
        assert forced.returncode == 0 and forced.stdout == "ran\n"
    finally:
        record.write_text(original)


def test_a_missing_or_damaged_wheel_cache_is_one_line_and_leaves_no_channel(
    runnable_channel: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    out = tmp_path / "channel"
    command = [sys.executable, "-m", "envbuild.testing.runnable", str(out), "--offline"]
    environment = {**os.environ, "ENVBUILD_RUNNABLE_CACHE": str(cache)}

    missing = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "is missing" in missing.stderr and "fetching is off" in missing.stderr

    shutil.copytree(REPO / "build" / "cache" / "runnable" / "wheels", cache / "wheels")
    victim = next(w for w in wheels.pinned_wheels() if w.name == "toolz")
    (cache / "wheels" / victim.file_name).write_bytes(b"not a wheel")
    damaged = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert damaged.returncode == 1
    assert f"{victim.file_name} is damaged" in damaged.stderr
    assert not out.exists() and not list(cache.glob("channel-*"))


def test_the_lock_of_the_runnable_channel_satisfies_the_invariant(
    environments: tuple[Path, dict[str, Path]], envbuild: Callable[..., Result]
) -> None:
    spec, _ = environments
    records = exported(envbuild, spec)
    assert_invariant(records, builds_may_differ=GPU_STACK, runtime=())
