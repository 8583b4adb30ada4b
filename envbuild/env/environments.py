"""``envbuild env`` and ``envbuild verify``: real conda environments made from the lock.

An environment is complete when its packages (conda-meta) match the lock's target AND its
stamp ``etc/envbuild/stamp.json`` says so. The stamp lives outside ``conda-meta/``, where
rattler, pixi, conda and micromamba parse every ``*.json`` as a package record. ``env``
removes the stamp before it changes a prefix and writes it (atomically) only after the
install succeeded, so an interrupted install never leaves a prefix that ``verify`` calls
complete. The stamp also says which lock, variant, platform and roles the prefix was made
for (``envbuild show --prefix``, the Dask guard).

Two ``env`` runs on one prefix take turns (``envbuild.files.exclusive``). A prefix that ``env``
created and could not finish is removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from envbuild.errors import InstallError, OutputError, PrefixMismatchError
from envbuild.files import exclusive
from envbuild.files.atomic import write_atomic
from envbuild.files.cache import package_cache
from envbuild.lock.lockfile import Lock, LockedPackage, LockedTarget, content_digest

STAMP = Path("etc") / "envbuild" / "stamp.json"
#: Where envbuild 0.1 kept its marker; it broke other tools, so ``env`` moves it.
OLD_MARKER = Path("conda-meta") / "envbuild.json"
STAMP_VERSION = 1


def fingerprint(packages: Iterable[LockedPackage]) -> str:
    """Identifies a set of packages (name, version, build, sha256)."""
    lines = sorted(f"{p.name} {p.version} {p.build} {p.sha256}" for p in packages)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def make_stamp(lock: Lock, target: LockedTarget) -> dict[str, Any]:
    """What a prefix made from ``target`` of ``lock`` says about itself."""
    return {
        "generated-by": "envbuild",
        "stamp-version": STAMP_VERSION,
        "name": lock.name,
        "lock": content_digest(lock),
        "spec-hash": lock.spec_hash,
        "target": str(target.target),
        "variant": target.variant,
        "platform": target.platform,
        "roles": sorted(r.name for r in lock.roles if r.variant == target.variant),
        "packages": fingerprint(target.packages),
    }


def read_stamp(prefix: Path) -> dict[str, Any] | None:
    """The prefix's stamp (or the marker of an older envbuild), None when it has none."""
    for where in (STAMP, OLD_MARKER):
        try:
            found = json.loads((prefix / where).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(found, dict):
            return found
    return None


# --- reading a prefix -------------------------------------------------------------------------


def installed_records(prefix: Path) -> dict[str, dict[str, Any]]:
    """name -> conda-meta record of every package installed in ``prefix``."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        if path.name == OLD_MARKER.name:
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
class FileProblem:
    """An installed file that is gone or is not what its package installed."""

    path: str
    package: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path} ({self.package}) {self.problem}"


@dataclass(frozen=True)
class VerifyReport:
    """How a prefix compares with a locked target."""

    prefix: Path
    target: str
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    changed: tuple[Change, ...] = ()
    stamp: Literal["ok", "missing", "stale", "unchecked"] = "ok"
    files: tuple[FileProblem, ...] = ()

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.files) and self.stamp in (
            "ok",
            "unchecked",
        )

    @property
    def damaged(self) -> set[str]:
        """Packages to install again: missing, changed, or with files that are not theirs."""
        return {*self.missing, *(c.name for c in self.changed), *(f.package for f in self.files)}

    def problems(self) -> list[str]:
        """One line per problem."""
        lines = [f"missing: {name}" for name in self.missing]
        lines += [f"extra: {name} (not in the lock)" for name in self.extra]
        lines += [
            f"changed: {c.name} ({c.what}): lock has {c.locked}, prefix has {c.installed}"
            for c in self.changed
        ]
        if self.stamp == "missing":
            lines.append(
                f"incomplete: no {STAMP} (an interrupted `envbuild env`, or not made by envbuild)"
            )
        elif self.stamp == "stale":
            lines.append(f"incomplete: {STAMP} is from another lock or target")
        lines += [f"file: {problem}" for problem in self.files]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "prefix": str(self.prefix),
            "files": [str(f) for f in self.files],
            "clean": self.clean,
        }


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


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFLNK: "a symlink",
}


def _hash_regular_file(path: Path) -> str:
    """sha256 of a file known (by lstat) to be regular; never follows a link or blocks."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since lstat
            raise OSError("not a regular file")
        digest = hashlib.sha256()
        while block := os.read(fd, 1 << 20):
            digest.update(block)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _file_problem(prefix: Path, entry: Mapping[str, Any]) -> str | None:
    """Why an installed file is not what its package put there, or None."""
    path = prefix / entry["_path"]
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    kind = entry.get("path_type", "hardlink")
    if kind == "softlink":
        return None if stat.S_ISLNK(mode) else "should be a symlink"
    if kind == "directory":
        return None if stat.S_ISDIR(mode) else "should be a folder"
    if not stat.S_ISREG(mode):
        return f"is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a file"
    expected = entry.get("sha256_in_prefix") or (
        None if entry.get("prefix_placeholder") else entry.get("sha256")
    )
    if not expected:
        return None
    try:
        actual = _hash_regular_file(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if actual == expected else "was modified"


def _file_problems(prefix: Path, records: Iterable[Mapping[str, Any]]) -> list[FileProblem]:
    """Files a package installed that are gone, replaced by something else, or changed.
    Non-regular files (FIFOs, devices, folders, links where files belong) are reported, never
    read."""
    problems = []
    for record in records:
        paths = (record.get("paths_data") or {}).get("paths", [])
        for entry in paths if isinstance(paths, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("_path"), str):
                continue
            problem = _file_problem(prefix, entry)
            if problem:
                problems.append(FileProblem(entry["_path"], str(record.get("name")), problem))
    return problems


def verify_prefix(
    target: LockedTarget, prefix: Path, *, files: bool = False, stamp: bool = True
) -> VerifyReport:
    """Compare ``prefix`` with a locked target (``files``: also check every installed file)."""
    if not (prefix / "conda-meta").is_dir():
        raise PrefixMismatchError(f"{prefix} is not a conda environment (no conda-meta/)")
    installed = installed_records(prefix)
    missing, extra, changed = compare(target.packages, installed)
    stamp_state: Literal["ok", "missing", "stale", "unchecked"] = "unchecked"
    if stamp:
        found = read_stamp(prefix)
        if found is None:
            stamp_state = "missing"
        else:
            ok = found.get("packages") == fingerprint(target.packages)
            stamp_state = "ok" if ok else "stale"
    file_problems = _file_problems(prefix, installed.values()) if files else []
    return VerifyReport(
        prefix=prefix,
        target=str(target.target),
        missing=missing,
        extra=extra,
        changed=changed,
        stamp=stamp_state,
        files=tuple(file_problems),
    )


# --- creating an environment --------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
        from concurrent.futures import ThreadPoolExecutor  # 10 ms: only when there is work

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            verified = list(pool.map(check, unknown))
    if verified:
        index.update(verified)
        with contextlib.suppress(OutputError, OSError):  # a speed-up only: hashed again next time
            write_atomic(index_path, json.dumps(index, sort_keys=True))


@dataclass(frozen=True)
class EnvOutcome:
    """What ``create_env`` did."""

    prefix: Path
    target: str
    status: Literal["created", "updated", "repaired", "up-to-date"]
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


def _usable_cache(cache_dir: Path) -> Path:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{cache_dir}: cannot use it as the package cache ({exc.strerror or exc}): pass "
            "--cache-dir FOLDER or set ENVBUILD_CACHE_DIR"
        ) from None
    if not cache_dir.is_dir():
        raise OutputError(f"{cache_dir}: the package cache must be a folder")
    return cache_dir


def _drop_extractions(packages: Iterable[LockedPackage], cache_dir: Path) -> None:
    """Remove the cache's extracted copies of ``packages`` (a file changed in a prefix is the
    same inode in the cache: rattler links, it does not copy), so that rattler extracts them
    again from their checked archives. rattler's cache keeps them in NAME-VERSION-BUILD/."""
    for package in packages:
        shutil.rmtree(cache_dir / f"{package.name}-{package.version}-{package.build}", True)


def create_env(
    lock: Lock,
    target: LockedTarget,
    prefix: Path,
    *,
    cache_dir: Path | None = None,
    show_progress: bool = False,
    repair: bool = False,
    waiting: Callable[[str], None] | None = None,
) -> EnvOutcome:
    """Make ``prefix`` hold exactly the locked target; a complete prefix is left untouched.

    ``repair`` also checks every installed file and installs again the packages whose files
    are missing or changed, re-extracting them from their archives.
    """
    started = time.perf_counter()
    cache_dir = _usable_cache(cache_dir or package_cache())
    if prefix.exists() and not prefix.is_dir():
        raise OutputError(f"{prefix} exists and is not a folder")
    with exclusive.hold(prefix, f"another `envbuild env` on {prefix}", waiting, make=True) as made:
        existed = _check_prefix_is_usable(prefix)
        if existed and (prefix / OLD_MARKER).exists():
            _migrate_marker(prefix)
        report = verify_prefix(target, prefix, files=repair) if existed else None
        if report is not None and report.clean:
            write_runtime(prefix)  # made by an envbuild that did not copy it yet
            stamp = make_stamp(lock, target)
            if read_stamp(prefix) != stamp:  # same packages, another lock: say the new one
                write_atomic(prefix / STAMP, json.dumps(stamp, indent=2) + "\n")
            return EnvOutcome(
                prefix,
                str(target.target),
                "up-to-date",
                len(target.packages),
                time.perf_counter() - started,
            )
        try:
            fetched = _install(lock, target, prefix, cache_dir, report, show_progress)
        except BaseException:
            if made:  # nothing of ours may stay behind: not even an empty folder
                shutil.rmtree(prefix, ignore_errors=True)
            raise
    status: Literal["created", "updated", "repaired"] = (
        "created" if not existed else ("repaired" if repair else "updated")
    )
    return EnvOutcome(
        prefix,
        str(target.target),
        status,
        len(target.packages),
        time.perf_counter() - started,
        [str(p) for p in fetched],
    )


def _install(
    lock: Lock,
    target: LockedTarget,
    prefix: Path,
    cache_dir: Path,
    report: VerifyReport | None,
    show_progress: bool,
) -> list[LockedPackage]:
    try:
        (prefix / STAMP).unlink(missing_ok=True)  # incomplete from here until the end
        (prefix / STAMP).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{prefix}: cannot write here: {exc.strerror}") from None

    # Whatever rattler will (re)install must be checked first, as verify sees the prefix.
    reinstall = (report.damaged - set(report.missing)) if report else set()
    needed = report.damaged if report else {p.name for p in target.packages}
    to_fetch = [p for p in target.packages if p.name in needed]
    check_local_archives(to_fetch, cache_dir)
    if report is not None and report.files:
        damaged = {f.package for f in report.files}
        _drop_extractions([p for p in target.packages if p.name in damaged], cache_dir)

    from envbuild.lock import conda

    asyncio.run(
        conda.install(
            target.packages,
            prefix.absolute(),  # entry points' shebangs name it: never relative
            cache_dir=cache_dir,
            platform=target.platform,
            show_progress=show_progress,
            reinstall=reinstall,
        )
    )
    write_runtime(prefix)
    write_atomic(prefix / STAMP, json.dumps(make_stamp(lock, target), indent=2) + "\n")
    return to_fetch


def write_runtime(prefix: Path) -> None:
    """The GPU check and the Dask guard, for ``envbuild run`` (envbuild.env.runtime)."""
    from envbuild.env import runtime

    for name, content in runtime.files().items():
        path = prefix / runtime.PREFIX_FOLDER / name
        try:
            if path.read_bytes() == content:
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, content)


