"""Delivering role images: to a registry (``--push``), an OCI image layout (``--oci``), the
local engine (``--load``). One image is assembled once for all of them; what a destination
has already (by the content-addressed tag) is skipped.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from envbuild.env import runtime
from envbuild.image import oci, staging
from envbuild.image.assemble import assemble, layers_of
from envbuild.image.blobs import BlobStore
from envbuild.image.plan import IMAGE_PLATFORM, ImagePlan
from envbuild.image.progress import size_text
from envbuild.lock.lockfile import Lock

if TYPE_CHECKING:
    from envbuild.image.base import BaseImage
    from envbuild.image.engine import Engine
    from envbuild.image.progress import Progress

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
    digest: str | None = None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_layers: list[str] = field(default_factory=list)
    pushed: int | None = None
    already_in_registry: int | None = None
    mounted: int | None = None
    bytes_sent: int | None = None
    sbom: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Targets:
    """Where the images go."""

    push: bool = False
    oci_dir: Path | None = None
    load: bool = False
    skip_existing: bool = False


def store_for(cache_dir: Path) -> BlobStore:
    """envbuild's blob cache, beside the package cache ``cache_dir``."""
    return BlobStore(staging.scratch(cache_dir) / "blobs")


class Delivery:
    """The images of one ``envbuild image`` run, and where they go."""

    def __init__(
        self,
        lock: Lock,
        base: Callable[[], BaseImage],
        targets: Targets,
        engine: Engine | None,
        cache_dir: Path,
        log: Log,
        progress: Progress,
    ) -> None:
        self.lock, self.load_base, self.targets, self.engine = lock, base, targets, engine
        self.pulled: BaseImage | None = None
        self.cache_dir, self.log, self.progress = cache_dir, log, progress
        self.store = store_for(cache_dir)
        self.work = staging.scratch(cache_dir)
        self.platform = oci.platform_of(IMAGE_PLATFORM)
        self.layout: list[oci.Image] = []

    # --- what is there already ------------------------------------------------------------

    def _in_registry(self, plan: ImagePlan) -> bool:
        from envbuild.image import registry

        return registry.has_tag(plan.reference)

    def _in_engine(self, plan: ImagePlan) -> bool:
        return self.engine is not None and self.engine.has_image(plan.reference)

    def plan_only(self, plan: ImagePlan) -> ImageOutcome:
        """What ``deliver`` would do, doing nothing (it asks the registry and the engine)."""
        if self.targets.skip_existing and self._in_registry(plan):  # as deliver() decides
            self.log(
                f"{plan.role:<10} {plan.variant:<10} {plan.reference} is in the registry: skipped"
            )
            return ImageOutcome(plan.role, plan.variant, plan.reference, "in-registry")
        where = []
        present = []
        if self.targets.push or self.targets.skip_existing:
            where.append("the registry")
            present.append(self._in_registry(plan))
        if self.targets.load:
            where.append("the engine")
            present.append(self._in_engine(plan))
        done = bool(present) and all(present)
        split = f"{len(plan.split.shared)} shared packages, {len(plan.split.variant)} of its own"
        state = f"in {' and '.join(where)}" if done else "would be built"
        self.log(f"{plan.role:<10} {plan.variant:<10} {plan.reference}: {state} ({split})")
        status: Status = "up-to-date" if done else "planned"
        return ImageOutcome(plan.role, plan.variant, plan.reference, status)

    # --- assembling and delivering --------------------------------------------------------

    def deliver(self, plan: ImagePlan) -> ImageOutcome:
        started = time.perf_counter()
        if self.targets.skip_existing and self._in_registry(plan):
            self.log(
                f"{plan.role:<10} {plan.variant:<10} {plan.reference} is in the registry: skipped"
            )
            return ImageOutcome(plan.role, plan.variant, plan.reference, "in-registry")
        push = self.targets.push
        load = self.targets.load and not self._in_engine(plan)
        layout = self.targets.oci_dir is not None
        if not (push or load or layout):
            self.log(
                f"{plan.role:<10} {plan.variant:<10} {plan.reference} is up to date: nothing built"
            )
            return ImageOutcome(plan.role, plan.variant, plan.reference, "up-to-date")
        tars = staging.write_layers(
            self.lock, plan, work=self.work, cache_dir=self.cache_dir, runtime=runtime.files()
        )
        outcome = ImageOutcome(plan.role, plan.variant, plan.reference, "built")
        outcome.layers = {
            name: {"size": t.size, "sha256": t.sha256, "files": t.files} for name, t in tars.items()
        }
        if push or layout:
            total = sum(t.size for t in tars.values())
            with self.progress.task(f"{plan.role}: writing layers", total) as advance:
                layers = layers_of(plan, tars, self.store, advance)
            image = assemble(plan, layers, self.base(), self.platform)
            outcome.digest = image.digest
            if push:
                self._push(plan, image, outcome)
            if layout:
                self.layout.append(self._with_base_layers(image))
        if load:
            self._load(plan, tars, outcome)
        outcome.seconds = time.perf_counter() - started
        outcome.image_layers = [
            layer.diff_id for layer in (*self.base().layers, *layers_of(plan, tars, None))
        ]
        sizes = ", ".join(f"{n} {size_text(t.size)}" for n, t in tars.items())
        self.log(
            f"{plan.role:<10} {plan.variant:<10} built {plan.reference} ({sizes}) "
            f"in {outcome.seconds:.1f} s"
        )
        return outcome

    def base(self) -> BaseImage:
        """The base: its manifest and config (resolved once)."""
        return self.pulled or self.load_base()

    def _base(self) -> BaseImage:
        """The base with its layers' bytes here (pulled once)."""
        from envbuild.image.base import fetch_layers

        base = self.base()
        missing = [layer.blob.size for layer in base.layers if layer.path is None]
        if missing:
            with self.progress.task(f"pulling the base {base.name}", sum(missing)) as advance:
                base = fetch_layers(base, self.store, advance)
        self.pulled = base
        return base

    def _with_base_layers(self, image: oci.Image) -> oci.Image:
        base = self._base()
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
            for found in self._base().layers:
                if found.blob.digest == layer.blob.digest and found.path is not None:
                    return found.path
            raise AssertionError(layer.blob.digest)

        result = push_image(
            image,
            repository,
            store=self.store,
            base_repository=self.base().repository,
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

    def _load(self, plan: ImagePlan, tars: dict[str, staging.Layer], outcome: ImageOutcome) -> None:
        assert self.engine is not None
        image = assemble(plan, layers_of(plan, tars, None), self._base(), self.platform)
        handle, name = tempfile.mkstemp(dir=self.work, prefix="load-", suffix=".tar")
        os.close(handle)
        archive = Path(name)
        try:
            oci.write_archive(archive, image, [plan.reference])
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
