"""Benchmark the GPU check as a container start pays it: a fresh process, fake NVML, 8 GPUs.

Paired rounds in rotating order with its baselines, ``python -c pass`` and ``python -c
"import pynvml"``; min/median/max (see paired.py). Goal: the check's median under 0.3 s.

Usage: python benchmarks/bench_gpucheck.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paired import Command, Goals, prepare, ratios, rounds, spread

from envbuild.testing import nvml

A100 = "NVIDIA A100-SXM4-80GB,8.0,GPU-a100"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    goals = Goals()
    prepare()
    with tempfile.TemporaryDirectory() as tmp:
        library = nvml.build(Path(tmp))
        env = {"LD_LIBRARY_PATH": str(library.parent), "FAKE_NVML_DEVICES": ";".join([A100] * 8)}
        check = [sys.executable, "-m", "envbuild.gpucheck", "--role", "worker", "--cuda", "12.4"]
        check += ["--compute-capability", ">=8.0", "--gpus", "8"]
        verdict = subprocess.run(check, env={**os.environ, **env}, capture_output=True, text=True)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        times = rounds(
            {
                "check": Command(check, env=env),
                "bare": Command([sys.executable, "-c", "pass"], env=env),
                "pynvml": Command([sys.executable, "-c", "import pynvml"], env=env),
            },
            args.runs,
        )
    print(f"{args.runs} paired rounds, rotating order; fresh processes:")
    median = statistics.median(times["check"])
    goals.record("gpu check, 8 GPUs (goal < 0.3 s)", spread(times["check"]), median < 0.3)
    goals.record("python -c pass", spread(times["bare"]))
    goals.record("python -c 'import pynvml'", spread(times["pynvml"]))
    goals.record("  check / bare interpreter", spread(ratios(times["check"], times["bare"]), "x"))
    return goals.finish()


if __name__ == "__main__":
    sys.exit(main())
