"""One source of registry credentials for every path that talks to a registry (issue 16 item
10): Debian's ``docker-registry`` with a password (htpasswd) on 127.0.0.1, the login given
only in ``DOCKER_AUTH_CONFIG`` (which docker-py never reads by itself) under a key spelled
``http://HOST/``; envbuild's own client and the engine's push both get in with it."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from envbuild.errors import RegistryError
from envbuild.image.registry import Registry, has_tag

from .conftest import require

USER, PASSWORD = "pusher", "FAKE-registry-password-41c9"


@contextlib.contextmanager
def _password_registry() -> Iterator[str]:
    """docker-registry asking for USER/PASSWORD (basic auth, htpasswd with bcrypt)."""
    from envbuild.testing import docker as local_docker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the standard library's, through libxcrypt (bcrypt): 3.11 and 3.12

    folder = Path(tempfile.mkdtemp(prefix="envbuild-registry-login-"))
    salt = crypt.mksalt(crypt.METHOD_BLOWFISH)  # noqa: S324 - bcrypt, as htpasswd wants
    (folder / "htpasswd").write_text(f"{USER}:{crypt.crypt(PASSWORD, salt)}\n")
    port = local_docker.free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        f"auth: {{htpasswd: {{realm: envbuild-test, path: {folder / 'htpasswd'}}}}}\n"
    )
    with (folder / "log").open("wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(folder / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        local_docker._wait(lambda: _answers(port), "docker-registry", 30, folder / "log")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _answers(port: int) -> bool:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status == 401
    except OSError:
        return False
    finally:
        connection.close()


@pytest.fixture(scope="module")
def registry_address() -> Iterator[str]:
    require(shutil.which("docker-registry") is not None, "Debian's docker-registry is needed")
    with _password_registry() as address:
        yield address


def _login_only_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, address: str, password: str = PASSWORD
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    monkeypatch.setenv(
        "DOCKER_AUTH_CONFIG", json.dumps({"auths": {f"http://{address}/": {"auth": auth}}})
    )


def test_envbuilds_client_logs_in_with_docker_auth_config(
    registry_address: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reference = f"{registry_address}/tiny:absent"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)
    with pytest.raises(RegistryError, match="refused") as refused:
        has_tag(reference)
    assert PASSWORD not in str(refused.value)
    _login_only_in_the_environment(monkeypatch, tmp_path, registry_address)
    assert has_tag(reference) is False
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 1000)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    with Registry.open(f"{registry_address}/tiny") as registry:
        assert registry.push_blob(digest, blob, 1000) is True
