"""Crafted packages against ``envbuild env`` and ``envbuild image --context`` (issue 16, 1-5).

Every package here has a correct sha256 in its channel's repodata: envbuild accepts the archive
as the lock's, and only what the archive says is hostile. envbuild runs as root in CI, so a
package that writes, deletes, links or copies anything outside the prefix (or, for images,
outside the staging folder and the image's prefix) is a host breach.

What a user must see:

* a package whose install would reach outside the prefix, whose paths are absolute, climb
  (``..``), are not normalized (``a//b``, ``./a``), repeat, or land on envbuild's own files
  (``etc/envbuild/...``), or that expands beyond ``ENVBUILD_MAX_PACKAGE_BYTES``: exit 18 and
  one line, ``envbuild: error: package NAME-VERSION-BUILD is unsafe: ...`` naming the path,
  before anything is linked or staged; no prefix, context or layer left, an existing
  environment untouched;
* archive-level tricks (tar members that climb or are absolute, symlink write-through, hard
  links out of the archive, setuid bits, device nodes), an unreadable paths.json, a name
  longer than NAME_MAX: a clean non-zero exit (one ``envbuild: error:`` line, no traceback,
  no crash), whatever the code;
* odd but legal packages (a newline or a case-only twin in a name, a forged conda-meta
  record, a path longer than PATH_MAX): exit 0 with the files inside the prefix, or a clean
  error;
* in every case: nothing under the sandbox changes but the prefix, the package cache and the
  context; no file anywhere holds the host's secret, is a hard link to a host file, is a
  device or FIFO, or is setuid; a failed command leaves no prefix or context; a layer holds
  only normalized members under ``opt/env``.

Each test runs in a sandbox (``Sandbox``): host files in ``host/``, the prefix deep enough
that every climb a test makes stays inside ``tmp_path``, where the whole tree is compared
before and after. ``ENVBUILD_HOSTILE_CASES`` sets how many random path shapes are generated
(default 12; ``make hostile`` runs 300). The real 1 GiB bomb (a 32 kB .conda) runs every time: 2 s.
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from envbuild.testing.catalog import python_packages, system_packages
from envbuild.testing.channel import Package

from .crafted import (
    AUTO,
    Crafted,
    Member,
    diff,
    digests,
    entries_of,
    entry,
    file,
    snapshot,
    symlink,
    walk,
    write_archive,
    write_crafted_channel,
)

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
#: How many random path shapes to generate (``make hostile`` sets hundreds).
CASES = int(os.environ.get("ENVBUILD_HOSTILE_CASES", "12"))
SEED = int(os.environ.get("ENVBUILD_HOSTILE_SEED", "16"))
#: The long run: the real 1 GiB bomb too.
UNSAFE = 18
LIMIT_VAR = "ENVBUILD_MAX_PACKAGE_BYTES"
MiB = 1 << 20
PYTHON_SITE = "lib/python3.11/site-packages"
PLACEHOLDER = "/opt/placeholder_" + "x" * 240  # longer than any sandbox prefix

# --- the sandbox ----------------------------------------------------------------------------


class Sandbox:
    """A test's world inside ``tmp_path``: host files, a project, a package cache, a prefix.

    Depths (below ``tmp_path``): the prefix 9, the staging root 8, the cache's extraction
    folders 7. A climb of up to 7 ``..`` from any of them stays inside ``tmp_path``, where
    ``snapshot`` sees it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = root / "host"
        self.secret = self.host / "secret.txt"
        self.template = self.host / "template.txt"
        self.marker = f"HOST-SECRET-{uuid.uuid4().hex}".encode()
        self.project = root / "project"
        self.base = root / "base"  # a second project: the good environment an update targets
        self.channel = root / "channel"
        self.cache = root / "c" / "c" / "c" / "c" / "cache"
        self.prefix = root.joinpath(*["p"] * 7, "envs", "worker")
        self.context = root / "context"
        self.abs_base = root.joinpath("abs", *["a"] * 7)  # absolute paths generated point here
        self.make_host()
        for folder in (self.project, self.base, self.prefix.parent, self.abs_base, self.cache):
            folder.mkdir(parents=True)
        self.channel_url = ""

    def make_host(self) -> None:
        """The host's files: a secret, a template with a prefix placeholder, a folder."""
        self.host.mkdir()
        self.secret.write_bytes(self.marker + b"\n")
        self.template.write_bytes(PLACEHOLDER.encode() + b"\n" + self.marker)
        (self.host / "folder").mkdir()
        (self.host / "folder" / "kept.txt").write_text("kept\n")

    def reset(self) -> None:
        """Between two commands: the host's files as they were, no prefix, no context, an
        empty package cache (what escaped stays where it is: the next snapshot has it)."""
        for folder in (self.host, self.prefix, self.context, self.cache):
            shutil.rmtree(folder, ignore_errors=True)
        self.make_host()
        self.cache.mkdir()

    # where a package's files come from and go
    def extraction(self, stem: str) -> Path:
        return self.cache / "pkgs" / stem

    def up(self, target: Path, start: Path) -> str:
        """``target`` as a path relative to ``start`` (``../../host/secret.txt``)."""
        return os.path.relpath(target, start)

    # the channel and the specs
    def write_channel(self, crafted: Iterable[Crafted], extra: Iterable[Package] = ()) -> None:
        base = [*system_packages("linux-64"), *python_packages("linux-64", {"3.11": "3.11.9"})]
        self.channel_url = write_crafted_channel(
            self.channel, [*base, *extra], crafted, ("linux-64",)
        )

    def write_spec(self, folder: Path, dependencies: Iterable[str]) -> Path:
        spec = folder / "envbuild.yaml"
        deps = ", ".join(["python 3.11.*", *dependencies])
        spec.write_text(
            "name: hostile\n"
            f"channels: ['{self.channel_url}']\n"
            "platforms: [linux-64]\n"
            f"dependencies: [{deps}]\n"
            "roles:\n"
            "  client: {gpu: false}\n"
            "  scheduler: {gpu: false}\n"
            "  worker: {gpu: false}\n"
            # a base pinned by digest: `image --context` needs no registry to name it
            f"image: {{base: 'debian:bookworm-slim@sha256:{'b' * 64}'}}\n"
        )
        return spec

    # envbuild, as a user runs it
    def run(
        self, *args: object, environ: Mapping[str, str] = {}, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ENVBUILD_DEBUG", LIMIT_VAR)}
        env.update(ENVBUILD_CACHE_DIR=str(self.cache), **environ)
        try:
            return subprocess.run(
                [ENVBUILD, *map(str, args)],
                cwd=self.project,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"envbuild {' '.join(map(str, args))} hung for {timeout} s")

    def lock(self, spec: Path) -> None:
        result = self.run("lock", "-f", spec)
        assert result.returncode == 0, result.stderr

    def env(
        self, spec: Path, *, environ: Mapping[str, str] = {}, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "env",
            "--role",
            "worker",
            "--prefix",
            self.prefix,
            "-f",
            spec,
            environ=environ,
            timeout=timeout,
        )

    def image(
        self, spec: Path, *, environ: Mapping[str, str] = {}, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "image",
            "--role",
            "worker",
            "--context",
            self.context,
            "-f",
            spec,
            environ=environ,
            timeout=timeout,
        )

    # what escaped
    def before(self) -> dict[str, tuple[object, ...]]:
        return snapshot(self.root, skip=(self.cache, self.prefix, self.context))

    def escaped(self, before: Mapping[str, tuple[object, ...]]) -> list[str]:
        """Everything that changed outside the prefix, the cache and the context, and every
        file that holds the host's secret, is a hard link to a host file, is a device or
        FIFO, or carries a setuid/setgid bit."""
        after = snapshot(self.root, skip=(self.cache, self.prefix, self.context))
        problems = [f"outside the prefix: {line}" for line in diff(before, after)]
        host_inodes = {(p.lstat().st_dev, p.lstat().st_ino) for p in walk(self.host)}
        for path in walk(self.root):
            shown = path.relative_to(self.root)
            if path == self.host or self.host in path.parents:
                continue
            if str(shown) in before and before[str(shown)] == after.get(str(shown)):
                continue  # there before this command, unchanged
            status = path.lstat()
            if stat.S_ISREG(status.st_mode):
                if (status.st_dev, status.st_ino) in host_inodes:
                    problems.append(f"{shown} is a hard link to a host file")
                if status.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    problems.append(f"{shown} is setuid/setgid ({oct(status.st_mode)})")
                if status.st_size <= 64 * MiB and self.marker in path.read_bytes():
                    problems.append(f"{shown} holds the host's secret")
            elif not (stat.S_ISDIR(status.st_mode) or stat.S_ISLNK(status.st_mode)):
                problems.append(f"{shown} is a special file ({stat.filemode(status.st_mode)})")
        return problems


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


# --- cases ------------------------------------------------------------------------------------

Expect = Literal["unsafe", "contained", "harmless", "either"]


@dataclass(frozen=True)
class Case:
    """Hostile packages, what envbuild must do with them, and the paths its error may name.

    ``unsafe``: exit 18 naming one of ``names`` (any, when empty). ``contained``: a clean
    non-zero exit. ``harmless``: exit 0, or a clean non-zero exit. ``either``: exit 0 with
    ``lands`` inside the prefix, or exit 18. In every case nothing escapes."""

    packages: tuple[Crafted, ...]
    expect: Expect = "unsafe"
    names: tuple[str, ...] = ()
    lands: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict)
    extra: tuple[Package, ...] = ()

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(p.stem for p in self.packages)

    @property
    def dependencies(self) -> list[str]:
        return [p.name for p in self.packages]


