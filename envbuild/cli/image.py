"""``envbuild image``: role images from the lock."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from envbuild.cli.app import (
    JsonOption,
    LockOption,
    QuietOption,
    SpecOption,
    app,
    handles_errors,
    print_json,
)

Roles = Annotated[
    list[str] | None,
    typer.Option("--role", "-r", help="A role to build; repeatable (see envbuild plan)."),
]
Every = Annotated[bool, typer.Option("--all", help="Every role that runs on Linux.")]
Platforms = Annotated[
    list[str] | None,
    typer.Option(
        "--platform",
        help="Build the images of this platform only (linux-64, linux-aarch64); repeatable. "
        "Default: every platform of each role (loading only: the engine's).",
    ),
]
Push = Annotated[
    bool,
    typer.Option(
        "--push",
        help="Push to image.repository through the registry API, no engine needed "
        "(credentials: Docker config).",
    ),
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
        help="Write the Dockerfile and layers to DIR and stop: build it with docker build, "
        "buildah or kaniko.",
    ),
]
Oci = Annotated[
    Path | None,
    typer.Option(
        "--oci",
        metavar="DIR",
        help="Write the images into the OCI image layout DIR (skopeo, podman, containerd and "
        "crane take it); no engine needed.",
    ),
]
Load = Annotated[
    bool,
    typer.Option(
        "--load",
        help="Load the images into the local engine (DOCKER_HOST). The default when none of "
        "--push, --oci, --context is given.",
    ),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Say what would be built; build nothing.")]


@app.command(short_help="Build role images that differ only in their CUDA layer.")
@handles_errors
def image(
    role: Roles = None,
    every: Every = False,
    platform: Platforms = None,
    push: Push = False,
    oci: Oci = None,
    load: Load = False,
    skip_existing: SkipExisting = False,
    context: Context = None,
    dry_run: DryRun = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Build role images from the lock: the base image, a layer of the packages every variant
    shares, a layer of this variant's own (the CUDA runtime), and the role's files (with the
    image's SBOM); the entrypoint checks the GPU, then runs the role's command.

    No engine builds them: envbuild writes the layers, config and manifest itself, then
    --push sends them to image.repository through the registry API, --oci DIR writes an OCI
    image layout, --load hands them to the local engine (the default when an engine answers).
    Tags are content-addressed: an unchanged lock builds nothing and pushes no layer.

    A role of several platforms gets an image per platform (tagged ...-amd64, ...-arm64) and
    one tag for their index, pushed once the registry has them all (see --platform).
    """
    from envbuild.errors import EngineError, SelectionError, UsageError
    from envbuild.files.cache import package_cache
    from envbuild.image import build as images
    from envbuild.image.progress import Progress
    from envbuild.lock import locking

    if bool(role) == every:
        raise SelectionError("choose roles with --role ROLE (repeatable), or every role with --all")
    if context is not None and (push or oci or load):
        raise UsageError("--context writes a build context only: drop --push, --oci and --load")
    used = locking.locate(spec_path, lock_path)
    platforms = tuple(dict.fromkeys(platform or ()))
    roles, skipped = images.select_roles(used.lock, role or [], every, platforms)

    def say(message: str) -> None:
        if not as_json and not quiet:
            print(message, flush=True)

    for name, why in skipped.items():
        say(f"{name:<10} skipped: {why}")
    cache = package_cache()
    settings = images.with_base_digest(images.image_settings(used.spec, used.lock), used.spec)
    if context is not None:
        outcomes = images.write_contexts(
            used.lock, settings, roles, context, platforms=platforms, cache_dir=cache, log=say
        )
    else:
        if not (push or oci or load):
            if not images.engine_reachable():
                raise EngineError(
                    "no container engine to load the images into (DOCKER_HOST): choose where "
                    "they go: --push (image.repository), --oci DIR, or --context DIR"
                )
            load = True
        outcomes = images.build_images(
            used.lock,
            settings,
            images.base_loader(settings, used.spec, cache),
            roles,
            images.Targets(push, oci, load, skip_existing, platforms or None),
            cache_dir=cache,
            dry_run=dry_run,
            log=say,
            progress=Progress(enabled=not (quiet or as_json)),
        )
    if as_json:
        print_json(
            {
                "base": {"name": settings.base, "digest": settings.base_digest},
                "images": [o.to_dict() for o in outcomes],
                "skipped": [{"role": r, "why": w} for r, w in skipped.items()],
            }
        )
