"""A registry that is not on loopback is spoken to over HTTPS only, its certificate verified
(the system's CAs, or SSL_CERT_FILE), directly or through an https_proxy (CONNECT): Debian's
``docker-registry`` with a certificate made here, on this machine's own non-loopback
address."""

from __future__ import annotations

import contextlib
import hashlib
import select
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envbuild.errors import RegistryError
from envbuild.image.registry import Registry

from .conftest import require


@dataclass(frozen=True)
class TlsRegistry:
    address: str  # IP:PORT, not loopback
    certificate: Path  # self-signed: the CA to trust


def _own_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return "127.0.0.1"
        return str(probe.getsockname()[0])


@pytest.fixture(scope="module")
def tls_registry() -> Iterator[TlsRegistry]:
    from envbuild.testing import docker as local_docker

    require(shutil.which("docker-registry") is not None, "Debian's docker-registry is needed")
    require(shutil.which("openssl") is not None, "openssl makes the test certificate")
    address = _own_address()
    require(not address.startswith("127."), "a non-loopback address is needed")
    folder = Path(tempfile.mkdtemp(prefix="envbuild-registry-tls-"))
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")),
            *("-subj", "/CN=envbuild-test", "-addext", f"subjectAltName=IP:{address}"),
        ],
        check=True,
        capture_output=True,
    )
    port = local_docker.free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: '{address}:{port}', tls: {{certificate: {folder / 'cert.pem'}, "
        f"key: {folder / 'key.pem'}}}}}\n"
    )
    with (folder / "log").open("wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(folder / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        local_docker._wait(lambda: _listening(address, port), "docker-registry", 30)
        yield TlsRegistry(f"{address}:{port}", folder / "cert.pem")
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@pytest.fixture
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for name in ("DOCKER_AUTH_CONFIG", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _round_trip(address: str, tmp_path: Path, repository: str) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"over TLS " * 5000)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    with Registry.open(f"{address}/{repository}") as registry:
        assert registry.push_blob(digest, blob, blob.stat().st_size) is True
        registry.get_blob(digest, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == blob.read_bytes()


def test_a_registry_off_loopback_is_https_with_its_certificate_verified(
    tls_registry: TlsRegistry,
    clean_environment: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        pytest.raises(RegistryError, match="certificate cannot be verified"),
        Registry.open(f"{tls_registry.address}/tls") as registry,
    ):
        registry.has_tag("x")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.certificate))
    _round_trip(tls_registry.address, tmp_path, "tls")


class _ConnectProxy:
    """An HTTP proxy that only tunnels (CONNECT), recording each target."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.targets: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            method, target, _ = head.split(b"\r\n")[0].decode().split(" ")
            self.targets.append(f"{method} {target}")
            host, _, port = target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                while not self.stopping.is_set():
                    ready, _, _ = select.select([client, upstream], [], [], 0.2)
                    for side in ready:
                        data = side.recv(65536)
                        if not data:
                            return
                        (upstream if side is client else client).sendall(data)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


def test_https_goes_through_https_proxy_and_loopback_never_does(
    tls_registry: TlsRegistry,
    clean_environment: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = _ConnectProxy()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.certificate))
        monkeypatch.setenv("https_proxy", f"http://{proxy.address}")
        _round_trip(tls_registry.address, tmp_path, "proxied")
        assert proxy.targets and set(proxy.targets) == {f"CONNECT {tls_registry.address}"}
        # no_proxy names the registry: straight to it
        proxy.targets.clear()
        monkeypatch.setenv("no_proxy", tls_registry.address.split(":")[0])
        (tmp_path / "back").unlink()
        _round_trip(tls_registry.address, tmp_path, "direct")
        assert proxy.targets == []
    finally:
        proxy.close()
