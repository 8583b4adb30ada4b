"""The cluster in containers: scheduler, worker and client started from the three role
images of one lock, on the host network, for the image tests and ``make demo``.

Each container starts through its image's entrypoint, so the GPU check runs first (in warn
mode here: no GPU). The client container runs the demo client (mounted read-only) against
the scheduler and prints its results. Containers are removed afterwards, whatever happens.

    python -m envbuild.testing.containers -f SPEC --lockfile LOCK

starts a Docker engine when none answers and this is root (``envbuild.testing.docker``),
builds the images with ``envbuild image --all``, runs the cluster and prints the summary;
where no engine can be had it says in one line what it skipped and the command that enables it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envbuild.image.plan import GUARD_ARGS
from envbuild.testing import demo_client
from envbuild.testing import docker as local_docker
from envbuild.testing.cluster import ClusterError, check_results, summary

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
CLIENT_SCRIPT = "/opt/envbuild-demo/demo_client.py"


@dataclass
class ContainerCluster:
    """Scheduler and workers running from role images; a client container to compute."""

    host: str
    images: Mapping[str, str]  # role -> image reference
    environment: Mapping[str, str] = field(default_factory=lambda: {"ENVBUILD_GPU_CHECK": "warn"})
    containers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        import docker

        self.client = docker.DockerClient(base_url=self.host)
        self.port = local_docker.free_port()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _run(self, role: str, command: list[str], **options: Any) -> Any:
        container = self.client.containers.run(
            self.images[role],
            command,
            detach=True,
            network_mode="host",
            environment=dict(self.environment),
            **options,
        )
        self.containers.append(container)
        return container

    def start(self, workers: int = 1) -> None:
        scheduler = self._run(
            "scheduler",
            [
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-dashboard",
                *GUARD_ARGS,
            ],
        )
        self._wait_for(scheduler, "Scheduler at:")
        for index in range(workers):
            self._run(
                "worker",
                [
                    "dask",
                    "worker",
                    self.address,
                    "--nthreads",
                    "2",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--name",
                    f"worker-{index}",
                    *GUARD_ARGS,
                ],
            )

    def _wait_for(self, container: Any, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = container.logs().decode(errors="replace")
            if text in logs:
                return
            container.reload()
            if container.status == "exited":
                raise ClusterError(f"{container.name} exited: {logs[-800:]}")
            time.sleep(0.2)
        raise ClusterError(f"{container.name} did not start in {timeout:.0f} s")

    def compute(self, workers: int = 1) -> dict[str, Any]:
        """Run the demo client in the client image; check and return its results."""
        client = self._run(
            "client",
            ["python", CLIENT_SCRIPT, self.address, str(workers)],
            volumes={demo_client.__file__: {"bind": CLIENT_SCRIPT, "mode": "ro"}},
        )
        status = client.wait(timeout=180)
        output = client.logs(stdout=True, stderr=False).decode(errors="replace")
        if status.get("StatusCode") != 0:
            raise ClusterError(
                f"the client container exited {status.get('StatusCode')}: "
                f"{client.logs().decode(errors='replace')[-800:]}"
            )
        result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        check_results(result)
        return result

    def logs(self, index: int) -> str:
        text: str = self.containers[index].logs().decode(errors="replace")
        return text

    def stop(self) -> None:
        for container in self.containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        self.containers.clear()
        self.client.close()


@contextlib.contextmanager
def running(cluster: ContainerCluster, workers: int = 1) -> Iterator[ContainerCluster]:
    try:
        cluster.start(workers)
        yield cluster
    finally:
        cluster.stop()


def role_images(spec: Path, lock: Path, host: str) -> dict[str, str]:
    """Build every role's image with `envbuild image --all --json`; role -> reference."""
    done = subprocess.run(
        [ENVBUILD, "image", "--all", "--json", "-f", str(spec), "--lockfile", str(lock)],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": host},
        check=False,
    )
    if done.returncode != 0:
        raise ClusterError(f"envbuild image failed ({done.returncode}): {done.stderr.strip()}")
    built = json.loads(done.stdout)["images"]
    for image in built:
        print(f"  {image['role']:<10} {image['status']:<10} {image['reference']}", flush=True)
    return {image["role"]: image["reference"] for image in built}


@contextlib.contextmanager
def an_engine(cache: Path) -> Iterator[str | None]:
    """The engine DOCKER_HOST names if it answers; else a private one when this is root and
    the tools are here (with the demo's base image imported); else None."""
    host = os.environ.get("DOCKER_HOST")
    if host and local_docker.answers(host):
        yield host
        return
    why = local_docker.usable()
    if why:
        print(
            f"images and the cluster in containers skipped: {why}; run `make demo` as root with "
            "docker.io, debootstrap, docker-registry and skopeo installed (apt-get install "
            "docker.io debootstrap docker-registry skopeo), or set DOCKER_HOST",
            flush=True,
        )
        yield None
        return
    with local_docker.engine(cache / "engine") as started:
        yield started


def demo_base(cache: Path) -> Path:
    """The demo's base image as an OCI image layout at ``build/demo-base`` (the example's
    ``image.base: oci:../../build/demo-base:bookworm``): an index of amd64 and arm64 bases,
    made with debootstrap once."""
    layout = local_docker.base_index_layout(cache)
    link = cache.parent / "demo-base"
    if link.resolve() != layout.resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(layout.resolve())
    return link


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m envbuild.testing.containers", description=__doc__
    )
    parser.add_argument("-f", "--file", type=Path, required=True, dest="spec")
    parser.add_argument("--lockfile", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("build/cache"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        demo_base(args.cache)
        with an_engine(args.cache) as host:
            if host is None:
                return 0
            print(f"role images (engine {host}):", flush=True)
            images = role_images(args.spec, args.lockfile, host)
            cluster = ContainerCluster(host, images)
            with running(cluster):
                result = cluster.compute()
    except (ClusterError, local_docker.SetupError) as exc:
        print(f"envbuild demo containers: error: {exc}", file=sys.stderr)
        return 1
    print("the cluster in containers:")
    print(summary(result))
    print(f"images built, cluster run and stopped in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
