"""Benchmark the GPU check as a container start pays it: a fresh process, fake NVML.

Baselines in the same run: ``python -c pass`` and ``python -c "import pynvml"``. Goal: the
check's wall time under 0.3 s. Usage: python benchmarks/bench_gpucheck.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envbuild.testing import nvml

A100 = "NVIDIA A100-SXM4-80GB,8.0,GPU-a100"


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=False, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        library = nvml.build(Path(tmp))
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": str(library.parent),
            "FAKE_NVML_DEVICES": ";".join([A100] * 8),
        }
        check = [
            sys.executable,
            "-m",
            "envbuild.gpucheck",
            "--role",
            "worker",
            "--cuda",
            "12.4",
            "--compute-capability",
            ">=8.0",
            "--gpus",
            "8",
        ]
        verdict = subprocess.run(check, env=env, capture_output=True, text=True)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        cases = {
            "gpu check, 8 GPUs": check,
            "baseline: python -c pass": [sys.executable, "-c", "pass"],
            "baseline: import pynvml": [sys.executable, "-c", "import pynvml"],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so load on the machine hits all alike
            for name, command in cases.items():
                times[name].append(wall(command, env))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"medians of {args.runs} runs (fresh processes):")
    for name, seconds in medians.items():
        print(f"  {name:<28} {seconds:.3f} s")
    check_time = medians["gpu check, 8 GPUs"]
    met = check_time < 0.3
    print(
        f"  {'ok  ' if met else 'MISS'}  gpu check {check_time:.3f} s (goal < 0.3 s); "
        f"{check_time / medians['baseline: python -c pass']:.1f}x a bare interpreter"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
