"""PyPI dependencies in the lock: after the conda solve, every target's PyPI requirements are
resolved (``envbuild.lock.pypi``) over what its conda packages provide, then held to the
invariant.

1. Each target asks for ``pypi-dependencies``, plus in CUDA variants the
   ``gpu-pypi-dependencies`` with ``{cuda_major}`` replaced by the variant's CUDA major
   (``cupy-cuda{cuda_major}x`` -> ``cupy-cuda12x``), for its python (the conda ``python`` it
   solved to), its platform and its declared ``__glibc`` (manylinux floor) or ``__osx``.
2. What the conda packages provide is fixed (see ``provided_distributions``).
3. All targets are resolved concurrently. Where targets that must share a distribution
   disagree on its version (every target; only those on one platform for a name under
   ``allow-platform-divergence``), the ones that differ are pinned to the version a conda
   package gives elsewhere or else the lowest chosen, and resolved again; a target that
   cannot take the pin fails the lock (ConsistencyError, exit 8). The names one template
   gives per CUDA major are one distribution here: cupy-cuda11x in a CUDA 11 variant and
   cupy-cuda12x in a CUDA 12 one get one version.
4. The result is checked (``pypi_problems``): one version per distribution as in 3, and a
   wheel present in some variants of a platform only must be needed by a gpu-pypi-dependency.

A requirement that needs a conda package's distribution in another version fails its target
(SolveError, exit 7, naming both), as any target that cannot be solved does.

Conda names -> distribution names: a conda archive on this machine (a ``file://`` channel) is
read, its ``*.dist-info`` folders say what it provides (envbuild's runnable channel makes its
packages from wheels, so they all carry one). For a remote channel envbuild reads no archive:
a conda package that depends on python (or is ``noarch: python``) provides the distribution
of its own name, or the one ``PYPI_NAMES`` gives for the names conda-forge spells otherwise.
A remote conda package missing from that table whose distribution has another name is not
seen as providing it: a PyPI requirement on that name would install it a second time, from
PyPI. List the package in ``pypi-dependencies`` only where conda does not have it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from envbuild.errors import ConsistencyError, SolveError
from envbuild.lock.lockfile import LockedPackage, Target, local_path
from envbuild.lock.pypi import Provided, PypiRequest, Sources, resolve_target
from envbuild.lock.pypifetch import pypi_cache, wheel_metadata
from envbuild.lock.wheels import LockedWheel, normalize
from envbuild.spec.fields import CUDA_MAJOR
from envbuild.spec.model import Spec

#: conda-forge names whose Python distribution is named otherwise (remote channels only).
PYPI_NAMES = {
    "dask-core": "dask",
    "msgpack-python": "msgpack",
    "pytorch": "torch",
    "matplotlib-base": "matplotlib",
    "py-opencv": "opencv-python",
    "pytables": "tables",
    "py-xgboost": "xgboost",
    "python-graphviz": "graphviz",
    "python-kubernetes": "kubernetes",
    "python-tzdata": "tzdata",
    "python-xxhash": "xxhash",
    "python-flatbuffers": "flatbuffers",
    "python-duckdb": "duckdb",
    "tensorflow-base": "tensorflow",
    "arrow-cpp": "",  # a C++ library: no distribution
}
#: Rounds of alignment before envbuild gives up.
MAX_ROUNDS = 8
_ARCH = {"64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
#: manylinux floors uv knows (``--python-platform ARCH-manylinux_2_N``).
_MANYLINUX = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


@dataclass(frozen=True)
class PypiTarget:
    """One target's PyPI side: what it asks and how it is solved."""

    target: Target
    cuda: str | None
    requirements: tuple[str, ...]
    gpu_requirements: tuple[str, ...]
    request: PypiRequest


def virtual(virtual_packages: Iterable[str], name: str) -> str | None:
    """The declared version of a virtual package (``__glibc=2.28=0`` -> ``2.28``)."""
    for text in virtual_packages:
        parts = text.split("=")
        if parts[0] == name:
            return parts[1]
    return None


