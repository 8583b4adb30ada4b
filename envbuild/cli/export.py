"""``envbuild export``: the lock in the formats other conda tools read."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from envbuild.cli.app import (
    LockOption,
    OutputOption,
    PlatformOption,
    RoleOption,
    SpecOption,
    app,
    handles_errors,
    output_path,
)


class ExportFormat(StrEnum):
    conda_lock = "conda-lock"
    explicit = "explicit"
    environment = "environment"
    pixi = "pixi"
    role_file = "role-file"


@app.command(short_help="Export the lock for conda-lock, conda/micromamba and pixi.")
@handles_errors
def export(
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="conda-lock (one variant, all its platforms), explicit (@EXPLICIT urls), "
            "environment (environment.yml with exact pins), pixi (every variant and platform), "
            "role-file (the role's GPU requirements for `python -m envbuild.gpucheck`).",
        ),
    ],
    role: RoleOption = None,
    platform: PlatformOption = None,
    output: OutputOption = None,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Export the lock for other conda tools: conda-lock, conda/micromamba, pixi.

    A stale lock (the spec changed since it was locked) is refused.
    """
    from envbuild.lock import conda, exports, locking

    used = locking.locate(spec_path, lock_path)
    target = output_path(output)
    text = exports.export(
        used.lock,
        fmt.value,
        target,
        role=role,
        platform=platform,
        source=used.path.name,
        current_platform=conda.current_platform(),
    )
    if text is not None:
        sys.stdout.write(text)
    else:
        print(f"wrote {target}", file=sys.stderr)
