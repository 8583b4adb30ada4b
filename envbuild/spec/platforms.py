"""Conda platforms envbuild locks for, and the virtual packages declared for each.

Virtual packages are DECLARED from the spec, never detected from the machine that runs
``envbuild lock``: a CPU-only CI runner must be able to lock CUDA variants.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class VirtualPackage:
    """A virtual package such as ``__glibc=2.28=0``."""

    name: str
    version: str
    build: str = "0"

    def __str__(self) -> str:
        return f"{self.name}={self.version}={self.build}"


#: platform -> (operating system, archspec microarchitecture)
PLATFORMS: dict[str, tuple[str, str]] = {
    "linux-64": ("linux", "x86_64"),
    "linux-aarch64": ("linux", "aarch64"),
    "linux-ppc64le": ("linux", "ppc64le"),
    "osx-64": ("osx", "x86_64"),
    "osx-arm64": ("osx", "arm64"),
    "win-64": ("win", "x86_64"),
}

#: Platforms on which a role may have a GPU (CUDA does not exist on macOS).
GPU_PLATFORMS = frozenset(p for p, (os_name, _) in PLATFORMS.items() if os_name != "osx")


def virtual_packages(
    platform: str, *, cuda: str | None, linux: str, glibc: str, macos: str
) -> tuple[VirtualPackage, ...]:
    """The virtual packages a target declares, sorted by name."""
    os_name, arch = PLATFORMS[platform]
    declared = [VirtualPackage("__archspec", "1", arch)]
    if os_name == "linux":
        declared += [
            VirtualPackage("__unix", "0"),
            VirtualPackage("__linux", linux),
            VirtualPackage("__glibc", glibc),
        ]
    elif os_name == "osx":
        declared += [VirtualPackage("__unix", "0"), VirtualPackage("__osx", macos)]
    else:
        declared.append(VirtualPackage("__win", "0"))
    if cuda is not None:
        declared.append(VirtualPackage("__cuda", cuda))
    return tuple(sorted(declared))