def uv_platform(platform: str, virtual_packages: Sequence[str]) -> tuple[str, str | None]:
    """uv's ``--python-platform`` for a conda platform, and the macOS deployment target."""
    os_name, _, arch = platform.partition("-")
    if os_name == "linux" and arch in _ARCH:
        glibc = virtual(virtual_packages, "__glibc") or "2.17"
        minor = int(glibc.split(".")[1]) if "." in glibc else 0
        floors = [m for m in _MANYLINUX if m <= minor]
        if not floors:
            raise SolveError(f"{platform}: PyPI wheels need glibc 2.17 or newer (declared {glibc})")
        return f"{_ARCH[arch]}-manylinux_2_{floors[-1]}", None
    if os_name == "osx" and arch in _ARCH:
        machine = "aarch64" if arch == "arm64" else "x86_64"
        return f"{machine}-apple-darwin", virtual(virtual_packages, "__osx") or "11.0"
    if platform == "win-64":
        return "x86_64-pc-windows-msvc", None
    raise SolveError(f"{platform}: envbuild cannot resolve PyPI wheels for this platform")


def marker_environment(python: str, platform: str) -> dict[str, str]:
    """PEP 508 marker values of a target."""
    os_name, _, arch = platform.partition("-")
    system = {"linux": "Linux", "osx": "Darwin", "win": "Windows"}.get(os_name, "Linux")
    machine = {"64": "x86_64", "aarch64": "aarch64", "arm64": "arm64"}.get(arch, arch)
    return {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python,
        "implementation_name": "cpython",
        "implementation_version": python,
        "platform_python_implementation": "CPython",
        "sys_platform": {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}[system],
        "platform_system": system,
        "platform_machine": "AMD64" if system == "Windows" else machine,
        "os_name": "nt" if system == "Windows" else "posix",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


# --- what conda provides ----------------------------------------------------------------------


def _archive_distributions(package: LockedPackage, cache: Path) -> list[tuple[str, str]] | None:
    """What a local archive provides, read once per sha256 (None: not on this machine)."""
    archive = package.local_path
    if archive is None:
        return None
    kept = cache / "provides" / f"{package.sha256}.json"
    try:
        return [(str(name), str(version)) for name, version in json.loads(kept.read_text())]
    except (OSError, ValueError):
        pass
    from envbuild.files.atomic import write_atomic
    from envbuild.lock.conda import archive_distributions

    found = archive_distributions(archive)
    kept.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(kept, json.dumps(found))
    return found


def provided_distributions(
    packages: Sequence[LockedPackage], cache: Path | None = None
) -> tuple[Provided, ...]:
    """Every Python distribution a target's conda packages provide (see the module's doc)."""
    cache = cache or pypi_cache()
    provided: dict[str, Provided] = {}
    for package in packages:
        found = _archive_distributions(package, cache)
        if found is None:
            python = package.noarch == "python" or any(
                d.split()[0] == "python" for d in package.depends
            )
            name = PYPI_NAMES.get(package.name, package.name if python else "")
            found = [(name, package.version)] if name and package.name != "python" else []
        for name, version in found:
            key = normalize(name)
            provided.setdefault(key, Provided(key, version, package.name, package.version))
    return tuple(sorted(provided.values(), key=lambda p: p.name))


# --- targets --------------------------------------------------------------------------------


def gpu_requirements(templates: Sequence[str], cuda: str | None) -> tuple[str, ...]:
    """A CUDA variant's gpu-pypi-dependencies with ``{cuda_major}`` replaced."""
    if cuda is None:
        return ()
    major = cuda.split(".")[0]
    return tuple(t.replace(CUDA_MAJOR, major) for t in templates)


def family_names(templates: Sequence[str], cudas: Iterable[str | None]) -> dict[str, str]:
    """Distribution name -> the template it comes from, for names one template gives per CUDA
    major (they are one distribution to the invariant)."""
    from envbuild.spec.fields import pypi_name

    families: dict[str, str] = {}
    for template in templates:
        if CUDA_MAJOR not in template:
            continue
        key = re.split(r"[\s\[(<>=!~;]", template.strip(), maxsplit=1)[0].lower()
        for cuda in cudas:
            for text in gpu_requirements([template], cuda):
                families[pypi_name(text)] = key
    return families


def pypi_targets(
    requests: Sequence[tuple[Target, str | None, tuple[str, ...]]],
    packages: Mapping[Target, Sequence[LockedPackage]],
    requirements: Sequence[str],
    templates: Sequence[str],
    preferred: Mapping[Target, Mapping[str, str]],
) -> list[PypiTarget]:
    """One PyPI request per target: ``requests`` are (target, CUDA, virtual packages)."""
    result = []
    for target, cuda, virtual_packages in requests:
        python = next((p.version for p in packages[target] if p.name == "python"), None)
        gpu = gpu_requirements(templates, cuda)
        if python is None:
            raise SolveError(
                f"{target}: PyPI dependencies need python among the dependencies (the target "
                "has none)"
            )
        platform, macos = uv_platform(target.platform, virtual_packages)
        request = PypiRequest(
            target=str(target),
            requirements=(*requirements, *gpu),
            python=python,
            uv_platform=platform,
            macos=macos,
            provided=provided_distributions(packages[target]),
            preferred=dict(preferred.get(target, {})),
        )
        result.append(PypiTarget(target, cuda, tuple(requirements), gpu, request))
    return result


# --- resolving and aligning -------------------------------------------------------------------


def _resolve_all(
    targets: Sequence[PypiTarget], sources: Sources, cache: Path
) -> dict[Target, list[LockedWheel]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda t: resolve_target(t.request, sources, cache), targets)
        return {t.target: wheels for t, wheels in zip(targets, results, strict=True)}


def _version_key(version: str) -> tuple[int, Any]:
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)


