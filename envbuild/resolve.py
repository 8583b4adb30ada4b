"""Resolve ONE environment: every target (variant x platform) solved and made consistent.

The way it works:

1. On each platform, solve the reference variant (the newest CUDA variant there: it holds the
   most packages). Platforms are solved concurrently.
2. Compare versions across platforms. Where a package got different versions, pin it for
   every target to the newest version every platform offers that is no newer than the lowest
   chosen, and solve again.
3. Solve every other variant with ``constraints`` taken from its platform's reference: the same
   version for every package, the same build too unless the package is CUDA-dependent.
4. Re-check the whole invariant on the results (``consistency.check``): a cross-platform
   difference found now adds pins and goes round again; anything else is an error naming the
   packages, the versions on each side and why.
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

    async def solve_references(self) -> dict[Target, tuple[LockedPackage, ...]]:
        requests = [
            self.request(Target(variant, platform))
            for platform, variant in sorted(self.plan.references.items())
        ]
        constraints = self.pin_constraints()

        async def one(request: TargetRequest) -> tuple[LockedPackage, ...]:
            try:
                return await self.solve(request, constraints)
            except SolveError as exc:
                raise self._unsatisfiable(request, exc) from None

        results = await asyncio.gather(*(one(r) for r in requests))
        return {r.target: packages for r, packages in zip(requests, results, strict=True)}

    async def solve_followers(
        self, references: Mapping[Target, tuple[LockedPackage, ...]]
    ) -> dict[Target, tuple[LockedPackage, ...]]:
        followers = [r for r in self.plan.requests if r.target not in references]

        async def one(request: TargetRequest) -> tuple[LockedPackage, ...]:
            reference = Target(
                self.plan.references[request.target.platform], request.target.platform
            )
            follow = follow_constraints(references[reference])
            try:
                return await self.solve(request, [*self.pin_constraints(), *follow])
            except SolveError as exc:
                # Unsatisfiable on its own, or only together with the reference?
                try:
                    await self.solve(request, self.pin_constraints())
                except SolveError as alone:
                    raise self._unsatisfiable(request, alone) from None
                raise ConsistencyError(
                    f"{request.target} cannot use the versions and builds chosen for "
                    f"{reference}: {culprit(exc.details)}",
                    details=exc.details,
                ) from None

        results = await asyncio.gather(*(one(r) for r in followers))
        return {r.target: packages for r, packages in zip(followers, results, strict=True)}

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
            references = await self.solve_references()
            mismatches = consistency.platform_mismatches(
                references, self.plan.allow_platform_divergence
            )
            if mismatches:
                await self.align(mismatches)
                continue
            solution = {**references, **await self.solve_followers(references)}
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
_PREFIXES = ("Cannot solve the request because of:", "the constraint")


def culprit(details: str | None) -> str:
    """The package a solver explanation blames, as a short phrase."""
    if not details:
        return "the solver found no solution"
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
    solver: Solver,
    reporter: Reporter,
    preferred: Mapping[Target, Sequence[LockedPackage]] | None = None,
) -> Resolution:
    """Solve every target of ``plan`` into one consistent environment."""
    return await _Resolver(plan, solver, preferred or {}, reporter).run()
