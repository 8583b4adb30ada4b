"""``envbuild show``: what a lock (or an environment) holds, and what differs and why."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from envbuild.cli.app import JsonOption, LockOption, SpecOption, app, colour, handles_errors
from envbuild.cli.app import print_json as _print_json


@app.command(short_help="Show roles, variants, packages and what differs (and why).")
@handles_errors
def show(
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
    packages: Annotated[
        bool,
        typer.Option("--packages", help="Also list every package's version, per role and target."),
    ] = False,
    prefix: Annotated[
        Path | None,
        typer.Option(
            "--prefix",
            "-p",
            help="Show what the environment at PREFIX runs (its stamp: lock, variant, roles) "
            "and whether it is the lock in use.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show roles and their variants, package counts per target, and what differs between
    variants (and why it may). A stale lock is shown, and marked STALE."""
    from envbuild.lock import locking, report

    if prefix is not None:
        from envbuild.env.stamp import read_stamp
        from envbuild.lock.lockfile import content_digest
        from envbuild.spec import SPEC_FILE_NAME

        digest = None
        if spec_path or lock_path or Path(SPEC_FILE_NAME).exists():
            digest = content_digest(locking.locate(spec_path, lock_path, stale_ok=True).lock)
        found = report.summarize_stamp(str(prefix), read_stamp(prefix), digest)
        _print_json(found) if as_json else print(report.render_stamp(found))
        return
    used = locking.locate(spec_path, lock_path, stale_ok=True)
    summary = report.summarize(used.lock, fresh=used.fresh, packages=packages)
    if as_json:
        _print_json(summary)
        return
    text = report.render(summary)
    if colour(sys.stdout):
        text = text.replace("NOT ALLOWED", typer.style("NOT ALLOWED", fg="red", bold=True))
        text = text.replace("STALE", typer.style("STALE", fg="yellow", bold=True))
    print(text)
