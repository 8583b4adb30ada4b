"""The consistency invariant: one environment across every role, variant and platform.

1. Same platform, different variants: a package present in both has the same version, unless
   it belongs to the CUDA runtime itself (``cuda-version``, ``cudatoolkit``, and packages built
   for one CUDA minor, like ``cuda-cudart``: the variants exist to differ there), and the same
   build unless it is CUDA-dependent (it is, or depends on, ``cuda-version``, ``cudatoolkit``
   or ``__cuda``, directly or through other packages) in one of them. A package present in
   only some variants must be explained by the GPU stack: a gpu-dependency, a CUDA-dependent
   package, or a dependency pulled in by one of those. That includes what the CPU build of a
   package that is CUDA-dependent elsewhere pulls in (xgboost's CPU build needs openblas,
   its CUDA build does not).
2. Different platforms: a package name gets one version everywhere, unless the spec lists it
   under ``allow-platform-divergence``.

Versions are compared with conda's semantics (``1.0`` equals ``1.0.0``), never as text.

Pure functions over locked packages; the resolver uses them to steer solves, ``show`` to
explain differences, and tests compare records directly rather than trusting this module.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from envbuild.lock.conda import version_key
from envbuild.lock.lockfile import LockedPackage, Target
from envbuild.spec.matchspec import dependency_name

#: Names that make a package CUDA-dependent when it is one of them or depends on one.
CUDA_MARKERS = frozenset({"cuda-version", "cudatoolkit", "__cuda"})

Solution = Mapping[Target, Sequence[LockedPackage]]


def distinct_versions(versions: Iterable[str]) -> int:
    """How many different versions, by conda's equality."""
    return len({version_key(v) for v in versions})


#: a package's depends -> the names they depend on (each parsed once per process: the same
#: records come back from every solve, and every check reads them again)
_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}


def dependency_names(package: LockedPackage) -> tuple[str, ...]:
    """The names ``package`` depends on."""
    names = _NAMES.get(package.depends)
    if names is None:
        names = _NAMES[package.depends] = tuple(dependency_name(d) for d in package.depends)
    return names


def cuda_dependent(packages: Iterable[LockedPackage]) -> dict[str, str]:
    """Name -> why, for every CUDA-dependent package of one solution."""
    deps = {p.name: dependency_names(p) for p in packages}
    reasons: dict[str, str] = {}
    for name, names in deps.items():
        if name in CUDA_MARKERS:
            reasons[name] = "selects the CUDA version"
        else:
            marker = next((d for d in names if d in CUDA_MARKERS), None)
            if marker:
                reasons[name] = f"depends on {marker}"
    changed = True
    while changed:  # propagate upwards: depending on a CUDA-dependent package is CUDA-dependent
        changed = False
        for name, names in deps.items():
            if name not in reasons:
                via = next((d for d in names if d in reasons), None)
                if via:
                    reasons[name] = f"depends on {via}"
                    changed = True
    return reasons


_WINDOW = re.compile(r">=\s*(\d+)\.(\d+)[^,]*,\s*<\s*(\d+)\.(\d+)")


def _pins_cuda_minor(spec: str) -> bool:
    """``cuda-version >=12.4,<12.5.0a0`` (one CUDA minor), not ``>=12.0,<13`` (a major)."""
    if not spec.startswith(("cuda-version", "cudatoolkit")):  # the cheap test first
        return False
    if dependency_name(spec) not in ("cuda-version", "cudatoolkit"):
        return False
    match = _WINDOW.search(spec)
    return match is not None and match.group(1) == match.group(3)


def cuda_runtime(packages: Iterable[LockedPackage]) -> dict[str, str]:
    """Name -> why, for the packages of the CUDA runtime itself: ``cuda-version``,
    ``cudatoolkit``, and packages built for one CUDA minor (NVIDIA's toolkit packages pin
    ``cuda-version >=X.Y,<X.Y+1``). Their versions follow the variant's CUDA version."""
    runtime: dict[str, str] = {}
    for package in packages:
        if package.name in ("cuda-version", "cudatoolkit"):
            runtime[package.name] = "the CUDA version itself"
        else:
            pin = next((d for d in package.depends if _pins_cuda_minor(d)), None)
            if pin:
                runtime[package.name] = f"CUDA runtime: built for {pin}"
    return runtime


