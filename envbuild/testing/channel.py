"""Write real conda package archives and their repodata into a ``file://`` channel.

Archives are byte-reproducible (sorted members, mtime 0, uid 0, fixed modes) so their sha256
and therefore every lock made against them are stable across runs and machines. Two formats:
``.tar.bz2`` with the standard library alone (the small fixture channels), and ``.conda``
(zstd, needs the ``zstandard`` package) for real payloads of hundreds of megabytes, where
bzip2 would take minutes.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: A fixed repodata timestamp (ms): our channels must not depend on the clock.
FIXED_TIMESTAMP_MS = 1_717_200_000_000
#: A fixed zip timestamp for .conda archives (the earliest zip allows).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZSTD_LEVEL = 3


@dataclass(frozen=True)
class File:
    """A payload file: its bytes and whether it is executable."""

    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class Symlink:
    """A payload symlink (relative target)."""

    target: str


Payload = str | bytes | File | Symlink


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
    #: Payload: path inside the prefix -> text, bytes, File or Symlink.
    files: Mapping[str, Payload] = field(default_factory=dict)
    #: Console scripts of a noarch python package ("dask = dask.cli:main"), which the
    #: installer writes into bin/.
    entry_points: tuple[str, ...] = ()
    timestamp: int = FIXED_TIMESTAMP_MS
    archive: Literal["tar.bz2", "conda"] = "tar.bz2"

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.{self.archive}"

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

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


def _payload(pkg: Package) -> dict[str, File | Symlink]:
    """Files of the package's payload, keyed by their path in the archive."""
    files: dict[str, File | Symlink] = {}
    for path, content in pkg.files.items():
        if isinstance(content, str):
            files[path] = File(content.encode())
        elif isinstance(content, bytes):
            files[path] = File(content)
        else:
            files[path] = content
    if not files:
        # Every package installs at least one file, so verify can see tampering.
        if pkg.noarch == "python":
            module = pkg.name.replace("-", "_")
            files[f"site-packages/{module}/__init__.py"] = File(
                f'__version__ = "{pkg.version}"\n'.encode()
            )
        else:
            files[f"share/envbuild-test/{pkg.name}.txt"] = File(
                f"{pkg.name} {pkg.version}\n".encode()
            )
    return files


def _paths_json(payload: Mapping[str, File | Symlink]) -> dict[str, object]:
    entries: list[dict[str, object]] = []
    for path, item in sorted(payload.items()):
        if isinstance(item, Symlink):
            entries.append({"_path": path, "path_type": "softlink", "size_in_bytes": 0})
        else:
            entries.append(
                {
                    "_path": path,
                    "path_type": "hardlink",
                    "sha256": hashlib.sha256(item.data).hexdigest(),
                    "size_in_bytes": len(item.data),
                }
            )
    return {"paths": entries, "paths_version": 1}


def _info(pkg: Package, payload: Mapping[str, File | Symlink]) -> dict[str, File]:
    info = {
        "info/index.json": json.dumps(pkg.index_json(), indent=2, sort_keys=True),
        "info/paths.json": json.dumps(_paths_json(payload), indent=2, sort_keys=True),
        "info/files": "".join(f"{p}\n" for p in sorted(payload)),
    }
    if pkg.noarch == "python":
        noarch: dict[str, object] = {"type": "python"}
        if pkg.entry_points:
            noarch["entry_points"] = list(pkg.entry_points)
        info["info/link.json"] = json.dumps(
            {"noarch": noarch, "package_metadata_version": 1}, sort_keys=True
        )
    return {path: File(text.encode()) for path, text in info.items()}


def _tar(members: Mapping[str, File | Symlink]) -> bytes:
    """An uncompressed tar of ``members``: sorted, mtime 0, root-owned, fixed modes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(members):
            item = members[path]
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if isinstance(item, Symlink):
                info.type = tarfile.SYMTYPE
                info.linkname = item.target
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.size = len(item.data)
                info.mode = 0o755 if item.executable else 0o644
                tar.addfile(info, io.BytesIO(item.data))
    return raw.getvalue()


def archive_bytes(pkg: Package) -> bytes:
    """The package's archive: info/ metadata plus its payload, as ``pkg.archive`` says."""
    payload = _payload(pkg)
    info = _info(pkg, payload)
    if pkg.archive == "tar.bz2":
        return bz2.compress(_tar({**info, **payload}), compresslevel=1)
    import zstandard  # only for .conda: a dev dependency

    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True)
    parts = {
        "metadata.json": json.dumps({"conda_pkg_format_version": 2}).encode(),
        f"info-{pkg.stem}.tar.zst": compressor.compress(_tar(info)),
        f"pkg-{pkg.stem}.tar.zst": compressor.compress(_tar(payload)),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in parts.items():
            entry = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data)
    return out.getvalue()


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
    repodata: dict[str, dict[str, dict[str, dict[str, object]]]] = {
        s: {"packages": {}, "packages.conda": {}} for s in subdirs
    }
    repodata.setdefault("noarch", {"packages": {}, "packages.conda": {}})
    for pkg in packages:
        target = root / pkg.subdir
        target.mkdir(parents=True, exist_ok=True)
        data = archive_bytes(pkg) if archives else None
        if data is not None:
            (target / pkg.file_name).write_bytes(data)
        section = "packages.conda" if pkg.archive == "conda" else "packages"
        entries = repodata.setdefault(pkg.subdir, {"packages": {}, "packages.conda": {}})[section]
        if pkg.file_name in entries:
            raise ValueError(f"duplicate package {pkg.subdir}/{pkg.file_name}")
        entries[pkg.file_name] = _repodata_entry(pkg, data)
    for subdir, sections in repodata.items():
        (root / subdir).mkdir(parents=True, exist_ok=True)
        document = {
            "info": {"subdir": subdir},
            "packages": dict(sorted(sections["packages"].items())),
            "packages.conda": dict(sorted(sections["packages.conda"].items())),
            "repodata_version": 1,
        }
        (root / subdir / "repodata.json").write_text(json.dumps(document, indent=1, sort_keys=True))
    return root.resolve().as_uri()
