"""Staging role images: the layer tars, and a build context any builder takes (docker build,
buildah, kaniko).

1. Install the variant's locked packages for the image's platform on this machine, with
   rattler, into a staging folder whose files say the image's prefix (``/opt/env``): the
   existing environment code, so local archives are sha256-checked against the lock first,
   and nothing is fetched during the image build. Installing runs nothing from a package, so
   an arm64 image is staged on an x86 machine as fast as an amd64 one: no emulation.
   Then the lock's PyPI wheels for that platform, each fetched and sha256-checked, are
   unpacked into it for the same prefix and compiled (``envbuild.image.wheels``: nothing of
   the image runs either).
2. Make the staged prefix the same on every machine: conda-meta records lose the paths of
   this machine's package cache, files that belong to no package (rattler's
   ``conda-meta/history`` holds timestamps) are left out, and the stamp is written.
3. Write the layers as tars, each file in exactly one: the packages and wheels every variant
   shares, this variant's own (with the stamp and the record of wheels), and the role's
   files. Members are sorted, with mtime
   0, root-owned (the user's home excepted) and modes 0644/0755, so identical content gives
   identical bytes, and identical layer digests on any engine.
4. For ``--context``, put the Dockerfile beside them. (Everything else takes the tars as
   they are: ``envbuild.image.assemble``.)

The staged prefix and the layers are cached under the package cache's folder by the plan's
content, so building the other roles of a variant, or the same image again, stages nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from envbuild.env.archives import check_archives, python_site, removed_on_failure
from envbuild.env.pypi import WHEELS_RECORD
from envbuild.env.safety import path_problem, shown
from envbuild.env.stamp import STAMP, make_stamp
from envbuild.errors import ImageBuildError, OutputError
from envbuild.files import exclusive
from envbuild.files.atomic import write_atomic
from envbuild.files.digest import sha256_hex
from envbuild.image.plan import ENVBUILD_DIR, ROLE_FILE, ImagePlan
from envbuild.image.sbom import FILE_NAME as SBOM_FILE
from envbuild.image.wheels import compiler_for, install_wheels, wheel_paths
from envbuild.lock.lockfile import Lock, LockedPackage, LockedTarget
from envbuild.lock.wheels import fingerprint

LAYERS = ("shared", "variant", "role")
#: Record fields that name this machine (its package cache), not the package.
_HOST_FIELDS = ("extracted_package_dir", "link", "package_tarball_full_path")
_NOT_PACKAGED = ("conda-meta/history", "CACHEDIR.TAG")


@dataclass(frozen=True)
class Layer:
    """A written layer tar."""

    name: str
    path: Path
    size: int
    sha256: str
    files: int


def stage_variant(lock: Lock, plan: ImagePlan, work: Path, cache_dir: Path) -> Path:
    """The variant's locked packages installed into ``work`` for the image's prefix, made the
    same on every machine; reused when ``work`` holds it already."""
    target = lock.role_target(plan.role, plan.platform)
    compiled_by = _compiled_by(target)
    key = hashlib.sha256(
        "\n".join(
            [
                plan.settings.prefix,
                *sorted(p.sha256 for p in target.packages),
                *sorted(w.sha256 for w in target.wheels),
                *([compiled_by] if target.wheels else []),
            ]
        ).encode()
    ).hexdigest()[:16]
    staged = work / f"stage-{plan.variant}-{plan.platform}-{key}"
    if (staged / ".complete").is_file():
        return staged
    from envbuild.lock import conda

    with exclusive.hold(cache_dir, "another envbuild using the package cache", _waiting, make=True):
        site = python_site(target.packages)  # checked before anything is staged
        copies = check_archives(target.packages, cache_dir, site=site, download=conda.download)
        shutil.rmtree(staged, ignore_errors=True)
        root = staged / "root"
        try:
            with removed_on_failure(target.packages, cache_dir):
                conda.install(
                    target.packages,
                    root,
                    cache_dir=cache_dir,
                    platform=plan.platform,
                    show_progress=False,
                    installed_as=plan.settings.prefix,
                    sources=copies,
                )
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        finally:
            for copy in copies.values():
                copy.unlink(missing_ok=True)
    for name in _NOT_PACKAGED:
        (root / name).unlink(missing_ok=True)
    for record in (root / "conda-meta").glob("*.json"):
        document = json.loads(record.read_text(encoding="utf-8"))
        for field in _HOST_FIELDS:
            document.pop(field, None)
        record.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    if target.wheels:
        try:
            _stage_wheels(target, root, plan.settings.prefix)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    (staged / ".complete").write_text(plan.variant + "\n")
    return staged


def _compiled_by(target: LockedTarget) -> str:
    """Which python compiles the target's wheels here (``none``): part of the staged
    prefix's and the layers' keys, since the pycs are its output."""
    if not target.wheels:
        return "none"
    python = python_site(target.packages).split("/")[1].removeprefix("python")
    compiler = compiler_for(python)
    return f"python {compiler.version}" if compiler else "none"


def _stage_wheels(target: LockedTarget, root: Path, prefix: str) -> None:
    """The target's wheels, fetched and sha256-checked, unpacked into ``root``."""
    from envbuild.lock.pypifetch import fetch_wheel

    site = python_site(target.packages)
    python = site.split("/")[1].removeprefix("python")
    compiler = compiler_for(python)
    if compiler is None:
        _waiting(
            f"no python{python} on this machine compiles the PyPI wheels: the image "
            "imports them from their sources (slower to start)"
        )
    files = [(wheel, fetch_wheel(wheel)) for wheel in target.wheels]
    install_wheels(files, root, prefix=prefix, site=site, compiler=compiler)


