"""The SBOM of a role image, from the lock alone (pure): CycloneDX 1.6 JSON.

CycloneDX rather than SPDX 2.3 because the document can be the same bytes on every machine:
SPDX 2.3 requires a creation time and a unique document namespace, so each build would ship
a different file and change the role layer's digest, where CycloneDX leaves both optional
(the serial number here is derived from the content). CycloneDX also has a ``container``
component for the image and its base, ``properties`` for the role and variant, purl for
every package, and a JSON schema of its own that the tests validate against; scanners
(trivy, grype) read it, and it travels as an OCI artifact of type
``application/vnd.cyclonedx+json``.

Every conda package of the image (the role's target on the image's platform: the shared and
variant layers) is a ``library`` component with its name, version, build, channel URL,
sha256, license and package URL (``pkg:conda/NAME@VERSION?build=...&channel=...&subdir=...
&type=...``); every PyPI wheel one with its name, version, file name, URL and sha256
(``pkg:pypi/NAME@VERSION?file_name=...``); the base image is a ``container`` component by
digest (``pkg:oci/...``).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from envbuild.lock.lockfile import LockedPackage
from envbuild.lock.wheels import LockedWheel

MEDIA_TYPE = "application/vnd.cyclonedx+json"
FILE_NAME = "sbom.cdx.json"
SPEC_VERSION = "1.6"
_SPDX_EXPRESSION = re.compile(r"^\(?[A-Za-z0-9.+-]+\)?(?: (?:AND|OR|WITH) \(?[A-Za-z0-9.+-]+\)?)*$")


def _encode(text: str) -> str:
    return quote(text, safe="")


def conda_purl(package: LockedPackage) -> str:
    """``pkg:conda/numpy@1.26.4?build=...&channel=...&subdir=linux-64&type=conda``."""
    kind = "conda" if package.file_name.endswith(".conda") else "tar.bz2"
    qualifiers = {
        "build": package.build,
        "channel": package.channel,
        "subdir": package.subdir,
        "type": kind,
    }
    query = "&".join(f"{k}={_encode(v)}" for k, v in sorted(qualifiers.items()) if v)
    return f"pkg:conda/{_encode(package.name.lower())}@{_encode(package.version)}?{query}"


def pypi_purl(wheel: LockedWheel) -> str:
    """``pkg:pypi/xarray@2026.2.0?file_name=xarray-2026.2.0-py3-none-any.whl``."""
    name = wheel.name.lower().replace("_", "-")
    return f"pkg:pypi/{_encode(name)}@{_encode(wheel.version)}?file_name={_encode(wheel.file_name)}"


def oci_purl(repository: str | None, name: str, digest: str, tag: str | None) -> str:
    """``pkg:oci/debian@sha256%3A...?repository_url=docker.io/library/debian&tag=...``."""
    last = (repository or name).rstrip("/").rsplit("/", 1)[-1].lower() or "base"
    qualifiers = {}
    if repository:
        qualifiers["repository_url"] = repository
    if tag:
        qualifiers["tag"] = tag
    query = "&".join(f"{k}={_encode(v)}" for k, v in sorted(qualifiers.items()))
    return f"pkg:oci/{_encode(last)}@{_encode(digest)}" + (f"?{query}" if query else "")


def _licenses(package: LockedPackage) -> list[dict[str, Any]]:
    text = (package.license or "").strip()
    if not text:
        return []
    if _SPDX_EXPRESSION.match(text):
        return [{"expression": text}]
    return [{"license": {"name": text}}]


def _component(package: LockedPackage, layer: str) -> dict[str, Any]:
    purl = conda_purl(package)
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": purl,
        "name": package.name,
        "version": package.version,
        "purl": purl,
        "hashes": [{"alg": "SHA-256", "content": package.sha256}],
        "externalReferences": [{"type": "distribution", "url": package.url}],
        "properties": [
            {"name": "conda:build", "value": package.build},
            {"name": "conda:channel", "value": package.channel},
            {"name": "conda:subdir", "value": package.subdir},
            {"name": "envbuild:layer", "value": layer},
        ],
    }
    licenses = _licenses(package)
    if licenses:
        component["licenses"] = licenses
    return component


def _wheel_component(wheel: LockedWheel, layer: str) -> dict[str, Any]:
    purl = pypi_purl(wheel)
    return {
        "type": "library",
        "bom-ref": purl,
        "name": wheel.name,
        "version": wheel.version,
        "purl": purl,
        "hashes": [{"alg": "SHA-256", "content": wheel.sha256}],
        "externalReferences": [{"type": "distribution", "url": wheel.url}],
        "properties": [
            {"name": "pypi:file_name", "value": wheel.file_name},
            {"name": "envbuild:layer", "value": layer},
        ],
    }


def render_sbom(
    *,
    name: str,
    role: str,
    variant: str,
    platform: str,
    lock_digest: str,
    layers: Mapping[str, Sequence[LockedPackage]],
    base: str,
    base_digest: str | None,
    base_repository: str | None = None,
    base_tag: str | None = None,
    wheels: Mapping[str, Sequence[LockedWheel]] | None = None,
) -> str:
    """The image's SBOM: ``layers`` (layer name -> its packages), ``wheels`` (layer name ->
    its PyPI wheels), the base by digest."""
    image = {
        "type": "container",
        "bom-ref": "image",
        "name": f"{name}-{role}",
        "version": variant,
        "description": f"The {role} of the {name} Dask cluster ({variant}, {platform})",
        "properties": [
            {"name": "envbuild:role", "value": role},
            {"name": "envbuild:variant", "value": variant},
            {"name": "envbuild:platform", "value": platform},
            {"name": "envbuild:lock", "value": lock_digest},
        ],
    }
    components: list[dict[str, Any]] = []
    if base_digest:
        purl = oci_purl(base_repository, base, base_digest, base_tag)
        components.append(
            {
                "type": "container",
                "bom-ref": "base",
                "name": base,
                "version": base_digest,
                "purl": purl,
                "hashes": [{"alg": "SHA-256", "content": base_digest.removeprefix("sha256:")}],
                "properties": [{"name": "envbuild:layer", "value": "base"}],
            }
        )
    for layer, packages in layers.items():
        components += [_component(p, layer) for p in sorted(packages, key=lambda p: p.name)]
    for layer, found in (wheels or {}).items():
        components += [_wheel_component(w, layer) for w in sorted(found, key=lambda w: w.name)]
    document: dict[str, Any] = {
        "$schema": f"http://cyclonedx.org/schema/bom-{SPEC_VERSION}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "tools": {"components": [{"type": "application", "name": "envbuild"}]},
            "component": image,
        },
        "components": components,
        "dependencies": [{"ref": "image", "dependsOn": [c["bom-ref"] for c in components]}],
    }
    content = json.dumps(document, sort_keys=True).encode()
    serial = uuid.UUID(bytes=hashlib.sha256(content).digest()[:16], version=5)
    document["serialNumber"] = f"urn:uuid:{serial}"
    return json.dumps(document, indent=2) + "\n"
