"""A brute-force reference for ``envbuild lock``, on raw ``rattler.solve`` only.

Targets. Each role's CUDA runtime names a variant (``cpu``, ``cuda-X.Y``); roles with the same
runtime share it, and a variant is locked for the union of its roles' platforms: one target
per (variant, platform). A target is solved on ``[platform, noarch]`` for the spec's
dependencies; a CUDA variant adds the gpu-dependencies and ``cuda-version X.Y.*``; a CPU
variant carries the constraints ``cuda-version <0a0`` and ``cudatoolkit <0a0``. Virtual
packages are declared, never detected: ``__archspec 1 <arch>``, ``__unix``, ``__linux`` and
``__glibc`` (linux) or ``__osx`` (macOS) from the spec's system-requirements, and
``__cuda X.Y`` for a CUDA variant. (Read from envbuild's ``locking.plan_for``,
``variants.py``, ``platforms.py`` and the README, as a description of the input.)

Search. First every target alone. Then, to a fixpoint: the *pinnable names* are the names
found in any solution so far that have two or more versions and are not part of the CUDA
runtime (``cuda-version``, ``cudatoolkit``, packages built for one CUDA minor); the search
enumerates the cartesian product of their versions, each assignment pinning ``NAME ==V`` as a
constraint (a constraint binds only where the name is installed) in every target; a name
under ``allow-platform-divergence`` is pinned per platform instead. Every target is solved
with each assignment (identical requests are solved once), and the targets' solutions form a
candidate lock, kept when ``invariant.violations`` finds nothing. When the solutions bring
up names not pinned yet, the product is enumerated again with them. A product larger than
``max_combinations`` ends the search after one last, smaller product: the names the targets
disagree on when solved alone first, then as many others as fit. The result is then
*partial* (its candidates still count; the Pareto set may miss some), and with no candidate
at all the case is *undecided*. Pins are applied to a target only for names its dependency
closure can reach (a constraint on a name it cannot install changes nothing).

What the reference claims. Every candidate is a lock that raw rattler builds and that passes
the independent checker, so (a) refusing a case with a candidate is a false refusal, and (b)
a lock dominated by a candidate is older than needed. When the search is complete and found
no candidate, no lock reachable by version pins exists, and a refusal is right.

Domination. Locks L and L' have the same targets. L' *dominates* L when, for every
(target, package name) present in both, L''s version is at least L's (conda's order, through
``rattler.Version``) and, where L's record is CUDA-dependent in that target (a CUDA build, see
``invariant.cuda_dependent``), so is L''s: a newer dependency bought by swapping a CUDA
variant's CUDA build for its CPU build is a trade, not an improvement. And for at least one
such pair L''s version is strictly newer. Names present in only one of the two locks are not
compared. The reference's *Pareto set* is the candidates
that no other candidate dominates; since domination is transitive, a lock dominated by any
candidate is dominated by one in the Pareto set.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, product
from pathlib import Path

from rattler import BuildString, Gateway, GenericVirtualPackage, PackageName, Version, solve
from rattler.exceptions import SolverError

from tests.exact.invariant import (
    LockView,
    Rec,
    TargetKey,
    cuda_dependent,
    is_runtime,
    spec_name,
    violations,
)
from tests.exact.universe import Build, Case

#: Assignments of pins enumerated at most, per case.
MAX_COMBINATIONS = 2048
CPU_CONSTRAINTS = ("cuda-version <0a0", "cudatoolkit <0a0")
ARCH = {"linux-64": ("linux", "x86_64"), "osx-arm64": ("osx", "arm64")}

Lock = dict[TargetKey, dict[str, Rec]]
#: (name, version) pins of one solve, sorted
Pins = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TargetRequest:
    """One target and what it is solved with."""

    key: TargetKey
    specs: tuple[str, ...]
    constraints: tuple[str, ...]
    virtual_packages: tuple[tuple[str, str, str], ...]

    @property
    def platform(self) -> str:
        return self.key[1]


def _cuda_key(cuda: str | None) -> tuple[int, ...]:
    return (-1,) if cuda is None else tuple(int(p) for p in cuda.split("."))


def targets_of(case: Case) -> list[TargetRequest]:
    """Every target of the case's spec, cpu first, then by CUDA version, then platform."""
    groups: dict[str | None, list[str]] = {}
    for name, role in case.roles.items():
        platforms = groups.setdefault(role.cuda, [])
        platforms += [p for p in case.role_platforms(name) if p not in platforms]
    requests = []
    for cuda in sorted(groups, key=_cuda_key):
        variant = "cpu" if cuda is None else f"cuda-{cuda}"
        specs = list(case.dependencies)
        if cuda is not None:
            specs += [*case.gpu_dependencies, f"cuda-version {cuda}.*"]
        for platform in sorted(groups[cuda]):
            os_name, arch = ARCH[platform]
            declared = [("__archspec", "1", arch), ("__unix", "0", "0")]
            if os_name == "linux":
                declared += [
                    ("__linux", case.system["linux"], "0"),
                    ("__glibc", case.system["glibc"], "0"),
                ]
            else:
                declared.append(("__osx", case.system["macos"], "0"))
            if cuda is not None:
                declared.append(("__cuda", cuda, "0"))
            requests.append(
                TargetRequest(
                    key=(variant, platform),
                    specs=tuple(specs),
                    constraints=CPU_CONSTRAINTS if cuda is None else (),
                    virtual_packages=tuple(sorted(declared)),
                )
            )
    return requests


