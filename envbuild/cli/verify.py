"""``envbuild verify``: does an environment hold exactly the lock?"""

from __future__ import annotations

from typing import Annotated

import typer

from envbuild.cli.app import (
    JsonOption,
    LockOption,
    PlatformOption,
    PrefixOption,
    QuietOption,
    RequiredRole,
    SpecOption,
    app,
    handles_errors,
    print_json,
)


@app.command(short_help="Check that an environment holds exactly the lock (exit 12 if not).")
@handles_errors
def verify(
    role: RequiredRole,
    prefix: PrefixOption = None,
    platform: PlatformOption = None,
    files: Annotated[
        bool,
        typer.Option(
            "--files",
            help="Also check every installed file: content (sha256), and that files, links "
            "and folders are what their packages installed.",
        ),
    ] = False,
    no_stamp: Annotated[
        bool,
        typer.Option(
            "--no-stamp",
            "--no-marker",
            help="Do not require envbuild's stamp (for environments made by other tools from "
            "an export).",
        ),
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Check that an environment holds exactly what the lock says (exit 12 when it does not).

    When it does not, the command that repairs it is printed.
    """
    from envbuild.cli.progress import bar
    from envbuild.env.create import role_environment
    from envbuild.env.verify import mismatch_error, require_environment, verify_prefix
    from envbuild.lock import locking

    used = locking.locate(spec_path, lock_path)
    target, prefix = role_environment(used.lock, used.path, role, platform, prefix)
    require_environment(prefix, role)
    progress = bar("checking files of packages", quiet=as_json or quiet)
    report = verify_prefix(target, prefix, files=files, stamp=not no_stamp, progress=progress)
    if as_json:
        print_json(report.to_dict())
    elif report.clean and not quiet:
        wheels = f" and {_wheels(len(target.wheels))}" if target.wheels else ""
        print(f"{prefix} matches {target.target} ({len(target.packages)} packages{wheels})")
    if not report.clean:
        raise mismatch_error(report, role, prefix, platform, spec_path, lock_path)


def _wheels(count: int) -> str:
    return f"{count} PyPI wheel{'' if count == 1 else 's'}"
