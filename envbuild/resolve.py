"""Resolve ONE environment: every target (variant x platform) solved and made consistent.

The way it works:

1. Solve every target concurrently, each on its own. A target that cannot be solved even
   alone is an error naming it and the package the solver blames.
2. Compare versions across platforms. Where a package got different versions, pin it for
   every target to the newest version every platform offers that is no newer than the lowest
   chosen, and go round again.
3. On each platform one variant is the reference (the newest CUDA variant: it holds the most
   packages). Any other variant that strayed from it is solved again with ``constraints``
   taken from it: the same version and build for every package, only the same version for
   CUDA-dependent ones, nothing for the CUDA runtime itself. Most of the time nothing strayed
   and this costs no solve: an unconstrained result that agrees with its reference already
   meets every one of those constraints.
4. Re-check the whole invariant (``consistency.check``): a cross-platform difference found
   now adds pins and goes round again; anything else is an error naming the packages, the
   versions on each side and why.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from envbuild import consistency
from envbuild.conda import Solver, sort_versions
from envbuild.errors import ConsistencyError, SolveError
from envbuild.lockfile import LockedPackage, Target

#: Alignment rounds before giving up (each pins at least one more package).
MAX_ROUNDS = 8


class Reporter(Protocol):
    """Receives progress while targets are solved."""

    def solved(self, target: Target, seconds: float, packages: int) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass(frozen=True)
class TargetRequest:
    """What one target is solved with."""

    target: Target
    specs: tuple[str, ...]
    virtual_packages: tuple[str, ...]
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Everything the resolver needs, derived from the spec."""

    channels: tuple[str, ...]
    requests: tuple[TargetRequest, ...]
    #: platform -> variant solved first there
    references: Mapping[str, str]
    gpu_dependencies: frozenset[str] = frozenset()
    allow_platform_divergence: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Resolution:
    """The consistent solution and what it took."""

    packages: dict[Target, tuple[LockedPackage, ...]]
    solves: int
    rounds: int
    pins: dict[str, str]


