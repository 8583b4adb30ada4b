"""The search for the best consistent lock, one pin at a time: steps 2 to 6 of ``resolve``
(whose docstring argues the design). ``resolve`` owns the solver; the search asks it for
solves (remembered there) and for the versions the channels offer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from envbuild.errors import SolveError
from envbuild.lock import consistency
from envbuild.lock.conda import version_key
from envbuild.lock.explain import Failure, unavailable_everywhere
from envbuild.lock.lockfile import LockedPackage, Target
from envbuild.spec.matchspec import dependency_name

Solution = dict[Target, tuple[LockedPackage, ...]]
#: a lock and the pins it was found under
Found = tuple[Solution, tuple["Pin", ...]]
#: a consistent lock -> None when it will do; else the packages to move, in order, that may
#: make it do (none: it will not)
Accept = Callable[[Solution], list[str] | None]

_OPERATORS = {"version": "==", "build": "==", "atleast": ">=", "above": ">", "below": "<"}


class OutOfSolves(Exception):
    """The search spent its solves (``resolve.MAX_SEARCH_SOLVES``)."""


class Request(Protocol):
    """What the search reads of a target's request (``resolve.TargetRequest``)."""

    @property
    def target(self) -> Target: ...

    @property
    def specs(self) -> tuple[str, ...]: ...

    @property
    def constraints(self) -> tuple[str, ...]: ...


class Planned(Protocol):
    """What the search reads of the plan (``resolve.Plan``)."""

    @property
    def requests(self) -> Sequence[Request]: ...

    @property
    def gpu_dependencies(self) -> Collection[str]: ...

    @property
    def allow_platform_divergence(self) -> Collection[str]: ...


class Solving(Protocol):
    """What the search needs of the resolver."""

    @property
    def plan(self) -> Planned: ...

    def request(self, target: Target) -> Request: ...

    async def solve_many(
        self, jobs: Mapping[Target, tuple[str, ...]]
    ) -> dict[Target, tuple[LockedPackage, ...] | SolveError]: ...

    async def versions(self, platform: str, name: str) -> set[str]: ...

    def note(self, message: str) -> None: ...


@dataclass(frozen=True)
class Pin:
    """``package`` held to ``value`` on ``scope``: equal to it ("1.2"; "1.2 h0" for a build),
    or at least, above or below it (bounds of a search, and probes)."""

    package: str
    kind: Literal["version", "build", "atleast", "above", "below"]
    scope: frozenset[Target]
    value: str

    def admits(self, version: str, build: str | None = None) -> bool:
        """Whether the pin allows ``version`` (and ``build``) of its package."""
        mine, _, pinned_build = self.value.partition(" ")
        have, want = version_key(version), version_key(mine)
        if self.kind == "atleast":
            return bool(have >= want)
        if self.kind == "above":
            return bool(have > want)
        if self.kind == "below":
            return bool(have < want)
        return bool(have == want) and (self.kind == "version" or build == pinned_build)

    def met_by(self, packages: Sequence[LockedPackage]) -> bool:
        """Whether a solution already meets the pin (a constraint on an absent package is)."""
        for package in packages:
            if package.name == self.package:
                return self.admits(package.version, package.build)
        return True

    def constraint(self) -> str:
        return f"{self.package} {_OPERATORS[self.kind]}{self.value}"


def lower_bounds(lock: Solution) -> list[Pin]:
    """Pins that keep every package of ``lock`` at least as new, target by target."""
    scopes: dict[tuple[str, str], set[Target]] = {}
    for target, packages in lock.items():
        for package in packages:
            scopes.setdefault((package.name, package.version), set()).add(target)
    return [
        Pin(name, "atleast", frozenset(targets), version)
        for (name, version), targets in sorted(scopes.items())
    ]