def owned_paths(root: Path, packages: Iterable[LockedPackage]) -> list[str]:
    """Paths (relative to the prefix) of ``packages``: their files and their records."""
    paths: list[str] = []
    records = {p.name: p for p in packages}
    for record in sorted((root / "conda-meta").glob("*.json")):
        document = json.loads(record.read_text(encoding="utf-8"))
        if document.get("name") not in records:
            continue
        paths.append(f"conda-meta/{record.name}")
        paths += [entry["_path"] for entry in document.get("paths_data", {}).get("paths", [])]
    return paths


def _directories(paths: Iterable[str]) -> set[str]:
    folders: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for end in range(1, len(parts) + 1):
            folders.add("/".join(parts[:end]))
    return folders


def _member(name: str, kind: bytes, mode: int, owner: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = owner
    info.uname = info.gname = ""
    return info


def write_layer(
    path: Path,
    name: str,
    files: Mapping[str, Path | bytes],
    *,
    owned_folders: Mapping[str, int] | None = None,
) -> Layer:
    """A reproducible layer tar: ``files`` (path in the image -> staged file or bytes) and
    every folder above them; ``owned_folders``: folders with another owner (the home).

    ``path`` names its content: when it exists (with its digest beside it), it is reused."""
    sidecar = path.with_name(path.name + ".sha256")
    if path.is_file() and sidecar.is_file():
        return Layer(name, path, path.stat().st_size, sidecar.read_text().strip(), len(files))
    tmp = path.with_name(f".{path.name}.tmp")
    _write_tar(tmp, files, owned_folders or {})
    digest = "sha256:" + sha256_hex(tmp)
    tmp.replace(path)
    sidecar.write_text(digest + "\n")
    return Layer(name, path, path.stat().st_size, digest, len(files))


def _write_tar(
    path: Path, files: Mapping[str, Path | bytes], owned_folders: Mapping[str, int]
) -> None:
    owners = dict(owned_folders)
    entries: dict[str, tarfile.TarInfo] = {}
    # Every folder above a member is a member too (mtime 0): a folder left out would keep
    # the time of the build that created something inside it.
    for folder in sorted(_directories([*files, *owners]) | set(owners)):
        entries[folder] = _member(folder, tarfile.DIRTYPE, 0o755, owners.get(folder, 0))
    with (
        path.open("wb") as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in sorted({*entries, *files}):
            if member in entries:
                tar.addfile(entries[member])
                continue
            source = files[member]
            if isinstance(source, bytes):
                mode = 0o755 if source.startswith(b"#!") else 0o644
                info = _member(member, tarfile.REGTYPE, mode)
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
                continue
            status = source.lstat()
            if stat.S_ISLNK(status.st_mode):
                info = _member(member, tarfile.SYMTYPE, 0o777)
                info.linkname = str(source.readlink())
                tar.addfile(info)
            elif stat.S_ISREG(status.st_mode):
                mode = 0o755 if status.st_mode & 0o111 else 0o644
                info = _member(member, tarfile.REGTYPE, mode)
                info.size = status.st_size
                with source.open("rb") as content:
                    tar.addfile(info, content)
            elif stat.S_ISDIR(status.st_mode):
                tar.addfile(_member(member, tarfile.DIRTYPE, 0o755))


def _waiting(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def check_members(layer: str, files: Mapping[str, Path | bytes], prefix: str | None) -> None:
    """Every member of a layer is a normalized relative path (under ``prefix`` when given),
    and every staged file is a file, folder or symlink: what a package installs was checked
    before staging (envbuild.env.safety), and this keeps any slip out of an image."""
    inside = prefix.strip("/") + "/" if prefix else ""
    for member, source in files.items():
        why = path_problem(member) or (
            None if member.startswith(inside) else f"is not in /{inside}"
        )
        if why is None and isinstance(source, Path):
            mode = source.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                why = "is not a file, folder or symlink"
            elif mode & (stat.S_ISUID | stat.S_ISGID):
                why = "is setuid or setgid"
        if why:
            raise ImageBuildError(f"the {layer} layer would hold {shown(member)}, which {why}")


def _in_image(prefix: str, path: str) -> str:
    return f"{prefix.strip('/')}/{path}"


def _key(*parts: Iterable[str] | str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            digest.update(part)
        elif isinstance(part, str):
            digest.update(part.encode())
        else:
            digest.update("\n".join(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def write_layers(
    lock: Lock,
    plan: ImagePlan,
    *,
    work: Path,
    cache_dir: Path,
    runtime: Mapping[str, bytes],
    parts: Sequence[str] = LAYERS,
) -> dict[str, Layer]:
    """Write ``plan``'s layer tars named in ``parts`` into ``work``, each named by its
    content: a layer already written (another role of the variant, the same image again) is
    not written again. Every member is checked to lie under the image's prefix (the role's
    own files aside) before a layer is written.

    Two envbuilds staging into one ``work`` folder take turns (``image --all`` twice at once
    would otherwise stage one variant into the same folder)."""
    with exclusive.hold(work, "another envbuild staging images in this cache", _waiting):
        return _write_layers(lock, plan, work, cache_dir, runtime, parts)


def _write_layers(
    lock: Lock,
    plan: ImagePlan,
    work: Path,
    cache_dir: Path,
    runtime: Mapping[str, bytes],
    parts: Sequence[str],
) -> dict[str, Layer]:
    layers: dict[str, tuple[Path, dict[str, Path | bytes], dict[str, int] | None]] = {}
    prefix = plan.settings.prefix
    if {"shared", "variant"} & set(parts):
        root = stage_variant(lock, plan, work, cache_dir) / "root"
        layers.update(_environment_layers(lock, plan, work, root))
    envbuild_dir = ENVBUILD_DIR.lstrip("/")
    role_files: dict[str, Path | bytes] = {
        ROLE_FILE.lstrip("/"): plan.role_file.encode(),
        f"{envbuild_dir}/entrypoint.sh": plan.entrypoint.encode(),
        f"{envbuild_dir}/{SBOM_FILE}": plan.sbom.encode(),
        **{f"{envbuild_dir}/{name}": content for name, content in runtime.items()},
    }
    layers["role"] = (
        work / f"role-{plan.role}-{plan.platform}-{plan.digest.removeprefix('sha256:')[:16]}.tar",
        role_files,
        {f"home/{plan.settings.user}": plan.settings.uid},
    )
    try:
        written = {}
        for name, (path, files, owners) in layers.items():
            if name in parts:
                check_members(name, files, prefix if name != "role" else None)
                written[name] = write_layer(path, name, files, owned_folders=owners)
        return written
    except OSError as exc:
        raise OutputError(f"{work}: cannot write the image's layers: {exc}") from None


def _environment_layers(
    lock: Lock, plan: ImagePlan, work: Path, root: Path
) -> dict[str, tuple[Path, dict[str, Path | bytes], dict[str, int] | None]]:
    """The shared and variant layers' files, from the staged ``root``, and their tar paths
    (named by their content)."""
    prefix = plan.settings.prefix
    split = plan.split
    target = lock.role_target(plan.role, plan.platform)
    shared_paths = owned_paths(root, split.shared)
    shared_paths += wheel_paths(root, split.shared_wheels) if split.shared_wheels else []
    taken = set(shared_paths)
    own_paths = [p for p in owned_paths(root, split.variant) if p not in taken]
    if split.variant_wheels:
        taken.update(own_paths)
        own_paths += [
            p for p in dict.fromkeys(wheel_paths(root, split.variant_wheels)) if p not in taken
        ]
    stamp = (json.dumps(make_stamp(lock, target), indent=2) + "\n").encode()
    shared: dict[str, Path | bytes] = {_in_image(prefix, p): root / p for p in shared_paths}
    own: dict[str, Path | bytes] = {_in_image(prefix, p): root / p for p in own_paths}
    own[_in_image(prefix, str(STAMP))] = stamp
    if target.wheels:
        own[_in_image(prefix, str(WHEELS_RECORD))] = root / WHEELS_RECORD
    compiled_by = _compiled_by(target)
    shared_ids = [" ".join((p.name, p.version, p.build, p.sha256)) for p in split.shared]
    own_ids = [" ".join((p.name, p.version, p.build, p.sha256)) for p in split.variant]
    for ids, wheels in ((shared_ids, split.shared_wheels), (own_ids, split.variant_wheels)):
        ids += [f"pypi {w.name} {w.version} {w.sha256} {compiled_by}" for w in wheels]
    own_ids += [f"wheels {fingerprint(target.wheels)}"] if target.wheels else []
    shared_key, own_key = _key(prefix, shared_ids), _key(prefix, own_ids, stamp)
    return {
        "shared": (work / f"shared-{plan.platform}-{shared_key}.tar", shared, None),
        "variant": (work / f"variant-{plan.platform}-{own_key}.tar", own, None),
    }


def write_context(
    lock: Lock,
    plan: ImagePlan,
    context: Path,
    *,
    work: Path,
    cache_dir: Path,
    runtime: Mapping[str, bytes],
) -> dict[str, Layer]:
    """Write ``plan``'s build context into ``context``: its Dockerfile and layer tars (linked
    to the layers in ``work``, not copied)."""
    layers = write_layers(lock, plan, work=work, cache_dir=cache_dir, runtime=runtime)
    written: dict[str, Layer] = {}
    try:
        context.mkdir(parents=True, exist_ok=True)
        for name, layer in layers.items():
            _link(layer.path, context / f"{name}.tar")
            written[name] = Layer(
                name, context / f"{name}.tar", layer.size, layer.sha256, layer.files
            )
        write_atomic(context / "Dockerfile", plan.dockerfile)
    except OSError as exc:
        raise OutputError(f"{context}: cannot write the build context: {exc}") from None
    return written


def _link(source: Path, destination: Path) -> None:
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def scratch(cache_dir: Path) -> Path:
    """Where staged prefixes and layers are kept: beside the package cache."""
    folder = cache_dir.parent / "images"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageBuildError(f"{folder}: cannot stage images there: {exc.strerror}") from None
    return folder
