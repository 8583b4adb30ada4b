"""PyPI wheels as the lock records them, and their part of the lock document.

A lock with PyPI packages writes ``lock-version`` 2: an envbuild that does not know this
section would install environments without the wheels and call them complete, so it must
refuse the file ("written by a newer envbuild") rather than misread it. A lock without PyPI
packages is written exactly as before (version 1, no new keys), and both are read.

Pure: no I/O, no third-party import.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from envbuild.spec.channels import carries_credentials

#: The lock format of a lock that holds PyPI packages.
PYPI_LOCK_VERSION = 2


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class LockedWheel:
    """One wheel of a target: enough to fetch, check, install and export it."""

    name: str  # normalized
    version: str
    file_name: str  # its tags: NAME-VERSION(-BUILD)-PYTHON-ABI-PLATFORM.whl
    url: str
    sha256: str
    size: int | None = None
    requires_python: str | None = None
    #: Requires-Dist lines outside any extra (markers kept): what installing it needs
    requires_dist: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def tags(self) -> str:
        """``cp311-cp311-manylinux_2_17_x86_64`` (the file name's last three parts)."""
        return "-".join(self.file_name.removesuffix(".whl").split("-")[-3:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "fn": self.file_name,
            "url": self.url,
            "sha256": self.sha256,
            "size": self.size,
            "requires-python": self.requires_python,
            "requires-dist": list(self.requires_dist),
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> LockedWheel:
        return cls(
            name=entry["name"],
            version=entry["version"],
            file_name=entry["fn"],
            url=entry["url"],
            sha256=entry["sha256"],
            size=entry.get("size"),
            requires_python=entry.get("requires-python"),
            requires_dist=tuple(entry.get("requires-dist") or ()),
        )


def wheel_file_name(url: str) -> str:
    """The file name a wheel URL ends in."""
    return unquote(PurePosixPath(urlparse(url).path).name)


def fingerprint(wheels: Iterable[LockedWheel]) -> str:
    """Identifies a set of wheels (name, version, sha256), for the environment's stamp."""
    lines = sorted(f"{w.name} {w.version} {w.sha256}" for w in wheels)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def wheels_document(by_target: Mapping[str, Iterable[LockedWheel]]) -> list[dict[str, Any]]:
    """``pypi-packages``: every wheel once, with the targets that contain it, sorted."""
    membership: dict[LockedWheel, list[str]] = {}
    for target, wheels in by_target.items():
        for wheel in wheels:
            membership.setdefault(wheel, []).append(target)
    return [
        {**wheel.to_dict(), "targets": sorted(targets)}
        for wheel, targets in sorted(
            membership.items(), key=lambda i: (i[0].name, i[0].version, i[0].file_name)
        )
    ]


_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "version": ((str,), True),
    "fn": ((str,), True),
    "url": ((str,), True),
    "sha256": ((str,), True),
    "size": ((int, type(None)), False),
    "requires-python": ((str, type(None)), False),
}


def check_wheels_document(entries: object) -> None:
    """ValueError naming the field of ``pypi-packages`` that has the wrong type or form."""
    if not isinstance(entries, list):
        raise ValueError("pypi-packages must be a list")
    for index, entry in enumerate(entries):
        where = f"pypi-packages[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping")
        for key, (types, required) in _FIELDS.items():
            value = entry.get(key)
            if (required or key in entry) and (
                isinstance(value, bool) or not isinstance(value, types)
            ):
                raise ValueError(f"{where}.{key} has the wrong type")
        for key in ("requires-dist", "targets"):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}.{key} must be a list of strings")
        if not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise ValueError(f"{where}.sha256 is not a sha256 digest")
        if not entry["fn"].endswith(".whl") or "/" in entry["fn"]:
            raise ValueError(f"{where}.fn is not a wheel's file name")
        if carries_credentials(entry["url"]):
            raise ValueError(f"{where}.url carries credentials; remove them")


def read_wheels_document(entries: list[dict[str, Any]]) -> dict[str, list[LockedWheel]]:
    """target text -> its wheels, from a checked ``pypi-packages``."""
    by_target: dict[str, list[LockedWheel]] = {}
    for entry in entries:
        wheel = LockedWheel.from_dict(entry)
        for target in entry["targets"]:
            by_target.setdefault(target, []).append(wheel)
    return by_target
