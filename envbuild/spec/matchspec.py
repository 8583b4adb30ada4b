"""Match specs without a solver: the package name of ``"python >=3.9"`` and the like.

Full parsing is rattler's (``envbuild.lock.conda.match_spec_name``); this is the cheap part that
fast paths need without importing it.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^\s*(?:[A-Za-z0-9_.\-/:]+::)?([A-Za-z0-9_][A-Za-z0-9_.\-]*)")


def package_name(spec: str) -> str | None:
    """The (lower-cased) package name a match spec starts with, or None when it has none."""
    match = _NAME.match(spec)
    return match.group(1).lower() if match else None
