"""Hostile and careless input, secrets, other tools' view of our prefixes, and two runs at once.

Each test reproduces a report of issue 8: the input a user or an attacker gave, and what a
careful tool must do with it (one line, its exit code, nothing leaked, nothing left behind).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envbuild.env.stamp import OLD_MARKER, STAMP
from envbuild.errors import LockFileError, SpecError
from envbuild.lock.lockfile import loads
from envbuild.spec.file import parse_spec

from .conftest import lock_document

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
SECRET = "s3cr3t-T0KEN"


def run(
    *args: object, cwd: Path, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run(
        [ENVBUILD, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def first_error(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("envbuild: error"))


# --- secrets in channels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    [
        f"http://host.example/t/{SECRET}",
        f"https://conda.anaconda.org/t/{SECRET}/private",
        f"https://host.example/channel?token={SECRET}",
        f"https://host.example/channel#{SECRET}",
        f"user:{SECRET}@host.example/x",
        f"https://user:{SECRET}@host.example/x",
    ],
)
def test_a_channel_with_a_secret_is_refused_and_the_secret_never_echoed(
    scenario: Callable[..., Path], channel: str, tmp_path: Path
) -> None:
    spec = scenario("dask-gpu")
    spec.write_text(spec.read_text().replace("[./channel]", f"['{channel}']"))
    cache = tmp_path / "cache"

    result = run("lock", "-f", spec, cwd=tmp_path, ENVBUILD_CACHE_DIR=str(cache))

    assert result.returncode == 3, result.stderr
    assert "channels[0]: a channel carries credentials" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert not (tmp_path / "envbuild.lock").exists() and not cache.exists()


def test_a_lock_file_with_a_secret_in_a_url_is_refused(locked: Path, tmp_path: Path) -> None:
    lock_path = locked.parent / "envbuild.lock"
    document = lock_document(lock_path)
    document["packages"][0]["url"] = f"https://user:{SECRET}@host.example/x.conda"
    lock_path.write_text(json.dumps(document))
    result = run("show", "--lockfile", lock_path, cwd=tmp_path)
    assert result.returncode == 5
    assert "packages[0].url carries credentials" in result.stderr
    assert SECRET not in result.stderr


# --- output paths -------------------------------------------------------------------------------


def test_output_into_a_device_or_fifo_writes_into_it_and_never_replaces_it(
    locked: Path, tmp_path: Path
) -> None:
    export = ("export", "-f", locked, "--format", "explicit", "--role", "worker")
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)
    assert run(*export, "-o", "/dev/null", cwd=tmp_path).returncode == 0
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert run(*export, "-o", fifo, cwd=tmp_path).returncode == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert b"@EXPLICIT" in received[0]

    dash = run(*export, "-o", "-", cwd=tmp_path)
    assert dash.returncode == 0 and "@EXPLICIT" in dash.stdout and not (tmp_path / "-").exists()
    pixi = run("export", "-f", locked, "--format", "pixi", "-o", "-", cwd=tmp_path)
    assert pixi.returncode == 0 and pixi.stdout.startswith("version:")

    folder = run(*export, "-o", tmp_path, cwd=tmp_path)
    assert folder.returncode == 10 and "is a folder" in folder.stderr


# --- hostile specs -------------------------------------------------------------------------------

ALIAS_BOMB = "\n".join(
    [
        "a: &a [x, x, x, x, x, x, x, x, x]",
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]",
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]",
        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]",
        "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]",
        "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]",
        "i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]",
        "name: [*i]",
    ]
)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("alias bomb", lambda s: ALIAS_BOMB, "expands to more than 100000 values through aliases"),
        ("NUL byte", lambda s: s.replace("name: dask-gpu", "name: dask\0gpu"), "invalid YAML"),
        ("deep nesting", lambda s: "a: " + "[" * 100_000 + "]" * 100_000, "invalid YAML: "),
        (
            "cuda with spaces",
            lambda s: s.replace('cuda: "12.4", compute-capability: ">=8.0"', 'cuda: " 12.4"'),
            "roles.worker.gpu.cuda: ' 12.4' is not a CUDA version",
        ),
        (
            "huge glibc",
            lambda s: s + "system-requirements: {glibc: '99999999999999999999.1'}\n",
            "system-requirements.glibc: '99999999999999999999.1' is not a version",
        ),
        (
            "10k dependencies",
            lambda s: s.replace(
                "  - numpy\n", "  - numpy\n" + "".join(f"  - p{i}\n" for i in range(10_000))
            ),
            "dependencies: list should have at most 1000 items",
        ),
        (
            "100k dependencies",
            lambda s: s.replace(
                "  - numpy\n", "  - numpy\n" + "".join(f"  - pkg{i}\n" for i in range(100_000))
            ),
            "larger than 1 MiB: not a spec file",
        ),
        ("10 MB name", lambda s: s.replace("name: dask-gpu", "name: " + "n" * 10_000_000), ""),
        ("not UTF-8", lambda s: "name: \xff\n", "not UTF-8"),
    ],
)
def test_a_hostile_spec_is_one_clear_error_at_once(
    scenario: Callable[..., Path],
    tmp_path: Path,
    name: str,
    edit: Callable[[str], str],
    message: str,
) -> None:
    spec = scenario("dask-gpu")
    text = edit(spec.read_text())
    spec.write_bytes(text.encode("latin-1") if name == "not UTF-8" else text.encode())

    result = run("lock", "-f", spec, cwd=tmp_path, timeout=60)

    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert message in first_error(result.stderr)
    assert max(len(line) for line in result.stderr.splitlines()) < 1000  # input is not repeated
    assert not (tmp_path / "envbuild.lock").exists()


def test_every_spec_problem_is_reported(scenario: Callable[..., Path], tmp_path: Path) -> None:
    spec = scenario("dask-gpu")
    spec.write_text(
        spec.read_text().replace("linux-64, osx-arm64", "linux-64, beos").replace("12.4", "12")
    )
    result = run("lock", "-f", spec, cwd=tmp_path)
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert "unknown platform 'beos'" in lines[0]
    assert sum("is not a CUDA version" in line for line in lines) == 2
    assert "more)" not in result.stderr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_text_is_a_spec_or_a_spec_error(text: str) -> None:
    try:
        parse_spec(text, Path("envbuild.yaml"))
    except SpecError as error:
        assert str(error).startswith("envbuild.yaml")


YAMLISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "channels",
                    "platforms",
                    "dependencies",
                    "roles",
                    "client",
                    "worker",
                    "scheduler",
                    "gpu",
                    "cuda",
                    "image",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(YAMLISH)
def test_any_yaml_structure_is_a_spec_or_a_spec_error(data: object) -> None:
    with contextlib.suppress(SpecError):
        parse_spec(json.dumps(data), Path("envbuild.yaml"))


# --- hostile lock files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["packages"][0].update(build_number=float("inf")), "Infinity is not a number"),
        (lambda d: d["packages"][0].update(depends=[1, 2]), "packages[0].depends[0] must be str"),
        (lambda d: d.update({"lock-version": 0}), "lock-version must be a positive integer"),
        (lambda d: d.update({"lock-version": True}), "lock-version must be a positive integer"),
        (lambda d: d["packages"][0].update(sha256="zz"), "packages[0].sha256 is not a sha256"),
        (lambda d: d.update(packages={}), "packages must be list"),
    ],
)
def test_a_damaged_lock_names_the_field(
    locked: Path, tmp_path: Path, edit: Callable[[dict[str, object]], None], message: str
) -> None:
    lock_path = locked.parent / "envbuild.lock"
    document = lock_document(lock_path)
    edit(document)
    lock_path.write_text(json.dumps(document))
    for command in (["show"], ["export", "--format", "explicit", "--role", "worker"]):
        result = run(*command, "--lockfile", lock_path, cwd=tmp_path)
        assert result.returncode == 5, result.stderr
        assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_deeply_nested_lock_is_a_lock_error(tmp_path: Path) -> None:
    lock_path = tmp_path / "envbuild.lock"
    lock_path.write_text('{"lock-version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = run("show", "--lockfile", lock_path, cwd=tmp_path)
    assert result.returncode == 5 and "nested too deeply" in result.stderr


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300)
    | YAMLISH.map(lambda d: json.dumps({"lock-version": 1, **{"packages": d}}))
)
def test_any_text_is_a_lock_or_a_lock_error(text: str) -> None:
    try:
        loads(text, Path("envbuild.lock"))
    except LockFileError as error:
        assert str(error).startswith("envbuild.lock")


@pytest.mark.parametrize("option", ["-f", "--lockfile"])
def test_a_folder_given_as_spec_or_lock_is_its_own_error_not_usage(
    tmp_path: Path, option: str
) -> None:
    result = run("show", option, tmp_path, cwd=tmp_path)
    assert result.returncode == (3 if option == "-f" else 5)
    assert "a folder or a device" in result.stderr and "Usage:" not in result.stderr


@pytest.mark.parametrize("command", ["show", "export", "env", "verify"])
def test_a_mistyped_spec_path_is_an_error_everywhere(
    locked: Path, tmp_path: Path, command: str
) -> None:
    extra = {
        "show": [],
        "export": ["--format", "explicit", "--role", "worker"],
        "env": ["--role", "worker", "--prefix", tmp_path / "p"],
        "verify": ["--role", "worker", "--prefix", tmp_path / "p"],
    }[command]
    result = run(command, "-f", locked.parent / "envbuidl.yaml", *extra, cwd=locked.parent)
    assert result.returncode == 3 and "envbuidl.yaml: no such spec file" in result.stderr
    assert not (tmp_path / "p").exists()


# --- environments: interop, concurrency, repair --------------------------------------------------


def env(spec: Path, prefix: Path, *more: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run("env", "--role", "worker", "--prefix", prefix, "-f", spec, *more, cwd=cwd)


def verify(
    spec: Path, prefix: Path, *more: object, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run(
        "verify",
        "--role",
        "worker",
        "--prefix",
        prefix,
        "-f",
        spec,
        *more,
        cwd=cwd,
        timeout=timeout,
    )


RAW_INSTALL = r"""
import asyncio, os, sys
from pathlib import Path
from rattler import PrefixRecord, Subdir, install
from envbuild.lock.conda import to_rattler
from envbuild.lock.lockfile import Target, read_lock
prefix = Path(sys.argv[2])
for path in sorted((prefix / "conda-meta").glob("*.json")):  # as pixi and micromamba read it
    PrefixRecord.from_path(path)
