"""Check the GPUs a container landed on against its role's needs, then exec the role's command.

Standalone by design: the standard library plus ``pynvml`` (from the ``nvidia-ml-py``
distribution), imported only when a GPU must be inspected. This file is copied into images and
runs with the environment's python before Dask starts::

    python -m envbuild.gpucheck --compute-capability '>=8.0' --cuda 12.4 [--gpus 2] [--json]
    python -m envbuild.gpucheck [flags] -- dask worker tcp://scheduler:8786

Requirements come from a JSON file baked into the image (``$ENVBUILD_ROLE_FILE``, default
``/etc/envbuild/role.json``); flags override it. ``ENVBUILD_GPU_CHECK`` chooses the mode:
``enforce`` (default), ``warn`` (report, then start anyway) or ``skip`` (do not look).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

# Exit codes, one per failure class. Documented in the README; images rely on them.
OK = 0
USAGE = 2
NO_DRIVER = 20
TOO_FEW_GPUS = 21
COMPUTE_CAPABILITY = 22
DRIVER_TOO_OLD = 23
CANNOT_JUDGE = 24  # MIG devices, or a driver version that cannot be read
COMMAND_NOT_EXECUTABLE = 126
COMMAND_NOT_FOUND = 127

DEFAULT_ROLE_FILE = "/etc/envbuild/role.json"
MODES = ("enforce", "warn", "skip")

#: Oldest driver branch that runs any CUDA runtime of a major version, through CUDA
#: minor-version compatibility (NVIDIA's CUDA compatibility guide).
DRIVER_FLOOR_BY_CUDA_MAJOR: dict[int, int] = {11: 450, 12: 525, 13: 580}

_CUDA_VERSION = re.compile(r"^(\d{1,3})\.(\d{1,3})$")
_DRIVER_BRANCH = re.compile(r"^(\d{1,5})(\.|$)")
_CC_CLAUSE = re.compile(r"^(>=|<=|==|!=|>|<)\s*(\d+)\.(\d+)$")
_COMPARE: dict[str, Callable[[tuple[int, int], tuple[int, int]], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class RequirementError(ValueError):
    """A requirement (CUDA version, compute capability) that cannot be parsed."""


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut short (input is never repeated at length)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_cuda_version(text: object) -> tuple[int, int]:
    """``"12.4"`` -> ``(12, 4)``; only CUDA majors whose driver floor we know are accepted.

    Exactly ``MAJOR.MINOR``: no spaces, so that what is validated is what is used.
    """
    match = _CUDA_VERSION.match(text) if isinstance(text, str) else None
    if not match:
        raise RequirementError(
            f'{_shown(text)} is not a CUDA version: write MAJOR.MINOR, e.g. "12.4"'
        )
    major, minor = int(match.group(1)), int(match.group(2))
    if major not in DRIVER_FLOOR_BY_CUDA_MAJOR:
        known = ", ".join(f"{m}.x" for m in DRIVER_FLOOR_BY_CUDA_MAJOR)
        raise RequirementError(f"CUDA {text} is not supported (supported: {known})")
    return major, minor


@dataclass(frozen=True)
class ComputeCapability:
    """A compute-capability requirement such as ``>=7.5`` or ``>=8.0,<10.0``."""

    clauses: tuple[tuple[str, tuple[int, int]], ...]

    @classmethod
    def parse(cls, text: object) -> ComputeCapability:
        clauses = []
        for raw in text.split(",") if isinstance(text, str) and len(text) < 100 else [None]:
            match = _CC_CLAUSE.match(raw.strip()) if raw is not None else None
            if not match:
                raise RequirementError(
                    f"{_shown(text)} is not a compute-capability requirement: "
                    "write an operator and MAJOR.MINOR, e.g. '>=8.0' or '>=7.5,<9.0'"
                )
            clauses.append((match.group(1), (int(match.group(2)), int(match.group(3)))))
        return cls(tuple(clauses))

    def failed_clause(self, cc: tuple[int, int]) -> str | None:
        """The first clause ``cc`` does not meet, as text (``"7.5 < 8.0"``), or None."""
        for op, bound in self.clauses:
            if not _COMPARE[op](cc, bound):
                negated = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!=", "!=": "=="}
                return f"{_fmt(cc)} {negated[op]} {_fmt(bound)}"
        return None

    def __str__(self) -> str:
        return ",".join(f"{op}{_fmt(bound)}" for op, bound in self.clauses)


def _fmt(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


@dataclass(frozen=True)
class Requirements:
    """What a role needs from the machine it starts on."""

    role: str | None = None
    variant: str | None = None
    cuda: tuple[int, int] | None = None  # None: a CPU role
    compute_capability: ComputeCapability | None = None
    gpus: int = 1

    @property
    def needs_gpu(self) -> bool:
        return self.cuda is not None

    def describe(self) -> str:
        who = " ".join(f"{k}={v}" for k, v in (("role", self.role), ("variant", self.variant)) if v)
        if not self.needs_gpu:
            return f"{who} needs no GPU".strip()
        needs = []
        if self.compute_capability:
            needs.append(f"compute capability {self.compute_capability}")
        assert self.cuda is not None
        needs.append(f"CUDA runtime {_fmt(self.cuda)}")
        if self.gpus > 1:
            needs.append(f"{self.gpus} GPUs")
        return f"{who} needs {', '.join(needs)}".strip()


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


# --- pure logic ---


def driver_problem(driver: Driver, runtime: tuple[int, int]) -> str | None:
    """Why ``driver`` cannot run a CUDA ``runtime``, or None when it can."""
    if driver.branch is None:
        return None  # reported on its own (CANNOT_JUDGE)
    if runtime[0] > driver.cuda[0]:
        floor = DRIVER_FLOOR_BY_CUDA_MAJOR[runtime[0]]
        return (
            f"driver {driver.version} supports CUDA {_fmt(driver.cuda)}, the image needs "
            f"CUDA {_fmt(runtime)}: upgrade the driver to >= {floor}"
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
        notes.append(f"NVIDIA_VISIBLE_DEVICES={_shown(nvidia)}")
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        entries = _entries(cuda, "CUDA_VISIBLE_DEVICES") if cuda.strip() else []
        visible = _select(visible, entries, stop_at_invalid=True)
        notes.append(f"CUDA_VISIBLE_DEVICES={_shown(cuda)}")
    return visible, ("; ".join(notes) or None)


def _is_index(entry: str) -> bool:
    return entry.isascii() and entry.isdigit()  # "²".isdigit() is True, int("²") fails


def _entries(value: str, variable: str) -> list[str]:
    """The entries of a visibility variable, each once, in order; MIG instances refused."""
    entries: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        mig_pair = ":" in entry and _is_index(entry.partition(":")[0])  # "0:1": GPU 0, MIG 1
        if entry.upper().startswith("MIG-") or mig_pair:
            raise MigError(f"{variable} names MIG instances ({_shown(entry)})")
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
            f"the driver reports version {_shown(survey.driver.version)}, which cannot be read: "
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
            f"  GPU {d.index}  {d.name:<{width}}  cc {_fmt(d.compute_capability)}  "
            f"driver {drv.version} (CUDA {_fmt(drv.cuda)})  {status}"
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
            "cuda": _fmt(req.cuda) if req.cuda else None,
            "compute_capability": str(req.compute_capability) if req.compute_capability else None,
            "gpus": req.gpus if req.needs_gpu else 0,
        },
        "mode": verdict.mode,
        "driver": (
            {"version": verdict.driver.version, "cuda": _fmt(verdict.driver.cuda)}
            if verdict.driver
            else None
        ),
        "gpus": [
            {
                **{k: v for k, v in asdict(g.device).items() if k != "compute_capability"},
                "compute_capability": _fmt(g.device.compute_capability),
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


# --- NVML (the only hardware edge) --------------------------------------------------------------


def survey_nvml() -> Survey:
    """Ask NVML for the driver and every device. Raises NoDriverError when NVML is missing."""
    try:
        import pynvml
    except ImportError as exc:  # the image lacks nvidia-ml-py: as good as no driver
        raise NoDriverError(f"pynvml is not installed ({exc})") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NoDriverError(str(exc)) from exc
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        driver = Driver(
            version=_text(pynvml.nvmlSystemGetDriverVersion()),
            cuda=(cuda // 1000, (cuda % 1000) // 10),
        )
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            devices.append(
                Device(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    compute_capability=(int(major), int(minor)),
                )
            )
        return Survey(driver=driver, devices=tuple(devices))
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- command line ---


#: Keys of a role file and the types their values may have.
_ROLE_FILE_FIELDS: dict[str, tuple[type, ...]] = {
    "role": (str,),
    "variant": (str,),
    "cuda": (str,),
    "compute-capability": (str,),
    "gpus": (int,),
}


def read_role_file(path: str) -> dict[str, Any]:
    """The role file's requirements; RequirementError names a bad field."""
    try:
        with open(path, "rb") as handle:  # noqa: PTH123 - a plain open keeps this file standalone
            baked = json.loads(handle.read(1 << 16).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RequirementError(f"cannot read role file {path}: {exc}") from exc
    if not isinstance(baked, dict):
        raise RequirementError(f"role file {path}: a JSON object is expected")
    for key, types in _ROLE_FILE_FIELDS.items():
        value = baked.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            expected = " or ".join({str: "a string", int: "an integer"}[t] for t in types)
            raise RequirementError(
                f"role file {path}: {key} must be {expected} or null, got {_shown(value)}"
            )
    return baked


def load_requirements(args: argparse.Namespace, env: Mapping[str, str]) -> Requirements:
    """Requirements from the baked role file, overridden by flags."""
    baked: dict[str, Any] = {}
    path = args.requirements or env.get("ENVBUILD_ROLE_FILE", DEFAULT_ROLE_FILE)
    if args.requirements or Path(path).exists():
        baked = read_role_file(path)
    cuda = args.cuda if args.cuda is not None else baked.get("cuda")
    cc = (
        args.compute_capability
        if args.compute_capability is not None
        else baked.get("compute-capability")
    )
    gpus = args.gpus if args.gpus is not None else baked.get("gpus", 1)
    if not isinstance(gpus, int) or gpus < 1:
        raise RequirementError(f"--gpus must be a positive integer, got {gpus!r}")
    return Requirements(
        role=args.role or baked.get("role"),
        variant=args.variant or baked.get("variant"),
        cuda=parse_cuda_version(cuda) if cuda else None,
        compute_capability=ComputeCapability.parse(cc) if cc else None,
        gpus=gpus,
    )


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m envbuild.gpucheck",
        description=(
            "Check that the visible GPUs and the NVIDIA driver can run this role, then exec "
            "COMMAND (if given) so that signals reach it directly."
        ),
        epilog=(
            "Exit codes: 0 ok, 2 usage, 20 no driver, 21 too few GPUs, 22 compute capability, "
            "23 driver too old, 24 cannot judge (MIG, unreadable driver version), 126 command "
            "not executable, 127 command not found. ENVBUILD_GPU_CHECK=enforce|warn|skip "
            "(default enforce); ENVBUILD_ROLE_FILE (default /etc/envbuild/role.json)."
        ),
    )
    parser.add_argument("--role", help="role name, for the report")
    parser.add_argument("--variant", help="variant name, for the report")
    parser.add_argument("--cuda", help="CUDA runtime version of the image, e.g. 12.4")
    parser.add_argument("--compute-capability", help="e.g. '>=8.0' or '>=7.5,<9.0'")
    parser.add_argument("--gpus", type=int, help="minimum number of visible GPUs (default 1)")
    parser.add_argument("--requirements", metavar="FILE", help="role file (JSON) to read")
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the check; exec the command on success (never returns then)."""
    env = os.environ if env is None else env
    args = _parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    mode = env.get("ENVBUILD_GPU_CHECK", "enforce").strip().lower() or "enforce"
    try:
        if command and not command[0]:
            raise RequirementError("the command to run after -- is empty")
        if mode not in MODES:
            raise RequirementError(f"ENVBUILD_GPU_CHECK={mode!r} is not one of {', '.join(MODES)}")
        requirements = load_requirements(args, env)
    except RequirementError as exc:
        print(f"envbuild gpu check: error: {exc}", file=sys.stderr)
        return USAGE

    if mode == "skip" or not requirements.needs_gpu:
        verdict = Verdict(requirements=requirements, mode=mode)
    else:
        try:
            survey: Survey | NoDriverError = survey_nvml()
        except NoDriverError as missing:
            survey = missing
        verdict = evaluate(requirements, survey, env, mode)

    # With a command, stdout is the command's: the report goes to stderr, JSON too.
    report = sys.stderr if command else sys.stdout
    text = json.dumps(to_json(verdict), indent=2) if args.json else "\n".join(render(verdict))
    print(text, file=report, flush=True)
    if not verdict.ok and mode == "enforce":
        return verdict.exit_code
    if not command:
        return OK
    try:
        os.execvp(command[0], command)  # noqa: S606 - replacing ourselves is the point
    except OSError as exc:
        print(
            f"envbuild gpu check: cannot run {_shown(command[0])}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return COMMAND_NOT_FOUND if isinstance(exc, FileNotFoundError) else COMMAND_NOT_EXECUTABLE


if __name__ == "__main__":
    sys.exit(main())