OK_FILE = "share/evil/ok.txt"


def evil(
    *payload: Member,
    paths: Any = AUTO,
    name: str = "evil",
    **more: Any,
) -> Crafted:
    """The package ``evil``: a harmless file plus ``payload``. ``paths``: paths.json entries
    besides the harmless file's (AUTO: the payload's; None: no paths.json at all)."""
    members = (file(OK_FILE, "ok\n"), *payload)
    if paths is AUTO:
        return Crafted(name=name, payload=members, **more)
    if paths is None:
        return Crafted(name=name, payload=members, paths=None, **more)
    return Crafted(name=name, payload=members, paths=[entry(OK_FILE, "ok\n"), *paths], **more)


def evil_python(
    *, entry_points: Iterable[str] = (), paths: Iterable[dict[str, Any]] = ()
) -> Crafted:
    """A noarch python package whose entry points and site-packages paths are given."""
    module = "site-packages/evilpy/__init__.py"
    code = "def main():\n    pass\n"
    link = {
        "noarch": {"type": "python", "entry_points": list(entry_points)},
        "package_metadata_version": 1,
    }
    return Crafted(
        name="evilpy",
        noarch="python",
        depends=("python",),
        payload=(file(module, code),),
        paths=[entry(module, code), *paths],
        link=link,
    )


Shape = Callable[[Sandbox], Case]
SHAPES: dict[str, Shape] = {}


