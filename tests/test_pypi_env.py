"""Environments with PyPI wheels, from the runnable channel and the offline index: every role
imports its wheels, verify checks them file by file, a tampered wheel is never installed, and
a Dask cluster of these environments imports the PyPI package in the client, the scheduler
and the worker, under one lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envbuild.spec import ROLES

from .pypi_setup import pypi_spec, pypi_wheels

__all__ = ["pypi_wheels"]

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
pytestmark = pytest.mark.slow


def envbuild_cli(
    *args: object, cwd: Path, cache: str = "cache"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENVBUILD_CACHE_DIR": str(cwd / cache)}
    return subprocess.run(
        [ENVBUILD, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def environments(
    runnable_channel: Path, pypi_wheels: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Path]]:
    """xarray for every role, a cupy wheel per CUDA major (a CUDA 11.8 scheduler, CUDA 12.4
    workers); locked, and the three role environments made."""
    folder = tmp_path_factory.mktemp("pypi-env")
    spec = pypi_spec(
        folder,
        runnable_channel,
        pypi_wheels,
        pypi=["xarray"],
        gpu_pypi=["cupy-cuda{cuda_major}x"],
        scheduler_cuda="11.8",
    )
    assert envbuild_cli("lock", "-q", "-f", spec, cwd=folder).returncode == 0
    prefixes = {role: folder / "envs" / role for role in ROLES}
    for role, prefix in prefixes.items():
        made = envbuild_cli("env", "-q", "--role", role, "--prefix", prefix, "-f", spec, cwd=folder)
        assert made.returncode == 0, made.stderr
    return spec, prefixes


def python_in(prefix: Path, code: str) -> str:
    done = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_every_role_imports_its_wheels_and_verifies_file_by_file(
    environments: tuple[Path, dict[str, Path]],
) -> None:
    spec, prefixes = environments
    probe = "import xarray, sys; print(xarray.__version__, xarray.__file__.startswith(sys.prefix))"
    for role, prefix in prefixes.items():
        assert python_in(prefix, probe) == "2026.2.0 True", role
        verified = envbuild_cli(
            "verify", "--role", role, "--prefix", prefix, "-f", spec, "--files", cwd=spec.parent
        )
        assert verified.returncode == 0, verified.stderr
        stamp = json.loads((prefix / "etc" / "envbuild" / "stamp.json").read_text())
        assert stamp["pypi"].startswith("sha256:")
    cupy = "import cupy, importlib.metadata as m; print(m.version('cupy-cuda{}x'))"
    assert python_in(prefixes["scheduler"], cupy.format(11)) == "13.3.0"
    assert python_in(prefixes["worker"], cupy.format(12)) == "13.3.0"
    gone = "import importlib.util as u; print(u.find_spec('cupy') is None)"
    assert python_in(prefixes["client"], gone) == "True"


CLIENT = """
import json, sys
from dask.distributed import Client

def probe():
    import sys, xarray
    return [xarray.__version__, sys.prefix]

with Client(scheduler_file=sys.argv[1], timeout=60) as client:
    client.wait_for_workers(1, timeout=60)
    import envbuild.dask
    envbuild.dask.check(client)  # raises unless every process runs this lock
    print(json.dumps({
        "client": probe(),
        "scheduler": client.run_on_scheduler(probe),
        "workers": list(client.run(probe).values()),
    }))
"""


def test_a_cluster_imports_the_pypi_package_in_every_role_under_one_lock(
    environments: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    from envbuild.testing.cluster import LocalCluster, running

    spec, prefixes = environments
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    cluster = LocalCluster(spec, spec.parent / "envbuild.lock", tmp_path, prefixes)
    with running(cluster, workers=1):
        done = subprocess.run(
            [ENVBUILD, "run", "--role", "client", "--prefix", prefixes["client"], "-f", spec,
             "--", "python", str(script), str(cluster.scheduler_file)],
            capture_output=True, text=True, timeout=180, cwd=spec.parent,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["client"] == ["2026.2.0", str(prefixes["client"])]
    assert found["scheduler"] == ["2026.2.0", str(prefixes["scheduler"])]
    assert found["workers"] == [["2026.2.0", str(prefixes["worker"])]]


def test_a_changed_wheel_file_is_found_and_repaired(
    environments: tuple[Path, dict[str, Path]],
) -> None:
    spec, prefixes = environments
    prefix = prefixes["client"]
    module = next(prefix.glob("lib/python3*/site-packages/xarray/__init__.py"))
    module.write_text(module.read_text() + "\nraise SystemExit('tampered')\n")
    verify = ("verify", "--role", "client", "--prefix", prefix, "-f", spec, "--files")
    found = envbuild_cli(*verify, cwd=spec.parent)
    assert found.returncode == 12
    assert "xarray/__init__.py (xarray.pypi) was modified" in found.stderr
    assert "--repair" in found.stderr
    repaired = envbuild_cli(
        "env", "--role", "client", "--prefix", prefix, "-f", spec, "--repair", cwd=spec.parent
    )
    assert repaired.returncode == 0, repaired.stderr
    assert envbuild_cli(*verify, cwd=spec.parent).returncode == 0
    assert "tampered" not in module.read_text()


def test_a_tampered_wheel_is_refused_at_install(
    runnable_channel: Path, pypi_wheels: list[Path], tmp_path: Path
) -> None:
    spec = pypi_spec(tmp_path, runnable_channel, pypi_wheels, pypi=["xarray"])
    assert envbuild_cli("lock", "-q", "-f", spec, cwd=tmp_path).returncode == 0
    wheel = tmp_path / "wheels" / "xarray-2026.2.0-py3-none-any.whl"
    data = wheel.read_bytes()
    wheel.unlink()  # a hard link into the shared wheel cache: replace it, never edit it
    wheel.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    prefix = tmp_path / "envs" / "client"
    env = ("env", "--role", "client", "--prefix", prefix, "-f", spec)
    # on a machine whose cache never saw the wheel (a CI runner, an image build)
    made = envbuild_cli(*env, cwd=tmp_path, cache="fresh-cache")
    assert made.returncode == 11, made.stderr
    assert "xarray-2026.2.0-py3-none-any.whl: its sha256 does not match the lock" in made.stderr
    assert not prefix.exists()
    # and where the lock's own cache copy was changed too: the copy is checked every time
    (cached,) = (tmp_path / "cache" / "pypi" / "wheels").glob("*/xarray-2026.2.0-*.whl")
    cached.write_bytes(wheel.read_bytes())
    made = envbuild_cli(*env, cwd=tmp_path)
    assert made.returncode == 11, made.stderr
    assert not prefix.exists()
