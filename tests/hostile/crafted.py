"""Crafted conda packages: archives whose metadata and members say exactly what a test wants.

``envbuild.testing.channel`` writes well-formed packages; this module writes the hostile ones.
Nothing is normalized or checked: a ``_path`` of ``../../x``, a tar member named ``/etc/x``, a
symlink, a hard link, a device node, a setuid bit or a gigabyte of zeros goes into the archive
as given. The channel's repodata carries each archive's true sha256, md5 and size, so envbuild
accepts the archive as the lock's and only its content is hostile.

Archives are streamed, so a bomb of a gigabyte of zeros never sits in memory: ``.tar.bz2``
(bz2 compresses 1 GiB of zeros to under 1 kB, in ~5 s) or ``.conda`` (zstd: 32 kB, < 1 s).
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from envbuild.testing.channel import FIXED_TIMESTAMP_MS, Package, write_channel

Kind = Literal["file", "symlink", "hardlink", "dir", "chardev", "blockdev", "fifo", "sparse"]
_TAR_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "dir": tarfile.DIRTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass(frozen=True)
class Member:
    """One tar member, written exactly as given.

    ``zeros``: the member is that many zero bytes (streamed), instead of ``data``. A
    ``sparse`` member is an old-GNU sparse file of apparent size ``zeros`` whose one stored
    byte is its last: a few hundred bytes in the archive, ``zeros`` bytes once extracted
    (or read)."""

    name: str
    data: bytes = b""
    kind: Kind = "file"
    linkname: str = ""
    mode: int = 0o644
    zeros: int = 0
    devmajor: int = 0
    devminor: int = 0

    @property
    def size(self) -> int:
        return self.zeros or len(self.data)


def file(name: str, data: bytes | str = b"", *, mode: int = 0o644) -> Member:
    return Member(name, data.encode() if isinstance(data, str) else data, mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, kind="symlink", linkname=target, mode=0o777)


def entry(path: str, data: bytes | str = b"", **extra: Any) -> dict[str, Any]:
    """A paths.json entry for ``path`` holding ``data`` (a hard-linked file unless ``extra``
    says otherwise: path_type, prefix_placeholder, file_mode, no_link, ...)."""
    raw = data.encode() if isinstance(data, str) else data
    found: dict[str, Any] = {
        "_path": path,
        "path_type": "hardlink",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "size_in_bytes": len(raw),
    }
    found.update(extra)
    return found


def entries_of(members: Iterable[Member]) -> list[dict[str, Any]]:
    """paths.json entries that describe ``members`` as they are (files, symlinks, folders)."""
    found = []
    for member in members:
        if member.kind == "symlink":
            found.append({"_path": member.name, "path_type": "softlink", "size_in_bytes": 0})
        elif member.kind == "dir":
            found.append({"_path": member.name, "path_type": "directory"})
        elif member.kind == "file" and not member.zeros:
            found.append(entry(member.name, member.data))
        elif member.kind == "sparse":
            found.append(
                {"_path": member.name, "path_type": "hardlink", "size_in_bytes": member.zeros}
            )
        elif member.kind == "file":
            found.append(
                {
                    "_path": member.name,
                    "path_type": "hardlink",
                    "sha256": _zeros_sha256(member.zeros),
                    "size_in_bytes": member.zeros,
                }
            )
        else:
            found.append({"_path": member.name, "path_type": "hardlink", "size_in_bytes": 0})
    return found


def _zeros_sha256(size: int) -> str:
    digest = hashlib.sha256()
    block = bytes(1 << 20)
    left = size
    while left:
        step = min(left, len(block))
        digest.update(block[:step])
        left -= step
    return digest.hexdigest()


#: Leave info/paths.json (or info/files) to be derived from the payload.
AUTO: Any = object()


@dataclass(frozen=True, kw_only=True)
class Crafted:
    """A package whose archive holds exactly ``payload`` and the metadata given.

    ``paths``: the paths.json entries (AUTO: describe the payload; None: no paths.json, as in
    archives older than conda 4.3, which rattler reads from ``info/files``). ``files``: the
    lines of info/files (AUTO: the paths' ``_path``s). ``link``: info/link.json.
    ``has_prefix``: info/has_prefix text. ``info``: further members, written after the
    metadata (a second info/paths.json, say)."""

    name: str
    version: str = "1.0"
    build: str = "0"
    subdir: str = "noarch"
    noarch: str | None = None
    depends: tuple[str, ...] = ()
    payload: tuple[Member, ...] = ()
    paths: list[dict[str, Any]] | None = AUTO
    files: list[str] | None = AUTO
    link: dict[str, Any] | None = None
    has_prefix: str | None = None
    info: tuple[Member, ...] = ()
    archive: Literal["tar.bz2", "conda"] = "tar.bz2"
    paths_version: int = 1

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    @property
    def file_name(self) -> str:
        return f"{self.stem}.{self.archive}"

    def index_json(self) -> dict[str, Any]:
        index = Package(
            name=self.name,
            version=self.version,
            build=self.build,
            subdir=self.subdir,
            depends=self.depends,
            noarch=self.noarch,
        ).index_json()
        return index

    def metadata(self) -> list[Member]:
        paths = entries_of(self.payload) if self.paths is AUTO else self.paths
        if self.files is AUTO:
            files = [str(e["_path"]) for e in paths or entries_of(self.payload)]
        else:
            files = self.files
        info = [file("info/index.json", json.dumps(self.index_json(), indent=2, sort_keys=True))]
        if paths is not None:
            document = {"paths": paths, "paths_version": self.paths_version}
            info.append(file("info/paths.json", json.dumps(document, indent=2)))
        if files is not None:
            info.append(file("info/files", "".join(f"{p}\n" for p in files)))
        if self.link is not None:
            info.append(file("info/link.json", json.dumps(self.link)))
        if self.has_prefix is not None:
            info.append(file("info/has_prefix", self.has_prefix))
        return [*info, *self.info]


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        step = min(self.left, len(buffer))
        buffer[:step] = bytes(step)
        self.left -= step
        return step


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def gnu_sparse_header(name: str, size: int) -> bytes:
    """An old-GNU sparse member (type ``S``) of apparent size ``size`` (< 8 GiB): one data
    block holding the file's last byte, a hole before it; the block follows the header."""
    header = bytearray(512)

    def put(offset: int, value: bytes) -> None:
        header[offset : offset + len(value)] = value

    put(0, name.encode()[:100])
    put(100, _octal(0o644, 8))
    put(108, _octal(0, 8))
    put(116, _octal(0, 8))
    put(124, _octal(1, 12))  # bytes stored in the archive
    put(136, _octal(0, 12))
    put(156, b"S")
    put(257, b"ustar  \0")
    put(386, _octal(size - 1, 12))  # sparse map: the one byte at the end
    put(398, _octal(1, 12))
    put(482, b"\0")  # no extension headers
    put(483, _octal(size, 12))  # the file's real size
    put(148, b" " * 8)
    put(148, f"{sum(header):06o}".encode() + b"\0 ")
    return bytes(header) + b"Z" + bytes(511)


def _write_tar(out: IO[bytes], members: Iterable[Member]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if member.kind == "sparse":
                raw = gnu_sparse_header(member.name, member.zeros)
                tar.fileobj.write(raw)  # type: ignore[union-attr]
                tar.offset += len(raw)
                continue
            info = tarfile.TarInfo(member.name)
            info.type = _TAR_TYPES[member.kind]
            info.mode = member.mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.linkname = member.linkname
            info.devmajor, info.devminor = member.devmajor, member.devminor
            if member.kind == "file":
                info.size = member.size
                source = _Zeros(member.zeros) if member.zeros else io.BytesIO(member.data)
                tar.addfile(info, source)
            else:
                tar.addfile(info)


class _Sink(io.RawIOBase):
    """A write-only stream that compresses into ``out`` and hashes what it wrote."""

    def __init__(self, out: IO[bytes], compress: Any, flush: Any) -> None:
        self.out, self._compress, self._flush = out, compress, flush

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.out.write(self._compress(bytes(data)))
        return len(data)

    def finish(self) -> None:
        self.out.write(self._flush())


def _compressed_tar(out: IO[bytes], members: Iterable[Member], codec: str) -> None:
    if codec == "bz2":
        compressor: Any = bz2.BZ2Compressor(9)
    else:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=19).compressobj()
    sink = _Sink(out, compressor.compress, compressor.flush)
    _write_tar(sink, members)  # type: ignore[arg-type]
    sink.finish()


def write_archive(pkg: Crafted, path: Path) -> None:
    """Write ``pkg``'s archive to ``path``: metadata first, then the payload, as given."""
    info = pkg.metadata()
    with path.open("wb") as out:
        if pkg.archive == "tar.bz2":
            _compressed_tar(out, [*info, *pkg.payload], "bz2")
            return
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
            entry_ = zipfile.ZipInfo("metadata.json", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry_, json.dumps({"conda_pkg_format_version": 2}))
            for name, members in (
                (f"info-{pkg.stem}.tar.zst", info),
                (f"pkg-{pkg.stem}.tar.zst", list(pkg.payload)),
            ):
                part = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(part, "w", force_zip64=True) as handle:
                    _compressed_tar(handle, members, "zstd")


def digests(path: Path) -> tuple[str, str, int]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest(), path.stat().st_size


def write_crafted_channel(
    root: Path, packages: Iterable[Package], crafted: Iterable[Crafted], subdirs: Iterable[str]
) -> str:
    """A channel of well-formed ``packages`` (envbuild.testing.channel) and ``crafted`` ones,
    each in repodata with its archive's true sha256, md5 and size. Returns its URL."""
    url = write_channel(root, packages, subdirs=subdirs)
    for pkg in crafted:
        folder = root / pkg.subdir
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder / pkg.file_name
        write_archive(pkg, archive)
        sha256, md5, size = digests(archive)
        repodata_path = folder / "repodata.json"
        if repodata_path.is_file():
            repodata = json.loads(repodata_path.read_text())
        else:
            repodata = {"info": {"subdir": pkg.subdir}, "packages": {}, "packages.conda": {}}
        section = "packages.conda" if pkg.archive == "conda" else "packages"
        record = {**pkg.index_json(), "md5": md5, "sha256": sha256, "size": size}
        record["timestamp"] = FIXED_TIMESTAMP_MS
        repodata[section][pkg.file_name] = record
        repodata_path.write_text(json.dumps(repodata, indent=1, sort_keys=True))
    return url


def walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` (not ``root`` itself), never following a symlink."""
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in [*dirs, *names]:
            yield Path(folder) / name


def snapshot(root: Path, *, skip: Iterable[Path] = ()) -> dict[str, tuple[object, ...]]:
    """What is under ``root``: relative path -> (kind, mode, size, sha256 or link target),
    leaving out the trees in ``skip``. Symlinks are recorded, never followed."""
    skipped = [Path(p) for p in skip]
    found: dict[str, tuple[object, ...]] = {}
    for path in walk(root):
        if any(path == s or s in path.parents for s in skipped):
            continue
        status = path.lstat()
        mode = status.st_mode
        if stat.S_ISREG(mode):
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            detail: tuple[object, ...] = ("file", stat.S_IMODE(mode), status.st_size, digest)
        elif stat.S_ISLNK(mode):
            detail = ("symlink", str(path.readlink()))
        elif stat.S_ISDIR(mode):
            detail = ("dir", stat.S_IMODE(mode))
        else:
            detail = ("special", stat.S_IFMT(mode), status.st_rdev)
        found[str(path.relative_to(root))] = detail
    return found


def diff(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Paths created, deleted or changed between two snapshots, one line each."""
    lines = [f"created {p}" for p in sorted(set(after) - set(before))]
    lines += [f"deleted {p}" for p in sorted(set(before) - set(after))]
    lines += [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return lines


__all__ = [
    "AUTO",
    "Crafted",
    "Member",
    "diff",
    "digests",
    "entries_of",
    "entry",
    "file",
    "gnu_sparse_header",
    "snapshot",
    "symlink",
    "walk",
    "write_archive",
    "write_crafted_channel",
]