def shape(name: str) -> Callable[[Shape], Shape]:
    def register(make: Shape) -> Shape:
        SHAPES[name] = make
        return make

    return register


def one(path: str, data: bytes | str = "x\n", **extra: Any) -> Case:
    """``evil`` whose paths.json names ``path`` (nothing of that name in the archive)."""
    return Case((evil(paths=[entry(path, data, **extra)]),), names=(path,))


# paths.json: climbing, absolute, not normalized, repeated, envbuild's own files


@shape("climb-from-prefix-to-host-file")  # issue 16.1: rattler deletes the target
def _(sb: Sandbox) -> Case:
    return one(sb.up(sb.secret, sb.prefix))


@shape("climb-to-root-then-host-file")
def _(sb: Sandbox) -> Case:
    return one("../" * 40 + str(sb.secret).lstrip("/"))


@shape("climb-out-of-extraction-folder")  # issue 16.2: the host file is the link's source
def _(sb: Sandbox) -> Case:
    return one(sb.up(sb.secret, sb.extraction("evil-1.0-0")), sb.marker + b"\n")


@shape("beside-the-prefix")  # issue 16.3: ../PKG-1.0-0/share/... is its own extraction
def _(sb: Sandbox) -> Case:
    return one(f"../evil-1.0-0/{OK_FILE}", "ok\n")


@shape("absolute-host-file")  # issue 16.4: rattler aborts (exit 134)
def _(sb: Sandbox) -> Case:
    return one(str(sb.secret))


@shape("absolute-new-file")
def _(sb: Sandbox) -> Case:
    return one(str(sb.host / "new.txt"))


@shape("dotdot-inside-the-prefix")
def _(sb: Sandbox) -> Case:
    return one("share/../share/evil/other.txt")


@shape("double-slash")
def _(sb: Sandbox) -> Case:
    return one("share//evil/other.txt")


@shape("dot-slash")
def _(sb: Sandbox) -> Case:
    return one("./share/evil/other.txt")


@shape("dot-component")
def _(sb: Sandbox) -> Case:
    return one("share/./evil/other.txt")


@shape("trailing-slash")
def _(sb: Sandbox) -> Case:
    return one("share/evil/other/")


@shape("empty-path")
def _(sb: Sandbox) -> Case:
    return Case((evil(paths=[entry("", "x\n")]),))


@shape("the-prefix-itself")
def _(sb: Sandbox) -> Case:
    return Case((evil(paths=[entry(".", "x\n")]),))


@shape("the-folder-above-the-prefix")
def _(sb: Sandbox) -> Case:
    return Case((evil(paths=[entry("..", "x\n")]),))


@shape("duplicate-path")
def _(sb: Sandbox) -> Case:
    dup = "share/evil/dup.txt"
    package = evil(file(dup, "one\n"), paths=[entry(dup, "one\n"), entry(dup, "two\n")])
    return Case((package,), names=(dup,))


@shape("envbuild-stamp")  # a forged stamp makes any prefix look complete
def _(sb: Sandbox) -> Case:
    forged = json.dumps({"generated-by": "envbuild", "packages": "sha256:forged"})
    return Case(
        (evil(file("etc/envbuild/stamp.json", forged)),), names=("etc/envbuild/stamp.json",)
    )


@shape("envbuild-dask-guard")  # the guard that refuses a foreign worker, replaced
def _(sb: Sandbox) -> Case:
    path = "etc/envbuild/python/envbuild/dask.py"
    return Case((evil(file(path, "def check(*a):\n    return None\n")),), names=(path,))


@shape("envbuild-folder-as-a-file")
def _(sb: Sandbox) -> Case:
    return Case((evil(file("etc/envbuild", "not a folder\n")),), names=("etc/envbuild",))


@shape("directory-entry-climbs")
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.host / "made-by-package", sb.prefix)
    return Case((evil(paths=[{"_path": path, "path_type": "directory"}]),), names=(path,))


@shape("softlink-entry-climbs")
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.host / "link-by-package", sb.prefix)
    entry_ = {"_path": path, "path_type": "softlink", "size_in_bytes": 0}
    return Case((evil(paths=[entry_]),), names=(path,))


@shape("nul-truncates-to-a-climb")  # "share/a\0/../../..": a C string ends at share/a
def _(sb: Sandbox) -> Case:
    path = "share/a\0/" + sb.up(sb.secret, sb.prefix / "share" / "a")
    return Case((evil(paths=[entry(path, "x\n")]),))


@shape("conda-format-climb")  # the same climb in a .conda archive (zip of zstd tars)
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.secret, sb.prefix)
    return Case((evil(paths=[entry(path, "x\n")], archive="conda"),), names=(path,))


@shape("second-paths-json-climbs")  # a checker that reads the first copy sees a safe one
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.secret, sb.prefix)
    hostile = {"paths": [entry(OK_FILE, "ok\n"), entry(path, "x\n")], "paths_version": 1}
    package = evil(info=(file("info/paths.json", json.dumps(hostile)),))
    return Case((package,), names=(path,))


# archives older than paths.json: info/files (and info/has_prefix) only


@shape("info-files-climbs")
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.secret, sb.prefix)
    package = evil(paths=None, files=[OK_FILE, path])
    return Case((package,), names=(path,))


@shape("info-files-absolute")
def _(sb: Sandbox) -> Case:
    package = evil(paths=None, files=[OK_FILE, str(sb.secret)])
    return Case((package,), names=(str(sb.secret),))


