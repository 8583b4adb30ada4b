"""Asking a registry whether it has a tag: references, credentials, and the token dance,
against a small registry API served here (the network edge); and blob downloads that a
registry redirects elsewhere, or that do not end."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from envbuild.errors import RegistryError
from envbuild.image.credentials import Credential, lookup
from envbuild.image.registry import has_tag, parse_reference

USER, PASSWORD = "robot", "pa55-not-printed"


@pytest.mark.parametrize(
    ("reference", "registry", "repository", "tag"),
    [
        (
            "127.0.0.1:5000/dask-gpu:worker-cuda-12.4-abc",
            "127.0.0.1:5000",
            "dask-gpu",
            "worker-cuda-12.4-abc",
        ),
        ("ghcr.io/org/dask-gpu:client-cpu-1", "ghcr.io", "org/dask-gpu", "client-cpu-1"),
        ("org/dask-gpu:x", "docker.io", "org/dask-gpu", "x"),
        ("python:3.11", "docker.io", "library/python", "3.11"),
        ("localhost:5000/a/b", "localhost:5000", "a/b", "latest"),
    ],
)
def test_references(reference: str, registry: str, repository: str, tag: str) -> None:
    parsed = parse_reference(reference)
    assert (parsed.registry, parsed.repository, parsed.tag) == (registry, repository, tag)


class _Registry(BaseHTTPRequestHandler):
    """/v2/ with bearer tokens: HEAD of a manifest answers 401 and a challenge until the
    client brings the token /token gives to the right basic credentials."""

    tags: ClassVar[dict[str, set[str]]] = {"dask-gpu": {"worker-1"}}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if (
                self.headers.get("Authorization") != expected
                or "scope=repository%3Adask-gpu%3Apull" not in self.path
            ):
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"token": "t0ken"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        if self.headers.get("Authorization") != "Bearer t0ken":
            self.send_response(401)
            realm = f"http://{self.headers['Host']}/token"
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="test",scope="x"')
            self.end_headers()
            return
        _, _, repository, _, tag = self.path.split("/", 4)
        self.send_response(200 if tag in self.tags.get(repository, set()) else 404)
        self.end_headers()


@pytest.fixture
def served() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _config(folder: Path, monkeypatch: pytest.MonkeyPatch, registry: str, user: str = USER) -> None:
    folder.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)


def test_a_tag_is_found_through_the_token_exchange(
    served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path / "docker", monkeypatch, served)
    assert has_tag(f"{served}/dask-gpu:worker-1") is True
    assert has_tag(f"{served}/dask-gpu:worker-2") is False


def test_refused_credentials_are_one_line_without_them(
    served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path / "docker", monkeypatch, served, user="intruder")
    with pytest.raises(RegistryError) as caught:
        has_tag(f"{served}/dask-gpu:worker-1")
    message = str(caught.value)
    assert "cannot tell whether the registry has" in message and "refused" in message
    assert "docker login" in message
    assert PASSWORD not in message and "intruder" not in message


def test_an_unreachable_registry_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="cannot reach the registry"):
        has_tag("127.0.0.1:9/dask-gpu:x")


def test_credentials_come_from_the_environment_or_a_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    monkeypatch.setenv(
        "DOCKER_AUTH_CONFIG",
        json.dumps({"auths": {"registry.example.com": {"username": "gitlab", "password": "x"}}}),
    )
    assert lookup("registry.example.com") == Credential("gitlab", "x")
    assert lookup("other.example.com") is None
    # A credential helper, as docker login with a credsStore leaves it.
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        '#!/bin/sh\nread server\necho "{\\"Username\\": \\"h\\", \\"Secret\\": \\"s-$server\\"}"\n'
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"credHelpers": {"ghcr.io": "fake"}}))
    assert lookup("ghcr.io") == Credential("h", "s-ghcr.io")


def test_docker_hub_and_helper_identity_tokens_are_read_as_docker_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    hub = base64.b64encode(b"hubuser:hubpass").decode()
    monkeypatch.setenv(
        "DOCKER_AUTH_CONFIG", json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": hub}}})
    )
    for spelling in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert lookup(spelling) == Credential("hubuser", "hubpass")
    # what docker-py hands the engine: Docker Hub under its index URL
    from envbuild.image.credentials import engine_auth

    assert engine_auth("docker.io") == {
        "username": "hubuser",
        "password": "hubpass",
        "serveraddress": "https://index.docker.io/v1/",
    }
    assert engine_auth("ghcr.io") == {}
    # a helper answering Username "<token>" holds an identity token (docker's convention)
    helper = tmp_path / "bin" / "docker-credential-acr"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\necho \'{"Username": "<token>", "Secret": "refresh-me"}\'\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"credHelpers": {"x.azurecr.io": "acr"}}))
    assert lookup("x.azurecr.io") == Credential(identity_token="refresh-me")  # noqa: S106
    assert engine_auth("x.azurecr.io") == {
        "identitytoken": "refresh-me",
        "serveraddress": "x.azurecr.io",
    }


# --- blobs: a redirect to another origin, and a body longer than the blob --------------------

BLOB = b"layer bytes " * 1000
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
ENDLESS_DIGEST = "sha256:" + "e" * 64


class _Storage(BaseHTTPRequestHandler):
    """Another origin (a CDN a registry sends blob downloads to): records what it is sent."""

    seen: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization") or "")
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)


class _BlobRegistry(BaseHTTPRequestHandler):
    """Basic auth; the blob BLOB_DIGEST redirects to the storage; ENDLESS_DIGEST is a
    chunked body that does not end."""

    protocol_version = "HTTP/1.1"
    storage = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="blobs"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.endswith(BLOB_DIGEST):
            self.send_response(307)
            self.send_header("Location", f"http://{self.storage}/signed/blob?sig=1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                return


@pytest.fixture
def blob_servers() -> Iterator[tuple[str, str]]:
    storage = ThreadingHTTPServer(("127.0.0.1", 0), _Storage)
    registry = ThreadingHTTPServer(("127.0.0.1", 0), _BlobRegistry)
    _BlobRegistry.storage = f"127.0.0.1:{storage.server_address[1]}"
    _Storage.seen.clear()
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (storage, registry)]
    for thread in threads:
        thread.start()
    try:
        yield f"127.0.0.1:{registry.server_address[1]}", _BlobRegistry.storage
    finally:
        for server in (storage, registry):
            server.shutdown()
            server.server_close()


def test_a_blob_download_redirected_to_another_origin_gets_no_credentials(
    blob_servers: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envbuild.image.registry import Registry

    address, _ = blob_servers
    _config(tmp_path / "docker", monkeypatch, address)
    with Registry.open(f"{address}/dask-gpu") as registry:
        registry.get_blob(BLOB_DIGEST, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert _Storage.seen == [""]


def test_a_blob_longer_than_its_descriptor_says_is_cut_off_and_refused(
    blob_servers: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envbuild.image.registry import Registry

    address, _ = blob_servers
    _config(tmp_path / "docker", monkeypatch, address)
    folder = tmp_path / "downloads"
    folder.mkdir()
    with Registry.open(f"{address}/dask-gpu") as registry:
        with pytest.raises(RegistryError, match="larger than 1000000 bytes"):
            registry.get_blob(ENDLESS_DIGEST, folder / "blob", size=1_000_000)
        # without a size from a descriptor, a blob of no declared size is not taken at all
        with pytest.raises(RegistryError, match="did not say the blob's size"):
            registry.get_blob(ENDLESS_DIGEST, folder / "blob")
    assert list(folder.iterdir()) == []
