"""A channel whose linux-64 and linux-aarch64 packages run, made offline from real artifacts.

- ``python`` 3.11: Debian's ``python3.11`` binary and standard library, relocated. The binary
  finds its home from its own location; Debian's ``site`` looks in ``dist-packages``, so the
  package adds a ``.pth`` there that makes ``lib/python3.11/site-packages`` a site directory,
  as in every conda Python. Native libraries its extension modules load (libssl, libffi,
  libsqlite3, ...) come from the system: the host, or the image's base. ``python_abi``
  pins it the way conda-forge does. linux-64's is the one installed on this machine;
  linux-aarch64's is the same Debian python for arm64, read from the ``.deb`` files pinned in
  ``debian.tsv`` (never installed, never run here: it runs under qemu-user in the tests).
- Dask, distributed, numpy, pandas and their whole closure, from the PyPI wheels pinned in
  ``wheels.tsv``: pure wheels as ``noarch: python`` packages (console scripts as conda entry
  points), compiled ones per subdir and python. ``depends`` come from the wheels'
  Requires-Dist; names follow conda-forge (PyPI ``dask`` is ``dask-core``; ``dask`` is a
  metapackage). linux-aarch64 has the same versions as linux-64, from the aarch64 wheels.
- CUDA as conda-forge shapes it: ``cuda-version`` 11.8 and 12.4 (constraining ``__cuda``),
  ``cuda-cudart`` from NVIDIA's runtime wheels, and ``cupy`` built per CUDA major from CuPy's
  wheels (they import on a machine without a GPU), for linux-64 and linux-aarch64.
- osx-arm64 holds the same versions (from macOS wheels where they exist) so that a macOS
  client locks; its ``python`` is a stub: no macOS interpreter can be made here, and this
  builder says so.

Python files are compiled to ``__pycache__`` (unchecked-hash pycs: reproducible, and no
container start compiles Dask again). Archives are ``.conda`` and byte-reproducible: the same
wheels and the same Debian python give the same sha256, so the same lock on every machine.
Wheels and ``.deb`` files are fetched once (pip, Debian's mirror) into one download cache.
The channel is built once per distinct input into a cache and copied (hard links) to where
it is asked for; a failed build leaves nothing behind.

    python -m envbuild.testing.runnable OUT [--offline]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from envbuild.testing import debian, wheels
from envbuild.testing.channel import File, Package, Payload, Symlink, write_channel

PYTHON = "3.11"
PY = "py311"
SITE = f"lib/python{PYTHON}/site-packages"
SUBDIRS = ("linux-64", "linux-aarch64", "osx-arm64", "noarch")
#: Subdirs whose packages run (their pure Python is compiled; CUDA exists there).
LINUX = ("linux-64", "linux-aarch64")
#: PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {
    "dask": "dask-core",
    "msgpack": "msgpack-python",
    "cupy-cuda12x": "cupy",
    "cupy-cuda11x": "cupy",
    "nvidia-cuda-runtime-cu12": "cuda-cudart",
    "nvidia-cuda-runtime-cu11": "cuda-cudart",
}
#: CUDA major -> (cupy wheel, runtime wheel, cuda-version it is built for)
CUDA = {
    "12": ("cupy-cuda12x", "nvidia-cuda-runtime-cu12", "12.4"),
    "11": ("cupy-cuda11x", "nvidia-cuda-runtime-cu11", "11.8"),
}
NVIDIA_LICENSE = "LicenseRef-NVIDIA-End-User-License-Agreement"
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
DEBIAN_STDLIB = Path("/usr/lib/python3.11")
#: Top-level parts of Debian's standard library a runtime does not need (the static library
#: for building extensions, the test suite, IDLE, and a link into /etc).
STDLIB_LEFT_OUT = ("config-3.11-x86_64-linux-gnu", "test", "idlelib", "sitecustomize.py")
#: The same for arm64 (its static library folder has the aarch64 triplet).
ARM64_STDLIB_LEFT_OUT = ("config-3.11-aarch64-linux-gnu", *STDLIB_LEFT_OUT[1:])
SITE_PTH = (
    'import os, site, sys; site.addsitedir(os.path.join(sys.prefix, "lib", '
    '"python%d.%d" % sys.version_info[:2], "site-packages"))\n'
)
#: Bump to rebuild every cached channel after a change to how packages are made.
BUILDER_VERSION = "1"


class RunnableChannelError(Exception):
    """The runnable channel cannot be built; the message is one line."""


def _build_hash(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:7]


# --- python ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DebianPython:
    """Debian's CPython, as installed on this machine."""

    version: str  # 3.11.2
    debian_version: str  # 3.11.2-6+deb12u6


