"""The container engine, through docker-py: the only module that imports docker.

The engine is the one DOCKER_HOST names (or the default socket). Builds use the engine's own
builder with the network off (the layers are tars in the context: nothing is fetched), and
tag only when they succeed, so a failed build leaves no tag behind. Registry credentials come
from ``envbuild.image.credentials`` (the one source every registry client here uses) and are
handed to docker-py explicitly on every push and pull, so docker-py never reads a config of its
own; they are never printed, and error messages from the engine are passed on without them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envbuild.errors import EngineError, ImageBuildError, ImagePushError, RegistryError
from envbuild.image import credentials

if TYPE_CHECKING:
    import docker

Log = Callable[[str], None]
_CREDENTIALS = re.compile(r"(//[^/@\s:]+):[^/@\s]+@")


def _clean(text: str) -> str:
    """Engine messages, without credentials an URL may carry."""
    return _CREDENTIALS.sub(r"\1:***@", text).strip()


@dataclass(frozen=True)
class PushOutcome:
    """What a push sent: layers uploaded, and layers the registry had already."""

    pushed: int
    existing: int
    digest: str | None


class Engine:
    """A connected container engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> Engine:
        """The engine DOCKER_HOST names; EngineError says how to get one."""
        import docker
        from docker.errors import DockerException

        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except DockerException as exc:
            reason = _clean(str(exc)).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise EngineError(
                f"no container engine at {where} ({reason}): start one (dockerd, or Docker "
                "Desktop) or set DOCKER_HOST; `envbuild image --context DIR` writes the build "
                "context without one"
            ) from None
        return cls(client)

    def has_image(self, reference: str) -> bool:
        from docker.errors import ImageNotFound

        try:
            self.client.images.get(reference)
        except ImageNotFound:
            return False
        return True

    def inspect(self, reference: str) -> Mapping[str, Any]:
        attrs: Mapping[str, Any] = self.client.api.inspect_image(reference)
        return attrs

    def layers(self, reference: str) -> list[str]:
        """The image's layer digests (uncompressed, bottom first)."""
        return list(self.inspect(reference)["RootFS"]["Layers"])

    def require_base(self, reference: str, log: Log) -> None:
        """The base image must be in the engine, or be pulled now."""
        if self.has_image(reference):
            return
        from docker.errors import DockerException

        log(f"pulling the base image {reference}")
        try:
            auth = _auth_config(reference)
            self.client.images.pull(reference, auth_config=auth)
        except (DockerException, RegistryError) as exc:
            raise ImageBuildError(
                f"base image {reference} is not in the engine and cannot be pulled "
                f"({_clean(str(exc)).splitlines()[0][:200]}): pull or load it, or set image.base"
            ) from None

    def build(self, context: Path, reference: str | None, log: Log) -> str:
        """Build ``context`` (Dockerfile and layers), tagged ``reference`` if one is given;
        the image id."""
        from docker.errors import DockerException

        image_id: str | None = None
        tail: list[str] = []
        try:
            stream = self.client.api.build(
                path=str(context),
                tag=reference,
                rm=True,
                forcerm=True,
                pull=False,
                network_mode="none",
                decode=True,
            )
            for chunk in _chunks(stream):
                if "error" in chunk:
                    tail.append(_clean(str(chunk["error"])))
                    raise ImageBuildError(
                        f"building {reference or context} failed: {tail[-1]}",
                        details="\n".join(tail[-20:]),
                    )
                line = str(chunk.get("stream", "")).rstrip()
                if line:
                    tail.append(line)
                    log(line)
                    if line.startswith("Successfully built "):
                        image_id = image_id or line.split()[-1]
                found = (chunk.get("aux") or {}).get("ID")
                if found:
                    image_id = found
        except DockerException as exc:
            raise ImageBuildError(f"building {reference} failed: {_clean(str(exc))}") from None
        if image_id is None and reference is not None:
            image_id = self.inspect(reference)["Id"]
        if image_id is None:
            raise ImageBuildError(f"the engine built {context} but did not say the image's id")
        return image_id

    def push(self, reference: str, log: Log) -> PushOutcome:
        """Push ``reference``; count layers sent and layers already there."""
        from docker.errors import DockerException

        repository, _, tag = reference.rpartition(":")
        pushed: set[str] = set()
        existing: set[str] = set()
        digest = None
        try:
            auth = _auth_config(reference)
        except RegistryError as exc:
            raise ImagePushError(f"pushing {reference} failed: {exc}") from None
        try:
            for chunk in _chunks(
                self.client.api.push(
                    repository, tag=tag, stream=True, decode=True, auth_config=auth
                )
            ):
                if "error" in chunk:
                    raise ImagePushError(
                        f"pushing {reference} failed: {_clean(str(chunk['error']))}"
                    )
                status, layer = str(chunk.get("status", "")), str(chunk.get("id", ""))
                if status == "Pushed":
                    pushed.add(layer)
                elif status == "Layer already exists":
                    existing.add(layer)
                if status and status not in ("Pushing", "Preparing", "Waiting"):
                    log(f"{layer}: {status}" if layer else status)
                digest = (chunk.get("aux") or {}).get("Digest") or digest
        except DockerException as exc:
            raise ImagePushError(f"pushing {reference} failed: {_clean(str(exc))}") from None
        return PushOutcome(len(pushed), len(existing), digest)

    def remove(self, reference: str) -> None:
        from docker.errors import ImageNotFound

        with contextlib.suppress(ImageNotFound):
            self.client.images.remove(reference, force=True)


def _auth_config(reference: str) -> dict[str, str]:
    """The credential for ``reference``'s registry as docker-py passes it (``{}``: anonymous,
    never None, with which docker-py would read a config of its own)."""
    from envbuild.image.reference import parse_reference

    return credentials.engine_auth(parse_reference(reference).registry)


def _chunks(stream: Any) -> Iterator[dict[str, Any]]:
    for chunk in stream:
        if isinstance(chunk, dict):
            yield chunk
