"""``envbuild plan``: the CI build matrix of the role images."""

from __future__ import annotations

from typing import Annotated

import typer

from envbuild.cli.app import LockOption, SpecOption, app, handles_errors, print_json


@app.command(short_help="Print the CI build matrix: a build per variant, what the registry has.")
@handles_errors
def plan(
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the matrix as GitHub Actions reads it (fromJSON)."),
    ] = False,
    github_output: Annotated[
        bool,
        typer.Option(
            "--github-output",
            help="Also write matrix=... and missing=N to the file $GITHUB_OUTPUT names.",
        ),
    ] = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Print the build matrix of the role images: one build per variant (its roles share the
    environment layers), each image's content-addressed tag, and whether the registry
    (image.repository) has it, asked through the registry API without pulling.

    A CI job per build runs `envbuild image ARGS --push --skip-existing`.
    """
    from envbuild.image import build as images
    from envbuild.image import matrix
    from envbuild.lock import locking

    used = locking.locate(spec_path, lock_path)
    settings = images.with_base_digest(images.image_settings(used.spec, used.lock), used.spec)
    roles, skipped = images.select_roles(used.lock, [], True)
    builds = images.plan_matrix(used.lock, settings, roles)
    if github_output:
        matrix.write_github_output(builds)
    if as_json:
        print_json(matrix.github_matrix(builds))
    else:
        print(matrix.render_table(builds, skipped))
