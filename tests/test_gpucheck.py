"""The GPU check, run as a fresh process with the real pynvml and a fake libnvidia-ml.so.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envbuild import gpucheck
from envbuild.gpucheck import ComputeCapability, Device, Driver, driver_problem, visible_devices
from envbuild.testing import nvml

from .conftest import require

A100 = "NVIDIA A100-SXM4-80GB,8.0,GPU-a100"
T4 = "Tesla T4,7.5,GPU-t4"
H200 = "NVIDIA H200,9.0,GPU-h200"
DRIVERS = {  # driver branch -> (version string, CUDA version NVML reports)
    470: ("470.256.02", "11040"),
    525: ("525.147.05", "12000"),
    550: ("550.54.15", "12040"),
    580: ("580.65.06", "13000"),
}


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the fake libnvidia-ml.so.1 (envbuild/testing/fake_nvml.c)."""
    require(nvml.compiler() is not None, "gcc is needed to build the fake NVML library")
    return nvml.build(tmp_path_factory.mktemp("fake-nvml")).parent


Check = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def check(fake_nvml: Path, tmp_path: Path) -> Check:
    """Run ``python -m envbuild.gpucheck ARGS`` with the given GPUs and driver."""

    def run(
        *args: str,
        gpus: tuple[str, ...] = (A100,),
        driver: int = 550,
        driver_present: bool = True,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        version, cuda = DRIVERS[driver]
        environment = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ENVBUILD_GPU_CHECK")
        }
        environment.update(
            LD_LIBRARY_PATH=str(fake_nvml if driver_present else tmp_path),
            FAKE_NVML_DEVICES=";".join(gpus),
            FAKE_NVML_DRIVER=version,
            FAKE_NVML_CUDA=cuda,
            ENVBUILD_ROLE_FILE=str(tmp_path / "no-role-file.json"),
        )
        environment.update(env)
        return subprocess.run(
            [sys.executable, "-m", "envbuild.gpucheck", *args],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
        )

    return run


WORKER = (
    "--role",
    "worker",
    "--variant",
    "cuda-12.4",
    "--cuda",
    "12.4",
    "--compute-capability",
    ">=8.0",
)


def test_a_worker_on_an_a100_passes(check: Check) -> None:
    result = check(*WORKER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "envbuild gpu check: role=worker variant=cuda-12.4 needs compute capability >=8.0, "
        "CUDA runtime 12.4",
        "  GPU 0  NVIDIA A100-SXM4-80GB  cc 8.0  driver 550.54.15 (CUDA 12.4)  ok",
        "envbuild gpu check: ok (1 GPU usable)",
    ]


def test_a_t4_among_a100s_fails_the_worker(check: Check) -> None:
    result = check(*WORKER, gpus=(A100, T4))
    assert result.returncode == gpucheck.COMPUTE_CAPABILITY == 22
    lines = result.stdout.splitlines()
    assert lines[2] == (
        "  GPU 1  Tesla T4               cc 7.5  driver 550.54.15 (CUDA 12.4)  "
        "FAIL: compute capability 7.5 < 8.0"
    )
    assert lines[-1] == (
        "envbuild gpu check: FAILED (1 of 2 GPUs unusable); "
        "set ENVBUILD_GPU_CHECK=warn to start anyway"
    )


@pytest.mark.parametrize(
    ("gpu", "requirement", "code"),
    [
        (T4, ">=7.5", 0),
        (A100, ">=7.5", 0),
        (H200, ">=8.0", 0),
        (T4, ">=8.0", 22),
        (H200, ">=8.0,<9.0", 22),
    ],
    ids=["T4-scheduler", "A100-scheduler", "H200-worker", "T4-worker", "H200-too-new"],
)
def test_compute_capability(check: Check, gpu: str, requirement: str, code: int) -> None:
    result = check("--cuda", "12.4", "--compute-capability", requirement, gpus=(gpu,))
    assert result.returncode == code, result.stdout


