"""A registry client for pushing and pulling blobs and manifests (OCI distribution spec).

STAND-IN: the promised ``envbuild.image.registry.Registry`` (branch ``registry``) has this
API; this module exists until it lands and goes then (``envbuild.image.transfer`` is the one
place that imports it). Standard library only; credentials as ``envbuild.image.registry``
reads them (Docker config), never printed; plain HTTP on loopback, HTTPS elsewhere.
"""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from envbuild.errors import RegistryError
from envbuild.image.registry import credentials, parse_reference

TIMEOUT = 60
Progress = Callable[[int], None]


class _Counting:
    """A file that tells ``progress`` how many bytes were read from it."""

    def __init__(self, handle: BinaryIO, progress: Progress | None) -> None:
        self.handle, self.progress = handle, progress

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if data and self.progress:
            self.progress(len(data))
        return data


class Registry:
    """One repository of one registry."""

    def __init__(self, registry: str, repository: str, base_url: str) -> None:
        self.registry, self.repository, self.base_url = registry, repository, base_url
        self._authorization: str | None = None
        self._scopes: set[str] = {f"repository:{repository}:pull,push"}

    @classmethod
    def open(cls, repository: str) -> Registry:
        """``127.0.0.1:5000/dask-gpu`` (no tag)."""
        parsed = parse_reference(repository)
        return cls(parsed.registry, parsed.repository, parsed.base_url)

    # --- requests ---------------------------------------------------------------------

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/"):
            return self.base_url + path
        return f"{self.base_url}/v2/{self.repository}/{path}"

    def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> tuple[int, dict[str, str], Any]:
        """Status, headers and the open answer (read it, close it)."""
        for attempt in (0, 1):
            sent = dict(headers or {})
            if self._authorization:
                sent["Authorization"] = self._authorization
            request = urllib.request.Request(  # noqa: S310 - http(s) only
                self._url(path), data=data, method=method, headers=sent
            )
            try:
                answer = urllib.request.urlopen(request, timeout=TIMEOUT)  # noqa: S310
                return int(answer.status), dict(answer.headers), answer
            except urllib.error.HTTPError as error:
                if error.code == 401 and attempt == 0 and not hasattr(data, "read"):
                    self._login(dict(error.headers or {}))
                    error.close()
                    continue
                return int(error.code), dict(error.headers or {}), error
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise RegistryError(f"cannot reach {self.registry}: {reason}") from None
        raise AssertionError("unreachable")

    def _login(self, headers: dict[str, str]) -> None:
        challenge = headers.get("WWW-Authenticate") or headers.get("Www-Authenticate") or ""
        login = credentials(self.registry)
        if challenge.lower().startswith("bearer"):
            fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            realm = fields.get("realm", "")
            if not realm.startswith(("https://", "http://")):
                return
            query = [("scope", scope) for scope in sorted(self._scopes)]
            if fields.get("service"):
                query.append(("service", fields["service"]))
            request = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(query)}")  # noqa: S310
            if login:
                basic = base64.b64encode(":".join(login).encode()).decode()
                request.add_header("Authorization", f"Basic {basic}")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
                    import json

                    found = json.loads(answer.read())
            except (urllib.error.URLError, ValueError, OSError):
                return
            token = found.get("token") or found.get("access_token")
            if token:
                self._authorization = f"Bearer {token}"
        elif login:
            self._authorization = "Basic " + base64.b64encode(":".join(login).encode()).decode()

    def _fail(self, status: int, what: str) -> RegistryError:
        where = f"{self.registry}/{self.repository}"
        if status in (401, 403):
            return RegistryError(
                f"{where} refused {what} (HTTP {status}): log in (docker login) or set "
                "DOCKER_AUTH_CONFIG"
            )
        return RegistryError(f"{where} answered HTTP {status} to {what}")

    # --- the API ----------------------------------------------------------------------

    def manifest_digest(self, ref: str) -> str | None:
        from envbuild.image.registry import MANIFEST_TYPES

        status, headers, answer = self._send("HEAD", f"manifests/{ref}", {"Accept": MANIFEST_TYPES})
        answer.close()
        if status == 404:
            return None
        if status != 200:
            raise self._fail(status, f"HEAD of manifest {ref}")
        return headers.get("Docker-Content-Digest") or headers.get("docker-content-digest") or ""

    def has_tag(self, tag: str) -> bool:
        return self.manifest_digest(tag) is not None

    def get_manifest(self, ref: str, accept: Sequence[str]) -> tuple[bytes, str, str]:
        import hashlib

        wanted = {"Accept": ", ".join(accept)}
        status, headers, answer = self._send("GET", f"manifests/{ref}", wanted)
        with answer:
            body = answer.read(4 << 20)
        if status != 200:
            raise self._fail(status, f"GET of manifest {ref}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            raise RegistryError(f"{self.registry} sent a manifest that is not {ref}")
        media_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        return body, media_type, digest

    def has_blob(self, digest: str) -> bool:
        status, _, answer = self._send("HEAD", f"blobs/{digest}")
        answer.close()
        if status in (200, 404):
            return status == 200
        raise self._fail(status, f"HEAD of blob {digest}")

    def mount_blob(self, digest: str, source_repository: str) -> bool:
        self._scopes.add(f"repository:{source_repository}:pull")
        query = urllib.parse.urlencode({"mount": digest, "from": source_repository})
        status, _, answer = self._send("POST", f"blobs/uploads/?{query}")
        answer.close()
        return status == 201

    def push_blob(
        self, digest: str, path: Path | bytes, size: int, progress: Progress | None = None
    ) -> bool:
        if self.has_blob(digest):
            return False
        status, headers, answer = self._send("POST", "blobs/uploads/")
        answer.close()
        if status != 202 or not headers.get("Location"):
            raise self._fail(status, f"an upload of {digest}")
        location = urllib.parse.urljoin(self.base_url + "/", headers["Location"])
        location += ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        put = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if isinstance(path, bytes):
            status, _, answer = self._send("PUT", location, put, path)
            if progress:
                progress(size)
        else:
            with path.open("rb") as handle:
                status, _, answer = self._send("PUT", location, put, _Counting(handle, progress))
        answer.close()
        if status != 201:
            raise self._fail(status, f"the upload of {digest}")
        return True

    def get_blob(self, digest: str, destination: Path, progress: Progress | None = None) -> None:
        status, _, answer = self._send("GET", f"blobs/{digest}")
        with answer:
            if status != 200:
                raise self._fail(status, f"GET of blob {digest}")
            with destination.open("wb") as output:
                while chunk := answer.read(1 << 20):
                    output.write(chunk)
                    if progress:
                        progress(len(chunk))

    def put_manifest(self, ref: str, body: bytes, media_type: str) -> str:
        status, headers, answer = self._send(
            "PUT", f"manifests/{ref}", {"Content-Type": media_type}, body
        )
        answer.close()
        if status not in (200, 201):
            raise self._fail(status, f"the manifest {ref}")
        import hashlib

        return headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()

    def close(self) -> None:
        """Nothing held open between requests here (the promised client keeps connections)."""

    def referrers(self, digest: str) -> bytes | None:
        """The referrers index of ``digest`` (OCI 1.1 referrers API); None when the registry
        has no such API (use the ``sha256-<hex>`` tag scheme then)."""
        status, headers, answer = self._send(
            "GET", f"referrers/{digest}", {"Accept": "application/vnd.oci.image.index.v1+json"}
        )
        with answer:
            body = answer.read(4 << 20)
        kind = (headers.get("Content-Type") or "").split(";")[0].strip()
        if status == 200 and kind == "application/vnd.oci.image.index.v1+json":
            return bytes(body)
        return None
