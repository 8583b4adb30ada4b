"""Pushing an assembled image to a registry, with no engine: blobs, then the manifest, then
its SBOM as an artifact that refers to it; a role's index once every platform's image is
there. The one module that opens the registry client.

Each blob is asked for first (HEAD) and sent only when the registry lacks it; the base's
layers are mounted from the base's repository when it is on the same registry (nothing
sent), else pulled once into envbuild's cache and sent. The manifest goes last, so a tag
never names an image whose blobs are missing. The SBOM artifact (``subject``: the image's
manifest) is found through the OCI 1.1 referrers API where the registry has one, and
through the ``sha256-<hex>`` tag scheme (an index of referrers under that tag) where it
does not (Debian's docker-registry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from envbuild.errors import ImagePushError, RegistryError
from envbuild.image import oci

if TYPE_CHECKING:
    from envbuild.image.blobs import BlobStore
    from envbuild.image.registry import Registry

Progress = Callable[[int], None]


def open_registry(repository: str) -> Registry:
    """The client of ``registry/repository`` (the only place that names it)."""
    from envbuild.image.registry import Registry

    return Registry.open(repository)


@dataclass
class PushResult:
    """What pushing one image did."""

    digest: str
    layers_sent: int = 0
    layers_present: int = 0
    layers_mounted: int = 0
    blobs_sent: int = 0
    bytes_sent: int = 0
    referrer: str | None = None


def _registry_of(repository: str) -> tuple[str, str]:
    host, _, path = repository.partition("/")
    return host, path


@dataclass
class _Blob:
    digest: str
    size: int
    source: Callable[[], Path]
    layer: bool
    mount_from: str | None = None


def push_image(
    image: oci.Image,
    repository: str,
    *,
    store: BlobStore,
    base_repository: str | None,
    fetch_base_layer: Callable[[oci.Layer], Path],
    progress: Callable[[str, int], Progress] | None = None,
) -> PushResult:
    """Push ``image`` as ``repository:image.tag``, then its referrers."""
    client = open_registry(repository)
    result = PushResult(image.digest)
    mount_from = None
    if base_repository and _registry_of(base_repository)[0] == _registry_of(repository)[0]:
        mount_from = _registry_of(base_repository)[1]
    config_path = store.path(store.put(image.config))
    blobs = [_layer_blob(layer, mount_from, fetch_base_layer) for layer in image.layers]
    blobs.append(_Blob(oci.digest_of(image.config), len(image.config), lambda: config_path, False))
    try:
        for number, blob in enumerate(blobs, 1):
            _push_blob(client, blob, result, progress, f"blob {number}/{len(blobs)}")
        client.put_manifest(image.tag, image.manifest, oci.MANIFEST)
        for manifest, contents in image.referrers:
            result.referrer = _push_referrer(client, image, manifest, contents, store, result)
    except RegistryError as exc:
        raise ImagePushError(f"pushing {repository}:{image.tag} failed: {exc}") from None
    finally:
        client.close()
    return result


def push_index(
    repository: str, tag: str, images: Sequence[tuple[str, str, oci.Image | None]]
) -> tuple[str | None, list[str]]:
    """Push the index of a role's images as ``repository:tag`` when the registry has every
    one: ``images`` are (platform, the image's own tag, the image when assembled in this
    run, else None: then its manifest is read from the registry by its tag). The index's
    digest, or None and the platforms whose image the registry lacks (nothing pushed)."""
    client = open_registry(repository)
    try:
        manifests, missing = [], []
        for platform, own_tag, image in images:
            if image is not None:
                manifests.append(image.descriptor)
            elif client.has_tag(own_tag):
                body, _, _ = client.get_manifest(own_tag, (oci.MANIFEST,))
                manifests.append(
                    oci.describe(body, oci.MANIFEST, platform=oci.platform_of(platform))
                )
            else:
                missing.append(platform)
        if missing:
            return None, missing
        index = oci.document(oci.image_index(manifests))
        return client.put_manifest(tag, index, oci.INDEX), []
    except RegistryError as exc:
        raise ImagePushError(f"pushing the index {repository}:{tag} failed: {exc}") from None
    finally:
        client.close()


def _layer_blob(
    layer: oci.Layer, mount_from: str | None, fetch: Callable[[oci.Layer], Path]
) -> _Blob:
    if layer.path is not None:
        path = layer.path
        return _Blob(layer.blob.digest, layer.blob.size, lambda: path, True)
    return _Blob(layer.blob.digest, layer.blob.size, lambda: fetch(layer), True, mount_from)


def _push_blob(
    client: Registry,
    blob: _Blob,
    result: PushResult,
    progress: Callable[[str, int], Progress] | None,
    label: str,
) -> None:
    if client.has_blob(blob.digest):
        result.layers_present += blob.layer
        return
    if blob.mount_from and client.mount_blob(blob.digest, blob.mount_from):
        result.layers_mounted += 1
        return
    advance = progress(f"{label} {blob.digest[7:19]}", blob.size) if progress else None
    if client.push_blob(blob.digest, blob.source(), blob.size, advance):
        result.blobs_sent += 1
        result.layers_sent += blob.layer
        result.bytes_sent += blob.size
    elif blob.layer:
        result.layers_present += 1


def referrers_tag(digest: str) -> str:
    """The tag that holds the referrers of ``digest`` where a registry has no referrers API."""
    return digest.replace(":", "-")


def _push_referrer(
    client: Registry,
    image: oci.Image,
    manifest: bytes,
    contents: Mapping[str, bytes],
    store: BlobStore,
    result: PushResult,
) -> str:
    """Push an artifact that refers to ``image`` (its blobs, then its manifest by digest),
    and make it findable from the image's digest; the artifact's digest."""
    for data in contents.values():
        digest = store.put(data)
        if client.push_blob(digest, store.path(digest), len(data), None):
            result.blobs_sent += 1
            result.bytes_sent += len(data)
    digest = client.put_manifest(oci.digest_of(manifest), manifest, oci.MANIFEST)
    if client.referrers(image.digest) is not None:
        return digest  # the registry keeps the referrers itself (OCI 1.1)
    entry = json.loads(manifest)
    descriptor = oci.describe(
        manifest,
        oci.MANIFEST,
        artifact_type=entry.get("artifactType"),
        annotations=entry.get("annotations"),
    )
    tag = referrers_tag(image.digest)
    existing = None
    if client.has_tag(tag):
        body, _, _ = client.get_manifest(tag, (oci.INDEX,))
        existing = json.loads(body)
    client.put_manifest(tag, oci.document(oci.with_referrer(existing, descriptor)), oci.INDEX)
    return digest


def find_referrers(repository: str, digest: str) -> list[oci.Descriptor]:
    """The artifacts that refer to ``digest`` in ``repository``: by the referrers API, else
    by the ``sha256-<hex>`` tag."""
    client = open_registry(repository)
    try:
        body = client.referrers(digest)
        if body is None:
            tag = referrers_tag(digest)
            if not client.has_tag(tag):
                return []
            body, _, _ = client.get_manifest(tag, (oci.INDEX,))
    finally:
        client.close()
    return [oci.Descriptor.from_dict(m) for m in json.loads(body).get("manifests", [])]