@pytest.mark.parametrize(
    ("driver", "cuda", "code", "message"),
    [
        (470, "11.8", 0, "ok"),  # minor-version compatibility: 11.x runs on >= 450
        (
            470,
            "12.4",
            23,
            "driver 470.256.02 supports CUDA 11.4, the image needs CUDA 12.4: "
            "upgrade the driver to >= 525",
        ),
        (525, "12.4", 0, "ok"),  # 12.x runs on >= 525
        (550, "12.4", 0, "ok"),
        (580, "12.4", 0, "ok"),  # a newer driver runs older runtimes
        (550, "13.0", 23, "upgrade the driver to >= 580"),
        (580, "13.0", 0, "ok"),
    ],
)
def test_driver_compatibility(
    check: Check, driver: int, cuda: str, code: int, message: str
) -> None:
    result = check("--cuda", cuda, driver=driver)
    assert result.returncode == code
    assert message in result.stdout.splitlines()[-1]
    if code:
        assert "FAIL: driver too old" in result.stdout


def test_no_driver_says_how_to_fix_it(check: Check) -> None:
    result = check(*WORKER, driver_present=False)
    assert result.returncode == gpucheck.NO_DRIVER == 20
    assert "no NVIDIA driver found (NVML Shared Library Not Found)" in result.stdout
    assert "--gpus all" in result.stdout
    failed_init = check(*WORKER, FAKE_NVML_INIT="9")
    assert failed_init.returncode == 20 and "Driver Not Loaded" in failed_init.stdout


def test_too_few_gpus(check: Check) -> None:
    result = check(*WORKER, "--gpus", "2")
    assert result.returncode == gpucheck.TOO_FEW_GPUS == 21
    assert "1 GPU visible, the role needs 2" in result.stdout
    assert check(*WORKER, "--gpus", "2", gpus=(A100, A100)).returncode == 0


