"""The invariant checker on hand-made records: what it allows, what it flags, and why."""

from __future__ import annotations

from envbuild.lock.consistency import (
    check,
    cuda_dependent,
    cuda_runtime,
    disagreements,
    platform_mismatches,
    variant_differences,
)
from envbuild.lock.explain import culprit
from envbuild.lock.lockfile import LockedPackage, Target


def pkg(name: str, version: str = "1.0", build: str = "0", *depends: str) -> LockedPackage:
    return LockedPackage(
        name=name,
        version=version,
        build=build,
        build_number=0,
        subdir="linux-64",
        url=f"file:///c/linux-64/{name}-{version}-{build}.tar.bz2",
        channel="file:///c",
        file_name=f"{name}-{version}-{build}.tar.bz2",
        sha256="0" * 64,
        md5="0" * 32,
        depends=depends,
    )


PYTHON = pkg("python", "3.11.9", "h1_cpython")
NUMPY = pkg("numpy", "2.0.2", "py311h1", "python >=3.11")
CUDA_VERSION_124 = pkg("cuda-version", "12.4", "h3")
CUDA_VERSION_128 = pkg("cuda-version", "12.8", "h3")
CUDART_124 = pkg("cuda-cudart", "12.4.127", "h0", "cuda-version >=12.4,<12.5.0a0", "libstdcxx")
CUDART_128 = pkg("cuda-cudart", "12.8.90", "h0", "cuda-version >=12.8,<12.9.0a0", "libstdcxx")
LIBSTDCXX = pkg("libstdcxx", "14.2.0", "h1")
FASTRLOCK = pkg("fastrlock", "0.8.2", "py311h1", "python")
CUPY_12 = pkg(
    "cupy",
    "13.3.0",
    "py311cuda12h1",
    "cuda-version >=12.0,<13",
    "cuda-cudart",
    "fastrlock",
    "numpy",
)

CPU = (PYTHON, NUMPY)
GPU_124 = (PYTHON, NUMPY, CUDA_VERSION_124, CUDART_124, LIBSTDCXX, FASTRLOCK, CUPY_12)
GPU_128 = (PYTHON, NUMPY, CUDA_VERSION_128, CUDART_128, LIBSTDCXX, FASTRLOCK, CUPY_12)
LINUX_CPU, LINUX_124, LINUX_128 = (Target(v, "linux-64") for v in ("cpu", "cuda-12.4", "cuda-12.8"))
OSX_CPU = Target("cpu", "osx-arm64")


def test_cuda_dependence_propagates_upwards() -> None:
    reasons = cuda_dependent(GPU_124)
    assert reasons["cuda-version"] == "selects the CUDA version"
    assert reasons["cuda-cudart"] == "depends on cuda-version"
    assert set(reasons) == {"cuda-version", "cuda-cudart", "cupy"}
    assert set(cuda_runtime(GPU_124)) == {"cuda-version", "cuda-cudart"}  # not cupy: >=12,<13


def test_a_consistent_solution_has_no_violations_and_explains_its_differences() -> None:
    solution = {LINUX_CPU: CPU, LINUX_124: GPU_124, LINUX_128: GPU_128, OSX_CPU: CPU}
    assert check(solution, {"cupy"}) == []
    reasons = {d.package: d.reason for d in variant_differences(solution, {"cupy"})}
    assert reasons == {
        "cuda-cudart": "CUDA runtime: built for cuda-version >=12.4,<12.5.0a0",
        "cuda-version": "the CUDA version itself",
        "cupy": "gpu-dependency",
        "fastrlock": "required by cupy (GPU stack)",
        "libstdcxx": "required by cuda-cudart (GPU stack)",
    }


def test_a_different_build_of_a_plain_package_is_a_violation() -> None:
    other_numpy = pkg("numpy", "2.0.2", "py311h2_openblas", "python >=3.11")
    solution = {LINUX_CPU: (PYTHON, other_numpy), LINUX_124: GPU_124}
    [violation] = check(solution, {"cupy"})
    assert violation.kind == "variant-build" and violation.package == "numpy"
    assert "cpu has 2.0.2 py311h2_openblas, cuda-12.4 has 2.0.2 py311h1" in violation.message


def test_a_different_version_is_a_violation_even_for_cuda_dependent_packages() -> None:
    older_cupy = pkg("cupy", "13.2.0", "py311cuda12h1", "cuda-version >=12.0,<13")
    solution = {LINUX_124: GPU_124, LINUX_128: (*GPU_128[:-1], older_cupy)}
    kinds = {(v.package, v.kind) for v in check(solution, {"cupy"})}
    assert kinds == {("cupy", "variant-version")}


def test_a_package_only_in_one_variant_must_belong_to_the_gpu_stack() -> None:
    stray = pkg("requests", "2.32.0", "pyh0")
    solution = {LINUX_CPU: CPU, LINUX_124: (*GPU_124, stray)}
    [violation] = check(solution, {"cupy"})
    assert (violation.package, violation.kind) == ("requests", "variant-only")
    assert "missing from cpu" in violation.message


