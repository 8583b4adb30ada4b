"""PyPI requirements resolved for one target with uv: the only door to the resolver.

Why uv. envbuild must resolve PyPI requirements for a target that is not this machine (a
Linux GPU worker from a macOS laptop, a manylinux floor from the declared ``__glibc``), wheels
only, with the conda packages' distributions fixed. uv (a PyPI wheel that ships one static
binary) does all of it: ``uv pip compile --python-platform --python-version --only-binary``,
constraints, existing output as preferences, and PEP 751 ``pylock.toml`` output with each
wheel's URL, size and sha256. pip's resolver can do the same resolution
(``pip install --dry-run --report --platform --python-version --only-binary``), but it is
slower and reports no size; packaging and a resolver of our own would mean writing and
keeping a backtracking resolver and an index client. Measured on the same resolution
(xarray over conda's numpy, pandas and packaging as stubs, from a local find-links folder,
for linux-64 and CPython 3.11.2; whole processes, ``benchmarks/bench_pypi.py --runs 8``,
paired rounds in rotating order, on a shared two-core machine):

    uv pip compile            min 0.022 s  median 0.046 s  max 0.080 s
    pip install --dry-run     min 0.645 s  median 0.884 s  max 1.310 s
    per-round ratio uv/pip    min 0.03x    median 0.05x    max 0.09x

A lock resolves every target (and again the ones alignment pins), so this is paid per target;
pip's report would also need each wheel's size fetched separately.

How conda's packages stay fixed. Every distribution a conda package of the target provides
(``envbuild.lock.pypiplan``) becomes a stub wheel in a private find-links folder, versioned
``VERSION+envbuild.conda``, and a constraint ``NAME==VERSION+envbuild.conda``. Only the stub
can meet that constraint, and a requirement on the name is met by it exactly as by the real
distribution (a local label does not change ``>=`` or ``==`` comparisons). So a PyPI package
never replaces, duplicates or upgrades a conda one, and when a requirement needs that, uv's
explanation names both (``xarray>=2026.9.0 depends on packaging>=24.2 and
packaging==24.1+envbuild.conda``), which envbuild words as the conda package. Stubs are not
part of the result.

Wheels only (``--only-binary :all:``): nothing is built at lock or install time. uv runs
with ``--no-config`` and without the caller's ``UV_*`` settings (bar index credentials), so
the lock depends on the spec alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from envbuild.errors import ChannelError, SolveError
from envbuild.lock.wheels import LockedWheel, normalize, wheel_file_name

#: The local version label of a stub: a conda package's distribution.
STUB_LABEL = "envbuild.conda"


def uv_binary() -> str:
    """The uv executable shipped with envbuild's ``uv`` dependency."""
    from uv import find_uv_bin

    return str(find_uv_bin())


@dataclass(frozen=True)
class Provided:
    """A Python distribution a conda package of the target provides."""

    name: str  # normalized distribution name
    version: str
    conda_name: str
    conda_version: str


@dataclass(frozen=True)
class PypiRequest:
    """What one target's PyPI resolution needs."""

    target: str
    requirements: tuple[str, ...]
    python: str  # the target's python, e.g. 3.11.2
    uv_platform: str  # e.g. x86_64-manylinux_2_28, aarch64-apple-darwin
    macos: str | None = None  # MACOSX_DEPLOYMENT_TARGET for a macOS target
    provided: tuple[Provided, ...] = ()
    pins: tuple[str, ...] = ()  # NAME==VERSION the target must take (alignment)
    preferred: Mapping[str, str] = field(default_factory=dict)  # name -> version to keep


@dataclass(frozen=True)
class Sources:
    """Where wheels come from: indexes (None: PyPI) and find-links."""

    index_urls: tuple[str, ...] | None = None
    find_links: tuple[str, ...] = ()

    def arguments(self) -> list[str]:
        args: list[str] = []
        if self.index_urls is not None:
            if not self.index_urls:
                args.append("--no-index")
            else:  # uv searches --index entries in order, the default index last
                for url in self.index_urls[:-1]:
                    args += ["--index", url]
                args += ["--default-index", self.index_urls[-1]]
        for location in self.find_links:
            args += ["--find-links", location]
        return args


def stub_version(version: str) -> str:
    """A provided distribution's version as its stub carries it."""
    return f"{version}.{STUB_LABEL}" if "+" in version else f"{version}+{STUB_LABEL}"


def _write_stub(folder: Path, provided: Provided) -> None:
    """A wheel that only says ``NAME VERSION+envbuild.conda`` is installed (no dependencies:
    the conda solve met them)."""
    version = stub_version(provided.version)
    stem = f"{provided.name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as archive:
        info = f"{stem}.dist-info"
        archive.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {provided.name}\nVersion: {version}\n",
        )
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: envbuild\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")


