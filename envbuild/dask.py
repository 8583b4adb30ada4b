"""The Dask guard: one lock in every process of a cluster, checked when they connect.

Since distributed 2023.4.0 the scheduler deserializes task graphs, so a client or worker from
another environment fails in the middle of a job with ``Error during deserialization of the
task graph``. This module stops that at connect time:

    dask scheduler --preload envbuild.dask
    dask worker tcp://scheduler:8786 --preload envbuild.dask
    envbuild.dask.check(client)          # in the client, before any graph is sent

- Every process says what it runs: its envbuild stamp (``PREFIX/etc/envbuild/stamp.json``:
  lock, variant, platform) and, for the fallback, the versions of its installed packages.
  A worker sends this with its registration (``startup_information``).
- The scheduler refuses a worker whose stamp belongs to another lock: it closes it with a
  reason that names both locks and variants, and logs one line. Different variants of one
  lock are compatible: that is what variants are for. A worker without a stamp (an
  environment envbuild did not make) is compared package by package: every package both
  hold must have one version (the CUDA runtime aside).
- ``check(client)`` asks the scheduler (one RPC, no code shipped) for the identities of the
  scheduler and every worker and raises ``EnvironmentMismatch`` naming who differs and how.
  Workers that join later are checked by the scheduler as they join.
- Fails closed: an identity is read strictly (``read_identity``: plain mappings and short
  one-line strings, bounded in size) before anything looks at it. A worker whose identity
  cannot be read is refused like any other, the reason starting ``unreadable identity:``;
  the scheduler hands clients only what it read, and ``check`` reads that again.

Standalone by design: the standard library plus distributed, so that it can be copied into an
environment or image (``envbuild env`` and ``envbuild image`` do) and loaded by name.
A refused worker gets no task: the scheduler takes it out of scheduling before it yields to
anything else, and ignores the worker's own status reports (``running``) until it has left.
The guard is a consistency check, not authentication: a worker that copies a valid identity
gets in.

May import: (nothing of envbuild)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Under "distributed", so that the scheduler and workers format and show it as their own.
logger = logging.getLogger("distributed.envbuild")

STAMP = Path("etc") / "envbuild" / "stamp.json"
IDENTITY_KEY = "envbuild"
HANDLER = "envbuild_identities"
#: Packages whose versions differ between CUDA variants by design (checked by stamp, not here).
CUDA_RUNTIME = frozenset({"cuda-version", "cudatoolkit", "cuda-cudart", "cuda-cudart_linux-64"})
#: Seconds a refused worker has to leave before the scheduler removes it.
LEAVE_SECONDS = 5.0
#: Bounds on an identity: far above any real environment, low enough that reading one stays
#: cheap and a message naming its parts stays short.
MAX_FIELDS = 32
MAX_PACKAGES = 10_000
MAX_TEXT = 256  # a lock digest, a target, a package name or version
MAX_PATH = 4096  # the prefix
MAX_ROLES = 8
#: Refusals the scheduler remembers (reported by ``check``), newest last.
MAX_REFUSED = 100


class EnvironmentMismatch(RuntimeError):
    """Processes of one cluster run different environments."""


class UnreadableIdentity(ValueError):
    """What a process sent as its identity cannot be read; the message says why (never
    quoting the value)."""


@functools.cache
def identity() -> dict[str, Any]:
    """What this process runs: its stamp (lock, variant, ...) and its installed packages."""
    stamp: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        found = json.loads((Path(sys.prefix) / STAMP).read_text(encoding="utf-8"))
        if isinstance(found, dict):
            stamp = found
    return {
        "lock": stamp.get("lock"),
        "variant": stamp.get("variant"),
        "target": stamp.get("target"),
        "roles": stamp.get("roles"),
        "prefix": sys.prefix,
        "python": platform.python_version(),
        "packages": _packages(),
    }


def _packages() -> dict[str, str]:
    """name -> version of the environment's conda packages (conda-meta) and, as
    ``pypi:NAME``, of the distributions pip or uv installed beside them (their INSTALLER is
    not conda); where there is no conda-meta, of every Python distribution."""
    packages: dict[str, str] = {}
    for record in sorted((Path(sys.prefix) / "conda-meta").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(record.read_text(encoding="utf-8"))
            if isinstance(found, dict) and "name" in found and "version" in found:
                packages[str(found["name"])] = str(found["version"])
    if packages:
        for installer in sorted(Path(sys.prefix).glob("lib/python3*/site-packages/*/INSTALLER")):
            with contextlib.suppress(OSError, ValueError):
                if installer.read_text(encoding="utf-8").strip() in ("", "conda"):
                    continue
                stem = installer.parent.name.removesuffix(".dist-info")
                name, _, version = stem.rpartition("-")
                if name and installer.parent.name.endswith(".dist-info"):
                    packages["pypi:" + name.replace("_", "-").lower()] = version
        return packages
    from importlib import metadata

    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            packages[name.lower()] = distribution.version
    return packages


# --- reading what another process sent ----------------------------------------------------------

_KINDS = {str: "a string", bytes: "bytes", bool: "a boolean", int: "a number", float: "a number"}
_KINDS |= {list: "a list", tuple: "a list", dict: "a mapping", set: "a set", type(None): "nothing"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), "an object")


def _is_text(value: object, limit: int = MAX_TEXT) -> bool:
    return type(value) is str and len(value) <= limit and value.isprintable()


def _text(value: object, what: str, limit: int = MAX_TEXT) -> str:
    """``value`` if it is a one-line string of at most ``limit`` characters."""
    if type(value) is not str:
        raise UnreadableIdentity(f"{what} is {_kind(value)}, not a string")
    if len(value) > limit:
        raise UnreadableIdentity(f"{what} has {len(value)} characters (at most {limit})")
    if not value.isprintable():
        raise UnreadableIdentity(f"{what} holds control characters")
    return value


def _read(found: object) -> dict[str, Any] | None:
    if found is None:
        return None
    if type(found) is not dict:
        raise UnreadableIdentity(f"{_kind(found)}, not a mapping")
    if len(found) > MAX_FIELDS:
        raise UnreadableIdentity(f"{len(found)} fields (at most {MAX_FIELDS})")
    read: dict[str, Any] = {}
    for field in ("lock", "variant", "target", "prefix", "python"):
        value = found.get(field)
        limit = MAX_PATH if field == "prefix" else MAX_TEXT
        read[field] = None if value is None else _text(value, f"'{field}'", limit)
    roles = found.get("roles")
    if roles is not None:
        if type(roles) not in (list, tuple) or len(roles) > MAX_ROLES:
            raise UnreadableIdentity(f"'roles' is {_kind(roles)}, not a list of a few names")
        roles = [_text(role, "a role") for role in roles]
    read["roles"] = roles
    packages = found.get("packages")
    if type(packages) is not dict:
        raise UnreadableIdentity(f"'packages' is {_kind(packages)}, not a mapping")
    if len(packages) > MAX_PACKAGES:
        raise UnreadableIdentity(f"{len(packages)} packages (at most {MAX_PACKAGES})")
    for name, version in packages.items():
        if not (
            type(name) is str  # the common case first, in one test: this runs for every package
            and type(version) is str
            and len(name) <= MAX_TEXT
            and len(version) <= MAX_TEXT
            and name.isprintable()
            and version.isprintable()
        ):
            _text(version, f"the version of package {_text(name, 'a package name')!r}")
    read["packages"] = packages
    return read


def read_identity(found: object) -> dict[str, Any] | None:
    """What a process sent as its identity, read strictly; None when it sent none.

    A mapping of the fields ``identity()`` writes (others are ignored): ``packages`` a mapping of
    package name to version, the rest strings or nothing (``roles`` a list of them); every
    string one line, and everything bounded (``MAX_*``). Anything else raises
    UnreadableIdentity, and only that.
    """
    try:
        return _read(found)
    except UnreadableIdentity:
        raise
    except Exception:  # objects a comm unpickled, with methods of their own that raise
        raise UnreadableIdentity("it holds objects that cannot be compared") from None


def _sent_by(state: Any) -> dict[str, Any] | None:
    """The identity a worker sent with its registration (``WorkerState.extra``), read."""
    extra = getattr(state, "extra", None)
    if type(extra) is not dict:
        raise UnreadableIdentity(f"its startup information is {_kind(extra)}, not a mapping")
    return read_identity(extra.get(IDENTITY_KEY))


def describe(who: str, found: Mapping[str, Any] | None) -> str:
    """``worker tcp://...: lock sha256:abc… (cuda-12.4/linux-64)`` for messages."""
    if not found:
        return f"{who} (no envbuild identity: started without --preload envbuild.dask)"
    if found.get("lock"):
        return f"{who} runs lock {str(found['lock'])[:19]}… ({found.get('target')})"
    return f"{who} runs an environment without an envbuild stamp ({found.get('prefix')})"


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """How ``theirs`` differs from ``mine``; empty when they may work together.

    One lock (by stamp): compatible whatever the variants. Otherwise, package by package:
    every package both hold must have one version (the CUDA runtime aside).
    """
    if mine.get("lock") and theirs.get("lock"):
        if mine["lock"] == theirs["lock"]:
            return []
        return ["another lock: every role must run the same one"]
    ours, other = mine.get("packages") or {}, theirs.get("packages") or {}
    found = []
    for name in sorted(set(ours) & set(other)):
        if name in CUDA_RUNTIME or ours[name] == other[name]:
            continue
        found.append(f"{name} {other[name]} (expected {ours[name]})")
    if not found and not (ours.keys() & other.keys()):
        found.append("no package to compare: one side lists none")
    return found


