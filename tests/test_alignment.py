"""The resolver finds the consistent lock whenever one exists, and refuses only when none does.

Each test writes a small channel shaped like one of conda-forge's awkward cases, locks a spec
against it, exports the lock as pixi.lock, and checks the export record by record with
rattler's own reader and Version (``assert_invariant``): code that shares nothing with
envbuild's checker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path

from rattler import LockFile, Version
from typer.testing import Result

from envbuild.testing.channel import Package, write_channel

SUBDIRS = ("linux-64", "osx-arm64", "noarch")
Records = dict[str, dict[str, tuple[str, str]]]  # "variant/platform" -> name -> (version, build)


def cuda_version(cuda: str) -> Package:
    major = cuda.split(".")[0]
    return Package(
        name="cuda-version",
        version=cuda,
        build="h0_3",
        build_number=3,
        noarch="generic",
        constrains=(f"__cuda >={major}", f"cudatoolkit {cuda}|{cuda}.*"),
    )


def cudart(cuda: str) -> Package:
    minor = int(cuda.split(".")[1])
    window = f"cuda-version >={cuda},<{cuda.split('.')[0]}.{minor + 1}.0a0"
    return Package(
        name="cuda-cudart",
        version=f"{cuda}.99",
        build="h0",
        subdir="linux-64",
        depends=(window,),
    )


CUDA = (cuda_version("11.8"), cuda_version("12.4"), cudart("11.8"), cudart("12.4"))


def linux(name: str, version: str, build: str = "h0", *depends: str, **kw: object) -> Package:
    return Package(
        name=name, version=version, build=build, subdir="linux-64", depends=depends, **kw
    )  # type: ignore[arg-type]


def cupy(version: str, major: str, *extra: str, **kw: object) -> Package:
    window = f"cuda-version >={major}.0,<{int(major) + 1}"
    return linux("cupy", version, f"cuda{major}_h0", window, "cuda-cudart", *extra, **kw)


def numpy(version: str, subdir: str = "linux-64") -> Package:
    return Package(name="numpy", version=version, build="py_h0", subdir=subdir)


def write_spec(
    folder: Path,
    packages: Collection[Package],
    *,
    dependencies: str,
    gpu_dependencies: str = "[]",
    client_platforms: str = "[linux-64]",
    scheduler: str = '{cuda: "11.8"}',
    worker: str = '{cuda: "12.4"}',
) -> Path:
    write_channel(folder / "channel", packages, subdirs=SUBDIRS)
    spec = folder / "envbuild.yaml"
    spec.write_text(
        "name: shape\n"
        "channels: [./channel]\n"
        "platforms: [linux-64]\n"
        f"dependencies: {dependencies}\n"
        f"gpu-dependencies: {gpu_dependencies}\n"
        "roles:\n"
        f"  client: {{platforms: {client_platforms}, gpu: false}}\n"
        f"  scheduler: {{gpu: {scheduler}}}\n"
        f"  worker: {{gpu: {worker}}}\n"
    )
    return spec


def exported(envbuild: Callable[..., Result], spec: Path) -> Records:
    """Lock, export pixi.lock, read it back with rattler: target -> name -> (version, build)."""
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 0, result.output
    pixi = spec.parent / "pixi.lock"
    assert envbuild("export", "-f", spec, "--format", "pixi", "-o", pixi).exit_code == 0
    lock = LockFile.from_path(pixi)
    records: Records = {}
    for variant, environment in lock.environments():
        for platform in environment.platforms():
            packages = environment.conda_repodata_records_for_platform(platform) or []
            # a platform is named per variant where the variants declare different virtual
            # packages (linux-64-cuda-12-4); its subdir is the platform
            records[f"{variant}/{platform.subdir}"] = {
                p.name.normalized: (str(p.version), str(p.build)) for p in packages
            }
    return records


def assert_invariant(
    records: Records, *, builds_may_differ: Collection[str], runtime: Collection[str]
) -> None:
    """Every pair of targets: same platform, same version (but for the CUDA runtime) and the
    same build (but for ``builds_may_differ``); across platforms, the same version."""
    targets = sorted(records)
    for i, first in enumerate(targets):
        for second in targets[i + 1 :]:
            a, b = records[first], records[second]
            same_platform = first.split("/")[1] == second.split("/")[1]
            for name in sorted(set(a) & set(b)):
                if name in runtime:
                    continue
                assert Version(a[name][0]) == Version(b[name][0]), (name, first, second)
                if same_platform and name not in builds_may_differ:
                    assert a[name][1] == b[name][1], (name, first, second)


def error_line(result: Result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("envbuild: error"))


def versions(records: Records, name: str) -> dict[str, str]:
    return {t: r[name][0] for t, r in records.items() if name in r}


def test_a_gpu_dependency_newest_only_for_the_newer_cuda_major(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    # A T4 scheduler on CUDA 11.8 beside CUDA 12.4 workers; cupy 13.3.0 is CUDA 12 only.
    spec = write_spec(
        tmp_path,
        [*CUDA, numpy("2.0.2"), cupy("13.3.0", "12"), cupy("13.2.0", "12"), cupy("13.2.0", "11")],
        dependencies="[numpy]",
        gpu_dependencies="[cupy]",
    )
    records = exported(envbuild, spec)
    assert versions(records, "cupy") == {
        "cuda-11.8/linux-64": "13.2.0",
        "cuda-12.4/linux-64": "13.2.0",
    }
    assert_invariant(records, builds_may_differ={"cupy"}, runtime={"cuda-version", "cuda-cudart"})


def test_a_run_constrained_in_one_variant_caps_the_shared_package_everywhere(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    # The CUDA 11 build of cupy constrains numpy below 2; every role is on linux-64.
    spec = write_spec(
        tmp_path,
        [
            *CUDA,
            numpy("1.26.4"),
            numpy("2.0.2"),
            cupy("13.2.0", "12", "numpy"),
            cupy("13.2.0", "11", "numpy", constrains=("numpy <2",)),
        ],
        dependencies="[numpy]",
        gpu_dependencies="[cupy]",
    )
    records = exported(envbuild, spec)
    assert set(versions(records, "numpy").values()) == {"1.26.4"}
    assert len(versions(records, "numpy")) == 3
    assert_invariant(records, builds_may_differ={"cupy"}, runtime={"cuda-version", "cuda-cudart"})


def test_a_shared_package_whose_newest_build_needs_cuda(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    spec = write_spec(
        tmp_path,
        [*CUDA, linux("libx", "2.0", "h0", "__cuda"), linux("libx", "1.0")],
        dependencies="[libx]",
        scheduler='{cuda: "12.4"}',
    )
    records = exported(envbuild, spec)
    assert versions(records, "libx") == {"cpu/linux-64": "1.0", "cuda-12.4/linux-64": "1.0"}
    assert_invariant(records, builds_may_differ=(), runtime=())


def test_platform_alignment_steps_down_to_a_version_that_installs_everywhere(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    # linux has 1.0, 1.5, 3.0; macOS has 1.0, 2.0 and a 1.5 whose dependency is missing.
    osx = "osx-arm64"
    tools = [
        linux("tool", "1.0"),
        linux("tool", "1.5"),
        linux("tool", "3.0"),
        Package(name="tool", version="1.0", build="h0", subdir=osx),
        Package(name="tool", version="1.5", build="h0", subdir=osx, depends=("not-there",)),
        Package(name="tool", version="2.0", build="h0", subdir=osx),
    ]
    spec = write_spec(
        tmp_path,
        [*CUDA, *tools],
        dependencies="[tool]",
        client_platforms="[linux-64, osx-arm64]",
        scheduler='{cuda: "12.4"}',
    )
    records = exported(envbuild, spec)
    assert set(versions(records, "tool").values()) == {"1.0"}
    assert len(versions(records, "tool")) == 3
    assert_invariant(records, builds_may_differ=(), runtime=())


def test_the_same_version_spelled_differently_per_platform(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    spelled = [
        linux("spell", "1.0"),
        Package(name="spell", version="1.0.0", build="h0", subdir="osx-arm64"),
    ]
    spec = write_spec(
        tmp_path,
        [*CUDA, *spelled],
        dependencies="[spell]",
        client_platforms="[linux-64, osx-arm64]",
        scheduler='{cuda: "12.4"}',
    )
    records = exported(envbuild, spec)
    assert versions(records, "spell")["cpu/osx-arm64"] == "1.0.0"
    assert_invariant(records, builds_may_differ=(), runtime=())


def xgboost(cpu_depends: tuple[str, ...] = ()) -> list[Package]:
    """CUDA builds that need cuda-version but not __cuda (so a solver without exclusions
    takes them on a CPU machine too), and a CPU build with a lower build number."""
    return [
        linux(
            "xgboost",
            "2.1.1",
            "cuda124_h1",
            "cuda-version >=12.4,<13",
            "cuda-cudart",
            build_number=1,
        ),
        linux(
            "xgboost",
            "2.1.1",
            "cuda118_h1",
            "cuda-version >=11.8,<12",
            "cuda-cudart",
            build_number=1,
        ),
        linux("xgboost", "2.1.1", "cpu_h0", *cpu_depends),
        linux("openblas", "0.3.27"),
    ]


def test_a_cpu_variant_never_gets_a_cuda_runtime(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    spec = write_spec(tmp_path, [*CUDA, *xgboost()], dependencies="[xgboost]")
    records = exported(envbuild, spec)
    cpu = records["cpu/linux-64"]
    assert cpu["xgboost"] == ("2.1.1", "cpu_h0")
    assert not {"cuda-version", "cuda-cudart"} & set(cpu)
    assert records["cuda-12.4/linux-64"]["xgboost"][1] == "cuda124_h1"
    assert records["cuda-11.8/linux-64"]["xgboost"][1] == "cuda118_h1"
    assert_invariant(
        records, builds_may_differ={"xgboost"}, runtime={"cuda-version", "cuda-cudart"}
    )
    shown = envbuild("show", "-f", spec).output
    assert "NOT ALLOWED" not in shown


def test_what_only_a_cpu_build_needs_stays_in_the_cpu_variant(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    spec = write_spec(tmp_path, [*CUDA, *xgboost(("openblas",))], dependencies="[xgboost]")
    records = exported(envbuild, spec)
    assert "openblas" in records["cpu/linux-64"]
    assert "openblas" not in records["cuda-12.4/linux-64"]
    assert_invariant(
        records, builds_may_differ={"xgboost"}, runtime={"cuda-version", "cuda-cudart"}
    )
    shown = envbuild("show", "-f", spec).output
    assert "required by xgboost cpu_h0 in cpu (xgboost has CUDA builds)" in shown


def test_no_shared_version_is_refused_naming_the_package_and_the_roles(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    # cupy 13.3.0 is CUDA 12 only and 12.0.0 CUDA 11 only: the two GPU roles share nothing.
    spec = write_spec(
        tmp_path,
        [*CUDA, numpy("2.0.2"), cupy("13.3.0", "12"), cupy("12.0.0", "11")],
        dependencies="[numpy]",
        gpu_dependencies="[cupy]",
    )
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 8, result.output
    assert error_line(result) == (
        "envbuild: error: cupy: no version suits every target that must share it: "
        "cuda-11.8/linux-64 (scheduler; CUDA 11.8) chose 12.0.0; "
        "cuda-12.4/linux-64 (worker; CUDA 12.4) chose 13.3.0, cannot take 12.0.0"
    )
    assert not (tmp_path / "envbuild.lock").exists()


def test_a_requirement_that_matches_nothing_lists_what_exists(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    spec = write_spec(
        tmp_path,
        [*CUDA, numpy("1.26.4"), numpy("2.0.2")],
        dependencies="['numpy <1.20']",
        scheduler='{cuda: "12.4"}',
    )
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 7
    assert error_line(result) == (
        "envbuild: error: cannot solve cpu/linux-64 (roles: client): nothing matches "
        "'numpy <1.20' on linux-64: the channels have numpy 2.0.2, 1.26.4"
    )


def test_a_cpu_role_cannot_take_a_package_that_has_only_cuda_builds(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    spec = write_spec(
        tmp_path,
        [*CUDA, numpy("2.0.2"), cupy("13.3.0", "12")],
        dependencies="[numpy, cupy]",
        scheduler='{cuda: "12.4"}',
    )
    result = envbuild("lock", "-f", spec)
    assert result.exit_code == 7
    first = error_line(result)
    assert first.startswith("envbuild: error: cannot solve cpu/linux-64 (roles: client): ")
    assert "exists only as CUDA builds" in first and "gpu-dependencies" in first


def test_a_lock_that_needs_no_alignment_costs_one_solve_per_target(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    spec = write_spec(
        tmp_path,
        [*CUDA, numpy("2.0.2"), cupy("13.3.0", "12"), cupy("13.3.0", "11")],
        dependencies="[numpy]",
        gpu_dependencies="[cupy]",
    )
    status = json.loads(envbuild("lock", "--json", "-f", spec).stdout)
    assert status["solves"] == 3 == len(status["targets"])


def test_versions_no_target_can_take_cost_one_probe_not_a_solve_each(
    tmp_path: Path, envbuild: Callable[..., Result]
) -> None:
    # numpy 2.x needs a library the channel lacks; cupy holds the GPU variant below 1.26.
    newer = [linux("numpy", v, "py_h0", "libnew >=2") for v in ("2.0.0", "2.1.0", "2.2.0")]
    spec = write_spec(
        tmp_path,
        [*CUDA, numpy("1.26.4"), numpy("1.25.0"), *newer, cupy("13.3.0", "12", "numpy <1.26")],
        dependencies="[numpy]",
        gpu_dependencies="[cupy]",
        scheduler='{cuda: "12.4"}',
    )
    status = json.loads(envbuild("lock", "--json", "-f", spec).stdout)
    records = exported(envbuild, spec)
    assert set(versions(records, "numpy").values()) == {"1.25.0"}
    # Both targets alone; both asked for any numpy newer than 1.26.4 (neither can); the GPU
    # variant offered 1.26.4 (it cannot); the CPU variant pinned to 1.25.0. Not one solve per
    # 2.x version.
    assert status["solves"] == 6
    assert_invariant(records, builds_may_differ={"cupy"}, runtime={"cuda-version", "cuda-cudart"})
