"""One envbuild at a time on a lock file or an environment: ``flock`` on a folder.

``hold(folder)`` locks the folder itself (the prefix of an environment, the folder of a lock
file), so nothing is left beside the user's files (a lock file next to ``envbuild.lock``
would show up in every ``git status``). A second process waits, after saying which process
holds the folder. The kernel drops the lock when its holder exits, even when killed, so
nothing stale ever blocks anyone.

A prefix that its holder removed while another process waited (a failed install cleans up
after itself) is made again and locked again: the waiting process never works in a folder
that is no longer there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from envbuild.errors import OutputError


def _holder(fd: int) -> str:
    """The process holding a lock on ``fd``'s inode, from /proc/locks (Linux), if known."""
    inode = os.fstat(fd).st_ino
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                return f"process {fields[4]}"
    return "another process"


@contextlib.contextmanager
def hold(
    folder: Path, what: str, waiting: Callable[[str], None] | None = None, *, make: bool = False
) -> Iterator[bool]:
    """Hold an exclusive lock on ``folder`` for the duration; yield whether this call made
    the folder (``make``: make it when it is missing). ``waiting`` hears why we wait."""
    while True:
        made = False
        try:
            if make and not folder.exists():
                folder.mkdir(parents=True)
                made = True
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileExistsError:
            continue  # someone else made it between our look and our mkdir
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write here: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting(f"waiting for {what} ({_holder(fd)} holds {folder})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = folder.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same and make:
                continue  # removed (and maybe made again) while we waited: start over
            yield made
            return
        finally:
            os.close(fd)