# --- the scheduler --------------------------------------------------------------------------------


def _plugin_class() -> type:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class EnvbuildGuard(SchedulerPlugin):  # type: ignore[misc]
        """Refuses workers from another environment as they join."""

        name = "envbuild-guard"

        def __init__(self) -> None:
            self.mine = identity()
            self.refused: dict[str, list[str]] = {}
            self.join_seconds: collections.deque[float] = collections.deque(maxlen=50)
            self.pending: set[asyncio.Future[None]] = set()
            #: Refused workers still connected: kept out of scheduling (see ``dask_setup``).
            self.held: set[str] = set()

        def add_worker(self, scheduler: Any, worker: str) -> None:
            # Synchronous, so that the scheduler runs it before it yields to anything that
            # could give the worker a task; and it never raises: distributed would log the
            # error and keep the worker.
            started = time.perf_counter()
            who = f"worker {worker}"
            try:
                theirs = _sent_by(scheduler.workers.get(worker))
            except UnreadableIdentity as exc:
                problems = [f"unreadable identity: {exc}"]
            else:
                problems = (
                    differences(self.mine, theirs) if theirs else ["it loads no envbuild guard"]
                )
                who = describe(who, theirs) if problems else who
            self.join_seconds.append(time.perf_counter() - started)
            if problems:
                self.refuse(scheduler, worker, who, problems)

        def refuse(self, scheduler: Any, worker: str, who: str, problems: list[str]) -> None:
            reason = f"envbuild: {who}; the scheduler {describe('', self.mine).strip()}: "
            reason += "; ".join(problems)
            self.refused[worker] = problems
            while len(self.refused) > MAX_REFUSED:
                del self.refused[next(iter(self.refused))]
            self.held.add(worker)
            logger.warning("refused %s", reason.removeprefix("envbuild: "))
            stimulus = f"envbuild-refused-{time.time()}"
            # No more tasks for it from now on, then ask it to leave, saying why (it logs the
            # reason and its nanny goes with it); remove it anyway if it has not left soon.
            try:
                scheduler.handle_worker_status_change("closing_gracefully", worker, stimulus)
                scheduler.worker_send(worker, {"op": "close", "reason": reason[:2000]})
            except Exception:  # gone already, or its comm broke: removed below all the same
                logger.exception("envbuild guard: could not ask %s to leave", worker)

            async def remove_if_still_there() -> None:
                await asyncio.sleep(LEAVE_SECONDS)
                if worker in scheduler.workers:
                    await scheduler.remove_worker(worker, stimulus_id=stimulus, close=False)

            task = asyncio.ensure_future(remove_if_still_there())
            self.pending.add(task)  # keep it alive until it is done
            task.add_done_callback(self.pending.discard)

        def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
            self.held.discard(worker)

        def status_change(self, handler: Any) -> Any:
            """The scheduler's ``worker-status-change`` handler, deaf to held workers: a
            worker announces itself ``running`` right after it registers, which would undo
            its refusal until it has left."""

            def worker_status_change(worker: str, **kwargs: Any) -> Any:
                if worker not in self.held:
                    return handler(worker=worker, **kwargs)
                return None

            return worker_status_change

    return EnvbuildGuard


