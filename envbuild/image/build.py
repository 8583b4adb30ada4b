"""``envbuild image``: role images from the lock, built on a container engine.

For each role: plan the image from the lock (``envbuild.image.plan``, pure); when the engine
has its content-addressed tag already, there is nothing to build; otherwise stage the
variant (once for the roles that share it) and write the build context
(``envbuild.image.staging``), build it (``envbuild.image.engine``), and push it when asked.
``--context`` stops after writing the context: no engine is needed, and any builder takes it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from envbuild.env import runtime
from envbuild.errors import ImageBuildError, ImagePushError
from envbuild.image.matrix import Build, plan_builds
from envbuild.image.plan import (
    ImagePlan,
    ImageSettings,
    buildable_roles,
    env_dockerfile,
    plan_image,
    role_dockerfile,
)
from envbuild.lock.lockfile import Lock

if TYPE_CHECKING:
    from envbuild.image import staging
    from envbuild.image.engine import Engine

Log = Callable[[str], None]
Status = Literal["built", "up-to-date", "in-registry", "context", "planned"]


@dataclass
class ImageOutcome:
    """What happened to one role's image."""

    role: str
    variant: str
    reference: str
    status: Status
    seconds: float = 0.0
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_layers: list[str] = field(default_factory=list)
    pushed: int | None = None
    already_in_registry: int | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_repository(lock: Lock) -> str:
    """Where images are tagged when the spec names no image.repository."""
    return f"envbuild/{lock.name}"


def image_settings(spec_path: Path | None, lock: Lock) -> ImageSettings:
    """The spec's image section (its defaults for a lock used without its spec)."""
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


def select_roles(lock: Lock, roles: Sequence[str], every: bool) -> tuple[list[str], dict[str, str]]:
    """The roles to build and the roles left out (with why). ``--role`` of a role that has no
    linux-64 target is an error; ``--all`` leaves it out with a note."""
    buildable, skipped = buildable_roles(lock)
    if every:
        return buildable, skipped
    for role in roles:
        lock.role(role)  # SelectionError names the roles there are
        if role in skipped:
            raise ImageBuildError(f"no image for role '{role}': {skipped[role]}")
    return [r for r in buildable if r in roles], {}


def plan_matrix(lock: Lock, settings: ImageSettings, roles: Sequence[str]) -> list[Build]:
    """``envbuild plan``: the builds of ``roles``, with what the registry has."""
    from envbuild.image import registry

    source = runtime.files()
    plans = [plan_image(lock, role, settings, source) for role in roles]
    return plan_builds(plans, None if settings.local else registry.has_tag)


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"


def build_images(
    lock: Lock,
    settings: ImageSettings,
    roles: Sequence[str],
    *,
    cache_dir: Path,
    push: bool = False,
    skip_existing: bool = False,
    context_dir: Path | None = None,
    dry_run: bool = False,
    log: Log,
    engine_log: Log,
) -> list[ImageOutcome]:
    """Build (or plan, or write the context of) each role's image; see the module docs."""
    source = runtime.files()
    plans = [plan_image(lock, role, settings, source) for role in roles]
    if context_dir is not None:
        return [
            _write_context(lock, plan, context_dir, len(plans) > 1, cache_dir, source, log)
            for plan in plans
        ]
    from envbuild.image.engine import Engine

    engine = Engine.connect()
    if (push or skip_existing) and settings.local:
        raise ImagePushError(
            f"no registry for {settings.repository}: set image.repository in envbuild.yaml "
            "(e.g. registry.example.com/dask-gpu) to push, or to skip what it has"
        )
    skipped: list[ImageOutcome] = []
    if skip_existing:  # a dry run too: what it says would be built depends on the registry
        from envbuild.image import registry

        present = [p for p in plans if registry.has_tag(p.reference)]
        for plan in present:
            log(f"{plan.role:<10} {plan.variant:<10} {plan.reference} is in the registry: skipped")
        skipped = [ImageOutcome(p.role, p.variant, p.reference, "in-registry") for p in present]
        plans = [p for p in plans if p not in present]
    if dry_run:
        return [*skipped, *(_plan_only(engine, plan, log) for plan in plans)]
    if not plans:
        return skipped
    outcomes = []
    environments: dict[str, str] = {}  # variant -> image holding its environment layers
    for plan in plans:
        outcome = _build_one(engine, lock, plan, cache_dir, source, log, engine_log, environments)
        if push:
            started = time.perf_counter()
            result = engine.push(plan.reference, engine_log)
            outcome.pushed, outcome.already_in_registry = result.pushed, result.existing
            log(
                f"{plan.role:<10} pushed {plan.reference}: {result.pushed} layers sent, "
                f"{result.existing} already there, in {time.perf_counter() - started:.1f} s"
            )
        outcomes.append(outcome)
    return [*skipped, *outcomes]


