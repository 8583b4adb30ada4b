"""sha256 of a file's content: the one way envbuild hashes files (archives, layers, wheels)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path


def sha256_hex(source: Path | io.BufferedReader) -> str:
    """The hex sha256 of a file, by path or of an open binary handle (read to its end)."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    return hashlib.file_digest(source, "sha256").hexdigest()
