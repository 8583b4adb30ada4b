"""Small random conda universes and envbuild specs, reproducible from one integer seed.

A case is a channel (``linux-64``, ``osx-arm64`` and ``noarch`` repodata, written by hand: the
solver needs nothing else, so no archive exists) and an ``envbuild.yaml`` that locks it.
``generate(seed)`` draws one; ``shape_a``/``shape_b``/``shape_c`` are issue 18's minimal
shapes, built exactly as the issue describes them.

Generator parameters (the constants below):

- 3-8 packages ``pa``..``ph``; each has 1-4 versions from ``VERSION_POOL``.
- A package is noarch (``P_NOARCH``) or built per platform. A per-platform package lacks
  each version on osx-arm64 with ``P_MISSING_OSX`` (its oldest is always kept), and its osx
  build gets dependencies of its own with ``P_PLATFORM_DEPS``.
- A per-platform package has CUDA builds with ``P_CUDA``: on linux-64 each version gets
  ``cuda11_h1`` and/or ``cuda12_h1`` builds (depending on ``cuda-version >=M.0,<M+1`` and
  ``__cuda``; newer versions lean to CUDA 12 only) and, with ``P_CPU_BUILD`` (always when it
  has no CUDA build), a ``cpu_h0`` build. A CUDA build's dependencies differ from the CPU
  build's with ``P_BUILD_DEPS`` (what only the CPU build needs, or the CUDA build).
- ``cuda-version`` 11.8, 12.4 and 12.8 (noarch, ``constrains: __cuda >=M``, like
  conda-forge's); with ``P_CUDART`` a ``cuda-cudart`` runtime per CUDA minor, which CUDA
  builds then depend on with probability 1/2.
- Dependencies go from a package to later ones only (no cycles), each with ``P_DEPEND``:
  a bare name, ``>=v``, ``<v``, ``>=a,<b`` or ``v.*``, always matching some version.
  Each version constrains another package (``>=v`` or ``<v``) with ``P_CONSTRAINS``.
- The spec depends on 1-3 of the first half of the packages (one of them with a version
  range with ``P_SPEC_RANGE``); gpu-dependencies: one package with ``P_GPU_DEPENDENCY``
  (sometimes a dependency restated as ``NAME * cuda*``); ``allow-platform-divergence``: one
  name with ``P_DIVERGENCE``.
- Roles: the client is CPU, on linux-64 and (``P_OSX_CLIENT``) osx-arm64; scheduler and worker
  each take CUDA 11.8, 12.4, 12.8 or no GPU (``SCHEDULER_CUDA``, ``WORKER_CUDA``).

Some draws cannot be solved at all (a target fails alone); the reference says so and the
differential test expects envbuild to refuse them too.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUBDIRS = ("linux-64", "osx-arm64", "noarch")
NAMES = ("pa", "pb", "pc", "pd", "pe", "pf", "pg", "ph")
VERSION_POOL = ("1.0", "1.1", "1.2", "2.0", "2.1", "3.0")
CUDA_RUNTIMES = {"11.8": "11.8.89", "12.4": "12.4.127", "12.8": "12.8.90"}
TIMESTAMP_MS = 1_717_200_000_000

P_NOARCH = 0.3
P_MISSING_OSX = 0.25
P_PLATFORM_DEPS = 0.3
P_CUDA = 0.4
P_CPU_BUILD = 0.8
P_BUILD_DEPS = 0.3
P_CUDART = 0.3
P_DEPEND = 0.35
P_CONSTRAINS = 0.15
P_SPEC_RANGE = 0.2
P_GPU_DEPENDENCY = 0.35
P_DIVERGENCE = 0.15
P_OSX_CLIENT = 0.5
#: (choice, weight): a role's CUDA runtime, None for a CPU role
SCHEDULER_CUDA = ((None, 0.2), ("11.8", 0.27), ("12.4", 0.27), ("12.8", 0.26))
WORKER_CUDA = ((None, 0.15), ("11.8", 0.28), ("12.4", 0.28), ("12.8", 0.29))


@dataclass(frozen=True)
class Build:
    """One package build in the channel (a repodata record)."""

    name: str
    version: str
    build: str = "h0"
    subdir: str = "noarch"
    build_number: int = 0
    depends: tuple[str, ...] = ()
    constrains: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"

    def repodata_entry(self) -> dict[str, object]:
        digest = hashlib.sha256(f"{self.subdir}/{self.file_name}".encode()).digest()
        entry: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": self.build_number,
            "subdir": self.subdir,
            "depends": list(self.depends),
            "constrains": list(self.constrains),
            "license": "BSD-3-Clause",
            "timestamp": TIMESTAMP_MS,
            "md5": digest[:16].hex(),
            "sha256": digest.hex(),
            "size": 1,
        }
        if self.subdir == "noarch":
            entry["noarch"] = "generic"
        return entry

    def __str__(self) -> str:
        text = f"{self.subdir}/{self.name}={self.version}={self.build}"
        if self.depends:
            text += f" depends {list(self.depends)}"
        if self.constrains:
            text += f" constrains {list(self.constrains)}"
        return text


@dataclass(frozen=True)
class Role:
    """A role: its platforms (None: the spec's top-level ones) and CUDA runtime."""

    cuda: str | None = None
    platforms: tuple[str, ...] | None = None

    def yaml(self) -> str:
        parts = []
        if self.platforms:
            parts.append(f"platforms: [{', '.join(self.platforms)}]")
        parts.append(f'gpu: {{cuda: "{self.cuda}"}}' if self.cuda else "gpu: false")
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class Case:
    """A channel and a spec: everything ``envbuild lock`` and the reference are given."""

    label: str
    builds: tuple[Build, ...]
    dependencies: tuple[str, ...]
    client: Role
    scheduler: Role
    worker: Role
    gpu_dependencies: tuple[str, ...] = ()
    allow_platform_divergence: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ("linux-64",)
    seed: int | None = None
    system: dict[str, str] = field(
        default_factory=lambda: {"glibc": "2.28", "linux": "5.10", "macos": "11.0"}
    )

    @property
    def roles(self) -> dict[str, Role]:
        return {"client": self.client, "scheduler": self.scheduler, "worker": self.worker}

    def role_platforms(self, role: str) -> tuple[str, ...]:
        return self.roles[role].platforms or self.platforms

    def spec_text(self) -> str:
        system = ", ".join(f'{k}: "{v}"' for k, v in sorted(self.system.items()))
        lines = [
            f"name: exact-{self.seed if self.seed is not None else 'shape'}",
            "channels: [./channel]",
            f"platforms: {json.dumps(list(self.platforms))}",
            f"dependencies: {json.dumps(list(self.dependencies))}",
            f"gpu-dependencies: {json.dumps(list(self.gpu_dependencies))}",
            f"allow-platform-divergence: {json.dumps(list(self.allow_platform_divergence))}",
            f"system-requirements: {{{system}}}",
            "roles:",
            *(f"  {name}: {role.yaml()}" for name, role in self.roles.items()),
        ]
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        """The whole case, readable: for a failure report."""
        return "\n".join([self.spec_text(), *(f"  {b}" for b in self.builds)])


def write_case(case: Case, folder: Path) -> Path:
    """Write the channel under ``folder/channel`` and the spec; return the spec's path."""
    channel = folder / "channel"
    sections: dict[str, dict[str, dict[str, object]]] = {s: {} for s in SUBDIRS}
    for build in case.builds:
        entries = sections[build.subdir]
        if build.file_name in entries:
            raise ValueError(f"duplicate build {build}")
        entries[build.file_name] = build.repodata_entry()
    for subdir, entries in sections.items():
        (channel / subdir).mkdir(parents=True, exist_ok=True)
        document = {
            "info": {"subdir": subdir},
            "packages": dict(sorted(entries.items())),
            "packages.conda": {},
            "repodata_version": 1,
        }
        (channel / subdir / "repodata.json").write_text(json.dumps(document, indent=1))
    spec = folder / "envbuild.yaml"
    spec.write_text(case.spec_text())
    return spec


def case_seed(master: int, index: int) -> int:
    """The seed of case ``index`` of a run seeded ``master`` (stable, independent of N)."""
    digest = hashlib.sha256(f"{master}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def cuda_version_builds() -> list[Build]:
    """conda-forge's ``cuda-version`` metapackage for every runtime the generator uses."""
    builds = []
    for cuda in CUDA_RUNTIMES:
        major = cuda.split(".")[0]
        builds.append(
            Build(
                "cuda-version",
                cuda,
                "h0_3",
                build_number=3,
                constrains=(f"__cuda >={major}", f"cudatoolkit {cuda}|{cuda}.*"),
            )
        )
    return builds


def cudart_builds() -> list[Build]:
    """A CUDA runtime library built for one CUDA minor (like ``cuda-cudart``)."""
    builds = []
    for cuda, version in CUDA_RUNTIMES.items():
        major, minor = cuda.split(".")
        window = f"cuda-version >={cuda},<{major}.{int(minor) + 1}.0a0"
        builds.append(Build("cuda-cudart", version, "h0", "linux-64", depends=(window,)))
    return builds


def _sorted_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


def _choose(rng: random.Random, weighted: Sequence[tuple[str | None, float]]) -> str | None:
    return rng.choices([c for c, _ in weighted], weights=[w for _, w in weighted])[0]


def _dep_spec(rng: random.Random, name: str, versions: Sequence[str]) -> str:
    """A dependency on ``name`` that matches at least one of its ``versions``."""
    roll = rng.random()
    if roll < 0.45 or (len(versions) == 1 and roll < 0.75):
        return name
    if roll < 0.65:
        return f"{name} >={rng.choice(versions)}"
    if roll < 0.8 and len(versions) > 1:
        return f"{name} <{rng.choice(versions[1:])}"
    if roll < 0.9 and len(versions) > 1:
        low, high = sorted(rng.sample(range(len(versions)), 2))
        return f"{name} >={versions[low]},<{versions[high]}"
    return f"{name} {rng.choice(versions)}.*"


def _constraint(rng: random.Random, name: str, versions: Sequence[str]) -> str:
    if len(versions) > 1 and rng.random() < 0.5:
        return f"{name} <{rng.choice(versions[1:])}"
    return f"{name} >={rng.choice(versions)}"


def generate(seed: int) -> Case:
    """One random case; the same seed gives the same case."""
    rng = random.Random(seed)  # noqa: S311 (reproducible draws, not secrets)
    names = NAMES[: rng.randint(3, 8)]
    versions = {n: _sorted_versions(rng.sample(VERSION_POOL, rng.randint(1, 4))) for n in names}
    noarch = {n: rng.random() < P_NOARCH for n in names}
    cuda_capable = {n for n in names if not noarch[n] and rng.random() < P_CUDA}
    with_cudart = rng.random() < P_CUDART

    def depends(index: int) -> tuple[str, ...]:
        later = names[index + 1 :]
        return tuple(_dep_spec(rng, n, versions[n]) for n in later if rng.random() < P_DEPEND)

    def constrains(name: str) -> tuple[str, ...]:
        if rng.random() >= P_CONSTRAINS:
            return ()
        other = rng.choice([n for n in names if n != name])
        return (_constraint(rng, other, versions[other]),)

    builds: list[Build] = [*cuda_version_builds()]
    if with_cudart:
        builds += cudart_builds()
    for index, name in enumerate(names):
        for position, version in enumerate(versions[name]):
            base = depends(index)
            cons = constrains(name)
            if noarch[name]:
                builds.append(Build(name, version, "h0", "noarch", 0, base, cons))
                continue
            if name in cuda_capable:
                newest = position == len(versions[name]) - 1
                majors = rng.choice(
                    [("12",), ("12",), ("11", "12")] if newest else [(), ("11",), ("11", "12")]
                )
                if not majors or rng.random() < P_CPU_BUILD:
                    cpu_deps = depends(index) if rng.random() < P_BUILD_DEPS else base
                    builds.append(Build(name, version, "cpu_h0", "linux-64", 0, cpu_deps, cons))
                for major in majors:
                    gpu_deps = depends(index) if rng.random() < P_BUILD_DEPS else base
                    runtime = ("cuda-cudart",) if with_cudart and rng.random() < 0.5 else ()
                    window = f"cuda-version >={major}.0,<{int(major) + 1}"
                    builds.append(
                        Build(
                            name,
                            version,
                            f"cuda{major}_h1",
                            "linux-64",
                            1,
                            (*gpu_deps, window, "__cuda", *runtime),
                            cons,
                        )
                    )
            else:
                builds.append(Build(name, version, "h0", "linux-64", 0, base, cons))
            if position == 0 or rng.random() >= P_MISSING_OSX:
                osx_deps = depends(index) if rng.random() < P_PLATFORM_DEPS else base
                builds.append(Build(name, version, "h0", "osx-arm64", 0, osx_deps, cons))

    top = names[: max(1, (len(names) + 1) // 2)]
    dependencies = list(rng.sample(top, rng.randint(1, min(3, len(top)))))
    if rng.random() < P_SPEC_RANGE:
        at = rng.randrange(len(dependencies))
        target = dependencies[at]
        dependencies[at] = _constraint(rng, target, versions[target])
    gpu_dependencies: tuple[str, ...] = ()
    if rng.random() < P_GPU_DEPENDENCY:
        required = {d.split()[0] for d in dependencies}
        restated = sorted(cuda_capable & required)
        if restated and rng.random() < 0.3:
            gpu_dependencies = (f"{rng.choice(restated)} * cuda*",)
        else:
            others = [n for n in names if n not in required]
            preferred = [n for n in others if n in cuda_capable] or others
            if preferred:
                gpu_dependencies = (rng.choice(preferred),)
    divergence = (rng.choice(names),) if rng.random() < P_DIVERGENCE else ()
    client_platforms = ("linux-64", "osx-arm64") if rng.random() < P_OSX_CLIENT else None
    return Case(
        label=f"seed {seed}",
        seed=seed,
        builds=tuple(builds),
        dependencies=tuple(dependencies),
        gpu_dependencies=gpu_dependencies,
        allow_platform_divergence=divergence,
        client=Role(None, client_platforms),
        scheduler=Role(_choose(rng, SCHEDULER_CUDA)),
        worker=Role(_choose(rng, WORKER_CUDA)),
    )


# --- issue 18's minimal shapes, built as the issue describes them ---


def _noarch(name: str, version: str, *depends: str, constrains: Sequence[str] = ()) -> Build:
    return Build(name, version, "h0", "noarch", 0, tuple(depends), tuple(constrains))


def shape_a() -> Case:
    """Aligning one package would have settled the other: pc 1.1 everywhere, pf 1.1 on osx
    only (nothing on linux-64 needs pf once pc is 1.1)."""
    builds = (
        *cuda_version_builds(),
        Build("pc", "2.1", "h0", "linux-64", depends=("pf >=1.0,<1.1",)),
        Build("pc", "1.1", "h0", "linux-64"),
        Build("pc", "1.1", "h0", "osx-arm64", depends=("pd",)),
        Build("pd", "1.0", "h0", "osx-arm64", depends=("pf >=1.1,<3.0",)),
        _noarch("pf", "1.0"),
        _noarch("pf", "1.1"),
    )
    return Case(
        label="shape A",
        builds=builds,
        dependencies=("pc",),
        client=Role(None, ("linux-64", "osx-arm64")),
        scheduler=Role("11.8"),
        worker=Role("11.8"),
    )


def shape_b() -> Case:
    """A target "cannot take" the version it chose itself: pf 1.2 and pg 3.0 everywhere."""
    builds = (
        *cuda_version_builds(),
        _noarch("pa", "2.0", constrains=("pg >=2.0",)),
        _noarch("pb", "1.0"),
        _noarch("pd", "1.0"),
        _noarch("pf", "3.0", "pg >=1.0,<2.0"),
        _noarch("pf", "1.2", "pg"),
        _noarch("pg", "1.0"),
        _noarch("pg", "3.0"),
    )
    return Case(
        label="shape B",
        builds=builds,
        dependencies=("pd", "pf", "pb"),
        gpu_dependencies=("pa",),
        client=Role(None, ("linux-64",)),
        scheduler=Role("12.8"),
        worker=Role("11.8"),
    )


def shape_c() -> Case:
    """Older than needed: pb 1.2 and pe 3.0 everywhere (not pe 1.2)."""
    builds = (
        *cuda_version_builds(),
        Build("pb", "1.2", "cpu_h0", "linux-64", depends=("pd",)),
        Build("pb", "2.0", "cuda12_h1", "linux-64", 1, depends=("pe 1.2.*", "__cuda")),
        _noarch("pd", "3.0", "pe >=1.2"),
        _noarch("pe", "1.2"),
        _noarch("pe", "3.0"),
    )
    return Case(
        label="shape C",
        builds=builds,
        dependencies=("pb",),
        client=Role(None, ("linux-64",)),
        scheduler=Role("12.8"),
        worker=Role("12.4"),
    )


SHAPES = {"A": shape_a, "B": shape_b, "C": shape_c}