def _plan_only(engine: Engine, plan: ImagePlan, log: Log) -> ImageOutcome:
    present = engine.has_image(plan.reference)
    status: Status = "up-to-date" if present else "planned"
    split = f"{len(plan.split.shared)} shared packages, {len(plan.split.variant)} of its own"
    state = "in the engine" if present else "would be built"
    log(f"{plan.role:<10} {plan.variant:<10} {plan.reference}: {state} ({split})")
    return ImageOutcome(plan.role, plan.variant, plan.reference, status)


def _layers_summary(layers: dict[str, staging.Layer]) -> dict[str, dict[str, Any]]:
    return {
        name: {"size": layer.size, "sha256": layer.sha256, "files": layer.files}
        for name, layer in layers.items()
    }


def _write_context(
    lock: Lock,
    plan: ImagePlan,
    context_dir: Path,
    per_role: bool,
    cache_dir: Path,
    source: Mapping[str, bytes],
    log: Log,
) -> ImageOutcome:
    from envbuild.image import staging

    started = time.perf_counter()
    target = context_dir / plan.role if per_role else context_dir
    layers = staging.write_context(
        lock,
        plan,
        target,
        work=staging.scratch(cache_dir),
        cache_dir=cache_dir,
        runtime=source,
    )
    seconds = time.perf_counter() - started
    sizes = ", ".join(f"{n} {_size(layer.size)}" for n, layer in layers.items())
    log(
        f"{plan.role:<10} {plan.variant:<10} context in {target} ({sizes}) in {seconds:.1f} s; "
        f"build it with: docker build -t {plan.reference} {target}"
    )
    return ImageOutcome(
        plan.role, plan.variant, plan.reference, "context", seconds, _layers_summary(layers)
    )


def _build_one(
    engine: Engine,
    lock: Lock,
    plan: ImagePlan,
    cache_dir: Path,
    source: Mapping[str, bytes],
    log: Log,
    engine_log: Log,
    environments: dict[str, str],
) -> ImageOutcome:
    """Build one role's image in two steps: the variant's environment (base, shared and
    variant layers) once per variant, then the role's layer on top of it. The result has the
    layers the single Dockerfile of ``--context`` gives, and the hundreds of megabytes of the
    environment go to the engine once per variant, not once per role."""
    from envbuild.image import staging

    started = time.perf_counter()
    if engine.has_image(plan.reference):
        log(f"{plan.role:<10} {plan.variant:<10} {plan.reference} is up to date: nothing built")
        return ImageOutcome(
            plan.role,
            plan.variant,
            plan.reference,
            "up-to-date",
            image_layers=engine.layers(plan.reference),
        )
    engine.require_base(plan.settings.base, log)
    work = staging.scratch(cache_dir)
    layers: dict[str, staging.Layer] = {}

    def build(name: str, parts: tuple[str, ...], dockerfile: str, tag: str | None) -> str:
        with _context(work, name) as context:
            layers.update(
                staging.write_context(
                    lock,
                    plan,
                    context,
                    work=work,
                    cache_dir=cache_dir,
                    runtime=source,
                    parts=parts,
                    dockerfile=dockerfile,
                )
            )
            return engine.build(context, tag, engine_log)

    if plan.variant not in environments:
        environments[plan.variant] = build(
            f"env-{plan.variant}",
            ("shared", "variant"),
            env_dockerfile(plan.settings.base),
            None,
        )
    base = environments[plan.variant]
    build(plan.role, ("role",), role_dockerfile(lock, plan, base), plan.reference)
    seconds = time.perf_counter() - started
    sizes = ", ".join(f"{n} {_size(layer.size)}" for n, layer in layers.items())
    log(f"{plan.role:<10} {plan.variant:<10} built {plan.reference} ({sizes}) in {seconds:.1f} s")
    return ImageOutcome(
        plan.role,
        plan.variant,
        plan.reference,
        "built",
        seconds,
        _layers_summary(layers),
        engine.layers(plan.reference),
    )


@contextmanager
def _context(work: Path, name: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"context-{name}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