def required_by(packages: Iterable[LockedPackage], roots: Collection[str]) -> dict[str, str]:
    """Name -> the root that pulls it in, for everything in the closure of ``roots``."""
    deps = {p.name: dependency_names(p) for p in packages}
    owner: dict[str, str] = {}
    for root in sorted(roots):
        stack = [root]
        while stack:
            name = stack.pop()
            if name in owner or name not in deps:
                continue
            owner[name] = root
            stack.extend(deps[name])
    return owner


@dataclass(frozen=True)
class _TargetAnalysis:
    """Per target: its packages, which are CUDA-dependent or CUDA runtime, and what the GPU
    stack pulls in."""

    variant: str
    packages: Mapping[str, LockedPackage]
    cuda: Mapping[str, str]
    runtime: Mapping[str, str]
    gpu_stack: Mapping[str, str]

    @classmethod
    def of(
        cls,
        target: Target,
        packages: Sequence[LockedPackage],
        gpu_dependencies: Collection[str],
        cuda_elsewhere: Collection[str] = (),
    ) -> _TargetAnalysis:
        cuda = cuda_dependent(packages)
        names = {p.name for p in packages}
        roots = (set(cuda) | set(gpu_dependencies) | set(cuda_elsewhere)) & names
        by_name = {p.name: p for p in packages}
        return cls(
            target.variant, by_name, cuda, cuda_runtime(packages), required_by(packages, roots)
        )


def _analyses(
    solution: Solution, gpu_dependencies: Collection[str]
) -> dict[str, dict[Target, _TargetAnalysis]]:
    """platform -> target -> analysis. A package CUDA-dependent in one variant of a platform
    makes what it pulls in (in any build) part of the GPU stack on that platform."""
    by_platform: dict[str, dict[Target, _TargetAnalysis]] = {}
    for platform in sorted({t.platform for t in solution}):
        targets = sorted(t for t in solution if t.platform == platform)
        first = {t: _TargetAnalysis.of(t, solution[t], gpu_dependencies) for t in targets}
        elsewhere = set().union(*(a.cuda for a in first.values()))
        by_platform[platform] = {
            t: _TargetAnalysis.of(t, solution[t], gpu_dependencies, elsewhere) for t in targets
        }
    return by_platform


# --- disagreements: what the resolver settles with pins ------------------------------------------


@dataclass(frozen=True)
class Disagreement:
    """Targets that must share a package's version (or, on one platform, its build) but do not.

    ``chosen`` holds every target of the group, including those that agree.
    """

    package: str
    kind: Literal["version", "build"]
    chosen: Mapping[Target, LockedPackage]
    #: who else must share it: every target ("all"), those of the same variant (the CUDA
    #: runtime) or of the same platform (allowed to diverge across platforms, and builds)
    scope: Literal["all", "variant", "platform"] = "all"

    def describe(self) -> str:
        """``numpy: cpu/linux-64 has 2.0.2, cuda-12.4/linux-64 has 1.26.4``."""
        shown = ", ".join(
            f"{t} has {p.version}" + (f" {p.build}" if self.kind == "build" else "")
            for t, p in sorted(self.chosen.items())
        )
        return f"{self.package}: {shown}"


def disagreements(
    solution: Solution, allow_platform_divergence: Collection[str] = ()
) -> list[Disagreement]:
    """Versions that differ where they must agree; then, among packages whose versions agree,
    builds that differ between variants of one platform for a package that is not
    CUDA-dependent. Sorted by package name."""
    holders: dict[str, dict[Target, LockedPackage]] = {}
    runtime: dict[Target, Mapping[str, str]] = {}
    cuda: dict[Target, Mapping[str, str]] = {}
    for target, packages in solution.items():
        runtime[target] = cuda_runtime(packages)
        cuda[target] = cuda_dependent(packages)
        for package in packages:
            holders.setdefault(package.name, {})[target] = package
    found = []
    for name, held in sorted(holders.items()):
        scope, groups = _version_groups(name, held, runtime, allow_platform_divergence)
        for group in groups:
            if distinct_versions(p.version for p in group.values()) > 1:
                found.append(Disagreement(name, "version", group, scope))
    settled = {d.package for d in found}
    for name, held in sorted(holders.items()):
        if name in settled:
            continue
        for platform in sorted({t.platform for t in held}):
            group = {t: p for t, p in held.items() if t.platform == platform}
            if len(group) < 2 or any(name in cuda[t] for t in group):
                continue
            if len({p.build for p in group.values()}) > 1:
                found.append(Disagreement(name, "build", group, "platform"))
    return found


