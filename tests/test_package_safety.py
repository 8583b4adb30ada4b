"""Installing packages safely and cleanly (issue 16 items 1-5, 15, 17; issue 23 item 4).

tests/hostile/ throws crafted packages at ``env`` and ``image --context`` one shape at a time;
this file covers what spans packages or processes: symlinks of one package that another
writes through, archive layouts two readers would see differently, names that become cache
folders, a disk that fills, two images at once on one cache, and rattler's crash at exit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from envbuild.env.archives import read_contents
from envbuild.env.safety import Contents, Installs, Member, Unsafe, check_package, check_together

from .conftest import REPO, require, runnable_spec
from .hostile.crafted import Crafted, digests, entry, file, symlink, write_archive
from .hostile.test_packages import OK_FILE, Sandbox, evil, refusal, said

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
SITE = "lib/python3.11/site-packages"


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def lock_and_env(
    sb: Sandbox, packages: list[Crafted]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``env`` of ``packages``, and what escaped from it."""
    sb.write_channel(packages)
    spec = sb.write_spec(sb.project, [p.name for p in packages])
    sb.lock(spec)
    before = sb.before()
    return sb.env(spec), sb.escaped(before)


# --- what one package cannot see alone -------------------------------------------------------


@pytest.mark.slow
def test_a_package_writing_through_another_packages_symlink_is_refused(sandbox: Sandbox) -> None:
    """evil-a's share/shared -> ../etc is harmless alone, and so is evil-b's
    share/shared/envbuild/stamp.json; together they write envbuild's stamp. (A folder
    reached through another package's symlink that stays in the prefix is allowed: compiler
    sysroots do that.)"""
    first = Crafted(name="evil-a", payload=(symlink("share/shared", "../etc"),))
    second = Crafted(name="evil-b", payload=(file("share/shared/envbuild/stamp.json", "{}"),))

    result, escaped = lock_and_env(sandbox, [first, second])

    assert result.stderr == (
        "envbuild: error: package evil-b-1.0-0 is unsafe: share/shared/envbuild leads into "
        "etc/envbuild through a symlink of evil-a-1.0-0\n"
    )
    assert result.returncode == 18
    assert not sandbox.prefix.exists()
    assert escaped == []


@pytest.mark.slow
def test_a_symlink_that_leads_out_only_once_resolved_is_refused(sandbox: Sandbox) -> None:
    """``d/up -> ../s/..`` reads as the prefix itself, but ``s -> .`` makes ``s/..`` the
    folder above the prefix: symlinks are followed, not just normalized."""
    package = evil(symlink("s", "."), file("d/x", "x"), symlink("d/up", "../s/.."))

    result, escaped = lock_and_env(sandbox, [package])

    assert refusal(result, ["evil-1.0-0"], ["d/up"]) == [], said(result)
    assert escaped == []
    assert "d/up is a symlink to ../s/.., which leads out of the package" in result.stderr


def test_a_folder_reached_through_another_packages_symlink_may_stay_inside() -> None:
    """sysroot/lib64 -> lib of one package, files in sysroot/lib64/ of another: allowed; the
    same symlink pointing at etc/envbuild, or out through a third package's link, is not."""
    sysroot = Installs({"sysroot/lib64": "lib"}, ("sysroot",))
    libs = Installs({}, ("sysroot", "sysroot/lib64", "sysroot/lib64/gconv"))
    check_together({"sysroot": sysroot, "libs": libs}, SITE)
    envbuilds = Installs({"sysroot/lib64": "../etc/envbuild"}, ("sysroot",))
    with pytest.raises(Unsafe, match=r"^sysroot/lib64 leads into etc/envbuild through a") as it:
        check_together({"sysroot": envbuilds, "libs": libs}, SITE)
    assert it.value.package == "libs"
    out = Installs({"up": ".."}, ())  # alone: a symlink to the prefix's parent
    with pytest.raises(Unsafe, match="leads out through another's symlink"):
        check_together({"a": Installs({"x": "up/.."}, ()), "b": out}, SITE)


def contents(*members: Member, paths: list[dict[str, object]]) -> Contents:
    document = json.dumps({"paths": paths, "paths_version": 1}).encode()
    info = Member("info/paths.json", "file", size=len(document))
    return Contents([info, *members], {"info/paths.json": document})