@pytest.mark.parametrize(
    ("env", "code", "visible"),
    [
        ({"NVIDIA_VISIBLE_DEVICES": "0"}, 0, ["GPU 0"]),
        ({"NVIDIA_VISIBLE_DEVICES": "1"}, 22, ["GPU 1"]),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-t4"}, 22, ["GPU 1"]),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, 22, ["GPU 0", "GPU 1"]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, 21, []),
        ({"CUDA_VISIBLE_DEVICES": "0"}, 0, ["GPU 0"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-a100"}, 0, ["GPU 0"]),
        ({"CUDA_VISIBLE_DEVICES": ""}, 21, []),
        ({"CUDA_VISIBLE_DEVICES": "0,7,1"}, 0, ["GPU 0"]),  # CUDA stops at an invalid entry
        ({"NVIDIA_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "0"}, 22, ["GPU 1"]),
    ],
)
def test_visible_device_filters(
    check: Check, env: dict[str, str], code: int, visible: list[str]
) -> None:
    result = check(*WORKER, gpus=(A100, T4), **env)
    assert result.returncode == code, result.stdout
    shown = [
        " ".join(line.split()[:2])
        for line in result.stdout.splitlines()
        if line.startswith("  GPU")
    ]
    assert shown == visible
    if env.get("NVIDIA_VISIBLE_DEVICES", "all") != "all" or "CUDA_VISIBLE_DEVICES" in env:
        assert "GPUs visible (" in result.stdout


def test_runtime_applied_nvidia_visible_devices_is_not_applied_twice() -> None:
    # Inside a container started with NVIDIA_VISIBLE_DEVICES=3 NVML sees one GPU, index 0.
    one = [Device(0, "Tesla T4", "GPU-t4", (7, 5))]
    visible, _ = visible_devices(one, {"NVIDIA_VISIBLE_DEVICES": "3"})
    assert visible == one


def test_warn_reports_and_starts_anyway_skip_does_not_look(check: Check) -> None:
    warned = check(*WORKER, "--", "echo", "dask started", gpus=(T4,), ENVBUILD_GPU_CHECK="warn")
    assert warned.returncode == 0
    assert "starting anyway (ENVBUILD_GPU_CHECK=warn)" in warned.stderr
    assert warned.stdout == "dask started\n"
    skipped = check(*WORKER, "--", "echo", "hi", driver_present=False, ENVBUILD_GPU_CHECK="skip")
    assert skipped.returncode == 0 and "skipped (ENVBUILD_GPU_CHECK=skip)" in skipped.stderr
    bad = check(*WORKER, ENVBUILD_GPU_CHECK="maybe")
    assert bad.returncode == 2 and "is not one of enforce, warn, skip" in bad.stderr


def test_a_failed_check_does_not_start_the_command(check: Check, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    result = check(*WORKER, "--", "touch", str(marker), gpus=(T4,))
    assert result.returncode == 22 and not marker.exists()


def test_the_command_replaces_the_check_process(check: Check, fake_nvml: Path) -> None:
    # exec, not a child: Dask becomes the process that receives the container's signals.
    result = check(
        *WORKER, "--", sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(7)"
    )
    assert result.returncode == 7
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_nvml), "FAKE_NVML_DEVICES": A100}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "envbuild.gpucheck",
            *WORKER,
            "--",
            sys.executable,
            "-c",
            "import os; print(os.getpid())",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, _ = process.communicate(timeout=60)
    assert int(out.strip()) == process.pid


def test_cpu_roles_need_no_driver(check: Check) -> None:
    result = check("--role", "client", "--", "echo", "client up", driver_present=False)
    assert result.returncode == 0
    assert "role=client needs no GPU" in result.stderr and result.stdout == "client up\n"


def test_requirements_baked_into_the_image_and_flags_override(check: Check, tmp_path: Path) -> None:
    role_file = tmp_path / "role.json"
    role_file.write_text(
        json.dumps(
            {
                "role": "scheduler",
                "variant": "cuda-12.4",
                "cuda": "12.4",
                "compute-capability": ">=7.5",
                "gpus": 1,
            }
        )
    )
    baked = check(gpus=(T4,), ENVBUILD_ROLE_FILE=str(role_file))
    assert baked.returncode == 0 and "role=scheduler variant=cuda-12.4" in baked.stdout
    overridden = check(
        "--compute-capability", ">=8.0", gpus=(T4,), ENVBUILD_ROLE_FILE=str(role_file)
    )
    assert overridden.returncode == 22
    role_file.write_text("{not json")
    assert check(ENVBUILD_ROLE_FILE=str(role_file)).returncode == 2


def test_json_report(check: Check) -> None:
    result = check(*WORKER, "--json", gpus=(A100, T4))
    report = json.loads(result.stdout)
    assert result.returncode == 22
    assert report["driver"] == {"version": "550.54.15", "cuda": "12.4"}
    assert [(g["name"], g["compute_capability"], g["ok"]) for g in report["gpus"]] == [
        ("NVIDIA A100-SXM4-80GB", "8.0", True),
        ("Tesla T4", "7.5", False),
    ]
    assert report["exit_code"] == 22 and report["problem"] == "1 of 2 GPUs unusable"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--cuda", "12"), "'12' is not a CUDA version"),
        (("--cuda", "9.2"), "CUDA 9.2 is not supported"),
        (
            ("--cuda", "12.4", "--compute-capability", "8"),
            "is not a compute-capability requirement",
        ),
        (("--cuda", "12.4", "--gpus", "0"), "--gpus must be a positive integer"),
    ],
)
def test_bad_requirements_are_usage_errors(
    check: Check, flags: tuple[str, ...], message: str
) -> None:
    result = check(*flags)
    assert result.returncode == 2 and message in result.stderr


def test_pure_rules() -> None:
    assert ComputeCapability.parse(">=7.5,<9.0").failed_clause((9, 0)) == "9.0 >= 9.0"
    assert str(ComputeCapability.parse(">= 8.0")) == ">=8.0"
    assert driver_problem(Driver("440.33", (11, 0)), (11, 8)) == (
        "driver 440.33 is older than 450, the oldest that runs CUDA 11.x: upgrade the driver"
    )


def test_the_role_file_exported_from_the_lock_drives_the_check(
    locked: Path, envbuild: Callable[..., object], check: Check, tmp_path: Path
) -> None:
    role_file = tmp_path / "role.json"
    result = envbuild(
        "export", "--format", "role-file", "--role", "worker", "-o", role_file, "-f", locked
    )
    assert result.exit_code == 0  # type: ignore[attr-defined]
    assert json.loads(role_file.read_text())["compute-capability"] == ">=8.0"

    on_a100 = check(gpus=(A100,), ENVBUILD_ROLE_FILE=str(role_file))
    on_t4 = check(gpus=(T4,), ENVBUILD_ROLE_FILE=str(role_file))

    assert on_a100.returncode == 0
    assert "role=worker variant=cuda-12.4 needs compute capability >=8.0" in on_a100.stdout
    assert on_t4.returncode == 22
    client = tmp_path / "client.json"
    envbuild("export", "--format", "role-file", "--role", "client", "-o", client, "-f", locked)
    assert check(driver_present=False, ENVBUILD_ROLE_FILE=str(client)).returncode == 0


# --- hostile or garbled input (issue 8) ---


@pytest.mark.parametrize("version", ["", "r550.54", "banana"])
def test_a_driver_version_that_cannot_be_read_is_its_own_verdict(
    check: Check, version: str
) -> None:
    result = check(*WORKER, FAKE_NVML_DRIVER=version)
    assert result.returncode == gpucheck.CANNOT_JUDGE, result.stderr
    assert "cannot be read" in result.stdout and "Traceback" not in result.stderr


def test_a_non_ascii_digit_in_cuda_visible_devices_is_no_crash(check: Check) -> None:
    result = check(*WORKER, CUDA_VISIBLE_DEVICES="²")
    assert result.returncode == gpucheck.TOO_FEW_GPUS and "Traceback" not in result.stderr
    assert "0 GPUs visible, the role needs 1" in result.stdout


@pytest.mark.parametrize("variable", ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"])
@pytest.mark.parametrize("value", ["MIG-4b2a9f1c-0c4e-5d8f-9d8e-1f2a3b4c5d6e", "0:1"])
def test_mig_instances_are_named_as_unsupported(check: Check, variable: str, value: str) -> None:
    result = check(*WORKER, **{variable: value})
    assert result.returncode == gpucheck.CANNOT_JUDGE
    assert "names MIG instances" in result.stdout and "does not support MIG" in result.stdout


def test_a_device_listed_twice_counts_once(check: Check) -> None:
    result = check(*WORKER, "--gpus", "2", gpus=(A100, A100), NVIDIA_VISIBLE_DEVICES="0,0")
    assert result.returncode == gpucheck.TOO_FEW_GPUS
    assert "1 GPU visible, the role needs 2" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"cuda": 12.4}', "cuda must be a string or null, got 12.4"),
        ('["cuda", "12.4"]', "a JSON object is expected"),
        ('{"gpus": true, "cuda": "12.4"}', "gpus must be an integer or null, got True"),
        ('{"cuda": " 12.4"}', "' 12.4' is not a CUDA version"),
    ],
)
def test_a_bad_role_file_is_a_usage_error_naming_the_field(
    check: Check, tmp_path: Path, content: str, message: str
) -> None:
    role_file = tmp_path / "role.json"
    role_file.write_text(content)
    result = check(ENVBUILD_ROLE_FILE=str(role_file))
    assert result.returncode == gpucheck.USAGE
    assert message in result.stderr and "Traceback" not in result.stderr


def test_an_empty_or_unrunnable_command(check: Check, tmp_path: Path) -> None:
    empty = check(*WORKER, "--", "")
    assert (
        empty.returncode == gpucheck.USAGE
        and "the command to run after -- is empty" in empty.stderr
    )
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    denied = check(*WORKER, "--", str(script))
    assert denied.returncode == gpucheck.COMMAND_NOT_EXECUTABLE == 126
    missing = check(*WORKER, "--", str(tmp_path / "missing"))
    assert missing.returncode == gpucheck.COMMAND_NOT_FOUND == 127


def test_json_with_a_command_leaves_the_commands_stdout_alone(check: Check) -> None:
    result = check(*WORKER, "--json", "--", sys.executable, "-c", "print('from the command')")
    assert result.returncode == 0
    assert result.stdout == "from the command\n"
    assert json.loads(result.stderr)["ok"] is True