def test_versions_must_agree_across_platforms_unless_allowed() -> None:
    osx_numpy = pkg("numpy", "1.26.4", "py311h9", "python >=3.11")
    solution = {LINUX_CPU: CPU, OSX_CPU: (PYTHON, osx_numpy)}
    [violation] = platform_mismatches(solution)
    assert violation.message.startswith("numpy: cpu/linux-64 has 2.0.2, cpu/osx-arm64 has 1.26.4")
    assert check(solution, {"cupy"}, allow_platform_divergence={"numpy"}) == []


def test_versions_are_compared_as_conda_does_not_as_text() -> None:
    # "1.0" and "1.0.0" are one version for conda, whatever each platform's build calls it.
    linux, osx = pkg("zlib-ng", "1.0", "h1"), pkg("zlib-ng", "1.0.0", "h9")
    solution = {LINUX_CPU: (PYTHON, linux), OSX_CPU: (PYTHON, osx)}
    assert check(solution, set()) == []
    assert disagreements(solution) == []


def test_disagreements_group_the_targets_that_must_share_a_package() -> None:
    older = pkg("numpy", "1.26.4", "py311h7", "python >=3.11")
    other_build = pkg("numpy", "2.0.2", "py311h2_openblas", "python >=3.11")
    solution = {LINUX_CPU: (PYTHON, older), LINUX_124: GPU_124, LINUX_128: GPU_128}
    [version] = disagreements(solution)
    assert (version.package, version.kind) == ("numpy", "version")
    assert set(version.chosen) == {LINUX_CPU, LINUX_124, LINUX_128}
    # Builds are compared only once versions agree, and never for CUDA-dependent packages or
    # the CUDA runtime (cupy and cuda-cudart differ here, legitimately).
    solution[LINUX_CPU] = (PYTHON, other_build)
    [build] = disagreements(solution)
    assert (build.package, build.kind) == ("numpy", "build")
    # The CUDA runtime is shared within a variant only, so it is grouped per variant.
    arm = Target("cuda-12.4", "linux-aarch64")
    drifted = pkg("cuda-cudart", "12.4.99", "h0", "cuda-version >=12.4,<12.5.0a0")
    solution = {LINUX_124: GPU_124, LINUX_128: GPU_128, arm: (*GPU_124[:3], drifted)}
    [runtime] = [d for d in disagreements(solution) if d.package == "cuda-cudart"]
    assert set(runtime.chosen) == {LINUX_124, arm}


def test_what_only_the_cpu_build_of_a_cuda_package_needs_may_stay_in_the_cpu_variant() -> None:
    xgb_cpu = pkg("xgboost", "2.1.1", "cpu_h1", "openblas", "python")
    xgb_gpu = pkg("xgboost", "2.1.1", "cuda124_h1", "cuda-version >=12,<13", "python")
    openblas = pkg("openblas", "0.3.27", "h1")
    solution = {
        LINUX_CPU: (PYTHON, xgb_cpu, openblas),
        LINUX_124: (PYTHON, CUDA_VERSION_124, xgb_gpu),
    }
    assert check(solution, set()) == []
    reasons = {d.package: d.reason for d in variant_differences(solution, set())}
    assert reasons["openblas"] == ("required by xgboost cpu_h1 in cpu (xgboost has CUDA builds)")
    # A package nothing of the GPU stack pulls in stays a violation.
    stray = pkg("requests", "2.32.0", "pyh0")
    solution[LINUX_CPU] = (*solution[LINUX_CPU], stray)
    [violation] = check(solution, set())
    assert (violation.package, violation.kind) == ("requests", "variant-only")


def test_culprit_names_the_package_the_solver_blames() -> None:
    explanation = (
        "Cannot solve the request because of: cupy * cannot be installed because there are no"
        " viable options:\n├─ cupy 13.3.0 would require\n"
    )
    assert culprit(explanation) == "cupy cannot be installed (solver's explanation below)"
    assert culprit(None) == "the solver found no solution"
    missing = "Cannot solve the request because of: No candidates were found for fancy *."
    assert culprit(missing) == "nothing matches 'fancy *' in the channels for this platform"


def test_the_cuda_runtime_is_compared_across_platforms_within_each_variant() -> None:
    arm_124, arm_128 = Target("cuda-12.4", "linux-aarch64"), Target("cuda-12.8", "linux-aarch64")
    solution = {LINUX_124: GPU_124, LINUX_128: GPU_128, arm_124: GPU_124, arm_128: GPU_128}
    assert check(solution, {"cupy"}) == []
    # Within one variant the runtime must still agree across platforms.
    other_cudart = pkg("cuda-cudart", "12.4.99", "h0", "cuda-version >=12.4,<12.5.0a0")
    drifted = {**solution, arm_124: (*GPU_124[:3], other_cudart, *GPU_124[4:])}
    [violation] = platform_mismatches(drifted)
    assert violation.package == "cuda-cudart"
    assert "cuda-12.4/linux-64 has 12.4.127" in violation.message
    assert "cuda-12.4/linux-aarch64 has 12.4.99" in violation.message
