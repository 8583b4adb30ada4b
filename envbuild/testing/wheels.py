"""Real PyPI wheels for the runnable test channel: pinned, fetched once, read as payloads.

``wheels.tsv`` (committed) pins every wheel by requirement, file name and sha256, for linux-64,
linux-aarch64 and osx-arm64 (``any`` for pure-Python wheels). ``fetch`` makes every pinned file
present and sha256-checked in a cache folder: what is there and intact is used offline; what
is missing or damaged is downloaded with pip (``--require-hashes``), into a temporary folder
first, so a failed download never leaves a half-written file behind.
"""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envbuild.files.digest import sha256_hex
from envbuild.testing.channel import File

WHEEL_LIST = Path(__file__).with_name("wheels.tsv")
#: pip's platform tags per conda subdir (pure wheels are fetched with the linux ones).
PLATFORM_TAGS = {
    "linux-64": (
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux_2_12_x86_64",
        "manylinux2010_x86_64",
        "manylinux_2_5_x86_64",
        "manylinux1_x86_64",
    ),
    "linux-aarch64": (
        "manylinux_2_28_aarch64",
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
    ),
    "osx-arm64": ("macosx_11_0_arm64", "macosx_10_9_universal2"),
}
#: Python's platform.machine() per conda subdir, for environment markers.
MACHINES = {"linux-64": "x86_64", "linux-aarch64": "aarch64", "osx-arm64": "arm64"}


class WheelError(Exception):
    """A wheel is missing, damaged or cannot be fetched; the message is one line."""


@dataclass(frozen=True)
class PinnedWheel:
    """One line of wheels.tsv."""

    platform: str  # "any", "linux-64", "linux-aarch64" or "osx-arm64"
    requirement: str  # "numpy==2.0.2"
    file_name: str
    sha256: str

    @property
    def name(self) -> str:
        return normalize(self.requirement.split("==")[0])

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_wheels(path: Path = WHEEL_LIST) -> list[PinnedWheel]:
    """The pinned wheels."""
    wheels = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            platform, requirement, file_name, sha256 = line.split("\t")
            wheels.append(PinnedWheel(platform, requirement, file_name, sha256))
    return wheels