@shape("info-has-prefix-climbs")
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.template, sb.extraction("evil-1.0-0"))
    has_prefix = f"{PLACEHOLDER} text {path}\n"
    package = evil(paths=None, files=[OK_FILE, path], has_prefix=has_prefix)
    return Case((package,), names=(path,))


# prefix placeholders: the file is read, rewritten and written, not linked


@shape("placeholder-text-climbs")  # reads a host file, writes it outside with a new prefix
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.template, sb.extraction("evil-1.0-0"))
    placed = entry(
        path,
        sb.template.read_bytes(),
        prefix_placeholder=PLACEHOLDER,
        file_mode="text",
    )
    return Case((evil(paths=[placed]),), names=(path,))


@shape("placeholder-binary-climbs")
def _(sb: Sandbox) -> Case:
    path = sb.up(sb.template, sb.extraction("evil-1.0-0"))
    placed = entry(
        path,
        sb.template.read_bytes(),
        prefix_placeholder=PLACEHOLDER,
        file_mode="binary",
    )
    return Case((evil(paths=[placed]),), names=(path,))


@shape("placeholder-through-a-symlink-to-a-host-file")  # the rewrite reads the host file
def _(sb: Sandbox) -> Case:
    path = "share/evil/config.txt"
    placed = entry(path, "x\n", prefix_placeholder=PLACEHOLDER, file_mode="text")
    return Case((evil(symlink(path, str(sb.template)), paths=[placed]),), expect="harmless")


@shape("hardlink-entry-is-a-symlink-to-a-host-file")  # paths.json says file, archive says link
def _(sb: Sandbox) -> Case:
    path = "share/evil/leak.txt"
    return Case(
        (evil(symlink(path, str(sb.secret)), paths=[entry(path, sb.marker + b"\n")]),),
        expect="harmless",
    )


@shape("placeholder-empty")  # an empty placeholder: replace "" everywhere?
def _(sb: Sandbox) -> Case:
    path = "share/evil/empty-placeholder.txt"
    data = "abc\n" * 4096
    placed = entry(path, data, prefix_placeholder="", file_mode="text")
    return Case((evil(file(path, data), paths=[placed]),), expect="harmless")


# noarch python: entry points (info/link.json) and site-packages paths


def entry_point_case(name: str) -> Case:
    return Case((evil_python(entry_points=[f"{name} = evilpy:main"]),), names=(name,))


@shape("entry-point-climbs-to-host-file")  # bin/NAME: a script written over a host file
def _(sb: Sandbox) -> Case:
    return entry_point_case(sb.up(sb.secret, sb.prefix / "bin"))


@shape("entry-point-absolute")
def _(sb: Sandbox) -> Case:
    return entry_point_case(str(sb.host / "evil-entry"))


@shape("entry-point-beside-the-prefix")
def _(sb: Sandbox) -> Case:
    return entry_point_case("../../evil-entry")


@shape("entry-point-over-the-stamp")
def _(sb: Sandbox) -> Case:
    return entry_point_case("../etc/envbuild/stamp.json")


@shape("site-packages-climbs")  # out of the extraction folder to a host file: it is copied
def _(sb: Sandbox) -> Case:
    climb = sb.up(sb.secret, sb.extraction("evilpy-1.0-0") / "site-packages")
    path = "site-packages/" + climb
    names = (path, f"{PYTHON_SITE}/{climb}")
    return Case((evil_python(paths=[entry(path, sb.marker + b"\n")]),), names=names)


@shape("python-scripts-climbs")
def _(sb: Sandbox) -> Case:
    climb = sb.up(sb.secret, sb.extraction("evilpy-1.0-0") / "python-scripts")
    path = "python-scripts/" + climb
    names = (path, f"bin/{climb}")
    return Case((evil_python(paths=[entry(path, sb.marker + b"\n")]),), names=names)


@shape("site-packages-dotdot-inside")
def _(sb: Sandbox) -> Case:
    path = "site-packages/../../../bin/evil-inside"
    mapped = f"{PYTHON_SITE}/../../../bin/evil-inside"
    return Case((evil_python(paths=[entry(path, "x\n")]),), names=(path, mapped))


# symlinks in the payload, and files written through them


@shape("write-through-absolute-symlink")
def _(sb: Sandbox) -> Case:
    link, through = "share/evil/link", "share/evil/link/secret.txt"
    package = evil(
        symlink(link, str(sb.host)),
        paths=[*entries_of([symlink(link, str(sb.host))]), entry(through, "pwned\n")],
    )
    return Case((package,), names=(link, through))


@shape("write-through-climbing-symlink")
def _(sb: Sandbox) -> Case:
    link, through = "share/evil/up", "share/evil/up/secret.txt"
    target = sb.up(sb.host, sb.prefix / "share" / "evil")
    package = evil(
        symlink(link, target),
        paths=[*entries_of([symlink(link, target)]), entry(through, "pwned\n")],
    )
    return Case((package,), names=(link, through))


@shape("write-through-symlink-of-another-package")
def _(sb: Sandbox) -> Case:
    link, through = "share/shared-link", "share/shared-link/secret.txt"
    first = Crafted(name="evil-a", payload=(symlink(link, str(sb.host)),))
    second = Crafted(
        name="evil-b", payload=(file(OK_FILE, "ok\n"),), paths=[entry(through, "pwned\n")]
    )
    return Case((first, second), names=(link, through))


@shape("symlink-etc-envbuild-writes-through")  # envbuild's stamp and guard written via it
def _(sb: Sandbox) -> Case:
    return Case((evil(symlink("etc/envbuild", str(sb.host / "folder"))),), names=("etc/envbuild",))


