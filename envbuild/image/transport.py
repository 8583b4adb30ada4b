"""HTTP for the registry client (``registry``): http.client under rules envbuild sets itself,
because a registry is a server envbuild does not control.

- **A deadline on a whole operation** (``Clock``): every connect, send and read gets what is
  left of it (and at most ``idle`` seconds), so a server that drips its answer one byte at a
  time, or never answers, ends in time. ``ENVBUILD_REGISTRY_TIMEOUT`` (seconds, default 30).
- **Plain HTTP only to loopback** (docker treats loopback registries as insecure by default);
  every other host over HTTPS, certificates verified (the system's CAs, or ``SSL_CERT_FILE``).
- **Redirects** are followed for GET and HEAD only, at most five, and the ``Authorization``
  header goes only to the origin it was written for: a redirect to another scheme, host or
  port drops it (``Answer.crossed``), as docker and requests do.
- **Limits**: http.client's (100 header lines, 64 kB a line); bodies are read with a cap.
- **Errors** are ``TransportError`` in envbuild's own words, never text the server sent (a
  status line or header may echo the credentials back).
- Proxies: HTTPS through ``https_proxy`` (CONNECT), honouring ``no_proxy``; loopback never
  goes through a proxy. Name resolution (getaddrinfo) is the one step no deadline bounds.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envbuild.errors import RegistryError

DEFAULT_TIMEOUT = 30.0
#: The cap on a JSON answer (tokens, manifests, error documents).
JSON_LIMIT = 4 * 1024 * 1024
#: A transfer of N bytes gets the timeout plus N / MIN_RATE seconds: 256 KiB/s (2 Mbit/s) is
#: slower than any link a registry push is usable on; a stall is caught sooner by ``idle``.
MIN_RATE = 256 * 1024
MAX_REDIRECTS = 5
BLOCK = 1024 * 1024
REDIRECTS = (301, 302, 303, 307, 308)

Origin = tuple[str, str, int]


class TransportError(Exception):
    """An exchange failed; ``str()`` holds envbuild's words only, never the server's."""


class _Expired(TimeoutError):
    pass


def timeout_setting() -> float:
    """ENVBUILD_REGISTRY_TIMEOUT, in seconds."""
    text = os.environ.get("ENVBUILD_REGISTRY_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 86400:
        raise RegistryError("ENVBUILD_REGISTRY_TIMEOUT must be a number of seconds (0 to 86400)")
    return seconds


class Clock:
    """The deadline of one operation."""

    def __init__(self, seconds: float | None = None, *, idle: float | None = None) -> None:
        self.seconds = timeout_setting() if seconds is None else seconds
        self.idle = idle or self.seconds
        self.end = time.monotonic() + self.seconds

    @classmethod
    def for_transfer(cls, size: int) -> Clock:
        """A deadline proportional to ``size`` bytes; each read or write still ends after
        the timeout without progress."""
        base = timeout_setting()
        return cls(base + size / MIN_RATE, idle=base)

    def budget(self) -> float:
        """Seconds the next blocking step may take; _Expired once the deadline passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise _Expired
        return min(left, self.idle)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str, said: str = "the registry pointed at") -> Origin:
    """(scheme, host, port) of ``url``; TransportError (``said`` what) for what is not
    https, or http on loopback."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise TransportError(f"{said} a malformed URL") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        raise TransportError(f"{said} a URL that is not http(s)")
    if scheme == "http" and not is_loopback(host):
        raise TransportError(
            f"{said} a host other than loopback over plain HTTP: refused (only loopback "
            "registries and their loopback token services may use plain HTTP)"
        )
    return scheme, host, port or (443 if scheme == "https" else 80)


@dataclass(frozen=True)
class FileBody:
    """``length`` bytes of ``path`` from ``offset``, streamed, as a request body."""

    path: Path
    offset: int
    length: int
    progress: Any = None  # Callable[[int], None] | None: bytes sent, each increment

    def blocks(self) -> Iterator[bytes]:
        with self.path.open("rb") as source:
            source.seek(self.offset)
            left = self.length
            while left > 0:
                block = source.read(min(BLOCK, left))
                if not block:
                    raise TransportError(f"{self.path} is shorter than its declared size")
                left -= len(block)
                yield block
                if self.progress is not None:
                    self.progress(len(block))


Body = bytes | FileBody | None


class _Socket:
    """A connection's socket whose every send and receive gets what is left of the clock."""

    def __init__(self, sock: socket.socket, owner: _Timed) -> None:
        self.sock, self.owner = sock, owner

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self), 65536)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), 65536):  # a TLS socket's timeout is per write
            self.sock.settimeout(self.owner.clock.budget())
            self.sock.sendall(view[start : start + 65536])

    def close(self) -> None:
        self.sock.close()


