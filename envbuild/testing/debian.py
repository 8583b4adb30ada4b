"""Debian packages for the runnable test channel's linux-aarch64 python: pinned, fetched once,
read without installing them.

``debian.tsv`` (committed) pins every ``.deb`` by its path in Debian's pool and its sha256.
``fetch`` makes every pinned file present and sha256-checked in a cache folder, as
``wheels.fetch`` does for wheels: what is there and intact is used offline; what is missing or
damaged is downloaded from Debian's mirror into a temporary file first. ``read_deb`` returns
the files a ``.deb`` would install (its ``data.tar``), read with the standard library: no
dpkg, no foreign architecture added to this machine.
"""

from __future__ import annotations

import io
import lzma
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from envbuild.files.digest import sha256_hex
from envbuild.testing.channel import File, Symlink

DEB_LIST = Path(__file__).with_name("debian.tsv")
MIRROR = "http://deb.debian.org/debian"


class DebError(Exception):
    """A .deb is missing, damaged or cannot be fetched; the message is one line."""


@dataclass(frozen=True)
class PinnedDeb:
    """One line of debian.tsv."""

    arch: str  # "arm64" or "all"
    package: str  # "python3.11-minimal"
    version: str  # "3.11.2-6+deb12u6"
    pool_path: str  # "pool/main/p/python3.11/python3.11-minimal_3.11.2-6+deb12u6_arm64.deb"
    sha256: str

    @property
    def file_name(self) -> str:
        return self.pool_path.rsplit("/", 1)[1]


def pinned_debs(path: Path = DEB_LIST) -> list[PinnedDeb]:
    """The pinned .debs."""
    debs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            arch, package, version, pool_path, sha256 = line.split("\t")
            debs.append(PinnedDeb(arch, package, version, pool_path, sha256))
    return debs


def _intact(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and sha256_hex(path) == sha256
    except OSError:
        return False


def fetch(
    debs: Sequence[PinnedDeb], cache: Path, *, offline: bool = False, mirror: str = MIRROR
) -> dict[str, Path]:
    """file name -> path of every .deb in ``cache``, each checked against its sha256.

    ``offline``: use the cache only; a missing or damaged .deb is then an error.
    """
    missing = [d for d in debs if not _intact(cache / d.file_name, d.sha256)]
    if missing and offline:
        damaged = [d.file_name for d in missing if (cache / d.file_name).exists()]
        what = f"{damaged[0]} is damaged" if damaged else f"{missing[0].file_name} is missing"
        raise DebError(
            f"Debian package cache {cache}: {what} ({len(missing)} of {len(debs)} to fetch) "
            "and fetching is off; run once with access to Debian's mirror"
        )
    if missing:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror
            raise DebError(f"Debian package cache {cache}: cannot create it ({reason})") from None
        for deb in missing:
            _download(deb, cache, mirror)
    return {d.file_name: cache / d.file_name for d in debs}


def _download(deb: PinnedDeb, cache: Path, mirror: str) -> None:
    url = f"{mirror}/{deb.pool_path}"
    if not url.startswith(("http://", "https://")):
        raise DebError(f"not an http(s) mirror: {mirror}")
    handle, name = tempfile.mkstemp(dir=cache, prefix=".download-")
    staged = Path(name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310
            while chunk := answer.read(1 << 20):
                out.write(chunk)
        if not _intact(staged, deb.sha256):
            raise DebError(f"{url} did not deliver {deb.file_name} with its pinned sha256")
        staged.replace(cache / deb.file_name)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DebError(f"cannot fetch {url}: {reason}") from None
    finally:
        staged.unlink(missing_ok=True)


# --- reading a .deb ------------------------------------------------------------------------------


def _ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a .deb is one)."""
    if not data.startswith(b"!<arch>\n"):
        raise DebError("not an ar archive")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def _data_tar(path: Path) -> bytes:
    try:
        members = _ar_members(path.read_bytes())
    except (OSError, ValueError, DebError) as exc:
        raise DebError(f"{path}: not a readable .deb ({exc})") from None
    for name, data in members.items():
        if name == "data.tar.xz":
            return lzma.decompress(data)
        if name == "data.tar.gz":
            return zlib.decompress(data, 16 + zlib.MAX_WBITS)
        if name == "data.tar":
            return data
    raise DebError(f"{path}: no data.tar.xz, data.tar.gz or data.tar in it")


def read_deb(path: Path) -> dict[str, File | Symlink]:
    """What the .deb installs: path relative to ``/`` -> file or symlink (targets as the
    package has them, absolute ones included). Folders, devices and hard links to files
    the package also ships under another name are resolved or left out."""
    files: dict[str, File | Symlink] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(_data_tar(path))) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if member.issym():
                files[name] = Symlink(member.linkname)
            elif member.islnk():
                links[name] = member.linkname.removeprefix("./")
            elif member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[name] = File(extracted.read(), bool(member.mode & 0o111))
    for name, target in links.items():
        if isinstance(files.get(target), File):
            files[name] = files[target]
    return files