@shape("symlink-etc-then-envbuild-writes-through-it")
def _(sb: Sandbox) -> Case:
    return Case((evil(symlink("etc", str(sb.host / "folder"))),), names=("etc",))


# archive-level tricks: contained today, and must stay so


@shape("tar-member-climbs")
def _(sb: Sandbox) -> Case:
    member = file(sb.up(sb.host / "pwned.txt", sb.extraction("evil-1.0-0")), "pwned\n")
    return Case((evil(member, paths=[]),), expect="contained")


@shape("tar-member-absolute")
def _(sb: Sandbox) -> Case:
    return Case((evil(file(str(sb.host / "pwned.txt"), "pwned\n"), paths=[]),), expect="contained")


@shape("tar-symlink-write-through")
def _(sb: Sandbox) -> Case:
    link = symlink("share/evil/link", str(sb.host))
    through = file("share/evil/link/pwned.txt", "pwned\n")
    return Case((evil(link, through, paths=entries_of([link])),), expect="contained")


@shape("tar-hardlink-to-host-file")
def _(sb: Sandbox) -> Case:
    link = Member("share/evil/hard", kind="hardlink", linkname=str(sb.secret))
    return Case(
        (evil(link, paths=[entry("share/evil/hard", sb.marker + b"\n")]),), expect="contained"
    )


@shape("tar-hardlink-climbs")
def _(sb: Sandbox) -> Case:
    target = sb.up(sb.secret, sb.extraction("evil-1.0-0"))
    link = Member("share/evil/hard", kind="hardlink", linkname=target)
    return Case(
        (evil(link, paths=[entry("share/evil/hard", sb.marker + b"\n")]),), expect="contained"
    )


@shape("tar-setuid")
def _(sb: Sandbox) -> Case:
    member = file("bin/evil-suid", "#!/bin/sh\nid\n", mode=0o6755)
    return Case((evil(member),), expect="contained")


@shape("tar-device-node")  # /dev/mem's numbers
def _(sb: Sandbox) -> Case:
    member = Member("share/evil/mem", kind="chardev", devmajor=1, devminor=1, mode=0o666)
    return Case((evil(member),), expect="contained")


@shape("tar-fifo")
def _(sb: Sandbox) -> Case:
    return Case((evil(Member("share/evil/fifo", kind="fifo")),), expect="harmless")


# sizes: bombs (the limit comes from ENVBUILD_MAX_PACKAGE_BYTES) and long names

LIMIT = {"ENVBUILD_MAX_PACKAGE_BYTES": str(1 * MiB)}


@shape("bomb-one-file")  # 16 MiB of zeros in a few hundred bytes, limit 1 MiB
def _(sb: Sandbox) -> Case:
    return Case((evil(Member("share/evil/zeros", zeros=16 * MiB)),), environ=LIMIT)


@shape("bomb-paths-json-lies")  # paths.json says 1 byte
def _(sb: Sandbox) -> Case:
    zeros = Member("share/evil/zeros", zeros=16 * MiB)
    lie = {"_path": "share/evil/zeros", "path_type": "hardlink", "size_in_bytes": 1}
    return Case((evil(zeros, paths=[lie]),), environ=LIMIT)


@shape("bomb-many-files")  # 512 files of 32 KiB: no single file is large
def _(sb: Sandbox) -> Case:
    members = [Member(f"share/evil/z/{i:04d}", zeros=32 * 1024) for i in range(512)]
    return Case((evil(*members),), environ=LIMIT)


@shape("bomb-sparse-file")  # a GNU sparse member: 16 MiB from one stored byte
def _(sb: Sandbox) -> Case:
    return Case((evil(Member("share/evil/sparse", kind="sparse", zeros=16 * MiB)),), environ=LIMIT)


@shape("name-component-too-long")  # 300 bytes > NAME_MAX
def _(sb: Sandbox) -> Case:
    path = "share/evil/" + "n" * 300 + ".txt"
    return Case((evil(file(path, "long\n")),), expect="contained")


@shape("path-too-long")  # 20 components of 250 bytes > PATH_MAX
def _(sb: Sandbox) -> Case:
    path = "share/evil/" + "/".join(["m" * 250] * 20) + "/f.txt"
    return Case((evil(file(path, "long\n")),), expect="harmless")


# legal but odd


@shape("newline-in-a-name")
def _(sb: Sandbox) -> Case:
    path = "share/evil/a\nb.txt"
    return Case((evil(file(path, "nl\n")),), expect="either", lands=(path,))


@shape("case-only-duplicates")
def _(sb: Sandbox) -> Case:
    upper, lower = "share/evil/README.txt", "share/evil/readme.txt"
    return Case(
        (evil(file(upper, "A\n"), file(lower, "a\n")),), expect="either", lands=(upper, lower)
    )


@shape("conda-meta-record-forged")  # a package that writes another package's record
def _(sb: Sandbox) -> Case:
    record = json.dumps({"name": "numpy", "version": "9.9", "build": "0", "sha256": "0" * 64})
    return Case(
        (evil(file("conda-meta/numpy-9.9-0.json", record)),),
        expect="harmless",
    )


@shape("paths-json-not-a-list")
def _(sb: Sandbox) -> Case:
    bad = file("info/paths.json", json.dumps({"paths": "share/evil/ok.txt", "paths_version": 1}))
    return Case(
        (Crafted(name="evil", payload=(file(OK_FILE, "ok\n"),), paths=None, info=(bad,)),),
        expect="contained",
    )


