"""The verdict: which visible GPUs can run the role, and why not. Pure functions over what
NVML reported (``envbuild.gpucheck.nvml``) and the environment's visibility variables."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .requirements import (
    CANNOT_JUDGE,
    COMPUTE_CAPABILITY,
    DRIVER_FLOOR_BY_CUDA_MAJOR,
    DRIVER_TOO_OLD,
    NO_DRIVER,
    OK,
    TOO_FEW_GPUS,
    Requirements,
    fmt,
    shown,
)

_DRIVER_BRANCH = re.compile(r"^(\d{1,5})(\.|$)")


@dataclass(frozen=True)
class Device:
    """One GPU as NVML reports it."""

    index: int
    name: str
    uuid: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class Driver:
    """The NVIDIA driver: its version string and the CUDA version it supports."""

    version: str
    cuda: tuple[int, int]

    @property
    def branch(self) -> int | None:
        """``550`` for ``550.54.15``; None when the version cannot be read."""
        match = _DRIVER_BRANCH.match(self.version)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Survey:
    """What NVML saw: the driver and every device, before visibility filters."""

    driver: Driver
    devices: tuple[Device, ...]


class NoDriverError(Exception):
    """NVML could not be loaded or initialised."""


class MigError(Exception):
    """The visibility variables name MIG instances, which the check cannot judge."""


@dataclass
class GpuResult:
    device: Device
    problems: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """The outcome of a check: per-GPU results, the failure class and its exit code."""

    requirements: Requirements
    mode: str
    driver: Driver | None = None
    gpus: list[GpuResult] = field(default_factory=list)
    problem: str | None = None
    exit_code: int = OK
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == OK


def driver_problem(driver: Driver, runtime: tuple[int, int]) -> str | None:
    """Why ``driver`` cannot run a CUDA ``runtime``, or None when it can."""
    if driver.branch is None:
        return None  # reported on its own (CANNOT_JUDGE)
    if runtime[0] > driver.cuda[0]:
        floor = DRIVER_FLOOR_BY_CUDA_MAJOR[runtime[0]]
        return (
            f"driver {driver.version} supports CUDA {fmt(driver.cuda)}, the image needs "
            f"CUDA {fmt(runtime)}: upgrade the driver to >= {floor}"
        )
    floor = DRIVER_FLOOR_BY_CUDA_MAJOR[runtime[0]]
    if runtime[0] == driver.cuda[0] and driver.branch < floor:
        return (
            f"driver {driver.version} is older than {floor}, the oldest that runs "
            f"CUDA {runtime[0]}.x: upgrade the driver"
        )
    return None


def visible_devices(
    devices: Sequence[Device], env: Mapping[str, str]
) -> tuple[list[Device], str | None]:
    """Apply NVIDIA_VISIBLE_DEVICES then CUDA_VISIBLE_DEVICES as CUDA would.

    Returns the devices CUDA would use, in its order, and a note when a filter applied.
    Inside a container the NVIDIA runtime already applied NVIDIA_VISIBLE_DEVICES (NVML then
    sees exactly the listed devices, renumbered from 0), so index entries are only applied
    when NVML sees more devices than the list names.
    """
    visible = list(devices)
    notes = []
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia is not None and nvidia.strip().lower() != "all":
        value = nvidia.strip().lower()
        if value in ("", "none", "void"):  # the container toolkit's "no GPU" values
            visible = []
        else:
            entries = _entries(value, "NVIDIA_VISIBLE_DEVICES")
            applied_by_runtime = len(entries) == len(visible) and all(map(_is_index, entries))
            if not applied_by_runtime:
                visible = _select(visible, entries, stop_at_invalid=False)
        notes.append(f"NVIDIA_VISIBLE_DEVICES={shown(nvidia)}")
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        entries = _entries(cuda, "CUDA_VISIBLE_DEVICES") if cuda.strip() else []
        visible = _select(visible, entries, stop_at_invalid=True)
        notes.append(f"CUDA_VISIBLE_DEVICES={shown(cuda)}")
    return visible, ("; ".join(notes) or None)


def _is_index(entry: str) -> bool:
    return entry.isascii() and entry.isdigit()  # "²".isdigit() is True, int("²") fails


def _entries(value: str, variable: str) -> list[str]:
    """The entries of a visibility variable, each once, in order; MIG instances refused."""
    entries: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        mig_pair = ":" in entry and _is_index(entry.partition(":")[0])  # "0:1": GPU 0, MIG 1
        if entry.upper().startswith("MIG-") or mig_pair:
            raise MigError(f"{variable} names MIG instances ({shown(entry)})")
        if entry and entry not in entries:
            entries.append(entry)
    return entries


def _select(devices: list[Device], entries: list[str], *, stop_at_invalid: bool) -> list[Device]:
    """Devices named by ``entries`` (positions in ``devices`` or UUID prefixes), in order.

    CUDA stops at the first entry it cannot use; the container runtime skips it.
    """
    chosen: list[Device] = []
    for entry in entries:
        found: Device | None = None
        if _is_index(entry.removeprefix("-")):
            position = int(entry)
            if 0 <= position < len(devices):
                found = devices[position]
        elif entry.upper().startswith("GPU-"):
            matches = [d for d in devices if d.uuid.lower().startswith(entry.lower())]
            found = matches[0] if len(matches) == 1 else None
        if found is None:
            if stop_at_invalid:
                break
            continue
        if found not in chosen:
            chosen.append(found)
    return chosen


def evaluate(
    requirements: Requirements,
    survey: Survey | NoDriverError,
    env: Mapping[str, str],
    mode: str = "enforce",
) -> Verdict:
    """Judge what NVML saw (or why it saw nothing) against a role's requirements."""
    verdict = Verdict(requirements=requirements, mode=mode)
    if not requirements.needs_gpu:
        return verdict
    assert requirements.cuda is not None
    if isinstance(survey, NoDriverError):
        verdict.problem = (
            f"no NVIDIA driver found ({survey}): run the container with the NVIDIA runtime "
            "and GPUs attached (docker run --gpus all ..., or runtimeClassName: nvidia on "
            "Kubernetes)"
        )
        verdict.exit_code = NO_DRIVER
        return verdict
    verdict.driver = survey.driver
    try:
        devices, note = visible_devices(survey.devices, env)
    except MigError as mig:
        verdict.problem = (
            f"{mig}: the GPU check does not support MIG and cannot tell which GPU the role "
            "gets; set ENVBUILD_GPU_CHECK=warn to start anyway"
        )
        verdict.exit_code = CANNOT_JUDGE
        return verdict
    if note:
        verdict.notes.append(f"{len(devices)} of {len(survey.devices)} GPUs visible ({note})")
    if survey.driver.branch is None:
        verdict.problem = (
            f"the driver reports version {shown(survey.driver.version)}, which cannot be read: "
            "cannot tell which CUDA runtimes it runs"
        )
        verdict.exit_code = CANNOT_JUDGE
        return verdict
    driver_issue = driver_problem(survey.driver, requirements.cuda)
    for device in devices:
        result = GpuResult(device)
        if driver_issue:
            result.problems.append("driver too old")
        if requirements.compute_capability is not None:
            failed = requirements.compute_capability.failed_clause(device.compute_capability)
            if failed:
                result.problems.append(f"compute capability {failed}")
        verdict.gpus.append(result)
    unusable = sum(1 for g in verdict.gpus if g.problems)
    if driver_issue:
        verdict.problem, verdict.exit_code = driver_issue, DRIVER_TOO_OLD
    elif len(devices) < requirements.gpus:
        verdict.problem = (
            f"{len(devices)} GPU{'s' if len(devices) != 1 else ''} visible, the role needs "
            f"{requirements.gpus}"
        )
        verdict.exit_code = TOO_FEW_GPUS
    elif unusable:
        verdict.problem = f"{unusable} of {len(devices)} GPUs unusable"
        verdict.exit_code = COMPUTE_CAPABILITY
    return verdict