def debian_python() -> DebianPython:
    """The installed Debian python3.11; RunnableChannelError says how to get it."""
    if not (DEBIAN_PYTHON.is_file() and (DEBIAN_STDLIB / "os.py").is_file()):
        raise RunnableChannelError(
            f"Debian's python3.11 is not installed ({DEBIAN_PYTHON}): "
            "apt-get install python3.11 (make demo and make test install it)"
        )
    version = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    debian = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libpython3.11-stdlib"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return DebianPython(version, debian or "unknown")


def _stdlib() -> dict[str, Payload]:
    files: dict[str, Payload] = {}
    for path in sorted(DEBIAN_STDLIB.rglob("*")):
        relative = path.relative_to(DEBIAN_STDLIB).as_posix()
        parts = relative.split("/")
        if parts[0] in STDLIB_LEFT_OUT or "__pycache__" in parts:
            continue
        if path.is_symlink():
            target = str(path.readlink())
            if not target.startswith("/"):
                files[f"lib/python{PYTHON}/{relative}"] = Symlink(target)
            continue
        if path.is_file():
            executable = bool(path.stat().st_mode & 0o111)
            files[f"lib/python{PYTHON}/{relative}"] = File(path.read_bytes(), executable)
    return files


@dataclass(frozen=True)
class Arm64Python:
    """Debian's CPython for arm64, as its pinned .debs hold it."""

    version: str  # 3.11.2
    build: str  # the conda build string
    files: dict[str, Payload]  # the payload, uncompiled


def arm64_python(debs: list[debian.PinnedDeb], paths: Mapping[str, Path]) -> Arm64Python:
    """The arm64 python3.11 binary and standard library, from the pinned .debs."""
    binary = f"usr/bin/python{PYTHON}"
    stdlib = f"usr/lib/python{PYTHON}/"
    files: dict[str, Payload] = {}
    for deb in debs:
        for path, item in debian.read_deb(paths[deb.file_name]).items():
            if path == binary and isinstance(item, File):
                files[f"bin/python{PYTHON}"] = File(item.data, True)
                continue
            if not path.startswith(stdlib):
                continue
            relative = path.removeprefix(stdlib)
            parts = relative.split("/")
            if parts[0] in ARM64_STDLIB_LEFT_OUT or "__pycache__" in parts:
                continue
            if isinstance(item, Symlink) and item.target.startswith("/"):
                continue
            files[f"lib/python{PYTHON}/{relative}"] = item
    if f"bin/python{PYTHON}" not in files or f"lib/python{PYTHON}/os.py" not in files:
        raise RunnableChannelError(
            f"the pinned .debs ({debian.DEB_LIST.name}) hold no python{PYTHON} binary or no "
            "standard library"
        )
    upstream = {d.version.split("-")[0] for d in debs if d.package.startswith("python3.11")}
    if len(upstream) != 1:
        raise RunnableChannelError(f"{debian.DEB_LIST.name}: python3.11 versions {upstream}")
    build = _build_hash("python", "linux-aarch64", *(d.sha256 for d in debs))
    return Arm64Python(upstream.pop(), f"h{build}_0_cpython", files)


