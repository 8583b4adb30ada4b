"""Benchmark building a role's arm64 image against its amd64 one, on this x86 machine.

The example's worker pool runs on linux-64 and linux-aarch64 (A100 and GH200 nodes). envbuild
runs nothing inside an image (it installs the locked packages and writes the layers itself),
so the arm64 image needs no emulation and should build as fast as the amd64 one: only its
bytes differ. ``envbuild image --role worker --platform P --oci DIR``, whole commands, each
with a warm package cache (both platforms' packages downloaded) and nothing staged, no
engine, paired rounds in alternating order. Goal: arm64 / amd64 at most 1.1x per round
(median). The layer sizes of both images are printed: the bytes a build writes and
compresses.

Usage: python benchmarks/bench_arm64.py [--runs N]   (N even; root and debootstrap the first
time, to make the arm64 base)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paired import Command, Goals, prepare, ratios, rounds, spread

from envbuild.testing import docker as local_docker
from envbuild.testing import runnable
from envbuild.testing.pypi_index import without_pypi

REPO = Path(__file__).parent.parent
ENVBUILD = str(Path(sys.executable).parent / "envbuild")
NO_ENGINE = "unix:///nonexistent/docker.sock"
PLATFORMS = {"arm64": "linux-aarch64", "amd64": "linux-64"}


def _spec(work: Path) -> Path:
    channel = runnable.build(REPO / "build" / "cache" / "runnable")
    layout = local_docker.base_index_layout(REPO / "build" / "cache")
    example = without_pypi((REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text())
    if "platforms: [linux-64, linux-aarch64]" not in example:
        raise SystemExit("the example's worker is no longer locked for linux-aarch64")
    spec = work / "envbuild.yaml"
    spec.write_text(
        example.replace("[../../build/demo-channel]", f"['{channel}']").replace(
            "oci:../../build/demo-base:bookworm", f"oci:{layout}:bookworm"
        )
    )
    return spec


def _cold(work: Path, spec: Path, warm: Path, platform: str) -> Callable[[int], Command]:
    def command(number: int) -> Command:
        cache = work / f"cache-{number}-{platform}"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        (cache / "pkgs").symlink_to(warm)  # warm packages, nothing staged
        out = work / f"layout-{number}-{platform}"
        shutil.rmtree(out, ignore_errors=True)
        return Command(
            [ENVBUILD, "image", "-q", "--role", "worker", "--platform", platform, "--oci", str(out),
             "-f", str(spec)],
            cwd=work,
            env={"DOCKER_HOST": NO_ENGINE, "ENVBUILD_CACHE_DIR": str(cache)},
        )  # fmt: skip

    return command


def _sizes(work: Path, spec: Path, warm: Path) -> dict[str, str]:
    """platform -> the worker image's layer sizes, from a build of both."""
    (work / "sizes").mkdir()
    (work / "sizes" / "pkgs").symlink_to(warm)
    done = subprocess.run(
        [ENVBUILD, "image", "--json", "--role", "worker", "--oci", str(work / "sizes-layout"),
         "-f", str(spec)],
        cwd=work, capture_output=True, text=True, check=True,
        env={**os.environ, "DOCKER_HOST": NO_ENGINE, "ENVBUILD_CACHE_DIR": str(work / "sizes")},
    )  # fmt: skip
    (worker,) = json.loads(done.stdout)["images"]
    return {
        m["platforms"][0]: ", ".join(
            f"{name} {layer['size'] / 1e6:.1f} MB" for name, layer in m["layers"].items()
        )
        for m in worker["manifests"]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    if args.runs % 2:
        parser.error("--runs must be even: each case first in as many rounds as the other")
    goals = Goals()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-arm64-"))
    try:
        spec = _spec(work)
        env = {**os.environ, "ENVBUILD_CACHE_DIR": str(work / "cache")}
        subprocess.run([ENVBUILD, "lock", "-q", "-f", str(spec)], cwd=work, check=True, env=env)
        warm = work / "pkgs"
        for platform in PLATFORMS.values():
            prefix = work / f"env-{platform}"
            fill = ["env", "-q", "--role", "worker", "--platform", platform, "-f", str(spec),
                    "--prefix", str(prefix), "--cache-dir", str(warm)]  # fmt: skip
            subprocess.run([ENVBUILD, *fill], cwd=work, check=True)
        cases = {arch: _cold(work, spec, warm, platform) for arch, platform in PLATFORMS.items()}
        times = rounds(cases, args.runs)
        ratio = ratios(times["arm64"], times["amd64"])
        print(f"{args.runs} paired rounds, alternating order; whole commands, no engine:")
        for arch, platform in PLATFORMS.items():
            goals.record(f"image --role worker --platform {platform}", spread(times[arch]))
        goals.record(
            "  arm64 / amd64 per round (goal <= 1.1x)",
            spread(ratio, "x"),
            statistics.median(ratio) <= 1.1,
        )
        for platform, sizes in _sizes(work, spec, warm).items():
            goals.record(f"  layers of the {platform} image", sizes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return goals.finish()


if __name__ == "__main__":
    sys.exit(main())
