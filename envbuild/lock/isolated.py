"""rattler's work in a child process that ends with ``os._exit``.

After an install, rattler's runtime threads may still be dropping Python objects; a process
that begins interpreter shutdown then can crash after its work is done (a raw
``rattler.install`` script dies of SIGSEGV about once in ten runs at exit, issue 23), and a
failed install may still have threads writing into the prefix when it returns (they
recreated a prefix envbuild had just removed). ``run`` does the work in a child and returns
only once the child has exited: nothing of the install is left running, and the parent
never holds rattler's runtime.

No rattler here: ``envbuild.lock.conda`` passes its coroutine functions in.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envbuild.errors import EnvbuildError, InstallError

if TYPE_CHECKING:
    import subprocess


def fork_is_safe(runtime_started: bool) -> bool:
    """A fork copies one thread: safe while rattler's runtime has not started here and no
    other thread runs (one holding a lock would leave it held in the child forever). Threads
    that Python has joined (a finished thread pool) may take a moment to leave the kernel's
    list: up to 0.1 s is waited for them."""
    import threading
    import time

    if runtime_started or threading.active_count() > 1:
        return False
    deadline = time.monotonic() + 0.1
    while True:
        try:
            threads = sum(1 for _ in Path("/proc/self/task").iterdir())
        except OSError:
            return False
        if threads == 1:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def run(job: Callable[..., Any], arguments: tuple[Any, ...], what: str, *, fork: bool) -> None:
    """Run the coroutine function ``job(*arguments)`` in a child process and wait for it to
    end; its EnvbuildError is raised here.

    The child is forked (a few ms) when ``fork`` says it is safe (``fork_is_safe``), else a
    new interpreter runs it. It ends
    with os._exit, never with the interpreter shutdown that can race rattler's threads (a raw
    rattler.install script dies of SIGSEGV about once in ten runs at exit), and this process
    never starts rattler's runtime for an install. The parent waits until the child has
    exited, even when interrupted, so nothing of the job runs once this returns or raises."""
    import pickle

    read_end, write_end = os.pipe()
    spawned = None
    try:
        if fork:
            pid = os.fork()
            if pid == 0:  # the child
                os.close(read_end)
                _child_main(write_end, job, arguments)
        else:
            spawned = _spawn(write_end, pickle.dumps((job, arguments)))
            pid = spawned.pid
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)

    def wait() -> int:
        if spawned is not None:
            return spawned.wait()
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    try:
        with os.fdopen(read_end, "rb") as results:
            answer = results.read()
        code = wait()
    except BaseException:  # interrupted: the child ends before we go on
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
            wait()
        raise
    if not answer or code not in (0, 1):
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise InstallError(f"{what} failed: the installer process died ({how})")
    outcome = pickle.loads(answer)  # noqa: S301 - our own child's answer
    if outcome != "done":  # (class name, message, details)
        from envbuild import errors

        kind, message, details = outcome
        raise getattr(errors, kind, InstallError)(message, details=details)


def _spawn(write_end: int, payload: bytes) -> subprocess.Popen[bytes]:
    """A new interpreter that runs ``payload`` (a pickled job) and answers on ``write_end``."""
    import subprocess

    code = "import sys; from envbuild.lock.isolated import spawned; spawned(int(sys.argv[1]))"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(write_end)],
        stdin=subprocess.PIPE,
        pass_fds=(write_end,),
        env=environment,
    )
    assert child.stdin is not None
    with child.stdin:
        child.stdin.write(payload)
    return child


def spawned(write_end: int) -> None:
    """The new interpreter's side of ``_spawn``."""
    import pickle

    job, arguments = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - from our parent
    _child_main(write_end, job, arguments)


def _child_main(write_end: int, job: Callable[..., Any], arguments: tuple[Any, ...]) -> None:
    import asyncio
    import pickle

    status, answer = 0, pickle.dumps("done")
    try:
        asyncio.run(job(*arguments))
    except EnvbuildError as exc:
        status, answer = 1, pickle.dumps((type(exc).__name__, str(exc), exc.details))
    except BaseException as exc:  # a bug, or an interrupt: say it, exit non-zero
        status, answer = 1, pickle.dumps(("InstallError", f"{type(exc).__name__}: {exc}", None))
    finally:
        with contextlib.suppress(OSError), os.fdopen(write_end, "wb") as results:
            results.write(answer)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)
