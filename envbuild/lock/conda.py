"""Conda packages through py-rattler: solving, querying, installing, pixi lock files.

The only module that imports rattler (lazily: ``envbuild --help`` must stay fast). The rest
of envbuild sees LockedPackage and plain strings.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envbuild.errors import (
    ChannelError,
    InstallError,
    SolveError,
    UnsafePackageError,
)
from envbuild.lock import isolated
from envbuild.lock.lockfile import LockedPackage

if TYPE_CHECKING:
    from rattler import Gateway, RepoDataRecord


def match_spec_name(text: str) -> str:
    """The package name of a match spec; ValueError explains a spec that does not parse."""
    from rattler import MatchSpec

    try:
        spec = MatchSpec(text, strict=True)
    except Exception as exc:  # rattler raises one class per parse problem
        raise ValueError(f"'{text}' is not a valid match spec: {exc}") from None
    if spec.name is None:
        raise ValueError(f"'{text}' names no package")
    name: str = spec.name.normalized
    return name


@functools.lru_cache(maxsize=1 << 16)
def version_key(text: str) -> Any:
    """A key that orders and equates versions as conda does (``1.0`` equals ``1.0.0``)."""
    from rattler import Version

    return Version(text)


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Distinct versions (by conda's equality, first spelling kept) in conda's order, oldest
    first."""
    distinct: dict[Any, str] = {}
    for version in versions:
        distinct.setdefault(version_key(version), version)
    return sorted(distinct.values(), key=version_key)


def from_rattler(record: RepoDataRecord) -> LockedPackage:
    """A solver record as envbuild stores it; UnsafePackageError for one whose names could
    not be folder names (``name_problem``)."""
    package = LockedPackage.from_dict(json.loads(record.to_json()))
    if why := name_problem(package):
        raise UnsafePackageError(f"package {package.name}-{package.version}-{package.build} {why}")
    return package


def name_problem(package: LockedPackage) -> str | None:
    """Why ``package``'s name, version, build, subdir or file name cannot be used as a
    folder or file name (rattler's package cache files it under NAME-VERSION-BUILD/), e.g.
    ``is unsafe: its build 'x/../../escaped' has a '/'``; None when they all can."""
    fields = {
        "name": package.name,
        "version": package.version,
        "build": package.build,
        "subdir": package.subdir,
        "file name": package.file_name,
    }
    for field, value in fields.items():
        why = None
        if value in ("", ".", ".."):
            why = "is empty, '.' or '..'"
        elif "/" in value or "\\" in value:
            why = "has a '/' or '\\'"
        elif not value.isprintable():
            why = "has a control character"
        if why:
            return f"is unsafe: its {field} {json.dumps(value)} {why}"
    return None


def install_order(packages: Sequence[LockedPackage]) -> list[LockedPackage]:
    """Dependencies before the packages that need them, as rattler (and conda) install them:
    ``PackageRecord.sort_topologically``, which also breaks cycles the way they do."""
    from rattler import PackageRecord

    by_key = {(p.name, p.version, p.build): p for p in packages}
    ordered = PackageRecord.sort_topologically([to_rattler(p) for p in packages])
    return [by_key[(r.name.normalized, str(r.version), str(r.build))] for r in ordered]


def to_rattler(package: LockedPackage) -> RepoDataRecord:
    """A locked package as a rattler record (to install, or to prefer in a solve)."""
    from rattler import BuildString, NoArchType, PackageRecord, RepoDataRecord

    record = PackageRecord(
        name=package.name,
        version=package.version,
        build=BuildString(package.build),
        build_number=package.build_number,
        subdir=package.subdir,
        noarch=NoArchType(package.noarch) if package.noarch else None,  # type: ignore[arg-type]
        depends=list(package.depends),
        constrains=list(package.constrains),
        sha256=bytes.fromhex(package.sha256) if package.sha256 else None,
        md5=bytes.fromhex(package.md5) if package.md5 else None,
        size=package.size,
        license=package.license,
    )
    if package.timestamp is not None:
        record.timestamp = datetime.datetime.fromtimestamp(package.timestamp / 1000, datetime.UTC)
    if package.track_features:
        record.track_features = list(package.track_features)
    return RepoDataRecord(record, package.file_name, package.url, package.channel + "/")


