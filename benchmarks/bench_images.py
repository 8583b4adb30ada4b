"""Benchmark `envbuild image`: three role images against one, a rebuild, registry bytes.

On a private Docker engine and registry (envbuild.testing.docker), from the runnable channel:

1. ``envbuild image --all`` against ``envbuild image --role worker``, whole commands, each
   from an engine holding no image and with no staged layers (the package cache
   is warm for both), paired rounds in rotating order. Goal: at most 1.3x.
2. ``envbuild image --all`` again with an unchanged lock: seconds, and images built (goal 0).
3. The bytes a registry stores for the three role images against the worker's alone.
   Goal: at most 1.15x (the scheduler shares the worker's variant; the client its base and
   shared layer).
4. A CI run with nothing changed (lock check, plan, the build jobs); ``envbuild deploy
   kubernetes --pin-digests`` (two registry look-ups) against ``envbuild show``, paired
   rounds. Goal: deploy as fast as show (at most 1.2x).

Usage: python benchmarks/bench_images.py [--runs N]   (root, with docker.io, debootstrap,
docker-registry installed)
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
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paired import Command, Goals, prepare, ratios, rounds, spread

from envbuild.testing import docker as local_docker
from envbuild.testing import runnable
from envbuild.testing.pypi_index import without_pypi

REPO = Path(__file__).parent.parent
ENVBUILD = str(Path(sys.executable).parent / "envbuild")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    why = local_docker.usable()
    if why:
        print(f"skipped: {why}")
        return 1
    goals = Goals()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-images-"))
    try:
        channel = runnable.build(REPO / "build" / "cache" / "runnable")
        spec = work / "envbuild.yaml"
        example = without_pypi((REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text())
        layout = local_docker.base_layout(REPO / "build" / "cache")
        spec.write_text(
            example.replace("[../../build/demo-channel]", f"['{channel}']")
            .replace("oci:../../build/demo-base:bookworm", f"oci:{layout}:bookworm")
            # The linux-64 images, as the README's figures: bench_arm64.py times arm64 ones.
            .replace("platforms: [linux-64, linux-aarch64]", "platforms: [linux-64]")
        )
        warm = work / "pkgs"
        with (
            local_docker.engine() as host,
            local_docker.registry() as everything,
            local_docker.registry() as one,
        ):
            env = {"DOCKER_HOST": host, "ENVBUILD_CACHE_DIR": str(work / "cache")}
            subprocess.run(
                [ENVBUILD, "lock", "-q", "-f", str(spec)],
                cwd=work,
                check=True,
                env={**os.environ, **env},
            )
            fill = ["env", "-q", "--role", "worker", "-f", str(spec), "--cache-dir", str(warm)]
            subprocess.run([ENVBUILD, *fill], cwd=work, check=True)

            def cold(selection: list[str]) -> Callable[[int], Command]:
                def command(number: int) -> Command:
                    cache = work / f"cache-{number}-{selection[-1]}"
                    shutil.rmtree(cache, ignore_errors=True)
                    cache.mkdir()
                    (cache / "pkgs").symlink_to(warm)  # warm packages, nothing staged
                    _reset(host)
                    return Command(
                        [ENVBUILD, "image", *selection, "-f", str(spec)],
                        cwd=work,
                        env={"DOCKER_HOST": host, "ENVBUILD_CACHE_DIR": str(cache)},
                    )

                return command

            times = rounds({"all": cold(["--all"]), "one": cold(["--role", "worker"])}, args.runs)
            ratio = ratios(times["all"], times["one"])
            print(f"{args.runs} paired rounds, rotating order; whole commands:")
            goals.record("envbuild image --all (3 roles)", spread(times["all"]))
            goals.record("envbuild image --role worker", spread(times["one"]))
            goals.record(
                "  all / one per round (goal <= 1.3x)",
                spread(ratio, "x"),
                statistics.median(ratio) <= 1.3,
            )

            final = {"DOCKER_HOST": host, "ENVBUILD_CACHE_DIR": str(work / "final")}
            (work / "final").mkdir()
            (work / "final" / "pkgs").symlink_to(warm)
            _build(spec, work, final, "--all")
            started = time.perf_counter()
            built = _build(spec, work, final, "--all")
            seconds = time.perf_counter() - started
            goals.record(
                "rebuild, unchanged lock (goal: 0 built)",
                f"{seconds:.2f} s, {sum(i['status'] == 'built' for i in built)} images built",
                all(i["status"] == "up-to-date" for i in built),
            )
            for registry, selection in ((everything, ["--all"]), (one, ["--role", "worker"])):
                spec_for = work / f"push-{registry.address.split(':')[1]}.yaml"
                spec_for.write_text(
                    spec.read_text().rstrip() + f"\n  repository: {registry.address}/dask-gpu\n"
                )
                shutil.copy(work / "envbuild.lock", spec_for.with_suffix(".lock"))
                subprocess.run(
                    [
                        ENVBUILD,
                        "image",
                        *selection,
                        "--push",
                        "-f",
                        str(spec_for),
                        "--lockfile",
                        str(spec_for.with_suffix(".lock")),
                    ],
                    cwd=work,
                    check=True,
                    capture_output=True,
                    env={**os.environ, **final},
                )
            three, single = everything.stored_bytes(), one.stored_bytes()
            # A CI run with nothing changed: lock check, plan, the build jobs with
            # --push --skip-existing, whole commands, one after another.
            pushed = work / f"push-{everything.address.split(':')[1]}.yaml"
            lock_for = ["-f", str(pushed), "--lockfile", str(pushed.with_suffix(".lock"))]
            steps = [
                ["lock", "--check"],
                ["plan"],
                ["image", "--role", "client", "--push", "--skip-existing"],
                ["image", "--role", "scheduler", "--role", "worker", "--push", "--skip-existing"],
            ]
            pipeline = []
            for _ in range(5):
                started = time.perf_counter()
                for step in steps:
                    subprocess.run(
                        [ENVBUILD, *step, *lock_for],
                        cwd=work,
                        check=True,
                        capture_output=True,
                        env={**os.environ, **final},
                    )
                pipeline.append(time.perf_counter() - started)
            goals.record(
                "CI run, nothing changed (4 commands; goal < 5 s)",
                spread(pipeline),
                statistics.median(pipeline) < 5,
            )
            # envbuild deploy (asking the registry for both images' digests) against
            # envbuild show, whole commands, paired rounds. Goal: as fast as show (<= 1.2x).
            deploy_times = rounds(
                {
                    "deploy": Command(
                        [ENVBUILD, "deploy", "kubernetes", "--pin-digests", *lock_for],
                        cwd=work,
                        env=final,
                    ),
                    "show": Command([ENVBUILD, "show", *lock_for], cwd=work, env=final),
                },
                9,
            )
            goals.record("envbuild deploy kubernetes --pin-digests", spread(deploy_times["deploy"]))
            goals.record("envbuild show", spread(deploy_times["show"]))
            per_round = ratios(deploy_times["deploy"], deploy_times["show"])
            goals.record(
                "deploy / show (goal <= 1.2x)",
                spread(per_round, "x"),
                statistics.median(per_round) <= 1.2,
            )
            goals.record(
                "registry bytes: 3 role images / the worker's",
                f"{three / 1e6:.1f} MB / {single / 1e6:.1f} MB = {three / single:.3f}x "
                "(goal <= 1.15x)",
                three / single <= 1.15,
            )
        return goals.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reset(host: str) -> None:
    """The engine back to holding the base image only (no role images, no build cache)."""
    import docker

    client = docker.DockerClient(base_url=host)
    try:
        for image in client.images.list():
            if local_docker.BASE_REFERENCE not in image.tags:
                client.images.remove(image.id, force=True)
        client.api.prune_builds()
    finally:
        client.close()


def _build(spec: Path, work: Path, env: dict[str, str], *selection: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [ENVBUILD, "image", *selection, "--json", "-f", str(spec)],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    images: list[dict[str, object]] = json.loads(done.stdout)["images"]
    return images


if __name__ == "__main__":
    sys.exit(main())
