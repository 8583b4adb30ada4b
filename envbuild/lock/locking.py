"""``envbuild lock``: spec -> one consistent lock, and the checks that a lock is current."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from envbuild.errors import ChannelError, LockStaleError, SelectionError, SpecError
from envbuild.files import exclusive
from envbuild.lock.lockfile import (
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
from envbuild.lock.progress import SilentReporter
from envbuild.lock.wheels import LockedWheel
from envbuild.spec import ROLES, SPEC_FILE_NAME
from envbuild.spec.file import SpecFile, digest, load_spec, read_spec_bytes
from envbuild.spec.matchspec import dependency_name

if TYPE_CHECKING:
    from envbuild.lock.resolve import Plan, Reporter
    from envbuild.lock.variants import Variant


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
    from envbuild.lock.resolve import Plan, TargetRequest
    from envbuild.lock.variants import derive_variants, target_virtual_packages

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
        gpu_dependencies=frozenset(dependency_name(s) for s in spec.gpu_dependencies),
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
    known = {p.name for t in previous.targets for p in t.packages} if previous else set()
    known |= {w.name for t in previous.targets for w in t.wheels} if previous else set()
    known |= {dependency_name(s) for s in spec_file.spec.dependencies}
    if spec_file.spec.uses_pypi:
        from envbuild.spec.fields import pypi_name

        known |= {pypi_name(s) for s in spec_file.spec.pypi_dependencies}
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
    ``update_all`` ignores the existing lock entirely. Two ``lock`` runs on one lock file take
    turns.
    """
    started = time.perf_counter()
    data = read_spec_bytes(spec_path)
    lock_path = lock_path or default_lock_path(spec_path)
    reporter = reporter or SilentReporter()
    folder = lock_path.parent
    what = f"another `envbuild lock` in {folder}"
    # The lock's folder is made when missing (--lockfile locks/envbuild.lock), and removed
    # again when nothing was written into it.
    with exclusive.hold(folder, what, reporter.note, make=True) as made:
        try:
            outcome = _lock_held(spec_path, data, lock_path, update, update_all, reporter)
        except BaseException:
            if made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    return dataclasses.replace(outcome, seconds=time.perf_counter() - started)


def _lock_held(
    spec_path: Path,
    data: bytes,
    lock_path: Path,
    update: Sequence[str],
    update_all: bool,
    reporter: Reporter,
) -> LockOutcome:
    """``lock``'s work, while it holds the lock file's folder."""
    previous = None if update_all or not lock_path.exists() else read_lock(lock_path)
    if previous is not None and not update and previous.spec_file_sha256 == digest(data):
        return LockOutcome(lock_path, "up-to-date", previous, 0, 0.0)
    spec_file = load_spec(spec_path, data=data)
    if previous is not None and previous.spec_hash == spec_file.content_hash and not update:
        return LockOutcome(lock_path, "up-to-date", previous, 0, 0.0)
    spec_file.check_match_specs(_match_spec_name)
    if update:
        _check_update_names(update, previous, spec_file)
    new_lock, solves = _resolve(spec_file, previous, update, reporter, digest(data))
    written = write_lock(lock_path, new_lock)
    return LockOutcome(lock_path, "written" if written else "unchanged", new_lock, solves, 0.0)


def _resolve(
    spec_file: SpecFile,
    previous: Lock | None,
    update: Sequence[str],
    reporter: Reporter,
    file_digest: str,
) -> tuple[Lock, int]:
    """Solve the spec into a new lock (keeping ``previous``'s versions where it can)."""
    import asyncio  # only now: an up-to-date lock must return fast

    from envbuild.lock.resolve import resolve
    from envbuild.lock.variants import derive_variants

    plan = plan_for(spec_file)
    reporter.note(f"solving {len(plan.requests)} targets of {spec_file.path}")
    preferred: dict[Target, list[LockedPackage]] = {}
    if previous is not None:
        moving = set(update)
        preferred = {
            t.target: [p for p in t.packages if p.name not in moving] for t in previous.targets
        }
    resolution = asyncio.run(resolve(plan, reporter, preferred=preferred))
    wheels, pypi_specs, pypi_solves = _lock_pypi(
        spec_file, plan, resolution.packages, previous, update, reporter
    )
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
                wheels=wheels.get(request.target, ()),
                pypi_specs=pypi_specs.get(request.target, ()),
            )
            for request in plan.requests
        ),
        gpu_dependencies=tuple(sorted(plan.gpu_dependencies)),
        spec_file_sha256=file_digest,
    )
    return new_lock, resolution.solves + pypi_solves