@shape("path-not-a-string")
def _(sb: Sandbox) -> Case:
    return Case((evil(paths=[{"_path": 42, "path_type": "hardlink"}]),), expect="contained")


# --- checks -----------------------------------------------------------------------------------


def refusal(
    result: subprocess.CompletedProcess[str], stems: Iterable[str], names: Iterable[str]
) -> list[str]:
    """Why ``result`` is not envbuild's one-line refusal of one of ``stems``, naming one of
    ``names`` (those that are printable)."""
    problems = []
    if result.returncode != UNSAFE:
        problems.append(f"exit {result.returncode}, not {UNSAFE}")
    lines = result.stderr.strip().splitlines()
    starts = [f"envbuild: error: package {stem} is unsafe: " for stem in stems]
    if len(lines) != 1 or not any(lines[0].startswith(s) for s in starts):
        problems.append(
            f"stderr is not one line 'envbuild: error: package {'|'.join(stems)} is unsafe: ...'"
        )
    printable = [n for n in names if n.isprintable()]
    if lines and printable and not any(n in lines[0] for n in printable):
        problems.append(f"the error names none of {printable}")
    return problems


def clean_error(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Why ``result`` is not a clean, expected failure (one error line, no traceback)."""
    problems = []
    code = result.returncode
    if code == 0:
        problems.append("exit 0: accepted")
    elif code == 1 or code < 0 or code >= 128:
        problems.append(f"exit {code}: a crash, not an expected error")
    first = result.stderr.strip().splitlines()[:1]
    if code and not (first and first[0].startswith("envbuild: error: ")):
        problems.append("stderr does not start with 'envbuild: error: '")
    if "Traceback" in result.stderr or "panicked" in result.stderr:
        problems.append("a traceback or a panic")
    return problems


def said(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}; stderr: {result.stderr.strip()[-1500:]}"


def layer_problems(context: Path, prefix: str = "opt/env") -> list[str]:
    """Members of the context's environment layers that are not under ``prefix``, not
    normalized, or special."""
    problems = []
    for layer in ("shared.tar", "variant.tar"):
        if not (context / layer).is_file():
            continue
        with tarfile.open(context / layer) as tar:
            for member in tar.getmembers():
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    problems.append(f"{layer}: member {name!r} is not a normalized relative path")
                elif not (name == "opt" or name == prefix or name.startswith(prefix + "/")):
                    problems.append(f"{layer}: member {name!r} is outside {prefix}")
                if not (member.isfile() or member.isdir() or member.issym()):
                    problems.append(f"{layer}: member {name!r} is {member.type!r}")
                if member.mode & (stat.S_ISUID | stat.S_ISGID):
                    problems.append(f"{layer}: member {name!r} is setuid/setgid")
    return problems


def outcome_problems(
    sb: Sandbox,
    case: Case,
    result: subprocess.CompletedProcess[str],
    *,
    made: Path,
    made_existed: bool,
) -> list[str]:
    """Everything wrong with ``result`` for ``case``; ``made`` is what the command makes (the
    prefix, or the context)."""
    problems: list[str] = []
    accepted = case.expect == "either" and result.returncode == 0
    if case.expect == "unsafe" or (case.expect == "either" and not accepted):
        problems += refusal(result, case.stems, case.names)
    elif case.expect == "contained" or (case.expect == "harmless" and result.returncode != 0):
        problems += clean_error(result)
    if accepted and made == sb.prefix:
        for path in case.lands:
            if not (sb.prefix / path).is_file():
                problems.append(f"accepted, but {path!r} is not a file in the prefix")
    if result.returncode != 0 and not made_existed and made.exists():
        problems.append(f"{made.relative_to(sb.root)} left behind")
    if made == sb.context and result.returncode != 0:
        # refused before anything is staged: no file at all; failed: no layer tar
        images = sb.cache / "images"
        left = [p for p in walk(images) if p.is_file()] if images.exists() else []
        if result.returncode != UNSAFE:
            left = [p for p in left if p.name.endswith(".tar")]
        problems += [f"left in the staging cache: {p.relative_to(sb.cache)}" for p in left]
    elif made == sb.context:
        problems += layer_problems(sb.context)
    return problems


def check(problems: list[str], result: subprocess.CompletedProcess[str]) -> None:
    assert not problems, "\n".join([*problems, said(result)])


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", SHAPES)
def test_a_hostile_package_is_refused_and_nothing_escapes(sandbox: Sandbox, name: str) -> None:
    """``env`` then (the host restored, the cache emptied) ``image --context``, both against
    the same lock; every problem of both is reported."""
    case = SHAPES[name](sandbox)
    sandbox.write_channel(case.packages, case.extra)
    spec = sandbox.write_spec(sandbox.project, case.dependencies)
    sandbox.lock(spec)

    before = sandbox.before()
    env = sandbox.env(spec, environ=case.environ)
    problems = outcome_problems(sandbox, case, env, made=sandbox.prefix, made_existed=False)
    problems += sandbox.escaped(before)
    if "ENVBUILD_MAX_PACKAGE_BYTES" in case.environ:
        size = sum(p.lstat().st_size for p in walk(sandbox.cache) if p.is_file())
        if size > 4 * MiB:
            problems.append(f"the package cache holds {size} bytes after the refusal")
    report = [f"env: {line}" for line in [*problems, said(env)]] if problems else []

    sandbox.reset()
    before = sandbox.before()
    image = sandbox.image(spec, environ=case.environ)
    problems = outcome_problems(sandbox, case, image, made=sandbox.context, made_existed=False)
    problems += sandbox.escaped(before)
    report += [f"image: {line}" for line in [*problems, said(image)]] if problems else []

    assert not report, "\n".join(report)


UPDATE_SHAPES = (
    "climb-from-prefix-to-host-file",
    "beside-the-prefix",
    "envbuild-stamp",
    "symlink-etc-envbuild-writes-through",
    "write-through-absolute-symlink",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", UPDATE_SHAPES)
def test_a_refused_update_leaves_the_existing_environment_untouched(
    sandbox: Sandbox, name: str
) -> None:
    case = SHAPES[name](sandbox)
    sandbox.write_channel(case.packages, case.extra)
    good = sandbox.write_spec(sandbox.base, [])
    sandbox.lock(good)
    assert sandbox.env(good).returncode == 0
    spec = sandbox.write_spec(sandbox.project, case.dependencies)
    sandbox.lock(spec)
    environment = snapshot(sandbox.prefix)
    before = sandbox.before()

    result = sandbox.env(spec)

    problems = outcome_problems(sandbox, case, result, made=sandbox.prefix, made_existed=True)
    problems += sandbox.escaped(before)
    problems += [
        f"in the environment: {line}" for line in diff(environment, snapshot(sandbox.prefix))
    ]
    verify = sandbox.run(
        "verify", "--role", "worker", "--prefix", sandbox.prefix, "-f", good, "--files"
    )
    if verify.returncode != 0:
        problems.append(f"the old environment no longer verifies: {said(verify)}")
    check(problems, result)


@pytest.mark.slow
def test_a_package_under_the_size_limit_installs(sandbox: Sandbox) -> None:
    """The limit counts what a package expands to, and only refuses beyond it."""
    package = evil(Member("share/evil/zeros", zeros=2 * MiB))
    sandbox.write_channel([package])
    spec = sandbox.write_spec(sandbox.project, ["evil"])
    sandbox.lock(spec)
    result = sandbox.env(spec, environ={"ENVBUILD_MAX_PACKAGE_BYTES": str(4 * MiB)})
    assert result.returncode == 0, result.stderr
    assert (sandbox.prefix / "share/evil/zeros").stat().st_size == 2 * MiB


@pytest.mark.slow
def test_well_formed_crafted_packages_install_env_and_image(sandbox: Sandbox) -> None:
    """The control: the builder's packages install when nothing in them is hostile (relative
    symlinks inside the prefix, a prefix placeholder, an entry point, odd but legal names),
    so every refusal above is for the hostile part alone."""
    placeholder = PLACEHOLDER
    text = f"prefix={placeholder}\n"
    legal = [
        "share/evil/a b.txt",
        "share/evil/é.txt",
        "share/evil/..\\..\\x.txt",
        "share/evil/...",
        "share/evil/~",
    ]
    package = evil(
        file("share/evil/target.txt", "t\n"),
        symlink("share/evil/link", "target.txt"),
        symlink("bin/evil-link", "../share/evil/target.txt"),
        file("share/evil/config.txt", text),
        *[file(p, "legal\n") for p in legal],
        paths=[
            entry("share/evil/target.txt", "t\n"),
            *entries_of(
                [
                    symlink("share/evil/link", "target.txt"),
                    symlink("bin/evil-link", "../share/evil/target.txt"),
                ]
            ),
            entry("share/evil/config.txt", text, prefix_placeholder=placeholder, file_mode="text"),
            *[entry(p, "legal\n") for p in legal],
        ],
    )
    sandbox.write_channel([package, evil_python(entry_points=["evil-cli = evilpy:main"])])
    spec = sandbox.write_spec(sandbox.project, ["evil", "evilpy"])
    sandbox.lock(spec)
    before = sandbox.before()

    result = sandbox.env(spec)
    assert result.returncode == 0, result.stderr
    prefix = sandbox.prefix
    assert (prefix / "share/evil/link").read_text() == "t\n"
    assert (prefix / "share/evil/config.txt").read_text() == f"prefix={prefix}\n"
    assert (prefix / "bin/evil-cli").is_file()
    for path in legal:
        assert (prefix / path).read_text() == "legal\n"
    verify = sandbox.run("verify", "--role", "worker", "--prefix", prefix, "-f", spec, "--files")
    assert verify.returncode == 0, verify.stderr

    image = sandbox.image(spec)
    assert image.returncode == 0, image.stderr
    assert layer_problems(sandbox.context) == []
    with tarfile.open(sandbox.context / "shared.tar") as tar:
        names = tar.getnames()
    assert "opt/env/share/evil/link" in names and "opt/env/bin/evil-cli" in names
    assert sandbox.escaped(before) == []


@pytest.mark.slow
def test_a_build_string_that_climbs_reaches_nothing(sandbox: Sandbox) -> None:
    """The package cache files an extraction under NAME-VERSION-BUILD: a channel whose build
    string is ``x/../../../escaped`` (the archive where that file name resolves, its sha256
    true) must not make anything be written outside the cache and the prefix."""
    package = Crafted(name="evil", build="x/../../../../../../escaped", payload=(file(OK_FILE),))
    sandbox.write_channel([])
    noarch = sandbox.channel / "noarch"
    (noarch / "evil-1.0-x").mkdir()
    archive = Path(os.path.normpath(noarch / package.file_name))
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_archive(package, archive)
    sha256, md5, size = digests(archive)
    repodata = json.loads((noarch / "repodata.json").read_text())
    record = {**package.index_json(), "md5": md5, "sha256": sha256, "size": size}
    repodata["packages"][package.file_name] = record
    (noarch / "repodata.json").write_text(json.dumps(repodata))
    spec = sandbox.write_spec(sandbox.project, ["evil"])
    # -q: lock's progress lines ("solving 1 targets ...") go to stderr before any error, and
    # clean_error wants the error first; the refusal itself is what this branch checks.
    locked = sandbox.run("lock", "-q", "-f", spec)
    if locked.returncode != 0:  # refusing it in the lock is as good
        assert clean_error(locked) == [], said(locked)
        return
    case = Case((package,), expect="contained")
    before = sandbox.before()
    env = sandbox.env(spec)
    problems = outcome_problems(sandbox, case, env, made=sandbox.prefix, made_existed=False)
    problems += sandbox.escaped(before)
    sandbox.reset()
    before = sandbox.before()
    image = sandbox.image(spec)
    problems += outcome_problems(sandbox, case, image, made=sandbox.context, made_existed=False)
    problems += sandbox.escaped(before)
    assert not problems, "\n".join([*problems, said(env), said(image)])


# --- generated path shapes, against an independent reference ---------------------------------

SAFE_PARTS = [
    "d0",
    "d1",
    "share",
    "...",
    ". .",
    "..\\..",
    "~",
    "$HOME",
    "é",
    "a b",
    "-x",
    "etc",
    "*",
    ".hidden",
    "envbuild",
]
ALL_PARTS = [*SAFE_PARTS, "..", "..", ".", ""]
MAX_UP = 7  # the sandbox's depths keep 7 climbs inside tmp_path


def reference_safe(path: str) -> bool:
    """A path a package may install: relative, normalized, no ``..``, inside the prefix, not
    envbuild's own. Written independently of envbuild."""
    if not path or path.startswith("/") or "\0" in path:
        return False
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return False
    if not posixpath.normpath("/prefix/" + path).startswith("/prefix/"):
        return False
    return not (path == "etc/envbuild" or path.startswith("etc/envbuild/"))


