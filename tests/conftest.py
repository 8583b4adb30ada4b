"""Shared fixtures: scenario folders copied into tmp_path, a real local channel, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from envbuild.cli import app
from envbuild.testing.catalog import write_dask_gpu_channel

TESTS = Path(__file__).parent
REPO = TESTS.parent
DATA = TESTS / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip on a user's machine that lacks a tool; fail in CI, where every test must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason}: CI must run this test")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _own_package_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never touch ~/.cache, nor each other's caches: prefixes are hard links into
    the cache, so a test that edits an installed file edits the cache behind it."""
    monkeypatch.setenv("ENVBUILD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def runnable_channel() -> Path:
    """The runnable channel (real python, Dask, cupy), built once and cached under build/cache
    (shared with `make demo`); its wheels are fetched once, with pip."""
    from envbuild.testing import runnable

    require(runnable.DEBIAN_PYTHON.is_file(), "Debian's python3.11 builds the runnable channel")
    return runnable.build(REPO / "build" / "cache" / "runnable")


@dataclass(frozen=True)
class ContainerSetup:
    """A Docker engine, a registry on loopback and the demo's base image, for the session."""

    host: str
    registry: Any  # envbuild.testing.docker.Registry
    #: the demo's base image in that registry (``ADDRESS/envbuild-demo/base:bookworm``), an
    #: index of an amd64 and an arm64 image
    base: str = ""


@pytest.fixture(scope="session")
def containers() -> Iterator[ContainerSetup]:
    """Started by the test run, stopped by PID afterwards (envbuild.testing.docker)."""
    from envbuild.testing import docker as local_docker

    why = local_docker.usable()
    require(why is None, f"no Docker engine can be started here: {why}")
    base = local_docker.base_tar(REPO / "build" / "cache")
    # amd64 and arm64, as an index: the example's worker pool has both (GH200 beside A100)
    layout = local_docker.base_index_layout(REPO / "build" / "cache")
    with local_docker.engine() as host, local_docker.registry() as registry:
        local_docker.import_base(host, base)
        yield ContainerSetup(host, registry, local_docker.push_base(layout, registry.address))


EXAMPLE_BASE = "base: oci:../../build/demo-base:bookworm"


def image_section(base: str, repository: str) -> Callable[[str], str]:
    """An ``edit`` for ``runnable_spec``: the example's image section with ``base`` (e.g.
    ``ContainerSetup.base``) and ``repository``."""
    return lambda text: text.replace(EXAMPLE_BASE, f"base: {base}\n  repository: {repository}")


def runnable_spec(folder: Path, channel: Path, *, edit: Callable[[str], str] = str) -> Path:
    """The dask-gpu example, pointed at the runnable channel and at its PyPI wheels in the
    cache (both one path for every copy: copies lock alike), written into ``folder``."""
    from envbuild.testing.pypi_index import with_find_links

    text = (REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text()
    text = with_find_links(text, REPO / "build" / "cache")
    spec = folder / "envbuild.yaml"
    spec.write_text(edit(text.replace("[../../build/demo-channel]", f"['{channel}']")))
    return spec


@pytest.fixture
def scenario(tmp_path: Path) -> Callable[..., Path]:
    """Copy tests/data/NAME into tmp_path, write the fixture channel to ./channel, return
    the spec's path. Keyword arguments go to the channel writer."""

    def make(name: str, **channel: Any) -> Path:
        shutil.copytree(DATA / name, tmp_path, dirs_exist_ok=True)
        write_dask_gpu_channel(tmp_path / "channel", **channel)
        return tmp_path / "envbuild.yaml"

    return make


@pytest.fixture
def envbuild(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run the envbuild CLI in-process: ``envbuild("lock", "-f", spec)``."""

    def run(*args: object, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def locked(scenario: Callable[..., Path]) -> Path:
    """The dask-gpu scenario, locked; returns the spec's path."""
    from envbuild.lock.locking import lock

    spec = scenario("dask-gpu")
    lock(spec)
    return spec


def lock_document(path: Path) -> dict[str, Any]:
    """The lock file as raw JSON, to compare records without envbuild's own reader."""
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def target_packages(document: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """target -> name -> package entry, straight from the lock's JSON."""
    targets: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, info in document["variants"].items():
        for platform in info["targets"]:
            targets[f"{variant}/{platform}"] = {}
    for entry in document["packages"]:
        for target in entry["targets"]:
            assert entry["name"] not in targets[target], f"{entry['name']} twice in {target}"
            targets[target][entry["name"]] = entry
    return targets