class _Reader(io.RawIOBase):
    """The socket's own reader (which keeps the socket open until the response is done with
    it, as http.client expects), each read bounded by the clock."""

    def __init__(self, timed: _Socket) -> None:
        self.timed = timed
        self.raw = timed.sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.timed.sock.settimeout(self.timed.owner.clock.budget())
        return int(self.raw.readinto(buffer) or 0)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _Timed:
    clock: Clock


class _HTTP(http.client.HTTPConnection, _Timed):
    def connect(self) -> None:
        self.timeout = self.clock.budget()
        super().connect()
        self.sock = _Socket(self.sock, self)


class _HTTPS(http.client.HTTPSConnection, _Timed):
    def connect(self) -> None:
        self.timeout = self.clock.budget()
        super().connect()
        self.sock = _Socket(self.sock, self)


Connection = _HTTP | _HTTPS


class Answer:
    """A response: status and headers read; the body is read with ``read`` or ``blocks``
    (capped), and ``close`` hands the connection back."""

    def __init__(
        self, transport: Transport, key: Origin, connection: Connection, response: Any, url: str
    ) -> None:
        self.transport, self.key, self.connection = transport, key, connection
        self.response: http.client.HTTPResponse = response
        self.status: int = response.status
        self.url = url
        self._closed = False
        #: a redirect led to another origin: the credentials were left behind
        self.crossed = False

    def header(self, name: str) -> str:
        return str(self.response.getheader(name) or "").strip()

    def length(self) -> int | None:
        """The Content-Length the server declared, if a sane one."""
        text = self.header("Content-Length")
        return int(text) if text.isdigit() and len(text) < 19 else None

    def read(self, limit: int = JSON_LIMIT) -> bytes:
        """The whole body; TransportError when it is longer than ``limit``."""
        return b"".join(self.blocks(limit))

    def blocks(self, limit: int) -> Iterator[bytes]:
        """The body, block by block; TransportError once more than ``limit`` bytes come."""
        declared = self.length()
        if declared is not None and declared > limit:
            self.close()
            raise TransportError(f"the registry's answer is larger than {_size(limit)}")
        total = 0
        with guarded(self.connection.clock):
            while block := self.response.read(min(BLOCK, limit + 1 - total)):
                total += len(block)
                if total > limit:
                    self.close()
                    raise TransportError(f"the registry's answer is larger than {_size(limit)}")
                yield block
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        response = self.response
        if not response.isclosed() and response.length == 0:
            response.read()
        reusable = response.isclosed() and not response.will_close
        response.close()
        if reusable:
            self.transport.give_back(self.key, self.connection)
        else:
            self.connection.close()

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"


@contextlib.contextmanager
def guarded(clock: Clock) -> Iterator[None]:
    """Turn what http.client and sockets raise into TransportError, in envbuild's words."""
    try:
        yield
    except TransportError:
        raise
    except (TimeoutError, OSError, http.client.HTTPException) as exc:  # TLS errors are OSErrors
        raise TransportError(_reason(exc, clock)) from None
    except ValueError:  # http.client refuses a header value with a line break in it
        raise TransportError("a request header would hold a line break: not sent") from None


def _reason(exc: BaseException, clock: Clock) -> str:
    if isinstance(exc, _Expired) or (isinstance(exc, TimeoutError) and clock.expired):
        return f"no complete answer within {clock.seconds:.0f} s (ENVBUILD_REGISTRY_TIMEOUT)"
    if isinstance(exc, TimeoutError):
        return f"the registry sent nothing for {clock.idle:.0f} s (ENVBUILD_REGISTRY_TIMEOUT)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the registry's TLS certificate cannot be verified ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return "the TLS handshake with the registry failed"
    if isinstance(exc, socket.gaierror):
        return "cannot reach the registry (its name does not resolve)"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the registry closed the connection without answering"
    if isinstance(exc, http.client.LineTooLong):
        return "the registry sent a header line longer than 64 kB"
    if isinstance(exc, http.client.BadStatusLine):
        return "the registry's answer is not HTTP (a malformed status line)"
    if isinstance(exc, http.client.IncompleteRead):
        return "the registry's answer was cut short"
    if isinstance(exc, http.client.HTTPException):
        return "the registry's answer is malformed HTTP (more than 100 headers, or worse)"
    if isinstance(exc, ConnectionRefusedError):
        return "cannot reach the registry (connection refused)"
    if isinstance(exc, ConnectionError):
        return "the connection to the registry broke"
    return f"cannot reach the registry ({getattr(exc, 'strerror', None) or type(exc).__name__})"


