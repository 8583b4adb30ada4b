"""Image references as docker reads them (``registry/repository:tag`` or ``@sha256:...``),
checked against the distribution grammar, so that nothing but a valid name, tag or digest
ever reaches a registry URL."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from envbuild.errors import RegistryError
from envbuild.image.credentials import DOCKER_HUB, registry_key
from envbuild.image.transport import is_loopback

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]{1,5})?"
)
TAG = re.compile(r"[\w][\w.-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """``registry/repository:tag`` (or ``@sha256:...``) taken apart; ``tag`` holds either."""

    registry: str
    repository: str
    tag: str

    @property
    def api_host(self) -> str:
        return "registry-1.docker.io" if self.registry == DOCKER_HUB else self.registry

    @property
    def base_url(self) -> str:
        host = urllib.parse.urlsplit(f"//{self.api_host}").hostname or ""
        return f"{'http' if is_loopback(host) else 'https'}://{self.api_host}"

    def __str__(self) -> str:
        mark = "@" if DIGEST.fullmatch(self.tag) else ":"
        return f"{self.registry}/{self.repository}{mark}{self.tag}"


def parse_repository(text: str) -> tuple[str, str]:
    """``127.0.0.1:5000/dask-gpu`` -> (registry, repository), as docker reads a name:
    the first component is a registry when it has a dot, a colon, an upper-case letter, or
    is ``localhost``; otherwise Docker Hub (``library/`` for one-component names)."""
    first, _, rest = text.partition("/")
    if rest and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, text if rest else f"library/{text}"
    if registry_key(registry) == DOCKER_HUB:
        registry = DOCKER_HUB
    if not HOST.fullmatch(registry) or not REPOSITORY.fullmatch(repository):
        raise RegistryError(f"{text[:200]!r} is not a valid image repository name")
    return registry, repository


def parse_reference(reference: str) -> Reference:
    """``127.0.0.1:5000/dask-gpu:worker-...`` (or ``...@sha256:...``; no tag: ``latest``)."""
    name, at, digest = reference.partition("@")
    if at:
        name = name.rpartition(":")[0] if ":" in name.rpartition("/")[2] else name
        tag = digest
    else:
        base, _, tag = name.rpartition(":")
        if not base or "/" in tag:
            tag = "latest"
        else:
            name = base
    registry, repository = parse_repository(name)
    check_reference(tag, reference)
    return Reference(registry, repository, tag)


def check_reference(tag: str, shown: str) -> None:
    if not (TAG.fullmatch(tag) or DIGEST.fullmatch(tag)):
        raise RegistryError(f"{shown[:200]!r} has no valid tag or sha256 digest")


def check_digest(digest: str, what: str) -> None:
    if not DIGEST.fullmatch(digest):
        raise RegistryError(f"{what}: a malformed digest (not sha256: and 64 hex digits)")