def view_of(case: Case, lock: Lock) -> LockView:
    """A candidate lock as the checker reads it."""
    cuda = {key[0]: (None if key[0] == "cpu" else key[0].removeprefix("cuda-")) for key in lock}
    return LockView(
        targets=lock,
        cuda=cuda,
        gpu_dependencies=frozenset(spec_name(s) for s in case.gpu_dependencies),
        allow_divergence=frozenset(case.allow_platform_divergence),
    )


def dominates(better: Lock, worse: Lock) -> bool:
    """Whether ``better`` dominates ``worse`` (the module docstring's definition)."""
    strictly = False
    for key, records in worse.items():
        other = better.get(key, {})
        for name in records.keys() & other.keys():
            new, old = Version(other[name].version), Version(records[name].version)
            if new < old:
                return False
            strictly = strictly or new > old
    if not strictly:
        return False
    for key, records in worse.items():
        other = better.get(key, {})
        lost = (cuda_dependent(records) & other.keys()) - cuda_dependent(other)
        if lost:
            return False
    return True


def newer_entries(better: Lock, worse: Lock) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (worse's version, better's version, targets) where ``better`` is newer."""
    found: dict[str, tuple[str, str, list[str]]] = {}
    for key, records in sorted(worse.items()):
        other = better.get(key, {})
        for name in sorted(records.keys() & other.keys()):
            if Version(other[name].version) > Version(records[name].version):
                entry = found.setdefault(name, (records[name].version, other[name].version, []))
                entry[2].append(f"{key[0]}/{key[1]}")
    return found


def pareto(locks: Sequence[Lock]) -> list[Lock]:
    """The locks that no other lock of ``locks`` dominates."""
    return [a for a in locks if not any(dominates(b, a) for b in locks if b is not a)]


@dataclass
class Reference:
    """What the reference found for one case."""

    #: "unsolvable": a target fails alone; "complete": the pin space was enumerated to its
    #: fixpoint; "partial": it was too large (see MAX_COMBINATIONS)
    status: str
    candidates: list[Lock] = field(default_factory=list)
    pareto: list[Lock] = field(default_factory=list)
    solves: int = 0
    combinations: int = 0
    pinned: tuple[str, ...] = ()
    #: the targets that cannot be solved alone, with rattler's first line
    unsolvable: list[str] = field(default_factory=list)
    #: every target solved alone, no pins (consistent or not); empty when unsolvable
    alone: Lock = field(default_factory=dict)

    @property
    def undecided(self) -> bool:
        return self.status == "partial" and not self.candidates


def _records(solution: Iterable[object]) -> dict[str, Rec]:
    records = {}
    for r in solution:
        rec = Rec(
            name=r.name.normalized,  # type: ignore[attr-defined]
            version=str(r.version),  # type: ignore[attr-defined]
            build=str(r.build),  # type: ignore[attr-defined]
            subdir=str(r.subdir),  # type: ignore[attr-defined]
            build_number=int(r.build_number),  # type: ignore[attr-defined]
            depends=tuple(r.depends),  # type: ignore[attr-defined]
            constrains=tuple(r.constrains),  # type: ignore[attr-defined]
        )
        records[rec.name] = rec
    return records


class _Universe:
    """What the reference reads from the case's builds: versions and reachability."""

    def __init__(self, builds: Sequence[Build]) -> None:
        self.builds = builds
        self.runtime = {
            b.name
            for b in builds
            if is_runtime(Rec(b.name, b.version, b.build, b.subdir, depends=b.depends))
        }

    def versions(self, name: str, platforms: Iterable[str]) -> list[str]:
        """Distinct versions of ``name`` (conda equality) on these platforms, newest first."""
        subdirs = {*platforms, "noarch"}
        distinct: dict[Version, str] = {}
        for b in self.builds:
            if b.name == name and b.subdir in subdirs:
                distinct.setdefault(Version(b.version), b.version)
        return [distinct[v] for v in sorted(distinct, reverse=True)]

    def reachable(self, request: TargetRequest) -> frozenset[str]:
        """Names any solution of the target could contain (over every build it can see)."""
        subdirs = {request.platform, "noarch"}
        depends: dict[str, set[str]] = {}
        for b in self.builds:
            if b.subdir in subdirs:
                depends.setdefault(b.name, set()).update(spec_name(d) for d in b.depends)
        seen: set[str] = set()
        stack = [spec_name(s) for s in request.specs]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack += depends.get(name, ())
        return frozenset(seen)