def _version_groups(
    name: str,
    held: Mapping[Target, LockedPackage],
    runtime: Mapping[Target, Mapping[str, str]],
    allow_platform_divergence: Collection[str],
) -> tuple[Literal["all", "variant", "platform"], list[dict[Target, LockedPackage]]]:
    """The groups of targets that must share ``name``'s version, and what they share.

    The CUDA runtime follows each variant's CUDA version: it is shared across the platforms
    of one variant only. A package allowed to diverge across platforms is shared across the
    variants of one platform only.
    """
    key: Literal["variant", "platform"]
    if all(name in runtime[t] for t in held):
        key = "variant"
    elif name in allow_platform_divergence:
        key = "platform"
    else:
        return "all", [dict(held)] if len(held) > 1 else []
    groups: dict[str, dict[Target, LockedPackage]] = {}
    for target, package in held.items():
        groups.setdefault(getattr(target, key), {})[target] = package
    return key, [g for _, g in sorted(groups.items()) if len(g) > 1]


# --- the whole invariant, with reasons ----------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """A package that differs between the variants of one platform."""

    platform: str
    package: str
    #: variant -> "version build", or None where the variant lacks the package
    builds: Mapping[str, str | None]
    #: why the difference is allowed, or None when it breaks the invariant
    reason: str | None


@dataclass(frozen=True)
class Violation:
    """A break of the invariant, worded for the user."""

    package: str
    kind: str  # "variant-version" | "variant-build" | "variant-only" | "platform-version"
    message: str


def _cuda_reason(name: str, holders: Sequence[_TargetAnalysis]) -> str | None:
    for holder in holders:
        if name in holder.cuda:
            return f"CUDA-dependent ({holder.cuda[name]})"
    return None


def _runtime_reason(name: str, holders: Sequence[_TargetAnalysis]) -> str | None:
    """Why ``name`` may have another version in another CUDA variant, if it may."""
    reasons = [h.runtime.get(name) for h in holders]
    return reasons[0] if all(reasons) else None


def _gpu_stack_reason(
    name: str, holders: Sequence[_TargetAnalysis], gpu_dependencies: Collection[str]
) -> str | None:
    if name in gpu_dependencies:
        return "gpu-dependency"
    cuda = _cuda_reason(name, holders)
    if cuda:
        return cuda
    for holder in holders:
        owner = holder.gpu_stack.get(name)
        if owner is None:
            continue
        if owner in holder.cuda or owner in gpu_dependencies:
            return f"required by {owner} (GPU stack)"
        build = holder.packages[owner].build
        return f"required by {owner} {build} in {holder.variant} ({owner} has CUDA builds)"
    return None


def variant_differences(solution: Solution, gpu_dependencies: Collection[str]) -> list[Difference]:
    """Every package that differs between variants of the same platform, with its reason.

    A version difference needs a package of the CUDA runtime (in every variant that holds
    it); a build difference needs a CUDA-dependent package; presence in only some variants
    needs a package of the GPU stack.
    """
    differences = []
    for platform, analyses in _analyses(solution, gpu_dependencies).items():
        if len(analyses) < 2:
            continue
        names = sorted(set().union(*(a.packages for a in analyses.values())))
        for name in names:
            held = {a.variant: a.packages.get(name) for a in analyses.values()}
            builds = {v: (f"{p.version} {p.build}" if p else None) for v, p in held.items()}
            present = [p for p in held.values() if p is not None]
            versions = distinct_versions(p.version for p in present)
            same_builds = len({p.build for p in present}) == 1
            if len(present) == len(held) and versions == 1 and same_builds:
                continue
            holders = [a for a in analyses.values() if name in a.packages]
            presence: str | None = (
                _gpu_stack_reason(name, holders, gpu_dependencies) if None in held.values() else ""
            )
            reason: str | None
            if presence is None:
                reason = None
            elif versions > 1:  # the runtime's version is the more telling reason
                reason = _runtime_reason(name, holders)
            elif not same_builds:
                build = _cuda_reason(name, holders)
                reason = None if build is None else (presence or build)
            else:
                reason = presence
            differences.append(Difference(platform, name, builds, reason))
    return differences


