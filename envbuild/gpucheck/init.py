"""What PID 1 of an image owes its container: signals reach the role's processes, orphans are
reaped. When the check runs as PID 1 (the image's entrypoint, without ``docker run --init``),
it does not ``exec`` the command: it forks it into a process group of its own, forwards
SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to that group (as ``tini -g``
does, which dask-docker runs), reaps every child that ends, and exits with the command's
status (128 + N when a signal N ended it). A Dask worker's nanny and its worker process
therefore both see a ``docker stop``, and a task that forks leaves no zombie.

Anywhere else (``docker run --init``, ``envbuild run``, Kubernetes with a shared process
namespace) the check ``exec``\\ s the command, as before. ``ENVBUILD_INIT=0`` forces that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def wanted(env: Mapping[str, str]) -> bool:
    """Whether this process should act as init for the command."""
    return os.getpid() == 1 and env.get("ENVBUILD_INIT", "1") != "0"


def supervise(command: Sequence[str]) -> int:
    """Run ``command`` as PID 1's only child and return its exit status; raises OSError
    (before forking) when it cannot be found or run."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, False)
    os.set_blocking(read_end, True)
    os.set_inheritable(read_end, False)
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.setpgid(0, 0)
        try:
            os.execvp(command[0], list(command))  # noqa: S606 - the role's command
        except OSError as exc:
            os.write(write_end, f"{type(exc).__name__}:{exc.strerror or exc}".encode())
        os._exit(127)
    os.close(write_end)
    failure = os.read(read_end, 4096).decode()  # empty once exec closed the pipe
    os.close(read_end)
    if failure:
        os.waitpid(child, 0)
        kind, _, message = failure.partition(":")
        error = FileNotFoundError if kind == "FileNotFoundError" else PermissionError
        raise error(message)
    for number in FORWARDED:
        signal.signal(number, lambda received, _frame: _forward(child, received))
    return _reap(child)


def _forward(child: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group ended; its status is reaped
        os.killpg(child, number)


def _reap(child: int) -> int:
    """Wait for every child; return once ``child`` itself has ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:  # pragma: no cover - PEP 475 retries waitpid
            continue
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            status_code = 128 - code if code < 0 else code
            _drain()
            return status_code


def _drain() -> None:
    """Reap what is left without waiting: orphans that already ended."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main_as_init(command: Sequence[str]) -> int:
    """``supervise`` with its errors worded as the check words them."""
    try:
        return supervise(command)
    except OSError as exc:
        print(f"envbuild gpu check: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
