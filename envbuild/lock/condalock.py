"""conda-lock's file format, written with conda-lock's own models (the only module that
imports conda_lock; it costs ~0.6 s to import, so only ``export --format conda-lock`` does)."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from envbuild.lock.lockfile import Lock, LockedTarget
from envbuild.spec.matchspec import split_spec


def _dependencies(depends: Sequence[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for spec in depends:
        name, constraint = split_spec(spec)
        if name.startswith("__"):
            continue  # virtual packages: conda-lock drops them too
        result[name] = f"{result[name]},{constraint}" if name in result else constraint
    return result


def render_conda_lock(lock: Lock, targets: Sequence[LockedTarget], *, source: str) -> str:
    """The body of a conda-lock.yml (format v1 on disk, as conda-lock writes it) for one
    variant's targets."""
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency, Lockfile, LockMeta
    from conda_lock.models.channel import Channel

    packages = [
        LockedDependency(
            name=package.name,
            version=package.version,
            manager="conda",
            platform=target.platform,
            dependencies=_dependencies(package.depends),
            url=package.url,
            hash=HashModel(md5=package.md5, sha256=package.sha256),
            build=package.build,
            categories={"main"},
        )
        for target in targets
        for package in target.packages
    ]
    packages += [  # PyPI wheels: conda-lock installs them with pip after the conda packages
        LockedDependency(
            name=wheel.name,
            version=wheel.version,
            manager="pip",
            platform=target.platform,
            dependencies={},  # every one is locked: nothing is left to resolve
            url=wheel.url,
            hash=HashModel(sha256=wheel.sha256),
            categories={"main"},
        )
        for target in targets
        for wheel in target.wheels
    ]
    content = Lockfile(
        package=packages,
        metadata=LockMeta(
            content_hash={t.platform: lock.spec_hash for t in targets},
            channels=[Channel(url=url, used_env_vars=()) for url in lock.channels],
            platforms=[t.platform for t in targets],
            sources=[source],
        ),
    )
    content.alphasort_inplace()
    return yaml.safe_dump(content.to_v1().dict_for_output(), sort_keys=False)