def test_hard_links_reach_only_earlier_files_of_the_same_tar() -> None:
    good = contents(
        Member("lib/a", "file"),
        Member("lib/b", "hardlink", linkname="lib/a"),
        paths=[entry("lib/a"), entry("lib/b")],
    )
    assert check_package(good, SITE).symlinks == {}
    for members in (
        (Member("lib/b", "hardlink", linkname="lib/a"), Member("lib/a", "file")),  # later
        (Member("lib/a", "file"), Member("lib/b", "hardlink", linkname="lib/a", section=1)),
        (Member("lib/a", "file"), Member("lib/b", "hardlink", linkname="../../etc/passwd")),
    ):
        listed = [entry("lib/a"), entry("lib/b")]
        with pytest.raises(Unsafe, match=r"^lib/b is a hard link to "):
            check_package(contents(*members, paths=listed), SITE)


def test_an_info_file_must_be_a_file_and_an_entry_point_one_name_in_bin() -> None:
    linked = Contents(
        [Member("info/paths.json", "symlink", linkname="../share/x")], {}, noarch_python=True
    )
    with pytest.raises(
        Unsafe, match=r"^info/paths\.json is a symlink; the info files must be files"
    ):
        check_package(linked, SITE)
    link = json.dumps({"noarch": {"type": "python", "entry_points": ["a/b = m:f"]}}).encode()
    pointed = Contents(
        [Member("info/paths.json", "file"), Member("info/link.json", "file")],
        {"info/paths.json": b'{"paths": []}', "info/link.json": link},
        noarch_python=True,
    )
    with pytest.raises(Unsafe, match=r"^a/b \(an entry point in info/link.json\) names a folder"):
        check_package(pointed, SITE)