def _distributions(target: PypiTarget, wheels: Sequence[LockedWheel]) -> dict[str, tuple[str, str]]:
    """name -> (version, "conda" or "pypi") of every Python distribution of a target."""
    found = {p.name: (p.version, "conda") for p in target.request.provided}
    found.update({w.name: (w.version, "pypi") for w in wheels})
    return found


def _groups(
    targets: Sequence[PypiTarget], name: str, divergent: frozenset[str]
) -> list[list[PypiTarget]]:
    if name not in divergent:
        return [list(targets)]
    platforms = sorted({t.target.platform for t in targets})
    return [[t for t in targets if t.target.platform == p] for p in platforms]


def alignment_pins(
    targets: Sequence[PypiTarget],
    wheels: Mapping[Target, Sequence[LockedWheel]],
    families: Mapping[str, str],
    divergent: frozenset[str],
) -> dict[Target, dict[str, str]]:
    """Pure: target -> {name: version} it must take so that every distribution has one
    version where the invariant asks for one (empty when it already does)."""
    present: dict[str, dict[Target, tuple[str, str, str]]] = {}
    for target in targets:
        for name, (version, source) in _distributions(target, wheels[target.target]).items():
            present.setdefault(families.get(name, name), {})[target.target] = (
                name,
                version,
                source,
            )
    pins: dict[Target, dict[str, str]] = {}
    for key, where in sorted(present.items()):
        for group in _groups([t for t in targets if t.target in where], key, divergent):
            found = {t.target: where[t.target] for t in group}
            if len({v for _, v, _ in found.values()}) < 2:
                continue
            if all(source == "conda" for _, _, source in found.values()):
                continue  # the conda invariant's business
            fixed = sorted({v for _, v, s in found.values() if s == "conda"}, key=_version_key)
            chosen = fixed[0] if fixed else min((v for _, v, _ in found.values()), key=_version_key)
            for at, (name, version, source) in found.items():
                if version != chosen and source == "pypi":
                    pins.setdefault(at, {})[name] = chosen
    return pins


def _pinned(target: PypiTarget, pins: Mapping[str, str]) -> PypiTarget:
    merged = dict(p.split("==", 1) for p in target.request.pins) | dict(pins)
    request = replace(target.request, pins=tuple(f"{n}=={v}" for n, v in sorted(merged.items())))
    return replace(target, request=request)


def resolve_aligned(
    targets: Sequence[PypiTarget],
    sources: Sources,
    families: Mapping[str, str],
    divergent: frozenset[str],
    cache: Path | None = None,
) -> tuple[list[PypiTarget], dict[Target, list[LockedWheel]], int]:
    """Every target resolved and aligned (step 3 of the module's doc); also the number of
    resolutions it took."""
    cache = cache or pypi_cache()
    current = list(targets)
    wheels = _resolve_all(current, sources, cache)
    resolutions = len(current)
    for _ in range(MAX_ROUNDS):
        pins = alignment_pins(current, wheels, families, divergent)
        if not pins:
            return current, wheels, resolutions
        again = []
        for index, target in enumerate(current):
            if target.target in pins:
                stuck = {
                    n: v
                    for n, v in pins[target.target].items()
                    if f"{n}=={v}" in target.request.pins
                }
                if stuck:
                    raise _no_common_version(next(iter(stuck)), current, wheels)
                current[index] = _pinned(target, pins[target.target])
                again.append(current[index])
        try:
            wheels.update(_resolve_all(again, sources, cache))
        except SolveError as exc:
            name = next(iter(pins[again[0].target]))
            raise _no_common_version(name, current, wheels, str(exc)) from None
        resolutions += len(again)
    raise ConsistencyError(f"PyPI packages did not align in {MAX_ROUNDS} rounds")


