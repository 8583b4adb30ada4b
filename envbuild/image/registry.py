"""The registry API (Docker Registry HTTP API v2, OCI distribution): what a registry has, and
the primitives a push and a pull are made of, spoken directly (``transport``: http.client
under envbuild's rules: a deadline per operation, capped bodies, credentials never sent to
another origin after a redirect, plain HTTP only to loopback).

``Registry`` is one repository on one registry; its credential comes from ``credentials``
(the one source: the Docker config as docker reads it), looked up once, on the first
challenge, and never printed. Basic and bearer challenges are answered: a bearer token is
asked of the challenge's realm with the user and password (GET), or with an identity token as
an OAuth2 refresh token (POST), as docker does; tokens are kept per scope. Every failure is a
RegistryError (exit 16) in one line of envbuild's own words: no text the server sent.

Deadlines: ``ENVBUILD_REGISTRY_TIMEOUT`` seconds (default 30) per operation (a tag lookup with
its token exchange is one); a blob transfer of N bytes gets that plus N / 256 KiB/s (see
``transport.MIN_RATE``), and a push above ``chunk_size`` goes in chunks, each its own. A
Registry may be used from several threads at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from envbuild.errors import RegistryError
from envbuild.image import credentials
from envbuild.image.reference import (
    DIGEST,
    REPOSITORY,
    Reference,
    check_digest,
    check_reference,
    parse_reference,
    parse_repository,
)
from envbuild.image.transport import (
    JSON_LIMIT,
    Answer,
    Body,
    Clock,
    FileBody,
    Transport,
    TransportError,
    origin,
    receive,
)

INDEX = "application/vnd.oci.image.index.v1+json"
ALL_MANIFEST_TYPES = (
    INDEX,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
Progress = Callable[[int], None]

MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,126}/[\w.+-]{1,127}")
TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")
ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,39}")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """One repository on one registry, its credential resolved once (``credentials``)."""

    #: Blobs above this size go up in chunks of it (PATCH), each with its own deadline.
    chunk_size = 64 * 1024 * 1024

    def __init__(self, registry: str, repository: str) -> None:
        self.registry, self.repository = registry, repository
        self.name = f"{registry}/{repository}"
        self.base = Reference(registry, repository, "latest").base_url
        self._transport = Transport()
        self._lock = threading.Lock()
        self._credential: credentials.Credential | None = None
        self._looked_up = False
        self._auth: dict[str, str] = {}  # scope -> Authorization

    @classmethod
    def open(cls, repository: str) -> Registry:
        """``open("127.0.0.1:5000/dask-gpu")``; RegistryError for a malformed name."""
        return cls(*parse_repository(repository))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- manifests ------------------------------------------------------------------------------

    def manifest_digest(self, reference: str) -> str | None:
        """The digest of the manifest ``reference`` (a tag or sha256 digest) names; None when
        the registry has no such manifest. One HEAD (and a GET when the registry does not say
        the digest in Docker-Content-Digest)."""
        found = self._head_manifest(reference)
        if found == "":
            return self.get_manifest(reference)[2]
        return found

    def has_tag(self, tag: str) -> bool:
        """Whether the registry has the manifest ``tag`` (or a digest) names: one HEAD."""
        return self._head_manifest(tag) is not None

    def _head_manifest(self, reference: str) -> str | None:
        """The Docker-Content-Digest of ``reference`` ("" when not said), None if absent."""
        check_reference(reference, reference)
        what = f"cannot tell whether the registry has {self._where(reference)}"
        headers = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}
        path = f"/v2/{self.repository}/manifests/{reference}"
        with self._call(Clock(), "HEAD", path, self._scope(), what, headers) as answer:
            if answer.status == 404:
                return None
            _expect(answer, (200,), what)
            digest = answer.header("Docker-Content-Digest")
        if digest:
            if not DIGEST.fullmatch(digest):
                raise RegistryError(f"{what}: the registry answered a malformed digest")
            if DIGEST.fullmatch(reference) and digest != reference:
                raise RegistryError(f"{what}: the registry answered with another digest")
        return digest

    def get_manifest(
        self, reference: str, accept: Sequence[str] = ALL_MANIFEST_TYPES
    ) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest; the digest is the body's sha256 and must
        agree with ``reference`` when it is a digest, and with Docker-Content-Digest."""
        check_reference(reference, reference)
        what = f"cannot read the manifest {self._where(reference)}"
        headers = {"Accept": ", ".join(accept)}
        path = f"/v2/{self.repository}/manifests/{reference}"
        with self._call(Clock(), "GET", path, self._scope(), what, headers) as answer:
            _expect(answer, (200,), what)
            body = _read(answer, what)
            media_type = answer.header("Content-Type").split(";")[0].strip()
            said = answer.header("Docker-Content-Digest")
        digest = _sha256(body)
        if (said and said != digest) or (DIGEST.fullmatch(reference) and reference != digest):
            raise RegistryError(f"{what}: its content does not match its digest: refused")
        if not MEDIA_TYPE.fullmatch(media_type) or media_type == "application/json":
            media_type = _media_type_inside(body, what)
        return body, media_type, digest

    def referrers(self, digest: str) -> bytes | None:
        """The OCI 1.1 referrers index of manifest ``digest``; None when the registry has no
        referrers API (then the ``sha256-<hex>`` tag scheme holds them)."""
        what = f"cannot read the referrers of {self._where(digest)}"
        check_digest(digest, what)
        headers = {"Accept": INDEX}
        path = f"/v2/{self.repository}/referrers/{digest}"
        with self._call(Clock(), "GET", path, self._scope(), what, headers) as answer:
            kind = answer.header("Content-Type").split(";")[0].strip()
            if answer.status != 200 or kind != INDEX:
                return None
            return _read(answer, what)

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        """Store ``body`` as the manifest ``reference`` (a tag, or its own digest); its
        digest."""
        check_reference(reference, reference)
        what = f"cannot push the manifest {self._where(reference)}"
        digest = _sha256(body)
        if not MEDIA_TYPE.fullmatch(media_type) or len(body) > JSON_LIMIT:
            raise RegistryError(f"{what}: a malformed media type, or larger than 4 MiB")
        if DIGEST.fullmatch(reference) and reference != digest:
            raise RegistryError(f"{what}: the manifest's content does not match that digest")
        path = f"/v2/{self.repository}/manifests/{reference}"
        headers = {"Content-Type": media_type}
        with self._call(Clock(), "PUT", path, self._scope(push=True), what, headers, body) as put:
            _expect(put, (200, 201), what)
            said = put.header("Docker-Content-Digest")
        if said and said != digest:
            raise RegistryError(f"{what}: the registry stored it under another digest")
        return digest

    # --- blobs ----------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self._head_blob(digest, self._scope())

    def _head_blob(self, digest: str, scope: str) -> bool:
        what = f"cannot tell whether {self.name} has blob {digest[:19]}"
        check_digest(digest, what)
        path = f"/v2/{self.repository}/blobs/{digest}"
        with self._call(Clock(), "HEAD", path, scope, what) as answer:
            if answer.status == 404:
                return False
            _expect(answer, (200,), what)
            return True

    def mount_blob(self, digest: str, source_repository: str) -> bool:
        """Mount ``digest`` from another repository of the same registry (a name with or
        without the registry); False when the registry did not (then upload it)."""
        what = f"cannot mount blob {digest[:19]} into {self.name}"
        check_digest(digest, what)
        first, _, rest = source_repository.partition("/")
        if first == self.registry:
            source = rest
        elif rest and (any(c in first for c in ".:") or first == "localhost"):
            return False  # another registry: nothing to mount from
        else:
            source = source_repository
        if not REPOSITORY.fullmatch(source) or source == self.repository:
            return False
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        path = f"/v2/{self.repository}/blobs/uploads/?{query}"
        scope = f"{self._scope(push=True)} repository:{source}:pull"
        clock = Clock()
        with self._call(clock, "POST", path, scope, what, {"Content-Length": "0"}) as answer:
            if answer.status == 201:
                return True
            _expect(answer, (202,), what)
            location = answer.header("Location")
        if location:  # an upload session was opened instead: cancelled, best effort
            with contextlib.suppress(RegistryError, TransportError):
                url = urllib.parse.urljoin(answer.url, location)
                self._call(clock, "DELETE", url, scope, what).close()
        return False

    def push_blob(
        self, digest: str, path: Path, size: int, progress: Progress | None = None
    ) -> bool:
        """Upload ``size`` bytes of ``path`` as ``digest`` unless the repository has it (a
        HEAD first); True when sent. Streamed from the file: one PUT, or PATCHes of
        ``chunk_size`` and a closing PUT above it. ``progress`` gets each increment sent."""
        what = f"cannot push blob {digest[:19]} to {self.name}"
        check_digest(digest, what)
        scope = self._scope(push=True)
        if self._head_blob(digest, scope):
            return False
        if path.stat().st_size != size:
            raise RegistryError(f"{what}: {path} does not hold {size} bytes")
        octets = {"Content-Type": "application/octet-stream"}
        start = f"/v2/{self.repository}/blobs/uploads/"
        with self._call(Clock(), "POST", start, scope, what, {"Content-Length": "0"}) as opened:
            _expect(opened, (202,), what)
            location = _location(opened, what)
        offset = 0
        while size > self.chunk_size and offset < size:
            length = min(self.chunk_size, size - offset)
            chunk = FileBody(path, offset, length, progress)
            ranged = {**octets, "Content-Range": f"{offset}-{offset + length - 1}"}
            clock = Clock.for_transfer(length)
            with self._call(clock, "PATCH", location, scope, what, ranged, chunk) as patched:
                _expect(patched, (202,), what)
                location = _location(patched, what)
            offset += length
        body: Body = FileBody(path, 0, size, progress) if offset == 0 else b""
        clock = Clock.for_transfer(size - offset)
        put = _with_query(location, [("digest", digest)])
        with self._call(clock, "PUT", put, scope, what, octets, body) as done:
            _expect(done, (201, 204), what)
            said = done.header("Docker-Content-Digest")
        if said and said != digest:
            raise RegistryError(f"{what}: the registry stored it under another digest")
        return True

    def get_blob(
        self,
        digest: str,
        destination: Path,
        progress: Progress | None = None,
        *,
        size: int | None = None,
    ) -> None:
        """Download blob ``digest`` to ``destination``: streamed, never more than ``size``
        bytes (the descriptor's; else the declared Content-Length), its sha256 checked, then
        renamed into place (nothing is left at ``destination`` when it fails)."""
        what = f"cannot download blob {digest[:19]} from {self.name}"
        check_digest(digest, what)
        path = f"/v2/{self.repository}/blobs/{digest}"
        clock = Clock.for_transfer(size) if size is not None else Clock()
        with self._call(clock, "GET", path, self._scope(), what) as answer:
            _expect(answer, (200,), what)
            declared = answer.length()
            if declared is None and size is None:
                raise RegistryError(f"{what}: the registry did not say the blob's size")
            if size is not None and declared is not None and declared != size:
                raise RegistryError(f"{what}: the registry's blob has another size")
            limit = size if size is not None else int(declared or 0)
            if size is None:  # the transfer's deadline, now that its size is known
                answer.connection.clock = Clock.for_transfer(limit)
            receive(answer, limit, digest, destination, progress, what)

    # --- requests -------------------------------------------------------------------------------

    def _where(self, reference: str) -> str:
        return str(Reference(self.registry, self.repository, reference))

    def _scope(self, *, push: bool = False) -> str:
        return f"repository:{self.repository}:{'pull,push' if push else 'pull'}"

    def _call(
        self,
        clock: Clock,
        method: str,
        target: str,
        scope: str,
        what: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
    ) -> Answer:
        """A request with what the registry asks for: sent with the authorization an earlier
        challenge gave for ``scope``, and once more after a 401 with a fresh one. Nothing of
        the kind goes to a URL of another origin (an upload location elsewhere)."""
        url = target if "://" in target else self.base + target
        ours = _origin(url, what) == _origin(self.base, what)
        sending = dict(headers or {})
        if ours and scope in self._auth:
            sending["Authorization"] = self._auth[scope]
        answer = self._send(clock, method, url, sending, body, what)
        if answer.status != 401 or answer.crossed or not ours:
            return answer
        challenge = answer.header("WWW-Authenticate")
        answer.close()  # its status stays, for the caller to report
        authorization = self._authorize(clock, challenge, scope, what)
        if authorization is None:
            return answer
        sending["Authorization"] = authorization
        return self._send(clock, method, url, sending, body, what)

    def _send(
        self, clock: Clock, method: str, url: str, headers: dict[str, str], body: Body, what: str
    ) -> Answer:
        try:
            return self._transport.request(clock, method, url, headers, body)
        except TransportError as exc:
            raise RegistryError(f"{what}: {exc}") from None

    def _authorize(self, clock: Clock, challenge: str, scope: str, what: str) -> str | None:
        """The Authorization that answers ``challenge``; None when there is none to give."""
        scheme, _, rest = challenge.partition(" ")
        fields = {k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]*)', rest)}
        with self._lock:
            if not self._looked_up:
                self._credential, self._looked_up = credentials.lookup(self.registry), True
        credential = self._credential
        if scheme.lower() == "basic":
            value = credential.basic() if credential else None
        elif scheme.lower() == "bearer" and fields.get("realm"):
            value = "Bearer " + self._token(clock, fields, scope, what)
        else:
            value = None
        if value is not None:
            with self._lock:
                self._auth[scope] = value
        return value

    def _token(self, clock: Clock, fields: dict[str, str], scope: str, what: str) -> str:
        """A bearer token from the challenge's realm (only http(s); plain HTTP only on
        loopback, as ``transport.origin`` rules)."""
        realm, credential = fields["realm"], self._credential
        _origin(realm, what, "the registry's token service is at")
        service = {"service": fields["service"]} if fields.get("service") else {}
        if credential is not None and credential.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credential.identity_token,
                "client_id": "envbuild",
                "scope": scope,
                **service,
            }
            body = urllib.parse.urlencode(form).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            answer = self._send(clock, "POST", realm, headers, body, what)
        else:
            query = [("scope", part) for part in scope.split(" ")] + list(service.items())
            basic = credential.basic() if credential else None
            headers = {"Authorization": basic} if basic else {}
            answer = self._send(clock, "GET", _with_query(realm, query), headers, None, what)
        with answer:
            if answer.status in (401, 403):
                raise RegistryError(
                    f"{what}: the registry's token service refused (HTTP {answer.status}): log "
                    "in (docker login) or set DOCKER_AUTH_CONFIG"
                )
            _expect(answer, (200,), f"{what}: the registry's token service")
            document = _json(_read(answer, what))
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            raise RegistryError(f"{what}: the registry's token service answered no usable token")
        return token


