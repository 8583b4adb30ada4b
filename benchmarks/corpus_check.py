"""Lock real conda-forge metadata for several platforms and check one version per name.

The corpus (conda-forge repodata filtered to the python 3.9 closure, metadata only) is not
part of this repository; pass its folder. Prints what was locked and any name whose version
differs between platforms (there must be none).

Usage: python benchmarks/corpus_check.py PATH/TO/conda-forge-py39
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from envbuild.lock.locking import lock

PLATFORMS = ["linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64"]


def main(corpus: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "envbuild.yaml"
        spec.write_text(
            f"name: corpus\nchannels: [{corpus.resolve().as_uri()}]\n"
            f"platforms: [{', '.join(PLATFORMS)}]\ndependencies: [python 3.9.*]\n"
            "roles: {client: {gpu: false}, scheduler: {gpu: false}, worker: {gpu: false}}\n"
        )
        started = time.perf_counter()
        outcome = lock(spec)
        seconds = time.perf_counter() - started
        document = json.loads((Path(tmp) / "envbuild.lock").read_text())
    versions: dict[str, dict[str, str]] = {}
    for package in document["packages"]:
        for target in package["targets"]:
            versions.setdefault(package["name"], {})[target] = package["version"]
    differing = {name: v for name, v in versions.items() if len(set(v.values())) > 1}
    shared = [name for name, v in versions.items() if len(v) == len(PLATFORMS)]
    print(
        f"locked python 3.9.* for {len(PLATFORMS)} platforms in {seconds:.2f} s "
        f"({outcome.solves} solves): {len(document['packages'])} package records, "
        f"{len(versions)} names, {len(shared)} on every platform"
    )
    print(f"python: {sorted(set(versions['python'].values()))}")
    print(f"names with more than one version: {differing or 'none'}")
    return 1 if differing else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