@dataclass
class _Resolver:
    plan: Plan
    solver: Solver
    preferred: Mapping[Target, Sequence[LockedPackage]]
    reporter: Reporter
    pins: dict[str, str] = field(default_factory=dict)
    solves: int = 0

    def request(self, target: Target) -> TargetRequest:
        return next(r for r in self.plan.requests if r.target == target)

    def pin_constraints(self) -> list[str]:
        return [f"{name} =={version}" for name, version in sorted(self.pins.items())]

    async def solve(
        self, request: TargetRequest, constraints: Sequence[str]
    ) -> tuple[LockedPackage, ...]:
        started = time.perf_counter()
        self.solves += 1
        packages = await self.solver.solve(
            self.plan.channels,
            request.specs,
            request.target.platform,
            request.virtual_packages,
            constraints=constraints,
            locked=self.preferred.get(request.target, ()),
        )
        self.reporter.solved(request.target, time.perf_counter() - started, len(packages))
        return tuple(packages)

    def _unsatisfiable(self, request: TargetRequest, error: SolveError) -> SolveError:
        roles = f" (roles: {', '.join(request.roles)})" if request.roles else ""
        pins = ""
        if self.pins:
            shown = ", ".join(f"{n} {v}" for n, v in sorted(self.pins.items()))
            pins = f" with {shown} aligned across platforms"
        return SolveError(
            f"cannot solve {request.target}{roles}{pins}: {culprit(error.details)}",
            details=error.details,
        )

    async def solve_all(self) -> dict[Target, tuple[LockedPackage, ...]]:
        """Every target at once, each on its own (pins aside). A target that cannot be solved
        even so is an error; when several cannot, the first in plan order is reported."""
        requests = self.plan.requests
        constraints = self.pin_constraints()
        results = await asyncio.gather(
            *(self.solve(r, constraints) for r in requests), return_exceptions=True
        )
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, SolveError):
                raise self._unsatisfiable(request, result) from None
            if isinstance(result, BaseException):
                raise result
        return {
            r.target: result
            for r, result in zip(requests, results, strict=True)
            if not isinstance(result, BaseException)
        }

    def reference_of(self, target: Target) -> Target:
        return Target(self.plan.references[target.platform], target.platform)

    async def follow(
        self, solution: dict[Target, tuple[LockedPackage, ...]]
    ) -> dict[Target, tuple[LockedPackage, ...]]:
        """Re-solve, with constraints from its reference, each variant that strayed from it."""
        strayed = [
            target
            for target in solution
            if target != self.reference_of(target)
            and consistency.check(
                {t: solution[t] for t in (target, self.reference_of(target))},
                self.plan.gpu_dependencies,
            )
        ]

        async def one(target: Target) -> tuple[LockedPackage, ...]:
            reference = self.reference_of(target)
            constraints = [*self.pin_constraints(), *follow_constraints(solution[reference])]
            try:
                return await self.solve(self.request(target), constraints)
            except SolveError as exc:  # it solved on its own: only the reference conflicts
                raise ConsistencyError(
                    f"{target} cannot use the versions and builds chosen for "
                    f"{reference}: {culprit(exc.details)}",
                    details=exc.details,
                ) from None

        followed = await asyncio.gather(*(one(t) for t in strayed))
        return {**solution, **dict(zip(strayed, followed, strict=True))}

    async def align(self, mismatches: Sequence[consistency.Violation]) -> None:
        """Pin each mismatched package to a version every platform has."""
        for violation in mismatches:
            name = violation.package
            platforms = sorted({t.platform for t in violation.versions})
            offered = await asyncio.gather(
                *(self.solver.versions_available(self.plan.channels, p, name) for p in platforms)
            )
            common = set.intersection(*offered)
            lowest = sort_versions(violation.versions.values())[0]
            ordered = sort_versions(common | {lowest})
            candidates = [v for v in ordered[: ordered.index(lowest) + 1] if v in common]
            if not candidates:
                listing = "; ".join(
                    f"{p}: {', '.join(sort_versions(o)) or 'none'}"
                    for p, o in zip(platforms, offered, strict=True)
                )
                raise ConsistencyError(
                    f"{violation.message}; no version of {name} is available on every "
                    "platform: list it under allow-platform-divergence in the spec to accept this",
                    details=f"versions offered per platform: {listing}",
                )
            choice = candidates[-1]
            if self.pins.get(name) == choice:
                raise ConsistencyError(f"{violation.message}; aligning {name} to {choice} failed")
            self.reporter.note(
                f"aligning {name} to {choice} on every platform ({violation.message})"
            )
            self.pins[name] = choice

    async def run(self) -> Resolution:
        for round_number in range(1, MAX_ROUNDS + 1):
            solution = await self.solve_all()
            mismatches = consistency.platform_mismatches(
                solution, self.plan.allow_platform_divergence
            )
            if mismatches:
                await self.align(mismatches)
                continue
            solution = await self.follow(solution)
            violations = consistency.check(
                solution, self.plan.gpu_dependencies, self.plan.allow_platform_divergence
            )
            cross_platform = [v for v in violations if v.kind == "platform-version"]
            if cross_platform:
                await self.align(cross_platform)
                continue
            if violations:
                raise ConsistencyError(
                    f"the variants cannot share one environment: {violations[0].message}",
                    details="\n".join(v.message for v in violations),
                )
            return Resolution(
                packages=dict(sorted(solution.items())),
                solves=self.solves,
                rounds=round_number,
                pins=dict(self.pins),
            )
        raise ConsistencyError(
            f"versions did not agree across platforms after {MAX_ROUNDS} rounds "
            f"(pinned so far: {', '.join(f'{n} {v}' for n, v in sorted(self.pins.items()))})"
        )


def follow_constraints(reference: Sequence[LockedPackage]) -> list[str]:
    """Constraints that make a variant follow its platform's reference: the same version and
    build for every package, only the same version for CUDA-dependent ones, and nothing for the
    CUDA runtime itself (it follows the variant's own cuda-version)."""
    cuda = consistency.cuda_dependent(reference)
    runtime = consistency.cuda_runtime(reference)
    return [
        f"{p.name} =={p.version}" if p.name in cuda else f"{p.name} =={p.version} {p.build}"
        for p in reference
        if p.name not in runtime
    ]


_BLAME = re.compile(r"cannot be (installed|fulfilled)")
_MISSING = re.compile(r"No candidates were found for ([A-Za-z0-9_.\-]+)")
_PREFIXES = ("Cannot solve the request because of:", "the constraint")


def culprit(details: str | None) -> str:
    """The package a solver explanation blames, as a short phrase."""
    if not details:
        return "the solver found no solution"
    missing = _MISSING.search(details)
    if missing:
        return f"no package {missing.group(1)} in the channels for this platform"
    for line in details.splitlines():
        match = _BLAME.search(line)
        if not match:
            continue
        text = line.strip(" \t│├└─")
        for prefix in _PREFIXES:
            text = text.removeprefix(prefix).strip()
        name = text.split()[0] if text.split() else "a package"
        return f"{name} cannot be {match.group(1)} (solver's explanation below)"
    return details.splitlines()[0]


async def resolve(
    plan: Plan,
    reporter: Reporter,
    preferred: Mapping[Target, Sequence[LockedPackage]] | None = None,
) -> Resolution:
    """Solve every target of ``plan`` into one consistent environment."""
    return await _Resolver(plan, Solver(), preferred or {}, reporter).run()
