"""CUDA variants and lock targets, derived from the spec's roles (pure functions).

A variant is the one environment plus, for GPU roles, a CUDA runtime: ``cpu``,
``cuda-12.4``, ... Roles with the same GPU runtime share a variant. A target is a variant on
one platform: the unit that is solved and locked.
"""

from __future__ import annotations

from dataclasses import dataclass

from envbuild.lock.lockfile import Target
from envbuild.spec import ROLES
from envbuild.spec.model import Spec
from envbuild.spec.platforms import VirtualPackage, virtual_packages

CPU = "cpu"
#: A CPU variant never carries a CUDA runtime: these constraints match no package, so the
#: solver takes CPU builds of packages that also have CUDA builds.
CPU_EXCLUSIONS = ("cuda-version <0a0", "cudatoolkit <0a0")


@dataclass(frozen=True)
class Variant:
    """One CUDA variant of the environment and the roles that use it."""

    name: str
    cuda: str | None
    platforms: tuple[str, ...]
    roles: tuple[str, ...]
    specs: tuple[str, ...]

    def targets(self) -> list[Target]:
        return [Target(self.name, p) for p in self.platforms]

    @property
    def constraints(self) -> tuple[str, ...]:
        """Constraints every solve of this variant carries."""
        return CPU_EXCLUSIONS if self.cuda is None else ()


def variant_name(cuda: str | None) -> str:
    """``None`` -> ``cpu``; ``"12.4"`` -> ``cuda-12.4``."""
    return CPU if cuda is None else f"cuda-{cuda}"


def _cuda_sort_key(cuda: str | None) -> tuple[int, int]:
    if cuda is None:
        return (-1, -1)
    major, minor = cuda.split(".")
    return (int(major), int(minor))


def derive_variants(spec: Spec) -> tuple[Variant, ...]:
    """Variants the roles need: ``cpu`` first, then CUDA variants by version."""
    by_cuda: dict[str | None, tuple[list[str], list[str]]] = {}
    for role_name in ROLES:
        role = spec.role(role_name)
        cuda = role.gpu.cuda if role.gpu else None
        roles, platforms = by_cuda.setdefault(cuda, ([], []))
        roles.append(role_name)
        platforms += [p for p in spec.role_platforms(role_name) if p not in platforms]
    variants = []
    for cuda in sorted(by_cuda, key=_cuda_sort_key):
        roles, platforms = by_cuda[cuda]
        specs = list(spec.dependencies)
        if cuda is not None:
            specs += [*spec.gpu_dependencies, f"cuda-version {cuda}.*"]
        variants.append(
            Variant(
                name=variant_name(cuda),
                cuda=cuda,
                platforms=tuple(sorted(platforms)),
                roles=tuple(roles),
                specs=tuple(specs),
            )
        )
    return tuple(variants)


def target_virtual_packages(
    spec: Spec, variant: Variant, platform: str
) -> tuple[VirtualPackage, ...]:
    """The virtual packages a target is solved with, declared by the spec."""
    system = spec.system_requirements
    return virtual_packages(
        platform, cuda=variant.cuda, linux=system.linux, glibc=system.glibc, macos=system.macos
    )