def python_packages(python: DebianPython, arm64: Arm64Python) -> list[Package]:
    """``python`` for linux-64 (Debian's, relocated), linux-aarch64 (Debian's arm64 one,
    relocated) and osx-arm64 (a stub), ``python_abi``."""
    if arm64.version != python.version:
        raise RunnableChannelError(
            f"this machine's python3.11 is {python.version} but the pinned arm64 one is "
            f"{arm64.version}: a lock needs one python version on every platform; pin the "
            f"arm64 .debs of {python.debian_version} in {debian.DEB_LIST.name}"
        )
    build = f"h{_build_hash('python', python.debian_version)}_0_cpython"
    linux: dict[str, Payload] = {
        f"bin/python{PYTHON}": File(DEBIAN_PYTHON.read_bytes(), True),
        "bin/python3": Symlink(f"python{PYTHON}"),
        "bin/python": Symlink(f"python{PYTHON}"),
        f"lib/python{PYTHON}/dist-packages/conda-site-packages.pth": SITE_PTH,
        **_stdlib(),
    }
    aarch64: dict[str, Payload] = {
        "bin/python3": Symlink(f"python{PYTHON}"),
        "bin/python": Symlink(f"python{PYTHON}"),
        f"lib/python{PYTHON}/dist-packages/conda-site-packages.pth": SITE_PTH,
        **arm64.files,
    }
    stub = {
        "share/envbuild-runnable/python-osx-arm64.txt": (
            f"A stand-in for python {python.version} on osx-arm64: the runnable channel is "
            "built on Linux from Debian's interpreter, and no macOS interpreter can be made "
            "there. It locks; it does not run.\n"
        )
    }
    packages = []
    for subdir, files, built in (
        ("linux-64", compile_python(linux), build),
        ("linux-aarch64", compile_python(aarch64), arm64.build),
        ("osx-arm64", stub, build),
    ):
        packages.append(
            Package(
                name="python",
                version=python.version,
                build=built,
                subdir=subdir,
                license="Python-2.0",
                constrains=(f"python_abi {PYTHON}.* *_cp311",),
                files=files,
                archive="conda",
            )
        )
        packages.append(
            Package(
                name="python_abi",
                version=PYTHON,
                build="5_cp311",
                build_number=5,
                subdir=subdir,
                constrains=(f"python {PYTHON}.* *_cpython",),
                archive="conda",
            )
        )
    return packages


def compile_python(files: Mapping[str, Payload]) -> dict[str, Payload]:
    """``files`` plus an unchecked-hash pyc for every ``.py`` among them, compiled by the
    Debian interpreter that the channel ships (reproducible: the same source gives the
    same bytes, whatever the folder or the clock)."""
    sources = {p: f for p, f in files.items() if p.endswith(".py") and isinstance(f, File)}
    if not sources:
        return dict(files)
    with tempfile.TemporaryDirectory(prefix="envbuild-pyc-") as tmp:
        root = Path(tmp)
        for path, item in sources.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(item.data)
        command = [str(DEBIAN_PYTHON), "-m", "compileall", "-q", "-j", "0"]
        command += ["--invalidation-mode", "unchecked-hash", "-d", "/envbuild", str(root)]
        # Sources that do not compile under 3.11 (templates, py2-only tests) stay uncompiled.
        subprocess.run(command, capture_output=True, check=False)
        compiled = {
            pyc.relative_to(root).as_posix(): File(pyc.read_bytes())
            for pyc in sorted(root.rglob("*.pyc"))
        }
    return {**files, **compiled}


# --- wheels --------------------------------------------------------------------------------------


def _python_pins() -> tuple[str, ...]:
    return (f"python >={PYTHON},<3.12.0a0", f"python_abi {PYTHON}.* *_cp311")


def wheel_package(
    pinned: wheels.PinnedWheel,
    path: Path,
    *,
    subdir: str,
    extra_depends: tuple[str, ...] = (),
    build_tag: str = "",
) -> Package:
    """A conda package made from a wheel, for ``subdir`` (``noarch``: a pure wheel)."""
    content = wheels.read_wheel(path)
    name = CONDA_NAMES.get(content.name, content.name)
    platform = "linux-64" if subdir == "noarch" else subdir
    depends = wheels.conda_requirements(content.requires, platform=platform, names=CONDA_NAMES)
    built = _build_hash(name, content.version, pinned.sha256)
    if subdir == "noarch":
        requires = (content.requires_python or "").replace(" ", "")
        python = f"python {requires}" if requires else "python"
        files: dict[str, Payload] = {
            f"site-packages/{p}": f for p, f in content.site_packages.items()
        }
        files.update({f"python-scripts/{p}": f for p, f in content.scripts.items()})
        return Package(
            name=name,
            version=content.version,
            build=f"pyh{built}_0",
            noarch="python",
            depends=tuple(sorted({python, *depends, *extra_depends})),
            entry_points=tuple(content.entry_points),
            files=compile_python(files),
            archive="conda",
        )
    files = {f"{SITE}/{p}": f for p, f in content.site_packages.items()}
    files.update({f"bin/{p}": f for p, f in content.scripts.items()})
    return Package(
        name=name,
        version=content.version,
        build=f"{PY}{build_tag}h{built}_0",
        subdir=subdir,
        depends=tuple(sorted({*_python_pins(), *depends, *extra_depends})),
        files=compile_python(files) if subdir in LINUX else files,
        archive="conda",
    )


