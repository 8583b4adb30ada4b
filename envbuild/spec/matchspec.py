"""Match specs without a solver: the package name of ``"python >=3.9"`` and the like.

The one place envbuild takes a package name (or the rest of the spec) from a match spec.
Validating a spec fully is the solver's job (``envbuild.lock.conda.match_spec_name``, which
rattler's strict parser backs); this is the cheap part that fast paths and the consistency
checks need without importing it.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^\s*(?:[A-Za-z0-9_.\-/:]+::)?([A-Za-z0-9_][A-Za-z0-9_.\-]*)")


def package_name(spec: str) -> str | None:
    """The (lower-cased) package name a match spec starts with, or None when it has none."""
    match = _NAME.match(spec)
    return match.group(1).lower() if match else None


def dependency_name(spec: str) -> str:
    """``"python >=3.9"`` -> ``"python"`` (a record's dependency, which always names one)."""
    return package_name(spec) or spec.strip().lower()


def split_spec(spec: str) -> tuple[str, str]:
    """``"python >=3.9"`` -> ``("python", ">=3.9")``; ``"*"`` when nothing follows the name."""
    match = _NAME.match(spec)
    if not match:
        return spec.strip().lower(), "*"
    return match.group(1).lower(), spec[match.end() :].strip() or "*"
