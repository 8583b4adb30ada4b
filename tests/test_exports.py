"""envbuild export: golden files for every format, read back by the tools that consume them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from envbuild.lock.conda import install_order
from envbuild.lock.lockfile import Target, read_lock

from .conftest import TESTS

GOLDEN = TESTS / "golden" / "dask-gpu"
UPDATE = os.environ.get("ENVBUILD_UPDATE_GOLDEN") == "1"

EXPORTS = {
    "explicit-worker-linux-64.txt": ["--format", "explicit", "--role", "worker"],
    "environment-client-osx-arm64.yml": [
        "--format",
        "environment",
        "--role",
        "client",
        "--platform",
        "osx-arm64",
    ],
    "conda-lock-client.yml": ["--format", "conda-lock", "--role", "client"],
    "conda-lock-worker.yml": ["--format", "conda-lock", "--role", "worker"],
    "pixi.lock": ["--format", "pixi"],
}


def normalized(text: str, channel: Path) -> str:
    """Machine-independent text: the channel's location becomes a placeholder."""
    return text.replace(channel.as_uri(), "@CHANNEL_URL@").replace(str(channel), "@CHANNEL_PATH@")


@pytest.mark.parametrize("name", [*EXPORTS, "envbuild.lock"])
def test_golden(name: str, locked: Path, envbuild: Callable[..., Result]) -> None:
    if name == "envbuild.lock":
        produced = locked.parent / "envbuild.lock"
    else:
        produced = locked.parent / name
        result = envbuild("export", *EXPORTS[name], "-o", produced, "-f", locked)
        assert result.exit_code == 0, result.output
    text = normalized(produced.read_text(), locked.parent / "channel")
    golden = GOLDEN / name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run with ENVBUILD_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{name} changed: review, then ENVBUILD_UPDATE_GOLDEN=1"


