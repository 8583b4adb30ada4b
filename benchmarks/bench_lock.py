"""Benchmark `envbuild lock` on a conda-forge-shaped channel (>= 50,000 records, >= 3,000 names).

Whole commands as a user runs them, fresh processes, paired rounds in rotating order,
min/median/max (see paired.py):

1. Headline: ``envbuild lock --update-all`` for the dask-gpu example (3 targets) against the
   strongest alternative, a Python script that imports rattler and solves the same targets
   (same specs, virtual packages and constraints) concurrently with one Gateway, writing
   nothing. Goal: at most 1.2x.
2. Alignment: the same example plus a package whose newest version exists for linux-64 only,
   so the osx-arm64 client holds every platform back: extra solves and time against (1).
3. Fast paths: an unchanged spec (goal <= 0.3 s, zero solves), ``lock --check`` (<= 0.3 s),
   ``--help`` (<= 0.2 s), with ``python -c pass`` for scale.
4. ``--against REV``: (1) with REV's envbuild (a git worktree), paired with this one, to show
   before/after on the same machine in the same minutes.

Usage: python benchmarks/bench_lock.py [--runs N] [--against REV]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from forge import write_forge
from paired import Command, Goals, prepare, ratios, rounds, spread

from envbuild.lock.locking import plan_for
from envbuild.spec.file import load_spec
from envbuild.testing.channel import Package

REPO = Path(__file__).parent.parent
ENVBUILD = str(Path(sys.executable).parent / "envbuild")

RAW_SOLVES = r"""
import asyncio, json, os, sys
from rattler import BuildString, Gateway, GenericVirtualPackage, PackageName, Subdir, Version, solve

plan = json.load(open(sys.argv[1]))

async def main():
    gateway = Gateway()
    async def one(target):
        declared = [GenericVirtualPackage(PackageName(n), Version(v), BuildString(b))
                    for n, v, b in (vp.split("=") for vp in target["virtual_packages"])]
        return await solve(plan["channels"], target["specs"], gateway=gateway,
                           platforms=[Subdir(target["platform"]), Subdir("noarch")],
                           virtual_packages=declared, constraints=target["constraints"])
    await asyncio.gather(*(one(t) for t in plan["targets"]))
    sys.stdout.flush()
    os._exit(0)  # as envbuild does: no interpreter shutdown right after solving

asyncio.run(main())
"""

#: Newest only for linux-64: the osx-arm64 client makes every platform take 1.0.
LINUX_ONLY_NEWEST = (
    Package(name="fastmath", version="1.0", build="h0", subdir="linux-64"),
    Package(name="fastmath", version="1.0", build="h0", subdir="osx-arm64"),
    Package(name="fastmath", version="2.0", build="h0", subdir="linux-64"),
)


def raw_plan(spec: Path) -> dict[str, object]:
    plan = plan_for(load_spec(spec))
    return {
        "channels": list(plan.channels),
        "targets": [
            {
                "platform": r.target.platform,
                "specs": list(r.specs),
                "virtual_packages": list(r.virtual_packages),
                "constraints": list(r.constraints),
            }
            for r in plan.requests
        ],
    }


def solves(spec: Path) -> int:
    """How many solves ``envbuild lock --update-all`` takes for ``spec``."""
    done = subprocess.run(
        [ENVBUILD, "lock", "--json", "--update-all", "-f", str(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    count: int = json.loads(done.stdout)["solves"]
    return count


def worktree(rev: str, folder: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(folder), rev], check=True
    )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--against", metavar="REV", help="also time REV's envbuild, paired")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-lock-"))
    goals = Goals()
    prepare()
    old_tree: Path | None = None
    try:
        started = time.perf_counter()
        _, records, names = write_forge(work / "channel", extra=LINUX_ONLY_NEWEST)
        print(f"channel: {records} records, {names} names ({time.perf_counter() - started:.1f} s)")
        example = (REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text()
        # The benchmark channel models conda-forge's linux-64 and osx-arm64 only.
        example = example.replace("platforms: [linux-64, linux-aarch64]", "platforms: [linux-64]")
        spec = work / "envbuild.yaml"
        spec.write_text(example.replace("[../../build/demo-channel]", "[./channel]"))
        aligning = work / "aligning" / "envbuild.yaml"
        aligning.parent.mkdir()
        aligning.write_text(
            example.replace("[../../build/demo-channel]", "[../channel]").replace(
                "  - numpy\n", "  - numpy\n  - fastmath\n"
            )
        )
        plan = raw_plan(spec)
        (work / "plan.json").write_text(json.dumps(plan))
        (work / "raw.py").write_text(RAW_SOLVES)

        plain, aligned = solves(spec), solves(aligning)
        cases = {
            "envbuild": Command([ENVBUILD, "lock", "-q", "--update-all"], cwd=work),
            "raw": Command([sys.executable, "raw.py", "plan.json"], cwd=work),
            "aligning": Command([ENVBUILD, "lock", "-q", "--update-all"], cwd=aligning.parent),
        }
        if args.against:
            old_tree = worktree(args.against, work / "old")
            for name, tree in (("this tree", REPO), (args.against, old_tree)):
                cases[name] = Command(
                    [sys.executable, "-m", "envbuild", "lock", "-q", "--update-all"],
                    cwd=work,
                    env={"PYTHONPATH": str(tree)},
                )
        times = rounds(cases, args.runs)
        ratio = ratios(times["envbuild"], times["raw"])
        print(f"{args.runs} paired rounds, rotating order; whole commands, fresh processes:")
        goals.record("envbuild lock --update-all", spread(times["envbuild"]))
        goals.record("raw rattler, concurrent solves", spread(times["raw"]))
        goals.record(
            "  ratio per round (goal <= 1.2x)",
            spread(ratio, "x"),
            statistics.median(ratio) <= 1.2,
        )
        goals.record(
            "solves: example / with alignment",
            f"{plain} / {aligned} ({aligned - plain} extra for alignment; "
            f"{len(plan_for(load_spec(spec)).requests)} targets)",
        )
        goals.record(
            "  time with alignment / without",
            spread(ratios(times["aligning"], times["envbuild"]), "x"),
        )
        if args.against:
            goals.record(f"before ({args.against})", spread(times[args.against]))
            goals.record("after (this tree)", spread(times["this tree"]))
            goals.record(
                "  after / before per round",
                spread(ratios(times["this tree"], times[args.against]), "x"),
            )

        fast = {
            "unchanged": Command([ENVBUILD, "lock", "-q"], cwd=work),
            "check": Command([ENVBUILD, "lock", "--check", "-q"], cwd=work),
            "help": Command([ENVBUILD, "--help"], cwd=work),
            "bare": Command([sys.executable, "-c", "pass"], cwd=work),
        }
        fast_times = rounds(fast, args.runs * 2)
        status = json.loads(
            subprocess.run(
                [ENVBUILD, "lock", "--json"], cwd=work, check=True, capture_output=True, text=True
            ).stdout
        )
        for name, label, goal in (
            ("unchanged", f"envbuild lock, unchanged ({status['solves']} solves)", 0.3),
            ("check", "envbuild lock --check", 0.3),
            ("help", "envbuild --help", 0.2),
        ):
            median = statistics.median(fast_times[name])
            met = median <= goal and (name != "unchanged" or status["solves"] == 0)
            goals.record(f"{label} (goal <= {goal} s)", spread(fast_times[name]), met)
        goals.record("python -c pass (for scale)", spread(fast_times["bare"]))
        return goals.finish()
    finally:
        if old_tree is not None:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)],
                check=False,
            )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