target = read_lock(Path(sys.argv[1])).target(Target("cuda-12.4", "linux-64"))
asyncio.run(install([to_rattler(p) for p in target.packages], target_prefix=prefix,
                    cache_dir=Path(sys.argv[3]), platform=Subdir("linux-64"), show_progress=False))
print("raw install ok", flush=True)
os._exit(0)
"""


def test_other_rattler_tools_accept_our_prefix_and_an_old_marker_is_moved(
    locked: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "worker"
    assert env(locked, prefix, cwd=tmp_path).returncode == 0
    lock_path = locked.parent / "envbuild.lock"
    raw = subprocess.run(
        [sys.executable, "-c", RAW_INSTALL, lock_path, prefix, tmp_path / "raw-cache"],
        capture_output=True,
        text=True,
    )
    assert raw.returncode == 0 and "raw install ok" in raw.stdout, raw.stderr
    assert verify(locked, prefix, cwd=tmp_path).returncode == 0

    # A prefix made by an older envbuild kept its marker in conda-meta: env moves it out.
    (prefix / STAMP).replace(prefix / OLD_MARKER)
    assert env(locked, prefix, cwd=tmp_path).returncode == 0
    assert (prefix / STAMP).is_file() and not (prefix / OLD_MARKER).exists()


def test_two_env_runs_on_one_prefix_take_turns(locked: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "worker"
    command = [ENVBUILD, "env", "--role", "worker", "--prefix", str(prefix), "-f", str(locked)]
    runs = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0], outputs
    said = b"".join(out + err for out, err in outputs).decode()
    assert said.count("created") == 1 and said.count("already matches") == 2
    assert verify(locked, prefix, "--files", cwd=tmp_path).returncode == 0


def test_two_lock_runs_at_once_both_succeed(scenario: Callable[..., Path], tmp_path: Path) -> None:
    spec = scenario("dask-gpu")
    command = [ENVBUILD, "lock", "-f", str(spec)]
    runs = [subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE) for _ in range(2)]
    errors = [r.communicate(timeout=120)[1] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], errors
    assert lock_document(spec.parent / "envbuild.lock")["lock-version"] == 1
    assert sorted(p.name for p in spec.parent.iterdir()) == [
        "channel",
        "envbuild.lock",
        "envbuild.yaml",
    ]


def test_env_repairs_a_modified_file_and_the_cache_behind_it(locked: Path, tmp_path: Path) -> None:
    prefix, cache = tmp_path / "worker", tmp_path / "cache"
    assert env(locked, prefix, "--cache-dir", cache, cwd=tmp_path).returncode == 0
    installed = prefix / "lib" / "python3.11" / "site-packages" / "toolz" / "__init__.py"
    good = installed.read_bytes()
    installed.write_text("evil = True\n")  # a hard link: the cache's copy changes too

    report = verify(locked, prefix, "--files", cwd=tmp_path)
    assert report.returncode == 12
    fix = first_error(report.stderr).split("repair it with: ")[1]
    assert fix.endswith("--repair") and f"--prefix {prefix}" in fix
    assert "toolz/__init__.py (toolz) was modified" in report.stderr

    assert env(locked, prefix, "--cache-dir", cache, cwd=tmp_path).returncode == 0  # no check
    repaired = env(locked, prefix, "--cache-dir", cache, "--repair", cwd=tmp_path)
    assert repaired.returncode == 0 and repaired.stdout.startswith(f"repaired {prefix}")
    assert installed.read_bytes() == good
    assert verify(locked, prefix, "--files", cwd=tmp_path).returncode == 0
    fresh = tmp_path / "fresh"  # made from the same cache: the cache was mended too
    assert env(locked, fresh, "--cache-dir", cache, cwd=tmp_path).returncode == 0
    assert verify(locked, fresh, "--files", cwd=tmp_path).returncode == 0


def test_verify_files_reports_non_regular_files_without_reading_them(
    locked: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "worker"
    assert env(locked, prefix, cwd=tmp_path).returncode == 0
    site = prefix / "lib" / "python3.11" / "site-packages"
    replaced = {
        "dask": lambda p: (p.unlink(), p.mkdir()),
        "toolz": lambda p: (p.unlink(), p.symlink_to(tmp_path / "nowhere")),
        "cloudpickle": lambda p: (p.unlink(), os.mkfifo(p)),
        "distributed": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
    }
    for package, replace in replaced.items():
        replace(site / package / "__init__.py")

    report = verify(locked, prefix, "--files", cwd=tmp_path, timeout=60)

    assert report.returncode == 12
    assert "dask/__init__.py (dask) is a folder, not a file" in report.stderr
    assert "toolz/__init__.py (toolz) is a symlink, not a file" in report.stderr
    assert "cloudpickle/__init__.py (cloudpickle) is a FIFO, not a file" in report.stderr
    assert "distributed/__init__.py (distributed) is a symlink, not a file" in report.stderr


def test_env_with_a_bad_cache_or_index_and_no_leftovers_on_failure(
    locked: Path, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("")
    bad = env(locked, tmp_path / "a", "--cache-dir", not_a_folder, cwd=tmp_path)
    assert bad.returncode == 10 and "cannot use it as the package cache" in bad.stderr
    assert not (tmp_path / "a").exists()

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".envbuild-verified-archives.json").write_text("[]")
    assert env(locked, tmp_path / "b", "--cache-dir", cache, cwd=tmp_path).returncode == 0

    # An archive that no longer matches the lock: the install fails, nothing is left behind.
    toolz = next((locked.parent / "channel" / "noarch").glob("toolz-*.tar.bz2"))
    toolz.write_bytes(toolz.read_bytes() + b"\0")
    failed = env(locked, tmp_path / "c", "--cache-dir", tmp_path / "cache2", cwd=tmp_path)
    assert failed.returncode == 11
    assert not (tmp_path / "c").exists()


# --- the CLI itself ------------------------------------------------------------------------------


def test_help_shows_whole_summaries_and_the_exit_codes_the_readme_has(tmp_path: Path) -> None:
    from envbuild.errors import EXIT_CODES

    from .conftest import REPO

    result = run("--help", cwd=tmp_path, COLUMNS="100")
    assert result.returncode == 0
    truncated = [line for line in result.stdout.splitlines()[1:] if line.endswith("...")]
    assert truncated == []
    readme = (REPO / "README.md").read_text()
    for code, label in EXIT_CODES.items():
        assert f"  {code:>2}  {label}" in result.stdout
        assert f"| {code} | {label} |" in readme, f"README lacks exit code {code}: {label}"


def test_a_bad_choice_is_clicks_message_not_pydantics(locked: Path, tmp_path: Path) -> None:
    result = run("export", "-f", locked, "--format", "yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "'yaml' is not one of" in result.stderr and "Value error" not in result.stderr


def test_output_is_plain_when_piped(locked: Path, tmp_path: Path) -> None:
    shown = run("show", "-f", locked, cwd=tmp_path)
    assert shown.returncode == 0 and "\x1b[" not in shown.stdout


def test_the_gpu_smoke_script_ignores_the_compilers_cc(tmp_path: Path) -> None:
    from envbuild.testing import nvml

    from .conftest import REPO, require

    require(nvml.compiler() is not None, "gcc builds the fake NVML library")
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-smoke.sh"), "--fake"],
        capture_output=True,
        text=True,
        env={**os.environ, "CC": "/opt/gcc/bin/gcc"},
        timeout=120,
    )
    assert "exit code: 0" in result.stdout, result.stdout + result.stderr
    assert "exec ok" in result.stdout