def cuda_packages(
    pinned: Mapping[str, Mapping[str, wheels.PinnedWheel]], paths: Mapping[str, Path]
) -> Iterator[Package]:
    """cuda-version per CUDA minor, cuda-cudart from NVIDIA's runtime wheels, cupy per CUDA
    major from CuPy's wheels: for each subdir of ``pinned`` (subdir -> PyPI name -> wheel),
    Linux ones only, as on conda-forge."""
    for major, (_, _, cuda) in CUDA.items():
        yield Package(
            name="cuda-version",
            version=cuda,
            build=f"h{_build_hash('cuda-version', cuda)}_3",
            build_number=3,
            noarch="generic",
            license=NVIDIA_LICENSE,
            constrains=(f"__cuda >={major}", f"cudatoolkit {cuda}|{cuda}.*"),
            archive="conda",
        )
    for subdir, wheels_of_subdir in pinned.items():
        yield from _cuda_runtime_and_cupy(wheels_of_subdir, paths, subdir)


def _cuda_runtime_and_cupy(
    pinned: Mapping[str, wheels.PinnedWheel], paths: Mapping[str, Path], subdir: str
) -> Iterator[Package]:
    for major, (cupy_wheel, runtime_wheel, cuda) in CUDA.items():
        minor_next = f"{major}.{int(cuda.split('.')[1]) + 1}"
        runtime = pinned[runtime_wheel]
        content = wheels.read_wheel(paths[runtime.file_name])
        libraries = {
            f"lib/{p.rsplit('/', 1)[1]}": f
            for p, f in content.site_packages.items()
            if "/lib/" in p and ".so" in p
        }
        yield Package(
            name="cuda-cudart",
            version=content.version,
            build=f"h{_build_hash('cuda-cudart', content.version, runtime.sha256)}_0",
            subdir=subdir,
            depends=(f"cuda-version >={cuda},<{minor_next}.0a0",),
            license=NVIDIA_LICENSE,
            files=libraries,
            archive="conda",
        )
        cupy = pinned[cupy_wheel]
        yield wheel_package(
            cupy,
            paths[cupy.file_name],
            subdir=subdir,
            extra_depends=(f"cuda-version >={major}.0,<{int(major) + 1}", "cuda-cudart"),
            build_tag=f"cuda{major}",
        )


def dask_metapackage(version: str) -> Package:
    """``dask``: dask-core, distributed and the array and dataframe stack, as conda-forge's.

    Its one file is a note outside site-packages: a package without files would get the
    channel writer's stub ``dask/__init__.py``, which clobbers dask-core's."""
    return Package(
        name="dask",
        version=version,
        build=f"pyh{_build_hash('dask', version)}_0",
        noarch="python",
        depends=(
            "python >=3.9",
            f"dask-core =={version}",
            f"distributed =={version}",
            "numpy >=1.24",
            "pandas >=2.0",
        ),
        files={
            "share/envbuild-runnable/dask.txt": (
                f"dask {version}: a metapackage; Dask itself is in dask-core.\n"
            )
        },
        archive="conda",
    )


