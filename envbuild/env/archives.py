"""Package archives are checked against the lock, and judged safe, before anything is
installed or staged from them.

Two checks, both before rattler sees an archive:

1. **Its bytes are the lock's.** rattler verifies what it downloads over HTTP but not local
   archives, and it files an extraction in its cache under the lock's sha256 unchecked: one
   bad archive would stay in the cache for good. A ``file://`` archive is hashed against the
   lock; a mismatch stops the install, naming the package (exit 11). Archives verified before
   and unchanged since (same size, mtime, ctime, inode and device, as git's index judges
   files) are not hashed again.
2. **What it would write is safe** (``envbuild.env.safety``, exit 18): the archive is read
   once, streamed (``.tar.bz2``, or the zip of zstd tars of ``.conda``), its members and its
   ``info/`` files judged; then the packages of the prefix are judged together.
   Remote archives are downloaded first (``envbuild.lock.conda.download``) and installed
   from the checked copy.

**Extraction limit.** While streaming, a package whose members add up to more than
``ENVBUILD_MAX_PACKAGE_BYTES`` (default 16 GiB: CUDA's largest packages, libcublas or
libcudnn, expand to 1-3 GB) is refused, and so is one that expands more than 1000 times its
archive beyond 256 MiB (real packages compress 3-20 times; a bomb of zeros 30,000 times).
Sizes are read from the tar headers (a sparse member counts at its full size), so a bomb is
refused before its bytes are decompressed, and nothing reaches the package cache.

**Cost.** Each archive is decompressed once more than rattler does it, on the first install
only: the verdict is kept per sha256 in the index below, so a later install, another prefix
or an image from the same archives reads nothing. On the runnable channel's worker (35
.conda archives, 437 MB unpacked), cold cache, 9 paired rounds in one process on the 2-core
development machine: the check 0.93 s of CPU (median; 0.87-1.21 s wall), rattler's cold
install 11.9 s of CPU: 0.08x (0.06-0.20x). Whole cold ``env`` commands, before and after,
8 paired rounds twice: medians 1.25x and 1.66x, spread over 0.2-4.7x by the machine's load.
A complete environment (``env`` with nothing to do) never gets here.

The index (``.envbuild-verified-archives.json`` in the package cache) holds both: archives by
path with their stat and sha256, and verdicts by sha256 with what the prefix-wide check
needs. A damaged index is only a lost speed-up.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, Any

from envbuild.env.safety import (
    INFO_FILES,
    Contents,
    Installs,
    Member,
    Unsafe,
    check_package,
    check_together,
)
from envbuild.errors import InstallError, OutputError, UnsafePackageError, UsageError
from envbuild.files.atomic import write_atomic
from envbuild.files.digest import sha256_hex
from envbuild.lock.lockfile import LockedPackage

_INDEX_NAME = ".envbuild-verified-archives.json"
_INDEX_VERSION = 2
LIMIT_VAR = "ENVBUILD_MAX_PACKAGE_BYTES"
DEFAULT_LIMIT = 16 << 30
RATIO, RATIO_FLOOR = 1000, 256 << 20
_INFO_CAP = 64 << 20  # an info file larger than this is not a real package's
_CHUNK = 1 << 20


def max_package_bytes() -> int:
    """The extraction limit: ``ENVBUILD_MAX_PACKAGE_BYTES`` or 16 GiB."""
    text = os.environ.get(LIMIT_VAR, "").strip()
    if not text:
        return DEFAULT_LIMIT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{LIMIT_VAR}={text!r}: give a number of bytes, e.g. {DEFAULT_LIMIT}")
    return value


# --- reading an archive ------------------------------------------------------------------


class _Budget:
    """What an archive expands to, refused beyond the limit."""

    def __init__(self, archive_size: int, limit: int) -> None:
        self.archive_size, self.limit = archive_size, limit
        self.declared = self.streamed = 0

    def check(self, where: str) -> None:
        size = max(self.declared, self.streamed)
        if size > self.limit:
            raise Unsafe(where, f"makes the package expand beyond {self.limit} bytes ({LIMIT_VAR})")
        if size > RATIO_FLOOR and size > RATIO * self.archive_size:
            raise Unsafe(
                where,
                f"makes the package expand beyond {RATIO} times its archive "
                f"({self.archive_size} bytes), a decompression bomb",
            )


class _Forward(io.RawIOBase):
    """A decompressed stream as tarfile's random-access reader wants it, forward only:
    seeking ahead reads and drops the bytes between. Every byte counts against the budget
    (a flood of tar headers weighs too). tarfile's own stream mode copies its whole buffer
    for every 512-byte header; this does not."""

    def __init__(self, raw: IO[bytes], budget: _Budget) -> None:
        self.raw, self.budget, self.position = raw, budget, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        data = self.raw.read(_CHUNK if size is None or size < 0 else size)
        self.position += len(data)
        self.budget.streamed = max(self.budget.streamed, self.position)
        self.budget.check("the archive")
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self.position + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self.position:
            raise OSError("a streamed archive cannot be read backwards")
        while self.position < target:
            if not self.read(min(_CHUNK, target - self.position)):
                break  # tarfile finds the end itself
        return self.position


def _kind(info: tarfile.TarInfo) -> Any:
    if info.isreg():
        return "file"
    for kind, test in (("dir", info.isdir), ("symlink", info.issym), ("hardlink", info.islnk)):
        if test():
            return kind
    return "special"


def _read_tar(
    stream: IO[bytes], section: int, budget: _Budget, members: list[Member], info: dict[str, bytes]
) -> None:
    with tarfile.open(fileobj=_Forward(stream, budget), mode="r:") as tar:
        for entry in tar:
            member = Member(
                entry.name, _kind(entry), entry.mode, entry.size, entry.linkname, section
            )
            members.append(member)
            budget.declared += entry.size + tarfile.BLOCKSIZE
            budget.check(entry.name)
            if entry.name in INFO_FILES and member.kind == "file":
                if entry.size > _INFO_CAP:
                    raise Unsafe(entry.name, f"is larger than {_INFO_CAP} bytes")
                handle = tar.extractfile(entry)
                info[entry.name] = handle.read() if handle else b""


def _zip_sections(archive: zipfile.ZipFile, raw: IO[bytes], end: int) -> list[zipfile.ZipInfo]:
    """The zstd tars of a .conda archive (rattler extracts every ``*.tar.zst`` it holds);
    the zip must be its entries and nothing else, so that a reader that streams the local
    headers (as rattler does) and one that reads the central directory see the same."""
    entries = sorted(archive.infolist(), key=lambda e: e.header_offset)
    position = 0
    for entry in entries:
        raw.seek(entry.header_offset)
        header = raw.read(30)
        if entry.header_offset != position or header[:4] != b"PK\x03\x04":
            raise Unsafe(entry.filename, "is not where the zip's previous entry ends")
        names = int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        position = entry.header_offset + 30 + names + entry.compress_size
        if entry.flag_bits & 0x08:  # a data descriptor follows: 12 to 24 bytes
            following = [e.header_offset for e in entries if e.header_offset > position]
            gap = (following[0] if following else end) - position
            position += gap if gap in (12, 16, 20, 24) else 0
    if position != end:
        raise Unsafe("the archive", "has bytes the zip's directory does not list")
    return [e for e in entries if e.filename.endswith(".tar.zst")]


def read_contents(path: Path, file_name: str, noarch_python: bool, limit: int) -> Contents:
    """Stream ``path`` (a ``.conda`` or ``.tar.bz2`` archive): its members and info files.
    Raises Unsafe for an archive that cannot be read, or expands beyond ``limit``."""
    budget = _Budget(path.stat().st_size, limit)
    members: list[Member] = []
    info: dict[str, bytes] = {}
    try:
        if file_name.endswith(".tar.bz2"):
            with bz2.open(path, "rb") as stream:
                _read_tar(stream, 0, budget, members, info)
        elif file_name.endswith(".conda"):
            import zstandard

            with path.open("rb") as raw, zipfile.ZipFile(raw) as archive:
                sections = _zip_sections(archive, raw, archive.start_dir)
                for number, entry in enumerate(sections):
                    with archive.open(entry) as part:
                        reader = zstandard.ZstdDecompressor().stream_reader(
                            part, read_across_frames=True
                        )
                        _read_tar(reader, number, budget, members, info)
        else:
            raise Unsafe(file_name, "is neither a .conda nor a .tar.bz2 archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file cannot be read: not the archive's fault
        raise Unsafe(file_name, f"cannot be read as a conda archive: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError, without importing zstandard up front
        if type(exc).__name__ != "ZstdError":
            raise
        raise Unsafe(file_name, f"cannot be read as a conda archive: {exc}") from None
    return Contents(members, info, noarch_python)


# --- the index -----------------------------------------------------------------------------


def _stat_key(path: Path) -> list[int]:
    stat_ = path.stat()
    return [stat_.st_size, stat_.st_mtime_ns, stat_.st_ctime_ns, stat_.st_ino, stat_.st_dev]


def _read_index(index_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(archives by path, verdicts by sha256); empty for a missing, damaged or older index."""
    try:
        document = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}, {}
    if not isinstance(document, dict) or document.get("version") != _INDEX_VERSION:
        return {}, {}
    archives, verdicts = document.get("archives"), document.get("safe")
    return (
        archives if isinstance(archives, dict) else {},
        verdicts if isinstance(verdicts, dict) else {},
    )


