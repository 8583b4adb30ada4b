"""The command line as a user meets it: help, init, show, schema, the console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result

from envbuild import __version__
from envbuild.files.resources import SCHEMA_PATH


def test_help_teaches_the_workflow_and_exit_codes(envbuild: Callable[..., Result]) -> None:
    result = envbuild("--help")
    assert result.exit_code == 0
    for text in (
        "envbuild init",
        "envbuild lock",
        "lock",
        "show",
        "schema",
        "4  lock is stale",
        "7  a target cannot be solved",
    ):
        assert text in result.output, text
    lock_help = envbuild("lock", "--help").output
    assert "--check" in lock_help and "--update" in lock_help and "--update-all" in lock_help


def test_version(envbuild: Callable[..., Result]) -> None:
    assert envbuild("--version").output == f"envbuild {__version__}\n"


def test_init_writes_a_spec_that_validates_and_never_overwrites(
    envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    first = envbuild("init", cwd=tmp_path)
    assert first.exit_code == 0
    written = (tmp_path / "envbuild.yaml").read_text()
    assert "roles:" in written and "# " in written
    again = envbuild("init", cwd=tmp_path)
    assert again.exit_code == 10 and "already exists" in again.stderr
    assert (tmp_path / "envbuild.yaml").read_text() == written
    # Valid as written: --check only complains that there is no lock yet.
    check = envbuild("lock", "--check", cwd=tmp_path)
    assert check.exit_code == 4 and "no lock file yet" in check.stderr


def test_show_explains_roles_targets_and_differences(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    envbuild("lock", "-q", "-f", spec)

    text = envbuild("show", "-f", spec).output.splitlines()

    assert text[0].startswith("dask-gpu  (sha256:") and text[0].endswith("matches the spec")
    assert (
        "  worker     cuda-12.4  linux-64 (x86_64)                    "
        "GPU: CUDA 12.4, compute capability >=8.0" in text
    )
    assert "  cuda-12.4/linux-64  21 packages" in text
    cupy = next(line for line in text if " cupy " in line)
    assert "cpu: -" in cupy and cupy.endswith("gpu-dependency")
    summary = json.loads(envbuild("show", "--json", "-f", spec).stdout)
    assert {r["role"]: r["variant"] for r in summary["roles"]} == {
        "client": "cpu",
        "scheduler": "cuda-12.4",
        "worker": "cuda-12.4",
    }
    reasons = {d["package"]: d["reason"] for d in summary["differences"]}
    assert reasons["cuda-cudart"] == "CUDA-dependent (depends on cuda-version)"
    assert reasons["fastrlock"] == "required by cupy (GPU stack)"
    assert None not in reasons.values()

    spec.write_text(spec.read_text().replace("  - numpy\n", "  - numpy\n  - toolz\n"))
    assert (
        envbuild("show", "-f", spec).output.splitlines()[0].endswith("STALE: run `envbuild lock`")
    )


def test_show_without_a_spec_or_a_lock(envbuild: Callable[..., Result], tmp_path: Path) -> None:
    result = envbuild("show", cwd=tmp_path)
    assert result.exit_code == 3
    assert "no spec here: pass -f SPEC, or --lockfile LOCK" in result.stderr
    (tmp_path / "envbuild.yaml").write_text("name: x\n")
    result = envbuild("show", cwd=tmp_path)
    assert result.exit_code == 5 and "no lock file (run `envbuild lock` first)" in result.stderr


def test_schema_command_prints_the_committed_schema(envbuild: Callable[..., Result]) -> None:
    assert json.loads(envbuild("schema").output) == json.loads(SCHEMA_PATH.read_text())


def test_console_script_is_installed_and_maps_errors_to_exit_codes(tmp_path: Path) -> None:
    script = shutil.which("envbuild", path=str(Path(sys.executable).parent))
    assert script, "the envbuild console script is not installed in this environment"
    (tmp_path / "envbuild.yaml").write_text("name: [broken\n")
    result = subprocess.run([script, "lock"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 3
    assert (
        result.stderr == "envbuild: error: envbuild.yaml:2: invalid YAML: "
        "did not find expected ',' or ']'\n"
    )
    assert "Traceback" not in result.stderr


def test_show_packages_tells_which_dask_each_role_got(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    envbuild("lock", "-q", "-f", spec)

    text = envbuild("show", "--packages", "-f", spec).output.splitlines()

    start = text.index("packages:")
    header, targets = text[start + 1].split(), text[start + 2].split()
    assert header[0] == "package" and "scheduler," in header and "worker" in header
    assert targets == ["cpu/linux-64", "cpu/osx-arm64", "cuda-12.4/linux-64"]
    dask = next(line.split() for line in text[start:] if line.split()[0] == "dask")
    assert dask == ["dask", "2024.8.2", "2024.8.2", "2024.8.2"]
    cupy = next(line.split() for line in text[start:] if line.split()[0] == "cupy")
    assert cupy == ["cupy", "-", "-", "13.3.0"]
    summary = json.loads(envbuild("show", "--packages", "--json", "-f", spec).stdout)
    worker = {p["name"]: p for p in summary["packages"]["cuda-12.4/linux-64"]}
    assert worker["cupy"]["build"].startswith("py311cuda12")