def _identities_handler(scheduler: Any, guard: Any) -> Any:
    def identities(comm: Any = None) -> dict[str, Any]:
        # What the guard read, never what the workers sent: plain data, whatever they sent.
        workers: dict[str, Any] = {}
        unreadable: dict[str, str] = {}
        for address, state in scheduler.workers.items():
            try:
                workers[address] = _sent_by(state)
            except UnreadableIdentity as exc:
                unreadable[address] = str(exc)
        return {
            "scheduler": guard.mine,
            "workers": workers,
            "unreadable": unreadable,
            "refused": dict(guard.refused),
            "join_seconds": list(guard.join_seconds),
        }

    return identities


# --- the client ----------------------------------------------------------------------------------


def check(client: Any, *, timeout: float = 30) -> dict[str, Any]:
    """Compare this client, the scheduler and every worker; EnvironmentMismatch names who
    differs and how. Returns the identities it compared."""
    # A scheduler without the guard has no such handler: it answers nothing (None).
    found = client.sync(client.scheduler.envbuild_identities, callback_timeout=timeout)
    return compare(identity(), found)


def compare(mine: Mapping[str, Any], found: object) -> dict[str, Any]:
    """``check`` without the call: ``found`` is the scheduler's answer, read as strictly as
    the scheduler reads a worker. Raises EnvironmentMismatch, and nothing else."""
    if type(found) is not dict or "scheduler" not in found:
        raise EnvironmentMismatch(
            "the scheduler does not load the envbuild guard: start it with "
            "`dask scheduler --preload envbuild.dask`"
        )
    try:
        problems = _problems(mine, found)
    except Exception:  # objects a comm unpickled, with methods of their own that raise
        problems = ["the scheduler's answer holds objects that cannot be compared"]
    if problems:
        others = "processes do" if len(problems) != 1 else "process does"
        raise EnvironmentMismatch(
            f"{describe('this client', mine)}, but {len(problems)} other {others} not: "
            + "; ".join(problems)
        )
    return dict(found)