def _lock_pypi(
    spec_file: SpecFile,
    plan: Plan,
    packages: dict[Target, tuple[LockedPackage, ...]],
    previous: Lock | None,
    update: Sequence[str],
    reporter: Reporter,
) -> tuple[dict[Target, tuple[LockedWheel, ...]], dict[Target, tuple[str, ...]], int]:
    """The targets' PyPI wheels, after their conda solve (envbuild.lock.pypiplan)."""
    if not spec_file.spec.uses_pypi:
        return {}, {}, 0
    from envbuild.lock.pypi import Sources
    from envbuild.lock.pypiplan import lock_pypi

    reporter.note(f"resolving the PyPI requirements of {len(plan.requests)} targets")
    indexes, find_links = spec_file.pypi_locations()
    sources = Sources(None if indexes is None else tuple(indexes), tuple(find_links))
    moving = set(update)
    preferred = {
        t.target: {w.name: w.version for w in t.wheels if w.name not in moving}
        for t in (previous.targets if previous else ())
    }
    requests = [(r.target, r.cuda, r.virtual_packages) for r in plan.requests]
    return lock_pypi(spec_file.spec, sources, requests, packages, preferred)


def _stale(spec_file: SpecFile, current: Lock, lock_path: Path) -> LockStaleError | None:
    if current.spec_hash == spec_file.content_hash:
        return None
    spec_file.check_match_specs(_match_spec_name)  # a broken spec is a spec error, not a stale lock
    return LockStaleError(
        f"{lock_path} is stale: {spec_file.path} changed since it was locked; run `envbuild lock`"
    )


def _current(spec_path: Path, data: bytes, lock: Lock, lock_path: Path) -> Lock:
    """``lock`` when it matches the spec (by the file's bytes, else by its content)."""
    if lock.spec_file_sha256 != digest(data):
        stale = _stale(load_spec(spec_path, data=data), lock, lock_path)
        if stale:
            raise stale
    return lock


def check(spec_path: Path, lock_path: Path | None = None) -> Lock:
    """The lock, when it matches the spec; LockStaleError otherwise."""
    data = read_spec_bytes(spec_path)
    lock_path = lock_path or default_lock_path(spec_path)
    if not lock_path.exists():
        load_spec(spec_path, match_specs=_match_spec_name, data=data)  # reported as such
        raise LockStaleError(f"{lock_path}: no lock file yet; run `envbuild lock`")
    return _current(spec_path, data, read_lock(lock_path), lock_path)


@dataclass(frozen=True)
class LockInUse:
    """The lock a command works from, and whether it matches its spec."""

    lock: Lock
    path: Path
    #: None: used without its spec (``--lockfile`` alone)
    fresh: bool | None
    spec: Path | None = None


def locate(spec_path: Path | None, lock_path: Path | None, *, stale_ok: bool = False) -> LockInUse:
    """The lock for commands that use one (show, export, env, verify, ...).

    ``-f SPEC`` must exist, and a stale lock is refused (unless ``stale_ok``: ``show`` says so
    instead). ``--lockfile LOCK`` alone uses the lock without its spec: it is the single
    source of truth (shipped into an image build, say). Neither: ``./envbuild.yaml``.
    """
    if spec_path is None and lock_path is not None:
        return LockInUse(read_lock(lock_path), lock_path, None)
    if spec_path is None:
        spec_path = Path(SPEC_FILE_NAME)
        if not spec_path.exists():
            raise SpecError(
                f"{spec_path}: no spec here: pass -f SPEC, or --lockfile LOCK to use a lock "
                "without its spec"
            )
    data = read_spec_bytes(spec_path)
    lock_path = lock_path or default_lock_path(spec_path)
    current = read_lock(lock_path)
    try:
        return LockInUse(_current(spec_path, data, current, lock_path), lock_path, True, spec_path)
    except LockStaleError:
        if not stale_ok:
            raise
        return LockInUse(current, lock_path, False, spec_path)


def _match_spec_name(text: str) -> str:
    """The solver's full parse of a match spec (loads rattler)."""
    from envbuild.lock.conda import match_spec_name

    return match_spec_name(text)
