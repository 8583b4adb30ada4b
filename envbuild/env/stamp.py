"""The stamp an environment carries: ``etc/envbuild/stamp.json``, which lock, variant,
platform and roles the prefix was made for (``envbuild show --prefix``, the Dask guard).

It lives outside ``conda-meta/``, where rattler, pixi, conda and micromamba parse every
``*.json`` as a package record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from envbuild.errors import OutputError
from envbuild.lock.lockfile import Lock, LockedPackage, LockedTarget, content_digest
from envbuild.lock.wheels import fingerprint as wheel_fingerprint

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
        **({"pypi": wheel_fingerprint(target.wheels)} if target.wheels else {}),
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


def migrate_marker(prefix: Path) -> None:
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
