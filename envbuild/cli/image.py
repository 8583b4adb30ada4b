"""``envbuild image``: role images from the lock."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from envbuild.cli.app import JsonOption, LockOption, SpecOption, app, handles_errors, print_json

Roles = Annotated[
    list[str] | None,
    typer.Option("--role", "-r", help="A role to build; repeatable (see envbuild plan)."),
]
Every = Annotated[bool, typer.Option("--all", help="Every role that runs on linux-64.")]
Push = Annotated[
    bool, typer.Option("--push", help="Push to image.repository (credentials: Docker config).")
]
SkipExisting = Annotated[
    bool,
    typer.Option(
        "--skip-existing", help="Neither build nor push an image the registry has already."
    ),
]
Context = Annotated[
    Path | None,
    typer.Option(
        "--context",
        metavar="DIR",
        help="Write the Dockerfile and layers to DIR and stop: no engine needed; build it "
        "with docker build, buildah or kaniko.",
    ),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Say what would be built; build nothing.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Stream the engine's log.")]


@app.command(short_help="Build role images that differ only in their CUDA layer.")
@handles_errors
def image(
    role: Roles = None,
    every: Every = False,
    push: Push = False,
    skip_existing: SkipExisting = False,
    context: Context = None,
    dry_run: DryRun = False,
    verbose: Verbose = False,
    as_json: JsonOption = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Build role images from the lock: the base image, a layer of the packages every variant
    shares, a layer of this variant's own (the CUDA runtime), and the role's files; the
    entrypoint checks the GPU, then runs the role's command.

    Tags are content-addressed: an unchanged lock builds nothing and pushes no layer.
    Uses the engine that DOCKER_HOST names (or the default socket).
    """
    from envbuild.errors import SelectionError
    from envbuild.files.cache import package_cache
    from envbuild.image import build as images
    from envbuild.lock import locking

    if bool(role) == every:
        raise SelectionError("choose roles with --role ROLE (repeatable), or every role with --all")
    used = locking.locate(spec_path, lock_path)
    settings = images.image_settings(used.spec, used.lock)
    roles, skipped = images.select_roles(used.lock, role or [], every)

    def say(message: str) -> None:
        if not as_json:
            print(message, flush=True)

    def engine_log(line: str) -> None:
        if verbose:
            print(f"  {line}", file=sys.stderr, flush=True)

    for name, why in skipped.items():
        say(f"{name:<10} skipped: {why}")
    outcomes = images.build_images(
        used.lock,
        settings,
        roles,
        cache_dir=package_cache(),
        push=push,
        skip_existing=skip_existing,
        context_dir=context,
        dry_run=dry_run,
        log=say,
        engine_log=engine_log,
    )
    if as_json:
        print_json(
            {
                "images": [o.to_dict() for o in outcomes],
                "skipped": [{"role": r, "why": w} for r, w in skipped.items()],
            }
        )
