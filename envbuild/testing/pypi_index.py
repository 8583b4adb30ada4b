"""An offline PyPI for the tests: real wheels, fetched once from PyPI and pinned by sha256,
served as a find-links folder and as a PEP 503 simple index (``file://``).

- ``xarray`` 2024.7.0, 2026.2.0 and 2026.9.0 (pure Python). Over the runnable channel's
  conda numpy 2.0.2, pandas 2.2.2 and packaging 24.1, the newest that fits is 2026.2.0:
  2026.9.0 needs packaging>=24.2.
- ``cupy-cuda11x`` and ``cupy-cuda12x`` 13.3.0 and ``fastrlock`` 0.8.2 (compiled, linux-64
  and linux-aarch64), the runnable channel's own pinned wheels (``wheels.tsv``), for
  gpu-pypi-dependencies.

    python -m envbuild.testing.pypi_index OUT [--cache DIR]   (a find-links folder, for the demo)

The example spec (examples/dask-gpu) takes xarray from ``../../build/demo-wheels``, the folder
``make demo`` writes with this; a copy of the example elsewhere points it at the wheel cache
(``with_find_links``: one path for every copy, so copies lock alike, as they do from the one
runnable channel), or drops its PyPI keys (``without_pypi``) to measure or test the conda
packages alone.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

from envbuild.files.digest import sha256_hex
from envbuild.testing.wheels import PinnedWheel, fetch, normalize, pinned_wheels

XARRAY = (
    PinnedWheel(
        "any",
        "xarray==2024.7.0",
        "xarray-2024.7.0-py3-none-any.whl",
        "1b0fd51ec408474aa1f4a355d75c00cc1c02bd425d97b2c2e551fd21810e7f64",
    ),
    PinnedWheel(
        "any",
        "xarray==2026.2.0",
        "xarray-2026.2.0-py3-none-any.whl",
        "e927d7d716ea71dea78a13417970850a640447d8dd2ceeb65c5687f6373837c9",
    ),
    PinnedWheel(
        "any",
        "xarray==2026.9.0",
        "xarray-2026.9.0-py3-none-any.whl",
        "fe349fa871628b1a0a5217af3fe1283a2862d5485156e6eda354fffb81c3bb7c",
    ),
)
#: The example's find-links, as examples/dask-gpu/envbuild.yaml writes it.
EXAMPLE_FIND_LINKS = "[../../build/demo-wheels]"
_PYPI_KEYS = re.compile(r"^(?:gpu-)?pypi-[a-z-]+:.*\n", re.MULTILINE)
#: From wheels.tsv: the compiled wheels the GPU tests take from PyPI.
GPU_NAMES = ("cupy-cuda11x", "cupy-cuda12x", "fastrlock")


def gpu_wheels() -> list[PinnedWheel]:
    """The pinned Linux (x86-64 and aarch64) cupy and fastrlock wheels of the runnable
    channel: the example's workers run on both."""
    linux = ("linux-64", "linux-aarch64")
    return [w for w in pinned_wheels() if w.platform in linux and w.name in GPU_NAMES]


def fetch_all(cache: Path, runnable_wheels: Path) -> list[Path]:
    """Every wheel of the offline index, present and sha256-checked (fetched once)."""
    paths: list[Path] = []
    for wheel in XARRAY:  # one at a time: pip fetches one version of a name per call
        paths += fetch([wheel], cache).values()
    paths += fetch(gpu_wheels(), runnable_wheels).values()
    return paths


def find_links(folder: Path, wheels: list[Path]) -> Path:
    """A find-links folder holding ``wheels`` (hard links where possible)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in wheels:
        target = folder / path.name
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return folder


def without_pypi(text: str) -> str:
    """A spec's text without its PyPI keys (each on one line, as the example writes them)."""
    return _PYPI_KEYS.sub("", text)


def with_find_links(text: str, cache: Path) -> str:
    """The example's text with its find-links pointed at the pinned xarray wheels, fetched
    once into ``cache/test-wheels`` (``cache``: build/cache)."""
    folder = cache.resolve() / "test-wheels"
    for wheel in XARRAY:  # one at a time, as fetch_all
        fetch([wheel], folder)
    return text.replace(EXAMPLE_FIND_LINKS, f"['{folder}']")


def simple_index(folder: Path, wheels: list[Path]) -> Path:
    """A PEP 503 simple index under ``folder/simple`` with the wheels in ``folder/files``."""
    files = find_links(folder / "files", wheels)
    projects: dict[str, list[Path]] = {}
    for path in sorted(files.iterdir()):
        projects.setdefault(normalize(path.name.split("-")[0]), []).append(path)
    root = folder / "simple"
    for project, paths in projects.items():
        page = root / project
        page.mkdir(parents=True, exist_ok=True)
        links = "".join(
            f'<a href="../../files/{html.escape(p.name)}#sha256={sha256_hex(p)}">'
            f"{html.escape(p.name)}</a>\n"
            for p in paths
        )
        (page / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    index = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (root / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{index}</body></html>\n")
    return root


def main(argv: list[str] | None = None) -> int:
    """Write the find-links folder ``OUT`` (wheels fetched once into ``--cache``)."""
    import argparse

    parser = argparse.ArgumentParser(description="The offline PyPI of envbuild's tests.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("build") / "cache")
    args = parser.parse_args(argv)
    wheels = fetch_all(args.cache / "test-wheels", args.cache / "runnable" / "wheels")
    print(find_links(args.out, wheels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