def _problems(mine: Mapping[str, Any], found: dict[Any, Any]) -> list[str]:
    problems = []
    workers, unreadable = found.get("workers"), found.get("unreadable", {})
    if type(workers) is not dict or type(unreadable) is not dict:
        problems.append("the scheduler's list of workers is unreadable")
        workers, unreadable = {}, {}
    sent = [("scheduler", found["scheduler"])]
    for address in sorted(a for a in workers if _is_text(a)):
        sent.append((f"worker {address}", workers[address]))
    for who, theirs in sent:
        try:
            read = read_identity(theirs)
        except UnreadableIdentity as exc:
            problems.append(f"{who}: unreadable identity: {exc}")
            continue
        if read is None:
            problems.append(describe(who, None))
        elif found_here := differences(mine, read):
            problems.append(f"{describe(who, read)}: {', '.join(found_here)}")
    for address, why in unreadable.items():  # what the scheduler could not read, and why
        who = f"worker {address}" if _is_text(address) else "a worker"
        why = f": {why}" if _is_text(why, MAX_PATH) else ""
        problems.append(f"{who}: unreadable identity{why}")
    problems += ["a worker with an unreadable address"] * sum(not _is_text(a) for a in workers)
    return problems


# --- preload entry points ----------------------------------------------------------------------


def dask_setup(server: Any) -> None:
    """``--preload envbuild.dask``: on a scheduler, the guard; on a worker, its identity."""
    if hasattr(server, "add_plugin") and hasattr(server, "handlers") and hasattr(server, "workers"):
        guard = _plugin_class()()
        server.add_plugin(guard)
        server.handlers[HANDLER] = _identities_handler(server, guard)
        status = server.stream_handlers["worker-status-change"]
        server.stream_handlers["worker-status-change"] = guard.status_change(status)
        logger.info("envbuild guard: %s", describe("the scheduler", guard.mine))
    elif hasattr(server, "startup_information"):
        server.startup_information[IDENTITY_KEY] = lambda worker: identity()
        logger.info("envbuild guard: %s", describe("this worker", identity()))