def branch(
    found: Sequence[consistency.Disagreement], solution: Solution
) -> consistency.Disagreement:
    """The disagreement to settle first: versions before builds, and of those the first (by
    name) that no other one depends on, directly or not, in any target."""
    todo = [d for d in found if d.kind == "version"] or list(found)
    if len(todo) == 1:
        return todo[0]
    names = {d.package for d in todo}
    graph: dict[str, set[str]] = {}
    for packages in solution.values():
        for package in packages:
            graph.setdefault(package.name, set()).update(consistency.dependency_names(package))
    below: set[str] = set()
    for start in names:
        stack, seen = list(graph.get(start, ())), set()
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(graph.get(name, ()))
        below |= (seen & names) - {start}
    return next((d for d in todo if d.package not in below), todo[0])


def closure(packages: Sequence[LockedPackage], roots: Sequence[str]) -> list[str]:
    """``roots`` and what they depend on in ``packages``, directly or not, roots first."""
    by_name = {p.name: p for p in packages}
    order: list[str] = []
    queue = [r for r in roots if r in by_name]
    while queue:
        name = queue.pop(0)
        if name not in order:
            order.append(name)
            queue += [d for d in consistency.dependency_names(by_name[name]) if d in by_name]
    return order


@dataclass
class Search:
    """Steps 2 to 6: settle disagreements one pin at a time, newest first, backing up."""

    solving: Solving
    steps: int = 0
    #: the first branching, whose failure is the error when no lock exists
    root: Failure | None = None
    #: the bounds of every search for a better lock begun
    tried: set[frozenset[Pin]] = field(default_factory=set)

    def constraints(self, target: Target, pins: Sequence[Pin]) -> tuple[str, ...]:
        pinned = sorted(p.constraint() for p in pins if target in p.scope)
        return (*self.solving.request(target).constraints, *pinned)

    async def search(
        self, pins: tuple[Pin, ...], solution: Solution, accept: Accept | None = None
    ) -> Found | Failure:
        """The first consistent lock under ``pins`` and more, newest first (and, with
        ``accept``, one it accepts); or why there is none."""
        self.steps += 1
        plan = self.solving.plan
        found = consistency.disagreements(solution, plan.allow_platform_divergence)
        if found:
            branchings = [(branch(found, solution), False)]
        else:
            violations = consistency.check(
                solution, plan.gpu_dependencies, plan.allow_platform_divergence
            )
            if violations:
                return Failure("", "version", {}, violations=tuple(v.message for v in violations))
            wanted = accept(solution) if accept else None
            if wanted is None:
                return solution, pins
            moved = {p.package for p in pins if p.kind == "version"}
            branchings = [(self.held(n, solution), True) for n in wanted if n not in moved]
        failure = Failure("", "version", {}, violations=("no better lock here",))
        for disagreement, moving in branchings:
            failure = Failure(
                disagreement.package,
                disagreement.kind,
                {
                    t: p.version + (f" {p.build}" if disagreement.kind == "build" else "")
                    for t, p in disagreement.chosen.items()
                },
            )
            self.root = self.root or failure
            for pin in await self.candidates(disagreement, pins, solution, failure, moving):
                settled = await self.settle(pin, pins, solution, failure)
                if settled is None:
                    continue
                result = await self.search((*pins, pin), settled, accept)
                if not isinstance(result, Failure):
                    return await self.improve(pins, pin, result, accept)
                failure.deeper.append((pin.value, result))
        return failure

    def held(self, name: str, solution: Solution) -> consistency.Disagreement:
        """``name`` where ``solution`` holds it, as a disagreement to move it by."""
        holders = {t: p for t, ps in solution.items() for p in ps if p.name == name}
        scope: Literal["all", "platform"] = "all"
        if name in self.solving.plan.allow_platform_divergence:
            first = min(t.platform for t in holders)
            holders = {t: p for t, p in holders.items() if t.platform == first}
            scope = "platform"
        return consistency.Disagreement(name, "version", holders, scope)

    def scope(self, disagreement: consistency.Disagreement, kind: str) -> frozenset[Target]:
        """The targets a pin settling ``disagreement`` binds: all that must share it."""
        holders = disagreement.chosen
        targets = [r.target for r in self.solving.plan.requests]
        if kind == "build" or disagreement.scope == "platform":
            platforms = {t.platform for t in holders}
            return frozenset(t for t in targets if t.platform in platforms)
        if disagreement.scope == "variant":
            variants = {t.variant for t in holders}
            return frozenset(t for t in targets if t.variant in variants)
        return frozenset(targets)

    async def candidates(
        self,
        disagreement: consistency.Disagreement,
        pins: tuple[Pin, ...],
        solution: Solution,
        failure: Failure,
        moving: bool = False,
    ) -> list[Pin]:
        """The pins to try for ``disagreement``, in order: its versions newest first (for a
        build disagreement, the builds chosen first; ``moving``: the versions not held).
        Several versions newer than any target chose are kept only when every target can take
        a newer one at all (one probe, ``NAME >NEWEST``, instead of a solve per version)."""
        name = disagreement.package
        out = []
        if disagreement.kind == "build":
            scope = self.scope(disagreement, "build")
            picked = consistency.most_chosen(list(disagreement.chosen.values()))
            out = [Pin(name, "build", scope, f"{p.version} {p.build}") for p in picked]
            if any(p.package == name and p.kind == "version" for p in pins):
                return out
        scope = self.scope(disagreement, "version")
        platforms = sorted({t.platform for t in scope})
        offered = {p: await self.solving.versions(p, name) for p in platforms}
        holding = {t.platform for t in disagreement.chosen}
        failure.unavailable = unavailable_everywhere({p: offered[p] for p in holding})
        held = {version_key(p.version) for p in disagreement.chosen.values()}
        skip = held if (moving or disagreement.kind == "build") else set()
        versions: dict[object, str] = {}
        for platform in platforms:
            for version in offered[platform]:
                versions.setdefault(version_key(version), version)
        bounds = [p for p in pins if p.package == name and p.kind not in ("version", "build")]
        newest = max(held)
        for key in sorted(versions, reverse=True):  # type: ignore[type-var]
            pin = Pin(name, "version", scope, versions[key])
            admitted = any(all(b.admits(pin.value) for b in bounds if t in b.scope) for t in scope)
            if key not in skip and admitted:  # some target may hold it
                out.append(pin)
        newer = [p for p in out if p.kind == "version" and version_key(p.value) > newest]
        if len(newer) > 1 and not moving:  # (one newer version: trying it costs the same)
            chose = next(
                p.version for p in disagreement.chosen.values() if version_key(p.version) == newest
            )
            probe = Pin(name, "above", scope, chose)
            scratch = Failure(name, "version", {})
            if await self.settle(probe, pins, solution, scratch) is None:
                out = [p for p in out if p not in newer]
        return out

    async def settle(
        self, pin: Pin, pins: tuple[Pin, ...], solution: Solution, failure: Failure
    ) -> Solution | None:
        """``solution`` with the targets that do not meet ``pin`` solved again under it; None
        (and the refusals recorded in ``failure``) when one of them cannot take it."""
        affected = sorted(t for t in pin.scope if not pin.met_by(solution[t]))
        refused = False
        for target in affected:
            why = await self.cannot_have(target, pin, pins)
            if why is not None:
                failure.refuse(target, pin.value, why)
                refused = True
        if refused:
            return None
        pinning = pin.kind in ("version", "build")
        shown = f"{pin.package} {pin.value}" if pinning else pin.constraint()
        if affected:
            what = f"aligning {pin.package} to {pin.value}" if pinning else f"trying {shown}"
            self.solving.note(f"{what} on {len(affected)} targets")
        everything = (*pins, pin)
        results = await self.solving.solve_many(
            {t: self.constraints(t, everything) for t in affected}
        )
        for target, result in results.items():
            if isinstance(result, SolveError):
                failure.refuse(target, pin.value, result)
                refused = True
        if refused:
            refusers = ", ".join(str(t) for t, r in results.items() if isinstance(r, SolveError))
            self.solving.note(f"{refusers} cannot take {shown}")
            return None
        return {**solution, **{t: r for t, r in results.items() if not isinstance(r, SolveError)}}

    def named(self, target: Target, package: str) -> bool:
        """Whether ``target``'s spec names ``package`` (so every solution of it holds it)."""
        return any(dependency_name(s) == package for s in self.solving.request(target).specs)

    async def cannot_have(self, target: Target, pin: Pin, pins: Sequence[Pin]) -> SolveError | None:
        """Why ``target`` cannot take ``pin`` without a solve: its spec names the package and
        the channels have no such version for its platform, or another pin excludes it."""
        if pin.kind != "version" or not self.named(target, pin.package):
            return None
        offered = await self.solving.versions(target.platform, pin.package)
        if not any(version_key(v) == version_key(pin.value) for v in offered):
            why = f"no {pin.package} {pin.value} in the channels for {target.platform}"
            return SolveError("cannot solve", details=why)
        for other in pins:
            same = other.package == pin.package and target in other.scope
            if same and other.kind != "build" and not other.admits(pin.value):
                return SolveError("cannot solve", details=f"{other.constraint()} holds")
        return None

    async def improve(
        self, pins: tuple[Pin, ...], pin: Pin, found: Found, accept: Accept | None
    ) -> Found:
        """``found``, or a lock under ``pins`` that dominates it with ``pin``'s package older
        where ``found`` lacks it (the one way a better lock escapes the newest-first order)."""
        lock = found[0]
        holders = [t for t in pin.scope if any(p.name == pin.package for p in lock[t])]
        if pin.kind != "version" or len(holders) == len(pin.scope):
            return found
        if any(self.named(t, pin.package) for t in holders):
            return found  # they keep the package at the pinned version (none newer exists)
        below = Pin(pin.package, "below", pin.scope, pin.value)
        best: Found | None = None
        try:
            while better := await self.dominating((best or found)[0], (*pins, below)):
                best = better  # and again: what the search moved to get there may go higher
        except OutOfSolves:
            pass
        if best is None or (accept is not None and accept(best[0]) is not None):
            return found
        self.solving.note(f"found a newer lock with {pin.package} older than {pin.value}")
        return best

    async def dominating(self, lock: Solution, pins: tuple[Pin, ...]) -> Found | None:
        """A lock under ``pins`` that dominates ``lock``, searched from what every target
        takes when held to at least ``lock``'s versions; None when the search finds none."""
        bounded = (*pins, *lower_bounds(lock))
        if frozenset(bounded) in self.tried:
            return None
        self.tried.add(frozenset(bounded))
        start = await self.solving.solve_many({t: self.constraints(t, bounded) for t in lock})
        fresh = {t: r for t, r in start.items() if not isinstance(r, SolveError)}
        if len(fresh) < len(start):
            return None
        better = await self.search(bounded, fresh, self.better_than(lock))
        return None if isinstance(better, Failure) else better

    def better_than(self, worse: Solution) -> Accept:
        """Accepts a lock that dominates ``worse``; for one that only fails the CUDA clause,
        names what may bring the CUDA builds back: what the packages that lost them depend on,
        then those packages."""

        def accept(lock: Solution) -> list[str] | None:
            newer, lost = consistency.compare(lock, worse)
            if not newer:
                return []
            if not lost:
                return None
            below: list[str] = []
            for target, gone in sorted(lost.items()):
                runtime = consistency.cuda_runtime(lock[target])
                cuda = consistency.cuda_dependent(lock[target])
                for name in closure(lock[target], gone):
                    if name not in below and name not in runtime and name not in cuda:
                        below.append(name)
            losing = {n for names in lost.values() for n in names}
            return [n for n in below if n not in losing] + [n for n in below if n in losing]

        return accept