def generated_path(rng: random.Random, sb: Sandbox, leaf: str, safe_only: bool) -> str:
    parts = [rng.choice(SAFE_PARTS if safe_only else ALL_PARTS) for _ in range(rng.randint(0, 5))]
    ups = 0
    for i, part in enumerate(parts):
        if part == "..":
            ups += 1
            if ups > MAX_UP:
                parts[i] = "d0"
    path = "/".join([*parts, leaf])
    if safe_only:
        return path
    roll = rng.random()
    if roll < 0.12:
        return f"{sb.abs_base}/{path}"  # absolute, inside the sandbox
    if roll < 0.18:
        return path + "/"
    if roll < 0.24:
        return "./" + path
    return path


def generated_case(index: int, sb: Sandbox) -> tuple[Case, list[str]]:
    rng = random.Random(SEED * 1_000_003 + index)  # noqa: S311 - reproducible shapes
    safe_only = index % 2 == 0
    paths = [
        generated_path(rng, sb, f"f{index}_{j}.txt", safe_only) for j in range(rng.randint(1, 3))
    ]
    members = [file(p, f"{p}\n") for p in paths if reference_safe(p)]
    package = Crafted(name="gen", payload=tuple(members), paths=[entry(p, f"{p}\n") for p in paths])
    unsafe = [p for p in paths if not reference_safe(p)]
    case = Case(
        (package,), expect="unsafe" if unsafe else "either", names=tuple(unsafe), lands=tuple(paths)
    )
    return case, paths