def _no_common_version(
    name: str,
    targets: Sequence[PypiTarget],
    wheels: Mapping[Target, Sequence[LockedWheel]],
    why: str | None = None,
) -> ConsistencyError:
    chosen = []
    for target in targets:
        found = _distributions(target, wheels[target.target]).get(name)
        if found:
            chosen.append(f"{target.target} chose {found[0]} ({found[1]})")
    return ConsistencyError(
        f"{name}: no PyPI version suits every target that must share it: " + "; ".join(chosen),
        details=why,
    )


# --- metadata and the invariant ----------------------------------------------------------------


def with_metadata(
    wheels: Iterable[LockedWheel], cache: Path | None = None
) -> dict[str, LockedWheel]:
    """sha256 -> the wheel with its Requires-Python and Requires-Dist (outside extras)."""
    unique = {w.sha256: w for w in wheels}

    def fill(wheel: LockedWheel) -> LockedWheel:
        metadata = wheel_metadata(wheel, cache)
        requires = [r for r in metadata.get_all("Requires-Dist") or [] if "extra" not in r]
        local = local_path(wheel.url)
        return replace(
            wheel,
            size=wheel.size if local is None else local.stat().st_size,
            requires_python=metadata.get("Requires-Python"),
            requires_dist=tuple(sorted(requires)),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return {w.sha256: w for w in pool.map(fill, unique.values())}


def needed_by(
    roots: Iterable[str], wheels: Sequence[LockedWheel], python: str, platform: str
) -> set[str]:
    """Names of the wheels ``roots`` (requirements) need, directly or through other wheels."""
    from packaging.requirements import Requirement

    environment = marker_environment(python, platform)
    by_name = {w.name: w for w in wheels}
    todo = [normalize(Requirement(r).name) for r in roots]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        for line in by_name[name].requires_dist:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(normalize(requirement.name))
    return seen


def pypi_problems(
    targets: Sequence[PypiTarget],
    wheels: Mapping[Target, Sequence[LockedWheel]],
    families: Mapping[str, str],
    divergent: frozenset[str],
) -> list[str]:
    """Pure: what breaks the invariant (step 4 of the module's doc), one line each."""
    problems = []
    for at, names in sorted(alignment_pins(targets, wheels, families, divergent).items()):
        for name, version in sorted(names.items()):
            got = next(w.version for w in wheels[at] if w.name == name)
            problems.append(f"{name}: {at} has {got}, another target {version}")
    for target in targets:
        others = [
            t
            for t in targets
            if t.target.platform == target.target.platform and t.target != target.target
        ]
        gpu = needed_by(
            target.gpu_requirements,
            wheels[target.target],
            target.request.python,
            target.target.platform,
        )
        for wheel in wheels[target.target]:
            key = families.get(wheel.name, wheel.name)
            for other in others:
                theirs = {families.get(n, n) for n in _distributions(other, wheels[other.target])}
                if key not in theirs and wheel.name not in gpu:
                    problems.append(
                        f"{wheel.name} {wheel.version} is in {target.target} but not in "
                        f"{other.target}, and no gpu-pypi-dependency needs it"
                    )
    return problems


def lock_pypi(
    spec: Spec,
    sources: Sources,
    requests: Sequence[tuple[Target, str | None, tuple[str, ...]]],
    packages: Mapping[Target, Sequence[LockedPackage]],
    preferred: Mapping[Target, Mapping[str, str]],
) -> tuple[dict[Target, tuple[LockedWheel, ...]], dict[Target, tuple[str, ...]], int]:
    """Every target's wheels and PyPI requirements, consistent (the module's steps 1-4), and
    the number of resolutions it took. ``requests``: (target, CUDA, virtual packages)."""
    targets = pypi_targets(
        requests, packages, spec.pypi_dependencies, spec.gpu_pypi_dependencies, preferred
    )
    families = family_names(spec.gpu_pypi_dependencies, {cuda for _, cuda, _ in requests})
    divergent = frozenset(normalize(n) for n in spec.allow_platform_divergence)
    targets, wheels, resolutions = resolve_aligned(targets, sources, families, divergent)
    filled = with_metadata(w for found in wheels.values() for w in found)
    complete = {
        t: sorted((filled[w.sha256] for w in found), key=lambda w: w.name)
        for t, found in wheels.items()
    }
    problems = pypi_problems(targets, complete, families, divergent)
    if problems:
        raise ConsistencyError(problems[0], details="\n".join(problems[1:]) or None)
    specs = {t.target: t.request.requirements for t in targets}
    return {t: tuple(found) for t, found in complete.items()}, specs, resolutions
