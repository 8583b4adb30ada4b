"""PyPI dependencies in the lock, resolved offline from pinned real wheels over the runnable
channel's conda packages: conda's distributions are never replaced, every role gets one
version of each PyPI package, and each CUDA variant its own CUDA-major wheel."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from envbuild.testing import pypi_index

from .conftest import target_packages
from .pypi_setup import pypi_spec, pypi_wheels, wheels_by_target

__all__ = ["pypi_wheels"]  # the fixture, for pytest

Envbuild = Callable[..., Result]


def lock_of(spec: Path) -> Path:
    return spec.parent / "envbuild.lock"


def test_xarray_comes_from_pypi_over_condas_numpy_and_pandas(
    tmp_path: Path, runnable_channel: Path, pypi_wheels: list[Path], envbuild: Envbuild
) -> None:
    spec = pypi_spec(tmp_path, runnable_channel, pypi_wheels, pypi=["xarray"])
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 0, result.output
    # 2026.9.0 is newer but needs packaging>=24.2; conda's packaging 24.1 stays
    assert wheels_by_target(lock_of(spec)) == {
        "cpu/linux-64": {"xarray": "2026.2.0"},
        "cpu/osx-arm64": {"xarray": "2026.2.0"},
        "cuda-12.4/linux-64": {"xarray": "2026.2.0"},
        "cuda-12.4/linux-aarch64": {"xarray": "2026.2.0"},  # the GH200 workers
    }
    document = json.loads(lock_of(spec).read_text())
    assert document["lock-version"] == 2
    (xarray,) = document["pypi-packages"]
    assert xarray["fn"] == "xarray-2026.2.0-py3-none-any.whl"
    assert xarray["sha256"] == "e927d7d716ea71dea78a13417970850a640447d8dd2ceeb65c5687f6373837c9"
    assert xarray["size"] == 1405358 and xarray["requires-python"] == ">=3.11"
    assert "pandas>=2.2" in xarray["requires-dist"]
    conda = target_packages(document)["cpu/linux-64"]
    assert conda["packaging"]["version"] == "24.1" and conda["pandas"]["version"] == "2.2.2"
    again = envbuild("lock", "-f", spec, "--check")
    assert again.exit_code == 0, again.output


def test_a_spec_without_pypi_keeps_the_old_lock_format(
    tmp_path: Path, runnable_channel: Path, envbuild: Envbuild
) -> None:
    from .conftest import runnable_spec

    spec = runnable_spec(tmp_path, runnable_channel, edit=pypi_index.without_pypi)
    assert envbuild("lock", "-f", spec).exit_code == 0
    document = json.loads(lock_of(spec).read_text())
    assert document["lock-version"] == 1 and "pypi-packages" not in document


@pytest.mark.parametrize(
    ("requirement", "conda"),
    [("xarray>=2026.9", "packaging 24.1"), ("numpy<2", "numpy 2.0.2")],
    ids=["through-a-dependency", "directly"],
)
def test_a_pypi_requirement_that_would_replace_a_conda_package_is_refused_naming_both(
    tmp_path: Path,
    runnable_channel: Path,
    pypi_wheels: list[Path],
    envbuild: Envbuild,
    requirement: str,
    conda: str,
) -> None:
    spec = pypi_spec(tmp_path, runnable_channel, pypi_wheels, pypi=[requirement])
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 7, result.output
    headline = result.output.split("envbuild: error: ", 1)[1].splitlines()[0]
    assert f"'{requirement}'" in headline and f"conda package {conda}" in headline
    assert "never replaces" in headline
    assert not lock_of(spec).exists()


def test_a_cuda_11_scheduler_and_cuda_12_workers_get_their_own_cupy_wheel_and_nothing_else_differs(
    tmp_path: Path, runnable_channel: Path, pypi_wheels: list[Path], envbuild: Envbuild
) -> None:
    spec = pypi_spec(
        tmp_path,
        runnable_channel,
        pypi_wheels,
        pypi=["xarray"],
        gpu_pypi=["cupy-cuda{cuda_major}x"],
        scheduler_cuda="11.8",
    )
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 0, result.output
    found = wheels_by_target(lock_of(spec))
    assert found["cuda-11.8/linux-64"] == {
        "cupy-cuda11x": "13.3.0",
        "fastrlock": "0.8.2",
        "xarray": "2026.2.0",
    }
    assert (
        found["cuda-12.4/linux-64"]
        == found["cuda-12.4/linux-aarch64"]
        == {
            "cupy-cuda12x": "13.3.0",
            "fastrlock": "0.8.2",
            "xarray": "2026.2.0",
        }
    )
    assert found["cpu/linux-64"] == found["cpu/osx-arm64"] == {"xarray": "2026.2.0"}
    document = json.loads(lock_of(spec).read_text())
    fastrlock = [e for e in document["pypi-packages"] if e["name"] == "fastrlock"]
    # one wheel per architecture, byte for byte the same in both CUDA variants on linux-64
    assert sorted(tuple(e["targets"]) for e in fastrlock) == [
        ("cuda-11.8/linux-64", "cuda-12.4/linux-64"),
        ("cuda-12.4/linux-aarch64",),
    ]
    conda = target_packages(document)
    eleven, twelve = conda["cuda-11.8/linux-64"], conda["cuda-12.4/linux-64"]
    differ = {n for n in eleven.keys() | twelve.keys() if eleven.get(n) != twelve.get(n)}
    assert differ == {"cuda-version"}  # the CUDA runtime itself
    shown = json.loads(envbuild("show", "-f", spec, "--json").output)["pypi-packages"]
    by_name = {p["name"]: p for p in shown}
    assert by_name["cupy-cuda11x"]["versions"] == {"13.3.0": ["cuda-11.8/linux-64"]}
    assert by_name["fastrlock"]["needed-by"] == ["cupy-cuda11x", "cupy-cuda12x"]
    assert by_name["xarray"]["source"] == str(tmp_path / "wheels")
    text = envbuild("show", "-f", spec).output
    assert "PyPI packages" in text and "cupy-cuda12x" in text


def test_targets_that_would_choose_different_versions_get_one(
    tmp_path: Path, runnable_channel: Path, pypi_wheels: list[Path], envbuild: Envbuild
) -> None:
    # macOS alone is capped below 2025: every other target is held to what it can take
    capped = ["xarray", "xarray <2025; sys_platform == 'darwin'"]
    spec = pypi_spec(tmp_path, runnable_channel, pypi_wheels, pypi=capped, index=True)
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 0, result.output
    assert {v["xarray"] for v in wheels_by_target(lock_of(spec)).values()} == {"2024.7.0"}
    # unless the spec lets it differ between platforms (never between variants)
    spec.write_text(spec.read_text() + "allow-platform-divergence: [xarray]\n")
    result = envbuild("lock", "-f", spec, "--update", "xarray")
    assert result.exit_code == 0, result.output
    assert wheels_by_target(lock_of(spec)) == {
        "cpu/linux-64": {"xarray": "2026.2.0"},
        "cpu/osx-arm64": {"xarray": "2024.7.0"},
        "cuda-12.4/linux-64": {"xarray": "2026.2.0"},
        "cuda-12.4/linux-aarch64": {"xarray": "2026.2.0"},  # the GH200 workers
    }


def test_relocking_keeps_pypi_versions_until_update_names_them(
    tmp_path: Path, runnable_channel: Path, pypi_wheels: list[Path], envbuild: Envbuild
) -> None:
    spec = pypi_spec(tmp_path, runnable_channel, pypi_wheels, pypi=["xarray <2026"])
    assert envbuild("lock", "-f", spec).exit_code == 0
    spec.write_text(spec.read_text().replace('"xarray <2026"', '"xarray"'))
    assert envbuild("lock", "-f", spec).exit_code == 0
    assert {v["xarray"] for v in wheels_by_target(lock_of(spec)).values()} == {"2024.7.0"}
    result = envbuild("lock", "-f", spec, "--update", "xarray")
    assert result.exit_code == 0, result.output
    assert {v["xarray"] for v in wheels_by_target(lock_of(spec)).values()} == {"2026.2.0"}


def test_an_sdist_is_never_built(
    tmp_path: Path, runnable_channel: Path, pypi_wheels: list[Path], envbuild: Envbuild
) -> None:
    spec = pypi_spec(tmp_path, runnable_channel, pypi_wheels, pypi=["xarray", "tinysdist"])
    (tmp_path / "wheels" / "tinysdist-1.0.tar.gz").write_bytes(b"not built")
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 7, result.output
    assert "'tinysdist'" in result.output and "it builds no sdist" in result.output


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("sha256", "not-a-digest", "pypi-packages[0].sha256 is not a sha256 digest"),
        (
            "url",
            "https://alice:s3cr3t@example.com/x.whl",
            "pypi-packages[0].url carries credentials",
        ),
        ("fn", "../../etc/x.whl", "pypi-packages[0].fn is not a wheel's file name"),
        ("targets", ["cpu/no-such-platform"], "unknown target cpu/no-such-platform"),
    ],
)
def test_a_damaged_pypi_section_is_refused_naming_the_field(
    tmp_path: Path,
    runnable_channel: Path,
    pypi_wheels: list[Path],
    envbuild: Envbuild,
    field: str,
    value: object,
    said: str,
) -> None:
    spec = pypi_spec(tmp_path, runnable_channel, pypi_wheels, pypi=["xarray"])
    assert envbuild("lock", "-f", spec).exit_code == 0
    document = json.loads(lock_of(spec).read_text())
    document["pypi-packages"][0][field] = value
    lock_of(spec).write_text(json.dumps(document))
    result = envbuild("show", "--lockfile", lock_of(spec))
    assert result.exit_code == 5, result.output
    assert said in result.output and "s3cr3t" not in result.output
