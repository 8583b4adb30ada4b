"""``envbuild env`` and ``envbuild verify``: real conda environments made from the lock.

An environment is complete when its packages (conda-meta) match the lock's target AND the
marker ``conda-meta/envbuild.json`` says so. ``env`` removes the marker before it changes a
prefix and writes it (atomically) only after the install succeeded, so an interrupted install
never leaves a prefix that ``verify`` calls complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from envbuild.atomic import write_atomic
from envbuild.cache import package_cache
from envbuild.errors import InstallError, OutputError, PrefixMismatchError
from envbuild.lockfile import Lock, LockedPackage, LockedTarget

MARKER = Path("conda-meta") / "envbuild.json"
_NOT_RECORDS = {"envbuild.json", "history"}


def fingerprint(packages: Iterable[LockedPackage]) -> str:
    """Identifies a set of packages (name, version, build, sha256)."""
    lines = sorted(f"{p.name} {p.version} {p.build} {p.sha256}" for p in packages)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- reading a prefix -------------------------------------------------------------------------


def installed_records(prefix: Path) -> dict[str, dict[str, Any]]:
    """name -> conda-meta record of every package installed in ``prefix``."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        if path.name in _NOT_RECORDS:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            records[record["name"]] = record
        except (OSError, ValueError, KeyError, TypeError):
            records[path.stem] = {"name": path.stem, "unreadable": str(path)}
    return records


def _describe(version: object, build: object, sha256: object) -> str:
    return f"{version} {build} sha256:{str(sha256)[:12]}"


@dataclass(frozen=True)
class Change:
    """A package whose installed record differs from the lock."""

    name: str
    locked: str
    installed: str
    what: str  # "version" | "build" | "sha256" | "record"


@dataclass(frozen=True)
class VerifyReport:
    """How a prefix compares with a locked target."""

    prefix: Path
    target: str
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    changed: tuple[Change, ...] = ()
    marker: Literal["ok", "missing", "stale", "unchecked"] = "ok"
    files: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.files) and self.marker in (
            "ok",
            "unchecked",
        )

    def problems(self) -> list[str]:
        """One line per problem."""
        lines = [f"missing: {name}" for name in self.missing]
        lines += [f"extra: {name} (not in the lock)" for name in self.extra]
        lines += [
            f"changed: {c.name} ({c.what}): lock has {c.locked}, prefix has {c.installed}"
            for c in self.changed
        ]
        if self.marker == "missing":
            lines.append(
                "incomplete: no conda-meta/envbuild.json (an interrupted `envbuild env`, or not "
                "made by envbuild)"
            )
        elif self.marker == "stale":
            lines.append("incomplete: conda-meta/envbuild.json is from another lock or target")
        lines += [f"file: {problem}" for problem in self.files]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefix": str(self.prefix), "clean": self.clean}


def compare(
    locked: Sequence[LockedPackage], installed: Mapping[str, Mapping[str, Any]]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Change, ...]]:
    """Missing, extra and changed packages of a prefix against the lock (pure)."""
    wanted = {p.name: p for p in locked}
    missing = tuple(sorted(set(wanted) - set(installed)))
    extra = tuple(sorted(set(installed) - set(wanted)))
    changed = []
    for name in sorted(set(wanted) & set(installed)):
        lock_pkg, record = wanted[name], installed[name]
        if "unreadable" in record:
            changed.append(Change(name, str(lock_pkg), "an unreadable record", "record"))
            continue
        for what, expected in (
            ("version", lock_pkg.version),
            ("build", lock_pkg.build),
            ("sha256", lock_pkg.sha256),
        ):
            if record.get(what) != expected:
                changed.append(
                    Change(
                        name,
                        _describe(lock_pkg.version, lock_pkg.build, lock_pkg.sha256),
                        _describe(record.get("version"), record.get("build"), record.get("sha256")),
                        what,
                    )
                )
                break
    return missing, extra, tuple(changed)


