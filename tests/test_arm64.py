"""linux-aarch64 without an Arm machine: a GH200 worker pool locked beside x86 workers from the
runnable channel, its environment made on this x86 machine, and its arm64 python run under
qemu-user (``qemu-aarch64-static -L ROOTFS``, no binfmt) over an arm64 Debian root: the Dask
stack computes, every binary is aarch64, and the GPU check judges a fake GH200 through an
aarch64 build of the fake NVML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from envbuild.testing import debian, docker, nvml

from .conftest import REPO, lock_document, require, target_packages
from .test_alignment import assert_invariant, exported

pytestmark = pytest.mark.slow

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
QEMU = "qemu-aarch64-static"
GPU_STACK = {"cupy", "cuda-cudart", "cuda-version", "fastrlock"}
#: ELF e_machine values.
EM_X86_64, EM_AARCH64 = 62, 183
#: The x86 workers are A100s, the Arm ones GH200s (Grace Hopper: cc 9.0), both on CUDA 12.4.
SPEC = """\
name: dask-gh200
channels: ['{channel}']
platforms: [linux-64]
dependencies:
  - python 3.11.*
  - dask 2024.8.*
  - distributed
  - numpy
  - pandas
  - nvidia-ml-py
gpu-dependencies: [cupy]
roles:
  client:
    gpu: false
  scheduler:
    gpu: false
  worker:
    platforms: [linux-64, linux-aarch64]
    gpu: {{cuda: "12.4", compute-capability: ">=9.0"}}
"""


def envbuild_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVBUILD, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def spec(runnable_channel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spec, locked against the runnable channel."""
    folder = tmp_path_factory.mktemp("arm64")
    path = folder / "envbuild.yaml"
    path.write_text(SPEC.format(channel=runnable_channel))
    locked = envbuild_cli("lock", "-q", "-f", path, cwd=folder)
    assert locked.returncode == 0, locked.stderr
    return path