def default_prefix(lock_path: Path, role: str) -> Path:
    """Where a role's environment lives unless told otherwise: ``envs/ROLE`` beside the lock."""
    return lock_path.parent / "envs" / role


def exec_in(prefix: Path, platform: str, command: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with ``command`` run inside ``prefix``, activated as conda
    activates it; its exit code and signals are the command's own. Returns only on error."""
    from envbuild.lock import conda

    if not command:
        raise OutputError("name a command to run after --, e.g. -- python -c 'import dask'")
    from envbuild.env import runtime

    with contextlib.suppress(OutputError, OSError):  # a read-only prefix keeps what it has
        write_runtime(prefix)  # the guard and check of the envbuild that runs it
    script = conda.activation_script(prefix.absolute(), platform)
    argv = ["bash", "-c", f'{script}\nexec "$@"', "envbuild-run", *command]
    path = [str(prefix.absolute() / runtime.PREFIX_FOLDER), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), **env}
    try:
        os.execvpe("bash", argv, environment)  # noqa: S606 - replacing ourselves
    except OSError as exc:
        raise InstallError(f"cannot run bash to activate {prefix}: {exc.strerror}") from None


def _migrate_marker(prefix: Path) -> None:
    """Move an older envbuild's ``conda-meta/envbuild.json`` out of conda-meta."""
    old = prefix / OLD_MARKER
    try:
        (prefix / STAMP).parent.mkdir(parents=True, exist_ok=True)
        if not (prefix / STAMP).exists():
            old.replace(prefix / STAMP)
        else:
            old.unlink()
    except OSError as exc:
        raise OutputError(f"{old}: cannot move it out of conda-meta: {exc.strerror}") from None