def test_explicit_is_in_install_order_and_matches_conda_lock_render(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    lock = read_lock(locked.parent / "envbuild.lock")
    target = lock.target(Target("cuda-12.4", "linux-64"))
    explicit = envbuild("export", "--format", "explicit", "--role", "worker", "-f", locked).stdout
    urls = [line for line in explicit.splitlines() if line.startswith("file://")]
    assert [u.split("#")[1] for u in urls] == [p.md5 for p in install_order(target.packages)]
    position = {p.name: i for i, p in enumerate(install_order(target.packages))}
    for package in target.packages:
        for dependency in package.depends:
            name = dependency.split()[0]
            if name in position:
                assert position[name] < position[package.name], (name, package.name)
    assert explicit.splitlines()[3] == "@EXPLICIT"

    conda_lock_file = tmp_path / "conda-lock.yml"
    envbuild(
        "export", "--format", "conda-lock", "--role", "worker", "-o", conda_lock_file, "-f", locked
    )
    conda_lock = Path(sys.executable).parent / "conda-lock"
    subprocess.run(
        [str(conda_lock), "render", "-k", "explicit", "-p", "linux-64", str(conda_lock_file)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    rendered = (tmp_path / "conda-linux-64.lock").read_text()
    assert sorted(line for line in rendered.splitlines() if line.startswith("file://")) == sorted(
        urls
    )


def test_conda_lock_reader_sees_every_locked_record(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    from conda_lock.lockfile import parse_conda_lock_file

    lock = read_lock(locked.parent / "envbuild.lock")
    output = tmp_path / "conda-lock.client.yml"
    assert (
        envbuild(
            "export", "--format", "conda-lock", "--role", "client", "-o", output, "-f", locked
        ).exit_code
        == 0
    )

    parsed = parse_conda_lock_file(output)

    assert sorted(parsed.metadata.platforms) == ["linux-64", "osx-arm64"]
    for platform in ("linux-64", "osx-arm64"):
        expected = {
            (p.name, p.version, p.build, p.url, p.md5, p.sha256)
            for p in lock.target(Target("cpu", platform)).packages
        }
        seen = {
            (d.name, d.version, d.build, d.url, d.hash.md5, d.hash.sha256)
            for d in parsed.package
            if d.platform == platform
        }
        assert seen == expected


def test_pixi_lock_holds_every_variant_and_platform(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    import json

    from rattler import LockFile

    lock = read_lock(locked.parent / "envbuild.lock")
    output = tmp_path / "pixi.lock"
    assert envbuild("export", "--format", "pixi", "-o", output, "-f", locked).exit_code == 0

    pixi = LockFile.from_path(output)  # rattler's own reader, not envbuild's adapter
    environments = dict(pixi.environments())
    assert sorted(environments) == ["cpu", "cuda-12.4"]
    for target in lock.targets:
        environment = environments[target.variant]
        platform = next(p for p in environment.platforms() if str(p.subdir) == target.platform)
        # what the variant declares, __cuda for CUDA variants, travels with its platform
        assert sorted(platform.virtual_packages) == sorted(target.virtual_packages)
        records = {
            (
                r["name"],
                r["version"],
                r["build"],
                r["sha256"],
                r["md5"],
                r["url"],
                tuple(r["depends"]),
            )
            for r in (
                json.loads(rec.to_json())
                for rec in environment.conda_repodata_records_for_platform(platform)
            )
        }
        assert records == {
            (p.name, p.version, p.build, p.sha256, p.md5, p.url, p.depends) for p in target.packages
        }, target.target
        checked = unmet_virtual_requirements(
            environment.conda_repodata_records_for_platform(platform), platform
        )
        assert checked["unmet"] == [], target.target
        if target.variant != "cpu":
            assert checked["met"] >= 1  # cuda-version's __cuda >=12 was checked


def unmet_virtual_requirements(records: Any, platform: Any) -> dict[str, Any]:
    """Virtual-package requirements of ``records`` (depends: must be declared; constrains:
    must match when declared) against what ``platform`` declares, as a reader re-checking
    the lock sees them (``__cuda >=12`` is met by ``__cuda=12.4=0``)."""
    from rattler import Version, VersionSpec

    declared = {}
    for text in platform.virtual_packages:
        name, version, _ = text.split("=")
        declared[name] = Version(version)
    met, unmet = 0, []
    for record in records:
        for kind, requirements in (("depends", record.depends), ("constrains", record.constrains)):
            for requirement in requirements:
                name, _, spec = requirement.partition(" ")
                if not name.startswith("__") or (kind == "constrains" and name not in declared):
                    continue
                ok = name in declared and (
                    not spec.strip() or VersionSpec(spec.split()[0]).matches(declared[name])
                )
                met += ok
                if not ok:
                    unmet.append(f"{record.name.normalized}: {requirement}")
    return {"met": met, "unmet": unmet}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--format", "explicit", "--role", "gateway"], 9, "the lock has no role 'gateway'"),
        (
            ["--format", "explicit", "--role", "worker", "--platform", "osx-arm64"],
            9,
            "role 'worker' is not locked for osx-arm64 (locked for: linux-64)",
        ),
        (["--format", "explicit"], 9, "choose a role with --role"),
        (["--format", "pixi", "--role", "worker", "-o", "x"], 9, "drop --role/--platform"),
        (["--format", "yaml", "--role", "worker"], 2, "Invalid value for '--format'"),
    ],
)
def test_bad_selection(
    locked: Path, envbuild: Callable[..., Result], args: list[str], code: int, message: str
) -> None:
    result = envbuild("export", *args, "-f", locked)
    assert result.exit_code == code
    assert message in result.output


def test_stale_lock_and_unwritable_output_write_nothing(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    unwritable = envbuild(
        "export",
        "--format",
        "explicit",
        "--role",
        "worker",
        "-o",
        blocker / "out.txt",
        "-f",
        locked,
    )
    assert unwritable.exit_code == 10 and "cannot write" in unwritable.stderr
    pixi = envbuild("export", "--format", "pixi", "-o", blocker / "pixi.lock", "-f", locked)
    assert pixi.exit_code == 10

    locked.write_text(locked.read_text().replace("  - numpy\n", "  - numpy\n  - toolz\n"))
    output = tmp_path / "explicit.txt"
    stale = envbuild(
        "export", "--format", "explicit", "--role", "worker", "-o", output, "-f", locked
    )
    assert stale.exit_code == 4
    assert "is stale" in stale.stderr and "envbuild lock" in stale.stderr
    assert not output.exists()


def test_a_lock_without_its_spec_is_usable(locked: Path, envbuild: Callable[..., Result]) -> None:
    # An image build may receive only envbuild.lock.
    lock_path = locked.parent / "envbuild.lock"
    locked.unlink()
    args = ("export", "--format", "explicit", "--role", "client", "--platform", "linux-64")
    result = envbuild(*args, "--lockfile", lock_path)
    assert result.exit_code == 0 and "@EXPLICIT" in result.stdout
    # A spec named with -f must exist: a typo never falls back to some lock silently.
    mistyped = envbuild(*args, "--lockfile", lock_path, "-f", locked)
    assert mistyped.exit_code == 3 and "no such spec file" in mistyped.stderr
