"""The GPU check as the image runs it: from envbuild's runtime files with a python that has no
pynvml (issue 17 item 1), as PID 1 (item 3), and behind the NVIDIA runtime's own
NVIDIA_REQUIRE_* constraints (item 2)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envbuild import gpucheck
from envbuild.env import runtime
from envbuild.image.plan import nvidia_requirements
from envbuild.testing import nvml

from .conftest import require

#: A python without pynvml: Debian's, which the runnable channel is made from.
BARE_PYTHON = Path("/usr/bin/python3.11")
A100 = "NVIDIA A100-SXM4-80GB,8.0,GPU-a100"
T4 = "Tesla T4,7.5,GPU-t4"


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(nvml.compiler() is not None, "gcc is needed to build the fake NVML library")
    return nvml.build(tmp_path_factory.mktemp("fake-nvml")).parent


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """envbuild's runtime files as an image carries them (its /opt/envbuild)."""
    for name, content in runtime.files().items():
        path = tmp_path / "runtime" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return tmp_path / "runtime"


def bare_check(
    runtime_folder: Path, fake: Path, gpus: str, *args: str
) -> subprocess.CompletedProcess[str]:
    require(BARE_PYTHON.is_file(), "Debian's python3.11 is a python without pynvml")
    environment = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(runtime_folder),
        "LD_LIBRARY_PATH": str(fake),
        "FAKE_NVML_DEVICES": gpus,
        "FAKE_NVML_DRIVER": "550.54.15",
        "FAKE_NVML_CUDA": "12040",
        "ENVBUILD_ROLE_FILE": "/nonexistent/role.json",
    }
    return subprocess.run(
        [str(BARE_PYTHON), "-s", "-m", "envbuild.gpucheck", "--cuda", "12.4",
         "--compute-capability", ">=8.0", *args],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
        cwd=runtime_folder,  # as an image runs it: never from envbuild's source tree
    )  # fmt: skip


def test_the_shipped_check_needs_no_pynvml_in_the_environment(
    shipped: Path, fake_nvml: Path
) -> None:
    probe = subprocess.run(
        [str(BARE_PYTHON), "-s", "-c", "import pynvml"], capture_output=True, check=False
    )
    assert probe.returncode != 0, "this python must not have pynvml for the test to mean much"
    a100 = bare_check(shipped, fake_nvml, A100)
    assert a100.returncode == 0, a100.stdout + a100.stderr
    assert "NVIDIA A100-SXM4-80GB  cc 8.0" in a100.stdout
    t4 = bare_check(shipped, fake_nvml, T4)
    assert t4.returncode == gpucheck.COMPUTE_CAPABILITY, t4.stdout + t4.stderr
    assert "compute capability 7.5 < 8.0" in t4.stdout


def test_a_missing_binding_is_its_own_failure_not_no_driver(shipped: Path, fake_nvml: Path) -> None:
    (shipped / "envbuild" / "gpucheck" / "_pynvml.py").unlink()
    done = bare_check(shipped, fake_nvml, A100)
    assert done.returncode == gpucheck.NO_BINDING == 25
    assert "NVML binding is missing" in done.stdout and "NVIDIA runtime" not in done.stdout


def test_the_shipped_binding_never_shadows_the_environments_pynvml(shipped: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import pynvml, envbuild.gpucheck; print(pynvml.__file__)"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(shipped)},
    )  # fmt: skip
    assert str(shipped) not in done.stdout  # the environment's own pynvml, not ours


# --- PID 1 ---------------------------------------------------------------------------------


def as_pid_one(*command: str, **env: str) -> subprocess.Popen[str]:
    """``python -m envbuild.gpucheck -- COMMAND`` as PID 1 of a new PID namespace."""
    require(shutil.which("unshare") is not None and os.geteuid() == 0, "unshare as root")
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "envbuild.gpucheck",
         "--", *command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "ENVBUILD_ROLE_FILE": "/nonexistent", **env},
    )  # fmt: skip


ORPHANS = r"""
import os, subprocess, time
os.system("sleep 0.2 &")                      # sh exits; its sleep is orphaned to PID 1
time.sleep(1.0)
states = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        with open(f"/proc/{entry}/stat") as handle:
            states.append(handle.read().rsplit(")", 1)[1].split()[0])
print("zombies", states.count("Z"))
"""


@pytest.mark.parametrize(("init", "zombies"), [("1", 0), ("0", 1)])
def test_as_pid_one_orphans_are_reaped(init: str, zombies: int) -> None:
    process = as_pid_one(sys.executable, "-c", ORPHANS, ENVBUILD_INIT=init)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"zombies {zombies}" in out  # ENVBUILD_INIT=0 execs: python as PID 1 reaps nothing


