"""Writing output files: readers see the old file or the new one, never half of either.

A path that is not a regular file (``/dev/null``, ``/dev/stdout``, a FIFO) is written into,
never renamed over: a root user's ``-o /dev/null`` must not turn the device into a file. A
symlink is followed, so the link stays a link. Missing folders on the way are made.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from envbuild.errors import OutputError


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path``: through a temporary file in the same folder and a rename
    when ``path`` is (or will be) a regular file, straight into it otherwise."""
    payload = data.encode() if isinstance(data, str) else data
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here: {exc.strerror or exc}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{path} is a folder: name a file to write")
    if mode is not None and not stat.S_ISREG(mode):
        _write_into(path, payload)
        return
    target = path.resolve() if path.is_symlink() else path
    folder = target.parent if str(target.parent) else Path()
    try:
        folder.mkdir(parents=True, exist_ok=True)  # -o reports/x.yml makes reports/
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        Path(tmp).chmod(0o666 & ~umask)  # mkstemp creates 0600; a lock is not a secret
        Path(tmp).replace(target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
        raise


def _write_into(path: Path, payload: bytes) -> None:
    """Write into a device, FIFO or terminal as it is."""
    try:
        with path.open("wb") as handle:
            handle.write(payload)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