def _write_index(
    index_path: Path, archives: Mapping[str, Any], verdicts: Mapping[str, Any]
) -> None:
    document = {"version": _INDEX_VERSION, "archives": archives, "safe": verdicts}
    with contextlib.suppress(OutputError, OSError):  # a speed-up only: checked again next time
        write_atomic(index_path, json.dumps(document, sort_keys=True))


# --- checking ------------------------------------------------------------------------------


def python_site(packages: Sequence[LockedPackage]) -> str:
    """Where the target's python keeps site-packages (noarch python packages land there)."""
    python = next((p for p in packages if p.name == "python"), None)
    version = ".".join(python.version.split(".")[:2]) if python else "3"
    return f"lib/python{version}/site-packages"


def kept_installs(prefix: Path, names: Sequence[str]) -> dict[str, Installs]:
    """What the packages ``names`` that an existing prefix keeps have installed there (their
    conda-meta records, their symlinks as they are), for the prefix-wide check."""
    wanted = set(names)
    kept: dict[str, Installs] = {}
    for record in (prefix / "conda-meta").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            document = json.loads(record.read_text(encoding="utf-8"))
            if document.get("name") not in wanted:
                continue
            entries = document.get("paths_data", {}).get("paths", [])
            paths = [e["_path"] for e in entries if isinstance(e.get("_path"), str)]
            symlinks = {}
            for entry in entries:
                if entry.get("path_type") == "softlink":
                    with contextlib.suppress(OSError):
                        symlinks[entry["_path"]] = str((prefix / entry["_path"]).readlink())
            folders = {
                "/".join(p.split("/")[:n]) for p in paths for n in range(1, p.count("/") + 1)
            }
            kept[record.stem] = Installs(symlinks, tuple(sorted(folders)), False)
    return kept


