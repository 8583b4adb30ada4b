"""Resolve ONE environment: every target (variant x platform) solved and made consistent.

"Best" is the README's ("Which lock is best"): a consistent lock that no other dominates
(every shared package at least as new, one newer, and nothing CUDA-dependent traded for a CPU
build). The way there, one mechanism for both axes, variants and platforms (steps 2 to 6 live
in ``search``):

1. Solve every target concurrently, each on its own. CPU variants exclude the CUDA runtime
   (``cuda-version``, ``cudatoolkit``), so a package with CPU and CUDA builds lands there as
   its CPU build. A target that cannot be solved even alone is an error naming it, the
   package the solver blames and, where a requirement matches nothing, the versions the
   channels hold. When nothing disagrees and the invariant holds, that is the lock: one
   solve per target, as raw rattler.
2. Otherwise settle one package at a time. Of the packages the targets disagree on
   (``consistency.disagreements``; versions before builds), take the one highest in the
   dependency graph: nothing else that disagrees depends on it, so settling it may settle
   the rest, and a disagreement that was only a side effect of another never gets a pin.
3. Pin it (``NAME ==VERSION`` as a constraint, which binds only where the package is
   installed) on every target that must share it, trying its versions newest first: every
   version their platforms offer, not only those the targets chose (a target that chose an
   older one alone may take a newer one once another package moves; and a version missing
   on one platform may still do if that platform then drops the package). Only the targets
   whose solution does not already meet the pin are solved again, concurrently. A version
   a target cannot take is passed over; otherwise the disagreements are computed again from
   the new solutions and the search goes on from step 2 under this pin.
4. A pin that leads nowhere (every way on below it ends in a target that cannot take a pin)
   is taken back and its next version tried: pins are never stacked on a failed attempt, so
   a pin that only another pin made necessary goes with it, and a pin below one that moved
   down starts again from the newest version. A build disagreement is pinned to the builds
   chosen, most chosen first, then to the package's other versions.
5. The first pins under which nothing disagrees and the whole invariant holds
   (``consistency.check``) give the lock. When every way fails, the error names the package
   the search branched on first, each target with its roles and CUDA version, what it chose
   and what it could not take (the solver's explanations below).
6. One way a better lock escapes step 3's order: the pinned package is missing from some
   targets of the lock found (a pin on a package that later moves away binds nothing), and a
   lock with an older version of it, held where this one lacks it, is newer in the rest.
   Then the same search runs once more, bounded to locks at least as new as the one found and
   with that package older (``>=``/``<`` constraints), from what each target takes under
   those bounds, and its lock replaces the one found if it dominates it (repeated until none
   does). A lock that is newer but loses a CUDA build is not taken; the search then moves
   what the lost CUDA build's package depends on, then that package.

Why this is best: versions are tried newest first at every step, so the lock is the newest,
in the order they were pinned, of the packages pinned; the packages left free are what the
solver picks under those pins. A lock that dominated it would have to hold the first pinned
package at its pinned version where both hold it (every newer version was tried and led
nowhere, and the search under a pin is complete: it follows any consistent lock that meets
the pin down to a leaf), or lack it where this one holds it, which step 6 searches; then the
next pin, and so on; left with the same pins, it would have to beat the solver's own choice
(which ``tests/exact`` finds never happens). So the search refuses only when no lock that
version pins can reach exists. Costs: solves are remembered, a target that failed under
some constraints is not solved again under more of them, a version not in the channels for
a target whose spec names the package is refused without a solve, the versions newer than
any target chose are tried only when one probe (``NAME >NEWEST``) shows they may do, and
``MAX_SEARCH_SOLVES`` bounds the worst case (a better-lock search that reaches it keeps the
lock it has).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from envbuild.errors import ConsistencyError, SolveError
from envbuild.lock import consistency
from envbuild.lock.conda import Solver
from envbuild.lock.lockfile import LockedPackage, Target
from envbuild.spec.matchspec import dependency_name

#: Solves the search may spend after the targets' first solves before it gives up.
MAX_SEARCH_SOLVES = 400

Solution = dict[Target, tuple[LockedPackage, ...]]


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
    #: constraints that always apply (a CPU variant's exclusion of the CUDA runtime)
    constraints: tuple[str, ...] = ()
    cuda: str | None = None

    def describe(self) -> str:
        """``cuda-11.8/linux-64 (scheduler; CUDA 11.8)``, for messages."""
        who = ", ".join(self.roles) or "no role"
        hardware = f"CUDA {self.cuda}" if self.cuda else "no GPU"
        return f"{self.target} ({who}; {hardware})"


@dataclass(frozen=True)
class Plan:
    """Everything the resolver needs, derived from the spec."""

    channels: tuple[str, ...]
    requests: tuple[TargetRequest, ...]
    gpu_dependencies: frozenset[str] = frozenset()
    allow_platform_divergence: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Resolution:
    """The consistent solution and what it took."""

    packages: dict[Target, tuple[LockedPackage, ...]]
    solves: int
    #: steps of the search (1: nothing disagreed)
    rounds: int
    #: package -> what it was aligned to ("2.0.2", or "2.0.2 py311h1" for a build)
    pins: dict[str, str]


@dataclass
class _Resolver:
    plan: Plan
    solver: Solver
    preferred: Mapping[Target, Sequence[LockedPackage]]
    reporter: Reporter
    solves: int = 0
    budget: int = 0
    #: (target, constraints) -> solution
    solved: dict[tuple[Target, tuple[str, ...]], tuple[LockedPackage, ...]] = field(
        default_factory=dict
    )
    #: target -> constraint sets it cannot be solved under (nor under any superset)
    failed: dict[Target, list[tuple[frozenset[str], SolveError]]] = field(default_factory=dict)
    offered: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def request(self, target: Target) -> TargetRequest:
        return next(r for r in self.plan.requests if r.target == target)

    def note(self, message: str) -> None:
        self.reporter.note(message)

    async def solve(
        self, target: Target, constraints: tuple[str, ...]
    ) -> tuple[LockedPackage, ...]:
        """One target's solution under ``constraints``, remembered; SolveError when none."""
        key = (target, constraints)
        if key in self.solved:
            return self.solved[key]
        given = frozenset(constraints)
        for subset, error in self.failed.get(target, ()):
            if subset <= given:
                raise error
        if self.budget and self.solves >= self.budget:
            from envbuild.lock.search import OutOfSolves  # loaded: only a search sets a budget

            raise OutOfSolves
        request = self.request(target)
        started = time.perf_counter()
        self.solves += 1
        try:
            packages = await self.solver.solve(
                self.plan.channels,
                request.specs,
                target.platform,
                request.virtual_packages,
                constraints=constraints,
                locked=self.preferred.get(target, ()),
            )
        except SolveError as error:
            self.failed.setdefault(target, []).append((given, error))
            raise
        self.reporter.solved(target, time.perf_counter() - started, len(packages))
        self.solved[key] = tuple(packages)
        return self.solved[key]

    async def solve_many(
        self, jobs: Mapping[Target, tuple[str, ...]]
    ) -> dict[Target, tuple[LockedPackage, ...] | SolveError]:
        """Solve several targets at once; a SolveError is returned, anything else raised."""
        targets = sorted(jobs)
        results = await asyncio.gather(
            *(self.solve(t, jobs[t]) for t in targets), return_exceptions=True
        )
        out: dict[Target, tuple[LockedPackage, ...] | SolveError] = {}
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, SolveError):
                raise result
            out[target] = result
        return out

    async def versions(self, platform: str, name: str) -> set[str]:
        """Every version of ``name`` the channels offer for ``platform`` (noarch included)."""
        key = (platform, name)
        if key not in self.offered:
            self.offered[key] = await self.solver.versions_available(
                self.plan.channels, platform, name
            )
        return self.offered[key]

    # --- step 1 ---

    async def solve_alone(self) -> Solution:
        """Every target on its own; the first (in plan order) that cannot be solved is an
        error."""
        results = await self.solve_many({r.target: r.constraints for r in self.plan.requests})
        for request in self.plan.requests:
            result = results[request.target]
            if isinstance(result, SolveError):
                raise await self.unsatisfiable(request, result)
        return {t: r for t, r in results.items() if not isinstance(r, SolveError)}

    async def unsatisfiable(self, request: TargetRequest, error: SolveError) -> SolveError:
        from envbuild.lock.explain import culprit, excluded_cuda, missing_spec, no_match

        roles = f" (roles: {', '.join(request.roles)})" if request.roles else ""
        why = culprit(error.details)
        missing = missing_spec(error.details)
        if missing:
            name = dependency_name(missing)
            offered = await self.versions(request.target.platform, name)
            why = no_match(missing, name, request.target.platform, offered)
        elif excluded_cuda(error.details):
            why = (
                "a package it needs exists only as CUDA builds, and a CPU variant excludes the "
                "CUDA runtime (cuda-version, cudatoolkit): move it to gpu-dependencies, or give "
                f"the roles {', '.join(request.roles)} a GPU"
            )
        return SolveError(f"cannot solve {request.target}{roles}: {why}", details=error.details)

    # --- the whole ---

    async def run(self) -> Resolution:
        solution = await self.solve_alone()
        divergent = self.plan.allow_platform_divergence
        if not consistency.disagreements(solution, divergent) and not consistency.check(
            solution, self.plan.gpu_dependencies, divergent
        ):  # the common case: the search (and its module) is not needed
            return Resolution(dict(sorted(solution.items())), self.solves, 1, {})
        from envbuild.lock.explain import Failure
        from envbuild.lock.search import OutOfSolves, Search

        self.budget = self.solves + MAX_SEARCH_SOLVES
        search = Search(self)
        try:
            result = await search.search((), solution)
        except OutOfSolves:
            root = search.root.headline(self.describe) if search.root else "no lock found"
            raise ConsistencyError(
                f"gave up after {self.solves} solves without a consistent lock; so far: {root}"
            ) from None
        if isinstance(result, Failure):
            raise result.error(self.describe)
        packages, pins = result
        return Resolution(
            packages=dict(sorted(packages.items())),
            solves=self.solves,
            rounds=search.steps,
            pins={p.package: p.value for p in pins if p.kind in ("version", "build")},
        )

    def describe(self, target: Target) -> str:
        return self.request(target).describe()


async def resolve(
    plan: Plan,
    reporter: Reporter,
    preferred: Mapping[Target, Sequence[LockedPackage]] | None = None,
) -> Resolution:
    """Solve every target of ``plan`` into one consistent environment."""
    return await _Resolver(plan, Solver(), preferred or {}, reporter).run()
