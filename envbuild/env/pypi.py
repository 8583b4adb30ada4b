"""PyPI wheels in an environment: installed after the conda packages, checked by verify.

``install_wheels`` fetches each locked wheel into envbuild's cache (``pypi/wheels/SHA256/``;
``file://`` wheels are copied in) and checks its sha256 against the lock before anything is
installed: a tampered wheel is refused (InstallError, exit 11). uv then installs exactly these
files into the prefix: ``--no-deps --require-hashes --offline --no-index`` (no resolution, no
network; it checks the hashes again), unpacked once into uv's cache under envbuild's
(``pypi/uv``) and hard-linked from there, as rattler does with conda packages: the same trust,
and the same caveat (a file edited in one prefix is edited in the cache; ``verify --files``
finds it, and ``env --repair`` drops the wheel from uv's cache and installs it again), into
the prefix's own layout (``--prefix``:
``lib/pythonX.Y/site-packages``, scripts in ``bin/`` naming the prefix's python). A prefix
is conda's, not a virtual environment, and a copied standard library may say it is
externally managed: envbuild manages this one, so uv is told to go ahead.

What was installed is recorded in ``etc/envbuild/wheels.json`` (name, version, sha256,
dist-info folder): conda-meta's counterpart for wheels. ``check_wheels`` compares it and the
dist-info folders with the lock (missing, changed, extra) and, with ``files``, every file of
each wheel's RECORD with its hash. Problems are reported like conda packages', named
``NAME.pypi`` (a valid conda package name: ``env`` hands what verify found to rattler).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envbuild.errors import InstallError
from envbuild.files.atomic import write_atomic
from envbuild.lock.lockfile import LockedTarget
from envbuild.lock.wheels import LockedWheel, fingerprint, normalize

WHEELS_RECORD = Path("etc") / "envbuild" / "wheels.json"
SUFFIX = ".pypi"  # a conda package name (create.py hands damaged names to rattler)


def _site_packages(prefix: Path) -> Path:
    found = sorted((prefix / "lib").glob("python3*/site-packages"))
    if not found:
        raise InstallError(
            f"{prefix}: no lib/python3.*/site-packages: the lock's python is missing"
        )
    return found[-1]


def installed_wheels(prefix: Path) -> dict[str, dict[str, Any]]:
    """name -> what ``etc/envbuild/wheels.json`` says was installed."""
    try:
        found = json.loads((prefix / WHEELS_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def install_wheels(target: LockedTarget, prefix: Path, damaged: Collection[str] | None) -> None:
    """Install the target's wheels into ``prefix`` (after its conda packages). ``damaged``:
    what verify found wrong (None: a new prefix); a wheel recorded as installed and not named
    there stays."""
    if not target.wheels:
        (prefix / WHEELS_RECORD).unlink(missing_ok=True)
        return
    broken = {n.removesuffix(SUFFIX) for n in damaged or () if n.endswith(SUFFIX)}
    recorded = installed_wheels(prefix)
    needed = [
        w
        for w in target.wheels
        if damaged is None or w.name in broken or recorded.get(w.name, {}).get("sha256") != w.sha256
    ]
    if needed:
        _uv_install(needed, prefix, repair=sorted(broken))
    site = _site_packages(prefix)
    record = {w.name: _recorded(w, site, prefix) for w in target.wheels}
    write_atomic(prefix / WHEELS_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _uv_install(wheels: list[LockedWheel], prefix: Path, repair: list[str]) -> None:
    from envbuild.lock.pypi import uv_binary
    from envbuild.lock.pypifetch import fetch_wheel, pypi_cache

    files = {w.name: fetch_wheel(w) for w in wheels}  # sha256-checked against the lock
    cache = ["--cache-dir", str(pypi_cache() / "uv")]
    if repair:  # a file changed in a prefix is the same inode in uv's cache: unpack again
        subprocess.run(
            [uv_binary(), "cache", "clean", "--quiet", *cache, *repair],
            capture_output=True,
            check=False,
        )
    with tempfile.TemporaryDirectory(prefix="envbuild-wheels-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(
            "".join(f"{files[w.name]} --hash=sha256:{w.sha256}\n" for w in wheels)
        )
        command = [
            uv_binary(), "pip", "install", "--no-deps", "--require-hashes", "--offline",
            "--no-index", "--no-config", *cache, "--quiet", "--reinstall",
            "--python", str(prefix.absolute() / "bin" / "python"),
            "--prefix", str(prefix.absolute()), "--break-system-packages",
            "-r", str(requirements),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        text = done.stderr.strip()
        first = text.splitlines()[0] if text else f"uv exited {done.returncode}"
        raise InstallError(f"installing PyPI wheels into {prefix} failed: {first}", details=text)


def _dist_info(site: Path, name: str) -> Path | None:
    for folder in site.glob("*.dist-info"):
        if normalize(folder.name.removesuffix(".dist-info").rsplit("-", 1)[0]) == name:
            return folder
    return None


def _recorded(wheel: LockedWheel, site: Path, prefix: Path) -> dict[str, str]:
    folder = _dist_info(site, wheel.name)
    if folder is None:
        raise InstallError(f"{wheel.file_name}: installed, but no {wheel.name} dist-info in {site}")
    return {
        "version": wheel.version,
        "sha256": wheel.sha256,
        "dist-info": folder.relative_to(prefix).as_posix(),
    }


# --- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelProblems:
    """What verify found about a prefix's wheels, each named ``NAME.pypi``."""

    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    #: (name, locked, installed, what), as verify's Change
    changed: tuple[tuple[str, str, str, str], ...] = ()
    #: (path, name, problem), as verify's FileProblem
    files: tuple[tuple[str, str, str], ...] = ()
    #: the stamp names other wheels than the lock's
    stale: bool = False


