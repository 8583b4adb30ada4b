"""``envbuild env``: a role's conda environment, made from the lock."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from envbuild.cli.app import (
    CacheOption,
    LockOption,
    PlatformOption,
    PrefixOption,
    QuietOption,
    RequiredRole,
    SpecOption,
    app,
    handles_errors,
    note,
)


@app.command(short_help="Create or update a role's conda environment from the lock.")
@handles_errors
def env(
    role: RequiredRole,
    prefix: PrefixOption = None,
    platform: PlatformOption = None,
    cache_dir: CacheOption = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Also check every installed file, and install again (from the checked "
            "archives) the packages whose files were changed or removed.",
        ),
    ] = False,
    quiet: QuietOption = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Create (or bring up to date) a real conda environment for a role, from the lock.

    Local archives are checked against the lock's sha256 before anything is installed. A
    complete environment is left untouched; a folder that is not an environment is refused.
    Two runs on one prefix take turns; a prefix this command created and could not finish is
    removed.
    """
    from envbuild.env.create import create_env, role_environment
    from envbuild.lock import locking

    used = locking.locate(spec_path, lock_path)
    target, prefix = role_environment(used.lock, used.path, role, platform, prefix)
    outcome = create_env(
        used.lock,
        target,
        prefix,
        cache_dir=cache_dir,
        show_progress=sys.stderr.isatty() and not quiet,
        repair=repair,
        waiting=None if quiet else note,
    )
    if quiet:
        return
    count = len(target.wheels)
    wheels = f" and {count} PyPI wheel{'' if count == 1 else 's'}" if count else ""
    if outcome.status == "up-to-date":
        print(f"{prefix} already matches {target.target} ({outcome.packages} packages{wheels})")
    else:
        print(
            f"{outcome.status} {prefix}: {target.target}, {outcome.packages} packages{wheels} "
            f"({len(outcome.fetched)} installed) in {outcome.seconds:.2f} s"
        )