class _Solver:
    """Raw rattler solves of one case's targets, each distinct request solved once."""

    BATCH = 128

    def __init__(self, channel: str, requests: Sequence[TargetRequest]) -> None:
        self.channel = channel
        self.gateway = Gateway()
        self.cache: dict[tuple[TargetKey, Pins], dict[str, Rec] | str] = {}
        self.virtual = {
            r.key: [
                GenericVirtualPackage(PackageName(n), Version(v), BuildString(b))
                for n, v, b in r.virtual_packages
            ]
            for r in requests
        }

    @property
    def solves(self) -> int:
        return len(self.cache)

    def cached(self, request: TargetRequest, pins: Pins) -> dict[str, Rec] | str:
        return self.cache[(request.key, pins)]

    async def solve_all(self, work: Iterable[tuple[TargetRequest, Pins]]) -> None:
        """Solve every distinct request of ``work`` not solved yet, many at a time (each
        solve is short: running them concurrently hides the hand-over to rattler's threads)."""
        todo = {(r.key, p): (r, p) for r, p in work if (r.key, p) not in self.cache}
        pending = list(todo.values())
        for start in range(0, len(pending), self.BATCH):
            await asyncio.gather(
                *(self.solve(r, p) for r, p in pending[start : start + self.BATCH])
            )

    async def solve(self, request: TargetRequest, pins: Pins) -> dict[str, Rec] | str:
        """The target's records under ``pins``, or rattler's reason (a string) it has none."""
        cache_key = (request.key, pins)
        if cache_key in self.cache:
            return self.cache[cache_key]
        constraints = [*request.constraints, *(f"{n} =={v}" for n, v in pins)]
        try:
            solution = await solve(
                [self.channel],
                list(request.specs),
                gateway=self.gateway,
                platforms=[request.platform, "noarch"],  # type: ignore[list-item]
                virtual_packages=self.virtual[request.key],
                constraints=constraints,
            )
            result: dict[str, Rec] | str = _records(solution)
        except SolverError as exc:
            result = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsolvable"
        self.cache[cache_key] = result
        return result


def _lock_id(lock: Lock) -> tuple[object, ...]:
    return tuple(
        (key, tuple(sorted((r.name, r.version, r.build) for r in recs.values())))
        for key, recs in sorted(lock.items())
    )


