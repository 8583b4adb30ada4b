"""Benchmarks of PyPI dependencies, paired rounds in rotating order (see paired.py):

1. resolver: ``uv pip compile`` against ``pip install --dry-run --report`` on the same
   resolution: xarray over conda's numpy, pandas and packaging (stub wheels and constraints,
   as envbuild.lock.pypi gives them), for linux-64 (manylinux_2_28) and CPython 3.11.2, from
   the offline find-links folder. The choice of resolver (lock/pypi.py) rests on it.
2. ``envbuild lock`` of the demo spec (examples/dask-gpu against the runnable channel) with
   and without ``pypi-dependencies: [xarray]`` (and cupy from PyPI per CUDA major instead of
   conda's), lock file removed before each run, caches warm.
3. installing the worker's wheels (cupy-cuda12x, fastrlock, xarray; 93 MB) into a conda
   prefix: envbuild's ``install_wheels`` (sha256 of the cached wheels, uv --no-cache, the
   record) against a raw ``uv pip install --no-deps`` of the same files, with uv's cache
   warm (uv links from it) and empty (``--no-cache``).

Usage: python benchmarks/bench_pypi.py [--runs N]   (needs the runnable channel's inputs)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paired import Command, Goals, prepare, ratios, rounds, spread

from envbuild.lock.pypi import Provided, _write_stub, stub_version, uv_binary
from envbuild.testing import pypi_index, runnable

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "cache"
ENVBUILD = str(Path(sys.executable).parent / "envbuild")
PROVIDED = [
    Provided("numpy", "2.0.2", "numpy", "2.0.2"),
    Provided("pandas", "2.2.2", "pandas", "2.2.2"),
    Provided("packaging", "24.1", "packaging", "24.1"),
    Provided("python-dateutil", "2.9.0.post0", "python-dateutil", "2.9.0.post0"),
    Provided("pytz", "2024.1", "pytz", "2024.1"),
    Provided("tzdata", "2024.1", "tzdata", "2024.1"),
]
INSTALL = r"""
import sys
from pathlib import Path
from envbuild.env.pypi import install_wheels
from envbuild.lock.lockfile import read_lock
target = read_lock(Path(sys.argv[1])).role_target("worker", "linux-64")
install_wheels(target, Path(sys.argv[2]), None)
"""


def resolver_cases(work: Path, links: Path) -> dict[str, Callable[[int], Command]]:
    stubs = work / "stubs"
    stubs.mkdir()
    for provided in PROVIDED:
        _write_stub(stubs, provided)
    (work / "req.txt").write_text("xarray\n")
    (work / "cons.txt").write_text(
        "".join(f"{p.name}=={stub_version(p.version)}\n" for p in PROVIDED)
    )
    common = ["-c", "cons.txt", "--find-links", str(stubs)]
    common += ["--find-links", str(links), "--no-index"]
    uv = [
        uv_binary(),
        "pip",
        "compile",
        "req.txt",
        *common,
        "--format",
        "pylock.toml",
        "-o",
        "pylock.toml",
    ]
    uv += ["--python-version", "3.11.2", "--python-platform", "x86_64-manylinux_2_28"]
    uv += ["--python", sys.executable, "--only-binary", ":all:", "--no-config", "--quiet"]
    uv += ["--cache-dir", str(work / "uv-cache")]
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    pip += ["-r", "req.txt", *common]
    pip += ["--report", "report.json", "--quiet", "--isolated", "--disable-pip-version-check"]
    pip += ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]
    pip += ["--implementation", "cp", "--abi", "cp311", "--only-binary", ":all:"]
    pip += ["--target", str(work / "unused")]

    def fresh(argv: list[str]) -> Callable[[int], Command]:
        def command(number: int) -> Command:
            (work / "pylock.toml").unlink(missing_ok=True)  # an old output is a preference
            return Command(argv, cwd=work)

        return command

    return {"uv": fresh(uv), "pip": fresh(pip)}


def demo_spec(folder: Path, channel: Path, links: Path, pypi: bool) -> Path:
    folder.mkdir(parents=True)
    text = pypi_index.without_pypi((REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text())
    text = text.replace("[../../build/demo-channel]", f"['{channel}']")
    if pypi:
        text = text.replace("gpu-dependencies: [cupy]", "gpu-dependencies: []")
        text += "pypi-dependencies: [xarray]\ngpu-pypi-dependencies: ['cupy-cuda{cuda_major}x']\n"
        text += f"pypi-index-urls: []\npypi-find-links: ['{links}']\n"
    (folder / "envbuild.yaml").write_text(text)
    return folder / "envbuild.yaml"


def lock_cases(work: Path, channel: Path, links: Path) -> dict[str, Callable[[int], Command]]:
    def case(pypi: bool) -> Callable[[int], Command]:
        name = "with" if pypi else "without"
        spec = demo_spec(work / f"lock-{name}", channel, links, pypi)
        env = {"ENVBUILD_CACHE_DIR": str(work / f"cache-{name}")}

        def command(number: int) -> Command:
            (spec.parent / "envbuild.lock").unlink(missing_ok=True)
            return Command([ENVBUILD, "lock", "-q", "-f", str(spec)], env=env)

        return command

    return {"with PyPI": case(True), "without": case(False)}


def install_cases(work: Path) -> dict[str, Callable[[int], Command]]:
    """A conda-only worker prefix copied fresh for every run (outside the timing)."""
    from envbuild.env.create import create_env
    from envbuild.lock.lockfile import read_lock
    from envbuild.lock.pypifetch import fetch_wheel

    spec_folder = work / "lock-with"
    lock = read_lock(spec_folder / "envbuild.lock")
    target = lock.role_target("worker", "linux-64")
    base = work / "base"
    create_env(lock, dataclasses.replace(target, wheels=()), base, cache_dir=work / "pkgs")
    files = [str(fetch_wheel(w, work / "pypi")) for w in target.wheels]
    (work / "install.py").write_text(INSTALL)
    env = {"ENVBUILD_CACHE_DIR": str(work)}

    def case(side: str) -> Callable[[int], Command]:
        def command(number: int) -> Command:
            prefix = work / f"{side.replace(' ', '').replace(',', '-')}-{number}"
            shutil.rmtree(prefix, ignore_errors=True)
            shutil.copytree(base, prefix, symlinks=True)
            if side == "envbuild":
                argv = [sys.executable, "install.py", str(spec_folder / "envbuild.lock")]
                return Command([*argv, str(prefix)], cwd=work, env=env)
            argv = [uv_binary(), "pip", "install", "--no-deps", "--quiet", "--no-config"]
            argv += ["--python", str(prefix / "bin" / "python"), "--prefix", str(prefix)]
            argv += ["--break-system-packages", "--offline", *files]
            cache = ["--no-cache"] if "no cache" in side else ["--cache-dir", str(work / "uv")]
            return Command([*argv, *cache], cwd=work)

        return command

    return {s: case(s) for s in ("envbuild", "raw uv, warm cache", "raw uv, no cache")}


def report(goals: Goals, times: dict[str, list[float]], first: str, second: str) -> None:
    goals.record(first, spread(times[first]))
    goals.record(second, spread(times[second]))
    goals.record(f"  ratio {first} / {second}", spread(ratios(times[first], times[second]), "x"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    prepare()
    goals = Goals()
    work = Path(tempfile.mkdtemp(prefix="envbuild-bench-pypi-"))
    try:
        channel = runnable.build(CACHE / "runnable", log=lambda m: None)
        wheels = pypi_index.fetch_all(CACHE / "test-wheels", CACHE / "runnable" / "wheels")
        links = pypi_index.find_links(work / "wheels", wheels)
        print(f"1. resolver, one resolution; {args.runs} paired rounds")
        report(goals, rounds(resolver_cases(work, links), args.runs), "uv", "pip")
        print(f"2. envbuild lock of the demo spec, warm caches; {args.runs} paired rounds")
        report(goals, rounds(lock_cases(work, channel, links), args.runs), "with PyPI", "without")
        print(f"3. installing the worker's wheels into a conda prefix; {args.runs} paired rounds")
        times = rounds(install_cases(work), args.runs)
        report(goals, times, "envbuild", "raw uv, warm cache")
        goals.record(
            "  ratio envbuild / raw uv, no cache",
            spread(ratios(times["envbuild"], times["raw uv, no cache"]), "x"),
        )
        goals.record("raw uv, no cache", spread(times["raw uv, no cache"]))
        return goals.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
