"""The lock's PyPI wheels installed into a staged image prefix, without running the image.

``env`` installs wheels with uv into a prefix on this machine (``envbuild.env.pypi``). An
image is staged on this machine for another prefix (``/opt/env``) and maybe another
architecture (an arm64 image on an x86 machine), so nothing of the image may run: each wheel
is unpacked directly, as the wheel format lays it out (the binary distribution format,
PEP 427), into the staged root:

- its files (and ``NAME.data/purelib``, ``platlib``) into ``lib/pythonX.Y/site-packages``,
  ``.data/scripts`` into ``bin/`` with a ``#!python`` line pointing at the image's python,
  ``.data/headers`` into ``include/pythonX.Y/NAME``, ``.data/data`` into the prefix itself;
- its console and GUI scripts (``entry_points.txt``) as ``bin/`` launchers naming the
  image's python (``#!/opt/env/bin/python``);
- each ``.py`` under site-packages compiled to an unchecked-hash pyc (the runnable channel
  does the same), so the image's non-root user never compiles, and the bytes depend on the
  source alone (no mtime); compiled by a python of the image's X.Y on this machine (pycs
  carry no machine code: the same for amd64 and arm64), in a fresh process with a fixed hash
  seed; with none, the wheels stay uncompiled and staging says so;
- its RECORD rewritten for where the files went (every file with its sha256 and size, the
  pycs without, as pip writes them), ``INSTALLER`` saying envbuild; and
  ``etc/envbuild/wheels.json`` written as ``env`` writes it, so ``envbuild verify`` checks
  an image's prefix as it checks an environment.

Every wheel is sha256-checked against the lock before it is opened
(``envbuild.lock.pypifetch``); each file against the wheel's own RECORD as it is unpacked.
A path that leaves the prefix, lands in conda's or envbuild's folders, goes through a
symlink, or would replace another package's different file is refused (ImageBuildError).
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from envbuild.env.pypi import WHEELS_RECORD
from envbuild.env.safety import own_problem, path_problem, shown
from envbuild.errors import ImageBuildError
from envbuild.lock.wheels import LockedWheel, normalize

#: What a dist-info folder's INSTALLER says.
INSTALLER = "envbuild\n"
_SCRIPT_SHEBANG = re.compile(rb"^#!python(w)?(?=\s|$)")
_ENTRY_POINT = re.compile(r"^(?P<module>[\w.]+)\s*(?::\s*(?P<attribute>[\w.]+))?\s*(?:\[.*\])?$")
_LAUNCHER = """\
#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {head}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({call}())
"""
#: Compiles (source, name in tracebacks) pairs read as JSON from stdin; prints the pycs.
_COMPILE = """\
import json, py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
done = []
for source, shown in json.load(sys.stdin):
    try:
        done.append(py_compile.compile(source, dfile=shown, doraise=True, invalidation_mode=mode))
    except (py_compile.PyCompileError, SyntaxError, ValueError):
        pass  # a source that does not compile stays as it is (pip does the same)