def _record_hash(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _file_problems(prefix: Path, name: str, dist_info: Path) -> list[tuple[str, str, str]]:
    """Files of the wheel's RECORD that are gone or changed (never following a link)."""
    root = prefix.resolve()
    try:
        lines = (dist_info / "RECORD").read_text(encoding="utf-8").splitlines()
    except OSError:
        return [
            ((dist_info / "RECORD").relative_to(prefix).as_posix(), name + SUFFIX, "is missing")
        ]
    problems = []
    for line in lines:
        path_text, _, rest = line.partition(",")
        expected = rest.partition(",")[0]
        if not path_text or not expected:
            continue
        path = Path(dist_info.parent.resolve(), path_text)
        shown = (
            path.resolve().relative_to(root).as_posix()
            if path.resolve().is_relative_to(root)
            else path_text
        )
        if path.is_symlink() or not path.is_file():
            problems.append((shown, name + SUFFIX, "is missing"))
        elif _record_hash(path) != expected:
            problems.append((shown, name + SUFFIX, "was modified"))
    return problems


def check_wheels(
    target: LockedTarget, prefix: Path, *, files: bool, stamp: Mapping[str, Any] | None
) -> WheelProblems:
    """How the prefix's wheels compare with the target's (``files``: every file too), and
    whether ``stamp`` (None: unchecked) names the lock's wheels."""
    recorded = installed_wheels(prefix)
    wanted = {w.name: w for w in target.wheels}
    missing: list[str] = []
    changed: list[tuple[str, str, str, str]] = []
    problems: list[tuple[str, str, str]] = []
    for name, wheel in sorted(wanted.items()):
        entry = recorded.get(name)
        folder = prefix / str(entry.get("dist-info", "")) if entry else None
        if entry is None or folder is None or not (folder / "METADATA").is_file():
            missing.append(name + SUFFIX)
        elif entry.get("sha256") != wheel.sha256 or entry.get("version") != wheel.version:
            changed.append(
                (
                    name + SUFFIX,
                    f"{wheel.version} sha256:{wheel.sha256[:12]}",
                    f"{entry.get('version')} sha256:{str(entry.get('sha256'))[:12]}",
                    "sha256" if entry.get("version") == wheel.version else "version",
                )
            )
        elif files:
            problems += _file_problems(prefix, name, folder)
    expected = fingerprint(target.wheels) if target.wheels else None
    return WheelProblems(
        missing=tuple(missing),
        extra=tuple(n + SUFFIX for n in sorted(set(recorded) - set(wanted))),
        changed=tuple(changed),
        files=tuple(problems),
        stale=stamp is not None and stamp.get("pypi") != expected,
    )
