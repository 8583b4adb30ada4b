"""Images without an engine: OCI documents (pure, golden), the SBOM against CycloneDX's
schema, and end to end (no engine running) on Debian's docker-registry, then pulled and run
by a real engine."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from envbuild.env import runtime
from envbuild.image import oci
from envbuild.image.assemble import assemble
from envbuild.image.base import BaseImage, parse_base
from envbuild.image.plan import ImageSettings, plan_image
from envbuild.image.sbom import conda_purl

from .test_imageplan import GOLDEN, UPDATE, golden_lock

SETTINGS = ImageSettings(
    base="debian:bookworm-slim",
    repository="registry.example.com/dask-gpu",
    base_digest="sha256:" + "b" * 64,
)
#: A base as Debian's images are: one layer, PATH in its environment, a label.
BASE_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"],
        "Cmd": ["bash"],
        "Labels": {"vendor": "debian", "org.opencontainers.image.title": "debian"},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 64]},
    "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "debuerreotype"}],
}
BASE = BaseImage(
    name="debian:bookworm-slim",
    digest="sha256:" + "b" * 64,
    config=BASE_CONFIG,
    layers=(
        oci.Layer(
            oci.Descriptor(oci.LAYER_GZIP, "sha256:" + "e" * 64, 29_000_000), "sha256:" + "d" * 64
        ),
    ),
    repository="docker.io/library/debian",
)
AMD64 = oci.platform_of("linux-64")


def _fake_layers(role: str) -> list[oci.Layer]:
    """Stand-ins for the staged layers: digests of their names."""
    found = []
    for name in ("shared", "variant", "role"):
        key = name if name != "role" else f"role-{role}"
        blob = "sha256:" + hashlib.sha256(f"blob {key}".encode()).hexdigest()
        diff = "sha256:" + hashlib.sha256(f"tar {key}".encode()).hexdigest()
        found.append(
            oci.Layer(oci.Descriptor(oci.LAYER_GZIP, blob, 1000), diff, f"envbuild: {name}")
        )
    return found


def _image(role: str) -> tuple[oci.Image, Any]:
    plan = plan_image(golden_lock(), role, SETTINGS, runtime.files())
    return assemble(plan, _fake_layers(role), BASE, AMD64), plan


@pytest.mark.parametrize("role", ["client", "scheduler", "worker"])
def test_config_and_manifest_golden(role: str) -> None:
    image, _ = _image(role)
    for name, data in (
        (f"config.{role}.json", image.config),
        (f"manifest.{role}.json", image.manifest),
    ):
        golden = GOLDEN / name
        if UPDATE:
            golden.write_bytes(data)
        assert data == golden.read_bytes(), f"{name} changed: review, then ENVBUILD_UPDATE_GOLDEN=1"
    assert _image(role)[0].digest == image.digest  # the same inputs, the same bytes


def test_the_config_is_the_base_with_the_role_on_top() -> None:
    image, plan = _image("worker")
    config = json.loads(image.config)
    settings = config["config"]
    env = dict(entry.split("=", 1) for entry in settings["Env"])
    assert (
        env["PATH"] == "/opt/env/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    assert env["LANG"] == "C"  # the base's variables stay
    assert env["ENVBUILD_ROLE"] == "worker" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert settings["User"] == "1000:1000" and settings["WorkingDir"] == "/home/dask"
    assert settings["Entrypoint"] == ["/opt/envbuild/entrypoint.sh"]
    assert settings["Cmd"] == ["dask", "worker", "--preload", "envbuild.dask"]  # not bash
    assert settings["Labels"]["vendor"] == "debian"
    assert settings["Labels"]["org.opencontainers.image.title"] == "dask-gpu-worker"
    assert settings["Labels"]["org.opencontainers.image.base.digest"] == BASE.digest
    assert config["rootfs"]["diff_ids"][0] == "sha256:" + "d" * 64
    assert len(config["rootfs"]["diff_ids"]) == len(config["history"]) == 4
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    manifest = json.loads(image.manifest)
    assert manifest["annotations"][oci.BASE_DIGEST] == BASE.digest
    assert manifest["layers"][0]["digest"] == BASE.layers[0].blob.digest
    assert plan.tag.startswith("worker-cuda-12.4-")


def test_a_moved_base_gives_new_tags_and_another_platform_is_refused() -> None:
    lock = golden_lock()
    moved = dataclasses.replace(SETTINGS, base_digest="sha256:" + "c" * 64)
    for role in ("client", "scheduler", "worker"):
        before = plan_image(lock, role, SETTINGS, runtime.files())
        after = plan_image(lock, role, moved, runtime.files())
        assert before.tag != after.tag
        assert "@sha256:" + "c" * 64 in after.dockerfile.splitlines()[3]  # FROM, pinned
    arm = dataclasses.replace(BASE, config={**BASE_CONFIG, "architecture": "arm64"})
    plan = plan_image(lock, "worker", SETTINGS, runtime.files())
    with pytest.raises(Exception, match="base image is for linux/arm64, not linux/amd64"):
        assemble(plan, _fake_layers("worker"), arm, AMD64)


def test_layer_blobs_are_reproducible_gzip(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(bytes(range(256)) * 64 + b"the same bytes\n" * 1000)
    first = oci.compress(layer, tmp_path / "one.gz")
    assert first == oci.compress(layer, tmp_path / "two.gz")
    blob = (tmp_path / "one.gz").read_bytes()
    assert blob[3] == 0 and blob[4:8] == b"\0\0\0\0"  # no file name, mtime 0
    assert gzip.decompress(blob) == layer.read_bytes()
    # What zlib's deflate at level 1 gives on every machine: a zlib that compresses
    # differently (zlib-ng's compat library) gives other blob digests, not other images.
    assert first == (
        "sha256:ecf5a188d704cd74ab51d4479023bca12ce09fb74d1c076c60a83c1d3bc8e5f8",
        608,
    ), f"zlib {zlib.ZLIB_RUNTIME_VERSION} compresses differently"


def test_base_references() -> None:
    hub = parse_base("debian:bookworm-slim")
    assert (hub.repository, hub.tag, hub.digest) == (
        "docker.io/library/debian",
        "bookworm-slim",
        None,
    )
    pinned = parse_base("ghcr.io/org/base@sha256:" + "a" * 64)
    assert (pinned.repository, pinned.tag, pinned.digest) == (
        "ghcr.io/org/base",
        None,
        "sha256:" + "a" * 64,
    )
    local = parse_base("127.0.0.1:5000/envbuild-demo/base:bookworm")
    assert (local.repository, local.tag) == ("127.0.0.1:5000/envbuild-demo/base", "bookworm")
    layout = parse_base("oci:../build/base:bookworm", Path("/work/spec"))
    assert (layout.layout, layout.tag) == (Path("/work/spec/../build/base"), "bookworm")
    assert parse_base("oci:/srv/base").tag is None


def test_the_sbom_validates_and_lists_every_package_with_its_purl() -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    lock = golden_lock()
    for role in ("client", "worker"):
        plan = plan_image(lock, role, SETTINGS, runtime.files())
        errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(plan.sbom)
        assert errors is None, errors
        document = json.loads(plan.sbom)
        libraries = [c for c in document["components"] if c["type"] == "library"]
        packages = lock.role_target(role, "linux-64").packages
        assert sorted(c["name"] for c in libraries) == sorted(p.name for p in packages)
        by_name = {p.name: p for p in packages}
        for component in libraries:
            package = by_name[component["name"]]
            assert component["hashes"] == [{"alg": "SHA-256", "content": package.sha256}]
            purl = PackageURL.from_string(component["purl"])
            assert (purl.type, purl.name, purl.version) == ("conda", package.name, package.version)
            assert purl.qualifiers["build"] == package.build
            assert purl.qualifiers["channel"] == package.channel
            assert purl.qualifiers["subdir"] == package.subdir
            assert component["purl"] == conda_purl(package)
        base = next(c for c in document["components"] if c["type"] == "container")
        assert base["version"] == SETTINGS.base_digest
        properties = {
            p["name"]: p["value"] for p in document["metadata"]["component"]["properties"]
        }
        assert properties["envbuild:role"] == role
        assert properties["envbuild:variant"] == lock.role(role).variant
        assert plan_image(lock, role, SETTINGS, runtime.files()).sbom == plan.sbom


def test_an_oci_layout_names_each_image_by_its_tag(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    images = []
    for role in ("scheduler", "worker"):
        image, _ = _image(role)
        layers = []
        for layer in image.layers:
            path = blobs / layer.blob.digest[7:]
            path.write_bytes(b"not really " + layer.blob.digest.encode())
            layers.append(dataclasses.replace(layer, path=path))
        images.append(dataclasses.replace(image, layers=tuple(layers)))
    layout = tmp_path / "layout"
    oci.write_layout(layout, images[:1])
    oci.write_layout(layout, images[1:])  # added; the scheduler stays
    index = json.loads((layout / "index.json").read_text())
    names = [m["annotations"][oci.REF_NAME] for m in index["manifests"]]
    assert names == [images[0].tag, images[1].tag]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for image in images:
        manifest = layout / "blobs" / "sha256" / image.digest[7:]
        assert manifest.read_bytes() == image.manifest
