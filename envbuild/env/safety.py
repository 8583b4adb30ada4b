"""What a package may install: a pure check of what its archive holds and what it says.

rattler links what a package's ``info/paths.json`` (``info/files`` in old archives) names,
rewrites the files ``has_prefix`` names, writes the entry points ``info/link.json`` names
and maps a noarch python package's ``site-packages/`` and ``python-scripts/``; it checks none
of those paths. envbuild runs as root in CI, so every path is checked here first (issue 16):

* relative and normalized: not absolute, no ``.``, ``..`` or empty component (``a//b``, a
  trailing ``/``), no NUL or other control character, each name at most 255 bytes (NAME_MAX),
  the whole at most 4095 (PATH_MAX); listed once;
* not envbuild's or conda's own: nothing under ``conda-meta/`` or ``etc/envbuild/``, and
  ``etc`` and ``conda-meta`` only ever folders;
* symlinks resolve inside the prefix (and inside the package, in the package cache's
  extraction), following the package's other symlinks, and no path of the package goes
  through one of them;
* the tar members match: no member outside what paths.json lists (``info/`` aside), each of
  the kind paths.json says, every name as above, no member twice, no device node or FIFO,
  no setuid or setgid bit, hard links only to an earlier file of the same archive;
* entry points name one file in ``bin/``.

``check_package`` judges one package from its ``Contents`` and returns what the prefix-wide
check needs (``Installs``); ``check_together`` judges the packages of one prefix together:
a symlink of one package that another writes through, or that resolves out through another's
symlink. Both raise ``Unsafe`` naming the path; the caller names the package.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

NAME_MAX = 255
PATH_MAX = 4096
#: Folders of envbuild and conda that no package may write into.
OWN_FOLDERS = ("conda-meta", "etc/envbuild")
#: Paths that must stay folders (envbuild writes etc/envbuild/ and conda-meta/ below them).
MUST_BE_FOLDERS = ("etc", "conda-meta", "etc/envbuild")
#: The info files the check reads.
INFO_FILES = ("info/paths.json", "info/files", "info/has_prefix", "info/link.json")
Kind = Literal["file", "dir", "symlink", "hardlink", "special"]
_PATH_TYPES = {"hardlink": ("file", "hardlink"), "softlink": ("symlink",), "directory": ("dir",)}
_MAX_HOPS = 40  # as Linux's ELOOP
#: Unicode's control characters (Cc) and lone surrogates (a name that is not UTF-8).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Unsafe(Exception):
    """``path`` makes the package unsafe, for the reason ``why``; ``package``: which of the
    packages ``check_together`` judged (None from ``check_package``)."""

    def __init__(self, path: str, why: str, package: str | None = None) -> None:
        super().__init__(f"{shown(path)} {why}")
        self.path, self.why, self.package = path, why, package


@dataclass(frozen=True)
class Member:
    """One tar member as the archive states it."""

    name: str
    kind: Kind
    mode: int = 0o644
    size: int = 0
    linkname: str = ""
    section: int = 0  # which tar of the archive (.conda archives have two)


@dataclass(frozen=True)
class Contents:
    """What the check reads of an archive: every member, the last copy of each of
    ``INFO_FILES`` (as an extraction leaves it), and whether the package is noarch python."""

    members: Sequence[Member]
    info: Mapping[str, bytes]
    noarch_python: bool = False


@dataclass(frozen=True)
class Installs:
    """What a checked package puts into a prefix, for ``check_together``; paths as in the
    archive (``site-packages/...`` for noarch python) unless ``installed`` says they are the
    prefix's already (a package an existing environment keeps)."""

    symlinks: Mapping[str, str] = field(default_factory=dict)
    folders: Sequence[str] = ()
    noarch_python: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "symlinks": dict(self.symlinks),
            "folders": list(self.folders),
            "noarch_python": self.noarch_python,
        }

    @classmethod
    def from_json(cls, data: Any) -> Installs | None:
        """None for anything but what ``to_json`` wrote (a damaged index)."""
        try:
            symlinks, folders = data["symlinks"], data["folders"]
            if all(isinstance(x, str) for x in [*symlinks, *symlinks.values(), *folders]):
                return cls(dict(symlinks), tuple(folders), bool(data["noarch_python"]))
        except (TypeError, KeyError, AttributeError):
            pass
        return None


