"""Role images as the lock decides them (pure): layers, tags, Dockerfile and entrypoint."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from envbuild.env import runtime
from envbuild.image import matrix
from envbuild.image.plan import (
    ImageSettings,
    buildable_roles,
    plan_image,
    plan_role,
    split_layers,
)
from envbuild.lock.lockfile import Lock, LockedTarget, Target, loads

from .conftest import TESTS

GOLDEN = TESTS / "golden" / "images"
UPDATE = os.environ.get("ENVBUILD_UPDATE_GOLDEN") == "1"
SETTINGS = ImageSettings(base="debian:bookworm-slim", repository="registry.example.com/dask-gpu")


def golden_lock() -> Lock:
    """The committed golden lock, its channel at a fixed URL: the same digest everywhere."""
    text = (TESTS / "golden" / "dask-gpu" / "envbuild.lock").read_text()
    return loads(text.replace("@CHANNEL_URL@", "file:///channel"), Path("envbuild.lock"))


@pytest.mark.parametrize("role", ["client", "scheduler", "worker"])
def test_dockerfile_and_entrypoint_golden(role: str) -> None:
    plan = plan_image(golden_lock(), role, SETTINGS, runtime.files())
    for name, text in (
        (f"Dockerfile.{role}", plan.dockerfile),
        (f"entrypoint.{role}.sh", plan.entrypoint),
    ):
        golden = GOLDEN / name
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{name} changed: review, then ENVBUILD_UPDATE_GOLDEN=1"


def test_the_shared_layer_is_what_every_variant_holds_byte_for_byte() -> None:
    lock = golden_lock()
    cpu, gpu = split_layers(lock, "cpu"), split_layers(lock, "cuda-12.4")
    assert cpu.shared == tuple(p for p in gpu.shared)  # one shared layer for every role
    assert {p.name for p in gpu.variant} == {
        "cuda-cudart",
        "cuda-cudart_linux-64",
        "cuda-version",
        "cupy",
        "fastrlock",
        "libstdcxx",
    }
    assert cpu.variant == ()
    both = {p.name for p in cpu.shared}
    assert {"python", "numpy", "dask", "distributed"} <= both


def test_tags_follow_what_goes_into_the_image() -> None:
    lock = golden_lock()
    source = runtime.files()
    before = {r: plan_image(lock, r, SETTINGS, source) for r in ("client", "scheduler", "worker")}
    assert before["scheduler"].tag.startswith("scheduler-cuda-12.4-")
    assert before["scheduler"].reference.startswith("registry.example.com/dask-gpu:")
    # The worker now needs an H100: the resolved packages, hence the lock's digest, did not
    # change; only the worker's image (its role file and labels) does.
    roles = tuple(
        dataclasses.replace(r, compute_capability=">=9.0") if r.name == "worker" else r
        for r in lock.roles
    )
    after = {
        r: plan_image(dataclasses.replace(lock, roles=roles), r, SETTINGS, source) for r in before
    }
    assert {r for r in before if after[r].tag != before[r].tag} == {"worker"}
    assert all(after[r].split == before[r].split for r in before)
    assert after["worker"].labels["io.envbuild.compute-capability"] == ">=9.0"
    assert after["scheduler"].labels["io.envbuild.compute-capability"] == ">=7.5"
    # Another base image: every tag changes.
    other = dataclasses.replace(SETTINGS, base="debian:trixie-slim")
    assert all(plan_image(lock, r, other, source).tag != before[r].tag for r in before)


def test_roles_without_linux_have_no_image() -> None:
    lock = golden_lock()
    mac_only = tuple(
        dataclasses.replace(r, platforms=("osx-arm64",)) if r.name == "client" else r
        for r in lock.roles
    )
    roles, skipped = buildable_roles(dataclasses.replace(lock, roles=mac_only))
    assert roles == ["scheduler", "worker"]
    assert skipped == {
        "client": "locked for osx-arm64 only; images are built for linux-64, linux-aarch64, "
        "linux-ppc64le"
    }


def with_arm64_workers(lock: Lock) -> Lock:
    """``lock`` with the worker also locked for linux-aarch64 (GH200s beside A100s): its
    CUDA target again, every compiled package an aarch64 build (another sha256)."""
    x86 = lock.target(Target("cuda-12.4", "linux-64"))
    packages = tuple(
        p
        if p.subdir == "noarch"
        else dataclasses.replace(
            p,
            subdir="linux-aarch64",
            url=p.url.replace("linux-64", "linux-aarch64"),
            sha256=p.sha256[::-1],
        )
        for p in x86.packages
    )
    arm = LockedTarget(
        Target("cuda-12.4", "linux-aarch64"), x86.specs, x86.virtual_packages, packages
    )
    roles = tuple(
        dataclasses.replace(r, platforms=("linux-64", "linux-aarch64")) if r.name == "worker" else r
        for r in lock.roles
    )
    return dataclasses.replace(lock, roles=roles, targets=(*lock.targets, arm))


def test_a_role_of_two_platforms_gets_one_tag_for_an_index_of_two_images() -> None:
    lock = golden_lock()
    both = with_arm64_workers(lock)
    source = runtime.files()
    worker = plan_role(both, "worker", SETTINGS, source)
    assert worker.is_index and worker.platforms == ("linux-64", "linux-aarch64")
    amd64, arm64 = worker.images
    # Each image has its own tag (the architecture after it); the role's names the index.
    assert amd64.tag.endswith("-amd64") and arm64.tag.endswith("-arm64")
    assert worker.tag.startswith("worker-cuda-12.4-") and len(worker.tag.rsplit("-", 1)[1]) == 12
    assert len({worker.tag, amd64.tag, arm64.tag}) == 3
    assert arm64.labels["io.envbuild.platform"] == "linux-aarch64"
    assert amd64.labels["io.envbuild.platform"] == "linux-64"
    assert '"platform": "linux-aarch64"' not in amd64.sbom
    # The split holds per platform: on arm64 only the worker's variant runs, yet the CUDA
    # stack is its own layer there too (what not every variant holds), of aarch64 builds.
    assert amd64.split == plan_image(lock, "worker", SETTINGS, source).split
    for layer in ("shared", "variant"):
        names = {p.name for p in getattr(arm64.split, layer)}
        assert names == {p.name for p in getattr(amd64.split, layer)}, layer
    assert {p.name for p in arm64.split.variant} >= {"cupy", "cuda-cudart", "cuda-version"}
    assert {p.subdir for p in arm64.split.variant} == {"linux-aarch64", "noarch"}
    alike = set(arm64.split.shared) & set(amd64.split.shared)
    assert alike and {p.subdir for p in alike} == {"noarch"}  # the same pure-Python packages
    # A role of one platform is tagged with its image, as before: no index, no suffix.
    for role in ("client", "scheduler"):
        single = plan_role(both, role, SETTINGS, source)
        assert not single.is_index and single.platforms == ("linux-64",)
        assert single.tag == single.images[0].tag == plan_image(both, role, SETTINGS, source).tag
        assert not single.tag.endswith("-amd64")
    # What goes into one platform's image moves that image's tag and the index's.
    moved = dataclasses.replace(
        both,
        targets=tuple(
            dataclasses.replace(t, packages=t.packages[1:]) if t.platform == "linux-aarch64" else t
            for t in both.targets
        ),
    )
    again = plan_role(moved, "worker", SETTINGS, source)
    assert again.tag != worker.tag and again.images[1].tag != arm64.tag


def test_the_matrix_has_a_build_per_variant_and_platform() -> None:
    both = with_arm64_workers(golden_lock())
    plans = [
        plan_role(both, r, SETTINGS, runtime.files()) for r in ("client", "scheduler", "worker")
    ]
    worker = plans[2]
    have = {worker.images[0].reference}  # the amd64 job ran; the arm64 one has not
    builds = matrix.plan_builds(plans, lambda reference: reference in have)
    entries = {(e["variant"], e["platform"]): e for e in matrix.github_matrix(builds)["include"]}
    assert sorted(entries) == [
        ("cpu", "linux-64"),
        ("cuda-12.4", "linux-64"),
        ("cuda-12.4", "linux-aarch64"),
    ]
    arm = entries["cuda-12.4", "linux-aarch64"]
    assert arm["args"] == "--role worker --platform linux-aarch64"
    assert arm["images"] == worker.images[1].reference and arm["missing"] == "worker"
    assert arm["indexes"] == worker.reference
    x86 = entries["cuda-12.4", "linux-64"]
    assert x86["args"] == "--role scheduler --role worker --platform linux-64"
    # The amd64 image is there, but the role is not complete until its index is.
    assert x86["missing"] == "scheduler worker"
    table = matrix.render_table(builds, {})
    assert f"worker: index {worker.reference} (linux-64, linux-aarch64): missing" in table
    assert "3 builds (cpu linux-64, cuda-12.4 linux-64, cuda-12.4 linux-aarch64)" in table
