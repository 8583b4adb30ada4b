"""The push and pull primitives (``envbuild.image.registry.Registry``) against Debian's
``docker-registry`` (distribution 2.8) on 127.0.0.1: blobs pushed once, mounted across
repositories, uploaded in chunks, manifests stored and read back, and downloads checked
against their digest."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envbuild.errors import RegistryError
from envbuild.image.registry import Registry

from .conftest import require

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


@pytest.fixture(scope="module")
def running() -> Iterator[Any]:
    """Debian's registry, started for this module (envbuild.testing.docker.Registry)."""
    from envbuild.testing import docker as local_docker

    require(shutil.which("docker-registry") is not None, "Debian's docker-registry is needed")
    with local_docker.registry() as registry:
        yield registry


@pytest.fixture
def served(running: Any) -> str:
    """The registry's address."""
    return str(running.address)


@pytest.fixture
def anonymous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials anywhere (the registry here asks for none)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)


def _blob(folder: Path, name: str, size: int, seed: bytes) -> tuple[Path, str]:
    """A file of ``size`` bytes that no other test writes, and its digest."""
    path = folder / name
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    with path.open("wb") as output:
        left = size
        while left > 0:
            output.write(block[:left])
            left -= len(block[:left])
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _sent(registry: Registry, digest: str, path: Path, size: int) -> tuple[bool, int]:
    """push_blob's answer and the bytes it read from the file to send."""
    sent: list[int] = []
    return registry.push_blob(digest, path, size, sent.append), sum(sent)


def test_a_blob_is_pushed_once_and_the_second_push_sends_nothing(
    served: str, tmp_path: Path, anonymous: None
) -> None:
    path, digest = _blob(tmp_path, "layer", 300_000, b"once")
    with Registry.open(f"{served}/once") as registry:
        assert registry.has_blob(digest) is False
        assert _sent(registry, digest, path, 300_000) == (True, 300_000)
        assert registry.has_blob(digest) is True
        assert _sent(registry, digest, path, 300_000) == (False, 0)
        registry.get_blob(digest, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == path.read_bytes()


def test_a_blob_above_the_chunk_size_goes_up_in_chunks_and_comes_back_whole(
    served: str, tmp_path: Path, anonymous: None
) -> None:
    size = 3 * 1024 * 1024 + 12345
    path, digest = _blob(tmp_path, "big", size, b"chunks")
    increments: list[int] = []
    with Registry.open(f"{served}/chunked") as registry:
        registry.chunk_size = 1024 * 1024  # four PATCHes and a closing PUT
        assert registry.push_blob(digest, path, size, increments.append) is True
        received: list[int] = []
        registry.get_blob(digest, tmp_path / "back", received.append, size=size)
    assert sum(increments) == size and sum(received) == size
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest[7:]


def test_a_blob_is_mounted_from_another_repository_without_sending_it(
    served: str, tmp_path: Path, anonymous: None
) -> None:
    path, digest = _blob(tmp_path, "shared", 200_000, b"mount")
    with Registry.open(f"{served}/scheduler") as source:
        assert source.push_blob(digest, path, 200_000) is True
    with Registry.open(f"{served}/worker") as target:
        assert target.has_blob(digest) is False
        assert target.mount_blob(digest, f"{served}/scheduler") is True
        assert target.has_blob(digest) is True
        assert _sent(target, digest, path, 200_000) == (False, 0)
        # a blob the source does not have is not mounted: the caller uploads it
        _, unknown = _blob(tmp_path, "unknown", 1000, b"nowhere")
        assert target.mount_blob(unknown, "scheduler") is False
        assert target.has_blob(unknown) is False


def test_a_manifest_goes_up_and_comes_back_by_tag_and_by_digest(
    served: str, tmp_path: Path, anonymous: None
) -> None:
    layer, layer_digest = _blob(tmp_path, "layer", 5000, b"layer")
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    (tmp_path / "config").write_bytes(config)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": 5000,
                }
            ],
        },
        sort_keys=True,
    ).encode()
    with Registry.open(f"{served}/roundtrip") as registry:
        registry.push_blob(config_digest, tmp_path / "config", len(config))
        registry.push_blob(layer_digest, layer, 5000)
        assert registry.has_tag("v1") is False
        assert registry.manifest_digest("v1") is None
        digest = registry.put_manifest("v1", manifest, OCI_MANIFEST)
        assert digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
        assert registry.has_tag("v1") is True
        assert registry.manifest_digest("v1") == digest
        assert registry.get_manifest("v1") == (manifest, OCI_MANIFEST, digest)
        assert registry.get_manifest(digest) == (manifest, OCI_MANIFEST, digest)
        # pushed by its own digest (as a referrer or an index entry is), found by it
        assert registry.put_manifest(digest, manifest, OCI_MANIFEST) == digest
        with pytest.raises(RegistryError, match="does not match that digest"):
            registry.put_manifest("sha256:" + "0" * 64, manifest, OCI_MANIFEST)


def test_a_tampered_blob_is_refused_and_nothing_is_left_behind(
    running: Any, tmp_path: Path, anonymous: None
) -> None:
    served = running.address
    path, digest = _blob(tmp_path, "honest", 100_000, b"tamper")
    with Registry.open(f"{served}/tampered") as registry:
        registry.push_blob(digest, path, 100_000)
        hexdigest = digest.split(":")[1]
        blobs = running.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
        stored = blobs / hexdigest[:2] / hexdigest / "data"
        data = bytearray(stored.read_bytes())
        data[50_000] ^= 0xFF  # the same size, one byte changed on the registry's disk
        stored.write_bytes(bytes(data))
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        with pytest.raises(RegistryError, match="does not match its digest"):
            registry.get_blob(digest, downloads / "layer")
        # a download capped below what the registry sends is refused too
        with pytest.raises(RegistryError, match="another size"):
            registry.get_blob(digest, downloads / "layer", size=99_999)
    assert list(downloads.iterdir()) == []


def test_a_repository_that_is_not_a_name_is_refused_before_any_request() -> None:
    for name in ("127.0.0.1:5000/../etc", "127.0.0.1:5000/UPPER", "127.0.0.1:5000/a b"):
        with pytest.raises(RegistryError, match="not a valid image repository name"):
            Registry.open(name)


def test_blobs_are_pushed_from_several_threads_through_one_registry(
    served: str, tmp_path: Path, anonymous: None
) -> None:
    """What an image push does with its layers: one Registry, uploads side by side."""
    from concurrent.futures import ThreadPoolExecutor

    blobs = [_blob(tmp_path, f"layer-{n}", 100_000 + n, f"thread-{n}".encode()) for n in range(6)]
    with Registry.open(f"{served}/threads") as registry:
        with ThreadPoolExecutor(3) as pool:
            sent = list(
                pool.map(lambda b: registry.push_blob(b[1], b[0], b[0].stat().st_size), blobs)
            )
        assert sent == [True] * 6
        assert all(registry.has_blob(digest) for _, digest in blobs)
