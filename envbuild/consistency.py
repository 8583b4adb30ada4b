"""The consistency invariant: one environment across every role, variant and platform.

1. Same platform, different variants: a package present in both has the same version, unless
   it belongs to the CUDA runtime itself (``cuda-version``, ``cudatoolkit``, and packages built
   for one CUDA minor, like ``cuda-cudart``: the variants exist to differ there), and the same
   build unless it is CUDA-dependent (it is, or depends on, ``cuda-version``, ``cudatoolkit``
   or ``__cuda``, directly or through other packages). A package present in only some
   variants must be a gpu-dependency, CUDA-dependent, or required by one of those.
2. Different platforms: a package name gets one version everywhere, unless the spec lists it
   under ``allow-platform-divergence``.

Pure functions over locked packages; the resolver uses them to steer solves, ``show`` to
explain differences, and tests compare records directly rather than trusting this module.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from envbuild.lockfile import LockedPackage, Target
from envbuild.matchspec import package_name

#: Names that make a package CUDA-dependent when it is one of them or depends on one.
CUDA_MARKERS = frozenset({"cuda-version", "cudatoolkit", "__cuda"})

Solution = Mapping[Target, Sequence[LockedPackage]]


def dependency_name(spec: str) -> str:
    """``"python >=3.9"`` -> ``"python"``."""
    return package_name(spec) or spec.strip().lower()


def cuda_dependent(packages: Iterable[LockedPackage]) -> dict[str, str]:
    """Name -> why, for every CUDA-dependent package of one solution."""
    deps = {p.name: [dependency_name(d) for d in p.depends] for p in packages}
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
    deps = {p.name: [dependency_name(d) for d in p.depends] for p in packages}
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
    #: target -> version, for platform-version violations (used to align platforms)
    versions: Mapping[Target, str]


@dataclass(frozen=True)
class _TargetAnalysis:
    """Per target: CUDA-dependent packages and what the GPU stack pulls in."""

    packages: Mapping[str, LockedPackage]
    cuda: Mapping[str, str]
    runtime: Mapping[str, str]
    gpu_stack: Mapping[str, str]

    @classmethod
    def of(
        cls, packages: Sequence[LockedPackage], gpu_dependencies: Collection[str]
    ) -> _TargetAnalysis:
        cuda = cuda_dependent(packages)
        names = {p.name for p in packages}
        roots = set(cuda) | (set(gpu_dependencies) & names)
        by_name = {p.name: p for p in packages}
        return cls(by_name, cuda, cuda_runtime(packages), required_by(packages, roots))


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
        if name in holder.gpu_stack:
            return f"required by {holder.gpu_stack[name]} (GPU stack)"
    return None


def variant_differences(solution: Solution, gpu_dependencies: Collection[str]) -> list[Difference]:
    """Every package that differs between variants of the same platform, with its reason.

    A version difference needs a package of the CUDA runtime (in every variant that holds
    it); a build difference needs a CUDA-dependent package; presence in only some variants
    needs a package of the GPU stack.
    """
    differences = []
    for platform in sorted({t.platform for t in solution}):
        targets = sorted(t for t in solution if t.platform == platform)
        if len(targets) < 2:
            continue
        analyses = {t.variant: _TargetAnalysis.of(solution[t], gpu_dependencies) for t in targets}
        names = sorted(set().union(*(a.packages for a in analyses.values())))
        for name in names:
            builds = {
                variant: (
                    f"{a.packages[name].version} {a.packages[name].build}"
                    if name in a.packages
                    else None
                )
                for variant, a in analyses.items()
            }
            if len(set(builds.values())) == 1:
                continue
            holders = [a for a in analyses.values() if name in a.packages]
            present = {b for b in builds.values() if b is not None}
            reason: str | None
            if len({b.split(" ")[0] for b in present}) > 1:
                version_reason = _runtime_reason(name, holders)
                presence_reason = (
                    _gpu_stack_reason(name, holders, gpu_dependencies)
                    if None in builds.values()
                    else ""
                )
                reason = None if presence_reason is None else version_reason
            else:
                build_reason = _cuda_reason(name, holders) if len(present) > 1 else ""
                presence_reason = (
                    _gpu_stack_reason(name, holders, gpu_dependencies)
                    if None in builds.values()
                    else ""
                )
                if build_reason is None or presence_reason is None:
                    reason = None
                else:
                    reason = presence_reason or build_reason
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
        versions = {b.split(" ")[0] for b in present.values()}
        if len(versions) > 1:
            kind, why = "variant-version", "versions must match between variants"
        elif missing:
            kind = "variant-only"
            why = (
                f"missing from {', '.join(missing)}, yet neither a gpu-dependency nor "
                "required by the CUDA stack"
            )
        else:
            kind, why = "variant-build", "builds must match unless the package is CUDA-dependent"
        violations.append(
            Violation(diff.package, kind, f"{diff.package} on {diff.platform}: {shown} ({why})", {})
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
        if len(set(seen.values())) > 1:
            shown = ", ".join(f"{t} has {v}" for t, v in sorted(seen.items()))
            violations.append(
                Violation(
                    name,
                    "platform-version",
                    f"{name}: {shown} (versions must match across platforms)",
                    dict(seen),
                )
            )
    return violations