def _origin(url: str, what: str, said: str = "the registry pointed at") -> tuple[str, str, int]:
    try:
        return origin(url, said)
    except TransportError as exc:
        raise RegistryError(f"{what}: {exc}") from None


def _read(answer: Answer, what: str) -> bytes:
    try:
        return answer.read(JSON_LIMIT)
    except TransportError as exc:
        raise RegistryError(f"{what}: {exc}") from None


def _json(body: bytes) -> dict[str, object]:
    try:
        found = json.loads(body)
    except ValueError:
        found = None
    return found if isinstance(found, dict) else {}


def _media_type_inside(body: bytes, what: str) -> str:
    found = _json(body).get("mediaType")
    if not isinstance(found, str) or not MEDIA_TYPE.fullmatch(found):
        raise RegistryError(f"{what}: the registry did not say the manifest's media type")
    return found


def _expect(answer: Answer, good: tuple[int, ...], what: str) -> None:
    """RegistryError naming the status (and the registry's error code, one of the API's
    upper-case words) unless ``answer`` has a ``good`` one."""
    status = answer.status
    if status in good:
        return
    code = ""
    if answer.header("Content-Type").startswith("application/json"):
        with contextlib.suppress(TransportError):
            errors = _json(answer.read(65536)).get("errors")
            first = errors[0] if isinstance(errors, list) and errors else {}
            found = first.get("code") if isinstance(first, dict) else None
            code = f", {found}" if isinstance(found, str) and ERROR_CODE.fullmatch(found) else ""
    answer.close()
    if answer.crossed and status in (401, 403):
        raise RegistryError(
            f"{what}: the registry redirected to another host, which asked for credentials: "
            "none sent (credentials never follow a redirect to another origin)"
        )
    if status in (401, 403):
        raise RegistryError(
            f"{what}: the registry refused (HTTP {status}{code}): log in (docker login) or "
            "set DOCKER_AUTH_CONFIG"
        )
    raise RegistryError(f"{what}: the registry answered HTTP {status}{code}")


def _location(answer: Answer, what: str) -> str:
    location = answer.header("Location")
    if not location:
        raise RegistryError(f"{what}: the registry gave no upload location")
    url = urllib.parse.urljoin(answer.url, location)
    _origin(url, what)
    return url


def _with_query(url: str, extra: Sequence[tuple[str, str]]) -> str:
    joiner = "&" if urllib.parse.urlsplit(url).query else "?"
    return url + joiner + urllib.parse.urlencode(extra)


# --- what plan, image --skip-existing and deploy --pin-digests ask --------------------------


def manifest_digest(reference: str) -> str | None:
    """The digest of ``reference``'s manifest (``sha256:...``), None when the registry has no
    such tag; RegistryError when it cannot tell."""
    parsed = parse_reference(reference)
    with Registry(parsed.registry, parsed.repository) as registry:
        return registry.manifest_digest(parsed.tag)


def has_tag(reference: str) -> bool:
    """Whether the registry holds ``reference``; RegistryError when it cannot tell."""
    parsed = parse_reference(reference)
    with Registry(parsed.registry, parsed.repository) as registry:
        return registry.has_tag(parsed.tag)