class Solver:
    """Solves targets against channels; one instance shares repodata across solves.

    A process must not begin interpreter shutdown right after a solve:
    rattler's runtime threads may still be dropping Python objects, and the race can abort
    the process after its work is done ("Fatal Python error: PyGILState_Release ...
    finalizing"). Seen here with a script that exits right after three solves: 5 of 150 runs
    crashed; with a 15 ms pause before exit, 0 of 200. The envbuild command therefore ends
    with os._exit() (see envbuild.cli.main).
    """

    def __init__(self) -> None:
        self._gateway: Gateway | None = None

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            from rattler import Gateway

            from envbuild.files.cache import repodata_cache

            self._gateway = Gateway(cache_dir=repodata_cache())
        return self._gateway

    async def solve(
        self,
        channels: Sequence[str],
        specs: Sequence[str],
        platform: str,
        virtual_packages: Sequence[str],
        *,
        constraints: Sequence[str] = (),
        locked: Sequence[LockedPackage] = (),
    ) -> list[LockedPackage]:
        """Solve ``specs`` for ``platform``; SolveError carries the solver's explanation."""
        from rattler import BuildString, GenericVirtualPackage, PackageName, Subdir, Version, solve
        from rattler.exceptions import SolverError

        global _runtime_started
        _runtime_started = True
        declared = []
        for text in virtual_packages:
            name, version, build = text.split("=")
            declared.append(
                GenericVirtualPackage(PackageName(name), Version(version), BuildString(build))
            )
        try:
            records = await solve(
                list(channels),
                list(specs),
                gateway=self.gateway,
                platforms=[Subdir(platform), Subdir("noarch")],
                virtual_packages=declared,
                constraints=list(constraints),
                locked_packages=[to_rattler(p) for p in locked],
            )
        except SolverError as exc:
            raise SolveError("cannot solve", details=str(exc).strip()) from None
        except Exception as exc:
            raise _channel_error(exc, channels) from None
        return sorted((from_rattler(r) for r in records), key=LockedPackage.sort_key)

    async def versions_available(
        self, channels: Sequence[str], platform: str, name: str
    ) -> set[str]:
        """Every version of ``name`` the channels offer for ``platform`` (noarch included)."""
        from rattler import Subdir

        global _runtime_started
        _runtime_started = True
        try:
            found = await self.gateway.query(
                list(channels), [Subdir(platform), Subdir("noarch")], [name], recursive=False
            )
        except Exception as exc:
            raise _channel_error(exc, channels) from None
        return {str(record.version) for records in found for record in records}


def _channel_error(exc: Exception, channels: Sequence[str]) -> Exception:
    """A gateway failure as a ChannelError naming the channel and the root cause."""
    from rattler.exceptions import FetchRepoDataError, GatewayError, InvalidChannelError

    if not isinstance(exc, GatewayError | FetchRepoDataError | InvalidChannelError):
        return exc
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = lines[-1].removeprefix("Caused by: ") if lines else type(exc).__name__
    channel = next((c for c in channels if c.rstrip("/") in text), None)
    if channel is None and len(channels) == 1:
        channel = channels[0]
    where = f"channel {channel}" if channel else f"one of the channels ({', '.join(channels)})"
    return ChannelError(f"cannot read {where}: {cause}", details=text)


def activation_script(prefix: Path, platform: str) -> str:
    """The bash that activates ``prefix`` as conda does: PATH, CONDA_PREFIX, CONDA_SHLVL, and
    the packages' ``etc/conda/activate.d`` scripts (rattler's activation)."""
    from rattler import Subdir
    from rattler.shell import ActivationVariables, Shell, activate

    result = activate(prefix, ActivationVariables(None, []), Shell.bash, Subdir(platform))
    script: str = result.script
    return script