def _refusal(package: LockedPackage | str, exc: Unsafe) -> UnsafePackageError:
    stem = (
        package if isinstance(package, str) else f"{package.name}-{package.version}-{package.build}"
    )
    return UnsafePackageError(f"package {stem} is unsafe: {exc}")


def _hash_check(package: LockedPackage, path: Path) -> str:
    try:
        actual = sha256_hex(path)
    except OSError as exc:
        raise InstallError(f"{package}: cannot read {path}: {exc.strerror}") from None
    if actual != package.sha256 and package.local_path is None:  # downloaded
        raise InstallError(
            f"{package.file_name}: the archive's sha256 does not match the lock; refusing to "
            "install it (the channel changed, or the download is corrupt)",
            details=f"hash mismatch: {package.url} has sha256 {actual}, the lock says "
            f"{package.sha256}",
        )
    if actual != package.sha256:
        raise InstallError(
            f"{package}: {path} has sha256 {actual}, the lock says {package.sha256}: the "
            "channel changed since it was locked; refusing to install it"
        )
    return actual


def _judge(package: LockedPackage, path: Path, site: str, limit: int) -> Installs:
    try:
        contents = read_contents(path, package.file_name, package.noarch == "python", limit)
        return check_package(contents, site)
    except Unsafe as exc:
        raise _refusal(package, exc) from None
    except OSError as exc:
        raise InstallError(f"{package}: cannot read {path}: {exc.strerror or exc}") from None


