"""The example's worker pool of GH200s beside x86 GPUs as images, built on this x86 machine
with no engine and no emulation: one tag, an OCI image index of an amd64 and an arm64 image.
The arm64 image is proven to run without an Arm machine: its binaries are all aarch64, and its
python (from its own layers over the arm64 base) imports the Dask stack and runs the GPU
check under qemu-user (``qemu-aarch64-static -L ROOT``, no binfmt registration); the amd64
image of the same role runs on the engine. The registry holds the index and each platform's
image by digest, and a second machine building one platform at a time gets the same digests.

No test registers binfmt_misc (that would change the whole machine): running the arm64 image
on the engine with ``--platform linux/arm64`` is not tested here.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envbuild.image import oci
from envbuild.testing import docker as local_docker
from envbuild.testing import nvml

from .conftest import ContainerSetup, image_section, require, runnable_spec

pytestmark = pytest.mark.slow

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
NO_ENGINE = "unix:///nonexistent/docker.sock"
QEMU = "qemu-aarch64-static"
#: ELF e_machine values.
EM_X86_64, EM_AARCH64 = 62, 183
AMD64 = {"architecture": "amd64", "os": "linux"}
ARM64 = {"architecture": "arm64", "os": "linux", "variant": "v8"}


def gh200_pool(text: str) -> str:
    """The example with a worker pool that needs compute capability 9.0: GH200s (arm64)
    beside H100s (amd64)."""
    edited = text.replace('compute-capability: ">=8.0"', 'compute-capability: ">=9.0"')
    assert edited != text and "platforms: [linux-64, linux-aarch64]" in edited
    return edited


@dataclass
class Indexed:
    """The worker's images, built once for this module: pushed and written to a layout."""

    setup: ContainerSetup
    folder: Path
    spec: Path
    env: dict[str, str]
    repository: str
    outcome: dict[str, Any]  # the worker's JSON outcome
    layout: Path

    def envbuild(self, *args: object, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENVBUILD, *map(str, args)],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=900,
            env={**self.env, **extra},
        )

    @property
    def reference(self) -> str:
        return str(self.outcome["reference"])

    def manifest(self, platform: str) -> dict[str, Any]:
        """The outcome of the worker's image for ``platform``."""
        return next(m for m in self.outcome["manifests"] if m["platforms"] == [platform])

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    def layer_blobs(self, platform: str) -> list[Path]:
        """The blobs of the platform image's layers (the base's first), from the layout."""
        manifest = json.loads(self.blob(self.manifest(platform)["digest"]))
        return [
            self.layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")
            for layer in manifest["layers"]
        ]