def render(verdict: Verdict) -> list[str]:
    """The human report: a header, one line per GPU, notes, and the verdict."""
    req = verdict.requirements
    lines = [f"envbuild gpu check: {req.describe()}"]
    if verdict.mode == "skip":
        lines.append("envbuild gpu check: skipped (ENVBUILD_GPU_CHECK=skip)")
        return lines
    if not req.needs_gpu:
        lines.append("envbuild gpu check: ok (CPU role)")
        return lines
    width = max((len(g.device.name) for g in verdict.gpus), default=0)
    for gpu in verdict.gpus:
        d, drv = gpu.device, verdict.driver
        assert drv is not None
        status = "ok" if not gpu.problems else "FAIL: " + "; ".join(gpu.problems)
        lines.append(
            f"  GPU {d.index}  {d.name:<{width}}  cc {fmt(d.compute_capability)}  "
            f"driver {drv.version} (CUDA {fmt(drv.cuda)})  {status}"
        )
    lines.extend(f"  note: {n}" for n in verdict.notes)
    if verdict.ok:
        count = len(verdict.gpus)
        lines.append(f"envbuild gpu check: ok ({count} GPU{'' if count == 1 else 's'} usable)")
    elif verdict.mode == "warn":
        lines.append(
            f"envbuild gpu check: FAILED ({verdict.problem}); starting anyway "
            "(ENVBUILD_GPU_CHECK=warn)"
        )
    else:
        lines.append(
            f"envbuild gpu check: FAILED ({verdict.problem}); "
            "set ENVBUILD_GPU_CHECK=warn to start anyway"
        )
    return lines


def to_json(verdict: Verdict) -> dict[str, Any]:
    """The machine-readable report (``--json``)."""
    req = verdict.requirements
    return {
        "role": req.role,
        "variant": req.variant,
        "requirements": {
            "cuda": fmt(req.cuda) if req.cuda else None,
            "compute_capability": str(req.compute_capability) if req.compute_capability else None,
            "gpus": req.gpus if req.needs_gpu else 0,
        },
        "mode": verdict.mode,
        "driver": (
            {"version": verdict.driver.version, "cuda": fmt(verdict.driver.cuda)}
            if verdict.driver
            else None
        ),
        "gpus": [
            {
                **{k: v for k, v in asdict(g.device).items() if k != "compute_capability"},
                "compute_capability": fmt(g.device.compute_capability),
                "ok": not g.problems,
                "problems": g.problems,
            }
            for g in verdict.gpus
        ],
        "notes": verdict.notes,
        "ok": verdict.ok,
        "problem": verdict.problem,
        "exit_code": verdict.exit_code,
    }
