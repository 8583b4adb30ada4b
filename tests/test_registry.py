"""Asking a registry whether it has a tag: references, credentials, and the token dance,
against a small registry API served here (the network edge)."""

from __future__ import annotations

import base64
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