def shown(path: str) -> str:
    """``path`` for a one-line message: as it is when printable, else quoted and escaped."""
    return path if path.isprintable() and path.strip() == path else json.dumps(path)


def path_problem(path: object) -> str | None:
    """Why ``path`` cannot be a path in a package, None when it can."""
    if not isinstance(path, str):
        return "is not a string"
    if not path:
        return "is empty"
    if _CONTROL.search(path):
        return "has a NUL, newline or other control character (or is not UTF-8)"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "climbs out with '..'"
    if "." in parts or "" in parts:
        return "is not normalized ('.', '//' or a trailing '/')"
    if any(len(p.encode()) > NAME_MAX for p in parts):
        return f"has a name longer than {NAME_MAX} bytes"
    if len(path.encode()) >= PATH_MAX:
        return f"is longer than {PATH_MAX - 1} bytes"
    return None


def own_problem(path: str, kind: str) -> str | None:
    """Why a package may not install ``path`` (a prefix path) as ``kind``."""
    for own in OWN_FOLDERS:
        if path == own or path.startswith(own + "/"):
            return (
                f"is in {own}/, which belongs to {'conda' if own == 'conda-meta' else 'envbuild'}"
            )
    if path in MUST_BE_FOLDERS and kind != "dir":
        return "would replace a folder envbuild writes into"
    return None


def installed_path(path: str, noarch_python: bool, python_site: str) -> str:
    """Where a package path lands in the prefix (noarch python packages are mapped)."""
    if noarch_python:
        for folder, mapped in (("site-packages", python_site), ("python-scripts", "bin")):
            if path == folder or path.startswith(folder + "/"):
                return mapped + path[len(folder) :]
    return path


def target_problem(target: str) -> str | None:
    """Why a symlink may not point to ``target`` whatever lies there, None when it may."""
    if not target:
        return "is a symlink to nothing"
    if _CONTROL.search(target):
        return f"is a symlink to {shown(target)}, which has a control character"
    if target.startswith("/"):
        return f"is a symlink to the absolute path {shown(target)}"
    return None


def resolve(path: str, symlinks: Callable[[str], str | None]) -> str | None:
    """Where ``path`` (relative to a root) leads once every symlink on the way is followed
    (``symlinks(p)`` is the target of the symlink at ``p``, None when ``p`` is none); None
    when it leaves the root, is absolute or loops."""
    done: list[str] = []
    todo = path.split("/")[::-1]
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        here = "/".join([*done, part])
        target = symlinks(here)
        if target is None:
            done.append(part)
            continue
        hops += 1
        if hops > _MAX_HOPS or target_problem(target):
            return None
        todo.extend(target.split("/")[::-1])
    return "/".join(done)


def _folders_of(paths: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        parts = path.split("/")
        found.update("/".join(parts[:end]) for end in range(1, len(parts)))
    return found


def _malformed(name: str, detail: str) -> Unsafe:
    return Unsafe(name, f"is malformed: {detail}")


def _paths_json(raw: bytes) -> list[tuple[str, Kind, dict[str, Any]]]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _malformed("info/paths.json", str(exc).splitlines()[0]) from None
    entries = document.get("paths") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise _malformed("info/paths.json", "'paths' is not a list")
    found: list[tuple[str, Kind, dict[str, Any]]] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("_path"), str):
            raise _malformed(
                "info/paths.json", f"an entry without a '_path' string: {entry!r}"[:200]
            )
        path_type = entry.get("path_type", "hardlink")
        if path_type not in _PATH_TYPES:
            raise Unsafe(entry["_path"], f"has an unknown path_type {path_type!r}"[:200])
        placeholder = entry.get("prefix_placeholder")
        if placeholder is not None and (not isinstance(placeholder, str) or not placeholder):
            raise Unsafe(entry["_path"], "has an empty or malformed prefix_placeholder")
        if entry.get("file_mode", "text") not in ("text", "binary"):
            raise Unsafe(entry["_path"], "has an unknown file_mode")
        kind: Kind = (
            "dir"
            if path_type == "directory"
            else ("symlink" if path_type == "softlink" else "file")
        )
        found.append((entry["_path"], kind, entry))
    return found