@pytest.fixture(scope="module")
def workers(spec: Path) -> dict[str, Path]:
    """The worker environment for each platform, made here: platform -> prefix."""
    prefixes = {}
    for platform in ("linux-64", "linux-aarch64"):
        prefix = spec.parent / "envs" / f"worker-{platform}"
        made = envbuild_cli(
            "env", "-q", "-f", spec, "--role", "worker", "--platform", platform,
            "--prefix", prefix, "--cache-dir", spec.parent / "pkgs", cwd=spec.parent,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        prefixes[platform] = prefix
    return prefixes


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An arm64 Debian bookworm root (envbuild.testing.docker.arm64_base_tar, cached under
    build/cache), unpacked."""
    require(shutil.which(QEMU) is not None, f"{QEMU} runs arm64 programs (apt-get install "
            "qemu-user-static)")  # fmt: skip
    require(
        os.geteuid() == 0 and shutil.which("debootstrap") is not None,
        "the arm64 root is made with debootstrap, as root",
    )
    tar = docker.arm64_base_tar(REPO / "build" / "cache")
    root = tmp_path_factory.mktemp("rootfs-arm64")
    subprocess.run(["tar", "-xf", str(tar), "-C", str(root), "--exclude=./dev"], check=True)
    return root


def test_the_arm64_root_has_what_its_unrun_scripts_would_have_made(rootfs: Path) -> None:
    # Unpacked without running maintainer scripts (no Arm machine, no binfmt): the users and
    # the CA bundle, which a Python image needs, are made without them.
    assert (rootfs / "etc" / "passwd").read_text().startswith("root:*:0:0:root:/root:")
    assert "root:*:0:" in (rootfs / "etc" / "group").read_text()
    bundle = (rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt").read_text()
    assert bundle.count("-----BEGIN CERTIFICATE-----") > 100
    assert (rootfs / "lib").readlink() == Path("usr/lib")  # merged /usr, as on Debian
    assert (rootfs / "usr" / "lib" / "ld-linux-aarch64.so.1").exists()


def arm64(rootfs: Path, prefix: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The environment's arm64 python, run under qemu-user over ``rootfs``."""
    return subprocess.run(
        [QEMU, "-L", str(rootfs), str(prefix / "bin" / "python3.11"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": os.environ["PATH"], "HOME": str(prefix), **env},
    )


def elf_machines(prefix: Path) -> dict[str, int]:
    """Path (relative to ``prefix``) -> ELF e_machine of every ELF file in it."""
    machines = {}
    for path in sorted(prefix.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as file:
            header = file.read(20)
        if header[:4] == b"\x7fELF":
            machines[path.relative_to(prefix).as_posix()] = int.from_bytes(header[18:20], "little")
    return machines


def test_gh200_workers_lock_beside_a100_workers_with_the_same_versions(
    spec: Path, tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    copy = tmp_path / "envbuild.yaml"
    shutil.copy(spec, copy)
    records = exported(envbuild, copy)

    assert set(records) == {"cpu/linux-64", "cuda-12.4/linux-64", "cuda-12.4/linux-aarch64"}
    assert_invariant(records, builds_may_differ=GPU_STACK, runtime=())
    x86, arm = records["cuda-12.4/linux-64"], records["cuda-12.4/linux-aarch64"]
    assert set(arm) == set(x86) and arm["cupy"][0] == "13.3.0" and arm["numpy"][0] == "2.0.2"
    assert arm["cupy"][1].startswith("py311cuda12") and arm["numpy"][1] != x86["numpy"][1]
    document = lock_document(copy.parent / "envbuild.lock")
    declared = document["variants"]["cuda-12.4"]["targets"]["linux-aarch64"]["virtual-packages"]
    assert "__archspec=1=aarch64" in declared and "__cuda=12.4=0" in declared
    # Every package of the arm64 target is an aarch64 or a noarch build.
    packages = target_packages(document)["cuda-12.4/linux-aarch64"]
    assert {p["subdir"] for p in packages.values()} == {"linux-aarch64", "noarch"}
    assert packages["python"]["subdir"] == "linux-aarch64"


def test_no_two_packages_install_the_same_file(workers: dict[str, Path]) -> None:
    # rattler moves a file that two packages install into __clobbers__ and keeps one of them,
    # which one depending on the install order: the same lock would run different code.
    for prefix in workers.values():
        assert not (prefix / "__clobbers__").exists(), sorted(
            p.relative_to(prefix).as_posix()
            for p in (prefix / "__clobbers__").rglob("*")
            if p.is_file()
        )


def test_every_binary_of_the_arm64_environment_is_aarch64(
    spec: Path, workers: dict[str, Path]
) -> None:
    arm, x86 = elf_machines(workers["linux-aarch64"]), elf_machines(workers["linux-64"])

    assert set(arm.values()) == {EM_AARCH64}, {p for p, m in arm.items() if m != EM_AARCH64}
    assert set(x86.values()) == {EM_X86_64}  # the same walk sees x86-64 where it is
    # The interpreter, the standard library's and the wheels' extensions, the CUDA runtime.
    assert len(arm) > 150
    for binary in ("bin/python3.11", "lib/libcudart.so.12"):
        assert binary in arm
    # The same standard library extensions on both, modulo the triplet in their names.
    arm_stdlib = {p.replace("aarch64", "x86_64") for p in arm if "/lib-dynload/" in p}
    assert arm_stdlib == {p for p in x86 if "/lib-dynload/" in p}
    assert any(p.startswith("lib/python3.11/site-packages/numpy/") for p in arm)
    assert any(p.startswith("lib/python3.11/site-packages/cupy/") for p in arm)
    verified = envbuild_cli(
        "verify", "-f", spec, "--role", "worker", "--platform", "linux-aarch64",
        "--prefix", workers["linux-aarch64"], "--files", cwd=spec.parent,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


def test_the_arm64_python_computes_with_the_dask_stack_under_qemu(
    workers: dict[str, Path], rootfs: Path
) -> None:
    prefix = workers["linux-aarch64"]
    program = (
        "import json, platform, sys\n"
        "import dask, dask.array as da, distributed, numpy, pandas, pynvml, cupy\n"
        "frame = pandas.DataFrame({'k': [1, 2, 1, 2], 'v': [1.0, 2.0, 3.0, 4.0]})\n"
        "print(json.dumps({\n"
        "  'machine': platform.machine(), 'prefix': sys.prefix,\n"
        "  'versions': [dask.__version__, distributed.__version__, numpy.__version__,\n"
        "               pandas.__version__, cupy.__version__],\n"
        "  'array_sum': float(da.ones((1000, 1000), chunks=250).sum().compute()),\n"
        "  'groupby': frame.groupby('k')['v'].sum().to_dict(),\n"
        "}))\n"
    )
    done = arm64(rootfs, prefix, "-c", program)

    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["machine"] == "aarch64" and result["prefix"] == str(prefix)
    assert result["versions"] == ["2024.8.2", "2024.8.2", "2.0.2", "2.2.2", "13.3.0"]
    assert result["array_sum"] == 1_000_000.0
    assert result["groupby"] == {"1": 4.0, "2": 6.0}


@pytest.fixture(scope="module")
def fake_nvml_aarch64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an aarch64 build of the fake libnvidia-ml.so.1."""
    require(
        nvml.compiler("aarch64") is not None,
        "aarch64-linux-gnu-gcc cross-compiles the fake NVML (apt-get install "
        "gcc-aarch64-linux-gnu libc6-dev-arm64-cross)",
    )
    return nvml.build(tmp_path_factory.mktemp("nvml-aarch64"), "aarch64").parent


def test_the_gpu_check_of_the_arm64_worker_accepts_a_gh200_and_refuses_an_a100(
    workers: dict[str, Path],
    rootfs: Path,
    fake_nvml_aarch64: Path,
    tmp_path: Path,
) -> None:
    prefix = workers["linux-aarch64"]
    assert elf_machines(fake_nvml_aarch64) == {nvml.LIBRARY: EM_AARCH64}

    def check(library: Path, name: str, cc: str) -> subprocess.CompletedProcess[str]:
        return arm64(
            rootfs,
            prefix,
            "-m",
            "envbuild.gpucheck",
            "--role",
            "worker",
            "--cuda",
            "12.4",
            "--compute-capability",
            ">=9.0",
            PYTHONPATH=str(prefix / "etc" / "envbuild" / "python"),  # as `envbuild run` sets
            LD_LIBRARY_PATH=str(library),
            FAKE_NVML_DEVICES=f"{name},{cc},GPU-0",
            FAKE_NVML_DRIVER="550.54.15",
            FAKE_NVML_CUDA="12040",
        )

    gh200 = check(fake_nvml_aarch64, "NVIDIA GH200 480GB", "9.0")
    assert gh200.returncode == 0, gh200.stdout + gh200.stderr
    assert "NVIDIA GH200 480GB  cc 9.0" in gh200.stdout and "ok (1 GPU usable)" in gh200.stdout

    a100 = check(fake_nvml_aarch64, "NVIDIA A100-SXM4-80GB", "8.0")
    assert a100.returncode == 22, a100.stdout + a100.stderr
    assert "FAIL: compute capability 8.0 < 9.0" in a100.stdout

    # The x86-64 build of the library cannot be loaded by an arm64 pynvml: no driver.
    require(nvml.compiler() is not None, "gcc builds the fake NVML library")
    x86 = check(nvml.build(tmp_path / "x86").parent, "NVIDIA GH200 480GB", "9.0")
    assert x86.returncode == 20, x86.stdout + x86.stderr
    assert "no NVIDIA driver found" in x86.stdout + x86.stderr


def test_a_damaged_arm64_python_deb_is_one_line_and_leaves_no_channel(
    runnable_channel: Path, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "channel"
    shutil.copytree(REPO / "build" / "cache" / "runnable" / "wheels", cache / "wheels")
    victim = next(d for d in debian.pinned_debs() if d.package == "libpython3.11-stdlib")
    (cache / "wheels" / victim.file_name).write_bytes(b"!<arch>\nnot a deb")
    done = subprocess.run(
        [sys.executable, "-m", "envbuild.testing.runnable", str(out), "--offline"],
        capture_output=True,
        text=True,
        env={**os.environ, "ENVBUILD_RUNNABLE_CACHE": str(cache)},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"envbuild runnable channel: error: Debian package cache {cache / 'wheels'}: "
        f"{victim.file_name} is damaged (1 of {len(debian.pinned_debs())} to fetch) and "
        "fetching is off; run once with access to Debian's mirror"
    ]
    assert not out.exists() and not list(cache.glob("channel-*"))
