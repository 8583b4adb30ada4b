"""Exports carry the lock's PyPI wheels, each read back by its own tool: conda-lock's parser
(``pip`` entries), rattler's LockFile (pixi's ``pypi`` packages), YAML (environment.yml's
``pip:`` section, pinned by version and sha256)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import Result

from envbuild.lock.lockfile import Lock, read_lock

from .pypi_setup import pypi_spec, pypi_wheels

__all__ = ["pypi_wheels"]


@pytest.fixture(scope="module")
def pypi_locked(
    tmp_path_factory: pytest.TempPathFactory, runnable_channel: Path, pypi_wheels: list[Path]
) -> Iterator[tuple[Path, Lock]]:
    """The demo spec with xarray and a cupy wheel per CUDA major (CUDA 11.8 scheduler), locked."""
    from envbuild.lock.locking import lock

    folder = tmp_path_factory.mktemp("pypi-exports")
    spec = pypi_spec(
        folder,
        runnable_channel,
        pypi_wheels,
        pypi=["xarray"],
        gpu_pypi=["cupy-cuda{cuda_major}x"],
        scheduler_cuda="11.8",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENVBUILD_CACHE_DIR", str(folder / "cache"))
        lock(spec)
    yield spec, read_lock(folder / "envbuild.lock")


def test_conda_lock_reads_the_wheels_as_pip_entries(
    pypi_locked: tuple[Path, Lock], envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    from conda_lock.lockfile import parse_conda_lock_file

    spec, lock = pypi_locked
    output = tmp_path / "conda-lock.yml"
    result = envbuild(
        "export", "--format", "conda-lock", "--role", "scheduler", "-o", output, "-f", spec
    )
    assert result.exit_code == 0, result.output
    parsed = parse_conda_lock_file(output)
    pip = {(d.name, d.version, d.url, d.hash.sha256) for d in parsed.package if d.manager == "pip"}
    target = lock.role_target("scheduler", "linux-64")
    assert pip == {(w.name, w.version, w.url, w.sha256) for w in target.wheels}
    assert {d.name for d in parsed.package if d.manager == "pip"} == {
        "cupy-cuda11x",
        "fastrlock",
        "xarray",
    }


def test_pixi_lock_holds_each_variants_pypi_packages(
    pypi_locked: tuple[Path, Lock], envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    from rattler import LockFile

    spec, lock = pypi_locked
    output = tmp_path / "pixi.lock"
    assert envbuild("export", "--format", "pixi", "-o", output, "-f", spec).exit_code == 0
    environments = dict(LockFile.from_path(output).environments())
    for target in lock.targets:
        environment = environments[target.variant]
        platform = next(p for p in environment.platforms() if str(p.subdir) == target.platform)
        found = {
            (p.name, str(p.version), as_url(str(p.location)))
            for p in environment.pypi_packages_for_platform(platform)
        }
        assert found == {(w.name, w.version, w.url) for w in target.wheels}, target.target


def as_url(location: str) -> str:
    """rattler gives a local wheel's location as a path."""
    return Path(location).as_uri() if location.startswith("/") else location


def test_environment_yml_pins_each_wheel_by_version_and_hash(
    pypi_locked: tuple[Path, Lock], envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    spec, lock = pypi_locked
    result = envbuild(
        "export",
        "--format",
        "environment",
        "--role",
        "client",
        "--platform",
        "osx-arm64",
        "-o",
        "-",
        "-f",
        spec,
    )
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.output)
    (pip,) = [d["pip"] for d in document["dependencies"] if isinstance(d, dict)]
    (xarray,) = lock.role_target("client", "osx-arm64").wheels
    assert pip == [f"xarray==2026.2.0 --hash=sha256:{xarray.sha256}"]


def test_explicit_lists_the_wheels_after_the_packages_as_comments(
    pypi_locked: tuple[Path, Lock], envbuild: Callable[..., Result]
) -> None:
    spec, lock = pypi_locked
    result = envbuild("export", "--format", "explicit", "--role", "worker", "-o", "-", "-f", spec)
    lines = result.output.splitlines()
    explicit = lines.index("@EXPLICIT")
    body = [line for line in lines[explicit + 1 :] if not line.startswith("#")]
    assert all(".conda#" in line or ".tar.bz2#" in line for line in body)
    wheels = lock.role_target("worker", "linux-64").wheels
    for wheel in wheels:
        assert f"#   {wheel.url} --hash=sha256:{wheel.sha256}" in lines
