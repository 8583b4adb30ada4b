"""The ``envbuild`` command: one small module per command, each a shell that parses its
arguments, calls one library function and prints (``app.py`` holds what they share).

Only inside the commands does a command import the rest of envbuild: ``envbuild --help``
loads typer and these modules, nothing heavy. Nothing outside this package imports typer.

May import: errors, files, gpucheck, spec, lock, env, image, cluster
"""

from __future__ import annotations

import contextlib
import os
import sys

from envbuild.cli import (  # noqa: F401 - each module registers its command on the app
    completion,
    deploy,
    env,
    export,
    image,
    init,
    lock,
    plan,
    run,
    schema,
    show,
    verify,
)
from envbuild.cli.app import app

__all__ = ["app", "main"]


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main() -> None:
    """Console-script entry point."""
    completion.enable_if_asked(dict(os.environ))
    try:
        app()
        status = 0
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    # Skip interpreter shutdown: rattler's runtime threads may still be dropping Python objects
    # right after a solve, and racing them can abort the process (see envbuild.lock.conda.Solver).
    # Every file is written (atomically, fsynced) before this point; envbuild has no exit hooks.
    os._exit(status)
