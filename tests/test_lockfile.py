"""The lock file format: round trip, byte stability, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envbuild.errors import OutputError
from envbuild.lock.lockfile import (
    Lock,
    LockedPackage,
    LockedRole,
    LockedTarget,
    Target,
    dumps,
    loads,
    write_lock,
)

from .test_consistency import CPU, GPU_124


def sample_lock() -> Lock:
    return Lock(
        name="demo",
        spec_hash="sha256:" + "ab" * 32,
        channels=("file:///c",),
        roles=(
            LockedRole("client", "cpu", ("linux-64",)),
            LockedRole("scheduler", "cuda-12.4", ("linux-64",), "12.4", ">=7.5", 1),
            LockedRole("worker", "cuda-12.4", ("linux-64",), "12.4", ">=8.0", 2),
        ),
        targets=(
            LockedTarget(
                Target("cpu", "linux-64"),
                ("python",),
                ("__unix=0=0",),
                tuple(sorted(CPU, key=LockedPackage.sort_key)),
            ),
            LockedTarget(
                Target("cuda-12.4", "linux-64"),
                ("python", "cupy", "cuda-version 12.4.*"),
                ("__cuda=12.4=0", "__unix=0=0"),
                tuple(sorted(GPU_124, key=LockedPackage.sort_key)),
            ),
        ),
        gpu_dependencies=("cupy",),
    )


def test_round_trip_is_exact() -> None:
    lock = sample_lock()
    text = dumps(lock)
    again = loads(text, Path("envbuild.lock"))
    assert again == lock
    assert dumps(again) == text


def test_shared_packages_are_stored_once_with_their_targets() -> None:
    document = json.loads(dumps(sample_lock()))
    python = [p for p in document["packages"] if p["name"] == "python"]
    assert len(python) == 1 and python[0]["targets"] == ["cpu/linux-64", "cuda-12.4/linux-64"]
    assert document["generated-by"].startswith("envbuild")
    assert list(document)[:2] == ["generated-by", "lock-version"]
    names = [(p["name"], p["version"]) for p in document["packages"]]
    assert names == sorted(names)


def test_write_is_atomic_and_skips_identical_content(tmp_path: Path) -> None:
    path = tmp_path / "envbuild.lock"
    assert write_lock(path, sample_lock()) is True
    mode = path.stat().st_mode & 0o777
    assert mode & 0o044  # readable by others: a lock is not a secret (mkstemp would give 0600)
    before = path.stat().st_mtime_ns
    assert write_lock(path, sample_lock()) is False
    assert path.stat().st_mtime_ns == before
    assert [p.name for p in tmp_path.iterdir()] == ["envbuild.lock"]


def test_a_path_through_a_file_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")  # fails for root too, unlike chmod
    with pytest.raises(OutputError, match="cannot write here"):
        write_lock(tmp_path / "not-a-folder" / "envbuild.lock", sample_lock())


def test_a_missing_folder_is_made_and_a_file_in_the_way_is_an_output_error(
    tmp_path: Path,
) -> None:
    write_lock(tmp_path / "missing" / "envbuild.lock", sample_lock())
    assert (tmp_path / "missing" / "envbuild.lock").is_file()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write here"):
        write_lock(tmp_path / "file" / "envbuild.lock", sample_lock())