class Transport:
    """Connections kept open per origin (thread-safe: borrowed, then given back)."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[Connection]] = {}
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context()

    def request(
        self, clock: Clock, method: str, url: str, headers: Mapping[str, str], body: Body = None
    ) -> Answer:
        """One request, redirects followed for GET and HEAD (see the module's rules)."""
        sending, crossed = dict(headers), False
        for _ in range(MAX_REDIRECTS + 1):
            answer = self._once(clock, method, url, sending, body)
            location = answer.header("Location")
            if answer.status not in REDIRECTS or method not in ("GET", "HEAD") or not location:
                answer.crossed = crossed
                return answer
            answer.close()
            target = urllib.parse.urljoin(url, location)
            if origin(target) != origin(url):
                crossed = True
                sending = {k: v for k, v in sending.items() if k.lower() != "authorization"}
            url = target
        raise TransportError(f"the registry redirected more than {MAX_REDIRECTS} times")

    def _once(
        self, clock: Clock, method: str, url: str, headers: dict[str, str], body: Body
    ) -> Answer:
        key = origin(url)
        parts = urllib.parse.urlsplit(url)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        if isinstance(body, FileBody):
            headers = {**headers, "Content-Length": str(body.length)}
        for attempt in (1, 2):
            connection, reused = self._borrow(key, clock)
            try:
                with guarded(clock):
                    try:
                        payload = body.blocks() if isinstance(body, FileBody) else body
                        connection.request(method, target, body=payload, headers=headers)
                        response = connection.getresponse()
                    except (ConnectionResetError, BrokenPipeError):  # RemoteDisconnected too
                        if reused and attempt == 1:
                            connection.close()
                            continue  # the server closed a kept-alive connection: once more
                        raise
            except TransportError:
                connection.close()
                raise
            return Answer(self, key, connection, response, url)
        raise AssertionError("unreachable")

    def _borrow(self, key: Origin, clock: Clock) -> tuple[Connection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            connection = idle.pop() if idle else None
        reused = connection is not None
        if connection is None:
            connection = self._connect(key)
        connection.clock = clock
        return connection, reused

    def _connect(self, key: Origin) -> Connection:
        scheme, host, port = key
        if scheme == "http":
            return _HTTP(host, port, blocksize=BLOCK)
        proxy = _proxy_for(host, port)
        if proxy is None:
            return _HTTPS(host, port, context=self._tls, blocksize=BLOCK)
        connection = _HTTPS(
            proxy.hostname or "", proxy.port or 80, context=self._tls, blocksize=BLOCK
        )
        tunnel = {}
        if proxy.username:
            login = f"{urllib.parse.unquote(proxy.username)}:"
            login += urllib.parse.unquote(proxy.password or "")
            tunnel["Proxy-Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        connection.set_tunnel(host, port, headers=tunnel)
        return connection

    def give_back(self, key: Origin, connection: Connection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(connection)

    def close(self) -> None:
        with self._lock:
            for connections in self._idle.values():
                for connection in connections:
                    connection.close()
            self._idle.clear()


def _proxy_for(host: str, port: int) -> urllib.parse.SplitResult | None:
    """The https_proxy to reach ``host`` through, unless no_proxy names it; a proxy URL
    without a scheme is taken as http://."""
    if is_loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    found = proxies.get("https")
    if not found or urllib.request.proxy_bypass(f"{host}:{port}"):
        return None
    parts = urllib.parse.urlsplit(found if "://" in found else f"http://{found}")
    if parts.scheme != "http" or not parts.hostname:
        raise TransportError("https_proxy must be an http:// proxy URL")
    return parts


def receive(
    answer: Answer,
    limit: int,
    digest: str,
    destination: Path,
    progress: Callable[[int], None] | None,
    what: str,
) -> None:
    """The blob's body into a file beside ``destination``, renamed into place once its
    sha256 is ``digest``."""
    handle, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    temporary = Path(name)
    hasher = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as output:
            for block in answer.blocks(limit):
                output.write(block)
                hasher.update(block)
                if progress is not None:
                    progress(len(block))
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise RegistryError(f"{what}: its content does not match its digest: refused")
        temporary.replace(destination)
    except TransportError as exc:
        raise RegistryError(f"{what}: {exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
