"""``envbuild lock``: spec -> one consistent lock, and the checks that a lock is current."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from envbuild.errors import ChannelError, LockStaleError, SelectionError
from envbuild.lockfile import (
    LOCK_FILE_NAME,
    Lock,
    LockedPackage,
    LockedRole,
    LockedTarget,
    Target,
    local_path,
    read_lock,
    write_lock,
)
from envbuild.progress import SilentReporter
from envbuild.spec import ROLES, SpecFile, load_spec
from envbuild.variants import (
    Variant,
    derive_variants,
    target_virtual_packages,
)

if TYPE_CHECKING:
    from envbuild.resolve import Plan, Reporter


@dataclass(frozen=True)
class LockOutcome:
    """What ``lock`` did."""

    path: Path
    #: "up-to-date": nothing solved; "written": the file changed; "unchanged": solved, same bytes
    status: Literal["up-to-date", "written", "unchanged"]
    lock: Lock
    solves: int
    seconds: float


def default_lock_path(spec_path: Path) -> Path:
    """``envbuild.lock`` beside the spec."""
    return spec_path.parent / LOCK_FILE_NAME


def plan_for(spec_file: SpecFile) -> Plan:
    """The resolver's plan for a spec: every target with its specs and virtual packages."""
    from envbuild.conda import match_spec_name
    from envbuild.resolve import Plan, TargetRequest

    spec = spec_file.spec
    channels = spec_file.channel_urls()
    variants = derive_variants(spec)
    platforms = sorted({p for v in variants for p in v.platforms})
    for index, url in enumerate(channels):
        if url.startswith("file://"):
            _check_local_channel(spec_file, index, url, platforms)
    requests = tuple(
        TargetRequest(
            target=target,
            specs=variant.specs,
            virtual_packages=tuple(
                str(vp) for vp in target_virtual_packages(spec, variant, target.platform)
            ),
            roles=variant.roles,
            constraints=variant.constraints,
            cuda=variant.cuda,
        )
        for variant in variants
        for target in variant.targets()
    )
    return Plan(
        channels=tuple(channels),
        requests=requests,
        gpu_dependencies=frozenset(match_spec_name(s) for s in spec.gpu_dependencies),
        allow_platform_divergence=frozenset(spec.allow_platform_divergence),
    )


def _check_local_channel(spec_file: SpecFile, index: int, url: str, platforms: list[str]) -> None:
    """A local channel must exist and index every subdir solved (rattler's own error about it
    varies with what the process did before and may not name the channel)."""
    where = f"{spec_file.where(('channels', index))}: channel '{spec_file.spec.channels[index]}'"
    folder = local_path(url)
    if folder is None or not folder.is_dir():
        raise ChannelError(f"{where} does not exist ({url})")
    for subdir in [*platforms, "noarch"]:
        if not (folder / subdir / "repodata.json").is_file():
            raise ChannelError(
                f"{where} has no {subdir}/repodata.json ({folder}); index it with conda-index "
                "or rattler-index"
            )


def _roles(spec_file: SpecFile, variants: Sequence[Variant]) -> tuple[LockedRole, ...]:
    spec = spec_file.spec
    roles = []
    for variant in variants:
        for name in variant.roles:
            gpu = spec.role(name).gpu
            roles.append(
                LockedRole(
                    name=name,
                    variant=variant.name,
                    platforms=tuple(spec.role_platforms(name)),
                    cuda=gpu.cuda if gpu else None,
                    compute_capability=gpu.compute_capability if gpu else None,
                    gpus=gpu.count if gpu else 0,
                )
            )
    return tuple(sorted(roles, key=lambda r: ROLES.index(r.name)))


def _check_update_names(names: Sequence[str], previous: Lock | None, spec_file: SpecFile) -> None:
    from envbuild.conda import match_spec_name

    known = {p.name for t in previous.targets for p in t.packages} if previous else set()
    known |= {match_spec_name(s) for s in spec_file.spec.dependencies}
    for name in names:
        if name not in known:
            raise SelectionError(f"--update {name}: no package '{name}' in the lock or the spec")


