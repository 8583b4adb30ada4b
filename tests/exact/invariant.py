"""An independent checker of the README's consistency invariant ("What one environment
means"), on an ``envbuild.lock`` read as plain JSON or on any set of solved targets.

The rules, as this module reads the README, for every pair of targets (variant x platform):

1. Same platform, different variants. A name present in both has equal versions (conda's
   comparison, through ``rattler.Version``: ``1.0 == 1.0.0``) unless it is part of the CUDA
   runtime in either: ``cuda-version``, ``cudatoolkit``, or a record built for one CUDA minor
   (it depends on ``cuda-version`` with a spec that admits exactly one MAJOR.MINOR). It has
   equal builds unless it is CUDA-dependent in either target: it is ``cuda-version`` or
   ``cudatoolkit``, or depends on one of those or on ``__cuda``, directly or through other
   records of that target.
2. Same platform, a name present in one variant only: it must be explained by the GPU stack
   of the target that has it: reachable, through that target's dependencies, from a
   gpu-dependency, from a CUDA-dependent record, or from a record whose name is
   CUDA-dependent in some target of the lock ("the CPU build of a package with CUDA builds").
3. Different platforms. A name present in both has equal versions unless it is listed under
   ``allow-platform-divergence`` or is part of the CUDA runtime in either.

``validity`` (envbuild's own locks only; the reference's candidates are raw solver output)
also checks that each target is an installable environment by itself: one record per name,
``rattler.PackageRecord.validate`` on depends and constrains, dependencies on virtual
packages met by the target's declared ones, every spec of the variant matched, and no
``cuda-version``/``cudatoolkit`` in a CPU variant.

Nothing here comes from envbuild: the lock is read as the JSON that ``envbuild/lockfile.py``
documents, the spec as YAML.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import yaml
from rattler import BuildString, MatchSpec, PackageRecord, Version

#: (variant, platform)
TargetKey = tuple[str, str]
RUNTIME_NAMES = frozenset({"cuda-version", "cudatoolkit"})
CUDA_MARKERS = frozenset({"cuda-version", "cudatoolkit", "__cuda"})
CPU_FORBIDDEN = ("cuda-version", "cudatoolkit")


@dataclass(frozen=True)
class Rec:
    """One package record of a target."""

    name: str
    version: str
    build: str
    subdir: str
    build_number: int = 0
    depends: tuple[str, ...] = ()
    constrains: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}={self.version}={self.build}"


@dataclass
class LockView:
    """What the checker needs of a lock: every target's records and the spec's lists."""

    targets: dict[TargetKey, dict[str, Rec]]
    #: variant -> CUDA runtime (None: CPU)
    cuda: dict[str, str | None]
    gpu_dependencies: frozenset[str]
    allow_divergence: frozenset[str]
    #: variant -> the specs every target of it is solved for (validity only)
    specs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: target -> declared virtual packages, "name=version=build" (validity only)
    virtual_packages: dict[TargetKey, tuple[str, ...]] = field(default_factory=dict)
    #: problems met while reading (two records of one name in a target)
    read_problems: list[str] = field(default_factory=list)


def key_text(key: TargetKey) -> str:
    return f"{key[0]}/{key[1]}"


@lru_cache(maxsize=4096)
def version(text: str) -> Version:
    return Version(text)


@lru_cache(maxsize=4096)
def spec_name(spec: str) -> str:
    return MatchSpec(spec).name.normalized


@lru_cache(maxsize=4096)
def _match_spec(spec: str) -> MatchSpec:
    return MatchSpec(spec)


def _record(rec: Rec) -> PackageRecord:
    return PackageRecord(
        rec.name,
        rec.version,
        BuildString(rec.build),
        rec.build_number,
        rec.subdir,
        depends=list(rec.depends),
        constrains=list(rec.constrains),
    )


@lru_cache(maxsize=1024)
def _one_cuda_minor(spec: str) -> bool:
    """Whether a spec on ``cuda-version`` admits exactly one MAJOR.MINOR."""
    match = _match_spec(spec)
    minors = {
        (major, minor)
        for major in range(9, 14)
        for minor in range(10)
        for probe in (f"{major}.{minor}", f"{major}.{minor}.99")
        if match.matches(PackageRecord("cuda-version", probe, BuildString("0"), 0, "noarch"))
    }
    return len(minors) == 1


def is_runtime(rec: Rec) -> bool:
    """Part of the CUDA runtime: its version follows the variant's CUDA."""
    if rec.name in RUNTIME_NAMES:
        return True
    return any(spec_name(d) == "cuda-version" and _one_cuda_minor(d) for d in rec.depends)


def cuda_dependent(records: Mapping[str, Rec]) -> set[str]:
    """Names of a target that are, or depend (transitively) on, the CUDA runtime/__cuda."""
    dependent = {n for n in records if n in RUNTIME_NAMES}
    changed = True
    while changed:
        changed = False
        for name, rec in records.items():
            if name in dependent:
                continue
            deps = {spec_name(d) for d in rec.depends}
            if deps & CUDA_MARKERS or deps & dependent:
                dependent.add(name)
                changed = True
    return dependent


