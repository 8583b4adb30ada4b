"""What a role needs: its CUDA runtime, a compute-capability range, a number of GPUs; the
role file they are baked into; the exit codes of the check. Pure, standard library only."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Exit codes, one per failure class. Documented in the README; images rely on them.
OK = 0
USAGE = 2
NO_DRIVER = 20
TOO_FEW_GPUS = 21
COMPUTE_CAPABILITY = 22
DRIVER_TOO_OLD = 23
CANNOT_JUDGE = 24  # MIG devices, or a driver version that cannot be read
NO_BINDING = 25  # the check's own NVML binding (pynvml) is missing
COMMAND_NOT_EXECUTABLE = 126
COMMAND_NOT_FOUND = 127

DEFAULT_ROLE_FILE = "/etc/envbuild/role.json"
MODES = ("enforce", "warn", "skip")

#: Oldest driver branch that runs any CUDA runtime of a major version, through CUDA
#: minor-version compatibility (NVIDIA's CUDA compatibility guide).
DRIVER_FLOOR_BY_CUDA_MAJOR: dict[int, int] = {11: 450, 12: 525, 13: 580}

_CUDA_VERSION = re.compile(r"^([1-9][0-9]{0,2})\.([0-9]{1,3})$")
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


def shown(value: object, limit: int = 40) -> str:
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
            f'{shown(text)} is not a CUDA version: write MAJOR.MINOR, e.g. "12.4"'
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
                    f"{shown(text)} is not a compute-capability requirement: "
                    "write an operator and MAJOR.MINOR, e.g. '>=8.0' or '>=7.5,<9.0'"
                )
            clauses.append((match.group(1), (int(match.group(2)), int(match.group(3)))))
        return cls(tuple(clauses))

    def failed_clause(self, cc: tuple[int, int]) -> str | None:
        """The first clause ``cc`` does not meet, as text (``"7.5 < 8.0"``), or None."""
        for op, bound in self.clauses:
            if not _COMPARE[op](cc, bound):
                negated = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!=", "!=": "=="}
                return f"{fmt(cc)} {negated[op]} {fmt(bound)}"
        return None

    def __str__(self) -> str:
        return ",".join(f"{op}{fmt(bound)}" for op, bound in self.clauses)


def fmt(version: tuple[int, int]) -> str:
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
        needs.append(f"CUDA runtime {fmt(self.cuda)}")
        if self.gpus > 1:
            needs.append(f"{self.gpus} GPUs")
        return f"{who} needs {', '.join(needs)}".strip()


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
                f"role file {path}: {key} must be {expected} or null, got {shown(value)}"
            )
    return baked