def _lines(raw: bytes, name: str) -> list[str]:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise _malformed(name, "not UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _has_prefix_path(line: str) -> str:
    """The path of an ``info/has_prefix`` line: ``PLACEHOLDER MODE PATH`` or ``PATH``, each
    maybe quoted (as conda reads it)."""
    try:
        fields = [f.strip("\"'") for f in shlex.split(line, posix=False)]
    except ValueError as exc:
        raise _malformed("info/has_prefix", str(exc)) from None
    if len(fields) not in (1, 3):
        raise _malformed("info/has_prefix", f"a line of {len(fields)} fields")
    return fields[-1]


def _listed(contents: Contents) -> dict[str, Kind]:
    """The paths the package installs and the kind each should be in the archive."""
    listed: dict[str, Kind] = {}
    members = {m.name: m for m in contents.members}
    if "info/paths.json" in contents.info:
        for path, kind, _ in _paths_json(contents.info["info/paths.json"]):
            if why := path_problem(path):
                raise Unsafe(path, why)
            if path in listed:
                raise Unsafe(path, "is listed twice in info/paths.json")
            listed[path] = kind
    if "info/files" in contents.info:
        old = "info/paths.json" not in contents.info
        for path in _lines(contents.info["info/files"], "info/files"):
            if why := path_problem(path):
                raise Unsafe(path, why)
            if old:
                if path in listed:
                    raise Unsafe(path, "is listed twice in info/files")
                member = members.get(path)
                listed[path] = "symlink" if member and member.kind == "symlink" else "file"
    elif "info/paths.json" not in contents.info:
        raise Unsafe("info/paths.json", "is missing, and so is info/files")
    if "info/has_prefix" in contents.info:
        for line in _lines(contents.info["info/has_prefix"], "info/has_prefix"):
            path = _has_prefix_path(line)
            if why := path_problem(path):
                raise Unsafe(path, f"(in info/has_prefix) {why}")
            if path not in listed:
                raise Unsafe(path, "is in info/has_prefix but not among the package's files")
    return listed


def _entry_points(contents: Contents) -> list[str]:
    raw = contents.info.get("info/link.json")
    if raw is None:
        return []
    try:
        document = json.loads(raw)
        points = (document.get("noarch") or {}).get("entry_points") or []
    except (ValueError, RecursionError, AttributeError):
        raise _malformed("info/link.json", "not a link.json document") from None
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        raise _malformed("info/link.json", "entry_points is not a list of strings")
    names = []
    for point in points:
        name = point.split("=", 1)[0].strip()
        why = path_problem(name) or ("names a folder" if "/" in name else None)
        if why or "=" not in point:
            raise Unsafe(name, f"(an entry point in info/link.json) {why or 'is malformed'}")
        names.append(f"bin/{name}")
    return names


def _check_members(contents: Contents, listed: Mapping[str, Kind]) -> dict[str, str]:
    """The members' own problems; returns the package's symlinks (path -> target)."""
    seen: dict[str, Member] = {}
    symlinks: dict[str, str] = {}
    for member in contents.members:
        name = member.name
        if why := path_problem(name):
            raise Unsafe(name, f"(a member of the archive) {why}")
        if name in seen and not (member.kind == seen[name].kind == "dir"):
            raise Unsafe(name, "is in the archive twice")
        if member.kind == "special":
            raise Unsafe(name, "is a device node or FIFO")
        if member.mode & 0o6000:
            raise Unsafe(name, f"is setuid or setgid (mode {oct(member.mode)})")
        if member.kind == "hardlink":
            source = seen.get(member.linkname)
            if source is None or source.kind != "file" or source.section != member.section:
                raise Unsafe(
                    name,
                    f"is a hard link to {shown(member.linkname)}, not to a file "
                    "before it in the archive",
                )
        if member.kind == "symlink":
            symlinks[name] = member.linkname
        seen[name] = member
        if name.startswith("info/"):
            continue
        expected = listed.get(name)
        if expected is None and member.kind != "dir":
            raise Unsafe(name, "is in the archive but not in info/paths.json (or info/files)")
        if expected is not None and member.kind not in _PATH_TYPES_BY_KIND[expected]:
            raise Unsafe(
                name, f"is a {member.kind} in the archive, info/paths.json says {expected}"
            )
    for path, kind in listed.items():
        if kind != "dir" and path not in seen:
            raise Unsafe(path, "is listed in info/paths.json but not in the archive")
    return symlinks


_PATH_TYPES_BY_KIND: dict[str, tuple[str, ...]] = {
    "file": ("file", "hardlink"),
    "symlink": ("symlink",),
    "dir": ("dir",),
}


def _check_links(paths: Iterable[str], symlinks: Mapping[str, str], where: str) -> None:
    """Each symlink resolves inside the root, and no path goes through a symlink."""
    for link, target in symlinks.items():
        if why := target_problem(target):
            raise Unsafe(link, why)
        if resolve(link, symlinks.get) is None:
            raise Unsafe(link, f"is a symlink to {shown(target)}, which leads out of {where}")
    for path in paths:
        parts = path.split("/")
        for end in range(1, len(parts)):
            folder = "/".join(parts[:end])
            if folder in symlinks:
                raise Unsafe(path, f"would be written through the symlink {shown(folder)}")


def check_package(contents: Contents, python_site: str) -> Installs:
    """Judge one package; raise ``Unsafe`` naming the first path that makes it unsafe."""
    for member in contents.members:  # rattler reads (and writes) info/ files in the cache
        info = member.name.count("/") == 1 and member.name.startswith("info/")
        if info and member.kind not in ("file", "dir"):
            raise Unsafe(member.name, f"is a {member.kind}; the info files must be files")
    listed = _listed(contents)
    entry_points = _entry_points(contents)
    symlinks = _check_members(contents, listed)
    names = [m.name for m in contents.members]
    _check_links(names, symlinks, "the package")  # the package cache's extraction
    noarch = contents.noarch_python
    prefix_paths = {installed_path(p, noarch, python_site): k for p, k in listed.items()}
    for path in entry_points:
        prefix_paths.setdefault(path, "file")
    for path, kind in prefix_paths.items():
        if why := own_problem(path, kind):
            raise Unsafe(path, why)
    links = {installed_path(p, noarch, python_site): t for p, t in symlinks.items() if p in listed}
    _check_links(prefix_paths, links, "the prefix")
    folders = _folders_of(listed) | {p for p, k in listed.items() if k == "dir"}
    return Installs(
        {p: t for p, t in symlinks.items() if p in listed},
        tuple(sorted(folders | _folders_of(entry_points))),
        noarch,
    )


def check_together(packages: Mapping[str, Installs], python_site: str) -> None:
    """Judge the packages of one prefix together (``packages``: by a name for each); raise
    ``Unsafe`` whose ``package`` is the name of the package at fault.

    A package's own symlinks were judged with it; here every symlink is followed through the
    others' too, and a folder one package writes into may go through another's symlink (as
    compiler sysroots do) only to a place inside the prefix that is not envbuild's or conda's.
    """
    links: dict[str, tuple[str, str]] = {}  # prefix path -> (target, package)
    for name, installs in packages.items():
        for path, target in installs.symlinks.items():
            links[installed_path(path, installs.noarch_python, python_site)] = (target, name)
    targets = {path: target for path, (target, _) in links.items()}
    for path, (target, owner) in links.items():
        if resolve(path, targets.get) is None:
            why = f"is a symlink to {shown(target)}, which leads out through another's symlink"
            raise Unsafe(path, why, owner)
    for name, installs in packages.items():
        for folder in installs.folders:
            mapped = installed_path(folder, installs.noarch_python, python_site)
            if not any(f in links for f in _ancestors(mapped)):
                continue
            owner = links[next(f for f in _ancestors(mapped) if f in links)][1]
            landed = resolve(mapped, targets.get)
            if landed is None:
                why = f"leads out of the prefix through a symlink of {owner}"
                raise Unsafe(mapped, why, name)
            if own_problem(f"{landed}/x", "file"):
                why = f"leads into {shown(landed)} through a symlink of {owner}"
                raise Unsafe(mapped, why, name)


def _ancestors(path: str) -> Iterator[str]:
    """``path`` and the folders above it, shortest first."""
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        yield "/".join(parts[:end])
