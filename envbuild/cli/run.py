"""``envbuild run``: a command inside a role's environment."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from envbuild.cli.app import (
    LockOption,
    PrefixOption,
    RequiredRole,
    SpecOption,
    app,
    handles_errors,
)


@app.command(
    short_help="Run a command inside a role's environment.",
    context_settings={"ignore_unknown_options": True},
)
@handles_errors
def run(
    role: RequiredRole,
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command and its arguments, after --.", show_default=False),
    ] = None,
    prefix: PrefixOption = None,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Run even when the environment differs from the lock."),
    ] = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Run a command inside a role's environment, activated as conda activates it
    (PATH, CONDA_PREFIX, the packages' activation scripts).

    The environment must be what `envbuild verify` accepts, or the command is refused with
    the same message (exit 12); --no-verify runs it anyway. The command's exit code is
    envbuild's: `envbuild run --role worker -- dask worker tcp://scheduler:8786`.
    """
    from envbuild.env.activate import exec_in
    from envbuild.env.create import role_environment
    from envbuild.env.verify import mismatch_error, require_environment, verify_prefix
    from envbuild.lock import locking

    used = locking.locate(spec_path, lock_path)
    target, prefix = role_environment(used.lock, used.path, role, None, prefix)
    require_environment(prefix, role)
    if not no_verify:
        report = verify_prefix(target, prefix)
        if not report.clean:
            raise mismatch_error(report, role, prefix, None, spec_path, lock_path)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    exec_in(prefix, target.platform, command or [], {"ENVBUILD_ROLE": role})