def _file_problems(prefix: Path, records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Files a package installed that are gone or whose content changed."""
    problems = []
    for record in records:
        for entry in (record.get("paths_data") or {}).get("paths", []):
            path = prefix / entry["_path"]
            if not path.exists() and not path.is_symlink():
                problems.append(f"{entry['_path']} ({record['name']}) is missing")
                continue
            expected = entry.get("sha256_in_prefix") or (
                None if entry.get("prefix_placeholder") else entry.get("sha256")
            )
            if expected and entry.get("path_type", "hardlink") == "hardlink":
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest != expected:
                    problems.append(f"{entry['_path']} ({record['name']}) was modified")
    return problems


def verify_prefix(
    target: LockedTarget, prefix: Path, *, files: bool = False, marker: bool = True
) -> VerifyReport:
    """Compare ``prefix`` with a locked target (``files``: also hash every installed file)."""
    if not (prefix / "conda-meta").is_dir():
        raise PrefixMismatchError(f"{prefix} is not a conda environment (no conda-meta/)")
    installed = installed_records(prefix)
    missing, extra, changed = compare(target.packages, installed)
    marker_state: Literal["ok", "missing", "stale", "unchecked"] = "unchecked"
    if marker:
        try:
            found = json.loads((prefix / MARKER).read_text(encoding="utf-8"))
            ok = found.get("packages") == fingerprint(target.packages)
            marker_state = "ok" if ok else "stale"
        except (OSError, ValueError, AttributeError):
            marker_state = "missing"
    file_problems = _file_problems(prefix, installed.values()) if files else []
    return VerifyReport(
        prefix=prefix,
        target=str(target.target),
        missing=missing,
        extra=extra,
        changed=changed,
        marker=marker_state,
        files=tuple(file_problems),
    )


# --- creating an environment --------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_INDEX_NAME = ".envbuild-verified-archives.json"


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def check_local_archives(packages: Sequence[LockedPackage], cache_dir: Path) -> None:
    """Hash every ``file://`` archive against the lock before rattler extracts it.

    rattler verifies what it downloads over HTTP but not local archives, and it files an
    extraction in its cache under the lock's sha256 unchecked: one bad archive would stay in
    the cache for good. So a mismatch here stops the install, naming the package.

    Archives verified before and unchanged since (same size, mtime, ctime, inode and device,
    as git's index judges files) are not hashed again; the record of them lives in the cache.
    """
    index_path = cache_dir / _INDEX_NAME
    try:
        index: dict[str, list[Any]] = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
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
            actual = _sha256_of(path)
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
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            verified = list(pool.map(check, unknown))
    if verified:
        index.update(verified)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(index_path, json.dumps(index, sort_keys=True))
        except OutputError:
            pass  # only a speed-up: the archives get hashed again next time


@dataclass(frozen=True)
class EnvOutcome:
    """What ``create_env`` did."""

    prefix: Path
    target: str
    status: Literal["created", "updated", "up-to-date"]
    packages: int
    seconds: float
    fetched: list[str] = field(default_factory=list)


def _check_prefix_is_usable(prefix: Path) -> bool:
    """True when ``prefix`` holds an environment already; refuses anything else but a new or
    empty folder."""
    if prefix.exists() and not prefix.is_dir():
        raise OutputError(f"{prefix} exists and is not a folder")
    if prefix.is_dir() and any(prefix.iterdir()):
        if not (prefix / "conda-meta").is_dir():
            raise OutputError(
                f"{prefix} exists and is not a conda environment (no conda-meta/); refusing to "
                "install into it: choose another --prefix or remove it"
            )
        return True
    return False


def create_env(
    lock: Lock,
    target: LockedTarget,
    prefix: Path,
    *,
    cache_dir: Path | None = None,
    show_progress: bool = False,
) -> EnvOutcome:
    """Make ``prefix`` hold exactly the locked target; a complete prefix is left untouched."""
    started = time.perf_counter()
    existed = _check_prefix_is_usable(prefix)
    report = verify_prefix(target, prefix) if existed else None
    if report is not None and report.clean:
        return EnvOutcome(
            prefix,
            str(target.target),
            "up-to-date",
            len(target.packages),
            time.perf_counter() - started,
        )
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / MARKER).unlink(missing_ok=True)  # incomplete from here until the end
    except OSError as exc:
        raise OutputError(f"{prefix}: cannot write here: {exc.strerror}") from None

    # Whatever rattler will (re)install must be checked first, as verify sees the prefix.
    reinstall = {c.name for c in report.changed} if report else set()
    needed = (set(report.missing) | reinstall) if report else {p.name for p in target.packages}
    to_fetch = [p for p in target.packages if p.name in needed]
    cache_dir = cache_dir or package_cache()
    check_local_archives(to_fetch, cache_dir)

    from envbuild import conda

    asyncio.run(
        conda.install(
            target.packages,
            prefix,
            cache_dir=cache_dir,
            platform=target.platform,
            show_progress=show_progress,
            reinstall=reinstall,
        )
    )
    marker = {
        "generated-by": "envbuild",
        "lock": lock.spec_hash,
        "target": str(target.target),
        "packages": fingerprint(target.packages),
    }
    write_atomic(prefix / MARKER, json.dumps(marker, indent=2) + "\n")
    return EnvOutcome(
        prefix,
        str(target.target),
        "updated" if existed else "created",
        len(target.packages),
        time.perf_counter() - started,
        [str(p) for p in to_fetch],
    )