def current_platform() -> str:
    """The conda platform of this machine, e.g. ``linux-64``."""
    from rattler import Subdir

    return str(Subdir.current())


_FETCH_FAILED = re.compile(r"failed to fetch (\S+)")
#: Whether this process has started rattler's runtime (a solve, a query): a fork after that
#: would give the child a runtime without its threads.
_runtime_started = False


def install(
    packages: Sequence[LockedPackage],
    prefix: Path,
    *,
    cache_dir: Path,
    platform: str,
    show_progress: bool,
    reinstall: Collection[str] = (),
    installed_as: str | None = None,
    sources: Mapping[str, Path] | None = None,
) -> None:
    """Install exactly ``packages`` into ``prefix``: missing ones are added, others removed.

    ``installed_as``: the path the environment will have where it runs (an image's
    ``/opt/env``): files land in ``prefix``, and entry points and prefix placeholders name
    ``installed_as``.

    ``reinstall`` names packages to install again although a record for them is there
    (rattler keeps a package whose record was edited as long as its sha256 still matches).

    ``sources``: local copies of remote archives (by sha256), checked and downloaded already
    (``download``): rattler installs from them, and the records keep the channel's url.

    rattler checks the sha256 of what it downloads over HTTP, not of ``file://`` archives:
    callers verify those first (envbuild.env.archives.check_archives).

    rattler runs in a child process (``envbuild.lock.isolated``): when this returns or raises, every
    thread of the install has stopped, so a caller may remove what it made, and this
    process never has rattler's runtime to race at its exit.
    """
    swapped = dict(sources or {})
    records = [_with_source(p, swapped.get(p.sha256)) for p in packages]
    arguments = (records, prefix, cache_dir, platform, show_progress, set(reinstall), installed_as)
    isolated.run(_install_child, arguments, f"installing into {prefix}", fork=_fork_is_safe())
    if swapped:
        _restore_urls(prefix, [p for p in packages if p.sha256 in swapped])


def _with_source(package: LockedPackage, source: Path | None) -> LockedPackage:
    if source is None:
        return package
    return dataclasses.replace(package, url=source.absolute().as_uri())


def _restore_urls(prefix: Path, packages: Sequence[LockedPackage]) -> None:
    """The records of packages installed from local copies say the channel's url."""
    from envbuild.files.atomic import write_atomic

    for package in packages:
        record = prefix / "conda-meta" / f"{package.name}-{package.version}-{package.build}.json"
        try:
            document = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        document["url"] = package.url
        write_atomic(record, json.dumps(document, indent=2) + "\n")


async def _install_child(
    packages: Sequence[LockedPackage],
    prefix: Path,
    cache_dir: Path,
    platform: str,
    show_progress: bool,
    reinstall: set[str],
    installed_as: str | None,
) -> None:
    from rattler import Subdir
    from rattler import install as rattler_install

    try:
        await rattler_install(
            [to_rattler(p) for p in packages],
            target_prefix=prefix,
            cache_dir=cache_dir,
            platform=Subdir(platform),
            show_progress=show_progress,
            reinstall_packages=reinstall,
            alternative_target_prefix=installed_as,
        )
    except Exception as exc:
        text = str(exc).strip()
        failed = _FETCH_FAILED.search(text)
        if "hash mismatch" in text and failed:
            raise InstallError(
                f"{failed.group(1)}: the archive's sha256 does not match the lock; refusing to "
                "install it (the channel changed, or the download is corrupt)",
                details=text,
            ) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise InstallError(f"installing into {prefix} failed: {first}", details=text) from None


def _fork_is_safe() -> bool:
    return isolated.fork_is_safe(_runtime_started)


def download(archives: Sequence[tuple[LockedPackage, Path]]) -> None:
    """Download each package's archive to its path (rattler's client: its retries and the
    channel's credentials; eight at a time); the caller checks their sha256."""
    if archives:
        wanted = [(p.url, path) for p, path in archives]
        isolated.run(
            _download_child,
            (wanted,),
            f"downloading {len(wanted)} packages",
            fork=_fork_is_safe(),
        )


