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

Standalone by design: the standard library plus distributed, so that it can be copied into an
environment or image (``envbuild env`` and ``envbuild image`` do) and loaded by name.
A closed worker may have received a task in the short gap before it was closed; the GPU
check at container start stays the first line of defence.

May import: (nothing of envbuild)
"""

from __future__ import annotations

import asyncio
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


class EnvironmentMismatch(RuntimeError):
    """Processes of one cluster run different environments."""


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
    """name -> version of the environment's conda packages (conda-meta), or, where there is
    none, of its Python distributions."""
    packages: dict[str, str] = {}
    for record in sorted((Path(sys.prefix) / "conda-meta").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(record.read_text(encoding="utf-8"))
            if isinstance(found, dict) and "name" in found and "version" in found:
                packages[str(found["name"])] = str(found["version"])
    if packages:
        return packages
    from importlib import metadata

    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            packages[name.lower()] = distribution.version
    return packages


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
            self.join_seconds: list[float] = []
            self.pending: set[asyncio.Future[None]] = set()

        async def add_worker(self, scheduler: Any, worker: str) -> None:
            started = time.perf_counter()
            state = scheduler.workers.get(worker)
            theirs = (getattr(state, "extra", None) or {}).get(IDENTITY_KEY)
            problems = differences(self.mine, theirs) if theirs else ["it loads no envbuild guard"]
            self.join_seconds.append(time.perf_counter() - started)
            if not problems:
                return
            reason = (
                f"envbuild: {describe(f'worker {worker}', theirs)}; the scheduler "
                f"{describe('', self.mine).strip()}: {'; '.join(problems)}"
            )
            self.refused[worker] = problems
            logger.warning("refused %s", reason.removeprefix("envbuild: "))
            stimulus = f"envbuild-refused-{time.time()}"
            # No more tasks for it from now on, then ask it to leave, saying why (it logs the
            # reason and its nanny goes with it); remove it anyway if it has not left soon.
            scheduler.handle_worker_status_change("closing_gracefully", worker, stimulus)
            scheduler.worker_send(worker, {"op": "close", "reason": reason[:2000]})

            async def remove_if_still_there() -> None:
                await asyncio.sleep(LEAVE_SECONDS)
                if worker in scheduler.workers:
                    await scheduler.remove_worker(worker, stimulus_id=stimulus, close=False)

            task = asyncio.ensure_future(remove_if_still_there())
            self.pending.add(task)  # keep it alive until it is done
            task.add_done_callback(self.pending.discard)

    return EnvbuildGuard


def _identities_handler(scheduler: Any, guard: Any) -> Any:
    def identities(comm: Any = None) -> dict[str, Any]:
        return {
            "scheduler": guard.mine,
            "workers": {
                address: (getattr(state, "extra", None) or {}).get(IDENTITY_KEY)
                for address, state in scheduler.workers.items()
            },
            "refused": guard.refused,
            "join_seconds": guard.join_seconds[-50:],
        }

    return identities


# --- the client ----------------------------------------------------------------------------------


def check(client: Any, *, timeout: float = 30) -> dict[str, Any]:
    """Compare this client, the scheduler and every worker; EnvironmentMismatch names who
    differs and how. Returns the identities it compared."""
    # A scheduler without the guard has no such handler: it answers nothing (None).
    found = client.sync(client.scheduler.envbuild_identities, callback_timeout=timeout)
    if not isinstance(found, dict) or "scheduler" not in found:
        raise EnvironmentMismatch(
            "the scheduler does not load the envbuild guard: start it with "
            "`dask scheduler --preload envbuild.dask`"
        )
    mine = identity()
    others = {"scheduler": found["scheduler"]}
    others.update({f"worker {a}": w for a, w in sorted(found["workers"].items())})
    problems = []
    for who, theirs in others.items():
        if theirs is None:
            problems.append(describe(who, None))
        else:
            found_here = differences(mine, theirs)
            if found_here:
                problems.append(f"{describe(who, theirs)}: {', '.join(found_here)}")
    if problems:
        raise EnvironmentMismatch(
            f"{describe('this client', mine)}, but {len(problems)} other process"
            f"{'es' if len(problems) != 1 else ''} do not: " + "; ".join(problems)
        )
    return dict(found)


# --- preload entry points ----------------------------------------------------------------------


def dask_setup(server: Any) -> None:
    """``--preload envbuild.dask``: on a scheduler, the guard; on a worker, its identity."""
    if hasattr(server, "add_plugin") and hasattr(server, "handlers") and hasattr(server, "workers"):
        guard = _plugin_class()()
        server.add_plugin(guard)
        server.handlers[HANDLER] = _identities_handler(server, guard)
        logger.info("envbuild guard: %s", describe("the scheduler", guard.mine))
    elif hasattr(server, "startup_information"):
        server.startup_information[IDENTITY_KEY] = lambda worker: identity()
        logger.info("envbuild guard: %s", describe("this worker", identity()))
