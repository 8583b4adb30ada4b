"""The base image, by reference: from its registry, or from an OCI image layout on disk.

``image.base`` is either a registry reference (``debian:bookworm-slim``,
``ghcr.io/org/base:1``, ``...@sha256:<hex>`` pinned) or ``oci:PATH[:TAG]``, an OCI image
layout (what ``skopeo copy ... oci:PATH:TAG`` or ``envbuild image --oci`` writes; a relative
PATH is relative to the spec's folder), so tests and air-gapped machines need no registry.

Its digest (``reference_digest``) is the registry's answer to one question, a HEAD of the
tag's manifest (none for a pinned reference or a layout): it goes into the tags, labels and
SBOM of the images, so a moved tag gives new images. The manifest (this platform's, from an
index) and the config are read from envbuild's blob cache, or pulled by digest and cached.
Layers are pulled only when something needs their bytes (an image layout, an engine, another
registry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envbuild.errors import ImageBuildError, RegistryError
from envbuild.image import oci
from envbuild.image.blobs import BlobStore

Progress = Callable[[int], None]
LAYOUT_PREFIX = "oci:"
_ACCEPT = (oci.INDEX, oci.MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST)


@dataclass(frozen=True)
class BaseImage:
    """A resolved base image for one platform."""

    name: str
    #: the digest of what the reference names (a manifest, or an index of one per platform)
    digest: str
    config: Mapping[str, Any]
    layers: tuple[oci.Layer, ...]
    #: ``registry/repository`` it is pulled from; None for an image layout
    repository: str | None = None
    layout: Path | None = None


@dataclass(frozen=True)
class BaseReference:
    """``image.base`` taken apart."""

    text: str
    layout: Path | None = None
    #: ``registry/repository`` (Docker Hub's names completed)
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None


def parse_base(text: str, folder: Path | None = None) -> BaseReference:
    """``image.base`` -> what it names; ``folder``: where a relative layout path starts."""
    if text.startswith(LAYOUT_PREFIX):
        rest = text.removeprefix(LAYOUT_PREFIX)
        path, colon, tag = rest.rpartition(":")
        if not colon or "/" in tag or not path:
            path, tag = rest, ""
        layout = Path(path)
        if not layout.is_absolute() and folder is not None:
            layout = folder / layout
        return BaseReference(text, layout=layout, tag=tag or None)
    from envbuild.image.reference import parse_reference

    name, at, digest = text.partition("@")
    if at and not (digest.startswith("sha256:") and len(digest) == 71):
        raise ImageBuildError(f"image.base {text!r}: a pinned digest is sha256:<64 hex>")
    parsed = parse_reference(name)
    tagged = ":" in name.rpartition("/")[2]
    return BaseReference(
        text,
        repository=f"{parsed.registry}/{parsed.repository}",
        tag=parsed.tag if tagged or not at else None,
        digest=digest or None,
    )


def reference_digest(reference: BaseReference) -> str:
    """The digest of what ``reference`` names (a manifest, or an index of them): pinned in
    the reference, read from the layout's index, or asked of the registry (one HEAD)."""
    if reference.digest:
        return reference.digest
    if reference.layout is not None:
        return _layout_entry(reference, reference.layout).digest
    assert reference.repository is not None
    from envbuild.image.remote import open_registry

    tag = reference.tag or "latest"
    client = open_registry(reference.repository)
    try:
        digest = client.manifest_digest(tag)
        if digest == "":  # the registry did not say: its bytes do
            digest = client.get_manifest(tag, _ACCEPT)[2]
    except RegistryError as exc:
        raise ImageBuildError(f"base image {reference.text}: {exc}") from None
    finally:
        client.close()
    if digest is None:
        raise ImageBuildError(
            f"base image {reference.text} is not in its registry: push it, or fix image.base"
        )
    return digest


def resolve(
    reference: BaseReference, digest: str, platform: oci.Platform, store: BlobStore
) -> BaseImage:
    """The base named ``reference`` (as ``digest``): its manifest for ``platform`` and its
    config, pulled into the cache unless they are there."""
    if reference.layout is not None:
        return _from_layout(reference, reference.layout, digest, platform)
    assert reference.repository is not None
    from envbuild.image.remote import open_registry

    client = open_registry(reference.repository)
    where = reference.text

    def manifest(ref: str) -> bytes:
        if store.has(ref):
            return store.read(ref)
        body, _, found = client.get_manifest(ref, _ACCEPT)
        if found != ref:
            raise ImageBuildError(f"base image {where}: the registry sent {found} for {ref}")
        store.put(body)
        return body

    try:
        document = _json(manifest(digest), where)
        if "manifests" in document:
            document = _json(manifest(_platform_entry(document, platform, where)), where)
        described = oci.Descriptor.from_dict(document.get("config") or {})
        config_digest = described.digest
        config = store.fetch(
            config_digest,
            lambda path: client.get_blob(config_digest, path, size=described.size),
        )
    except RegistryError as exc:
        raise ImageBuildError(f"base image {where}: {exc}") from None
    finally:
        client.close()
    return _image(reference, digest, document, _json(config.read_bytes(), where), store)


