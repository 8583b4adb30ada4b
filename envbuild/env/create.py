"""``envbuild env``: real conda environments made from the lock.

An environment is complete when its packages (conda-meta) match the lock's target AND its
stamp (``envbuild.env.stamp``) says so. ``env`` removes the stamp before it changes a prefix
and writes it (atomically) only after the install succeeded, so an interrupted install never
leaves a prefix that ``verify`` calls complete.

Every archive is checked (``envbuild.env.archives``: its sha256, and that what it installs
stays inside the prefix) before the prefix is touched: a refused package leaves a new prefix
absent and an existing one as it was, stamp included.

Two ``env`` runs on one prefix take turns (``envbuild.files.exclusive``), and so do two
installs from one package cache (``env`` and ``image``). A prefix that ``env`` created and
could not finish is removed again, and so are the cache entries the failed install began:
rattler runs in a child process (``envbuild.lock.conda.install``) that has ended, all its
threads with it, before anything is removed, so nothing can recreate what was removed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from envbuild.env.archives import check_archives, kept_installs, python_site, removed_on_failure
from envbuild.env.pypi import install_wheels
from envbuild.env.runtime import write_runtime
from envbuild.env.stamp import OLD_MARKER, STAMP, make_stamp, migrate_marker, read_stamp
from envbuild.env.verify import VerifyReport, verify_prefix
from envbuild.errors import OutputError
from envbuild.files import exclusive
from envbuild.files.atomic import write_atomic
from envbuild.files.cache import package_cache
from envbuild.lock.lockfile import Lock, LockedPackage, LockedTarget


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
            migrate_marker(prefix)
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
            what = "another envbuild using the package cache"
            with exclusive.hold(cache_dir, what, waiting):
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
    from envbuild.lock import conda

    # Whatever rattler will (re)install is checked first, as verify sees the prefix, and
    # before anything changes: a refusal leaves the prefix as it was.
    reinstall = (report.damaged - set(report.missing)) if report else set()
    needed = report.damaged if report else {p.name for p in target.packages}
    to_fetch = [p for p in target.packages if p.name in needed]
    kept = [p.name for p in target.packages if p.name not in needed]
    copies = check_archives(
        to_fetch,
        cache_dir,
        site=python_site(target.packages),
        kept=kept_installs(prefix, kept) if report is not None else None,
        download=conda.download,
    )
    try:
        try:
            (prefix / STAMP).unlink(missing_ok=True)  # incomplete from here until the end
            (prefix / STAMP).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{prefix}: cannot write here: {exc.strerror}") from None
        if report is not None and report.files:
            damaged = {f.package for f in report.files}
            _drop_extractions([p for p in target.packages if p.name in damaged], cache_dir)
        with removed_on_failure(to_fetch, cache_dir):
            conda.install(
                target.packages,
                prefix.absolute(),  # entry points' shebangs name it: never relative
                cache_dir=cache_dir,
                platform=target.platform,
                show_progress=show_progress,
                reinstall=reinstall,
                sources=copies,
            )
    finally:
        for copy in copies.values():
            copy.unlink(missing_ok=True)
    install_wheels(target, prefix, report.damaged if report else None)  # PyPI: after conda's
    write_runtime(prefix)
    write_atomic(prefix / STAMP, json.dumps(make_stamp(lock, target), indent=2) + "\n")
    return to_fetch


def default_prefix(lock_path: Path, role: str) -> Path:
    """Where a role's environment lives unless told otherwise: ``envs/ROLE`` beside the lock."""
    return lock_path.parent / "envs" / role


def role_environment(
    lock: Lock, lock_path: Path, role: str, platform: str | None, prefix: Path | None
) -> tuple[LockedTarget, Path]:
    """The role's locked target on ``platform`` (default: this machine's) and its prefix
    (default: ``envs/ROLE`` beside the lock)."""
    from envbuild.lock import conda

    target = lock.role_target(role, platform or conda.current_platform())
    return target, prefix or default_prefix(lock_path, role)
