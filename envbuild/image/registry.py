"""Does a registry have a tag? The registry API (Docker Registry HTTP API v2, OCI
distribution), read with the standard library: one HEAD of the manifest, nothing pulled.

Credentials come from where docker itself reads them, never from arguments, and are never
printed: ``DOCKER_AUTH_CONFIG`` (a config document in the environment, as GitLab CI sets
it), else ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (``auths`` entries, or
a ``credsStore``/``credHelpers`` helper ``docker-credential-NAME``). Registries on loopback
are spoken to over plain HTTP, as docker treats them as insecure by default; every other
over HTTPS. Anonymous pulls, basic auth and bearer tokens (Docker Hub, GHCR, ...) work.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envbuild.errors import RegistryError

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
DOCKER_HUB = "docker.io"
TIMEOUT = 15


@dataclass(frozen=True)
class Reference:
    """``registry/repository:tag`` taken apart."""

    registry: str
    repository: str
    tag: str

    @property
    def api_host(self) -> str:
        return "registry-1.docker.io" if self.registry == DOCKER_HUB else self.registry

    @property
    def base_url(self) -> str:
        host = self.api_host.split(":")[0]
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        return f"{'http' if loopback else 'https'}://{self.api_host}"


def parse_reference(reference: str) -> Reference:
    """``127.0.0.1:5000/dask-gpu:worker-...`` -> its registry, repository and tag."""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        name, tag = reference, "latest"
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return Reference(first, rest, tag)
    repository = name if "/" in name else f"library/{name}"
    return Reference(DOCKER_HUB, repository, tag)


# --- credentials ---------------------------------------------------------------------------------


def _config() -> dict[str, Any]:
    inline = os.environ.get("DOCKER_AUTH_CONFIG")
    if inline:
        try:
            found = json.loads(inline)
        except ValueError:
            raise RegistryError("DOCKER_AUTH_CONFIG is not a JSON document") from None
        return found if isinstance(found, dict) else {}
    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        found = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _keys(registry: str) -> list[str]:
    if registry == DOCKER_HUB:
        return ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}"]


def credentials(registry: str) -> tuple[str, str] | None:
    """(user, secret) for ``registry`` from the Docker config, if it holds any."""
    config = _config()
    helpers = config.get("credHelpers") or {}
    for key in _keys(registry):
        helper = helpers.get(key) if isinstance(helpers, dict) else None
        if helper:
            return _from_helper(str(helper), key)
    auths = config.get("auths") or {}
    for key in _keys(registry):
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict):
            if entry.get("auth"):
                try:
                    user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise RegistryError(
                        f"the Docker config's auth for {registry} is not base64"
                    ) from None
                return user, secret
            if entry.get("username"):
                return str(entry["username"]), str(entry.get("password", ""))
    if config.get("credsStore"):
        return _from_helper(str(config["credsStore"]), _keys(registry)[0])
    return None


def _from_helper(helper: str, server: str) -> tuple[str, str] | None:
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        return None
    done = subprocess.run(
        [program, "get"], input=server, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None
    try:
        found = json.loads(done.stdout)
    except ValueError:
        return None
    return str(found.get("Username", "")), str(found.get("Secret", ""))


# --- asking -------------------------------------------------------------------------------------


def _request(url: str, method: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
            return int(answer.status), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return int(error.code), dict(error.headers or {})


def _bearer(challenge: str, reference: Reference, login: tuple[str, str] | None) -> str | None:
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = fields.get("realm")
    if not realm or not realm.startswith(("https://", "http://")):
        return None
    query = {"scope": f"repository:{reference.repository}:pull"}
    if fields.get("service"):
        query["service"] = fields["service"]
    headers = {}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(query)}", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
            document = json.loads(answer.read())
    except (urllib.error.URLError, ValueError, OSError):
        return None
    token = document.get("token") or document.get("access_token")
    return str(token) if token else None


def has_tag(reference: str) -> bool:
    """Whether the registry holds ``reference``'s tag; RegistryError when it cannot tell."""
    return manifest_digest(reference) is not None


def manifest_digest(reference: str) -> str | None:
    """The digest of ``reference``'s manifest in its registry (``sha256:...``; an empty string
    when the registry has it but did not say its digest), None when the registry has no such
    tag; RegistryError when it cannot tell."""
    parsed = parse_reference(reference)
    url = f"{parsed.base_url}/v2/{parsed.repository}/manifests/{urllib.parse.quote(parsed.tag)}"
    headers = {"Accept": MANIFEST_TYPES}
    where = f"{parsed.registry}/{parsed.repository}:{parsed.tag}"
    try:
        status, answer = _request(url, "HEAD", headers)
        if status == 401:
            login = credentials(parsed.registry)
            challenge = answer.get("WWW-Authenticate") or answer.get("Www-Authenticate") or ""
            if challenge.lower().startswith("bearer"):
                token = _bearer(challenge, parsed, login)
                if token:
                    headers["Authorization"] = f"Bearer {token}"
            elif login:
                basic = base64.b64encode(":".join(login).encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            status, answer = _request(url, "HEAD", headers)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f"cannot reach the registry for {where}: {reason}") from None
    if status == 200:
        digest = answer.get("Docker-Content-Digest") or answer.get("docker-content-digest") or ""
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise RegistryError(f"the registry gave {where} a malformed digest {digest[:80]!r}")
        return str(digest)
    if status == 404:
        return None
    if status in (401, 403):
        raise RegistryError(
            f"the registry refused to say whether it has {where} (HTTP {status}): log in "
            "(docker login) or set DOCKER_AUTH_CONFIG"
        )
    raise RegistryError(f"the registry answered HTTP {status} for {where}")
