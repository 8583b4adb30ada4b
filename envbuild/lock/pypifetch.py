"""Wheels and their metadata, fetched by URL into envbuild's cache and checked by sha256.

``pypi/wheels/SHA256/FILE`` holds wheels, ``pypi/metadata/SHA256`` their METADATA. A wheel is
only ever used after its bytes matched the lock's sha256; a ``file://`` wheel is hashed where
it is and copied in. The metadata of a remote wheel comes from its PEP 658 sidecar
(``URL.metadata``, one small request) and only when the index has none from the wheel itself.

Credentials: none are ever in a URL (the spec and the lock refuse them); a host listed in
``~/.netrc`` gets its login as HTTP basic auth, on that host only (never across a redirect to
another one).
"""

from __future__ import annotations

import email.parser
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from email.message import Message
from pathlib import Path
from urllib.parse import urlparse

from envbuild.errors import InstallError
from envbuild.files.atomic import write_atomic
from envbuild.files.cache import cache_root
from envbuild.files.digest import sha256_hex
from envbuild.lock.lockfile import local_path
from envbuild.lock.wheels import LockedWheel

#: Seconds a request may wait for the index.
TIMEOUT = 60


def pypi_cache() -> Path:
    """Where wheels and their metadata are kept."""
    return cache_root() / "pypi"


def _request(url: str) -> urllib.request.Request:
    request = urllib.request.Request(url, headers={"User-Agent": "envbuild"})  # noqa: S310
    host = urlparse(url).hostname
    if host:
        import netrc

        try:
            login = netrc.netrc().authenticators(host)
        except (OSError, netrc.NetrcParseError):
            login = None
        if login:
            import base64

            token = base64.b64encode(f"{login[0]}:{login[2]}".encode()).decode()
            request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _download(url: str, into: Path) -> None:
    if urlparse(url).scheme not in ("http", "https"):
        raise InstallError(f"{url}: envbuild fetches wheels over http(s) or from file:// only")
    request = _request(url)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response, into.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(response, out, 1 << 20)


def fetch_wheel(wheel: LockedWheel, cache: Path | None = None) -> Path:
    """The wheel's file in the cache, its sha256 checked (InstallError when it does not match
    the lock: the index changed, or the download or the file was tampered with)."""
    folder = (cache or pypi_cache()) / "wheels" / wheel.sha256
    path = folder / wheel.file_name
    if path.is_file() and sha256_hex(path) == wheel.sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        staged = Path(tmp) / wheel.file_name
        source = local_path(wheel.url)
        try:
            if source is not None:
                shutil.copyfile(source, staged)
            else:
                _download(wheel.url, staged)
        except (OSError, urllib.error.URLError) as exc:
            raise InstallError(f"{wheel.file_name}: cannot fetch {wheel.url}: {exc}") from None
        if sha256_hex(staged) != wheel.sha256:
            raise InstallError(
                f"{wheel.file_name}: its sha256 does not match the lock; refusing to install it "
                f"(the index changed, or the file at {wheel.url} was tampered with)"
            )
        staged.replace(path)
    return path


def _metadata_of_wheel_file(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        name = next(
            (
                n
                for n in archive.namelist()
                if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ),
            None,
        )
        if name is None:
            raise InstallError(f"{path.name}: a wheel without .dist-info/METADATA")
        return archive.read(name).decode("utf-8")


def wheel_metadata(wheel: LockedWheel, cache: Path | None = None) -> Message:
    """The wheel's METADATA (Requires-Python, Requires-Dist, ...), cached by sha256."""
    cache = cache or pypi_cache()
    kept = cache / "metadata" / wheel.sha256
    try:
        text = kept.read_text(encoding="utf-8")
    except OSError:
        text = _fetch_metadata(wheel, cache)
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(kept, text)
    return email.parser.Parser().parsestr(text, headersonly=True)


def _fetch_metadata(wheel: LockedWheel, cache: Path) -> str:
    source = local_path(wheel.url)
    if source is None:
        try:
            with urllib.request.urlopen(  # noqa: S310
                _request(wheel.url + ".metadata"), timeout=TIMEOUT
            ) as response:
                return str(response.read().decode("utf-8"))
        except (OSError, urllib.error.URLError, UnicodeDecodeError):
            pass  # no PEP 658 sidecar: read the wheel itself
    try:
        return _metadata_of_wheel_file(fetch_wheel(wheel, cache))
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InstallError(f"{wheel.file_name}: cannot read its metadata: {exc}") from None
