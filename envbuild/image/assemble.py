"""A role image assembled from its plan, its layer tars and its base: config, manifest and
SBOM artifact (``envbuild.image.oci`` documents), for a platform.

The layers are the staged tars (``envbuild.image.staging``), compressed into gzip blobs
(``envbuild.image.blobs``) for a registry or an image layout, or taken as they are
(uncompressed OCI layers) for an engine to load: the config, and with it the image id, is
the same either way, since it names the tars' digests (diff_ids), not the blobs'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from envbuild.image import oci
from envbuild.image.plan import ENVBUILD_DIR, ImagePlan
from envbuild.image.sbom import MEDIA_TYPE as SBOM_TYPE

if TYPE_CHECKING:
    from envbuild.image import staging
    from envbuild.image.base import BaseImage
    from envbuild.image.blobs import BlobStore

Progress = Callable[[int], None]
ORDER = ("shared", "variant", "role")


def _created_by(plan: ImagePlan, name: str) -> str:
    split = plan.split
    packages = {"shared": len(split.shared), "variant": len(split.variant)}
    wheels = {"shared": len(split.shared_wheels), "variant": len(split.variant_wheels)}
    if name == "role":
        return f"envbuild: the {plan.role}'s files (role file, entrypoint, GPU check, SBOM)"
    what = "every variant shares" if name == "shared" else f"only {plan.variant} has"
    pypi = f" and {wheels[name]} PyPI wheels" if wheels[name] else ""
    return f"envbuild: {packages[name]} packages{pypi} {what} in {plan.settings.prefix}"


def layers_of(
    plan: ImagePlan,
    tars: Mapping[str, staging.Layer],
    store: BlobStore | None,
    progress: Progress | None = None,
) -> list[oci.Layer]:
    """The role image's own layers, compressed into ``store``; with no store, uncompressed
    (for an engine to load)."""
    ordered = [tars[name] for name in ORDER]
    if store is None:
        found = [
            oci.Layer(oci.Descriptor(oci.LAYER_TAR, t.sha256, t.size), t.sha256, "", t.path, t.path)
            for t in ordered
        ]
    else:
        found = store.compress_all([(t.path, t.sha256) for t in ordered], progress)
    return [
        oci.Layer(layer.blob, layer.diff_id, _created_by(plan, name), layer.path, layer.tar)
        for name, layer in zip(ORDER, found, strict=True)
    ]


def assemble(
    plan: ImagePlan, layers: list[oci.Layer], base: BaseImage, platform: oci.Platform
) -> oci.Image:
    """The image: ``base`` with ``layers`` on top, the plan's settings, its SBOM referrer."""
    settings = plan.settings
    config = oci.document(
        oci.image_config(
            base.config,
            layers,
            platform,
            environment=plan.environment,
            labels=plan.labels,
            user=f"{settings.uid}:{settings.uid}",
            workdir=f"/home/{settings.user}",
            entrypoint=[f"{ENVBUILD_DIR}/entrypoint.sh"],
            command=plan.command,
            prefix=settings.prefix,
        )
    )
    annotations = {oci.BASE_DIGEST: base.digest, oci.BASE_NAME: base.name}
    manifest = oci.document(
        oci.image_manifest(
            oci.describe(config, oci.CONFIG),
            [*(layer.blob for layer in base.layers), *(layer.blob for layer in layers)],
            annotations,
        )
    )
    sbom = plan.sbom.encode()
    artifact = oci.document(
        oci.artifact_manifest(
            SBOM_TYPE,
            oci.describe(
                sbom, SBOM_TYPE, annotations={"org.opencontainers.image.title": "sbom.cdx.json"}
            ),
            oci.describe(manifest, oci.MANIFEST),
            {"org.opencontainers.image.created": oci.EPOCH, "io.envbuild.role": plan.role},
        )
    )
    return oci.Image(
        tag=plan.tag,
        config=config,
        manifest=manifest,
        layers=(*base.layers, *layers),
        platform=platform,
        referrers=(
            (artifact, {oci.digest_of(sbom): sbom, oci.digest_of(oci.EMPTY_BLOB): oci.EMPTY_BLOB}),
        ),
    )
