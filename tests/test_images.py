"""`envbuild image` end to end, on a real Docker engine with a local registry.

The engine, the base image (debootstrap, cached under build/cache) and the registry are
started here and stopped by PID (envbuild.testing.docker). The images are built from the
runnable channel, so the containers really start Dask.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from envbuild.testing import docker as local_docker
from envbuild.testing import nvml
from envbuild.testing.containers import ContainerCluster, running

from .conftest import ContainerSetup, image_section, require, runnable_spec

pytestmark = pytest.mark.slow
ENVBUILD = str(Path(sys.executable).parent / "envbuild")
SECRET = "hunter2-not-for-images"
T4 = "Tesla T4,7.5,GPU-t4"


@dataclass
class Built:
    """The example's three role images, built and pushed once for this module."""

    host: str
    registry: local_docker.Registry
    spec: Path
    folder: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]
    images: dict[str, str]  # role -> reference

    def envbuild(self, *args: object, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENVBUILD, *map(str, args)],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=600,
            env={**self.env, **extra},
        )

    def docker(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host)


@pytest.fixture(scope="module")
def built(
    runnable_channel: Path, containers: ContainerSetup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    host, registry = containers.host, containers.registry
    folder = tmp_path_factory.mktemp("images")
    spec = runnable_spec(
        folder,
        runnable_channel,
        edit=image_section(containers.base, f"{registry.address}/dask-gpu"),
    )
    config = folder / "docker-config"  # credentials the build must never carry along
    config.mkdir()
    token = base64.b64encode(f"ci:{SECRET}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": token}}}))
    env = {**os.environ, "DOCKER_HOST": host, "DOCKER_CONFIG": str(config)}
    env["ENVBUILD_CACHE_DIR"] = str(folder / "cache")
    subprocess.run([ENVBUILD, "lock", "-q", "-f", spec], cwd=folder, env=env, check=True)
    # Pushed through the registry API and loaded into the engine, in one run.
    first = subprocess.run(
        [ENVBUILD, "image", "--all", "--push", "--load", "-f", spec],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    listed = subprocess.run(
        [ENVBUILD, "image", "--all", "--dry-run", "--json", "-f", spec],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    images = {i["role"]: i["reference"] for i in json.loads(listed.stdout)["images"]}
    yield Built(host, registry, spec, folder, env, first, images)


def layers(built: Built, role: str) -> list[str]:
    client = built.docker()
    try:
        return list(client.images.get(built.images[role]).attrs["RootFS"]["Layers"])
    finally:
        client.close()


def test_three_roles_build_and_push_with_content_addressed_tags(built: Built) -> None:
    lines = built.first.stdout.splitlines()
    # Four images: the worker pool's amd64 and arm64 ones under one tag, an index of both.
    assert sum(" built " in line for line in lines) == 4, built.first.stdout
    assert sum("layers sent" in line for line in lines) == 4
    assert (
        sum(" index " in line and ": pushed (linux-64, linux-aarch64)" in line for line in lines)
        == 1
    )
    for role, reference in built.images.items():
        repository, tag = reference.rsplit(":", 1)
        assert repository == f"{built.registry.address}/dask-gpu"
        variant = "cpu" if role == "client" else "cuda-12.4"
        assert tag.startswith(f"{role}-{variant}-") and len(tag.rsplit("-", 1)[1]) == 12
    # The engine got the image of its own platform under the worker's tag, as a pull would.
    client = built.docker()
    try:
        assert client.images.get(built.images["worker"]).attrs["Architecture"] == "amd64"
    finally:
        client.close()


def test_roles_share_every_layer_below_their_own(built: Built) -> None:
    client, scheduler, worker = (layers(built, r) for r in ("client", "scheduler", "worker"))
    assert len(client) == len(scheduler) == len(worker) == 4  # base, shared, variant, role
    assert client[:2] == scheduler[:2]  # base and the shared packages
    assert client[2] != scheduler[2]  # cpu and cuda-12.4 have their own variant layer
    assert scheduler[:3] == worker[:3]  # one variant: every environment layer shared
    assert scheduler[3] != worker[3]  # the role file differs


def _files(built: Built, role: str) -> dict[str, str]:
    """path -> content digest (or link target, or 'dir') of an image's filesystem."""
    return _files_of(built, built.images[role])


def _files_of(built: Built, reference: str) -> dict[str, str]:
    client = built.docker()
    container = client.containers.create(reference, "true")
    try:
        stream = io.BytesIO(b"".join(container.export()))
    finally:
        container.remove()
        client.close()
    files = {}
    with tarfile.open(fileobj=stream) as tar:
        for member in tar:
            if member.isdir():
                files[member.name] = "dir"
            elif member.issym() or member.islnk():
                files[member.name] = f"-> {member.linkname}"
            elif member.isfile():
                files[member.name] = sha256(tar.extractfile(member).read()).hexdigest()  # type: ignore[union-attr]
    return files


def test_client_and_worker_images_differ_only_in_the_cuda_runtime(built: Built) -> None:
    client, worker = _files(built, "client"), _files(built, "worker")
    differing = {p for p in set(client) | set(worker) if client.get(p) != worker.get(p)}
    # Who owns each differing file, by the images' own package records.
    owners: dict[str, str] = {}
    for role in ("client", "worker"):
        image = built.docker()
        container = image.containers.create(built.images[role], "true")
        try:
            archive = io.BytesIO(b"".join(container.get_archive("/opt/env/conda-meta")[0]))
        finally:
            container.remove()
            image.close()
        with tarfile.open(fileobj=archive) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    owners[f"opt/env/{member.name}"] = record["name"]
                    for entry in record["paths_data"]["paths"]:
                        owners[f"opt/env/{entry['_path']}"] = record["name"]
    lock = json.loads((built.folder / "envbuild.lock").read_text())
    cpu = {
        (p["name"], p["version"], p["build"])
        for p in lock["packages"]
        if "cpu/linux-64" in p["targets"]
    }
    gpu = {
        (p["name"], p["version"], p["build"])
        for p in lock["packages"]
        if "cuda-12.4/linux-64" in p["targets"]
    }
    variant_only = {name for name, _, _ in cpu ^ gpu}
    role_files = {
        "etc/envbuild/role.json",
        "opt/envbuild/entrypoint.sh",
        "opt/envbuild/sbom.cdx.json",
        "opt/env/etc/envbuild/stamp.json",
    }
    unexplained = [
        p
        for p in differing
        if client.get(p) != "dir"
        and worker.get(p) != "dir"
        and p not in role_files
        and owners.get(p) not in variant_only
    ]
    assert unexplained == []
    assert variant_only == {"cupy", "cuda-cudart", "cuda-version", "fastrlock"}
    assert any(owners.get(p) == "cupy" for p in differing)


def test_a_second_run_builds_nothing_and_pushes_no_layer(built: Built) -> None:
    again = built.envbuild("image", "--all", "-f", built.spec)  # --load, the default here
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("is up to date: nothing built") == 3
    pushed = built.envbuild("image", "--all", "--push", "-f", built.spec)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.count(": 0 layers sent (0 B)") == 4  # the worker's two platforms


def test_images_run_as_a_non_root_user_and_carry_no_credentials(built: Built) -> None:
    client = built.docker()
    try:
        for role, reference in built.images.items():
            image = client.images.get(reference)
            assert image.attrs["Config"]["User"] == "1000:1000"
            uid = client.containers.run(
                reference,
                ["python", "-c", "import os; print(os.getuid())"],
                network_mode="none",
                environment={"ENVBUILD_GPU_CHECK": "skip"},  # no GPU here
                remove=True,
            )
            assert uid.decode().strip().splitlines()[-1] == "1000"
            everything = json.dumps(image.attrs) + json.dumps(image.history())
            assert SECRET not in everything and "hunter2" not in everything, role
            assert image.labels["io.envbuild.role"] == role
            assert image.labels["io.envbuild.lock"].startswith("sha256:")
    finally:
        client.close()
    assert SECRET not in built.first.stdout + built.first.stderr


@pytest.fixture(scope="module")
def fake_nvml_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(nvml.compiler() is not None, "gcc builds the fake NVML library")
    folder = nvml.build(tmp_path_factory.mktemp("nvml")).parent
    folder.chmod(0o755)  # mounted into images that run as uid 1000
    return folder


@pytest.mark.parametrize(
    ("role", "gpus", "code", "said"),
    [
        ("worker", (T4,), 22, "compute capability 7.5 < 8.0"),
        ("scheduler", (T4,), 0, "ok (1 GPU usable)"),
        ("worker", None, 20, "no NVIDIA driver found"),
        ("client", None, 0, "ok (CPU role)"),
    ],
    ids=["worker-on-T4", "scheduler-on-T4", "worker-without-driver", "client-without-driver"],
)
def test_the_gpu_check_inside_the_image(
    built: Built,
    fake_nvml_folder: Path,
    role: str,
    gpus: tuple[str, ...] | None,
    code: int,
    said: str,
) -> None:
    client = built.docker()
    environment = {}
    volumes = {}
    if gpus is not None:
        volumes = {str(fake_nvml_folder): {"bind": "/opt/fake-nvml", "mode": "ro"}}
        environment = {
            "LD_LIBRARY_PATH": "/opt/fake-nvml",
            "FAKE_NVML_DEVICES": ";".join(gpus),
            "FAKE_NVML_DRIVER": "550.54.15",
            "FAKE_NVML_CUDA": "12040",
        }
    container = client.containers.run(
        built.images[role],
        ["python", "-c", "print('started')"],
        detach=True,
        network_mode="none",
        environment=environment,
        volumes=volumes,
    )
    try:
        status = container.wait(timeout=60)["StatusCode"]
        output = container.logs().decode()
    finally:
        container.remove(force=True)
        client.close()
    assert status == code, output
    assert said in output
    assert ("started" in output) == (code == 0)


def test_the_cluster_runs_in_containers(built: Built) -> None:
    cluster = ContainerCluster(built.host, built.images)
    with running(cluster):
        result = cluster.compute()
    processes = result["processes"]
    assert {p["target"] for p in processes.values()} == {"cpu/linux-64", "cuda-12.4/linux-64"}
    assert len({p["lock"] for p in processes.values()}) == 1
    assert processes["scheduler"]["prefix"] == "/opt/env"


def test_without_an_engine_context_still_works(built: Built, tmp_path: Path) -> None:
    gone = built.envbuild(
        "image", "--role", "worker", "-f", built.spec, DOCKER_HOST="unix:///nowhere.sock"
    )
    assert gone.returncode == 13
    assert "no container engine to load the images into" in gone.stderr
    assert "--push" in gone.stderr and "--oci DIR" in gone.stderr and "--context" in gone.stderr
    context = tmp_path / "context"
    written = built.envbuild(
        "image",
        "--role",
        "worker",
        "--context",
        context,
        "-f",
        built.spec,
        DOCKER_HOST="unix:///nowhere.sock",
    )
    assert written.returncode == 0, written.stderr
    # A context per platform of the worker's: ADD and nothing run, so any builder makes it.
    assert sorted(p.name for p in context.iterdir()) == ["linux-64", "linux-aarch64"]
    for platform in ("linux-64", "linux-aarch64"):
        assert sorted(p.name for p in (context / platform).iterdir()) == [
            "Dockerfile",
            "role.tar",
            "shared.tar",
            "variant.tar",
        ]
    assert "docker build --platform linux/arm64 -t " in written.stdout
    # Built by docker-py's own build call, outside envbuild (the base pulled by digest from
    # the registry): the same files as the image envbuild assembled.
    client = built.docker()
    try:
        image, _ = client.images.build(
            path=str(context / "linux-64"), tag="context-check:1", network_mode="none"
        )
        assert len(image.attrs["RootFS"]["Layers"]) == 4
        assert image.attrs["RootFS"]["Layers"][0] == layers(built, "worker")[0]  # the base
    finally:
        client.close()
    assert _files(built, "worker") == _files_of(built, "context-check:1")


def test_a_missing_base_is_its_own_error_and_leaves_no_tag(built: Built, tmp_path: Path) -> None:
    spec = tmp_path / "envbuild.yaml"
    spec.write_text(
        built.spec.read_text().replace("envbuild-demo/base:bookworm", "envbuild-demo/missing:1")
    )
    (tmp_path / "envbuild.lock").write_text((built.folder / "envbuild.lock").read_text())
    result = built.envbuild("image", "--role", "client", "-f", spec)
    assert result.returncode == 14
    missing = f"{built.registry.address}/envbuild-demo/missing:1"
    assert f"base image {missing} is not in its registry" in result.stderr
    client = built.docker()
    try:
        tags = [t for i in client.images.list() for t in i.tags]
    finally:
        client.close()
    repository = built.images["client"].rsplit(":", 1)[0]
    ours = [t for t in tags if t.startswith(f"{repository}:client-cpu")]
    assert ours == [built.images["client"]]


def test_a_role_without_linux_is_refused_or_skipped(built: Built, tmp_path: Path) -> None:
    spec = tmp_path / "envbuild.yaml"
    spec.write_text(
        built.spec.read_text().replace("platforms: [linux-64, osx-arm64]", "platforms: [osx-arm64]")
    )
    assert built.envbuild("lock", "-q", "-f", spec).returncode == 0
    refused = built.envbuild("image", "--role", "client", "-f", spec)
    assert refused.returncode == 14
    assert "no image for role 'client': locked for osx-arm64 only" in refused.stderr
    skipped = built.envbuild("image", "--all", "--dry-run", "-f", spec)
    assert skipped.returncode == 0
    assert "client     skipped: locked for osx-arm64 only" in skipped.stdout
