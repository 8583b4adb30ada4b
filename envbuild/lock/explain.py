"""The resolver's errors, worded for the user: a target that cannot be solved alone, and a
package no version (or build) of which suits every target that must share it.

Pure functions over what the search recorded; ``resolve`` raises what they return.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from envbuild.errors import ConsistencyError, SolveError
from envbuild.lock.conda import sort_versions, version_key
from envbuild.lock.lockfile import Target

#: Versions listed when a requirement matches none of them.
SHOWN_VERSIONS = 8

_BLAME = re.compile(r"cannot be (installed|fulfilled)")
_MISSING = re.compile(r"No candidates were found for (.+?)\.?\s*$", re.MULTILINE)
_PREFIXES = ("Cannot solve the request because of:", "the constraint")
_EXCLUDED = re.compile(r"the constraint (cuda-version|cudatoolkit) <0a0 cannot be fulfilled")


@dataclass
class Failure:
    """Why one node of the search found no consistent lock: the package it branched on, what
    each target of its group held there, which pins each target could not take (with the
    solver's explanation), and what went wrong below the pins every target took."""

    package: str
    kind: Literal["version", "build"]
    #: target -> its version ("2.0.2"), or "version build" for a build disagreement
    chosen: Mapping[Target, str]
    refused: dict[Target, list[str]] = field(default_factory=dict)
    explanations: dict[Target, str] = field(default_factory=dict)
    #: (pin every target took, the failure under it)
    deeper: list[tuple[str, Failure]] = field(default_factory=list)
    #: "linux-64: 2.0, 1.0; osx-arm64: 0.9": the holders' platforms share no version
    unavailable: str | None = None
    #: the invariant's complaint where nothing disagreed but the lock is not consistent
    violations: tuple[str, ...] = ()

    def refuse(self, target: Target, choice: str, error: SolveError) -> None:
        self.refused.setdefault(target, []).append(choice)
        if error.details:
            self.explanations[target] = error.details

    def headline(self, describe: Callable[[Target], str]) -> str:
        """One line: the package, each target with its roles and hardware, what it chose and
        what it could not take (the versions newer than its own choice it was offered are
        implied by "chose" and not listed)."""
        if self.violations:
            return f"the variants cannot share one environment: {self.violations[0]}"
        if self.unavailable is not None:
            shown = ", ".join(f"{t} has {v}" for t, v in sorted(self.chosen.items()))
            return (
                f"{self.package}: {shown}; no version of {self.package} is available on every "
                "platform: list it under allow-platform-divergence in the spec to accept this"
            )
        if not self.refused and self.deeper:
            choice, below = self.deeper[0]
            return f"with {self.package} {choice}: {below.headline(describe)}"
        parts = []
        for target in sorted(self.chosen):
            chose = self.chosen[target]
            text = f"{describe(target)} chose {chose}"
            refused = [v for v in self.refused.get(target, []) if not _newer(v, chose, self.kind)]
            if refused:
                text += f", cannot take {', '.join(refused)}"
            parts.append(text)
        what = "version" if self.kind == "version" else "build"
        return f"{self.package}: no {what} suits every target that must share it: " + "; ".join(
            parts
        )

    def details(self) -> str | None:
        """The solver's explanations, then what failed below each pin every target took."""
        lines = [f"{t}: {text}" for t, text in sorted(self.explanations.items())]
        if self.unavailable:
            lines.append(f"versions offered per platform: {self.unavailable}")
        lines += list(self.violations[1:] if self.violations else ())
        for choice, below in self.deeper:
            lines.append(f"with {self.package} {choice}: {below.headline(str)}")
        return "\n".join(lines) or None

    def error(self, describe: Callable[[Target], str]) -> ConsistencyError:
        return ConsistencyError(self.headline(describe), details=self.details())


def _newer(candidate: str, chose: str, kind: str) -> bool:
    if kind != "version":
        return False
    return bool(version_key(candidate) > version_key(chose))


def missing_spec(details: str | None) -> str | None:
    """The requirement that matched no package at all, from a solver explanation."""
    match = _MISSING.search(details or "")
    return match.group(1).strip() if match else None


def excluded_cuda(details: str | None) -> bool:
    """Whether the solver failed on a CPU variant's exclusion of the CUDA runtime."""
    return bool(_EXCLUDED.search(details or ""))


def no_match(spec: str, name: str, platform: str, offered: Iterable[str]) -> str:
    """``nothing matches 'numpy <1.20' on linux-64: the channels have numpy 2.0.2, 1.26.4``."""
    versions = list(reversed(sort_versions(offered)))
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
    missing = missing_spec(details)
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


def unavailable_everywhere(offered: Mapping[str, Iterable[str]]) -> str | None:
    """The listing of versions per platform when the platforms share none, else None."""
    keyed = {p: {version_key(v) for v in versions} for p, versions in offered.items()}
    if len(keyed) < 2 or set.intersection(*keyed.values()):
        return None
    return "; ".join(
        f"{p}: {', '.join(sort_versions(v)) or 'none'}" for p, v in sorted(offered.items())
    )
