"""The container engine, through docker-py: the only module that imports docker.

The engine is the one DOCKER_HOST names (or the default socket). envbuild builds nothing on
it: ``--load`` hands it an image archive envbuild wrote (``docker load``), tagged in the
same step, so a failed load leaves no tag behind. Error messages from the engine are passed
on without the credentials an URL may carry.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envbuild.errors import EngineError, ImageBuildError

if TYPE_CHECKING:
    import docker

Log = Callable[[str], None]
_CREDENTIALS = re.compile(r"(//[^/@\s:]+):[^/@\s]+@")
#: ``docker info``'s Architecture (the kernel's machine) -> conda platform.
_PLATFORMS = {
    "x86_64": "linux-64",
    "aarch64": "linux-aarch64",
    "arm64": "linux-aarch64",
    "ppc64le": "linux-ppc64le",
}


def _clean(text: str) -> str:
    """Engine messages, without credentials an URL may carry."""
    return _CREDENTIALS.sub(r"\1:***@", text).strip()


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
                "Desktop) or set DOCKER_HOST; without one, `envbuild image --push` sends the "
                "images to a registry and `--oci DIR` writes an OCI image layout"
            ) from None
        return cls(client)

    def platform(self) -> str:
        """The conda platform of the images the engine runs (``docker info``): linux-64 on
        an x86-64 machine, linux-aarch64 on an Arm one."""
        info = self.client.info()
        machine = str(info.get("Architecture", ""))
        return _PLATFORMS.get(machine, f"{info.get('OSType', 'linux')}-{machine}")

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

    def load(self, archive: Path) -> None:
        """Load the image archive ``archive`` (``envbuild.image.oci.write_archive``); its
        tags come with it."""
        from docker.errors import DockerException

        try:
            with archive.open("rb") as handle:
                for chunk in _chunks(self.client.api.load_image(handle)):
                    if "error" in chunk:
                        raise ImageBuildError(
                            f"the engine refused the image: {_clean(str(chunk['error']))}"
                        )
        except DockerException as exc:
            raise ImageBuildError(f"loading the image failed: {_clean(str(exc))}") from None

    def close(self) -> None:
        self.client.close()

    def remove(self, reference: str) -> None:
        from docker.errors import ImageNotFound

        with contextlib.suppress(ImageNotFound):
            self.client.images.remove(reference, force=True)


def _chunks(stream: Any) -> Iterator[dict[str, Any]]:
    for chunk in stream:
        if isinstance(chunk, dict):
            yield chunk