TERMINATED = r"""
import signal, sys, time, os
def stop(number, frame):
    own_group = os.getpgrp() == os.getpid()
    print("stopping on", signal.Signals(number).name, "group", own_group, flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""


def test_as_pid_one_signals_reach_the_command_and_its_status_is_kept() -> None:
    process = as_pid_one(sys.executable, "-c", TERMINATED)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    inner = _child_of(process.pid)  # PID 1 inside, an ordinary pid outside
    started = time.monotonic()
    os.kill(inner, signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert "stopping on SIGTERM group True" in out
    assert process.returncode == 3 and time.monotonic() - started < 10


def test_as_pid_one_a_missing_command_is_127() -> None:
    process = as_pid_one("/no/such/command")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 127 and "cannot run" in err


def _child_of(pid: int) -> int:
    for _ in range(100):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no child")


# --- NVIDIA_REQUIRE_* -------------------------------------------------------------------------


def runtime_accepts(constraints: dict[str, str], cuda: str, driver: str, arch: str) -> bool:
    """libnvidia-container's rule language, written here independently: each NVIDIA_REQUIRE_*
    variable must hold; in one, space-separated terms are ORed, comma-separated ANDed;
    cuda is the driver's CUDA version, driver its version, arch a GPU's compute capability."""
    facts = {"cuda": cuda, "driver": driver, "arch": arch}

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    def holds(term: str) -> bool:
        name, operator, value = re.fullmatch(r"([a-z]+)(>=|<=|!=|=|>|<)(.+)", term).groups()  # type: ignore[union-attr]
        have, want = version(facts[name]), version(value)
        width = max(len(have), len(want))
        have, want = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        return {
            ">=": have >= want, "<=": have <= want, ">": have > want, "<": have < want,
            "=": have == want, "!=": have != want,
        }[operator]  # fmt: skip

    return all(
        any(all(holds(t) for t in alternative.split(",")) for alternative in value.split())
        for value in constraints.values()
    )


DRIVERS = {"470.256.02": "11.4", "525.147.05": "12.0", "550.54.15": "12.4", "580.65.06": "13.0"}
ARCHES = ("6.0", "7.0", "7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")


@pytest.mark.parametrize("requirement", [None, ">=7.5", ">=8.0", ">=8.6", ">=7.5,<9.0", "==9.0"])
@pytest.mark.parametrize("cuda", ["11.8", "12.4", "13.0"])
def test_the_runtime_refuses_exactly_the_nodes_the_check_refuses(
    requirement: str | None, cuda: str
) -> None:
    constraints = nvidia_requirements(cuda, requirement)
    runtime_version = gpucheck.parse_cuda_version(cuda)
    for driver, driver_cuda in DRIVERS.items():
        fitting_driver = (
            gpucheck.driver_problem(
                gpucheck.Driver(driver, gpucheck.parse_cuda_version(driver_cuda)), runtime_version
            )
            is None
        )
        for arch in ARCHES:
            major, minor = (int(p) for p in arch.split("."))
            fitting_gpu = requirement is None or (
                gpucheck.ComputeCapability.parse(requirement).failed_clause((major, minor)) is None
            )
            assert runtime_accepts(constraints, driver_cuda, driver, arch) == (
                fitting_driver and fitting_gpu
            ), (constraints, driver, arch)


# --- an environment from `envbuild init`'s spec --------------------------------------------


@pytest.mark.slow
def test_an_environment_from_the_init_template_checks_its_gpus(
    runnable_channel: Path, fake_nvml: Path, tmp_path: Path
) -> None:
    """The template lists no nvidia-ml-py; the check must work in its environments anyway."""
    envbuild = str(Path(sys.executable).parent / "envbuild")
    spec = tmp_path / "envbuild.yaml"
    subprocess.run([envbuild, "init", "-f", str(spec)], check=True, capture_output=True)
    text = spec.read_text()
    assert "nvidia-ml-py" not in text and "channels: [conda-forge]" in text
    spec.write_text(text.replace("channels: [conda-forge]", f"channels: ['{runnable_channel}']"))
    run = {"cwd": tmp_path, "capture_output": True, "text": True, "check": False}
    locked = subprocess.run([envbuild, "lock", "-q", "-f", str(spec)], **run)  # type: ignore[call-overload]
    assert locked.returncode == 0, locked.stderr
    made = subprocess.run(  # type: ignore[call-overload]
        [envbuild, "env", "-q", "--role", "worker", "-f", str(spec)], **run
    )
    assert made.returncode == 0, made.stderr
    prefix = tmp_path / "envs" / "worker"
    assert not list((prefix / "conda-meta").glob("nvidia-ml-py-*.json"))
    check = [envbuild, "run", "--role", "worker", "-f", str(spec), "--", "python", "-m",
             "envbuild.gpucheck", "--cuda", "12.4", "--compute-capability", ">=8.0"]  # fmt: skip
    fake = {"LD_LIBRARY_PATH": str(fake_nvml), "FAKE_NVML_DRIVER": "550.54.15",
            "FAKE_NVML_CUDA": "12040", "ENVBUILD_ROLE_FILE": "/nonexistent"}  # fmt: skip
    a100 = subprocess.run(check, **run, env={**os.environ, **fake, "FAKE_NVML_DEVICES": A100})  # type: ignore[call-overload]
    assert a100.returncode == 0, a100.stdout + a100.stderr
    t4 = subprocess.run(check, **run, env={**os.environ, **fake, "FAKE_NVML_DEVICES": T4})  # type: ignore[call-overload]
    assert t4.returncode == gpucheck.COMPUTE_CAPABILITY, t4.stdout + t4.stderr
