"""The spec's PyPI keys: what users write, what decides the lock, and secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from envbuild.errors import SpecError
from envbuild.lock.conda import match_spec_name
from envbuild.spec.file import parse_spec
from envbuild.spec.model import spec_hash

MINIMAL = """\
name: demo
channels: [conda-forge]
platforms: [linux-64]
dependencies: [python 3.11.*]
roles:
  client: {gpu: false}
  scheduler: {gpu: false}
  worker: {gpu: {cuda: "12.4"}}
"""
#: The hash MINIMAL had before the PyPI keys existed: its lock must stay current.
MINIMAL_HASH = "sha256:da032c570d647b6cf46fbda6e18e4290b6aec11f26557dad99eecfd54ac3d1b6"


def hash_of(text: str) -> str:
    return spec_hash(parse_spec(text, Path("envbuild.yaml"), match_specs=match_spec_name).spec)


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, Path("envbuild.yaml"), match_specs=match_spec_name)
    return str(caught.value) + "\n" + (caught.value.details or "")


def test_a_spec_without_pypi_keys_keeps_the_hash_it_had_before_they_existed() -> None:
    assert hash_of(MINIMAL) == MINIMAL_HASH
    assert hash_of(MINIMAL + "pypi-dependencies: []\npypi-find-links: []\n") == MINIMAL_HASH


@pytest.mark.parametrize(
    "extra",
    [
        "pypi-dependencies: [xarray]\n",
        "gpu-pypi-dependencies: ['cupy-cuda{cuda_major}x']\n",
        "pypi-index-urls: []\n",
        "pypi-index-urls: [https://pypi.example.com/simple]\n",
        "pypi-find-links: [./wheels]\n",
    ],
)
def test_every_pypi_key_decides_the_lock(extra: str) -> None:
    assert hash_of(MINIMAL + extra) != MINIMAL_HASH


def test_a_requirement_twice_is_refused_but_a_name_may_take_markers() -> None:
    message = error_of(MINIMAL + "pypi-dependencies: [xarray, xarray]\n")
    assert "envbuild.yaml:9" in message and "'xarray' is listed twice" in message
    both = "pypi-dependencies: [xarray, \"xarray <2025; sys_platform == 'darwin'\"]\n"
    assert hash_of(MINIMAL + both) != MINIMAL_HASH


@pytest.mark.parametrize("key", ["pypi-index-urls", "pypi-find-links"], ids=["index", "find-links"])
@pytest.mark.parametrize(
    "location",
    [
        "https://alice:s3cr3t@pypi.example.com/simple",
        "https://pypi.example.com/simple?token=s3cr3t",
        "s3cr3t@pypi.example.com/simple",
    ],
)
def test_credentials_in_an_index_are_refused_and_never_echoed(key: str, location: str) -> None:
    message = error_of(MINIMAL + f"{key}: ['{location}']\n")
    assert "carries credentials" in message and "netrc" in message
    assert "s3cr3t" not in message


def test_a_placeholder_other_than_the_cuda_major_is_refused() -> None:
    message = error_of(MINIMAL + "gpu-pypi-dependencies: ['cupy-cuda{cuda}x']\n")
    assert "the only placeholder is {cuda_major}" in message
