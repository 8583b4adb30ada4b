"""A hostile registry for the registry client's tests: real HTTP servers on loopback, written
on raw sockets so that they can misbehave as ``http.server`` cannot (garbage status lines,
endless bodies, one byte every few seconds, no answer at all).

- ``Registry``: the registry API (``/v2/REPO/manifests/TAG``) and its token endpoint
  (``/token``, ``/oauth2/token``), answering as its ``mode`` says (see ``MODES``).
- ``Decoy``: another origin a redirect points at; records every ``Authorization`` it gets and
  accepts any of them (so a leaked credential "works", as it would for an attacker).
- ``Proxy``: an HTTP proxy standing in for a non-loopback host (``registry.example.invalid``)
  that the machine cannot resolve: a client honouring ``http_proxy`` sends it what it would
  send to that host; it records every ``Authorization`` and hands out a token for one.

Every secret here is fake and recognisable (``SECRETS``); tests assert none is ever printed.
Servers run in daemon threads of the test process and stop (every connection closed) on
``close()``; nothing is left running.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
import urllib.parse
from dataclasses import dataclass

USER = "envbuild-robot"
PASSWORD = "FAKE-PASSWORD-hostile-7f3a9c"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
#: The bearer token /token gives for the right basic credentials.
TOKEN = "FAKE-BEARER-TOKEN-hostile-c41d07"
#: An ``identitytoken`` login (ACR, Docker Desktop): a refresh token for the OAuth2 POST.
IDENTITY_TOKEN = "FAKE-IDENTITY-REFRESH-TOKEN-9b2e55"
#: What /oauth2/token gives for the identity token.
ACCESS_TOKEN = "FAKE-OAUTH-ACCESS-TOKEN-5a80e1"
#: A token a hostile token endpoint gives, with a header line smuggled in.
CRLF_TOKEN = "FAKE-CRLF-TOKEN-3d6f\r\nX-Smuggled: FAKE-SMUGGLED-HEADER-8e21"
SECRETS = (
    PASSWORD,
    BASIC,
    TOKEN,
    IDENTITY_TOKEN,
    ACCESS_TOKEN,
    "FAKE-CRLF-TOKEN-3d6f",
    "FAKE-SMUGGLED-HEADER-8e21",
)
#: What a well-behaved registry says its manifests' digest is.
DIGEST = "sha256:" + hashlib.sha256(b"a manifest").hexdigest()
REMOTE_HOST = "registry.example.invalid"
SERVICE = "hostile-registry"
LIMIT_HEAD = 65536

BASIC_MODES = frozenset(
    (
        "basic-ok",
        "redirect-307-port",
        "redirect-302-host",
        "many-headers",
        "long-header",
        "garbage-status",
        "drip-headers",
        "bogus-digest",
    )
)
#: mode -> what the registry does. "after auth": once the client brings the right
#: credentials (basic, or the bearer token), before that a 401 challenge.
MODES = {
    # well-behaved, for the credential tests
    "basic-ok": "basic challenge; after auth 200 with DIGEST",
    "bearer-ok": "bearer challenge, loopback realm /token (GET, basic credentials); 200",
    "identity-ok": "bearer challenge, realm /oauth2/token: only an OAuth2 POST with "
    "grant_type=refresh_token and IDENTITY_TOKEN gets ACCESS_TOKEN; 200",
    # item 6: credentials after a redirect
    "redirect-307-port": "basic; after auth 307 to the decoy on 127.0.0.1, another port",
    "redirect-302-host": "basic; after auth 302 to the decoy on 127.0.0.2, the same port",
    "redirect-307-bearer-host": "bearer (loopback realm); after auth 307 to 127.0.0.2",
    # item 7
    "remote-plain-realm": f"bearer challenge whose realm is http://{REMOTE_HOST}/token; the "
    "bearer token handed out there opens the manifest (200)",
    # item 8: answers the standard library chokes on
    "many-headers": "after auth 200 with 500 header lines",
    "long-header": "after auth 200 with one 200 kB header line",
    "garbage-status": "after auth a status line that is not HTTP, echoing the credentials",
    "token-list": "bearer; /token answers a JSON list",
    "token-crlf": "bearer; /token answers a token with CRLF and a header line in it",
    # item 9: hangs and unbounded reads
    "token-endless": "bearer; /token answers 200 and a body that never ends",
    "token-huge": "bearer; /token answers a 5 MiB JSON document (a valid token inside)",
    "drip-headers": "after auth the answer's head, one byte every 5 s",
    "silent": "accepts the connection, reads the request, never answers",
    # the digest a deployment is pinned to
    "bogus-digest": "after auth 200 with Docker-Content-Digest set to Registry.digest",
}


@dataclass
class Seen:
    """One request a server received."""

    method: str
    target: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


class _Connection:
    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.stopping = stopping

    def send(self, data: bytes) -> bool:
        """False once the client has gone or the server stops. A slow reader is waited for."""
        view = memoryview(data)
        while view:
            if self.stopping.is_set():
                return False
            try:
                sent = self.sock.send(view[:65536])
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
        return True

    def wait(self, seconds: float) -> bool:
        """Sleep; False when the server stops meanwhile."""
        return not self.stopping.wait(seconds)

    def read_request(self) -> Seen | None:
        data = b""
        while b"\r\n\r\n" not in data:
            if self.stopping.is_set() or len(data) > LIMIT_HEAD:
                return None
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, *_ = [*lines[0].split(" "), "", ""]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(body) < min(length, LIMIT_HEAD):
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                if self.stopping.is_set():
                    return None
                continue
            except OSError:
                return None
            if not chunk:
                break
            body += chunk
        return Seen(method, target, headers, body)


def _response(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    if body or not any(k.lower() == "content-length" for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _json(document: object, status: str = "200 OK") -> bytes:
    return _response(status, [("Content-Type", "application/json")], json.dumps(document).encode())


class _Server:
    """A TCP server on ``host``; ``answer(connection, request)`` writes each response."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.host, self.port = host, self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    def authorizations(self) -> list[str]:
        """Every Authorization header this server received."""
        with self.lock:
            return [s.headers["authorization"] for s in self.seen if "authorization" in s.headers]

    def close(self) -> None:
        self.stopping.set()
        self._thread.join(5)
        self.listener.close()
        with self.lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(0.5)
            with self.lock:
                self._open.append(sock)
            threading.Thread(target=self._handle, args=(sock,), daemon=True).start()

    def _handle(self, sock: socket.socket) -> None:
        connection = _Connection(sock, self.stopping)
        try:
            request = connection.read_request()
            if request is None:
                return
            with self.lock:
                self.seen.append(request)
            self.answer(connection, request)
        finally:
            with self.lock:
                if sock in self._open:
                    self._open.remove(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def answer(self, connection: _Connection, request: Seen) -> None:
        raise NotImplementedError


class Decoy(_Server):
    """Another origin: 401 with a basic challenge to a request without credentials, 200 with
    DIGEST to one with any (the attacker takes what it is given)."""

    def answer(self, connection: _Connection, request: Seen) -> None:
        if "authorization" in request.headers:
            connection.send(_response("200 OK", [("Docker-Content-Digest", DIGEST)]))
        else:
            connection.send(
                _response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="decoy"')])
            )


class Proxy(_Server):
    """An HTTP proxy that is the only way to REMOTE_HOST: hands out TOKEN for any credentials
    (what a token endpoint an attacker controls would do), 401 without."""

    def answer(self, connection: _Connection, request: Seen) -> None:
        if "authorization" in request.headers:
            connection.send(_json({"token": TOKEN}))
        else:
            connection.send(_response("401 Unauthorized", []))


class Registry(_Server):
    """The registry on 127.0.0.1; ``set_mode`` (one of MODES) before each command."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.mode = "basic-ok"
        #: Docker-Content-Digest in mode bogus-digest.
        self.digest = DIGEST
        #: Set by the test: the decoy on another port of 127.0.0.1, and the one on 127.0.0.2.
        self.decoy_port: Decoy | None = None
        self.decoy_host: Decoy | None = None
        #: Hostile answers that went out (mode names), so that a test knows it got that far.
        self.served: list[str] = []

    def set_mode(self, mode: str, *, digest: str = DIGEST) -> None:
        assert mode in MODES, mode
        self.reset()
        self.mode, self.digest = mode, digest
        with self.lock:
            self.served.clear()

    def _served(self, what: str) -> None:
        with self.lock:
            self.served.append(what)

    def answer(self, connection: _Connection, request: Seen) -> None:
        path = urllib.parse.urlsplit(request.target).path
        if self.mode == "silent":
            self._served("silent")
            connection.wait(3600)
        elif path in ("/token", "/oauth2/token"):
            self._token(connection, request)
        elif path == "/v2/" or path.startswith("/v2/"):
            self._manifest(connection, request, path)
        else:
            connection.send(_response("404 Not Found", []))

    # --- the manifest --------------------------------------------------------------------------

    def _challenge(self) -> str:
        if self.mode in BASIC_MODES:
            return 'Basic realm="hostile"'
        if self.mode == "remote-plain-realm":
            realm = f"http://{REMOTE_HOST}/token"
        elif self.mode == "identity-ok":
            realm = f"http://{self.address}/oauth2/token"
        else:
            realm = f"http://{self.address}/token"
        return f'Bearer realm="{realm}",service="{SERVICE}",scope="repository:dask-gpu:pull"'

    def _authorized(self, request: Seen) -> bool:
        given = request.headers.get("authorization", "")
        if self.mode == "identity-ok":
            return given == f"Bearer {ACCESS_TOKEN}"
        if self._challenge().startswith("Basic"):
            return given == f"Basic {BASIC}"
        return given == f"Bearer {TOKEN}"

    def _manifest(self, connection: _Connection, request: Seen, path: str) -> None:
        if not self._authorized(request):
            connection.send(
                _response("401 Unauthorized", [("WWW-Authenticate", self._challenge())])
            )
            return
        mode = self.mode
        ok = [("Docker-Content-Digest", DIGEST)]
        if mode.startswith("redirect-"):
            decoy = self.decoy_port if mode == "redirect-307-port" else self.decoy_host
            assert decoy is not None, "the test did not start the decoys"
            status = "302 Found" if "302" in mode else "307 Temporary Redirect"
            self._served(mode)
            connection.send(_response(status, [("Location", f"http://{decoy.address}{path}")]))
        elif mode == "many-headers":
            self._served(mode)
            junk = [(f"X-Junk-{n}", "x") for n in range(500)]
            connection.send(_response("200 OK", [*junk, *ok]))
        elif mode == "long-header":
            self._served(mode)
            connection.send(_response("200 OK", [("X-Junk", "x" * 200_000), *ok]))
        elif mode == "garbage-status":
            self._served(mode)
            echoed = request.headers.get("authorization", "")
            connection.send(f"EVIL/9 {echoed} not http at all\r\n\r\n".encode("latin-1"))
        elif mode == "drip-headers":
            self._served(mode)
            for byte in _response("200 OK", ok):
                if not connection.send(bytes([byte])) or not connection.wait(5):
                    return
        elif mode == "bogus-digest":
            self._served(mode)
            connection.send(_response("200 OK", [("Docker-Content-Digest", self.digest)]))
        else:
            connection.send(_response("200 OK", ok))

    # --- the token endpoint --------------------------------------------------------------------

    def _token(self, connection: _Connection, request: Seen) -> None:
        mode = self.mode
        if mode == "identity-ok":
            connection.send(self._oauth2(request))
        elif mode == "token-list":
            self._served(mode)
            connection.send(_json([{"token": TOKEN}]))
        elif mode == "token-crlf":
            self._served(mode)
            connection.send(_json({"token": CRLF_TOKEN}))
        elif mode == "token-huge":
            self._served(mode)
            connection.send(_json({"token": TOKEN, "padding": "x" * (5 * 1024 * 1024)}))
        elif mode == "token-endless":
            self._served(mode)
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            if not connection.send(head.encode() + b'{"token": "'):
                return
            # 3.2 MB/s: a client without a cap grows without end, but slowly enough that the
            # machine running the test does not notice before the test gives up.
            while connection.send(b"a" * 65536) and connection.wait(0.02):
                pass
        elif request.headers.get("authorization") == f"Basic {BASIC}":
            connection.send(_json({"token": TOKEN}))
        else:
            connection.send(_response("401 Unauthorized", []))

    def _oauth2(self, request: Seen) -> bytes:
        """Only the OAuth2 refresh-token grant docker uses for identity tokens."""
        form = urllib.parse.parse_qs(request.body.decode("latin-1"))
        scope = " ".join(form.get("scope", []))
        if (
            request.method == "POST"
            and form.get("grant_type") == ["refresh_token"]
            and form.get("refresh_token") == [IDENTITY_TOKEN]
            and form.get("service") == [SERVICE]
            and "repository:dask-gpu:pull" in scope
        ):
            return _json({"access_token": ACCESS_TOKEN, "expires_in": 300})
        return _json({"errors": [{"code": "UNAUTHORIZED"}]}, "401 Unauthorized")


def auth_config(registry: str, kind: str, key: str | None = None) -> dict[str, object]:
    """A Docker config document holding this module's credentials for ``registry``:
    ``auth`` (base64 user:password), ``username`` (username and password fields),
    ``identitytoken``, or ``helper`` (credHelpers naming docker-credential-hostile, which
    ``write_helper`` writes). ``key`` is how the registry is spelled (default: as is)."""
    key = key or registry
    if kind == "auth":
        return {"auths": {key: {"auth": BASIC}}}
    if kind == "username":
        return {"auths": {key: {"username": USER, "password": PASSWORD}}}
    if kind == "identitytoken":
        return {"auths": {key: {"identitytoken": IDENTITY_TOKEN}}}
    if kind == "identitytoken-acr":
        # az acr login / Docker Desktop: a placeholder user, no password, the refresh token
        placeholder = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()
        return {"auths": {key: {"auth": placeholder, "identitytoken": IDENTITY_TOKEN}}}
    if kind == "helper":
        return {"credHelpers": {key: "hostile"}}
    raise ValueError(kind)


def helper_script() -> str:
    """docker-credential-hostile: ``get`` answers the credentials for any server."""
    answer = json.dumps({"ServerURL": "", "Username": USER, "Secret": PASSWORD})
    return f"#!/bin/sh\ncat >/dev/null\necho '{answer}'\n"
