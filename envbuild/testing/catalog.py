"""The dask-gpu fixture channel: a small conda-forge look-alike with real archives.

Shaped like the real thing where it matters to locking: per-python builds of compiled
packages, noarch python packages, ``cuda-version`` with a ``run_constrained`` on ``__cuda``,
a CUDA runtime per ``cuda-version``, GPU packages built per CUDA major, and linux-64 /
osx-arm64 / noarch subdirs. Run ``python -m envbuild.testing.catalog DIR`` to write it.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from envbuild.testing.channel import Package, write_channel

PLATFORMS = ("linux-64", "osx-arm64")
PYTHONS = {"3.11": "3.11.9", "3.12": "3.12.4"}
DASK_VERSIONS = ("2024.8.0", "2024.8.2")
NUMPY_VERSIONS = ("1.26.4", "2.0.2")
NVIDIA_LICENSE = "LicenseRef-NVIDIA-End-User-License-Agreement"
#: cuda-version -> cuda-cudart version
CUDA_RUNTIMES = {"11.8": "11.8.89", "12.4": "12.4.127", "12.8": "12.8.90"}


def build_hash(*parts: str) -> str:
    """A conda-style build hash ("h" + 7 hex digits), stable for the same inputs."""
    return "h" + hashlib.sha1("|".join(parts).encode(), usedforsecurity=False).hexdigest()[:7]


def _next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def _cxx_runtime(subdir: str) -> tuple[str, ...]:
    return ("libgcc >=13", "libstdcxx >=13") if subdir.startswith("linux") else ("libcxx >=17",)


def _python_pins(py: str) -> tuple[str, ...]:
    return (
        f"python >={py},<{_next_minor(py)}.0a0",
        f"python_abi {py}.* *_cp{py.replace('.', '')}",
    )


def system_packages(subdir: str) -> Iterator[Package]:
    """The C runtime and zlib every compiled package links against."""
    if subdir.startswith("linux"):
        yield Package(
            name="libgcc",
            version="14.2.0",
            build="h77fa898_1",
            build_number=1,
            subdir=subdir,
            license="GPL-3.0-only WITH GCC-exception-3.1",
        )
        yield Package(
            name="libstdcxx",
            version="14.2.0",
            build="hc0a3c3a_1",
            build_number=1,
            subdir=subdir,
            depends=("libgcc 14.2.0 h77fa898_1",),
            license="GPL-3.0-only WITH GCC-exception-3.1",
        )
    else:
        yield Package(
            name="libcxx",
            version="19.1.0",
            build="ha82da77_0",
            subdir=subdir,
            license="Apache-2.0 WITH LLVM-exception",
        )
    yield Package(
        name="libzlib",
        version="1.3.1",
        build=build_hash("libzlib", subdir) + "_2",
        build_number=2,
        subdir=subdir,
        depends=("libgcc >=13",) if subdir.startswith("linux") else (),
        license="Zlib",
    )


def python_packages(subdir: str, pythons: Mapping[str, str] = PYTHONS) -> Iterator[Package]:
    """CPython interpreters (``pythons``: X.Y -> full version) and their python_abi pins."""
    for py, full in pythons.items():
        tag = f"cp{py.replace('.', '')}"
        yield Package(
            name="python_abi",
            version=py,
            build=f"5_{tag}",
            build_number=5,
            subdir=subdir,
            constrains=(f"python {py}.* *_cpython",),
        )
        yield Package(
            name="python",
            version=full,
            build=build_hash("python", full, subdir) + "_0_cpython",
            subdir=subdir,
            license="Python-2.0",
            depends=("libzlib >=1.3.1,<2.0a0", *_cxx_runtime(subdir)[:1]),
            constrains=(f"python_abi {py}.* *_{tag}",),
        )


def compiled_python_package(
    name: str, version: str, subdir: str, depends: tuple[str, ...] = ()
) -> Iterator[Package]:
    """One build per python version, as conda-forge does for extension modules."""
    for py in PYTHONS:
        tag = f"py{py.replace('.', '')}"
        yield Package(
            name=name,
            version=version,
            subdir=subdir,
            build=f"{tag}{build_hash(name, version, subdir, py)}_0",
            depends=(*_python_pins(py), *depends, *_cxx_runtime(subdir)[:1]),
        )


def noarch_python(name: str, version: str, *depends: str) -> Package:
    """A pure-python package (``noarch: python``), installable on every platform."""
    return Package(
        name=name,
        version=version,
        build="pyhd8ed1ab_0",
        noarch="python",
        depends=("python >=3.9", *depends),
    )


def dask_packages(version: str, subdir: str = "noarch") -> Iterator[Package]:
    """dask, dask-core and distributed at one version (noarch unless a subdir is given)."""
    noarch = "python" if subdir == "noarch" else None
    build = "pyhd8ed1ab_0" if noarch else build_hash("dask", version, subdir) + "_0"
    pin = f"{version} {build}" if noarch is None else version
    common = ("python >=3.9", "cloudpickle >=3.0.0", "toolz >=0.10.0", "pyyaml >=5.3.1")
    yield Package(
        name="dask-core", version=version, build=build, subdir=subdir, noarch=noarch, depends=common
    )
    yield Package(
        name="distributed",
        version=version,
        build=build,
        subdir=subdir,
        noarch=noarch,
        depends=(
            *common,
            f"dask-core =={pin}",
            "msgpack-python >=1.0.2",
            "psutil >=5.8.0",
            "tornado >=6.2.0",
        ),
    )
    yield Package(
        name="dask",
        version=version,
        build=build,
        subdir=subdir,
        noarch=noarch,
        depends=("python >=3.9", f"dask-core =={pin}", f"distributed =={pin}", "numpy >=1.24"),
    )


def cuda_packages() -> Iterator[Package]:
    """cuda-version selectors and the CUDA runtime built for each (linux-64 only)."""
    for cuda, cudart in CUDA_RUNTIMES.items():
        major = cuda.split(".")[0]
        yield Package(
            name="cuda-version",
            version=cuda,
            build=build_hash("cuda-version", cuda) + "_3",
            build_number=3,
            noarch="generic",
            license=NVIDIA_LICENSE,
            constrains=(f"__cuda >={major}", f"cudatoolkit {cuda}|{cuda}.*"),
        )
        window = f"cuda-version >={cuda},<{_next_minor(cuda)}.0a0"
        yield Package(
            name="cuda-cudart_linux-64",
            version=cudart,
            build=build_hash("cudart_linux", cudart) + "_0",
            noarch="generic",
            depends=(window,),
            license=NVIDIA_LICENSE,
        )
        yield Package(
            name="cuda-cudart",
            version=cudart,
            subdir="linux-64",
            build=build_hash("cuda-cudart", cudart) + "_0",
            depends=(f"cuda-cudart_linux-64 {cudart} *", window, "libgcc >=12", "libstdcxx >=12"),
            license=NVIDIA_LICENSE,
        )


def cupy_packages() -> Iterator[Package]:
    """cupy built per CUDA major; CUDA 11 builds exist only for python 3.11, as in real life."""
    for major, pythons in (("12", ("3.11", "3.12")), ("11", ("3.11",))):
        for py in pythons:
            tag = f"py{py.replace('.', '')}"
            yield Package(
                name="cupy",
                version="13.3.0",
                subdir="linux-64",
                build=f"{tag}cuda{major}{build_hash('cupy', major, py)}_0",
                depends=(
                    *_python_pins(py),
                    "numpy >=1.22,<3.0a0",
                    "fastrlock >=0.8.2,<0.9.0a0",
                    f"cuda-version >={major}.0,<{int(major) + 1}",
                    "cuda-cudart",
                    "libgcc >=13",
                    "libstdcxx >=13",
                ),
            )


def dask_gpu_packages(
    *,
    dask_versions: tuple[str, ...] = DASK_VERSIONS,
    numpy_versions: tuple[str, ...] = NUMPY_VERSIONS,
) -> list[Package]:
    """Every package of the dask-gpu fixture channel."""
    packages: list[Package] = []
    for subdir in PLATFORMS:
        packages += system_packages(subdir)
        packages += python_packages(subdir)
        for version in numpy_versions:
            packages += compiled_python_package("numpy", version, subdir)
        packages += compiled_python_package("tornado", "6.4.1", subdir)
        packages += compiled_python_package("msgpack-python", "1.0.8", subdir)
        packages += compiled_python_package("psutil", "6.0.0", subdir)
        packages += compiled_python_package("pyyaml", "6.0.2", subdir, ("yaml >=0.2.5,<0.3.0a0",))
        packages += compiled_python_package("fastrlock", "0.8.2", subdir)
        packages.append(
            Package(
                name="yaml",
                version="0.2.5",
                build=build_hash("yaml", subdir) + "_2",
                build_number=2,
                subdir=subdir,
                license="MIT",
            )
        )
    packages.append(noarch_python("toolz", "0.12.1"))
    packages.append(noarch_python("cloudpickle", "3.0.0"))
    for version in dask_versions:
        packages += dask_packages(version)
    packages += cuda_packages()
    packages += cupy_packages()
    return packages


def write_dask_gpu_channel(
    root: Path,
    extra: tuple[Package, ...] = (),
    *,
    dask_versions: tuple[str, ...] = DASK_VERSIONS,
    numpy_versions: tuple[str, ...] = NUMPY_VERSIONS,
) -> str:
    """Write the dask-gpu channel (plus ``extra`` packages) under ``root``; return its URL."""
    packages = dask_gpu_packages(dask_versions=dask_versions, numpy_versions=numpy_versions)
    return write_channel(root, [*packages, *extra], subdirs=(*PLATFORMS, "noarch"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m envbuild.testing.catalog OUTPUT_DIR", file=sys.stderr)
        return 2
    url = write_dask_gpu_channel(Path(argv[0]))
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
