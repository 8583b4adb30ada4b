"""Role images as the lock decides them (pure): layers, tags, Dockerfile and entrypoint."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from envbuild.env import runtime
from envbuild.image.plan import ImageSettings, buildable_roles, plan_image, split_layers
from envbuild.lock.lockfile import Lock, loads

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
    assert skipped == {"client": "locked for osx-arm64 only; images are built for linux-64"}
