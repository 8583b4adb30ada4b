"""Where envbuild keeps what it downloads: ``$ENVBUILD_CACHE_DIR`` or ``~/.cache/envbuild``.

``pkgs/`` holds extracted packages (only archives envbuild verified ever reach it), and
``repodata/`` the channels' metadata rattler fetched. Nothing is written elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The folder envbuild caches under."""
    if os.environ.get("ENVBUILD_CACHE_DIR"):
        return Path(os.environ["ENVBUILD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "envbuild"


def package_cache() -> Path:
    """Extracted packages."""
    return cache_root() / "pkgs"


def repodata_cache() -> Path:
    """Channel metadata."""
    return cache_root() / "repodata"