async def _reference(case: Case, channel: str, max_combinations: int) -> Reference:
    requests = targets_of(case)
    universe = _Universe(case.builds)
    solver = _Solver(channel, requests)
    reachable = {r.key: universe.reachable(r) for r in requests}
    divergent = set(case.allow_platform_divergence)

    alone = await asyncio.gather(*(solver.solve(r, ()) for r in requests))
    failed = [
        f"{r.key[0]}/{r.key[1]}: {why}"
        for r, why in zip(requests, alone, strict=True)
        if isinstance(why, str)
    ]
    if failed:
        return Reference("unsolvable", solves=solver.solves, unsolvable=failed)

    candidates: dict[tuple[object, ...], Lock] = {}
    seen_names: set[str] = set()

    judged: set[tuple[int, ...]] = set()

    def _disagreeing(lock: Mapping[TargetKey, object]) -> set[str]:
        """Names whose versions differ between targets that must share them."""
        found: set[str] = set()
        for first, second in combinations(sorted(lock), 2):
            a, b = lock[first], lock[second]
            if not isinstance(a, dict) or not isinstance(b, dict):
                continue
            for name in a.keys() & b.keys():
                crossing = first[1] != second[1] and name in divergent
                if name in universe.runtime or crossing:
                    continue
                if Version(a[name].version) != Version(b[name].version):
                    found.add(name)
        return found

    def consider(solutions: Sequence[dict[str, Rec] | str]) -> None:
        if any(isinstance(s, str) for s in solutions):
            return
        identity = tuple(id(s) for s in solutions)  # solutions live in the solver's cache
        if identity in judged:
            return
        judged.add(identity)
        lock: Lock = {r.key: s for r, s in zip(requests, solutions, strict=True)}  # type: ignore[misc]
        for records in lock.values():
            seen_names.update(records)
        if not violations(view_of(case, lock)):
            candidates.setdefault(_lock_id(lock), lock)

    consider(alone)
    pinned: set[str] = set()
    assignments_tried = 0
    status = "complete"
    while True:
        slots: list[tuple[str, str | None, list[str]]] = []  # (name, platform or None, versions)
        names = sorted(n for n in seen_names | pinned if n not in universe.runtime)
        for name in names:
            if name in divergent:
                for platform in sorted({r.platform for r in requests}):
                    options = universe.versions(name, [platform])
                    if len(options) > 1:
                        slots.append((name, platform, options))
            else:
                options = universe.versions(name, {r.platform for r in requests})
                if len(options) > 1:
                    slots.append((name, None, options))
        slot_names = {s[0] for s in slots}
        if slot_names <= pinned:
            break
        total = math.prod(len(s[2]) for s in slots)
        if total > max_combinations:
            # Too many: pin the names the targets disagree on first, then as many others as
            # the budget allows, once; what this finds still counts, the frontier may not.
            status = "partial"
            first = _disagreeing(dict(zip((r.key for r in requests), alone, strict=True)))
            chosen, size = [], 1
            for slot in sorted(slots, key=lambda s: (s[0] not in first, s[0], s[1] or "")):
                if size * len(slot[2]) <= max_combinations:
                    chosen.append(slot)
                    size *= len(slot[2])
            slots = chosen
        pinned |= {s[0] for s in slots}
        assignments = []
        for choice in product(*(s[2] for s in slots)):
            assignments.append(
                [
                    tuple(
                        sorted(
                            (name, ver)
                            for (name, platform, _), ver in zip(slots, choice, strict=True)
                            if name in reachable[request.key]
                            and (platform is None or platform == request.platform)
                        )
                    )
                    for request in requests
                ]
            )
        assignments_tried += len(assignments)
        await solver.solve_all(
            (request, pins)
            for per_target in assignments
            for request, pins in zip(requests, per_target, strict=True)
        )
        for per_target in assignments:
            consider([solver.cached(r, p) for r, p in zip(requests, per_target, strict=True)])
        if status == "partial":
            break
    found = list(candidates.values())
    return Reference(
        status,
        alone={r.key: s for r, s in zip(requests, alone, strict=True)},  # type: ignore[misc]
        candidates=found,
        pareto=pareto(found),
        solves=solver.solves,
        combinations=assignments_tried,
        pinned=tuple(sorted(pinned)),
    )


def reference(case: Case, channel_dir: Path, max_combinations: int = MAX_COMBINATIONS) -> Reference:
    """Run the reference on a case whose channel is written at ``channel_dir``."""
    return asyncio.run(_reference(case, channel_dir.resolve().as_uri(), max_combinations))


def describe_lock(lock: Mapping[TargetKey, Mapping[str, Rec]]) -> str:
    """``name version`` per name, with the targets where it differs or is missing."""
    names = sorted({n for recs in lock.values() for n in recs})
    keys = sorted(lock)
    parts = []
    for name in names:
        by_version: dict[str, list[str]] = {}
        for key in keys:
            if name in lock[key]:
                by_version.setdefault(lock[key][name].version, []).append(f"{key[0]}/{key[1]}")
        present = sum(len(v) for v in by_version.values())
        if len(by_version) == 1 and present == len(keys):
            parts.append(f"{name} {next(iter(by_version))}")
        else:
            parts.append(
                name + " " + ", ".join(f"{v} [{' '.join(t)}]" for v, t in by_version.items())
            )
    return "; ".join(parts)
