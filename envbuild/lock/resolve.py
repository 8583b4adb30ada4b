"""Resolve ONE environment: every target (variant x platform) solved and made consistent.

The way it works (one mechanism for both axes, variants and platforms):

1. Solve every target concurrently, each on its own. CPU variants exclude the CUDA runtime
   (``cuda-version``, ``cudatoolkit``), so a package with CPU and CUDA builds lands there as
   its CPU build. A target that cannot be solved even alone is an error naming it, the
   package the solver blames and, where a requirement matches nothing, the versions the
   channels hold.
2. Find the disagreements (``consistency.disagreements``): a package whose version differs
   between targets that must share it, or whose build differs between the variants of one
   platform although it is not CUDA-dependent. Versions are settled before builds.
3. Settle each with a pin on exactly the targets of its group. A version pin starts at the
   newest version that is no newer than the lowest one chosen (the target that chose it could
   take nothing newer) and that every platform of the group offers; a build pin starts at the
   build most targets chose. Only the targets whose pins changed are solved again,
   concurrently.
4. A target that cannot take a pin makes the pin step down to its next candidate: the pin the
   solver's explanation names, or, when several changed and it names none, each one probed
   alone. A pin with no candidate left is an error naming the package, what each target chose
   and could not take, and the roles and requirements (CUDA version, platform) behind them.
5. When nothing disagrees, the whole invariant is checked once more (``consistency.check``):
   what is left, a package in only some variants that the GPU stack does not explain, is an
   error.

A lock that needs no alignment costs one solve per target, as raw rattler does.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from envbuild.errors import ConsistencyError, SolveError
from envbuild.lock import consistency
from envbuild.lock.conda import Solver, sort_versions, version_key
from envbuild.lock.lockfile import LockedPackage, Target
from envbuild.spec.matchspec import dependency_name

#: Rounds of new pins before giving up (each round pins at least one more package).
MAX_ROUNDS = 40
#: Versions listed when a requirement matches none of them.
SHOWN_VERSIONS = 8


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
    rounds: int
    #: package -> what it was aligned to ("2.0.2", or "2.0.2 py311h1" for a build)
    pins: dict[str, str]


@dataclass
class _Pin:
    """What a group of targets is held to for one package, and what was tried."""

    package: str
    kind: Literal["version", "build"]
    targets: frozenset[Target]
    #: versions, or "version build" for a build pin; the current choice first
    candidates: list[str]
    #: what each target of the group chose on its own, for the error message
    chosen: Mapping[Target, str]
    refused: dict[Target, list[str]] = field(default_factory=dict)

    @property
    def choice(self) -> str:
        return self.candidates[0]

    def met_by(self, packages: Iterable[LockedPackage]) -> bool:
        """Whether a solution already meets the pin (a constraint on an absent package is)."""
        for package in packages:
            if package.name == self.package:
                version, _, build = self.choice.partition(" ")
                same = version_key(package.version) == version_key(version)
                return same and (self.kind == "version" or package.build == build)
        return True

    def constraint(self) -> str:
        if self.kind == "version":
            return f"{self.package} =={self.choice}"
        version, build = self.choice.split(" ")
        return f"{self.package} =={version} {build}"


def _newest_first(versions: Iterable[str]) -> list[str]:
    return list(reversed(sort_versions(versions)))


@dataclass
class _Resolver:
    plan: Plan
    solver: Solver
    preferred: Mapping[Target, Sequence[LockedPackage]]
    reporter: Reporter
    pins: list[_Pin] = field(default_factory=list)
    solves: int = 0

    def request(self, target: Target) -> TargetRequest:
        return next(r for r in self.plan.requests if r.target == target)

    def constraints(self, target: Target, without: Iterable[_Pin] = ()) -> list[str]:
        skipped = list(without)
        return [
            *self.request(target).constraints,
            *(p.constraint() for p in self.pins if target in p.targets and p not in skipped),
        ]

    async def solve(self, target: Target, constraints: Sequence[str]) -> tuple[LockedPackage, ...]:
        request = self.request(target)
        started = time.perf_counter()
        self.solves += 1
        packages = await self.solver.solve(
            self.plan.channels,
            request.specs,
            target.platform,
            request.virtual_packages,
            constraints=constraints,
            locked=self.preferred.get(target, ()),
        )
        self.reporter.solved(target, time.perf_counter() - started, len(packages))
        return tuple(packages)

    async def solve_many(
        self, jobs: Mapping[Target, Sequence[str]]
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

    # --- step 1 ---

    async def solve_alone(self) -> dict[Target, tuple[LockedPackage, ...]]:
        """Every target on its own; the first (in plan order) that cannot be solved is an
        error."""
        results = await self.solve_many(
            {r.target: self.constraints(r.target) for r in self.plan.requests}
        )
        for request in self.plan.requests:
            result = results[request.target]
            if isinstance(result, SolveError):
                raise await self.unsatisfiable(request, result)
        return {t: r for t, r in results.items() if not isinstance(r, SolveError)}

    async def unsatisfiable(self, request: TargetRequest, error: SolveError) -> SolveError:
        roles = f" (roles: {', '.join(request.roles)})" if request.roles else ""
        why = culprit(error.details)
        missing = _missing_spec(error.details)
        if missing:
            name = dependency_name(missing)
            offered = await self.solver.versions_available(
                self.plan.channels, request.target.platform, name
            )
            why = _no_match(missing, name, request.target.platform, offered)
        elif _excluded_cuda(error.details):
            why = (
                "a package it needs exists only as CUDA builds, and a CPU variant excludes the "
                "CUDA runtime (cuda-version, cudatoolkit): move it to gpu-dependencies, or give "
                f"the roles {', '.join(request.roles)} a GPU"
            )
        return SolveError(f"cannot solve {request.target}{roles}: {why}", details=error.details)

    # --- steps 2 and 3 ---

    async def pin(self, disagreement: consistency.Disagreement) -> _Pin:
        """A new pin that settles ``disagreement`` (it replaces any pin of the same package
        and kind on some of the same targets, never choosing anything newer than it)."""
        name, chosen = disagreement.package, disagreement.chosen
        targets = frozenset(chosen)
        previous = [
            p
            for p in self.pins
            if p.package == name and p.kind == disagreement.kind and p.targets & targets
        ]
        for old in previous:
            self.pins.remove(old)
            targets |= old.targets
        if disagreement.kind == "build":
            candidates = [
                f"{p.version} {p.build}"
                for p in consistency.most_chosen(list(chosen.values()))
                if not any(f"{p.version} {p.build}" not in old.candidates for old in previous)
            ]
            shown = {t: f"{p.version} {p.build}" for t, p in chosen.items()}
        else:
            candidates = await self.version_candidates(disagreement, previous)
            shown = {t: p.version for t, p in chosen.items()}
        pin = _Pin(name, disagreement.kind, targets, candidates, shown)
        if not candidates:
            raise self.exhausted(pin)
        self.pins.append(pin)
        self.reporter.note(
            f"aligning {name} to {pin.choice} on {len(targets)} targets ({disagreement.describe()})"
        )
        return pin

    async def version_candidates(
        self, disagreement: consistency.Disagreement, previous: Sequence[_Pin]
    ) -> list[str]:
        """Versions every platform of the group offers, no newer than the lowest chosen (or
        than an earlier pin's choice), newest first."""
        name = disagreement.package
        platforms = sorted({t.platform for t in disagreement.chosen})
        offered = await asyncio.gather(
            *(self.solver.versions_available(self.plan.channels, p, name) for p in platforms)
        )
        ceilings = [p.version for p in disagreement.chosen.values()]
        ceilings += [old.choice for old in previous]
        ceiling = min(version_key(v) for v in ceilings)
        keyed = [{version_key(v): v for v in versions} for versions in offered]
        common = set.intersection(*(set(k) for k in keyed))
        candidates = [keyed[0][k] for k in common if k <= ceiling]
        if not candidates and len(platforms) > 1:
            listing = "; ".join(
                f"{p}: {', '.join(sort_versions(o)) or 'none'}"
                for p, o in zip(platforms, offered, strict=True)
            )
            raise ConsistencyError(
                f"{disagreement.describe()}; no version of {name} is available on every "
                "platform: list it under allow-platform-divergence in the spec to accept this",
                details=f"versions offered per platform: {listing}",
            )
        return _newest_first(candidates)

    async def settle(
        self, solution: dict[Target, tuple[LockedPackage, ...]], changed: list[_Pin]
    ) -> dict[Target, tuple[LockedPackage, ...]]:
        """Re-solve the targets of ``changed`` pins; step down what a target cannot take."""
        while changed:
            # A target that already meets its pins would solve to what it has: skip it.
            affected = sorted(
                t
                for t in set().union(*(p.targets for p in changed))
                if not all(p.met_by(solution[t]) for p in self.pins if t in p.targets)
            )
            results = await self.solve_many({t: self.constraints(t) for t in affected})
            failed = {t: r for t, r in results.items() if isinstance(r, SolveError)}
            solution.update({t: r for t, r in results.items() if not isinstance(r, SolveError)})
            blamed: dict[int, _Pin] = {}
            for target, error in failed.items():
                suspects = [p for p in changed if target in p.targets]
                for pin in await self.blame(target, error, suspects):
                    pin.refused.setdefault(target, []).append(pin.choice)
                    blamed[id(pin)] = pin
            for pin in blamed.values():
                refused = pin.candidates.pop(0)
                if not pin.candidates:
                    raise self.exhausted(pin, failed)
                refusers = [str(t) for t, r in sorted(pin.refused.items()) if refused in r]
                self.reporter.note(
                    f"{', '.join(refusers)} cannot take {pin.package} {refused}; "
                    f"trying {pin.choice}"
                )
            changed = list(blamed.values())
        return solution

    async def blame(self, target: Target, error: SolveError, suspects: list[_Pin]) -> list[_Pin]:
        """The pins among ``suspects`` that ``target`` cannot take."""
        if len(suspects) <= 1:
            return suspects
        named = [p for p in suspects if _constraint_named(p.package, error.details)]
        if named:
            return named
        takes = await asyncio.gather(*(self.takes(target, pin, suspects) for pin in suspects))
        refused = [pin for pin, ok in zip(suspects, takes, strict=True) if not ok]
        return refused or suspects

    async def takes(self, target: Target, pin: _Pin, suspects: Sequence[_Pin]) -> bool:
        """Whether ``target`` solves with ``pin`` but none of the other ``suspects``."""
        others = [q for q in suspects if q is not pin]
        try:
            await self.solve(target, self.constraints(target, without=others))
        except SolveError:
            return False
        return True

    def exhausted(
        self, pin: _Pin, failed: Mapping[Target, SolveError] | None = None
    ) -> ConsistencyError:
        """No candidate of ``pin`` suits every target: say what each target chose and refused."""
        parts = []
        for target in sorted(pin.targets):
            request = self.request(target)
            text = f"{request.describe()} chose {pin.chosen.get(target, 'nothing')}"
            if pin.refused.get(target):
                text += f", cannot take {', '.join(pin.refused[target])}"
            parts.append(text)
        what = "version" if pin.kind == "version" else "build"
        details = "\n".join(f"{t}: {e.details}" for t, e in sorted((failed or {}).items()))
        return ConsistencyError(
            f"{pin.package}: no {what} suits every target that must share it: " + "; ".join(parts),
            details=details or None,
        )

    # --- the loop ---

    async def run(self) -> Resolution:
        solution = await self.solve_alone()
        for round_number in range(1, MAX_ROUNDS + 1):
            found = consistency.disagreements(solution, self.plan.allow_platform_divergence)
            todo = [d for d in found if d.kind == "version"] or found
            if not todo:
                violations = consistency.check(
                    solution, self.plan.gpu_dependencies, self.plan.allow_platform_divergence
                )
                if violations:
                    raise ConsistencyError(
                        f"the variants cannot share one environment: {violations[0].message}",
                        details="\n".join(v.message for v in violations),
                    )
                return Resolution(
                    packages=dict(sorted(solution.items())),
                    solves=self.solves,
                    rounds=round_number,
                    pins={p.package: p.choice for p in self.pins},
                )
            changed = [await self.pin(d) for d in todo]
            solution = await self.settle(solution, changed)
        raise ConsistencyError(
            f"the targets did not agree after {MAX_ROUNDS} rounds of alignment (pinned so far: "
            f"{', '.join(f'{p.package} {p.choice}' for p in self.pins)})"
        )


_BLAME = re.compile(r"cannot be (installed|fulfilled)")
_MISSING = re.compile(r"No candidates were found for (.+?)\.?\s*$", re.MULTILINE)
_PREFIXES = ("Cannot solve the request because of:", "the constraint")
_EXCLUDED = re.compile(r"the constraint (cuda-version|cudatoolkit) <0a0 cannot be fulfilled")


def _missing_spec(details: str | None) -> str | None:
    """The requirement that matched no package at all, from a solver explanation."""
    match = _MISSING.search(details or "")
    return match.group(1).strip() if match else None


def _excluded_cuda(details: str | None) -> bool:
    return bool(_EXCLUDED.search(details or ""))


def _constraint_named(package: str, details: str | None) -> bool:
    return f"the constraint {package} ==" in (details or "")


def _no_match(spec: str, name: str, platform: str, offered: Iterable[str]) -> str:
    versions = _newest_first(offered)
    if not versions:
        return f"no package {name} in the channels for {platform}"
    shown = ", ".join(versions[:SHOWN_VERSIONS])
    if len(versions) > SHOWN_VERSIONS:
        shown += f" and {len(versions) - SHOWN_VERSIONS} older"
    return f"nothing matches '{spec}' on {platform}: the channels have {name} {shown}"


def culprit(details: str | None) -> str:
    """The package a solver explanation blames, as a short phrase."""
    if not details:
        return "the solver found no solution"
    missing = _missing_spec(details)
    if missing:
        return f"nothing matches '{missing}' in the channels for this platform"
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