def _image(
    reference: BaseReference,
    digest: str,
    manifest: Mapping[str, Any],
    config: Mapping[str, Any],
    store: BlobStore | None,
    layout: Path | None = None,
) -> BaseImage:
    descriptors = [oci.Descriptor.from_dict(d) for d in manifest.get("layers") or []]
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(descriptors):
        raise ImageBuildError(
            f"base image {reference.text}: {len(descriptors)} layers but "
            f"{len(diff_ids)} diff_ids in its config"
        )
    layers = []
    for blob, diff_id in zip(descriptors, diff_ids, strict=True):
        if layout is not None:
            path: Path | None = layout / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
        else:
            assert store is not None
            path = store.path(blob.digest) if store.has(blob.digest) else None
        layers.append(oci.Layer(blob, diff_id, path=path))
    return BaseImage(
        reference.text, digest, config, tuple(layers), reference.repository, reference.layout
    )


def _json(body: bytes, where: str) -> dict[str, Any]:
    try:
        found = json.loads(body)
    except ValueError:
        raise ImageBuildError(f"base image {where}: not a JSON document") from None
    if not isinstance(found, dict):
        raise ImageBuildError(f"base image {where}: not a JSON object")
    return found


def _platform_entry(index: Mapping[str, Any], platform: oci.Platform, where: str) -> str:
    entries = [oci.Descriptor.from_dict(m) for m in index.get("manifests") or []]
    for entry in entries:
        found = entry.platform
        same = found is not None and (found.os, found.architecture) == (
            platform.os,
            platform.architecture,
        )
        if (
            same
            and found
            and (platform.variant is None or found.variant in (None, platform.variant))
        ):
            return entry.digest
    have = ", ".join(f"{e.platform.os}/{e.platform.architecture}" for e in entries if e.platform)
    raise ImageBuildError(
        f"base image {where} has no {platform.os}/{platform.architecture} image "
        f"(it has: {have or 'none'})"
    )


def _layout_entry(reference: BaseReference, layout: Path) -> oci.Descriptor:
    """The image of the layout that ``reference``'s tag names (the only one, without a tag)."""
    where = reference.text
    try:
        index = _json((layout / "index.json").read_bytes(), where)
    except OSError:
        raise ImageBuildError(
            f"base image {where}: {layout} is no OCI image layout (no index.json)"
        ) from None
    entries = index.get("manifests") or []
    if reference.tag:
        entries = [
            m for m in entries if (m.get("annotations") or {}).get(oci.REF_NAME) == reference.tag
        ]
    if len(entries) != 1:
        tags = sorted(
            str((m.get("annotations") or {}).get(oci.REF_NAME))
            for m in index.get("manifests") or []
        )
        raise ImageBuildError(
            f"base image {where}: name one image of {layout} with :TAG (tags: {', '.join(tags)})"
        )
    return oci.Descriptor.from_dict(entries[0])


def _from_layout(
    reference: BaseReference, layout: Path, digest: str, platform: oci.Platform
) -> BaseImage:
    where = reference.text

    def blob(digest: str) -> bytes:
        path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        try:
            data = path.read_bytes()
        except OSError:
            raise ImageBuildError(f"base image {where}: {path} is missing") from None
        if oci.digest_of(data) != digest:
            raise ImageBuildError(f"base image {where}: {path} is not {digest}")
        return data

    document = _json(blob(digest), where)
    if "manifests" in document:
        document = _json(blob(_platform_entry(document, platform, where)), where)
    config_digest = oci.Descriptor.from_dict(document.get("config") or {}).digest
    config = _json(blob(config_digest), where)
    return _image(reference, digest, document, config, None, layout)


def fetch_layers(base: BaseImage, store: BlobStore, progress: Progress | None = None) -> BaseImage:
    """``base`` with every layer's bytes on this machine (pulled into the cache)."""
    missing = [layer for layer in base.layers if layer.path is None or not layer.path.is_file()]
    if not missing:
        return base
    if base.repository is None:
        raise ImageBuildError(f"base image {base.name}: layer {missing[0].blob.digest} is missing")
    from envbuild.image.remote import open_registry

    client = open_registry(base.repository)
    layers = []
    for layer in base.layers:
        if layer.path is None or not layer.path.is_file():
            digest, size = layer.blob.digest, layer.blob.size

            def download(path: Path, digest: str = digest, size: int = size) -> None:
                client.get_blob(digest, path, progress, size=size)

            try:
                path = store.fetch(digest, download)
            except RegistryError as exc:
                client.close()
                raise ImageBuildError(f"base image {base.name}: {exc}") from None
            layer = oci.Layer(layer.blob, layer.diff_id, layer.created_by, path)
        layers.append(layer)
    client.close()
    return BaseImage(base.name, base.digest, base.config, tuple(layers), base.repository)
