"""Package archives are checked against the lock before anything is installed from them."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envbuild.errors import InstallError, OutputError
from envbuild.files.atomic import write_atomic
from envbuild.files.digest import sha256_hex
from envbuild.lock.lockfile import LockedPackage

_INDEX_NAME = ".envbuild-verified-archives.json"


def _stat_key(path: Path) -> list[int]:
    stat_ = path.stat()
    return [stat_.st_size, stat_.st_mtime_ns, stat_.st_ctime_ns, stat_.st_ino, stat_.st_dev]


def _read_index(index_path: Path) -> dict[str, list[Any]]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return index if isinstance(index, dict) else {}  # a damaged index is only a lost speed-up


def check_local_archives(packages: Sequence[LockedPackage], cache_dir: Path) -> None:
    """Hash every ``file://`` archive against the lock before rattler extracts it.

    rattler verifies what it downloads over HTTP but not local archives, and it files an
    extraction in its cache under the lock's sha256 unchecked: one bad archive would stay in
    the cache for good. So a mismatch here stops the install, naming the package.

    Archives verified before and unchanged since (same size, mtime, ctime, inode and device,
    as git's index judges files) are not hashed again; the record of them lives in the cache.
    """
    index_path = cache_dir / _INDEX_NAME
    index = _read_index(index_path)
    unknown = []  # archives not verified before, or changed since
    for package in packages:
        path = package.local_path
        if path is None:
            continue
        try:
            key = _stat_key(path)
        except OSError as exc:
            raise InstallError(f"{package}: cannot read {path}: {exc.strerror}") from None
        if index.get(str(path)) != [*key, package.sha256]:
            unknown.append((package, path, key))

    def check(item: tuple[LockedPackage, Path, list[int]]) -> tuple[str, list[Any]]:
        package, path, key = item
        try:
            actual = sha256_hex(path)
        except OSError as exc:
            raise InstallError(f"{package}: cannot read {path}: {exc.strerror}") from None
        if actual != package.sha256:
            raise InstallError(
                f"{package}: {path} has sha256 {actual}, the lock says {package.sha256}: the "
                "channel changed since it was locked; refusing to install it"
            )
        return str(path), [*key, actual]

    verified: list[tuple[str, list[Any]]] = []
    if unknown:
        from concurrent.futures import ThreadPoolExecutor  # 10 ms: only when there is work

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            verified = list(pool.map(check, unknown))
    if verified:
        index.update(verified)
        with contextlib.suppress(OutputError, OSError):  # a speed-up only: hashed again next time
            write_atomic(index_path, json.dumps(index, sort_keys=True))