@pytest.mark.slow
@pytest.mark.parametrize("index", range(CASES))
def test_generated_paths_are_judged_as_the_reference_judges_them(
    sandbox: Sandbox, index: int
) -> None:
    case, paths = generated_case(index, sandbox)
    sandbox.write_channel(case.packages)
    spec = sandbox.write_spec(sandbox.project, case.dependencies)
    sandbox.lock(spec)
    before = sandbox.before()

    result = sandbox.env(spec)

    problems = sandbox.escaped(before)
    if case.expect == "unsafe":
        problems += refusal(result, case.stems, case.names)
        if sandbox.prefix.exists():
            problems.append("the prefix was left behind")
    else:
        if result.returncode != 0:
            problems.append(f"safe paths {paths!r} were not installed")
        for path in paths:
            landed = sandbox.prefix / path
            if not landed.is_file() or landed.read_text() != f"{path}\n":
                problems.append(f"{path!r} did not land in the prefix")
    assert not problems, "\n".join([f"paths: {paths!r}", *problems, said(result)])


@pytest.mark.slow
def test_a_real_one_gib_bomb_is_refused_before_it_fills_the_disk(sandbox: Sandbox) -> None:
    package = evil(Member("share/evil/zeros", zeros=1 << 30), archive="conda")
    sandbox.write_channel([package])
    archive = next(sandbox.channel.glob("noarch/evil-*.conda"))
    assert archive.stat().st_size < 100_000  # tens of kB, as the issue found
    spec = sandbox.write_spec(sandbox.project, ["evil"])
    sandbox.lock(spec)
    before = sandbox.before()

    result = sandbox.env(spec, environ={"ENVBUILD_MAX_PACKAGE_BYTES": str(256 * MiB)}, timeout=600)

    problems = refusal(result, ["evil-1.0-0"], [])
    problems += sandbox.escaped(before)
    size = sum(p.lstat().st_size for p in walk(sandbox.cache) if p.is_file())
    if size > 512 * MiB:
        problems.append(f"the package cache holds {size} bytes after the refusal")
    for folder in (sandbox.cache, sandbox.prefix):  # pytest keeps the last runs' tmp_path
        shutil.rmtree(folder, ignore_errors=True)
    check(problems, result)
