"""``python -m envbuild.gpucheck``: read the requirements, check, report, exec the command."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import init
from .nvml import BindingMissingError, survey_nvml
from .requirements import (
    COMMAND_NOT_EXECUTABLE,
    COMMAND_NOT_FOUND,
    DEFAULT_ROLE_FILE,
    MODES,
    NO_BINDING,
    OK,
    USAGE,
    ComputeCapability,
    RequirementError,
    Requirements,
    parse_cuda_version,
    read_role_file,
    shown,
)
from .verdict import NoDriverError, Survey, Verdict, evaluate, render, to_json

if TYPE_CHECKING:
    import argparse


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
            "23 driver too old, 24 cannot judge (MIG, unreadable driver version), 25 the "
            "check's NVML binding is missing, 126 command not executable, 127 command not "
            "found. ENVBUILD_GPU_CHECK=enforce|warn|skip (default enforce); ENVBUILD_ROLE_FILE "
            "(default /etc/envbuild/role.json); ENVBUILD_INIT=0: exec the command even as "
            "PID 1."
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

    verdict = _judge(requirements, env, mode)

    # With a command, stdout is the command's: the report goes to stderr, JSON too.
    report = sys.stderr if command else sys.stdout
    text = json.dumps(to_json(verdict), indent=2) if args.json else "\n".join(render(verdict))
    print(text, file=report, flush=True)
    if not verdict.ok and mode == "enforce":
        return verdict.exit_code
    if not command:
        return OK
    if init.wanted(env):
        return init.main_as_init(command)
    try:
        os.execvp(command[0], command)  # noqa: S606 - replacing ourselves is the point
    except OSError as exc:
        print(
            f"envbuild gpu check: cannot run {shown(command[0])}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return COMMAND_NOT_FOUND if isinstance(exc, FileNotFoundError) else COMMAND_NOT_EXECUTABLE


def _judge(requirements: Requirements, env: Mapping[str, str], mode: str) -> Verdict:
    """The verdict: nothing to look at for a CPU role or in skip mode, else what NVML saw."""
    if mode == "skip" or not requirements.needs_gpu:
        return Verdict(requirements=requirements, mode=mode)
    try:
        survey: Survey | NoDriverError = survey_nvml()
    except NoDriverError as missing:
        survey = missing
    except BindingMissingError as missing:
        return Verdict(requirements, mode, problem=str(missing), exit_code=NO_BINDING)
    return evaluate(requirements, survey, env, mode)
