"""One differential case end to end: write it, run the reference and envbuild, judge.

Verdicts, per case (a case may have several failures):

- ``false refusal``: envbuild refused (ConsistencyError, exit 8) where the reference built a
  consistent lock;
- ``wrong error``: any other outcome the reference contradicts: another envbuild error (or a
  crash) where a lock exists, or a code other than 7 where a target cannot be solved alone;
- ``violation``: envbuild wrote a lock that the checker finds inconsistent or invalid;
- ``dominated``: envbuild's lock is dominated by a reference candidate.

``undecided`` (the reference's search was cut short and found nothing) and ``reference
missed`` (envbuild locked consistently where the complete search found nothing) are counted,
never failed on.
"""

from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.exact.invariant import TargetKey, read_lock, violations
from tests.exact.reference import (
    MAX_COMBINATIONS,
    Lock,
    Reference,
    describe_lock,
    dominates,
    newer_entries,
    reference,
)
from tests.exact.universe import Case, write_case

FAILURE_KINDS = ("false refusal", "wrong error", "violation", "dominated")


@dataclass(frozen=True)
class EnvbuildOutcome:
    """What ``envbuild lock`` did: "locked", "refused" (exit 8), "error" or "crash"."""

    status: str
    exit_code: int
    message: str = ""
    seconds: float = 0.0


def run_envbuild_lock(spec: Path, lock: Path) -> EnvbuildOutcome:
    """THE adapter: ``envbuild lock --update-all`` in-process (the one place envbuild is used).

    ``envbuild.lock.locking`` since the layout moved into subpackages; ``envbuild.locking``
    before it.
    """
    try:
        locking = importlib.import_module("envbuild.lock.locking")
        progress = importlib.import_module("envbuild.lock.progress")
    except ModuleNotFoundError as exc:
        if exc.name not in ("envbuild.lock", "envbuild.lock.locking", "envbuild.lock.progress"):
            raise
        locking = importlib.import_module("envbuild.locking")
        progress = importlib.import_module("envbuild.progress")
    from envbuild.errors import ConsistencyError, EnvbuildError

    started = time.perf_counter()
    try:
        locking.lock(spec, lock, update_all=True, reporter=progress.SilentReporter())
    except ConsistencyError as exc:
        return EnvbuildOutcome("refused", exc.exit_code, str(exc), time.perf_counter() - started)
    except EnvbuildError as exc:
        return EnvbuildOutcome("error", exc.exit_code, str(exc), time.perf_counter() - started)
    except Exception as exc:  # a crash is exit 1 on the command line
        text = "".join(traceback.format_exception_only(exc)).strip()
        return EnvbuildOutcome("crash", 1, text, time.perf_counter() - started)
    return EnvbuildOutcome("locked", 0, "", time.perf_counter() - started)


@dataclass
class Verdict:
    """The judgement of one case."""

    case: Case
    reference: Reference
    envbuild: EnvbuildOutcome
    envbuild_lock: Lock | None = None
    #: kind -> one-line message
    failures: dict[str, str] = field(default_factory=dict)
    reference_missed: bool = False
    seconds_reference: float = 0.0

    @property
    def undecided(self) -> bool:
        return self.reference.undecided

    def lines(self) -> list[str]:
        return [f"{self.case.label}: {kind}: {text}" for kind, text in self.failures.items()]


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dominance_line(better: Lock, worse: Lock) -> str:
    parts = []
    for name, (old, new, targets) in newer_entries(better, worse).items():
        where = targets[0] if len(targets) == 1 else f"{len(targets)} targets"
        parts.append(f"{name} {old} -> {new} ({where})")
    return "reference has " + ", ".join(parts) + "; nothing older: " + describe_lock(better)


def _same(a: Lock, b: Lock) -> bool:
    def versions(lock: Lock) -> dict[TargetKey, dict[str, str]]:
        return {k: {n: r.version for n, r in recs.items()} for k, recs in lock.items()}

    return versions(a) == versions(b)


def run_case(case: Case, folder: Path, max_combinations: int = MAX_COMBINATIONS) -> Verdict:
    """Write ``case`` under ``folder``, run both sides, and judge."""
    spec = write_case(case, folder)
    started = time.perf_counter()
    ref = reference(case, folder / "channel", max_combinations)
    seconds_reference = time.perf_counter() - started
    lock_path = folder / "envbuild.lock"
    outcome = run_envbuild_lock(spec, lock_path)
    verdict = Verdict(case, ref, outcome, seconds_reference=seconds_reference)
    failures = verdict.failures
    said = f"exit {outcome.exit_code}: {_short(outcome.message)}"

    if outcome.status == "locked":
        view = read_lock(lock_path, spec)
        verdict.envbuild_lock = view.targets
        problems = violations(view, validity=True)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            failures["violation"] = problems[0] + more
        elif ref.status == "complete" and not ref.candidates:
            verdict.reference_missed = True
        better = next((c for c in ref.pareto if dominates(c, view.targets)), None)
        if better is not None:
            own = (
                " (it is every target's own choice, no alignment)"
                if _same(ref.alone, view.targets)
                else ""
            )
            failures["dominated"] = _dominance_line(better, view.targets) + own
        if ref.status == "unsolvable" and not problems:
            failures["wrong error"] = "locked, but a target cannot be solved alone: " + "; ".join(
                ref.unsolvable
            )
    elif ref.status == "unsolvable":
        if outcome.exit_code != 7:
            failures["wrong error"] = f"envbuild {said}; expected exit 7: " + _short(
                "; ".join(ref.unsolvable)
            )
    elif ref.candidates:
        best = describe_lock(ref.pareto[0])
        kind = "false refusal" if outcome.status == "refused" else "wrong error"
        failures[kind] = f"envbuild {said}; reference locks: {best}"
    elif outcome.status == "crash":
        failures["wrong error"] = f"envbuild crashed: {_short(outcome.message)}"
    elif ref.status == "complete" and outcome.exit_code != 8:
        failures["wrong error"] = f"envbuild {said}; expected exit 8: every target solves alone"
    return verdict
