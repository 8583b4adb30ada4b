"""envbuild lock against real local channels: consistency, alignment, errors, determinism."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
from typer.testing import Result

from envbuild.lock.locking import lock
from envbuild.testing.catalog import dask_packages, write_dask_gpu_channel
from envbuild.testing.channel import Package

from .conftest import lock_document, target_packages

#: What the fixture channel's GPU stack is made of (known from the catalog, not computed).
CUDA_BUILDS = {"cuda-version", "cuda-cudart", "cuda-cudart_linux-64", "cupy"}
GPU_ONLY = CUDA_BUILDS | {"fastrlock", "libstdcxx"}


def assert_consistent(targets: dict[str, dict[str, dict[str, object]]]) -> None:
    """The invariant, checked on raw records: variants of a platform share versions and
    builds (but for the CUDA stack); platforms share versions."""
    names = sorted(targets)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = targets[first], targets[second]
            same_platform = first.split("/")[1] == second.split("/")[1]
            for name in sorted(set(a) & set(b)):
                if name in {"cuda-version", "cuda-cudart", "cuda-cudart_linux-64"}:
                    continue  # the CUDA runtime differs between CUDA variants by design
                assert a[name]["version"] == b[name]["version"], (name, first, second)
                if same_platform and name not in CUDA_BUILDS:
                    assert a[name]["build"] == b[name]["build"], (name, first, second)
            if same_platform:
                assert set(a) ^ set(b) <= GPU_ONLY, (first, second, set(a) ^ set(b))


def test_lock_records_the_real_hashes_of_every_archive(scenario: Callable[..., Path]) -> None:
    spec = scenario("dask-gpu")
    lock(spec)
    for entry in lock_document(spec.parent / "envbuild.lock")["packages"]:
        data = Path(urlparse(entry["url"]).path).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["fn"]
        assert entry["md5"] == hashlib.md5(data, usedforsecurity=False).hexdigest(), entry["fn"]
        assert entry["size"] == len(data)
        assert entry["depends"] is not None and "constrains" in entry


def test_two_cuda_variants_differ_only_in_the_cuda_stack(scenario: Callable[..., Path]) -> None:
    spec = scenario("two-cuda")
    lock(spec)
    document = lock_document(spec.parent / "envbuild.lock")
    targets = target_packages(document)
    assert set(targets) == {
        "cpu/linux-64",
        "cpu/osx-arm64",
        "cuda-12.4/linux-64",
        "cuda-12.8/linux-64",
    }
    assert_consistent(targets)
    old, new = targets["cuda-12.4/linux-64"], targets["cuda-12.8/linux-64"]
    assert (old["cuda-cudart"]["version"], new["cuda-cudart"]["version"]) == ("12.4.127", "12.8.90")
    assert old["cupy"]["version"] == new["cupy"]["version"]
    assert document["roles"]["worker"]["gpu"] == {
        "cuda": "12.8",
        "compute-capability": ">=9.0",
        "count": 2,
    }


def test_version_missing_on_one_platform_is_not_locked(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    # dask 2024.9.0 exists only as a linux-64 build: osx-arm64 clients cannot have it.
    spec = scenario("unpinned", extra=tuple(dask_packages("2024.9.0", subdir="linux-64")))

    result = envbuild("lock", "-f", spec)

    assert result.exit_code == 0, result.output
    targets = target_packages(lock_document(spec.parent / "envbuild.lock"))
    for name in ("dask", "dask-core", "distributed"):
        assert {t[name]["version"] for t in targets.values()} == {"2024.8.2"}, name
    assert "aligning dask to 2024.8.2" in result.stderr
    assert_consistent(targets)


def test_allowed_divergence_keeps_the_newest_version_per_platform(
    scenario: Callable[..., Path],
) -> None:
    spec = scenario("unpinned", extra=tuple(dask_packages("2024.9.0", subdir="linux-64")))
    spec.write_text(
        spec.read_text() + "allow-platform-divergence: [dask, dask-core, distributed]\n"
    )
    lock(spec)
    targets = target_packages(lock_document(spec.parent / "envbuild.lock"))
    assert targets["cpu/linux-64"]["dask"]["version"] == "2024.9.0"
    assert targets["cpu/osx-arm64"]["dask"]["version"] == "2024.8.2"


def test_a_variant_that_cannot_be_solved_is_named(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("unsatisfiable-variant")

    result = envbuild("lock", "-f", spec)

    assert result.exit_code == 7
    first_line = next(x for x in result.stderr.splitlines() if x.startswith("envbuild: error"))
    assert first_line.startswith("envbuild: error: cannot solve cuda-11.8/linux-64")
    assert "(roles: scheduler)" in first_line and "cupy" in first_line
    assert "cuda-version" in result.stderr  # the solver's explanation follows
    assert not (spec.parent / "envbuild.lock").exists()


def test_progress_is_one_line_per_target_on_stderr(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 0
    solved = [line.split()[1] for line in result.stderr.splitlines() if "solved" in line]
    assert sorted(solved) == ["cpu/linux-64", "cpu/osx-arm64", "cuda-12.4/linux-64"]
    assert result.stdout.startswith("wrote ")
    quiet = envbuild("lock", "-f", spec, "--update-all", "--quiet")
    assert quiet.exit_code == 0 and quiet.output == ""


def test_locking_twice_gives_identical_bytes(scenario: Callable[..., Path]) -> None:
    spec = scenario("dask-gpu")
    path = spec.parent / "envbuild.lock"
    lock(spec)
    first = path.read_bytes()
    path.unlink()
    lock(spec)
    assert path.read_bytes() == first
    again = lock(spec, update_all=True)
    assert again.status == "unchanged" and again.solves == 3
    assert path.read_bytes() == first


def test_an_unchanged_spec_solves_nothing_and_touches_nothing(
    scenario: Callable[..., Path],
) -> None:
    spec = scenario("dask-gpu")
    path = spec.parent / "envbuild.lock"
    lock(spec)
    before = path.stat().st_mtime_ns
    # Comments and the image section do not decide the lock.
    spec.write_text("# a comment\n" + spec.read_text() + "image: {base: 'debian:trixie'}\n")

    outcome = lock(spec)

    assert (outcome.status, outcome.solves) == ("up-to-date", 0)
    assert path.stat().st_mtime_ns == before


def test_check_fails_when_the_spec_changed(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    assert envbuild("lock", "--check", "-f", spec).exit_code == 4  # no lock yet
    assert envbuild("lock", "-q", "-f", spec).exit_code == 0
    fresh = envbuild("lock", "--check", "-f", spec)
    assert fresh.exit_code == 0, fresh.output

    spec.write_text(spec.read_text().replace("  - numpy\n", "  - numpy\n  - toolz\n"))
    stale = envbuild("lock", "--check", "-f", spec)

    assert stale.exit_code == 4
    assert "stale" in stale.stderr and "envbuild lock" in stale.stderr
    assert len(stale.stderr.splitlines()) == 1


def test_a_changed_spec_keeps_the_versions_it_had(scenario: Callable[..., Path]) -> None:
    spec = scenario("unpinned", numpy_versions=("1.26.4",))
    lock(spec)
    write_dask_gpu_channel(spec.parent / "channel", numpy_versions=("1.26.4", "2.0.2"))
    spec.write_text(spec.read_text().replace("  - numpy\n", "  - numpy\n  - toolz\n"))

    outcome = lock(spec)

    assert outcome.status == "written"
    targets = target_packages(lock_document(spec.parent / "envbuild.lock"))
    assert {t["numpy"]["version"] for t in targets.values()} == {"1.26.4"}
    assert all("toolz" in t for t in targets.values())


def test_update_moves_only_the_named_package(scenario: Callable[..., Path]) -> None:
    spec = scenario("unpinned", dask_versions=("2024.8.0",), numpy_versions=("1.26.4",))
    lock(spec)
    # The channel gains a newer dask and a newer numpy.
    write_dask_gpu_channel(spec.parent / "channel")

    assert lock(spec).status == "up-to-date"  # the spec did not change: nothing moves
    lock(spec, update=["dask"])

    targets = target_packages(lock_document(spec.parent / "envbuild.lock"))
    for packages in targets.values():
        # dask moved, and what is pinned to it moved with it ...
        assert packages["dask"]["version"] == "2024.8.2"
        assert packages["distributed"]["version"] == "2024.8.2"
        assert packages["dask-core"]["version"] == "2024.8.2"
        # ... and nothing else did.
        assert packages["numpy"]["version"] == "1.26.4"
    lock(spec, update_all=True)
    targets = target_packages(lock_document(spec.parent / "envbuild.lock"))
    assert {t["numpy"]["version"] for t in targets.values()} == {"2.0.2"}


def test_update_of_an_unknown_package_is_refused(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    envbuild("lock", "-q", "-f", spec)
    result = envbuild("lock", "-f", spec, "--update", "dsak")
    assert result.exit_code == 9
    assert "dsak" in result.stderr


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


BAD_SPECS = [
    (
        "malformed YAML",
        _replace("platforms: [linux-64]", "platforms: [linux-64"),
        3,
        "envbuild.yaml:5: invalid YAML",
    ),
    (
        "unknown key",
        _replace("gpu-dependencies:", "gpu-dependency:"),
        3,
        "envbuild.yaml:10: gpu-dependency: unknown key 'gpu-dependency'",
    ),
    (
        "unknown role",
        _replace("  worker:", "  gateway:"),
        3,
        "envbuild.yaml:17: roles.gateway: unknown role 'gateway'",
    ),
    (
        "bad version spec",
        _replace("dask 2024.8.*", "dask >=>2024"),
        3,
        "envbuild.yaml:7: dependencies[1]: 'dask >=>2024' is not a valid match spec",
    ),
    (
        "bad CUDA version",
        _replace(
            'cuda: "12.4", compute-capability: ">=8.0"', 'cuda: "12", compute-capability: ">=8.0"'
        ),
        3,
        "envbuild.yaml:18: roles.worker.gpu.cuda: '12' is not a CUDA version",
    ),
    (
        "bad compute capability",
        _replace('">=8.0"', '"8.0"'),
        3,
        "envbuild.yaml:18: roles.worker.gpu.compute-capability: '8.0' is not a compute-capability",
    ),
    (
        "missing channel",
        _replace("[./channel]", "[./no-such-channel]"),
        6,
        "envbuild.yaml:3: channel './no-such-channel' does not exist",
    ),
]


@pytest.mark.parametrize(
    ("edit", "code", "message"), [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS]
)
def test_bad_spec_is_one_line_and_leaves_the_lock_alone(
    scenario: Callable[..., Path],
    envbuild: Callable[..., Result],
    edit: Callable[[str], str],
    code: int,
    message: str,
) -> None:
    spec = scenario("dask-gpu")
    assert envbuild("lock", "-q", "-f", spec).exit_code == 0
    lock_path = spec.parent / "envbuild.lock"
    good = lock_path.read_bytes()
    spec.write_text(edit(spec.read_text()))

    result = envbuild("lock", "-f", spec)

    assert result.exit_code == code
    first, *others = result.stderr.splitlines()
    assert message in first, result.stderr
    # Every problem is reported, each naming the file and line; nothing else is printed.
    assert all(line.startswith(f"  {spec}:") for line in others), result.stderr
    assert lock_path.read_bytes() == good
    assert sorted(p.name for p in spec.parent.iterdir()) == [
        "channel",
        "envbuild.lock",
        "envbuild.yaml",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"lock-version": 1, "name": ', "envbuild.lock:1: corrupt lock file"),
        ('{"lock-version": 99, "packages": []}', "written by a newer envbuild (lock-version 99"),
        ('{"lock-version": 1, "name": "x"}', "corrupt lock file (spec-hash must be str, not None)"),
    ],
    ids=["truncated", "newer envbuild", "missing fields"],
)
def test_unreadable_lock_is_refused_and_left_as_is(
    scenario: Callable[..., Path], envbuild: Callable[..., Result], content: str, message: str
) -> None:
    spec = scenario("dask-gpu")
    lock_path = spec.parent / "envbuild.lock"
    lock_path.write_text(content)

    for command in (["lock"], ["lock", "--check"], ["show"]):
        result = envbuild(*command, "-f", spec)
        assert result.exit_code == 5, (command, result.output)
        assert message in result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert lock_path.read_text() == content
    # --update-all does not need the old lock and replaces it.
    assert envbuild("lock", "-q", "--update-all", "-f", spec).exit_code == 0
    assert lock_document(lock_path)["lock-version"] == 1


def test_json_output_of_lock(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    import json

    spec = scenario("dask-gpu")
    first = json.loads(envbuild("lock", "--json", "-f", spec).stdout)
    assert first["status"] == "written" and first["solves"] == 3
    assert first["targets"] == {"cpu/linux-64": 15, "cpu/osx-arm64": 15, "cuda-12.4/linux-64": 21}
    second = json.loads(envbuild("lock", "--json", "-f", spec).stdout)
    assert (second["status"], second["solves"]) == ("up-to-date", 0)


def _gpu_package(name: str, version: str, *depends: str) -> Package:
    return Package(
        name=name,
        version=version,
        subdir="linux-64",
        build=f"py311cuda12_{name}_0",
        depends=("python >=3.11,<3.12.0a0", "cuda-version >=12.0,<13", *depends),
    )


def test_a_variant_that_strays_is_aligned_at_the_newest_version_both_take(
    scenario: Callable[..., Path],
) -> None:
    # This cupy holds numpy below 2 on the GPU variant; alone, the CPU variant takes 2.0.2.
    spec = scenario("dask-gpu", extra=(_gpu_package("cupy", "13.4.0", "numpy >=1.22,<2.0a0"),))
    spec.write_text(
        spec.read_text()
        .replace("platforms: [linux-64, osx-arm64]", "platforms: [linux-64]")
        .replace("gpu-dependencies: [cupy]", "gpu-dependencies: [cupy 13.4.*]")
    )

    outcome = lock(spec)

    targets = target_packages(lock_document(spec.parent / "envbuild.lock"))
    assert {t["numpy"]["version"] for t in targets.values()} == {"1.26.4"}
    assert (
        targets["cpu/linux-64"]["numpy"]["build"] == targets["cuda-12.4/linux-64"]["numpy"]["build"]
    )
    # Both targets; the GPU variant offered the CPU variant's numpy 2.0.2 (a target that chose
    # older alone may take newer once something else moves; this one cannot); the CPU variant
    # pinned to 1.26.4. Nothing else is solved again.
    assert outcome.solves == 4
    assert_consistent(targets)


def test_variants_that_cannot_share_a_version_are_a_consistency_error(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    # "fancy" has a CUDA build needing numpy <2 and a CPU build needing numpy >=2. As on
    # conda-forge, the CUDA build needs __cuda (so CPU variants cannot take it) and wins on
    # build number where it can.
    fancy_cpu = Package(
        name="fancy",
        version="1.0",
        subdir="linux-64",
        build="py311_cpu_0",
        depends=("python >=3.11,<3.12.0a0", "numpy >=2"),
    )
    fancy_gpu = Package(
        name="fancy",
        version="1.0",
        subdir="linux-64",
        build="py311cuda12_1",
        build_number=1,
        depends=("python >=3.11,<3.12.0a0", "numpy <2", "cuda-version >=12.0,<13", "__cuda"),
    )
    spec = scenario("dask-gpu", extra=(fancy_gpu, fancy_cpu))
    # Everyone gets fancy; CUDA variants get its CUDA build.
    spec.write_text(
        spec.read_text()
        .replace("  - numpy\n", "  - numpy\n  - fancy\n")
        .replace("gpu-dependencies: [cupy]", "gpu-dependencies: [cupy, 'fancy * *cuda*']")
        .replace("platforms: [linux-64, osx-arm64]", "platforms: [linux-64]")
    )

    result = envbuild("lock", "-f", spec)

    assert result.exit_code == 8, result.output
    error = next(x for x in result.stderr.splitlines() if x.startswith("envbuild: error"))
    assert error == (
        "envbuild: error: numpy: no version suits every target that must share it: "
        "cpu/linux-64 (client; no GPU) chose 2.0.2, cannot take 1.26.4; "
        "cuda-12.4/linux-64 (scheduler, worker; CUDA 12.4) chose 1.26.4"
    )
    assert "fancy" in result.stderr  # the solver's explanation follows
    assert not (spec.parent / "envbuild.lock").exists()


def test_a_broken_channel_is_a_channel_error_naming_it(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    (spec.parent / "channel" / "noarch" / "repodata.json").unlink()

    result = envbuild("lock", "-q", "-f", spec)

    assert result.exit_code == 6
    assert result.stderr == (
        f"envbuild: error: {spec}:3: channel './channel' has no noarch/repodata.json "
        f"({spec.parent / 'channel'}); index it with conda-index or rattler-index\n"
    )
    assert not (spec.parent / "envbuild.lock").exists()
