"""Write real conda package archives and their repodata into a ``file://`` channel.

Standard library only. Archives are byte-reproducible (sorted members, mtime 0, uid 0) so
their sha256 and therefore every lock made against them are stable across runs and machines.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: A fixed repodata timestamp (ms): our channels must not depend on the clock.
FIXED_TIMESTAMP_MS = 1_717_200_000_000


@dataclass(frozen=True, kw_only=True)
class Package:
    """One conda package build to put into a channel."""

    name: str
    version: str
    build: str = "0"
    build_number: int = 0
    subdir: str = "noarch"
    depends: tuple[str, ...] = ()
    constrains: tuple[str, ...] = ()
    noarch: str | None = None  # "python" or "generic" for noarch packages
    license: str = "BSD-3-Clause"
    #: Extra payload files: path inside the prefix -> content.
    files: Mapping[str, str] = field(default_factory=dict)
    timestamp: int = FIXED_TIMESTAMP_MS

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"

    def index_json(self) -> dict[str, object]:
        index: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": self.build_number,
            "subdir": self.subdir,
            "depends": list(self.depends),
            "constrains": list(self.constrains),
            "license": self.license,
            "timestamp": self.timestamp,
        }
        if self.noarch:
            index["noarch"] = self.noarch
        if self.subdir != "noarch":
            os_name, _, arch = self.subdir.partition("-")
            index["platform"] = {"osx": "osx", "win": "win"}.get(os_name, os_name)
            index["arch"] = {"64": "x86_64", "arm64": "arm64", "aarch64": "aarch64"}.get(arch, arch)
        return index


def _payload(pkg: Package) -> dict[str, bytes]:
    """Files of the package's payload, keyed by their path in the archive."""
    files = {path: text.encode() for path, text in pkg.files.items()}
    if not files:
        # Every package installs at least one file, so verify can see tampering.
        if pkg.noarch == "python":
            module = pkg.name.replace("-", "_")
            files[f"site-packages/{module}/__init__.py"] = (
                f'__version__ = "{pkg.version}"\n'.encode()
            )
        else:
            files[f"share/envbuild-test/{pkg.name}.txt"] = f"{pkg.name} {pkg.version}\n".encode()
    return files


def _tar_member(tar: tarfile.TarFile, path: str, data: bytes) -> None:
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def archive_bytes(pkg: Package) -> bytes:
    """A ``.tar.bz2`` conda package for ``pkg``: info/ metadata plus its payload."""
    payload = _payload(pkg)
    paths_json = {
        "paths": [
            {
                "_path": path,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_in_bytes": len(data),
            }
            for path, data in sorted(payload.items())
        ],
        "paths_version": 1,
    }
    members: dict[str, bytes] = {
        "info/index.json": json.dumps(pkg.index_json(), indent=2, sort_keys=True).encode(),
        "info/paths.json": json.dumps(paths_json, indent=2, sort_keys=True).encode(),
        "info/files": "".join(f"{p}\n" for p in sorted(payload)).encode(),
    }
    if pkg.noarch == "python":
        members["info/link.json"] = json.dumps(
            {"noarch": {"type": "python"}, "package_metadata_version": 1}
        ).encode()
    members.update(payload)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(members):
            _tar_member(tar, path, members[path])
    return bz2.compress(raw.getvalue(), compresslevel=1)


def _repodata_entry(pkg: Package, data: bytes | None) -> dict[str, object]:
    entry = pkg.index_json()
    if data is None:
        # Metadata-only channel (benchmarks): hashes derived from the name, never installed.
        digest = hashlib.sha256(pkg.file_name.encode()).digest()
        entry.update(md5=digest[:16].hex(), sha256=digest.hex(), size=1)
    else:
        entry.update(
            md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
    return entry


def write_channel(
    root: Path,
    packages: Iterable[Package],
    *,
    subdirs: Iterable[str] = (),
    archives: bool = True,
) -> str:
    """Write ``packages`` (archives unless ``archives=False``) and repodata under ``root``.

    Returns the channel's ``file://`` URL. Every subdir in ``subdirs`` gets a repodata.json
    even when it holds no package (solvers need one for every platform they are asked for).
    """
    repodata: dict[str, dict[str, dict[str, object]]] = {s: {} for s in subdirs}
    repodata.setdefault("noarch", {})
    for pkg in packages:
        target = root / pkg.subdir
        target.mkdir(parents=True, exist_ok=True)
        data = archive_bytes(pkg) if archives else None
        if data is not None:
            (target / pkg.file_name).write_bytes(data)
        entries = repodata.setdefault(pkg.subdir, {})
        if pkg.file_name in entries:
            raise ValueError(f"duplicate package {pkg.subdir}/{pkg.file_name}")
        entries[pkg.file_name] = _repodata_entry(pkg, data)
    for subdir, entries in repodata.items():
        (root / subdir).mkdir(parents=True, exist_ok=True)
        document = {
            "info": {"subdir": subdir},
            "packages": dict(sorted(entries.items())),
            "packages.conda": {},
            "repodata_version": 1,
        }
        (root / subdir / "repodata.json").write_text(json.dumps(document, indent=1, sort_keys=True))
    return root.resolve().as_uri()
