"""envbuild env / verify: real installs from a local channel into temporary prefixes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from envbuild.env.stamp import STAMP
from envbuild.lock.locking import lock
from envbuild.testing.channel import Package, archive_bytes

WORKER_PACKAGES = 21
#: toolz as the channel might serve it after the lock: same name, other bytes.
TAMPERED_TOOLZ = archive_bytes(
    Package(
        name="toolz",
        version="0.12.1",
        build="pyhd8ed1ab_0",
        noarch="python",
        files={"site-packages/toolz/__init__.py": "evil = True\n"},
    )
)


def env(envbuild: Callable[..., Result], spec: Path, prefix: Path, *more: object) -> Result:
    return envbuild("env", "--role", "worker", "--prefix", prefix, "-f", spec, *more)


def verify(envbuild: Callable[..., Result], spec: Path, prefix: Path, *more: object) -> Result:
    return envbuild("verify", "--role", "worker", "--prefix", prefix, "-f", spec, *more)


def test_create_verify_tamper_and_repair(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    prefix = tmp_path / "envs" / "worker"

    created = env(envbuild, locked, prefix)
    assert created.exit_code == 0, created.output
    assert created.stdout.startswith(f"created {prefix}: cuda-12.4/linux-64, 21 packages")
    site = prefix / "lib" / "python3.11" / "site-packages"
    assert (site / "dask" / "__init__.py").read_text() == '__version__ = "2024.8.2"\n'
    # conda-meta holds package records only (other tools parse every *.json there).
    assert len(list((prefix / "conda-meta").glob("*.json"))) == WORKER_PACKAGES
    assert json.loads((prefix / STAMP).read_text())["target"] == "cuda-12.4/linux-64"
    assert verify(envbuild, locked, prefix).stdout == (
        f"{prefix} matches cuda-12.4/linux-64 (21 packages)\n"
    )

    # A second run finds the prefix complete and changes nothing.
    marker_time = (prefix / STAMP).stat().st_mtime_ns
    again = env(envbuild, locked, prefix)
    assert again.stdout == f"{prefix} already matches cuda-12.4/linux-64 (21 packages)\n"
    assert (prefix / STAMP).stat().st_mtime_ns == marker_time

    # Tamper with one package's record and remove another package.
    numpy_record = next((prefix / "conda-meta").glob("numpy-*.json"))
    record = json.loads(numpy_record.read_text())
    record["version"] = "1.0.0"
    numpy_record.write_text(json.dumps(record))
    next((prefix / "conda-meta").glob("toolz-*.json")).unlink()
    shutil.rmtree(site / "toolz")

    report = verify(envbuild, locked, prefix, "--json")
    assert report.exit_code == 12
    found = json.loads(report.stdout)
    assert found["missing"] == ["toolz"] and found["extra"] == []
    assert [(c["name"], c["what"]) for c in found["changed"]] == [("numpy", "version")]
    assert "1.0.0" in found["changed"][0]["installed"] and found["clean"] is False
    text = verify(envbuild, locked, prefix)
    assert "differs from the lock's cuda-12.4/linux-64: 2 problems" in text.stderr
    assert "  missing: toolz" in text.stderr and "  changed: numpy (version)" in text.stderr

    repaired = env(envbuild, locked, prefix)
    assert repaired.stdout.startswith(f"updated {prefix}: cuda-12.4/linux-64, 21 packages (2 ")
    assert verify(envbuild, locked, prefix, "--files").exit_code == 0
    assert (site / "toolz" / "__init__.py").exists()


def test_verify_files_finds_a_modified_file(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    prefix = tmp_path / "worker"
    env(envbuild, locked, prefix)
    installed = prefix / "lib" / "python3.11" / "site-packages" / "distributed" / "__init__.py"
    installed.write_text("patched = True\n")
    assert verify(envbuild, locked, prefix).exit_code == 0  # records alone look fine
    deep = verify(envbuild, locked, prefix, "--files")
    assert deep.exit_code == 12
    assert (
        "file: lib/python3.11/site-packages/distributed/__init__.py (distributed) was "
        "modified" in deep.stderr
    )


def test_an_archive_that_changed_since_the_lock_is_refused(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    archive = locked.parent / "channel" / "noarch" / "toolz-0.12.1-pyhd8ed1ab_0.tar.bz2"
    good = archive.read_bytes()
    archive.write_bytes(TAMPERED_TOOLZ)
    prefix = tmp_path / "worker"

    refused = env(envbuild, locked, prefix)

    assert refused.exit_code == 11
    error = refused.stderr.splitlines()[0]
    assert error.startswith("envbuild: error: toolz=0.12.1=pyhd8ed1ab_0: ")
    assert "the channel changed since it was locked; refusing to install it" in error
    assert not (prefix / STAMP).exists()
    assert not (prefix / "lib" / "python3.11" / "site-packages" / "toolz").exists()
    # Nothing unverified reached the package cache: with the archive restored, the good
    # content is installed.
    archive.write_bytes(good)
    assert env(envbuild, locked, prefix).exit_code == 0
    toolz = prefix / "lib" / "python3.11" / "site-packages" / "toolz" / "__init__.py"
    assert toolz.read_text() == '__version__ = "0.12.1"\n'


def test_an_unreadable_archive_is_refused_before_the_environment_changes(
    scenario: Callable[..., Path], envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    spec = scenario("dask-gpu")
    lock(spec)
    prefix = tmp_path / "worker"
    assert env(envbuild, spec, prefix).exit_code == 0
    # The channel now serves a broken archive whose bytes the lock vouches for: locked
    # again from scratch, then installed over the complete environment.
    broken = spec.parent / "channel" / "noarch" / "toolz-0.12.1-pyhd8ed1ab_0.tar.bz2"
    broken.write_bytes(b"not a tar.bz2 archive")
    repodata_path = spec.parent / "channel" / "noarch" / "repodata.json"
    repodata = json.loads(repodata_path.read_text())
    import hashlib

    entry = repodata["packages"][broken.name]
    entry.update(
        sha256=hashlib.sha256(broken.read_bytes()).hexdigest(),
        md5=hashlib.md5(broken.read_bytes(), usedforsecurity=False).hexdigest(),
        size=len(broken.read_bytes()),
    )
    repodata_path.write_text(json.dumps(repodata))
    lock(spec, update_all=True)

    failed = env(envbuild, spec, prefix)

    assert failed.exit_code == 18
    assert failed.stderr.startswith(
        "envbuild: error: package toolz-0.12.1-pyhd8ed1ab_0 is unsafe: "
        "toolz-0.12.1-pyhd8ed1ab_0.tar.bz2 cannot be read as a conda archive"
    )
    # Refused before anything changed: the environment is the old lock's, complete.
    assert (prefix / STAMP).is_file()
    assert (prefix / "lib/python3.11/site-packages/toolz/__init__.py").is_file()


def test_a_failed_install_never_looks_complete(
    scenario: Callable[..., Path], envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    extra = Package(name="extra", version="1.0", build="0", files={"share/extra/data.txt": "x"})
    spec = scenario("dask-gpu", extra=(extra,))
    lock(spec)
    prefix = tmp_path / "worker"
    assert env(envbuild, spec, prefix).exit_code == 0
    # The update adds a package whose file lands where the prefix holds a folder of nobody's:
    # rattler fails halfway, after envbuild removed the stamp.
    (prefix / "share" / "extra" / "data.txt").mkdir(parents=True)
    spec.write_text(spec.read_text().replace("  - numpy\n", "  - numpy\n  - extra\n"))
    lock(spec)

    failed = env(envbuild, spec, prefix)

    assert failed.exit_code == 11
    assert failed.stderr.startswith(f"envbuild: error: installing into {prefix} failed")
    report = verify(envbuild, spec, prefix)
    assert report.exit_code == 12
    assert "incomplete: no etc/envbuild/stamp.json" in report.stderr


def test_a_folder_that_is_not_an_environment_is_refused(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "results.csv").write_text("1,2,3\n")
    result = env(envbuild, locked, folder)
    assert result.exit_code == 10
    assert (
        "is not a conda environment (no conda-meta/); refusing to install into it" in result.stderr
    )
    assert sorted(p.name for p in folder.iterdir()) == ["results.csv"]
    assert verify(envbuild, locked, folder).exit_code == 12


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--role", "gateway"], 9, "the lock has no role 'gateway'"),
        (
            ["--role", "worker", "--platform", "osx-arm64"],
            9,
            "role 'worker' is not locked for osx-arm64",
        ),
    ],
)
def test_bad_selection_is_refused_before_anything_is_written(
    locked: Path,
    envbuild: Callable[..., Result],
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    prefix = tmp_path / "never"
    for command in ("env", "verify"):
        result = envbuild(command, *args, "--prefix", prefix, "-f", locked)
        assert result.exit_code == code and message in result.stderr
    assert not prefix.exists()


def test_a_stale_lock_is_refused(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    locked.write_text(locked.read_text().replace("  - numpy\n", "  - numpy\n  - toolz\n"))
    result = env(envbuild, locked, tmp_path / "worker")
    assert result.exit_code == 4 and "run `envbuild lock`" in result.stderr
    assert not (tmp_path / "worker").exists()


def test_an_unwritable_prefix_is_an_output_error(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    result = env(envbuild, locked, tmp_path / "file" / "env")
    assert result.exit_code == 10 and "cannot write here" in result.stderr


def test_another_platform_can_be_laid_out(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    prefix = tmp_path / "mac-client"
    made = envbuild(
        "env", "--role", "client", "--platform", "osx-arm64", "--prefix", prefix, "-f", locked
    )
    assert made.exit_code == 0, made.output
    assert (prefix / "share" / "envbuild-test" / "libcxx.txt").exists()  # an osx-only package
    checked = envbuild(
        "verify", "--role", "client", "--platform", "osx-arm64", "--prefix", prefix, "-f", locked
    )
    assert checked.exit_code == 0
    # The same prefix is not the linux client.
    other = envbuild(
        "verify", "--role", "client", "--platform", "linux-64", "--prefix", prefix, "-f", locked
    )
    assert other.exit_code == 12 and "extra: libcxx" in other.stderr


def test_an_archive_replaced_after_it_was_verified_is_caught(
    locked: Path, envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    # The first install records the archive as verified; replacing it afterwards (even with
    # the same size and mtime) changes its ctime, so it is hashed again and refused.
    import os

    assert env(envbuild, locked, tmp_path / "first").exit_code == 0
    archive = locked.parent / "channel" / "noarch" / "toolz-0.12.1-pyhd8ed1ab_0.tar.bz2"
    before = archive.stat()
    good = archive.read_bytes()
    evil = good[:-1] + bytes([good[-1] ^ 0xFF])  # one byte flipped: same size, same mtime
    archive.write_bytes(evil)
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))

    refused = env(envbuild, locked, tmp_path / "second")

    assert refused.exit_code == 11 and "toolz=0.12.1=pyhd8ed1ab_0" in refused.stderr


@pytest.fixture
def http_channel(scenario: Callable[..., Path]) -> Iterator[tuple[Path, str]]:
    """The dask-gpu scenario with its channel served over HTTP on 127.0.0.1."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    spec = scenario("dask-gpu")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(spec.parent / "channel"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    spec.write_text(spec.read_text().replace("[./channel]", f"['{url}']"))
    try:
        yield spec, url
    finally:
        server.shutdown()
        server.server_close()


def test_a_downloaded_archive_that_changed_is_refused(
    http_channel: tuple[Path, str], envbuild: Callable[..., Result], tmp_path: Path
) -> None:
    spec, url = http_channel
    lock(spec)
    assert json.loads((spec.parent / "envbuild.lock").read_text())["channels"] == [url]
    assert env(envbuild, spec, tmp_path / "first", "--cache-dir", tmp_path / "c1").exit_code == 0

    archive = spec.parent / "channel" / "noarch" / "toolz-0.12.1-pyhd8ed1ab_0.tar.bz2"
    archive.write_bytes(TAMPERED_TOOLZ)
    refused = env(envbuild, spec, tmp_path / "second", "--cache-dir", tmp_path / "c2")

    assert refused.exit_code == 11
    assert refused.stderr.startswith(
        "envbuild: error: toolz-0.12.1-pyhd8ed1ab_0.tar.bz2: the archive's sha256 does not "
        "match the lock; refusing to install it"
    )
    assert "hash mismatch" in refused.stderr  # rattler's own words follow
    assert not (tmp_path / "second" / STAMP).exists()