def _environment(macos: str | None) -> dict[str, str]:
    """The caller's environment without uv settings that would change the resolution."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("UV_") or k.endswith(("_USERNAME", "_PASSWORD")) or k == "UV_NATIVE_TLS"
    }
    env.pop("MACOSX_DEPLOYMENT_TARGET", None)
    if macos:
        env["MACOSX_DEPLOYMENT_TARGET"] = macos
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def _preferences(path: Path, preferred: Mapping[str, str]) -> None:
    """An existing output file is what uv keeps where it can (as ``lock`` keeps versions)."""
    lines = ['lock-version = "1.0"', 'created-by = "envbuild"', ""]
    for name, version in sorted(preferred.items()):
        lines += ["[[packages]]", f'name = "{name}"', f'version = "{version}"', ""]
    path.write_text("\n".join(lines))


def resolve_target(request: PypiRequest, sources: Sources, cache: Path) -> list[LockedWheel]:
    """The wheels ``request`` needs beyond its conda packages (without metadata beyond the
    index's: ``requires_python`` and ``requires_dist`` are filled in by the caller)."""
    with tempfile.TemporaryDirectory(prefix="envbuild-pypi-") as tmp:
        folder = Path(tmp)
        stubs = folder / "conda"
        stubs.mkdir()
        for provided in request.provided:
            _write_stub(stubs, provided)
        (folder / "requirements.txt").write_text("".join(f"{r}\n" for r in request.requirements))
        constraints = [f"{p.name}=={stub_version(p.version)}" for p in request.provided]
        (folder / "constraints.txt").write_text(
            "".join(f"{c}\n" for c in [*constraints, *request.pins])
        )
        output = folder / "pylock.toml"
        if request.preferred:
            _preferences(output, request.preferred)
        command = [
            uv_binary(), "pip", "compile", str(folder / "requirements.txt"),
            "--constraints", str(folder / "constraints.txt"),
            "--format", "pylock.toml", "--output-file", str(output),
            "--python-version", request.python, "--python-platform", request.uv_platform,
            "--python", sys.executable, "--only-binary", ":all:",
            "--no-config", "--no-header", "--quiet", "--cache-dir", str(cache / "uv"),
            "--find-links", str(stubs), *sources.arguments(),
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, env=_environment(request.macos)
        )
        if done.returncode != 0:
            raise _failure(request, done.stderr)
        document = tomllib.loads(output.read_text(encoding="utf-8"))
    fixed = {p.name for p in request.provided}
    return [
        _wheel(request, entry)
        for entry in document.get("packages", [])
        if normalize(entry["name"]) not in fixed
    ]


def _wheel(request: PypiRequest, entry: Mapping[str, object]) -> LockedWheel:
    name = normalize(str(entry["name"]))
    wheels = entry.get("wheels")
    if not isinstance(wheels, list) or not wheels:
        raise SolveError(
            f"{request.target}: {name} {entry.get('version')} has no wheel for this target "
            "(envbuild installs wheels only; it builds no sdist)"
        )
    chosen = wheels[0]
    return LockedWheel(
        name=name,
        version=str(entry["version"]),
        file_name=wheel_file_name(chosen["url"]),
        url=chosen["url"],
        sha256=chosen["hashes"]["sha256"],
        size=chosen.get("size"),
    )


def _failure(request: PypiRequest, stderr: str) -> SolveError | ChannelError:
    """uv's explanation, with every stub worded as the conda package it stands for."""
    text = stderr.strip()
    conda = []
    for provided in request.provided:
        stub = f"{provided.name}=={stub_version(provided.version)}"
        if stub in text:
            conda.append(provided)
            text = text.replace(
                stub,
                f"{provided.name}=={provided.version} (from conda package "
                f"{provided.conda_name} {provided.conda_version})",
            )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "No solution found" not in text:
        last = lines[-1].removeprefix("Caused by: ") if lines else "uv failed"
        return ChannelError(f"{request.target}: cannot read the PyPI index: {last}", details=text)
    asked = ", ".join(f"'{r}'" for r in request.requirements)
    if conda:
        fixed = ", ".join(f"{p.conda_name} {p.conda_version}" for p in conda)
        return SolveError(
            f"{request.target}: the PyPI requirements ({asked}) need a different version of "
            f"what conda package {fixed} provides; a PyPI package never replaces, duplicates or "
            "upgrades a conda one: relax the PyPI requirement or change the conda one",
            details=text,
        )
    why = (
        " (envbuild installs wheels only: it builds no sdist)" if "no usable wheels" in text else ""
    )
    return SolveError(
        f"{request.target}: the PyPI requirements ({asked}) cannot be met{why}", details=text
    )
