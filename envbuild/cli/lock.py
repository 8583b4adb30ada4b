"""``envbuild lock``: the spec resolved into ONE lock."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from envbuild.cli.app import (
    JsonOption,
    LockOption,
    LockSpecOption,
    QuietOption,
    app,
    handles_errors,
    print_json,
)


@app.command(short_help="Resolve ONE consistent lock for every role, variant and platform.")
@handles_errors
def lock(
    spec_path: LockSpecOption = Path("envbuild.yaml"),
    lock_path: LockOption = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Solve nothing; exit 4 when the lock does not match the spec."
        ),
    ] = False,
    update: Annotated[
        list[str] | None,
        typer.Option(
            "--update",
            metavar="PACKAGE",
            help="Let PACKAGE (and what must move with it) take newer versions; repeatable. "
            "Every other package keeps its locked version.",
        ),
    ] = None,
    update_all: Annotated[
        bool, typer.Option("--update-all", help="Re-solve from scratch, ignoring the old lock.")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Resolve ONE consistent lock for every role, CUDA variant and platform.

    An unchanged spec solves nothing and leaves envbuild.lock untouched. Progress goes to
    stderr, one line per target. Two runs on one lock file take turns.
    """
    from envbuild.lock import locking
    from envbuild.lock.progress import SilentReporter, StderrReporter

    if check:
        current = locking.check(spec_path, lock_path)
        path = lock_path or locking.default_lock_path(spec_path)
        if as_json:
            print_json({"lockfile": str(path), "fresh": True, "spec-hash": current.spec_hash})
        elif not quiet:
            print(f"{path} matches {spec_path}")
        return
    reporter = SilentReporter() if quiet or as_json else StderrReporter()
    outcome = locking.lock(
        spec_path, lock_path, update=update or (), update_all=update_all, reporter=reporter
    )
    packages = len({p for t in outcome.lock.targets for p in t.packages})
    if as_json:
        print_json(
            {
                "lockfile": str(outcome.path),
                "status": outcome.status,
                "solves": outcome.solves,
                "seconds": round(outcome.seconds, 3),
                "spec-hash": outcome.lock.spec_hash,
                "targets": {str(t.target): len(t.packages) for t in outcome.lock.targets},
                "packages": packages,
            }
        )
    elif not quiet:
        described = {
            "up-to-date": f"{outcome.path} is up to date with {spec_path}; nothing solved",
            "written": f"wrote {outcome.path}",
            "unchanged": f"{outcome.path} unchanged (the solve gave the same lock)",
        }[outcome.status]
        if outcome.status != "up-to-date":
            described += (
                f": {len(outcome.lock.targets)} targets, {packages} packages, "
                f"{outcome.solves} solves in {outcome.seconds:.2f} s"
            )
        print(described)
