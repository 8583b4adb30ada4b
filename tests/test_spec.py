"""The spec model: what users write, and the errors they get when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envbuild.errors import SpecError
from envbuild.files.resources import SCHEMA_PATH, read_template
from envbuild.lock.conda import match_spec_name
from envbuild.lock.locking import plan_for
from envbuild.lock.variants import derive_variants
from envbuild.spec.file import load_spec, parse_spec
from envbuild.spec.model import json_schema, spec_hash

from .conftest import REPO

MINIMAL = """\
name: demo
channels: [conda-forge]
platforms: [linux-64]
dependencies: [python 3.11.*]
roles:
  client: {gpu: false}
  scheduler: {gpu: false}
  worker:
    gpu:
      cuda: 12.10
"""


def parse(text: str) -> object:
    return parse_spec(text, Path("envbuild.yaml"), match_specs=match_spec_name).spec


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, Path("envbuild.yaml"), match_specs=match_spec_name)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_and_unquoted_versions_stay_text() -> None:
    spec = parse_spec(MINIMAL, Path("envbuild.yaml")).spec
    worker = spec.roles.worker.gpu
    assert worker is not None
    assert worker.cuda == "12.10"  # YAML would make 12.10 the float 12.1
    assert (worker.count, worker.compute_capability) == (1, None)
    assert spec.system_requirements.glibc == "2.28"
    assert spec.image.prefix == "/opt/env" and spec.image.uid == 1000
    assert spec.role_platforms("client") == ["linux-64"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("name: demo", "name: Demo!", "envbuild.yaml:1: name: string should match pattern"),
        ("[conda-forge]", "[]", "envbuild.yaml:2: channels: list should have at least 1 item"),
        ("[linux-64]", "[linux-32]", "envbuild.yaml:3: platforms[0]: unknown platform 'linux-32'"),
        (
            "[python 3.11.*]",
            "[python 3.11.*, '>=1']",
            "envbuild.yaml:4: dependencies[1]: '>=1' names no package",
        ),
        (
            "[python 3.11.*]",
            "[python 3.11.*, python]",
            "envbuild.yaml:4: dependencies[1]: 'python' is already required at dependencies[0]",
        ),
        (
            "[python 3.11.*]",
            "[python, cuda-version 12.*]",
            "dependencies[1]: 'cuda-version' is chosen per variant",
        ),
        (
            "  client: {gpu: false}",
            "  client: {gpu: true}",
            "envbuild.yaml:6: roles.client.gpu: write the GPU the role needs instead of true",
        ),
        (
            "  client: {gpu: false}",
            "  client: {gpu: false, memory: 4}",
            "envbuild.yaml:6: roles.client.memory: unknown key 'memory' "
            "(allowed here: platforms, gpu, resources)",
        ),
        (
            "  client: {gpu: false}",
            "  client: {gpu: false}\n  client: {gpu: false}",
            "envbuild.yaml:7: duplicate key 'client' (first at line 6)",
        ),
        ("  client: {gpu: false}\n", "", "envbuild.yaml:5: roles.client: role 'client' is missing"),
        (
            "      cuda: 12.10",
            "      cuda: 10.2",
            "envbuild.yaml:10: roles.worker.gpu.cuda: CUDA "
            "10.2 is not supported (supported: 11.x, 12.x, 13.x)",
        ),
        (
            "      cuda: 12.10",
            "      cuda: 12.4\n      count: 0",
            "envbuild.yaml:11: roles.worker.gpu.count: input should be greater than or equal to 1",
        ),
        (
            "      cuda: 12.10",
            "      cuda: 12.4\n      compute-capability: '>=8'",
            "envbuild.yaml:11: roles.worker.gpu.compute-capability: '>=8' is not a compute-capabi",
        ),
        (
            "  client: {gpu: false}",
            "  client: {gpu: {cuda: '12.4'}, platforms: [osx-arm64]}",
            "envbuild.yaml:6: roles.client.platforms: "
            "role 'client' has a GPU but osx-arm64 has no CUDA",
        ),
        (
            "name: demo",
            "name: demo\nsystem-requirements: {glibc: two}",
            "envbuild.yaml:2: system-requirements.glibc: 'two' is not a version",
        ),
        ("name: demo", "name: [demo", "envbuild.yaml:2: invalid YAML"),
    ],
)
def test_errors_name_the_line_and_the_fix(old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    assert expected in error_of(MINIMAL.replace(old, new, 1))


@pytest.mark.parametrize(
    "channel",
    [
        "https://user:s3cret@conda.example.com/internal",
        "https://conda.anaconda.org/t/tk-123/private",
    ],
)
def test_channels_with_credentials_are_refused_without_echoing_them(channel: str) -> None:
    message = error_of(MINIMAL.replace("[conda-forge]", f"['{channel}']"))
    assert "envbuild.yaml:2: channels[0]: a channel carries credentials" in message
    assert "RATTLER_AUTH_FILE" in message
    assert "s3cret" not in message and "tk-123" not in message


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("robot:s3cret@ghcr.io/org/dask", "without a scheme, credentials or digest"),
        ("https://ghcr.io/org/dask", "without a scheme, credentials or digest"),
        ("ghcr.io/org/dask:latest", "is not an image repository"),
        ("ghcr.io/Org/dask", "is not an image repository"),
    ],
)
def test_an_image_repository_is_a_repository_and_never_echoes_a_secret(
    repository: str, expected: str
) -> None:
    message = error_of(MINIMAL + f"image: {{repository: '{repository}'}}\n")
    assert "image.repository: " in message and expected in message
    assert "s3cret" not in message
    assert parse_spec(MINIMAL + "image: {repository: '127.0.0.1:5000/dask-gpu'}\n", Path("a"))


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert "a spec is a mapping" in error_of("- a list\n")
    with pytest.raises(SpecError, match=r"no such spec file .*envbuild init"):
        load_spec(tmp_path / "envbuild.yaml")


def test_hash_ignores_comments_and_image_but_not_dependencies() -> None:
    base = spec_hash(parse_spec(MINIMAL, Path("a.yaml")).spec)
    commented = "# hello\n" + MINIMAL + "image: {base: 'ubuntu:24.04'}\n"
    assert spec_hash(parse_spec(commented, Path("b.yaml")).spec) == base
    changed = MINIMAL.replace("[python 3.11.*]", "[python 3.12.*]")
    assert spec_hash(parse_spec(changed, Path("a.yaml")).spec) != base


def test_channels_resolve_relative_to_the_spec(tmp_path: Path) -> None:
    text = MINIMAL.replace("[conda-forge]", "[conda-forge, ./local, 'https://example.com/c/']")
    spec_file = parse_spec(text, tmp_path / "envbuild.yaml")
    assert spec_file.channel_urls() == [
        "https://conda.anaconda.org/conda-forge",
        (tmp_path / "local").as_uri(),
        "https://example.com/c",
    ]


def test_committed_schema_is_current() -> None:
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == json_schema(), "run `make schema` and commit the result"
    assert committed["properties"]["roles"]["$ref"] == "#/$defs/Roles"
    assert committed["$defs"]["Roles"]["required"] == ["client", "scheduler", "worker"]
    assert committed["$defs"]["Role"]["additionalProperties"] is False


SHIPPED = {
    **{p.parent.name: p.read_text() for p in sorted((REPO / "examples").glob("*/envbuild.yaml"))},
    "init-template": read_template("envbuild.yaml"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_spec_is_valid(name: str) -> None:
    folder = REPO / "examples" / name if name != "init-template" else REPO / "templates"
    spec_file = parse_spec(SHIPPED[name], folder / "envbuild.yaml", match_specs=match_spec_name)
    variants = {v.name: v.roles for v in derive_variants(spec_file.spec)}
    assert variants == {"cpu": ("client",), "cuda-12.4": ("scheduler", "worker")}
    if name == "dask-gpu":
        return  # its channel only exists after `make demo`; test_lock locks it for real
    plan = plan_for(spec_file)
    assert plan.channels == ("https://conda.anaconda.org/conda-forge",)
    assert {str(r.target) for r in plan.requests} == {
        "cpu/linux-64",
        "cpu/osx-arm64",
        "cuda-12.4/linux-64",
    }
    gpu = next(r for r in plan.requests if str(r.target) == "cuda-12.4/linux-64")
    assert "cuda-version 12.4.*" in gpu.specs and "__cuda=12.4=0" in gpu.virtual_packages
    cpu = next(r for r in plan.requests if str(r.target) == "cpu/linux-64")
    assert cpu.constraints == ("cuda-version <0a0", "cudatoolkit <0a0") and not gpu.constraints


def test_a_gpu_dependency_may_pick_the_cuda_build_of_a_dependency() -> None:
    text = MINIMAL.replace(
        "[python 3.11.*]", "[python 3.11.*, pytorch]\ngpu-dependencies: ['pytorch * cuda*']"
    )
    spec = parse_spec(text, Path("envbuild.yaml")).spec
    assert spec.gpu_dependencies == ["pytorch * cuda*"]


def test_the_readme_spec_example_is_valid(tmp_path: Path) -> None:
    import re

    readme = (REPO / "README.md").read_text()
    block = re.search(r"### The spec\n\n```yaml\n(.*?)```", readme, re.S)
    assert block, "README.md lost its spec example"
    spec = parse_spec(block.group(1), tmp_path / "envbuild.yaml", match_specs=match_spec_name).spec
    assert spec.roles.worker.gpu is not None and spec.roles.worker.gpu.cuda == "12.4"
