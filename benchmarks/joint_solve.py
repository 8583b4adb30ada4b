"""Measure design (b) of issue 7: ONE joint solve of every target, against envbuild's design
(a), per-target solves aligned by pins.

The joint problem for the dask-gpu example on the benchmark channel: each target's records
(its platform and noarch) renamed ``tN-NAME`` into one channel, its declared virtual packages
turned into ordinary records, and for every package name a ``link-NAME`` package per version
that each ``tN-NAME`` record of that version depends on, so the targets that hold NAME must
share its version (the CUDA runtime is left unlinked). Build links would add more. The cost
of (b) is writing that channel and one solve over it; the cost of (a) is the concurrent
solves. Both are timed in this process, alternating, min/median/max.

Usage: python benchmarks/joint_solve.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from forge import write_forge
from paired import spread

from envbuild.lock.locking import plan_for
from envbuild.spec.file import load_spec
from envbuild.spec.matchspec import package_name
from envbuild.testing.pypi_index import without_pypi

REPO = Path(__file__).parent.parent
RUNTIME = {"cuda-version", "cuda-cudart", "cuda-cudart_linux-64", "cudatoolkit"}


def renamed(spec: str, prefix: str) -> str:
    name = package_name(spec) or spec
    return prefix + spec.strip() if spec.strip().lower().startswith(name) else spec


def joint_channel(channel: Path, plan: Any, out: Path) -> tuple[list[str], int]:
    """Write the joint problem's channel; return its root specs and its record count."""
    records: dict[str, dict[str, Any]] = {}
    roots: list[str] = []
    versions: dict[str, set[str]] = {}
    for index, request in enumerate(plan.requests):
        prefix = f"t{index}-"
        for subdir in (request.target.platform, "noarch"):
            data = json.loads((channel / subdir / "repodata.json").read_text())
            for fn, record in data["packages"].items():
                name = record["name"]
                entry = {
                    **record,
                    "name": prefix + name,
                    "subdir": "linux-64",
                    "depends": [renamed(d, prefix) for d in record.get("depends", [])],
                    "constrains": [renamed(d, prefix) for d in record.get("constrains", [])],
                }
                entry.pop("noarch", None)
                if name not in RUNTIME:
                    entry["depends"].append(f"link-{name} =={record['version']}")
                    versions.setdefault(name, set()).add(record["version"])
                records[prefix + fn] = entry  # rattler reads name-version-build from it
        for declared in request.virtual_packages:
            name, version, build = declared.split("=")
            records[f"{prefix}{name}-{version}-{build}.tar.bz2"] = {
                "name": prefix + name,
                "version": version,
                "build": build,
                "build_number": 0,
                "subdir": "linux-64",
                "depends": [],
            }
        roots += [renamed(s, prefix) for s in request.specs]
        roots += [
            renamed(c, prefix).replace(" <0a0", " ==0.0.0.0.0.0") for c in request.constraints
        ]
    for name, seen in versions.items():
        for version in seen:
            records[f"link-{name}-{version}-0.tar.bz2"] = {
                "name": f"link-{name}",
                "version": version,
                "build": "0",
                "build_number": 0,
                "subdir": "linux-64",
                "depends": [],
            }
    for subdir, packages in (("linux-64", records), ("noarch", {})):
        (out / subdir).mkdir(parents=True, exist_ok=True)
        (out / subdir / "repodata.json").write_text(
            json.dumps({"info": {"subdir": subdir}, "packages": packages, "packages.conda": {}})
        )
    return roots, len(records)


async def per_target(plan: Any) -> float:
    from rattler import (
        BuildString,
        Gateway,
        GenericVirtualPackage,
        PackageName,
        Subdir,
        Version,
        solve,
    )

    started = time.perf_counter()
    gateway = Gateway()

    async def one(request: Any) -> Any:
        declared = [
            GenericVirtualPackage(PackageName(n), Version(v), BuildString(b))
            for n, v, b in (vp.split("=") for vp in request.virtual_packages)
        ]
        return await solve(
            list(plan.channels),
            list(request.specs),
            gateway=gateway,
            platforms=[Subdir(request.target.platform), Subdir("noarch")],
            virtual_packages=declared,
            constraints=list(request.constraints),
        )

    await asyncio.gather(*(one(r) for r in plan.requests))
    return time.perf_counter() - started


async def joint(channel: Path, plan: Any, work: Path) -> tuple[float, float, int, int]:
    from rattler import Gateway, Subdir, solve

    started = time.perf_counter()
    roots, count = joint_channel(channel, plan, work)
    written = time.perf_counter()
    solved = await solve(
        [work.as_uri()],
        [r for r in roots if "==0.0.0.0.0.0" not in r],
        gateway=Gateway(),
        platforms=[Subdir("linux-64"), Subdir("noarch")],
        virtual_packages=[],
        constraints=[r for r in roots if "==0.0.0.0.0.0" in r],
    )
    return time.perf_counter() - started, time.perf_counter() - written, count, len(solved)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, records, _ = write_forge(work / "channel")
        spec = work / "envbuild.yaml"
        spec.write_text(
            without_pypi((REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text())
            .replace("[../../build/demo-channel]", "[./channel]")
            # The benchmark channel models conda-forge's linux-64 and osx-arm64 only.
            .replace("platforms: [linux-64, linux-aarch64]", "platforms: [linux-64]")
        )
        plan = plan_for(load_spec(spec))
        a_times, b_times, b_solves, sizes = [], [], [], []
        for number in range(args.runs):
            for design in "ab" if number % 2 == 0 else "ba":
                if design == "a":
                    a_times.append(asyncio.run(per_target(plan)))
                else:
                    seconds, solving, count, solved = asyncio.run(
                        joint(work / "channel", plan, work / f"joint-{number}")
                    )
                    b_times.append(seconds)
                    b_solves.append(solving)
                    sizes.append((count, solved))
        print(f"channel: {records} records; {len(plan.requests)} targets")
        print(f"(a) per-target solves, concurrent:    {spread(a_times)}")
        print(f"(b) joint problem, write + one solve: {spread(b_times)}")
        print(f"    of which the one solve:       {spread(b_solves)}")
        print(f"    joint problem: {sizes[0][0]} records, {sizes[0][1]} in the solution")
        ratio = sorted(b / a for a, b in zip(a_times, b_times, strict=True))
        print(f"    (b) / (a) per round: {spread(ratio, 'x')}")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