# --- archives two readers could see differently ----------------------------------------------


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _conda(path: Path, parts: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("metadata.json", '{"conda_pkg_format_version": 2}')
        for name, data in parts:
            archive.writestr(name, data)


def _paths_tar(paths: list[str]) -> bytes:
    document = json.dumps({"paths": [entry(p, "x") for p in paths], "paths_version": 1})
    return _tar([("info/paths.json", document.encode())])


def test_a_conda_archive_is_read_across_zstd_frames(tmp_path: Path) -> None:
    """A reader that stops after the first zstd frame would miss the second: the climbing
    member is in it."""
    import zstandard

    payload = _tar([(OK_FILE, b"x"), ("../../escaped.txt", b"x")])
    first, second = payload[: 512 + 512], payload[512 + 512 :]  # OK_FILE's header and data
    compressor = zstandard.ZstdCompressor()
    frames = compressor.compress(first) + compressor.compress(second)
    archive = tmp_path / "evil-1.0-0.conda"
    info = zstandard.ZstdCompressor().compress(_paths_tar([OK_FILE]))
    _conda(archive, [("info-evil-1.0-0.tar.zst", info), ("pkg-evil-1.0-0.tar.zst", frames)])

    found = read_contents(archive, archive.name, False, 1 << 30)

    assert "../../escaped.txt" in [m.name for m in found.members]
    with pytest.raises(Unsafe, match=r"^\.\./\.\./escaped\.txt \(a member of the archive\)"):
        check_package(found, SITE)


def test_a_zip_entry_the_central_directory_does_not_list_is_refused(tmp_path: Path) -> None:
    """rattler may stream a .conda's local headers; a zip reader reads its directory. An
    entry in one and not the other is refused."""
    import zstandard

    info = zstandard.ZstdCompressor().compress(_paths_tar([OK_FILE]))
    hidden = zstandard.ZstdCompressor().compress(_tar([("share/hidden.txt", b"x")]))
    archive = tmp_path / "evil-1.0-0.conda"
    _conda(archive, [("info-evil-1.0-0.tar.zst", info), ("pkg-hidden.tar.zst", hidden)])
    # Drop the hidden entry's record from the central directory (it is the last one).
    data = bytearray(archive.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    records = data.rindex(b"PK\x01\x02", 0, end)
    count = int.from_bytes(data[end + 10 : end + 12], "little") - 1
    size = int.from_bytes(data[end + 12 : end + 16], "little") - (end - records)
    tail = bytearray(data[end:])
    tail[8:10] = tail[10:12] = count.to_bytes(2, "little")
    tail[12:16] = size.to_bytes(4, "little")
    archive.write_bytes(bytes(data[:records] + tail))
    with zipfile.ZipFile(archive) as check:
        assert "pkg-hidden.tar.zst" not in check.namelist()

    with pytest.raises(Unsafe, match="has bytes the zip's directory does not list"):
        read_contents(archive, archive.name, False, 1 << 30)


# --- names that become folders (item 3) ------------------------------------------------------


def _channel_with_build(sb: Sandbox, build: str) -> Path:
    """A channel whose one package ``evil`` has the build string ``build`` (its archive
    where that file name resolves, sha256 true); returns the spec."""
    package = Crafted(name="evil", build=build, payload=(file(OK_FILE),))
    sb.write_channel([])
    noarch = sb.channel / "noarch"
    (noarch / "evil-1.0-x").mkdir(exist_ok=True)
    archive = Path(os.path.normpath(noarch / package.file_name))
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_archive(package, archive)
    sha256, md5, size = digests(archive)
    repodata = json.loads((noarch / "repodata.json").read_text())
    record = {**package.index_json(), "md5": md5, "sha256": sha256, "size": size}
    repodata["packages"][package.file_name] = record
    (noarch / "repodata.json").write_text(json.dumps(repodata))
    return sb.write_spec(sb.project, ["evil"])


@pytest.mark.slow
def test_lock_refuses_a_build_string_that_would_climb_out_of_the_cache(sandbox: Sandbox) -> None:
    spec = _channel_with_build(sandbox, "x/../../../escaped")

    result = sandbox.run("lock", "-q", "-f", spec)

    assert result.returncode == 18
    assert result.stderr == (
        "envbuild: error: package evil-1.0-x/../../../escaped is unsafe: its build "
        "\"x/../../../escaped\" has a '/' or '\\'\n"
    )
    assert not (sandbox.project / "envbuild.lock").exists()


@pytest.mark.slow
def test_a_lock_edited_to_name_a_folder_is_refused_before_anything_is_installed(
    sandbox: Sandbox,
) -> None:
    sandbox.write_channel([evil()])
    spec = sandbox.write_spec(sandbox.project, ["evil"])
    sandbox.lock(spec)
    lock_path = sandbox.project / "envbuild.lock"
    lock_path.write_text(lock_path.read_text().replace('"version": "1.0"', '"version": ".."'))

    result = sandbox.env(spec)

    assert result.returncode == 18, said(result)
    assert result.stderr == (
        "envbuild: error: package evil-..-0 is unsafe: its version \"..\" is empty, '.' or '..'\n"
    )
    assert not sandbox.prefix.exists()


@pytest.mark.slow
def test_a_bad_size_limit_is_a_usage_error(sandbox: Sandbox) -> None:
    sandbox.write_channel([evil()])
    spec = sandbox.write_spec(sandbox.project, ["evil"])
    sandbox.lock(spec)
    bad = sandbox.env(spec, environ={"ENVBUILD_MAX_PACKAGE_BYTES": "1GB"})
    assert bad.returncode == 2
    assert bad.stderr.startswith("envbuild: error: ENVBUILD_MAX_PACKAGE_BYTES='1GB': give a")
    assert not sandbox.prefix.exists()


# --- a disk that fills (item 17) -------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs (root only)."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True
    )
    require(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_disk_that_fills_leaves_no_prefix_and_no_cache_entry(
    runnable_channel: Path, small_disk: Path, tmp_path: Path
) -> None:
    """The runnable worker (hundreds of MB) into 40 MiB: rattler fails with ENOSPC while
    other packages are still being linked. Three times, and a second after each: nothing of
    the prefix comes back (no thread of the failed install is left to recreate it)."""
    spec = runnable_spec(tmp_path, runnable_channel)
    cache = tmp_path / "cache"
    assert run_cli("lock", "-q", "-f", spec, cwd=tmp_path).returncode == 0
    for attempt in range(3):
        shutil.rmtree(cache, ignore_errors=True)
        prefix = small_disk / "env"
        result = run_cli(
            "env",
            "--role",
            "worker",
            "--prefix",
            prefix,
            "-f",
            spec,
            "--cache-dir",
            cache,
            cwd=tmp_path,
        )
        assert result.returncode == 11, said(result)
        assert result.stderr.startswith(f"envbuild: error: installing into {prefix} failed")
        time.sleep(1)
        assert list(small_disk.iterdir()) == [], f"attempt {attempt}: the prefix came back"
        extractions = [p.name for p in cache.iterdir() if not p.name.startswith(".")]
        assert extractions == [], f"attempt {attempt}: left in the cache: {extractions}"


def run_cli(*args: object, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVBUILD, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


# --- two images at once (item 15) ------------------------------------------------------------


@pytest.mark.slow
def test_two_image_contexts_at_once_on_one_cache_take_turns(locked: Path, tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    # a base pinned by digest: naming the images needs no registry
    locked.write_text(
        locked.read_text() + f"image: {{base: 'debian:bookworm-slim@sha256:{'b' * 64}'}}\n"
    )
    runs = [
        subprocess.Popen(
            [ENVBUILD, "image", "--all", "--context", tmp_path / f"context-{n}", "-f", locked],
            cwd=locked.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "ENVBUILD_CACHE_DIR": str(cache)},
        )
        for n in (1, 2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
    first, second = (
        sorted(
            p.relative_to(tmp_path / f"context-{n}")
            for p in (tmp_path / f"context-{n}").rglob("*.tar")
        )
        for n in (1, 2)
    )
    assert first == second and first
    for layer in first:
        assert (tmp_path / "context-1" / layer).read_bytes() == (
            tmp_path / "context-2" / layer
        ).read_bytes()


# --- no crash at exit (issue 23 item 4) -----------------------------------------------------

LIBRARY_INSTALL = """
import shutil, sys
from pathlib import Path
from envbuild.lock.lockfile import read_lock
from envbuild.lock import conda
from envbuild.env.create import create_env
lock = read_lock(Path(sys.argv[1]))
target = lock.role_target("worker", "linux-64")
prefix = Path(sys.argv[2])
if sys.argv[3] == "install":
    conda.install(target.packages, prefix, cache_dir=Path(sys.argv[4]), platform="linux-64",
                  show_progress=False)
else:
    create_env(lock, target, prefix, cache_dir=Path(sys.argv[4]))
"""


@pytest.mark.slow
def test_installing_from_python_never_crashes_the_process_at_exit(
    locked: Path, tmp_path: Path
) -> None:
    """A raw rattler.install script dies of SIGSEGV or SIGABRT at exit in about 1 run of 10
    here (5 of 30 measured; envbuild 0.1's conda.install, 2 of 30): rattler's threads race
    the interpreter's shutdown. envbuild installs in a child that ends with os._exit."""
    script = tmp_path / "install.py"
    script.write_text(LIBRARY_INSTALL)
    cache = tmp_path / "cache"
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    codes = []
    for number in range(30):
        prefix = tmp_path / f"env-{number}"
        how = "install" if number % 2 else "create_env"
        done = subprocess.run(
            [sys.executable, script, locked.parent / "envbuild.lock", prefix, how, cache],
            capture_output=True,
            text=True,
            env=environment,
            timeout=300,
        )
        codes.append(done.returncode)
        assert done.returncode == 0, f"run {number} ({how}): exit {done.returncode}\n{done.stderr}"
        assert (prefix / "conda-meta").is_dir()
        shutil.rmtree(prefix)
    assert codes == [0] * 30


@pytest.mark.slow
def test_a_remote_archive_is_checked_before_rattler_sees_it(sandbox: Sandbox) -> None:
    """Remote archives are downloaded, hashed and judged first, then installed from the
    checked copy; the environment's records keep the channel's url."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    sandbox.write_channel([evil(), evil(name="climber", paths=[entry("../../x", "x")])])

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(sandbox.channel))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sandbox.channel_url = f"http://127.0.0.1:{server.server_address[1]}"
        good = sandbox.write_spec(sandbox.base, ["evil"])
        sandbox.lock(good)
        made = sandbox.run("env", "--role", "worker", "--prefix", sandbox.prefix, "-f", good, "-q")
        assert made.returncode == 0, said(made)
        record = json.loads(next((sandbox.prefix / "conda-meta").glob("evil-*.json")).read_text())
        assert record["url"] == f"{sandbox.channel_url}/noarch/evil-1.0-0.tar.bz2"
        assert not list((sandbox.cache / "pkgs" / ".envbuild-downloads").iterdir())

        hostile = sandbox.write_spec(sandbox.project, ["climber"])
        sandbox.lock(hostile)
        before = sandbox.before()
        refused = sandbox.env(hostile)
    finally:
        server.shutdown()
        server.server_close()
    assert refusal(refused, ["climber-1.0-0"], ["../../x"]) == [], said(refused)
    assert sandbox.escaped(before) == []
    assert not list((sandbox.cache / "pkgs" / ".envbuild-downloads").iterdir())


def test_the_package_limit_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    assert "ENVBUILD_MAX_PACKAGE_BYTES" in readme and "16 GiB" in readme