json.dump(done, sys.stdout)
"""


@dataclass(frozen=True)
class Compiler:
    """A python of the image's X.Y on this machine, to compile the wheels' sources."""

    executable: str
    version: str  # sys.version of it: part of the staged prefix's key


def compiler_for(python: str) -> Compiler | None:
    """This process's interpreter when it is CPython ``python`` (``3.11``), else
    ``pythonX.Y`` on PATH; None when there is neither."""
    if sys.implementation.name == "cpython" and f"{sys.version_info[0]}.{sys.version_info[1]}" == (
        python
    ):
        return Compiler(sys.executable, sys.version)
    found = shutil.which(f"python{python}")
    if found is None:
        return None
    done = subprocess.run(
        [found, "-c", "import sys; print(sys.implementation.name, sys.version)"],
        capture_output=True,
        text=True,
        check=False,
    )
    name, _, version = done.stdout.strip().partition(" ")
    return Compiler(found, version) if done.returncode == 0 and name == "cpython" else None


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class _Unpacked:
    """One wheel in the root: its dist-info folder and what it installed (prefix paths)."""

    wheel: LockedWheel
    dist_info: str
    files: dict[str, tuple[str, int]]  # prefix path -> (RECORD hash, size)
    compiled: list[str]


class _Installer:
    """Unpacks wheels into ``root`` (a staged prefix that will be ``prefix``)."""

    def __init__(self, root: Path, prefix: str, site: str) -> None:
        self.root = root
        self.prefix = prefix.rstrip("/")
        self.site = site
        self.python = site.split("/")[1].removeprefix("python")  # lib/python3.11/site-packages

    def _refuse(self, wheel: LockedWheel, path: str, why: str) -> ImageBuildError:
        return ImageBuildError(f"{wheel.file_name}: {shown(path)} {why}; refusing to stage it")

    def _write(self, wheel: LockedWheel, path: str, data: bytes, executable: bool) -> None:
        why = path_problem(path) or own_problem(path, "file")
        if why:
            raise self._refuse(wheel, path, why)
        destination = self.root / path
        existing = destination.parent
        while not existing.exists() and not existing.is_symlink():
            existing = existing.parent
        expected = self.root.resolve() / existing.relative_to(self.root)
        if existing.resolve() != expected or destination.is_symlink():
            raise self._refuse(wheel, path, "would be written through a symlink")
        if destination.exists():
            if not destination.is_file() or destination.read_bytes() != data:
                raise self._refuse(wheel, path, "is already installed by another package")
            return  # the same bytes (a namespace package's __init__.py): one file, two owners
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
        destination.chmod(0o755 if executable else 0o644)

    def _target(self, wheel: LockedWheel, member: str, data_dir: str) -> str:
        """Where a member of the wheel goes, relative to the prefix."""
        if not member.startswith(data_dir + "/"):
            return f"{self.site}/{member}"
        scheme, _, rest = member[len(data_dir) + 1 :].partition("/")
        if not rest:
            raise self._refuse(wheel, member, "is not in a scheme of the .data folder")
        where = {
            "purelib": self.site,
            "platlib": self.site,
            "scripts": "bin",
            "headers": f"include/python{self.python}/{wheel.name}",
            "data": "",
        }.get(scheme)
        if where is None:
            raise self._refuse(wheel, member, f"is in an unknown scheme {scheme!r}")
        return f"{where}/{rest}" if where else rest

    def unpack(self, wheel: LockedWheel, path: Path) -> _Unpacked:
        """Long because it is the wheel format, member by member, in one place."""
        try:
            archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ImageBuildError(f"{wheel.file_name}: not a wheel: {exc}") from None
        with archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            dist_info = _dist_info_folder(wheel, names)
            data_dir = dist_info.removesuffix(".dist-info") + ".data"
            record = _read_record(archive, f"{dist_info}/RECORD")
            files: dict[str, tuple[str, int]] = {}
            for member in sorted(names):
                if member in (f"{dist_info}/RECORD", f"{dist_info}/RECORD.jws"):
                    continue
                if member == f"{dist_info}/RECORD.p7s":
                    continue
                data = archive.read(member)
                expected = record.get(member)
                if expected and expected != _record_hash(data):
                    raise self._refuse(wheel, member, "does not match the wheel's RECORD")
                target = self._target(wheel, member, data_dir)
                mode = archive.getinfo(member).external_attr >> 16
                executable = bool(mode & 0o111)
                if target.startswith("bin/"):
                    data, executable = self._shebang(data), True
                self._write(wheel, target, data, executable)
                files[target] = (_record_hash(data), len(data))
            entry_points = f"{dist_info}/entry_points.txt"
            if entry_points in names:
                text = archive.read(entry_points).decode("utf-8")
                for script, data in self._launchers(wheel, text):
                    self._write(wheel, script, data, True)
                    files[script] = (_record_hash(data), len(data))
        installer = f"{self.site}/{dist_info}/INSTALLER"
        self._write(wheel, installer, INSTALLER.encode(), False)
        files[installer] = (_record_hash(INSTALLER.encode()), len(INSTALLER))
        return _Unpacked(wheel, f"{self.site}/{dist_info}", files, [])

    def _shebang(self, data: bytes) -> bytes:
        return _SCRIPT_SHEBANG.sub(f"#!{self.prefix}/bin/python".encode(), data, count=1)

    def _launchers(self, wheel: LockedWheel, text: str) -> list[tuple[str, bytes]]:
        parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(text)
        except configparser.Error as exc:
            raise ImageBuildError(f"{wheel.file_name}: entry_points.txt: {exc}") from None
        launchers = []
        for section in ("console_scripts", "gui_scripts"):
            for name, value in parser.items(section) if parser.has_section(section) else ():
                found = _ENTRY_POINT.match(value.strip())
                if "/" in name or found is None or not found["attribute"]:
                    raise self._refuse(wheel, f"bin/{name}", f"is not a script ({value!r})")
                head, *rest = found["attribute"].split(".")
                call = ".".join([head, *rest])
                content = _LAUNCHER.format(
                    python=f"{self.prefix}/bin/python", module=found["module"], head=head, call=call
                )
                launchers.append((f"bin/{name}", content.encode()))
        return launchers

    def write_record(self, unpacked: _Unpacked) -> None:
        """The dist-info's RECORD, for the files where they went (relative to site)."""
        site = self.site
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for path, (digest, size) in sorted(unpacked.files.items()):
            writer.writerow((posixpath.relpath(path, site), digest, size))
        for path in sorted(unpacked.compiled):
            writer.writerow((posixpath.relpath(path, site), "", ""))
        writer.writerow((posixpath.relpath(f"{unpacked.dist_info}/RECORD", site), "", ""))
        (self.root / unpacked.dist_info / "RECORD").write_text(buffer.getvalue(), encoding="utf-8")