def _closure(records: Mapping[str, Rec], roots: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = [r for r in roots if r in records]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack += [d for d in (spec_name(s) for s in records[name].depends) if d in records]
    return seen


def violations(view: LockView, *, validity: bool = False) -> list[str]:
    """Every broken rule, one line each; empty when the lock is consistent."""
    problems = list(view.read_problems)
    targets = view.targets
    dependent = {key: cuda_dependent(records) for key, records in targets.items()}
    with_cuda_builds = set().union(*dependent.values()) if dependent else set()
    explained: dict[TargetKey, set[str]] = {}
    for key, records in targets.items():
        roots = {
            n
            for n in records
            if n in view.gpu_dependencies or n in dependent[key] or n in with_cuda_builds
        }
        explained[key] = _closure(records, roots)

    for first, second in combinations(sorted(targets), 2):
        a, b = targets[first], targets[second]
        where = f"{key_text(first)} and {key_text(second)}"
        same_platform = first[1] == second[1]
        for name in sorted(a.keys() & b.keys()):
            ra, rb = a[name], b[name]
            if is_runtime(ra) or is_runtime(rb):
                continue
            comparable = same_platform or name not in view.allow_divergence
            if comparable and version(ra.version) != version(rb.version):
                problems.append(f"version: {name} {ra.version} / {rb.version} in {where}")
                continue
            if (
                same_platform
                and ra.build != rb.build
                and name not in dependent[first]
                and name not in dependent[second]
            ):
                problems.append(f"build: {name} {ra.build} / {rb.build} in {where}")
        if same_platform:
            for key, mine, other in ((first, a, b), (second, b, a)):
                for name in sorted(mine.keys() - other.keys()):
                    if name not in explained[key]:
                        problems.append(
                            f"presence: {name} only in {key_text(key)}, not in "
                            f"{key_text(second if key == first else first)}, and no GPU "
                            "package pulls it in"
                        )
    if validity:
        problems += _validity(view)
    return problems


def _validity(view: LockView) -> list[str]:
    problems = []
    for key, records in sorted(view.targets.items()):
        where = key_text(key)
        virtual = []
        for text in view.virtual_packages.get(key, ()):
            name, ver, build = text.split("=")
            virtual.append(PackageRecord(name, ver, BuildString(build), 0, "noarch"))
        real = [_record(r) for r in records.values()]
        try:
            PackageRecord.validate(real + virtual)
        except Exception as exc:  # rattler's ValidatePackageRecordsError
            problems.append(f"invalid: {where}: {exc}")
        for rec in records.values():
            for dep in rec.depends:
                if dep.startswith("__") and not any(_match_spec(dep).matches(v) for v in virtual):
                    problems.append(f"invalid: {where}: {rec} needs {dep}, not declared")
        for spec in view.specs.get(key[0], ()):
            if not any(_match_spec(spec).matches(r) for r in real):
                problems.append(f"invalid: {where}: nothing matches the spec '{spec}'")
        if view.cuda.get(key[0]) is None:
            for name in CPU_FORBIDDEN:
                if name in records:
                    problems.append(f"invalid: {where}: a CPU variant carries {name}")
    return problems


def read_lock(lock_path: Path, spec_path: Path) -> LockView:
    """A lock file (the JSON of envbuild/lockfile.py) and the spec's divergence list."""
    doc = json.loads(lock_path.read_text())
    spec = yaml.safe_load(spec_path.read_text())
    targets: dict[TargetKey, dict[str, Rec]] = {}
    virtual: dict[TargetKey, tuple[str, ...]] = {}
    cuda: dict[str, str | None] = {}
    specs: dict[str, tuple[str, ...]] = {}
    for variant, info in doc["variants"].items():
        cuda[variant] = info["cuda"]
        specs[variant] = tuple(info["specs"])
        for platform, target in info["targets"].items():
            targets[(variant, platform)] = {}
            virtual[(variant, platform)] = tuple(target["virtual-packages"])
    problems = []
    for entry in doc["packages"]:
        rec = Rec(
            name=entry["name"],
            version=entry["version"],
            build=entry["build"],
            subdir=entry["subdir"],
            build_number=entry["build_number"],
            depends=tuple(entry["depends"]),
            constrains=tuple(entry["constrains"]),
        )
        for text in entry["targets"]:
            variant, _, platform = text.partition("/")
            records = targets[(variant, platform)]
            if rec.name in records:
                problems.append(f"invalid: {text}: two records of {rec.name}")
            records[rec.name] = rec
    return LockView(
        targets=targets,
        cuda=cuda,
        gpu_dependencies=frozenset(doc["gpu-dependencies"]),
        allow_divergence=frozenset(spec.get("allow-platform-divergence") or ()),
        specs=specs,
        virtual_packages=virtual,
        read_problems=problems,
    )