async def _download_child(archives: Sequence[tuple[str, Path]]) -> None:
    import asyncio

    from rattler.networking.client import Client
    from rattler.package_streaming import download_to_path

    client, slots = Client.default_client(), asyncio.Semaphore(8)

    async def one(url: str, path: Path) -> None:
        async with slots:
            try:
                await download_to_path(client, url, path)
            except Exception as exc:
                text = str(exc).strip()
                first = text.splitlines()[0] if text else type(exc).__name__
                raise InstallError(f"cannot download {url}: {first}", details=text) from None

    await asyncio.gather(*(one(url, path) for url, path in archives))


def write_pixi_lock(
    path: Path,
    channels: Sequence[str],
    environments: Mapping[str, Mapping[str, tuple[Sequence[str], Sequence[LockedPackage]]]],
    wheels: Mapping[str, Mapping[str, Sequence[tuple[str, str, str]]]] | None = None,
) -> None:
    """Write a pixi.lock-format file: environment -> platform -> (virtual packages, packages),
    and ``wheels``: environment -> platform -> (name, version, url) of its PyPI packages.

    A lock platform carries its virtual packages, and a CUDA variant declares ``__cuda``
    where the CPU variant does not: each environment gets platforms with what it declares.
    A platform whose virtual packages are the same for every environment keeps its conda name
    (``linux-64``); where they differ, each environment's is named ``SUBDIR-ENVIRONMENT``
    with dots as dashes, as platform names allow (``linux-64-cuda-12-4``), over the same
    subdir, which readers take as the subdir.
    """
    from rattler import LockChannel, LockFile, LockPlatform, Subdir

    declared: dict[str, set[tuple[str, ...]]] = {}
    for by_platform in environments.values():
        for platform, (virtual_packages, _) in by_platform.items():
            declared.setdefault(platform, set()).add(tuple(virtual_packages))
    named: dict[tuple[str, str], LockPlatform] = {}
    for environment, by_platform in sorted(environments.items()):
        for platform, (virtual_packages, _) in sorted(by_platform.items()):
            shared = len(declared[platform]) == 1
            name = platform if shared else f"{platform}-{environment}".replace(".", "-")
            named[(environment, platform)] = LockPlatform(
                name, Subdir(platform), virtual_packages=list(virtual_packages)
            )
    unique = {p.name: p for p in named.values()}
    lock = LockFile([unique[n] for n in sorted(unique)])
    for name, by_platform in environments.items():
        lock.set_channels(name, [LockChannel(c) for c in channels])
        for platform, (_, packages) in by_platform.items():
            for package in packages:
                lock.add_conda_package(name, named[(name, platform)], to_rattler(package))
            for wheel, version, url in (wheels or {}).get(name, {}).get(platform, ()):
                lock.add_pypi_package(name, named[(name, platform)], wheel, version, url)
    lock.to_path(path)


def archive_distributions(archive: Path) -> list[tuple[str, str]]:
    """(name, version) of every Python distribution a conda archive installs: its
    ``*.dist-info`` (and ``*.egg-info``) folders, named as their files say
    (``numpy-2.0.2.dist-info``), read from ``info/paths.json``."""
    from rattler.package import PathsJson

    try:
        paths = PathsJson.from_package_archive(archive).paths
    except Exception as exc:  # rattler raises one class per archive problem
        raise InstallError(f"{archive}: cannot read the archive's paths.json: {exc}") from None
    found = set()
    for entry in paths:
        for part in str(entry.relative_path).split("/")[:-1]:
            if part.endswith((".dist-info", ".egg-info")):
                stem = part.rsplit(".", 1)[0]
                name, _, rest = stem.partition("-")
                version = rest.split("-py")[0] if part.endswith(".egg-info") else rest
                if name and version:
                    found.add((name, version))
    return sorted(found)
