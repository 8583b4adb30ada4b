"""``envbuild image``: role images from the lock, with or without a container engine.

For each role, and each platform it is locked for (``--platform`` chooses some): plan the
image from the lock and the base's digest (``envbuild.image.plan``, pure); stage the variant
for the platform and write the layer tars (``envbuild.image.staging``, once for the roles
that share a variant); assemble the config, manifest and SBOM (``envbuild.image.assemble``);
then deliver it, and a role's index of its platforms (``envbuild.image.deliver``), any of:

- ``--push``: to image.repository through the registry API, no engine
  (``envbuild.image.remote``);
- ``--oci DIR``: into an OCI image layout (``envbuild.image.oci``);
- ``--load``: into the local engine (an archive it loads; ``envbuild.image.engine``), the
  default when none of the others is asked for.

``--context`` writes a Dockerfile and the tars instead, for other builders. Tags are
content-addressed: a destination that has the tag has the image, and is skipped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from envbuild.env import runtime
from envbuild.errors import ImageBuildError, ImagePushError
from envbuild.image import oci
from envbuild.image.deliver import ImageOutcome as ImageOutcome
from envbuild.image.deliver import Targets as Targets
from envbuild.image.deliver import store_for
from envbuild.image.matrix import Build, plan_builds
from envbuild.image.plan import (
    IMAGE_PLATFORMS,
    ImagePlan,
    ImageSettings,
    RolePlan,
    buildable_roles,
    image_platforms,
)
from envbuild.image.plan import plan_image as _plan_image
from envbuild.image.plan import plan_role as _plan_role
from envbuild.image.progress import size_text
from envbuild.lock.lockfile import Lock

if TYPE_CHECKING:
    from envbuild.image.base import BaseImage
    from envbuild.image.engine import Engine
    from envbuild.image.progress import Progress

Log = Callable[[str], None]


def default_repository(lock: Lock) -> str:
    """Where images are tagged when the spec names no image.repository."""
    return f"envbuild/{lock.name}"


def image_settings(spec_path: Path | None, lock: Lock) -> ImageSettings:
    """The spec's image section (its defaults for a lock used without its spec); the base
    not resolved yet (``with_base_digest``)."""
    from envbuild.spec.file import load_spec
    from envbuild.spec.model import ImageSettings as SpecImageSettings

    section = load_spec(spec_path).spec.image if spec_path else SpecImageSettings()
    return ImageSettings(
        base=section.base,
        repository=section.repository or default_repository(lock),
        prefix=section.prefix,
        user=section.user,
        uid=section.uid,
        local=section.repository is None,
    )


def with_base_digest(settings: ImageSettings, spec_path: Path | None) -> ImageSettings:
    """``settings`` with the base's digest, which every tag depends on: pinned in image.base,
    read from its layout, or asked of its registry (one HEAD)."""
    from envbuild.image import base as bases

    reference = bases.parse_base(settings.base, spec_path.parent if spec_path else None)
    return dataclasses.replace(settings, base_digest=bases.reference_digest(reference))


def base_loader(
    settings: ImageSettings, spec_path: Path | None, cache_dir: Path
) -> Callable[[str], BaseImage]:
    """The base image (manifest and config) for a platform, resolved when first asked for:
    an index's image for that platform, or the one image a single-platform base is."""
    from envbuild.image import base as bases

    found: dict[str, BaseImage] = {}

    def load(platform: str) -> BaseImage:
        if platform not in found:
            reference = bases.parse_base(settings.base, spec_path.parent if spec_path else None)
            assert settings.base_digest is not None
            found[platform] = bases.resolve(
                reference, settings.base_digest, oci.platform_of(platform), store_for(cache_dir)
            )
        return found[platform]

    return load


