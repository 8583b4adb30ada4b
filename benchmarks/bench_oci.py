"""Benchmark `envbuild image --all --push` without an engine against the engine path it
replaced, on the same lock; and the bytes three role images send against one.

- **daemonless**: this envbuild, no engine (``DOCKER_HOST`` points nowhere), the base an OCI
  layout on disk;
- **engine**: envbuild as it was before (``--before PATH``: a worktree of that commit, run
  with it first on PYTHONPATH), building on a private Docker engine that holds the base
  (imported) and nothing else, then ``docker push`` through it.

Each command starts with its package cache warm and nothing staged, and pushes to an empty
registry of its own (Debian's docker-registry, restarted empty on the same port every round,
so the spec, and the lock, stay the same). Paired rounds, order alternating; min / median /
max, and the ratio per round. Goal: daemonless at most 0.6x the engine path.

Usage: python benchmarks/bench_oci.py --before /work/wt-oci-before [--runs N]
(root, with docker.io, debootstrap, docker-registry and skopeo installed)
"""

from __future__ import annotations

import argparse
import contextlib
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
NO_ENGINE = "unix:///nonexistent/docker.sock"


class FixedRegistry:
    """Debian's docker-registry on a fixed port, restarted empty on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = local_docker.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def restart(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        (self.folder / "config.yml").write_text(
            "version: 0.1\n"
            f"storage: {{filesystem: {{rootdirectory: {self.folder / 'data'}}}}}\n"
            f"http: {{addr: {self.address}}}\n"
        )
        with (self.folder / "log").open("wb") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(self.folder / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not local_docker._registry_answers(self.address):
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start")
            time.sleep(0.05)

    def stored_bytes(self) -> int:
        return local_docker.Registry(self.address, self.folder / "data").stored_bytes()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="worktree of the old code")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    why = local_docker.usable()
    if why:
        print(f"skipped: {why}")
        return 1
    goals = Goals()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-oci-"))
    try:
        with contextlib.ExitStack() as stack:
            _run(args, goals, work, stack)
        return goals.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, goals: Goals, work: Path, stack: contextlib.ExitStack) -> None:
    """Long because it is the whole benchmark, step by step, in the order it reports."""
    channel = runnable.build(REPO / "build" / "cache" / "runnable")
    layout = local_docker.base_layout(REPO / "build" / "cache")
    host = stack.enter_context(local_docker.engine())
    local_docker.import_base(host, local_docker.base_tar(REPO / "build" / "cache"))
    registries = {name: FixedRegistry(work / f"registry-{name}") for name in ("new", "old")}
    for registry in registries.values():
        stack.callback(registry.stop)
    example = without_pypi((REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text())
    example = example.replace("[../../build/demo-channel]", f"['{channel}']")
    # The linux-64 images, as the README's figures (the engine path before had no other):
    # bench_arm64.py times arm64 ones.
    example = example.replace("platforms: [linux-64, linux-aarch64]", "platforms: [linux-64]")
    bases = {"new": f"oci:{layout}:bookworm", "old": local_docker.BASE_REFERENCE}
    specs = {}
    warm = work / "pkgs"
    for name, registry in registries.items():
        folder = work / name
        folder.mkdir()
        specs[name] = folder / "envbuild.yaml"
        specs[name].write_text(
            example.replace(
                "base: oci:../../build/demo-base:bookworm",
                f"base: {bases[name]}\n  repository: {registry.address}/dask-gpu",
            )
        )
        subprocess.run([ENVBUILD, "lock", "-q", "-f", specs[name]], cwd=folder, check=True)
    fill = ["env", "-q", "--role", "worker", "-f", str(specs["new"]), "--cache-dir", str(warm)]
    subprocess.run([ENVBUILD, *fill], cwd=work / "new", check=True)
    environments = {
        "new": {"DOCKER_HOST": NO_ENGINE, "PYTHONPATH": str(REPO)},
        "old": {"DOCKER_HOST": host, "PYTHONPATH": str(args.before.resolve())},
    }
    outputs: dict[str, Path] = {}

    def case(name: str, selection: list[str]) -> Callable[[int], Command]:
        def command(number: int) -> Command:
            cache = work / f"cache-{name}-{number}-{selection[-1]}"
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()
            (cache / "pkgs").symlink_to(warm)  # warm packages, nothing staged
            if name == "old":
                _reset(host)
            registries[name].restart()
            outputs[name] = cache
            return Command(
                [ENVBUILD, "image", *selection, "--push", "-f", str(specs[name])],
                cwd=specs[name].parent,
                env={**environments[name], "ENVBUILD_CACHE_DIR": str(cache)},
            )

        return command

    times = rounds(
        {"daemonless": case("new", ["--all"]), "engine": case("old", ["--all"])}, args.runs
    )
    print(f"{args.runs} paired rounds, alternating order; whole commands, cold staging:")
    goals.record("image --all --push, no engine (this change)", spread(times["daemonless"]))
    goals.record("image --all --push, engine path (before)", spread(times["engine"]))
    per_round = ratios(times["daemonless"], times["engine"])
    goals.record(
        "  daemonless / engine per round (goal <= 0.6x)",
        spread(per_round, "x"),
        statistics.median(per_round) <= 0.6,
    )
    stored = registries["new"].stored_bytes()
    # Bytes sent: three roles against the worker alone, each into an empty registry.
    sent = {}
    for selection in (["--all"], ["--role", "worker"]):
        registries["new"].restart()
        done = subprocess.run(
            [ENVBUILD, "image", *selection, "--push", "--json", "-f", str(specs["new"])],
            cwd=work / "new",
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **environments["new"], "ENVBUILD_CACHE_DIR": str(outputs["new"])},
        )
        images = json.loads(done.stdout)["images"]
        sent[selection[-1]] = (
            sum(i["bytes_sent"] for i in images),
            registries["new"].stored_bytes(),
        )
    (all_sent, all_stored), (one_sent, one_stored) = sent["--all"], sent["worker"]
    goals.record(
        "bytes sent: 3 role images / the worker's",
        f"{all_sent / 1e6:.1f} MB / {one_sent / 1e6:.1f} MB = {all_sent / one_sent:.3f}x",
    )
    goals.record(
        "registry bytes: 3 role images / the worker's",
        f"{all_stored / 1e6:.1f} MB / {one_stored / 1e6:.1f} MB = {all_stored / one_stored:.3f}x"
        f" (a cold run stored {stored / 1e6:.1f} MB)",
        all_stored / one_stored <= 1.15,
    )
    again = subprocess.run(
        [ENVBUILD, "image", "--role", "worker", "--push", "--json", "-f", str(specs["new"])],
        cwd=work / "new",
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **environments["new"], "ENVBUILD_CACHE_DIR": str(outputs["new"])},
    )
    blobs = sum(i["bytes_sent"] for i in json.loads(again.stdout)["images"])
    goals.record("second push of the worker: bytes sent (goal 0)", f"{blobs} B", blobs == 0)


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


if __name__ == "__main__":
    sys.exit(main())
