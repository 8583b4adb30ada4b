"""``envbuild run``: a command inside a role's environment, activated as conda activates it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from envbuild.env import runtime
from envbuild.env.runtime import write_runtime
from envbuild.errors import InstallError, OutputError, UsageError


def exec_in(prefix: Path, platform: str, command: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with ``command`` run inside ``prefix``, activated as conda
    activates it; its exit code and signals are the command's own. Returns only on error."""
    from envbuild.lock import conda

    if not command:
        raise UsageError("name a command to run after --, e.g. -- python -c 'import dask'")
    with contextlib.suppress(OutputError, OSError):  # a read-only prefix keeps what it has
        write_runtime(prefix)  # the guard and check of the envbuild that runs it
    script = conda.activation_script(prefix.absolute(), platform)
    # `exec --`: the command is a command, never options of bash's exec (`-a NAME`, `-c`).
    argv = ["bash", "-c", f'{script}\nexec -- "$@"', "envbuild-run", *command]
    path = [str(prefix.absolute() / runtime.PREFIX_FOLDER), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), **env}
    try:
        os.execvpe("bash", argv, environment)  # noqa: S606 - replacing ourselves
    except OSError as exc:
        raise InstallError(f"cannot run bash to activate {prefix}: {exc.strerror}") from None