def select_roles(
    lock: Lock, roles: Sequence[str], every: bool, platforms: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """The roles to build and the roles left out (with why). ``--role`` of a role that has no
    image (for ``platforms``, when given) is an error; ``--all`` leaves it out with a note."""
    unknown = [p for p in platforms if p not in IMAGE_PLATFORMS]
    if unknown:
        raise ImageBuildError(
            f"no images for {unknown[0]}: images are built for {', '.join(IMAGE_PLATFORMS)}"
        )
    buildable, skipped = buildable_roles(lock)
    if platforms:
        for role in buildable:
            if not set(platforms) & set(image_platforms(lock, role)):
                have = ", ".join(image_platforms(lock, role))
                skipped[role] = f"locked for {have}, not {', '.join(platforms)}"
        buildable = [r for r in buildable if r not in skipped]
    if every:
        return buildable, skipped
    for role in roles:
        lock.role(role)  # SelectionError names the roles there are
        if role in skipped:
            raise ImageBuildError(f"no image for role '{role}': {skipped[role]}")
    return [r for r in buildable if r in roles], {}


def plan_image(
    lock: Lock, role: str, settings: ImageSettings, platform: str | None = None
) -> ImagePlan:
    return _plan_image(lock, role, settings, runtime.files(), platform)


def plan_role(lock: Lock, role: str, settings: ImageSettings) -> RolePlan:
    return _plan_role(lock, role, settings, runtime.files())


def plan_matrix(lock: Lock, settings: ImageSettings, roles: Sequence[str]) -> list[Build]:
    """``envbuild plan``: the builds of ``roles``, with what the registry has."""
    from envbuild.image import registry

    plans = [plan_role(lock, role, settings) for role in roles]
    return plan_builds(plans, None if settings.local else registry.has_tag)


def write_contexts(
    lock: Lock,
    settings: ImageSettings,
    roles: Sequence[str],
    context_dir: Path,
    *,
    platforms: Sequence[str] = (),
    cache_dir: Path,
    log: Log,
) -> list[ImageOutcome]:
    """``--context``: each role's Dockerfile and layer tars (a folder per role when several,
    and per platform within it for a role of several)."""
    from envbuild.image import staging

    outcomes = []
    for role in roles:
        planned = plan_role(lock, role, settings)
        for plan in planned.images:
            if platforms and plan.platform not in platforms:
                continue
            started = time.perf_counter()
            target = context_dir / plan.role if len(roles) > 1 else context_dir
            target = target / plan.platform if planned.is_index else target
            layers = staging.write_context(
                lock,
                plan,
                target,
                work=staging.scratch(cache_dir),
                cache_dir=cache_dir,
                runtime=runtime.files(),
            )
            seconds = time.perf_counter() - started
            sizes = ", ".join(f"{n} {size_text(layer.size)}" for n, layer in layers.items())
            where = oci.platform_of(plan.platform)
            log(
                f"{plan.role:<10} {plan.variant:<10} context in {target} ({sizes}) in "
                f"{seconds:.1f} s; build it with: docker build --platform "
                f"{where.os}/{where.architecture} -t {plan.reference} {target}"
            )
            summary = {
                n: {"size": t.size, "sha256": t.sha256, "files": t.files} for n, t in layers.items()
            }
            outcomes.append(
                ImageOutcome(
                    plan.role,
                    plan.variant,
                    plan.reference,
                    "context",
                    seconds,
                    layers=summary,
                    platforms=[plan.platform],
                )
            )
    return outcomes


def build_images(
    lock: Lock,
    settings: ImageSettings,
    base: Callable[[str], BaseImage],
    roles: Sequence[str],
    targets: Targets,
    *,
    cache_dir: Path,
    dry_run: bool = False,
    log: Log,
    progress: Progress,
) -> list[ImageOutcome]:
    """Assemble each role's image and deliver it to ``targets``; see the module docs."""
    from envbuild.image.deliver import Delivery

    if (targets.push or targets.skip_existing) and settings.local:
        raise ImagePushError(
            f"no registry for {settings.repository}: set image.repository in envbuild.yaml "
            "(e.g. registry.example.com/dask-gpu) to push, or to skip what it has"
        )
    engine = _engine() if targets.load else None
    plans = [plan_role(lock, role, settings) for role in roles]
    delivery = Delivery(lock, base, targets, engine, cache_dir, log, progress)
    if dry_run:
        return [delivery.plan_only(plan) for plan in plans]
    outcomes = [delivery.deliver(plan) for plan in plans]
    delivery.finish()
    return outcomes


def _engine() -> Engine:
    from envbuild.image.engine import Engine

    return Engine.connect()


def engine_reachable() -> bool:
    """Whether a container engine answers (DOCKER_HOST, or the default socket)."""
    from envbuild.errors import EngineError

    try:
        _engine().close()
    except EngineError:
        return False
    return True