def _dist_info_folder(wheel: LockedWheel, names: Sequence[str]) -> str:
    folders = {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/WHEEL")}
    mine = [
        f
        for f in folders
        if f.endswith(".dist-info")
        and normalize(f.removesuffix(".dist-info").rsplit("-", 1)[0]) == wheel.name
    ]
    if len(mine) != 1:
        raise ImageBuildError(f"{wheel.file_name}: no single {wheel.name} .dist-info folder")
    return mine[0]


def _read_record(archive: zipfile.ZipFile, name: str) -> dict[str, str]:
    try:
        text = archive.read(name).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return {}
    return {row[0]: row[1] for row in csv.reader(io.StringIO(text)) if len(row) >= 2 and row[1]}


def _compile(root: Path, prefix: str, unpacked: Sequence[_Unpacked], compiler: Compiler) -> None:
    """Compile every wheel's ``.py`` under site-packages, each pyc named in its RECORD."""
    sources = [
        (path, item)
        for item in unpacked
        for path in sorted(item.files)
        if path.endswith(".py") and "/site-packages/" in path
    ]
    if not sources:
        return
    pairs = [(str(root / path), f"{prefix.rstrip('/')}/{path}") for path, _ in sources]
    done = subprocess.run(
        [compiler.executable, "-s", "-c", _COMPILE],
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "")},
        check=False,
    )
    if done.returncode != 0:
        raise ImageBuildError(
            f"compiling the wheels' python files with {compiler.executable} failed: "
            f"{done.stderr.strip()[-400:]}"
        )
    written = {Path(p).resolve() for p in json.loads(done.stdout)}
    for path, item in sources:
        source = root / path
        pyc = source.parent / "__pycache__" / f"{source.stem}.{_cache_tag(path)}.pyc"
        if pyc.resolve() in written:
            pyc.chmod(0o644)
            item.compiled.append(pyc.relative_to(root).as_posix())


def _cache_tag(path: str) -> str:
    """``cpython-311`` for a file under ``lib/python3.11/``."""
    major, minor = path.split("/")[1].removeprefix("python").split(".")[:2]
    return f"cpython-{major}{minor}"


def install_wheels(
    wheels: Iterable[tuple[LockedWheel, Path]],
    root: Path,
    *,
    prefix: str,
    site: str,
    compiler: Compiler | None,
) -> None:
    """Unpack ``wheels`` (each with its sha256-checked file) into the staged ``root`` of an
    image whose prefix is ``prefix``; compile them with ``compiler``; write their RECORDs
    and ``etc/envbuild/wheels.json``."""
    installer = _Installer(root, prefix, site)
    unpacked = [installer.unpack(wheel, path) for wheel, path in wheels]
    if compiler is not None:
        _compile(root, prefix, unpacked, compiler)
    record = {}
    for item in unpacked:
        installer.write_record(item)
        record[item.wheel.name] = {
            "version": item.wheel.version,
            "sha256": item.wheel.sha256,
            "dist-info": item.dist_info,
        }
    (root / WHEELS_RECORD).parent.mkdir(parents=True, exist_ok=True)
    (root / WHEELS_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def wheel_paths(root: Path, wheels: Iterable[LockedWheel]) -> list[str]:
    """Paths (relative to the prefix) of ``wheels`` as staged: every file their RECORDs name
    (the pycs and RECORD itself included)."""
    recorded = json.loads((root / WHEELS_RECORD).read_text(encoding="utf-8"))
    paths: list[str] = []
    for wheel in wheels:
        dist_info = recorded[wheel.name]["dist-info"]
        site = posixpath.dirname(dist_info)
        text = (root / dist_info / "RECORD").read_text(encoding="utf-8")
        for row in csv.reader(io.StringIO(text)):
            if row:
                paths.append(posixpath.normpath(posixpath.join(site, row[0])))
    return paths