def lock(
    spec_path: Path,
    lock_path: Path | None = None,
    *,
    update: Sequence[str] = (),
    update_all: bool = False,
    reporter: Reporter | None = None,
) -> LockOutcome:
    """Lock the spec at ``spec_path``; an unchanged spec solves nothing and writes nothing.

    ``update`` names packages that may move to newer versions (with what must move with
    them); every other package keeps its locked version where the channels still allow it.
    ``update_all`` ignores the existing lock entirely.
    """
    started = time.perf_counter()
    spec_file = load_spec(spec_path, full=False)
    lock_path = lock_path or default_lock_path(spec_path)
    previous = None if update_all or not lock_path.exists() else read_lock(lock_path)
    if previous is not None and previous.spec_hash == spec_file.content_hash and not update:
        return LockOutcome(lock_path, "up-to-date", previous, 0, time.perf_counter() - started)

    spec_file.check_match_specs()
    if update:
        _check_update_names(update, previous, spec_file)
    import asyncio  # only now: an up-to-date lock must return fast

    from envbuild.resolve import resolve

    plan = plan_for(spec_file)
    reporter = reporter or SilentReporter()
    reporter.note(f"solving {len(plan.requests)} targets of {spec_path}")
    preferred: dict[Target, list[LockedPackage]] = {}
    if previous is not None:
        moving = set(update)
        preferred = {
            t.target: [p for p in t.packages if p.name not in moving] for t in previous.targets
        }
    resolution = asyncio.run(resolve(plan, reporter, preferred=preferred))
    variants = derive_variants(spec_file.spec)
    new_lock = Lock(
        name=spec_file.spec.name,
        spec_hash=spec_file.content_hash,
        channels=plan.channels,
        roles=_roles(spec_file, variants),
        targets=tuple(
            LockedTarget(
                target=request.target,
                specs=request.specs,
                virtual_packages=request.virtual_packages,
                packages=resolution.packages[request.target],
            )
            for request in plan.requests
        ),
        gpu_dependencies=tuple(sorted(plan.gpu_dependencies)),
    )
    written = write_lock(lock_path, new_lock)
    return LockOutcome(
        lock_path,
        "written" if written else "unchanged",
        new_lock,
        resolution.solves,
        time.perf_counter() - started,
    )


def _stale(spec_file: SpecFile, current: Lock, lock_path: Path) -> LockStaleError | None:
    if current.spec_hash == spec_file.content_hash:
        return None
    spec_file.check_match_specs()  # a broken spec is a spec error, not a stale lock
    return LockStaleError(
        f"{lock_path} is stale: {spec_file.path} changed since it was locked; run `envbuild lock`"
    )


def check(spec_path: Path, lock_path: Path | None = None) -> Lock:
    """The lock, when it matches the spec; LockStaleError otherwise."""
    spec_file = load_spec(spec_path, full=False)
    lock_path = lock_path or default_lock_path(spec_path)
    if not lock_path.exists():
        spec_file.check_match_specs()
        raise LockStaleError(f"{lock_path}: no lock file yet; run `envbuild lock`")
    current = read_lock(lock_path)
    stale = _stale(spec_file, current, lock_path)
    if stale:
        raise stale
    return current


def freshness(spec_path: Path, current: Lock) -> bool | None:
    """Whether ``current`` matches the spec at ``spec_path`` (None: no spec to compare with)."""
    if not spec_path.exists():
        return None
    return load_spec(spec_path, full=False).content_hash == current.spec_hash


def fresh_lock(spec_path: Path, lock_path: Path | None = None) -> Lock:
    """The lock for commands that use it (export, env, verify).

    Refused when the spec beside it changed since it was locked. A lock shipped without its
    spec (into an image build, say) is used as it is: it is the single source of truth.
    """
    lock_path = lock_path or default_lock_path(spec_path)
    current = read_lock(lock_path)
    if spec_path.exists():
        stale = _stale(load_spec(spec_path, full=False), current, lock_path)
        if stale:
            raise stale
    return current
