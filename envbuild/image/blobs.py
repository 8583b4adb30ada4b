"""envbuild's blob cache: blobs by digest (``images/blobs/sha256/<hex>``) beside the
package cache, shared by every image of every lock: the base image's config and layers as
pulled, manifests, and the compressed layers envbuild writes (found again by their tar's
digest, so an unchanged layer is compressed once).

Everything put here is checked against its digest first; a half-written blob never has its
final name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from envbuild.errors import ImageBuildError
from envbuild.files.digest import sha256_hex
from envbuild.image import oci

Progress = Callable[[int], None]


class BlobStore:
    """Blobs by digest in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.blobs = folder / "sha256"
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageBuildError(f"{folder}: cannot keep blobs there: {exc.strerror}") from None

    def path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        if len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise ImageBuildError(f"not a sha256 digest: {digest[:80]!r}")
        return self.blobs / hexdigest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put(self, data: bytes) -> str:
        digest = oci.digest_of(data)
        target = self.path(digest)
        if not target.is_file():
            partial = self._partial(target)
            partial.write_bytes(data)
            partial.replace(target)
        return digest

    def fetch(self, digest: str, download: Callable[[Path], None]) -> Path:
        """The blob ``digest``, downloaded by ``download(path)`` unless it is here; checked."""
        target = self.path(digest)
        if target.is_file():
            return target
        partial = self._partial(target)
        try:
            download(partial)
            found = "sha256:" + sha256_hex(partial)
            if found != digest:
                raise ImageBuildError(f"the blob sent as {digest} is {found}: refused")
            partial.replace(target)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        return target

    def _partial(self, target: Path) -> Path:
        return target.with_name(f".{target.name}.{os.getpid()}.tmp")

    # --- compressed layers --------------------------------------------------------------

    def compressed(self, tar: Path, diff_id: str, progress: Progress | None = None) -> oci.Layer:
        """The gzip blob of the layer tar ``tar`` (whose digest is ``diff_id``)."""
        note = self.folder / f"gzip-{oci.GZIP_LEVEL}" / diff_id.removeprefix("sha256:")
        with contextlib.suppress(OSError, ValueError):
            known, length = note.read_text().split()
            if self.has(known):
                if progress:
                    progress(tar.stat().st_size)
                return self._layer(known, int(length), diff_id, tar)
        partial = self._partial(self.blobs / f"gzip-of-{note.name}")
        try:
            digest, size = oci.compress(tar, partial, progress)
            partial.replace(self.path(digest))
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        note.parent.mkdir(exist_ok=True)
        note.write_text(f"{digest} {size}\n")
        return self._layer(digest, size, diff_id, tar)

    def _layer(self, digest: str, size: int, diff_id: str, tar: Path) -> oci.Layer:
        blob = oci.Descriptor(oci.LAYER_GZIP, digest, size)
        return oci.Layer(blob, diff_id, path=self.path(digest), tar=tar)

    def compress_all(
        self, tars: list[tuple[Path, str]], progress: Progress | None = None
    ) -> list[oci.Layer]:
        """``compressed`` of each (tar, diff_id), side by side on this machine's cores
        (zlib and sha256 let go of the interpreter's lock while they work)."""
        workers = max(1, min(len(tars), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda item: self.compressed(item[0], item[1], progress), tars))
