"""``envbuild verify``: does a prefix hold exactly the lock's target? Its conda-meta records,
its stamp and, with ``files``, every installed file."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from envbuild.env.pypi import check_wheels
from envbuild.env.stamp import OLD_MARKER, STAMP, fingerprint, read_stamp
from envbuild.errors import PrefixMismatchError
from envbuild.files.digest import sha256_hex
from envbuild.lock.lockfile import LockedPackage, LockedTarget


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
        with os.fdopen(fd, "rb") as handle:
            fd = -1  # the handle closes it
            return sha256_hex(handle)
    finally:
        if fd >= 0:
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


def _file_problems(
    prefix: Path,
    records: Iterable[Mapping[str, Any]],
    progress: Callable[[int, int], None] | None = None,
) -> list[FileProblem]:
    """Files a package installed that are gone, replaced by something else, or changed.
    Non-regular files (FIFOs, devices, folders, links where files belong) are reported, never
    read. ``progress`` hears (packages done, packages) after each package."""
    problems = []
    listed = list(records)
    for done, record in enumerate(listed, 1):
        if progress is not None:
            progress(done, len(listed))
        paths = (record.get("paths_data") or {}).get("paths", [])
        for entry in paths if isinstance(paths, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("_path"), str):
                continue
            problem = _file_problem(prefix, entry)
            if problem:
                problems.append(FileProblem(entry["_path"], str(record.get("name")), problem))
    return problems


def verify_prefix(
    target: LockedTarget,
    prefix: Path,
    *,
    files: bool = False,
    stamp: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Compare ``prefix`` with a locked target (``files``: also check every installed file,
    telling ``progress`` how many packages are done)."""
    if not (prefix / "conda-meta").is_dir():
        raise PrefixMismatchError(f"{prefix} is not a conda environment (no conda-meta/)")
    installed = installed_records(prefix)
    missing, extra, changed = compare(target.packages, installed)
    stamp_state: Literal["ok", "missing", "stale", "unchecked"] = "unchecked"
    found = None
    if stamp:
        found = read_stamp(prefix)
        if found is None:
            stamp_state = "missing"
        else:
            ok = found.get("packages") == fingerprint(target.packages)
            stamp_state = "ok" if ok else "stale"
    file_problems = _file_problems(prefix, installed.values(), progress) if files else []
    wheels = check_wheels(target, prefix, files=files, stamp=found if stamp else None)
    return VerifyReport(
        prefix=prefix,
        target=str(target.target),
        missing=missing + wheels.missing,
        extra=extra + wheels.extra,
        changed=changed + tuple(Change(*c) for c in wheels.changed),
        stamp="stale" if stamp_state == "ok" and wheels.stale else stamp_state,
        files=(*file_problems, *(FileProblem(*f) for f in wheels.files)),
    )


def require_environment(prefix: Path, role: str) -> None:
    """PrefixMismatchError when there is no environment at ``prefix`` at all."""
    if not prefix.exists():
        raise PrefixMismatchError(
            f"{prefix}: no environment there; create it with: "
            f"envbuild env --role {role} --prefix {prefix}"
        )


def mismatch_error(
    report: VerifyReport,
    role: str,
    prefix: Path,
    platform: str | None,
    spec_path: Path | None,
    lock_path: Path | None,
) -> PrefixMismatchError:
    """What verify found, with the one command that repairs it."""
    import shlex

    fix = ["envbuild", "env", "--role", role, "--prefix", str(prefix)]
    for flag, value in (("--platform", platform), ("-f", spec_path), ("--lockfile", lock_path)):
        if value:
            fix += [flag, str(value)]
    if report.files:
        fix.append("--repair")
    problems = report.problems()
    return PrefixMismatchError(
        f"{prefix} differs from the lock's {report.target}: {len(problems)} problem"
        f"{'s' if len(problems) != 1 else ''}; repair it with: {shlex.join(fix)}",
        details="\n".join(problems),
    )
