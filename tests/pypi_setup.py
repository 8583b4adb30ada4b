"""The offline PyPI of the PyPI tests: pinned real wheels (envbuild.testing.pypi_index) beside
the runnable channel, and the demo spec with PyPI dependencies added."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envbuild.testing import pypi_index

from .conftest import REPO, runnable_spec

CACHE = REPO / "build" / "cache"


@pytest.fixture(scope="session")
def pypi_wheels() -> list[Path]:
    """Every wheel of the offline index, fetched once from PyPI into build/cache."""
    return pypi_index.fetch_all(CACHE / "test-wheels", CACHE / "runnable" / "wheels")


def pypi_spec(
    folder: Path,
    channel: Path,
    wheels: list[Path],
    *,
    pypi: list[str],
    gpu_pypi: list[str] = (),  # type: ignore[assignment]
    extra: str = "",
    scheduler_cuda: str = "12.4",
    index: bool = False,
    image: Callable[[str], str] = str,
) -> Path:
    """The demo spec over the runnable channel, with conda cupy replaced by what ``gpu_pypi``
    asks, ``pypi`` as pypi-dependencies, and the offline wheels as its only PyPI source
    (a find-links folder, or with ``index`` a PEP 503 index); ``image`` edits the text too
    (conftest.image_section)."""
    if index:
        simple = pypi_index.simple_index(folder / "pypi", wheels)
        source = f"pypi-index-urls: ['{simple.as_uri()}']\n"
    else:
        pypi_index.find_links(folder / "wheels", wheels)
        source = "pypi-index-urls: []\npypi-find-links: [./wheels]\n"

    def edit(text: str) -> str:
        text = pypi_index.without_pypi(image(text))
        text = text.replace("gpu-dependencies: [cupy]", "gpu-dependencies: []")
        text = re.sub(
            r'scheduler:\n    gpu: \{cuda: "12.4"',
            f'scheduler:\n    gpu: {{cuda: "{scheduler_cuda}"',
            text,
        )
        return (
            text
            + f"pypi-dependencies: {json.dumps(pypi)}\n"
            + (f"gpu-pypi-dependencies: {json.dumps(list(gpu_pypi))}\n" if gpu_pypi else "")
            + source
            + extra
        )

    return runnable_spec(folder, channel, edit=edit)


def wheels_by_target(lock: Path) -> dict[str, dict[str, str]]:
    """target -> PyPI name -> version, straight from the lock's JSON."""
    document: dict[str, Any] = json.loads(lock.read_text())
    found: dict[str, dict[str, str]] = {}
    for variant, info in document["variants"].items():
        for platform in info["targets"]:
            found[f"{variant}/{platform}"] = {}
    for entry in document.get("pypi-packages", []):
        for target in entry["targets"]:
            assert entry["name"] not in found[target], f"{entry['name']} twice in {target}"
            found[target][entry["name"]] = entry["version"]
    return found