def _pool(work: int) -> contextlib.AbstractContextManager[Executor | None]:
    if work < 2:
        return contextlib.nullcontext()
    from concurrent.futures import ThreadPoolExecutor  # 10 ms: only when there is work

    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2))


def _run(pool: Executor | None, job: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return list(pool.map(job, items) if pool else map(job, items))


def _survey(
    packages: Sequence[LockedPackage],
    archives: dict[str, Any],
    verdicts: Mapping[str, Any],
    downloads: Path | None,
) -> tuple[list[tuple[LockedPackage, Path]], list[tuple[LockedPackage, Path]], dict[str, Path]]:
    """(archives to hash, archives to judge, where remote ones are to be downloaded)."""
    from envbuild.lock.conda import name_problem

    unhashed, unjudged, copies = [], [], {}
    for package in packages:
        if why := name_problem(package):  # a lock edited by hand: these name cache folders
            stem = f"{package.name}-{package.version}-{package.build}"
            raise UnsafePackageError(f"package {stem} {why}")
        known = Installs.from_json(verdicts.get(package.sha256)) is not None
        path = package.local_path
        if path is None:
            if not known and downloads is not None:
                copies[package.sha256] = downloads / package.file_name
                unhashed.append((package, copies[package.sha256]))
                unjudged.append((package, copies[package.sha256]))
            continue  # else rattler downloads it, and checks its sha256
        try:
            key = _stat_key(path)
        except OSError as exc:
            raise InstallError(f"{package}: cannot read {path}: {exc.strerror}") from None
        if archives.get(str(path)) != [*key, package.sha256]:
            unhashed.append((package, path))
            archives[str(path)] = [*key, package.sha256]
        if not known:
            unjudged.append((package, path))
    return unhashed, unjudged, copies


def check_archives(
    packages: Sequence[LockedPackage],
    cache_dir: Path,
    *,
    site: str,
    kept: Mapping[str, Installs] | None = None,
    download: Callable[[Sequence[tuple[LockedPackage, Path]]], None] | None = None,
) -> dict[str, Path]:
    """Check what rattler is about to install: ``packages`` (with ``kept``, what an existing
    prefix keeps, for the prefix-wide check). ``download([(package, path), ...])`` fetches
    remote archives; returns the checked copies of remote archives by sha256, to install
    from (the caller removes them)."""
    index_path = cache_dir / _INDEX_NAME
    archives, verdicts = _read_index(index_path)
    downloads = cache_dir / ".envbuild-downloads" if download else None
    unhashed, unjudged, copies = _survey(packages, archives, verdicts, downloads)
    limit = max_package_bytes()
    try:
        if copies and download is not None and downloads is not None:
            with contextlib.suppress(OSError):
                downloads.mkdir(exist_ok=True)
            download([(p, path) for p, path in unjudged if p.sha256 in copies])
        with _pool(len(unhashed) + len(unjudged)) as pool:
            _run(pool, lambda item: _hash_check(*item), unhashed)
            judged = _run(pool, lambda item: _judge(item[0], item[1], site, limit), unjudged)
        for (package, _), installs in zip(unjudged, judged, strict=True):
            verdicts[package.sha256] = installs.to_json()
        if unhashed or unjudged:
            _write_index(index_path, archives, verdicts)
        together = {**(kept or {})}
        for package in packages:
            installs = Installs.from_json(verdicts.get(package.sha256))
            if installs is not None:
                together[f"{package.name}-{package.version}-{package.build}"] = installs
        try:
            check_together(together, site)
        except Unsafe as exc:
            raise _refusal(exc.package or "?", exc) from None
    except BaseException:
        for copy in copies.values():
            copy.unlink(missing_ok=True)
        raise
    return copies


@contextlib.contextmanager
def removed_on_failure(packages: Iterable[LockedPackage], cache_dir: Path) -> Iterator[None]:
    """When the install fails, the package cache loses the extractions it began (rattler's
    NAME-VERSION-BUILD/ and its .lock): none is left half-written. The caller holds the
    cache, so no other install is using them."""
    names = [f"{p.name}-{p.version}-{p.build}" for p in packages]
    before = {name for name in names if (cache_dir / name).exists()}
    try:
        yield
    except BaseException:
        for name in names:
            if name not in before:
                shutil.rmtree(cache_dir / name, ignore_errors=True)
                (cache_dir / f"{name}.lock").unlink(missing_ok=True)
        raise