def _outcomes(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    return {i["role"]: i for i in json.loads(done.stdout)["images"]}


def _spec(folder: Path, channel: Path, setup: ContainerSetup, repository: str) -> Path:
    edit = image_section(setup.base, repository)
    return runnable_spec(folder, channel, edit=lambda text: gh200_pool(edit(text)))


@pytest.fixture(scope="module")
def indexed(
    runnable_channel: Path, containers: ContainerSetup, tmp_path_factory: pytest.TempPathFactory
) -> Indexed:
    folder = tmp_path_factory.mktemp("arm64-images")
    repository = f"{containers.registry.address}/gh200"
    spec = _spec(folder, runnable_channel, containers, repository)
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE, "ENVBUILD_CACHE_DIR": str(folder / "cache")}
    subprocess.run([ENVBUILD, "lock", "-q", "-f", spec], cwd=folder, env=env, check=True)
    layout = folder / "layout"
    done = subprocess.run(
        [ENVBUILD, "image", "--role", "worker", "--push", "--oci", layout, "--json", "-f", spec],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    worker = _outcomes(done)["worker"]
    return Indexed(containers, folder, spec, env, repository, worker, layout)


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_worker_tag_is_an_index_of_an_amd64_and_an_arm64_image(indexed: Indexed) -> None:
    outcome = indexed.outcome
    assert outcome["status"] == "built" and outcome["media_type"] == oci.INDEX
    assert outcome["platforms"] == ["linux-64", "linux-aarch64"]
    amd64, arm64 = indexed.manifest("linux-64"), indexed.manifest("linux-aarch64")
    assert amd64["reference"].endswith("-amd64") and arm64["reference"].endswith("-arm64")
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{indexed.reference}")
    index = json.loads(raw.stdout)
    assert oci.digest_of(raw.stdout.encode()) == outcome["digest"]
    assert index["mediaType"] == oci.INDEX
    assert [(m["platform"], m["digest"]) for m in index["manifests"]] == [
        (AMD64, amd64["digest"]),
        (ARM64, arm64["digest"]),
    ]
    # Each platform's image by its digest: its config says the same platform.
    for entry in index["manifests"]:
        reference = f"docker://{indexed.repository}@{entry['digest']}"
        config = json.loads(skopeo("inspect", "--tls-verify=false", "--config", reference).stdout)
        assert {k: config.get(k) for k in entry["platform"]} == entry["platform"]
        labels = config["config"]["Labels"]
        subdir = "linux-aarch64" if entry["platform"] == ARM64 else "linux-64"
        assert labels["io.envbuild.platform"] == subdir
    # What an arm64 machine pulls by the one tag: the arm64 image, byte for byte.
    pulled = indexed.folder / "pulled-arm64"
    skopeo(
        "--override-arch", "arm64", "--override-variant", "v8", "copy", "--src-tls-verify=false",
        f"docker://{indexed.reference}", f"oci:{pulled}:arm64",
    )  # fmt: skip
    (entry,) = json.loads((pulled / "index.json").read_text())["manifests"]
    assert entry["digest"] == arm64["digest"]
    # The layout written in the same run names the same index by the same tag.
    (named,) = [
        m
        for m in json.loads((indexed.layout / "index.json").read_text())["manifests"]
        if m["annotations"][oci.REF_NAME] == indexed.reference.rsplit(":", 1)[1]
    ]
    assert (named["mediaType"], named["digest"]) == (oci.INDEX, outcome["digest"])


def elf_machines(blobs: list[Path]) -> dict[str, int]:
    """Path -> ELF e_machine of every ELF file in the layer blobs."""
    machines = {}
    for blob in blobs:
        with gzip.open(blob) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.size >= 20:
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    header = extracted.read(20)
                    if header[:4] == b"\x7fELF":
                        name = member.name.removeprefix("./")
                        machines[name] = int.from_bytes(header[18:20], "little")
    return machines


def test_every_binary_in_the_arm64_image_is_aarch64(indexed: Indexed) -> None:
    arm = elf_machines(indexed.layer_blobs("linux-aarch64"))
    x86 = elf_machines(indexed.layer_blobs("linux-64"))

    assert set(arm.values()) == {EM_AARCH64}, sorted(p for p, m in arm.items() if m != EM_AARCH64)
    assert set(x86.values()) == {EM_X86_64}  # the same walk sees x86-64 where it is
    mine = {p for p in arm if p.startswith("opt/env/")}
    assert len(mine) > 150  # the interpreter, the extensions, the CUDA runtime, cupy's
    for binary in ("opt/env/bin/python3.11", "opt/env/lib/libcudart.so.12"):
        assert binary in arm and binary in x86
    assert any(p.startswith("opt/env/lib/python3.11/site-packages/cupy/") for p in mine)
    assert "usr/lib/aarch64-linux-gnu/libc.so.6" in arm  # the base is arm64 too


@pytest.fixture(scope="module")
def arm64_root(indexed: Indexed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arm64 image's file system: its layers (the base's first) unpacked in order."""
    require(shutil.which(QEMU) is not None, f"{QEMU} (apt-get install qemu-user-static)")
    root = tmp_path_factory.mktemp("arm64-root")
    for blob in indexed.layer_blobs("linux-aarch64"):
        subprocess.run(
            ["tar", "-xzf", str(blob), "-C", str(root), "--exclude=./dev", "--exclude=dev"],
            check=True,
        )
    return root


def under_qemu(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The image's python, run under qemu-user over the image's own root."""
    return subprocess.run(
        [QEMU, "-L", str(root), str(root / "opt" / "env" / "bin" / "python3.11"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": os.environ["PATH"], "HOME": str(root / "home" / "dask"), **env},
    )


def test_the_arm64_images_python_computes_with_the_dask_stack_under_qemu(
    arm64_root: Path,
) -> None:
    program = (
        "import json, platform, sys\n"
        "import dask, dask.array as da, distributed, numpy, pandas\n"
        "frame = pandas.DataFrame({'k': [1, 2, 1, 2], 'v': [1.0, 2.0, 3.0, 4.0]})\n"
        "print(json.dumps({\n"
        "  'machine': platform.machine(), 'prefix': sys.prefix,\n"
        "  'versions': [dask.__version__, distributed.__version__, numpy.__version__,\n"
        "               pandas.__version__],\n"
        "  'array_sum': float(da.ones((500, 500), chunks=250).sum().compute()),\n"
        "  'groupby': frame.groupby('k')['v'].sum().to_dict(),\n"
        "}))\n"
    )
    done = under_qemu(arm64_root, "-c", program)

    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["machine"] == "aarch64"
    assert result["prefix"] == str(arm64_root / "opt" / "env")
    assert result["versions"] == ["2024.8.2", "2024.8.2", "2.0.2", "2.2.2"]
    assert result["array_sum"] == 250_000.0 and result["groupby"] == {"1": 4.0, "2": 6.0}


def test_the_gpu_check_in_the_arm64_image_accepts_a_gh200_and_refuses_cc_8_0(
    arm64_root: Path, tmp_path: Path
) -> None:
    require(
        nvml.compiler("aarch64") is not None,
        "aarch64-linux-gnu-gcc cross-compiles the fake NVML (apt-get install "
        "gcc-aarch64-linux-gnu libc6-dev-arm64-cross)",
    )
    library = nvml.build(tmp_path / "nvml", "aarch64").parent
    role_file = json.loads((arm64_root / "etc" / "envbuild" / "role.json").read_text())
    assert (role_file["role"], role_file["compute-capability"]) == ("worker", ">=9.0")

    def check(gpu: str) -> subprocess.CompletedProcess[str]:
        # As the image's entrypoint runs it (its PYTHONPATH and role file), before the command.
        return under_qemu(
            arm64_root,
            "-m",
            "envbuild.gpucheck",
            PYTHONPATH=str(arm64_root / "opt" / "envbuild"),
            ENVBUILD_ROLE_FILE=str(arm64_root / "etc" / "envbuild" / "role.json"),
            LD_LIBRARY_PATH=str(library),
            FAKE_NVML_DEVICES=gpu,
            FAKE_NVML_DRIVER="550.54.15",
            FAKE_NVML_CUDA="12040",
        )

    gh200 = check("NVIDIA GH200 480GB,9.0,GPU-gh200")
    assert gh200.returncode == 0, gh200.stdout + gh200.stderr
    assert "NVIDIA GH200 480GB  cc 9.0" in gh200.stdout and "ok (1 GPU usable)" in gh200.stdout
    a100 = check("NVIDIA A100-SXM4-80GB,8.0,GPU-a100")
    assert a100.returncode == 22, a100.stdout + a100.stderr
    assert "FAIL: compute capability 8.0 < 9.0" in a100.stdout


def test_the_amd64_image_of_the_same_role_runs_on_the_engine(indexed: Indexed) -> None:
    import docker

    client = docker.DockerClient(base_url=indexed.setup.host)
    try:
        image = client.images.pull(indexed.reference)  # the index: the engine takes amd64
        assert image.attrs["Architecture"] == "amd64"
        assert f"{indexed.repository}@{indexed.outcome['digest']}" in image.attrs["RepoDigests"]
        assert image.id == oci.digest_of(indexed.blob(_config_of(indexed, "linux-64")))
        said = client.containers.run(
            indexed.reference,
            ["python", "-c", "import dask.array as da; print(da.ones(100).sum().compute())"],
            network_mode="none",
            environment={"ENVBUILD_GPU_CHECK": "skip"},
            remove=True,
        )
    finally:
        client.close()
    assert said.decode().split()[-1] == "100.0"
    # --load without --platform loads what the engine runs, under the role's tag.
    loaded = _outcomes(
        indexed.envbuild("image", "--role", "worker", "--json", "-f", indexed.spec,
                         DOCKER_HOST=indexed.setup.host)
    )["worker"]  # fmt: skip
    assert [m["platforms"] for m in loaded["manifests"]] == [["linux-64"]]


def _config_of(indexed: Indexed, platform: str) -> str:
    manifest = json.loads(indexed.blob(indexed.manifest(platform)["digest"]))
    return str(manifest["config"]["digest"])


def test_another_machine_building_one_platform_at_a_time_gets_the_same_index(
    indexed: Indexed, runnable_channel: Path, tmp_path: Path
) -> None:
    with local_docker.registry() as other:
        repository = f"{other.address}/gh200"
        spec = _spec(tmp_path, runnable_channel, indexed.setup, repository)
        env = {"ENVBUILD_CACHE_DIR": str(tmp_path / "cache")}  # staged again, from nothing
        assert indexed.envbuild("lock", "-q", "-f", spec, **env).returncode == 0

        def job(platform: str) -> dict[str, Any]:
            args = ("--role", "worker", "--platform", platform, "--push", "--skip-existing")
            return _outcomes(indexed.envbuild("image", *args, "--json", "-f", spec, **env))[
                "worker"
            ]

        arm = job("linux-aarch64")
        # One platform is there: its own tag, not the role's, which would name half an index.
        assert arm["digest"] is None and "linux-64 image too" in arm["note"]
        assert [m["digest"] for m in arm["manifests"]] == [
            indexed.manifest("linux-aarch64")["digest"]
        ]
        tags = skopeo("list-tags", "--tls-verify=false", f"docker://{repository}").stdout
        tag = indexed.reference.rsplit(":", 1)[1]
        assert indexed.manifest("linux-aarch64")["reference"].rsplit(":", 1)[1] in tags
        assert f'"{tag}"' not in tags
        # The last platform's job completes the index: the same bytes as the first machine's.
        amd = job("linux-64")
        assert amd["digest"] == indexed.outcome["digest"] and amd["note"] is None
        assert [m["digest"] for m in amd["manifests"]] == [indexed.manifest("linux-64")["digest"]]
        again = job("linux-64")
        assert again["status"] == "in-registry"
    layers = {
        platform: [m["layers"][name]["sha256"] for name in ("shared", "variant", "role")]
        for platform, m in (
            ("linux-aarch64", arm["manifests"][0]),
            ("linux-64", amd["manifests"][0]),
        )
    }
    first = {
        platform: [
            indexed.manifest(platform)["layers"][n]["sha256"] for n in ("shared", "variant", "role")
        ]
        for platform in layers
    }
    assert layers == first
