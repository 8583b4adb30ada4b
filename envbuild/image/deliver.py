"""Delivering role images: to a registry (``--push``), an OCI image layout (``--oci``), the
local engine (``--load``). One image is assembled once for all of them; what a destination
has already (by the content-addressed tag) is skipped.

A role locked for several platforms gets one image per platform, each pushed under a tag of
its own (``...-amd64``, ``...-arm64``), and the role's tag names an OCI image index of them.
That tag is honest: it is pushed only once every platform's image is in the registry (built
in this run, or by another job that built the other platform), so a build of one platform
(``--platform``) pushes its own image and completes the index only when it is the last. An
image layout gets the index when every platform was built in the run. The engine gets the
image of its own platform, tagged with the role's tag as ``docker pull`` of the index would.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from envbuild.env import runtime
from envbuild.image import oci, staging
from envbuild.image.assemble import assemble, layers_of
from envbuild.image.blobs import BlobStore
from envbuild.image.plan import ImagePlan, RolePlan
from envbuild.image.progress import size_text
from envbuild.lock.lockfile import Lock

if TYPE_CHECKING:
    from envbuild.image.base import BaseImage
    from envbuild.image.engine import Engine
    from envbuild.image.progress import Progress

Log = Callable[[str], None]
Status = Literal["built", "up-to-date", "in-registry", "context", "planned"]
_COUNTS = ("pushed", "already_in_registry", "mounted", "bytes_sent")


@dataclass
class ImageOutcome:
    """What happened to one role's image: the image of its one platform, or the index of
    several (then ``manifests`` says what happened to each platform's image)."""

    role: str
    variant: str
    reference: str
    status: Status
    seconds: float = 0.0
    digest: str | None = None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_layers: list[str] = field(default_factory=list)
    pushed: int | None = None
    already_in_registry: int | None = None
    mounted: int | None = None
    bytes_sent: int | None = None
    sbom: str | None = None
    note: str | None = None
    platforms: list[str] = field(default_factory=list)
    media_type: str = oci.MANIFEST
    manifests: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Targets:
    """Where the images go, and for which platforms (None: every platform of each role,
    or, loading only, the engine's)."""

    push: bool = False
    oci_dir: Path | None = None
    load: bool = False
    skip_existing: bool = False
    platforms: tuple[str, ...] | None = None


def store_for(cache_dir: Path) -> BlobStore:
    """envbuild's blob cache, beside the package cache ``cache_dir``."""
    return BlobStore(staging.scratch(cache_dir) / "blobs")


class Delivery:
    """The images of one ``envbuild image`` run, and where they go."""

    def __init__(
        self,
        lock: Lock,
        base: Callable[[str], BaseImage],
        targets: Targets,
        engine: Engine | None,
        cache_dir: Path,
        log: Log,
        progress: Progress,
    ) -> None:
        self.lock, self.load_base, self.targets, self.engine = lock, base, targets, engine
        self.pulled: dict[str, BaseImage] = {}
        self.cache_dir, self.log, self.progress = cache_dir, log, progress
        self.store = store_for(cache_dir)
        self.work = staging.scratch(cache_dir)
        self.engine_platform = engine.platform() if engine is not None else None
        self.layout: list[oci.Image | oci.Index] = []
        #: the images assembled in this run, by tag
        self.assembled: dict[str, oci.Image] = {}

    def platforms(self, role: RolePlan) -> list[str]:
        """The platforms of ``role`` this run builds."""
        wanted = self.targets.platforms
        if wanted is not None:
            return [p for p in role.platforms if p in wanted]
        if self.targets.push or self.targets.oci_dir is not None or not role.is_index:
            return list(role.platforms)
        mine = self.engine_platform
        return [mine] if mine in role.platforms else list(role.platforms[:1])

    def _load_tags(self, role: RolePlan, plan: ImagePlan) -> list[str]:
        """The tags ``plan``'s image gets in the engine: the role's for the engine's own
        platform (as pulling the index gives it), the image's own tag for another asked for."""
        if not self.targets.load:
            return []
        if not role.is_index:
            return [plan.reference]
        if plan.platform == self.engine_platform:
            return [role.reference, plan.reference]
        first = self.engine_platform not in role.platforms and plan.platform == role.platforms[0]
        return [plan.reference] if self.targets.platforms is not None or first else []

    # --- what is there already ------------------------------------------------------------

    def _in_registry(self, reference: str) -> bool:
        from envbuild.image import registry

        return registry.has_tag(reference)

    def _in_engine(self, references: Sequence[str]) -> bool:
        return self.engine is not None and all(self.engine.has_image(r) for r in references)

    def plan_only(self, role: RolePlan) -> ImageOutcome:
        """Say what ``deliver`` would do with ``role``, asking the same questions."""
        outcome = ImageOutcome(
            role.role,
            role.variant,
            role.reference,
            "planned",
            platforms=list(role.platforms),
            media_type=oci.INDEX if role.is_index else oci.MANIFEST,
        )
        if role.is_index and self._skipped(role.role, role.variant, role.reference):
            outcome.status = "in-registry"
            return outcome
        chosen = self.platforms(role)
        done = [self._plan_image(role, plan) for plan in role.images if plan.platform in chosen]
        if role.is_index and self.targets.push:
            self.log(
                f"{role.role:<10} {role.variant:<10} index {role.reference} "
                f"({', '.join(role.platforms)}): pushed once every platform's image is there"
            )
            done.append(False)
        if done and all(done):
            outcome.status = "up-to-date"
        return outcome

    def _skipped(self, role: str, variant: str, reference: str) -> bool:
        """Whether ``--skip-existing`` skips ``reference``: the registry has it (said)."""
        if not (self.targets.skip_existing and self._in_registry(reference)):
            return False
        self.log(f"{role:<10} {variant:<10} {reference} is in the registry: skipped")
        return True

    def _plan_image(self, role: RolePlan, plan: ImagePlan) -> bool:
        """Say whether ``plan``'s image would be built; whether its destinations have it."""
        if self._skipped(plan.role, plan.variant, plan.reference):
            return True
        where = []
        present = []
        if self.targets.push:
            where.append("the registry")
            present.append(self._in_registry(plan.reference))
        tags = self._load_tags(role, plan)
        if tags:
            where.append("the engine")
            present.append(self._in_engine(tags))
        done = bool(present) and all(present)
        split = f"{len(plan.split.shared)} shared packages, {len(plan.split.variant)} of its own"
        if plan.split.shared_wheels or plan.split.variant_wheels:
            split += (
                f"; {len(plan.split.shared_wheels)} shared wheels, "
                f"{len(plan.split.variant_wheels)} of its own"
            )
        state = f"in {' and '.join(where)}" if done else "would be built"
        self.log(f"{plan.role:<10} {plan.variant:<10} {plan.reference}: {state} ({split})")
        return done

    # --- assembling and delivering --------------------------------------------------------

    def deliver(self, role: RolePlan) -> ImageOutcome:
        """Build ``role``'s images of this run's platforms, deliver them, and its index."""
        if not role.is_index:
            plan = role.images[0]
            return self._deliver_image(plan, self._load_tags(role, plan))
        started = time.perf_counter()
        outcome = ImageOutcome(
            role.role,
            role.variant,
            role.reference,
            "up-to-date",
            platforms=list(role.platforms),
            media_type=oci.INDEX,
        )
        if self._skipped(role.role, role.variant, role.reference):
            outcome.status = "in-registry"
            return outcome
        chosen = self.platforms(role)
        parts = [
            self._deliver_image(plan, self._load_tags(role, plan))
            for plan in role.images
            if plan.platform in chosen
        ]
        outcome.manifests = [part.to_dict() for part in parts]
        if any(part.status == "built" for part in parts):
            outcome.status = "built"
        if self.targets.push:
            for name in _COUNTS:
                setattr(outcome, name, sum(getattr(part, name) or 0 for part in parts))
            self._push_index(role, outcome)
        if self.targets.oci_dir is not None:
            self._layout_index(role, outcome)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _deliver_image(self, plan: ImagePlan, load_as: Sequence[str]) -> ImageOutcome:
        started = time.perf_counter()
        outcome = ImageOutcome(
            plan.role, plan.variant, plan.reference, "up-to-date", platforms=[plan.platform]
        )
        if self._skipped(plan.role, plan.variant, plan.reference):
            outcome.status = "in-registry"
            return outcome
        push = self.targets.push
        load = bool(load_as) and not self._in_engine(load_as)
        layout = self.targets.oci_dir is not None
        if not (push or load or layout):
            self.log(
                f"{plan.role:<10} {plan.variant:<10} {plan.reference} is up to date: nothing built"
            )
            return outcome
        tars = staging.write_layers(
            self.lock, plan, work=self.work, cache_dir=self.cache_dir, runtime=runtime.files()
        )
        outcome.status = "built"
        outcome.layers = {
            name: {"size": t.size, "sha256": t.sha256, "files": t.files} for name, t in tars.items()
        }
        if push or layout:
            total = sum(t.size for t in tars.values())
            with self.progress.task(f"{plan.role}: writing layers", total) as advance:
                layers = layers_of(plan, tars, self.store, advance)
            image = assemble(plan, layers, self.base(plan.platform), oci.platform_of(plan.platform))
            outcome.digest = image.digest
            self.assembled[plan.tag] = image
            if push:
                self._push(plan, image, outcome)
            if layout and not plan.indexed:
                self.layout.append(self._with_base_layers(image))
        if load:
            self._load(plan, tars, load_as)
        outcome.seconds = time.perf_counter() - started
        outcome.image_layers = [
            layer.diff_id
            for layer in (*self.base(plan.platform).layers, *layers_of(plan, tars, None))
        ]
        sizes = ", ".join(f"{n} {size_text(t.size)}" for n, t in tars.items())
        self.log(
            f"{plan.role:<10} {plan.variant:<10} built {plan.reference} ({sizes}) "
            f"in {outcome.seconds:.1f} s"
        )
        return outcome

    def _push_index(self, role: RolePlan, outcome: ImageOutcome) -> None:
        """Push the role's index when the registry has every platform's image."""
        from envbuild.image.remote import push_index

        entries = [(plan.platform, plan.tag, self.assembled.get(plan.tag)) for plan in role.images]
        digest, missing = push_index(role.settings.repository, role.tag, entries)
        head = f"{role.role:<10} {role.variant:<10} index {role.reference}"
        if digest is None:
            outcome.note = (
                f"the index is pushed once the registry has the {', '.join(missing)} image too: "
                f"`envbuild image --role {role.role} --push --skip-existing` after that build"
            )
            self.log(f"{head}: not pushed yet ({outcome.note})")
            return
        outcome.digest = digest
        self.log(f"{head}@{digest}: pushed ({', '.join(role.platforms)})")

    def _layout_index(self, role: RolePlan, outcome: ImageOutcome) -> None:
        """Put the role's index into the layout when every platform was built here; else
        the images that were, each by its own tag."""
        images = [self.assembled.get(plan.tag) for plan in role.images]
        built = [self._with_base_layers(image) for image in images if image is not None]
        if len(built) == len(images):
            index = oci.Index(role.tag, tuple(built))
            self.layout.append(index)
            outcome.digest = index.digest
            return
        self.layout.extend(built)
        missing = [p.platform for p, i in zip(role.images, images, strict=True) if i is None]
        outcome.note = (
            f"the layout has no index {role.tag}: the {', '.join(missing)} image was not built "
            "in this run; each built image is there by its own tag"
        )
        self.log(f"{role.role:<10} {role.variant:<10} {outcome.note}")

    def base(self, platform: str) -> BaseImage:
        """The base for ``platform``: its manifest and config (resolved once)."""
        return self.pulled.get(platform) or self.load_base(platform)

    def _base(self, platform: str) -> BaseImage:
        """The base for ``platform`` with its layers' bytes here (pulled once)."""
        from envbuild.image.base import fetch_layers

        base = self.base(platform)
        missing = [layer.blob.size for layer in base.layers if layer.path is None]
        if missing:
            with self.progress.task(f"pulling the base {base.name}", sum(missing)) as advance:
                base = fetch_layers(base, self.store, advance)
        self.pulled[platform] = base
        return base

    def _with_base_layers(self, image: oci.Image) -> oci.Image:
        base = self._base(_subdir(image.platform))
        count = len(base.layers)
        return oci.Image(
            image.tag,
            image.config,
            image.manifest,
            (*base.layers, *image.layers[count:]),
            image.platform,
            image.referrers,
        )

    def _push(self, plan: ImagePlan, image: oci.Image, outcome: ImageOutcome) -> None:
        from envbuild.image.remote import push_image

        started = time.perf_counter()
        repository = plan.settings.repository

        def fetch(layer: oci.Layer) -> Path:
            for found in self._base(plan.platform).layers:
                if found.blob.digest == layer.blob.digest and found.path is not None:
                    return found.path
            raise AssertionError(layer.blob.digest)

        result = push_image(
            image,
            repository,
            store=self.store,
            base_repository=self.base(plan.platform).repository,
            fetch_base_layer=fetch,
            progress=lambda label, total: (
                self.progress.task(f"{plan.role}: pushing {label}", total).advance
            ),
        )
        outcome.pushed, outcome.already_in_registry = result.layers_sent, result.layers_present
        outcome.mounted, outcome.bytes_sent, outcome.sbom = (
            result.layers_mounted,
            result.bytes_sent,
            result.referrer,
        )
        self.log(
            f"{plan.role:<10} pushed {plan.reference}@{image.digest}: {result.layers_sent} "
            f"layers sent ({size_text(result.bytes_sent)}), {result.layers_present} already there, "
            f"{result.layers_mounted} mounted, in {time.perf_counter() - started:.1f} s"
        )

    def _load(self, plan: ImagePlan, tars: dict[str, staging.Layer], tags: Sequence[str]) -> None:
        assert self.engine is not None
        platform = oci.platform_of(plan.platform)
        image = assemble(plan, layers_of(plan, tars, None), self._base(plan.platform), platform)
        handle, name = tempfile.mkstemp(dir=self.work, prefix="load-", suffix=".tar")
        os.close(handle)
        archive = Path(name)
        try:
            oci.write_archive(archive, image, tags)
            with self.progress.task(f"{plan.role}: loading into the engine", 0):
                self.engine.load(archive)
        finally:
            with contextlib.suppress(OSError):
                archive.unlink()

    def finish(self) -> None:
        """Write the image layout, when one is asked for, with every image in it."""
        if self.targets.oci_dir is None or not self.layout:
            return
        oci.write_layout(self.targets.oci_dir, self.layout)
        tags = ", ".join(image.tag for image in self.layout)
        self.log(
            f"wrote {len(self.layout)} images to the OCI layout {self.targets.oci_dir} ({tags})"
        )


def _subdir(platform: oci.Platform) -> str:
    """The conda platform of an OCI platform."""
    return next(subdir for subdir, found in oci.PLATFORMS.items() if found == platform)
