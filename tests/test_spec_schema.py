"""The JSON Schema an editor uses (``envbuild schema``) gives the loader's verdict: on every
committed spec, on a table of bad specs, and field by field on generated text."""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from envbuild.errors import SpecError
from envbuild.files.resources import read_template
from envbuild.lock.conda import match_spec_name
from envbuild.spec import fields
from envbuild.spec.file import parse_spec
from envbuild.spec.model import json_schema

from .conftest import REPO

SCHEMA = json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TEMPLATE = yaml.safe_load(read_template("envbuild.yaml"))


def loader_accepts(data: Any) -> bool:
    try:
        parse_spec(json.dumps(data), Path("envbuild.yaml"), match_specs=match_spec_name)
    except SpecError:
        return False
    return True


def schema_accepts(data: Any) -> bool:
    return VALIDATOR.is_valid(data)


COMMITTED = {
    **{str(p.relative_to(REPO)): p.read_text() for p in sorted(REPO.glob("examples/*/*.yaml"))},
    **{str(p.relative_to(REPO)): p.read_text() for p in sorted(REPO.glob("tests/data/*/*.yaml"))},
    "templates/envbuild.yaml": read_template("envbuild.yaml"),
    "README.md": re.search(
        r"### The spec\n\n```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S
    ).group(1),  # type: ignore[union-attr]
}


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_every_committed_spec_is_valid_for_the_schema_and_the_loader(name: str) -> None:
    data = yaml.safe_load(COMMITTED[name])
    if "envbuild.yaml" not in name and not isinstance(data.get("roles"), dict):
        pytest.skip("not a spec")
    errors = [e.message for e in VALIDATOR.iter_errors(data)]
    assert errors == []
    assert loader_accepts(data)