def check(
    solution: Solution,
    gpu_dependencies: Collection[str],
    allow_platform_divergence: Collection[str] = (),
) -> list[Violation]:
    """Every violation of the invariant in ``solution`` (empty when consistent)."""
    violations = []
    for diff in variant_differences(solution, gpu_dependencies):
        if diff.reason is not None:
            continue
        present = {v: b for v, b in diff.builds.items() if b is not None}
        shown = ", ".join(f"{v} has {b}" for v, b in present.items())
        missing = [v for v, b in diff.builds.items() if b is None]
        if distinct_versions(b.split(" ")[0] for b in present.values()) > 1:
            kind, why = "variant-version", "versions must match between variants"
        elif missing:
            kind = "variant-only"
            why = (
                f"missing from {', '.join(missing)}, yet neither a gpu-dependency nor "
                "required by the GPU stack"
            )
        else:
            kind, why = "variant-build", "builds must match unless the package is CUDA-dependent"
        violations.append(
            Violation(diff.package, kind, f"{diff.package} on {diff.platform}: {shown} ({why})")
        )
    violations.extend(platform_mismatches(solution, allow_platform_divergence))
    return violations


def platform_mismatches(
    solution: Solution, allow_platform_divergence: Collection[str] = ()
) -> list[Violation]:
    """Packages whose version differs between platforms (and may not).

    The CUDA runtime differs between CUDA variants by design, so its packages are compared
    across the platforms of each variant, not across variants.
    """
    groups: dict[tuple[str, str], dict[Target, str]] = {}
    for target, packages in solution.items():
        runtime = cuda_runtime(packages)
        for package in packages:
            scope = target.variant if package.name in runtime else ""
            groups.setdefault((package.name, scope), {})[target] = package.version
    violations = []
    for (name, _), seen in sorted(groups.items()):
        if name in allow_platform_divergence or len({t.platform for t in seen}) < 2:
            continue
        per_platform: dict[str, set[object]] = {}
        for target, version in seen.items():
            per_platform.setdefault(target.platform, set()).add(version_key(version))
        if len({frozenset(v) for v in per_platform.values()}) > 1:
            shown = ", ".join(f"{t} has {v}" for t, v in sorted(seen.items()))
            violations.append(
                Violation(
                    name,
                    "platform-version",
                    f"{name}: {shown} (versions must match across platforms)",
                )
            )
    return violations


def most_chosen(packages: Sequence[LockedPackage]) -> list[LockedPackage]:
    """Distinct builds, the one most targets chose first (then the higher build number)."""
    counts = Counter((p.version, p.build) for p in packages)
    first: dict[tuple[str, str], LockedPackage] = {}
    for package in packages:
        first.setdefault((package.version, package.build), package)
    return sorted(
        first.values(),
        key=lambda p: (-counts[(p.version, p.build)], -p.build_number, p.build),
    )


def dominates(better: Solution, worse: Solution) -> bool:
    """Whether ``better`` is a better lock than ``worse`` (README, "Which lock is best")."""
    newer, lost = compare(better, worse)
    return newer and not lost


def compare(better: Solution, worse: Solution) -> tuple[bool, dict[Target, list[str]]]:
    """How ``better`` stands against ``worse``: whether, in every target, every package the
    two share is at least as new in ``better`` and one is newer; and, per target, the packages
    CUDA-dependent in ``worse`` that ``better`` holds but not as CUDA-dependent (a CUDA variant
    that swaps a CUDA build for its CPU build to get newer dependencies trades, it does not
    improve). Packages in only one of the two are not compared."""
    strictly = False
    for target, packages in worse.items():
        theirs = {p.name: p for p in better.get(target, ())}
        for package in packages:
            other = theirs.get(package.name)
            if other is None:
                continue
            new, old = version_key(other.version), version_key(package.version)
            if new < old:
                return False, {}
            strictly = strictly or new > old
    lost: dict[Target, list[str]] = {}
    for target, packages in worse.items():
        present = {p.name for p in better.get(target, ())}
        kept = cuda_dependent(better.get(target, ()))
        gone = sorted(n for n in cuda_dependent(packages) if n in present and n not in kept)
        if gone:
            lost[target] = gone
    return strictly, lost
