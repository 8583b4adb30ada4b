"""The example's images of several platforms, pushed and inspected, for ``make demo``.

The example's worker pool runs on linux-64 and linux-aarch64 (A100 and GH200 nodes), so its
tag names an OCI image index of an amd64 and an arm64 image, both built on this machine.
This pushes every role image to a registry started here (Debian's docker-registry, stopped
by PID), reads the index back with skopeo (its media type, each entry's ``platform``, each
platform's config by digest), then builds the indexed images again from nothing (another
package cache, nothing staged) into an OCI image layout and compares: the same layer digests
and the same index digest.

    python -m envbuild.testing.indexes -f SPEC --lockfile LOCK [--cache build/cache]

Without root or the tools (docker-registry, skopeo, debootstrap), it says in one line what
it skipped and how to get them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from envbuild.testing import docker as local_docker
from envbuild.testing.containers import demo_base

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
INDEX = "application/vnd.oci.image.index.v1+json"


class DemoError(Exception):
    """A step failed, or what was pushed is not what was built; the message says which."""


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise DemoError(f"{' '.join(command[:3])} failed ({done.returncode}): {done.stderr[-600:]}")
    return done.stdout


def pushed_spec(spec: Path, folder: Path, repository: str) -> Path:
    """A copy of ``spec`` in ``folder`` whose images go to ``repository`` (its relative
    paths, the channel and the base layout, made absolute)."""
    build = (spec.parent / "../../build").resolve()
    text = spec.read_text().replace("../../build/", f"{build}/")
    text = text.replace("  base: oci:", f"  repository: {repository}\n  base: oci:", 1)
    copy = folder / "envbuild.yaml"
    copy.write_text(text)
    return copy


def _images(spec: Path, env: dict[str, str], *args: str) -> dict[str, dict[str, Any]]:
    out = _run([ENVBUILD, "image", *args, "--json", "-q", "-f", str(spec)], env)
    return {image["role"]: image for image in json.loads(out)["images"]}


def _skopeo(*args: str) -> str:
    return _run(["skopeo", "--insecure-policy", *args])


def inspect_index(reference: str, repository: str) -> list[str]:
    """Lines saying what the registry holds under ``reference``: the index, and each entry's
    platform as the index and the image's own config say it."""
    raw = _skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{reference}")
    index = json.loads(raw)
    if index.get("mediaType") != INDEX:
        raise DemoError(f"{reference} is not an image index: {index.get('mediaType')}")
    lines = [f"{reference}: an OCI image index of {len(index['manifests'])} images"]
    for entry in index["manifests"]:
        platform = entry["platform"]
        config = json.loads(
            _skopeo(
                "inspect", "--tls-verify=false", "--config",
                f"docker://{repository}@{entry['digest']}",
            )
        )  # fmt: skip
        said = {key: config.get(key) for key in platform}
        if said != platform:
            raise DemoError(f"{entry['digest']}: the index says {platform}, its config {said}")
        where = "/".join(platform[k] for k in ("os", "architecture", "variant") if k in platform)
        subdir = config["config"]["Labels"]["io.envbuild.platform"]
        lines.append(f"  {where:<15} {entry['digest']}  ({subdir})")
    return lines


def _layers(outcome: dict[str, Any]) -> dict[str, list[str]]:
    """platform -> the layer digests (tars) of each of an index's images."""
    return {
        m["platforms"][0]: [m["layers"][n]["sha256"] for n in ("shared", "variant", "role")]
        for m in outcome["manifests"]
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m envbuild.testing.indexes", description=__doc__)
    parser.add_argument("-f", "--file", type=Path, required=True, dest="spec")
    parser.add_argument("--lockfile", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("build/cache"))
    args = parser.parse_args(argv)
    why = local_docker.usable()
    if why:
        print(f"multi-platform images skipped: {why}; run `make demo` as root with "
              "docker-registry, skopeo and debootstrap installed", flush=True)  # fmt: skip
        return 0
    started = time.perf_counter()
    work = args.lockfile.parent / "indexes"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # no engine
    try:
        demo_base(args.cache)
        with local_docker.registry() as registry:
            repository = f"{registry.address}/dask-gpu"
            spec = pushed_spec(args.spec, work, repository)
            _run([ENVBUILD, "lock", "-q", "-f", str(spec)], env)
            first = _images(spec, env, "--all", "--push")
            indexed = {role: o for role, o in first.items() if o["manifests"]}
            print(f"pushed {len(first)} role images to {repository}, no engine:", flush=True)
            for outcome in indexed.values():
                print("\n".join(inspect_index(outcome["reference"], repository)))
            # Again from nothing: another package cache, nothing staged, a layout.
            fresh = {**env, "ENVBUILD_CACHE_DIR": str(work / "fresh-cache" / "pkgs")}
            roles = [arg for role in indexed for arg in ("--role", role)]
            again = _images(spec, fresh, *roles, "--oci", str(work / "layout"))
        for role, outcome in indexed.items():
            same = _layers(again[role]) == _layers(outcome)
            if not same or again[role]["digest"] != outcome["digest"]:
                raise DemoError(f"{role}: a second build gave other digests: not reproducible")
            count = sum(len(layers) for layers in _layers(outcome).values())
            print(f"{role}: built again from nothing: the same {count} layer digests and index "
                  f"{outcome['digest'][:19]}…")  # fmt: skip
    except (DemoError, local_docker.SetupError) as exc:
        print(f"envbuild demo indexes: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work / "fresh-cache", ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"multi-platform images pushed, inspected and rebuilt in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