def runnable_packages(
    pinned: list[wheels.PinnedWheel],
    paths: Mapping[str, Path],
    python: DebianPython,
    arm64: Arm64Python,
) -> list[Package]:
    """Every package of the runnable channel."""
    packages = python_packages(python, arm64)
    by_subdir = {
        subdir: {w.name: w for w in pinned if w.platform in ("any", subdir)} for subdir in LINUX
    }
    by_name = by_subdir["linux-64"]
    cuda_names = {n for wheel_names in CUDA.values() for n in wheel_names[:2]}
    for wheel in pinned:
        if wheel.name in cuda_names:
            continue
        subdirs = ["noarch"] if wheel.platform == "any" else [wheel.platform]
        for subdir in subdirs:
            packages.append(wheel_package(wheel, paths[wheel.file_name], subdir=subdir))
    packages.extend(cuda_packages(by_subdir, paths))
    packages.append(dask_metapackage(by_name["dask"].version))
    return packages


# --- the channel and its cache --------------------------------------------------------------------


def cache_key(python: DebianPython, pinned_text: str, debs_text: str = "") -> str:
    """What the channel is made from: the builder, the wheels, the Debian pythons."""
    digest = hashlib.sha256()
    for part in (BUILDER_VERSION, pinned_text, python.debian_version, debs_text):
        digest.update(part.encode())
    for module in ("channel.py", "wheels.py", "debian.py", "runnable.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()[:16]


def default_cache() -> Path:
    """Where wheels and built channels are kept: $ENVBUILD_RUNNABLE_CACHE or the envbuild
    cache's ``runnable/``."""
    if os.environ.get("ENVBUILD_RUNNABLE_CACHE"):
        return Path(os.environ["ENVBUILD_RUNNABLE_CACHE"])
    from envbuild.files.cache import cache_root

    return cache_root() / "runnable"


def build(
    cache: Path | None = None,
    *,
    wheel_cache: Path | None = None,
    offline: bool = False,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> Path:
    """The runnable channel's folder, built into ``cache`` unless it is there already
    (wheels and the arm64 python's .debs in ``wheel_cache``, default ``cache/wheels``)."""
    cache = cache or default_cache()
    wheel_cache = wheel_cache or cache / "wheels"
    python = debian_python()
    pinned_text = wheels.WHEEL_LIST.read_text(encoding="utf-8")
    debs_text = debian.DEB_LIST.read_text(encoding="utf-8")
    channel = cache / f"channel-{cache_key(python, pinned_text, debs_text)}"
    if (channel / ".complete").is_file():
        return channel
    pinned = wheels.pinned_wheels()
    debs = debian.pinned_debs()
    try:
        paths = wheels.fetch(pinned, wheel_cache, offline=offline)
        paths.update(debian.fetch(debs, wheel_cache, offline=offline))
    except (wheels.WheelError, debian.DebError) as exc:
        raise RunnableChannelError(str(exc)) from None
    log(
        f"building the runnable channel: {len(pinned)} wheels, Debian python {python.version} "
        f"(and its arm64 build from {len(debs)} .debs)"
    )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".channel-"))
    try:
        packages = runnable_packages(pinned, paths, python, arm64_python(debs, paths))
        write_channel(tmp, packages, subdirs=SUBDIRS)
        (tmp / ".complete").write_text(f"{len(packages)} packages\n")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(channel)
        tmp.replace(channel)
    except (wheels.WheelError, debian.DebError) as exc:
        raise RunnableChannelError(str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"runnable channel: {channel} ({len(packages)} packages)")
    return channel


def copy_channel(channel: Path, out: Path) -> None:
    """Put the channel at ``out`` (hard links where the filesystem allows, else copies)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(source: str, destination: str) -> None:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    shutil.copytree(channel, tmp, copy_function=link)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m envbuild.testing.runnable",
        description="Write the runnable test channel (Debian's python for amd64 and arm64, "
        "Dask from PyPI wheels, CUDA runtimes and cupy) to OUT.",
    )
    parser.add_argument("out", type=Path, help="where the channel goes")
    parser.add_argument("--offline", action="store_true", help="use cached wheels and .debs only")
    args = parser.parse_args(argv)
    try:
        channel = build(offline=args.offline)
        copy_channel(channel, args.out)
    except RunnableChannelError as exc:
        print(f"envbuild runnable channel: error: {exc}", file=sys.stderr)
        return 1
    print(args.out.resolve().as_uri())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
