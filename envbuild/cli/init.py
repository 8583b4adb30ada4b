"""``envbuild init``: a commented spec to start from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from envbuild.cli.app import app, handles_errors
from envbuild.errors import OutputError


@app.command(short_help="Write a commented envbuild.yaml to start from.")
@handles_errors
def init(
    spec_path: Annotated[
        Path, typer.Option("--file", "-f", help="Where to write the spec.")
    ] = Path("envbuild.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented envbuild.yaml to start from."""
    from envbuild.files.atomic import write_atomic
    from envbuild.files.resources import read_template

    if spec_path.exists() and not force:
        raise OutputError(f"{spec_path} already exists (use --force to overwrite it)")
    write_atomic(spec_path, read_template("envbuild.yaml"))
    print(f"wrote {spec_path}: edit channels, dependencies and roles, then run `envbuild lock`")