def edit(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``a.b.c`` to ``value`` (``...`` deletes it)."""

    def apply(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data.setdefault(part, {})
        if value is ...:
            data.pop(last, None)
        else:
            data[last] = value

    return apply


# (edit, what it is); the loader decides, the schema must agree.
TABLE: list[tuple[str, Any]] = [
    ("roles.client.gpu", False),
    ("roles.client.gpu", True),
    ("roles.client.gpu", None),
    ("roles.worker.gpu", {"cuda": "12.4"}),
    ("roles.worker.gpu", {"cuda": "99.1"}),
    ("roles.worker.gpu", {"cuda": "12"}),
    ("roles.worker.gpu", {"cuda": " 12.4"}),
    ("roles.worker.gpu", {"cuda": "13.0", "compute-capability": ">=9.0"}),
    ("roles.worker.gpu", {"cuda": "12.4", "compute-capability": ">= 7.5, <9.0"}),
    ("roles.worker.gpu", {"cuda": "12.4", "compute-capability": "sm_80"}),
    ("roles.worker.gpu", {"cuda": "12.4", "count": 0}),
    ("roles.worker.gpu", {"cuda": "12.4", "tensor-cores": 1}),
    ("roles.worker.platforms", ["linux-65"]),
    ("roles.worker.platforms", ["linux-aarch64", "linux-64"]),
    ("roles.worker.platforms", ["osx-arm64"]),
    ("roles.worker.platforms", []),
    ("roles.worker.platforms", ["linux-64", "linux-64"]),
    ("platforms", ["osx-arm64"]),
    ("platforms", ["linux-64", "linux-64"]),
    ("channels", ["https://user:secret@example.com/conda"]),
    ("channels", ["https://conda.anaconda.org/t/tk-123/conda-forge"]),
    ("channels", ["file:///srv/t/channel"]),
    ("channels", ["./local", "conda-forge"]),
    ("channels", ["conda forge"]),
    ("channels", ["https://example.com/c?token=1"]),
    ("channels", []),
    ("dependencies", ["python 3.11.*", "cuda-version 12.4.*"]),
    ("dependencies", ["python 3.11.*", "conda-forge::numpy >=1"]),
    ("dependencies", ["python 3.11.*", ">=1.0"]),
    ("dependencies", ["python 3.11.*", "python 3.11.*"]),
    ("gpu-dependencies", ["__cuda"]),
    ("system-requirements.glibc", "2.17"),
    ("system-requirements.glibc", "2.x"),
    ("system-requirements.linux", "1234567890.1"),
    ("image.base", "ghcr.io/org/base:1.0@sha256:" + "a" * 64),
    ("image.base", "x\nRUN touch /pwned"),
    ("image.base", "--platform=linux/arm64 evil"),
    ("image.base", ""),
    ("image.base", "oci:build/base:latest"),
    ("image.repository", "UPPER/x"),
    ("image.repository", "localhost:5000/dask-gpu"),
    ("image.repository", "ghcr.io/org/dask:tag"),
    ("image.prefix", "/"),
    ("image.prefix", "/etc"),
    ("image.prefix", "/opt/../../x"),
    ("image.prefix", "/opt/env;touch${IFS}/tmp/x;#"),
    ("image.prefix", "/opt/my env"),
    ("image.prefix", "/usr/local/env"),
    ("image.prefix", "/usr/local"),
    ("image.prefix", "/srv/dask"),
    ("image.prefix", "/opt/envbuild"),
    ("image.user", "root"),
    ("image.user", "Dask"),
    ("image.uid", 0),
    ("image.uid", 99999999999),
    ("image.uid", 65534),
    ("roles.worker.resources", {"cpu": "8", "memory": "64Gi", "threads": 8}),
    ("roles.worker.resources", {"cpu": "500m"}),
    ("roles.worker.resources", {"cpu": "0"}),
    ("roles.worker.resources", {"memory": "64GB"}),
    ("roles.worker.resources", {"threads": 0}),
    ("roles.worker.resources", {"gpus": 2}),
    ("pypi-dependencies", ["xarray"]),
    ("pypi-dependencies", ["xarray >=2024.7, <2027", "Foo_Bar[extra1, b] ==1.0"]),
    ("pypi-dependencies", ["rich; python_version >= '3.9'"]),
    ("pypi-dependencies", ["xarray", "xarray"]),
    ("pypi-dependencies", ["xarray @ https://example.com/xarray-1.0-py3-none-any.whl"]),
    ("pypi-dependencies", [">=1.0"]),
    ("pypi-dependencies", ["numpy >"]),
    ("pypi-dependencies", ["-e ."]),
    ("pypi-dependencies", "xarray"),
    ("gpu-pypi-dependencies", ["cupy-cuda{cuda_major}x >=13"]),
    ("gpu-pypi-dependencies", ["cupy-cuda{cuda_major}x", "nvidia-nccl-cu{cuda_major}"]),
    ("gpu-pypi-dependencies", ["cupy-cuda{cuda}x"]),
    ("gpu-pypi-dependencies", ["cupy >={cuda_major}"]),
    ("gpu-pypi-dependencies", ["cupy; python_version > '{cuda_major}'"]),
    ("pypi-index-urls", []),
    ("pypi-index-urls", ["https://pypi.org/simple", "./wheels/simple"]),
    ("pypi-index-urls", ["https://user:secret@pypi.example.com/simple"]),
    ("pypi-index-urls", ["https://pypi.example.com/simple?token=abc"]),
    ("pypi-index-urls", None),
    ("pypi-find-links", ["./wheels"]),
    ("pypi-find-links", ["https://token@files.example.com/wheels/"]),
    ("pypi-find-links", ["my wheels"]),
    ("name", "Dask GPU"),
    ("nickname", "x"),
]


@pytest.mark.parametrize(("path", "value"), TABLE, ids=[f"{p}={v!r}"[:60] for p, v in TABLE])
def test_the_schema_and_the_loader_agree(path: str, value: Any) -> None:
    data = copy.deepcopy(TEMPLATE)
    edit(path, value)(data)
    assert schema_accepts(data) == loader_accepts(data)


def test_the_table_has_both_verdicts() -> None:
    verdicts = []
    for path, value in TABLE:
        data = copy.deepcopy(TEMPLATE)
        edit(path, value)(data)
        verdicts.append(loader_accepts(data))
    assert verdicts.count(True) > 10 and verdicts.count(False) > 30


def test_a_name_twice_under_two_spellings_is_the_loaders_alone() -> None:
    data = copy.deepcopy(TEMPLATE)
    data["dependencies"] = ["python 3.11.*", "numpy", "numpy >=1"]
    assert schema_accepts(data) and not loader_accepts(data)


# Field by field, on generated text: the field's JSON pattern against its validator.
FIELDS: dict[str, tuple[str, str]] = {
    # field path in a spec, and the characters generated text is made of
    "roles.worker.gpu.cuda": ("roles.worker.gpu", "0123456789. 1"),
    "roles.worker.gpu.compute-capability": ("roles.worker.gpu", "<>=!.,0789 "),
    "system-requirements.glibc": ("system-requirements", "0123456789.a"),
    "channels": ("", "abc:/.@?#t_- "),
    "image.repository": ("image", "aA0.:/-_@"),
    "image.base": ("image", "ab0.:/-_@o ic"),
    "image.prefix": ("image", "/aeopstucrlnv.-_ "),
    "image.user": ("image", "aro_t-A0"),
    # without ";": environment markers are the loader's alone (their grammar is no pattern)
    "pypi-dependencies": ("", "xa1[],<>=~.* _-!"),
    "gpu-pypi-dependencies": ("", "cu{}ad_mjor1x>= ="),
    "roles.worker.resources.cpu": ("roles.worker.resources", "0159.m"),
    "roles.worker.resources.memory": ("roles.worker.resources", "0169KMGTiB"),
}


def _with(field: str, text: str) -> dict[str, Any]:
    data = copy.deepcopy(TEMPLATE)
    if field == "roles.worker.gpu.cuda":
        data["roles"]["worker"]["gpu"] = {"cuda": text}
    elif field == "roles.worker.gpu.compute-capability":
        data["roles"]["worker"]["gpu"] = {"cuda": "12.4", "compute-capability": text}
    elif field in ("channels", "pypi-dependencies", "gpu-pypi-dependencies"):
        data[field] = [text]
    else:
        edit(field, text)(data)
    return data


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_generated_values_get_one_verdict(field: str) -> None:
    alphabet = FIELDS[field][1]

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(st.text(alphabet=alphabet, max_size=24))
    def check(text: str) -> None:
        data = _with(field, text)
        assert schema_accepts(data) == loader_accepts(data), repr(text)

    check()


# Exhaustively, on short text: each field's validator against its own JSON pattern.
PAIRS = {
    "cuda": (fields._cuda, fields._CUDA, "0123. "),
    "compute-capability": (fields._compute_capability, fields._COMPUTE_CAPABILITY, "<>=!.,08 "),
    "version": (fields._version, fields._VERSION, "09.a"),
    "channel": (fields._channel, fields._CHANNEL, "a:/@?t. "),
    "prefix": (fields._prefix, fields._PREFIX, "/oetsu."),
    "user": (fields._user, f"^(?!root$){fields._USER}$", "arot_-A"),
    "cpu": (fields._cpu, fields._CPU, "0159.m"),
    "memory": (fields._memory, fields._MEMORY, "0169KGi"),
}


@pytest.mark.parametrize("field", sorted(PAIRS))
def test_every_short_value_gets_one_verdict_from_the_validator_and_the_pattern(
    field: str,
) -> None:
    check, pattern, alphabet = PAIRS[field]
    disagreements = []
    for length in range(6):
        for letters in itertools.product(alphabet, repeat=length):
            text = "".join(letters)
            try:
                check(text)
                loader = True
            except ValueError:
                loader = False
            if loader != (re.search(pattern, text) is not None):
                disagreements.append(text)
    assert disagreements == []
