"""``envbuild export``: the lock in the formats other conda tools read."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

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

if TYPE_CHECKING:
    from envbuild.lock.lockfile import Lock


class ExportFormat(StrEnum):
    conda_lock = "conda-lock"
    explicit = "explicit"
    environment = "environment"
    pixi = "pixi"
    role_file = "role-file"
    sbom = "sbom"


@app.command(short_help="Export the lock for conda-lock, conda/micromamba and pixi.")
@handles_errors
def export(
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="conda-lock (one variant, all its platforms), explicit (@EXPLICIT urls), "
            "environment (environment.yml with exact pins), pixi (every variant and platform), "
            "role-file (the role's GPU requirements for `python -m envbuild.gpucheck`), "
            "sbom (the role image's CycloneDX SBOM, as the image carries it; builds nothing).",
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
    if fmt is ExportFormat.sbom:
        text = _sbom(used.spec, used.lock, role, platform, target)
    else:
        text = exports.export(
            used.lock,
            cast("exports.Format", fmt.value),
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


def _sbom(
    spec: Path | None, lock: Lock, role: str | None, platform: str | None, target: Path | None
) -> str | None:
    """The SBOM the role's image carries (the base's digest asked of its registry)."""
    from envbuild.errors import SelectionError
    from envbuild.files.atomic import write_atomic
    from envbuild.image import build as images

    if role is None:
        raise SelectionError("--format sbom is a role image's: choose the role with --role")
    images.select_roles(lock, [role], False, [platform] if platform else [])
    settings = images.with_base_digest(images.image_settings(spec, lock), spec)
    text = images.plan_image(lock, role, settings, platform).sbom
    if target is None:
        return text
    write_atomic(target, text)
    return None