def _intact(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and sha256_hex(path) == sha256
    except OSError:
        return False


def fetch(wheels: Sequence[PinnedWheel], cache: Path, *, offline: bool = False) -> dict[str, Path]:
    """file name -> path of every wheel in ``cache``, each checked against its sha256.

    ``offline``: use the cache only; a missing or damaged wheel is then an error.
    """
    missing = [w for w in wheels if not _intact(cache / w.file_name, w.sha256)]
    if missing and offline:
        damaged = [w.file_name for w in missing if (cache / w.file_name).exists()]
        what = f"{damaged[0]} is damaged" if damaged else f"{missing[0].file_name} is missing"
        raise WheelError(
            f"wheel cache {cache}: {what} ({len(missing)} of {len(wheels)} wheels to fetch) "
            "and fetching is off; run once with network access to PyPI"
        )
    if missing:
        _download(missing, cache)
    return {w.file_name: cache / w.file_name for w in wheels}


def _download(wheels: Sequence[PinnedWheel], cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WheelError(f"wheel cache {cache}: cannot create it ({exc.strerror})") from None
    print(f"fetching {len(wheels)} wheels into {cache} with pip", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        for platform in sorted({w.platform for w in wheels}):
            group = [w for w in wheels if w.platform == platform]
            requirements = Path(tmp) / f"requirements-{platform}.txt"
            requirements.write_text(
                "".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in group)
            )
            tags = PLATFORM_TAGS.get(platform, PLATFORM_TAGS["linux-64"])
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            command += ["--only-binary=:all:", "--require-hashes", "--python-version", "3.11"]
            command += ["--implementation", "cp", "--abi", "cp311", "--abi", "abi3"]
            command += ["--abi", "none", *(f"--platform={t}" for t in tags)]
            command += ["--dest", tmp, "-r", str(requirements)]
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise WheelError(f"pip could not fetch the {platform} wheels: {last}")
        for wheel in wheels:
            got = Path(tmp) / wheel.file_name
            if not _intact(got, wheel.sha256):
                raise WheelError(f"pip did not deliver {wheel.file_name} with its pinned sha256")
            got.replace(cache / wheel.file_name)


# --- reading a wheel -----------------------------------------------------------------------------


@dataclass
class WheelContent:
    """What a wheel installs, as a conda package needs it."""

    name: str
    version: str
    requires_python: str | None
    requires: list[str]
    entry_points: list[str]
    #: path relative to site-packages -> file
    site_packages: dict[str, File] = field(default_factory=dict)
    #: scripts for bin/ (from NAME.data/scripts)
    scripts: dict[str, File] = field(default_factory=dict)


def read_wheel(path: Path) -> WheelContent:
    """The files and metadata of a wheel (``.data/purelib`` and ``platlib`` join
    site-packages; ``scripts`` go to bin; headers and data are left out)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise WheelError(f"{path}: not a readable wheel ({exc})") from None
    with archive:
        names = archive.namelist()
        info_dir = next((n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")), None)
        if info_dir is None:
            raise WheelError(f"{path}: a wheel without .dist-info/METADATA")
        metadata = email.parser.Parser().parsestr(archive.read(f"{info_dir}/METADATA").decode())
        content = WheelContent(
            name=normalize(metadata["Name"]),
            version=metadata["Version"],
            requires_python=metadata.get("Requires-Python"),
            requires=metadata.get_all("Requires-Dist") or [],
            entry_points=_console_scripts(archive, f"{info_dir}/entry_points.txt"),
        )
        data_dir = info_dir.replace(".dist-info", ".data")
        for entry in archive.infolist():
            if entry.is_dir():
                continue
            executable = bool((entry.external_attr >> 16) & 0o111)
            item = File(archive.read(entry), executable)
            parts = entry.filename.split("/")
            if parts[0] == data_dir:
                if parts[1] in ("purelib", "platlib"):
                    content.site_packages["/".join(parts[2:])] = item
                elif parts[1] == "scripts":
                    content.scripts["/".join(parts[2:])] = File(item.data, True)
                continue
            if entry.filename == f"{info_dir}/RECORD":
                continue  # lists hashes of the layout pip would write, not conda's
            content.site_packages[entry.filename] = item
    return content


def _console_scripts(archive: zipfile.ZipFile, name: str) -> list[str]:
    try:
        text = archive.read(name).decode()
    except KeyError:
        return []
    scripts, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "console_scripts" and "=" in line:
            command, target = (part.strip() for part in line.split("=", 1))
            scripts.append(f"{command} = {target}")
    return sorted(scripts)


def conda_requirements(
    requires: Iterable[str], *, platform: str, names: dict[str, str]
) -> list[str]:
    """Requires-Dist lines as conda match specs, for CPython 3.11 on ``platform``: markers
    evaluated, extras dropped, names mapped (``names``: PyPI -> conda, for the renamed)."""
    from packaging.requirements import Requirement

    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.2",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "darwin" if platform.startswith("osx") else "linux",
        "platform_system": "Darwin" if platform.startswith("osx") else "Linux",
        "platform_machine": MACHINES.get(platform, "x86_64"),
        "os_name": "posix",
        "extra": "",
    }
    specs = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = normalize(requirement.name)
        conda = names.get(name, name)
        clauses = [_conda_clause(str(s)) for s in sorted(requirement.specifier, key=str)]
        specs.append(f"{conda} {','.join(clauses)}".strip())
    return sorted(specs)


def _conda_clause(clause: str) -> str:
    """One PEP 440 clause as conda writes it (``~=1.4.2`` -> ``>=1.4.2,==1.4.*``)."""
    if clause.startswith("~="):
        version = clause[2:]
        head = ".".join(version.split(".")[:-1])
        return f">={version},=={head}.*"
    if clause.startswith("==="):
        return "==" + clause[3:]
    return clause
