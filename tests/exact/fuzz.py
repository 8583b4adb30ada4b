"""The differential fuzz run: ``python -m tests.exact.fuzz --cases 2000 --seed 1 --jobs 2``.

Prints one line per failing case as it is found, then the counts (cases, false refusals,
dominated, violations, wrong errors, reference-undecided, unsolvable, reference missed,
seconds) and the failing seeds. Exit status 1 when any case failed.

``--replay SEED`` (or ``A``, ``B``, ``C`` for issue 18's shapes) runs single cases and shows
the case, the reference's Pareto set and envbuild's lock; ``--keep DIR`` keeps each case's
channel, spec and lock under DIR/SEED.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from tests.exact.differential import FAILURE_KINDS, Verdict, run_case
from tests.exact.reference import MAX_COMBINATIONS, describe_lock
from tests.exact.universe import SHAPES, Case, case_seed, generate


class CaseTimeout(BaseException):
    """A case ran past --case-timeout (a BaseException: the adapter must not catch it)."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise CaseTimeout


def _case(token: str) -> Case:
    if token.upper() in SHAPES:
        return SHAPES[token.upper()]()
    return generate(int(token))


def _summary(verdict: Verdict) -> dict[str, Any]:
    return {
        "label": verdict.case.label,
        "seed": verdict.case.seed,
        "failures": verdict.lines(),
        "kinds": sorted(verdict.failures),
        "status": verdict.reference.status,
        "undecided": verdict.undecided,
        "missed": verdict.reference_missed,
        "seconds_reference": verdict.seconds_reference,
        "seconds_envbuild": verdict.envbuild.seconds,
        "solves": verdict.reference.solves,
    }


def judge(case: Case, keep: Path | None, max_combinations: int, timeout: int) -> dict[str, Any]:
    """Run one case in a folder of its own (removed unless kept)."""
    name = str(case.seed) if case.seed is not None else case.label.replace(" ", "-")
    folder = keep / name if keep else Path(tempfile.mkdtemp(prefix="exact-"))
    folder.mkdir(parents=True, exist_ok=True)
    if timeout:
        signal.alarm(timeout)
    try:
        return _summary(run_case(case, folder, max_combinations))
    except CaseTimeout:
        return {
            "label": case.label,
            "seed": case.seed,
            "failures": [f"{case.label}: wrong error: no answer within {timeout} s (a hang?)"],
            "kinds": ["wrong error"],
            "status": "timeout",
            "undecided": False,
            "missed": False,
            "seconds_reference": 0.0,
            "seconds_envbuild": float(timeout),
            "solves": 0,
        }
    finally:
        signal.alarm(0)
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _worker(
    seeds: Sequence[int],
    keep: Path | None,
    max_combinations: int,
    timeout: int,
    queue: multiprocessing.Queue[dict[str, Any]],
) -> None:
    signal.signal(signal.SIGALRM, _alarm)
    for seed in seeds:
        queue.put(judge(generate(seed), keep, max_combinations, timeout))
    queue.close()
    queue.join_thread()
    # rattler's runtime threads can race interpreter shutdown (README, Known limits)
    os._exit(0)


def run(
    seeds: Sequence[int], jobs: int, keep: Path | None, max_combinations: int, timeout: int
) -> Iterator[dict[str, Any]]:
    """Every case's summary, as the cases finish (in no fixed order with jobs > 1)."""
    if jobs <= 1:
        signal.signal(signal.SIGALRM, _alarm)
        for seed in seeds:
            yield judge(generate(seed), keep, max_combinations, timeout)
        return
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(seeds[i::jobs], keep, max_combinations, timeout, queue),
            daemon=True,
        )
        for i in range(jobs)
    ]
    for worker in workers:
        worker.start()
    for _ in seeds:
        yield queue.get()
    for worker in workers:
        worker.join()


def _replay(tokens: Sequence[str], keep: Path | None, max_combinations: int) -> int:
    failed = 0
    for token in tokens:
        case = _case(token)
        folder = Path(tempfile.mkdtemp(prefix="exact-")) if keep is None else keep / token
        folder.mkdir(parents=True, exist_ok=True)
        verdict = run_case(case, folder, max_combinations)
        ref = verdict.reference
        print(f"== {case.label} ({folder})")
        print(case.describe())
        print(
            f"reference: {ref.status}, {len(ref.candidates)} candidates, {ref.solves} solves, "
            f"{ref.combinations} pin assignments over {', '.join(ref.pinned) or 'nothing'}"
        )
        for why in ref.unsolvable:
            print(f"  unsolvable: {why}")
        for lock in ref.pareto:
            print(f"  pareto: {describe_lock(lock)}")
        outcome = verdict.envbuild
        print(f"envbuild: {outcome.status} (exit {outcome.exit_code}) {outcome.message}")
        if verdict.envbuild_lock is not None:
            print(f"  lock: {describe_lock(verdict.envbuild_lock)}")
        for line in verdict.lines():
            print(f"FAIL {line}")
        failed += bool(verdict.failures)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.exact.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="master seed of the run")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep every case's folder under this one")
    parser.add_argument("--replay", nargs="+", metavar="SEED", help="run these cases only")
    parser.add_argument("--max-combinations", type=int, default=MAX_COMBINATIONS)
    parser.add_argument("--case-timeout", type=int, default=120, help="seconds; 0: none")
    args = parser.parse_args(argv)
    os.environ.setdefault("ENVBUILD_CACHE_DIR", tempfile.mkdtemp(prefix="exact-cache-"))
    if args.replay:
        return _replay(args.replay, args.keep, args.max_combinations)

    seeds = [case_seed(args.seed, i) for i in range(args.cases)]
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    failing: dict[str, list[int]] = {kind: [] for kind in FAILURE_KINDS}
    undecided: list[int] = []
    seconds_reference = seconds_envbuild = 0.0
    for summary in run(seeds, args.jobs, args.keep, args.max_combinations, args.case_timeout):
        counts["cases"] += 1
        counts[summary["status"]] += 1
        counts["undecided"] += summary["undecided"]
        if summary["undecided"]:
            undecided.append(summary["seed"])
        counts["reference missed"] += summary["missed"]
        seconds_reference += summary["seconds_reference"]
        seconds_envbuild += summary["seconds_envbuild"]
        for kind in summary["kinds"]:
            counts[kind] += 1
            failing[kind].append(summary["seed"])
        for line in summary["failures"]:
            print(f"FAIL {line}", flush=True)
    seconds = time.perf_counter() - started
    print(
        f"cases {counts['cases']}  false refusals {counts['false refusal']}  "
        f"dominated {counts['dominated']}  violations {counts['violation']}  "
        f"wrong errors {counts['wrong error']}  undecided {counts['undecided']}  "
        f"unsolvable {counts['unsolvable']}  reference missed {counts['reference missed']}  "
        f"seconds {seconds:.1f} (per case: reference {seconds_reference / max(1, len(seeds)):.3f}, "
        f"envbuild {seconds_envbuild / max(1, len(seeds)):.3f}; jobs {args.jobs})"
    )
    for kind, found in failing.items():
        if found:
            print(f"{kind}: {' '.join(str(s) for s in sorted(found))}")
    if undecided:
        print(f"undecided (not failed): {' '.join(str(s) for s in sorted(undecided))}")
    return 1 if any(failing.values()) else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # rattler's runtime threads can race interpreter shutdown (README, Known limits)
    os._exit(code)
