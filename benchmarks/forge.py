"""A conda-forge-shaped channel for benchmarks: metadata only, deterministic.

Over 50,000 records and 3,000 names on linux-64, osx-arm64 and noarch: four pythons, per-python
builds of compiled packages, per-CUDA builds (CUDA 11 and 12) of GPU packages, noarch python
packages, and dependency chains about twenty deep (``pkg-i`` needs ``pkg-i//2``, ``pkg-i//3``
and ``pkg-i//5``). The dask-gpu fixture packages sit on top, with pandas and nvidia-ml-py
(what the dask-gpu example adds); dask-core needs the ten newest chains, so a dask
environment holds a few hundred packages.

Other sizes: ``filler`` sets the number of ``pkg-i`` names (about 16.8 records each), and
``corpus`` adds real conda-forge records (``/work/shared/corpus/conda-forge-py39``, about
3,700 on these subdirs) under the names the channel does not have already; ``sized(N)`` picks
the filler for about N records in all. ``python benchmarks/forge.py DIR [RECORDS]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from envbuild.testing.catalog import PLATFORMS, build_hash, dask_gpu_packages, python_packages
from envbuild.testing.channel import Package, write_channel

FILLER = 3_000
VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4")
PYTHONS = ("3.9", "3.10", "3.11", "3.12")
EXTRA_PYTHONS = {"3.9": "3.9.19", "3.10": "3.10.14"}  # the catalog has 3.11 and 3.12


def _requirements(index: int) -> tuple[str, ...]:
    parents = sorted({index // 2, index // 3, index // 5} - {index, 0})
    return tuple(f"pkg-{p:04d} >=1.1" for p in parents)


def _python_pins(py: str) -> tuple[str, ...]:
    major, minor = py.split(".")
    return (
        f"python >={py},<{major}.{int(minor) + 1}.0a0",
        f"python_abi {py}.* *_cp{major}{minor}",
    )


def _filler(index: int) -> Iterator[Package]:
    name = f"pkg-{index:04d}"
    requirements = _requirements(index)
    for version in VERSIONS:
        if index % 3:  # two thirds are pure python
            yield Package(
                name=name,
                version=version,
                build="pyhd8ed1ab_0",
                noarch="python",
                depends=("python >=3.9", *requirements),
            )
            continue
        for subdir in PLATFORMS:
            for py in PYTHONS:
                tag = f"py{py.replace('.', '')}"
                if index % 50 == 0 and subdir == "linux-64":  # GPU packages: per CUDA major
                    for major in ("11", "12"):
                        yield Package(
                            name=name,
                            version=version,
                            subdir=subdir,
                            build=f"{tag}cuda{major}{build_hash(name, version, py, major)}_0",
                            depends=(
                                *_python_pins(py),
                                *requirements,
                                f"cuda-version >={major}.0,<{int(major) + 1}",
                            ),
                        )
                    continue
                yield Package(
                    name=name,
                    version=version,
                    subdir=subdir,
                    build=f"{tag}{build_hash(name, version, py, subdir)}_0",
                    depends=(*_python_pins(py), *requirements),
                )


#: Real conda-forge metadata (README there); used when present.
CORPUS = Path("/work/shared/corpus/conda-forge-py39")
RECORDS_PER_FILLER = 16.82


def forge_packages(filler: int = FILLER) -> list[Package]:
    """Every package of the benchmark channel."""
    chains = tuple(f"pkg-{filler - 1 - k:04d}" for k in range(10))
    packages = [p for p in dask_gpu_packages() if p.name != "dask-core"]
    for version in ("2024.8.0", "2024.8.2"):
        packages.append(
            Package(
                name="dask-core",
                version=version,
                build="pyhd8ed1ab_0",
                noarch="python",
                depends=(
                    "python >=3.9",
                    "cloudpickle >=3.0.0",
                    "toolz >=0.10.0",
                    "pyyaml >=5.3.1",
                    *chains,
                ),
            )
        )
    for subdir in PLATFORMS:
        packages.extend(python_packages(subdir, EXTRA_PYTHONS))
        # the rest of the dask-gpu example's dependencies: pandas (compiled) and nvidia-ml-py
        for py in PYTHONS:
            for version in ("2.2.2", "2.2.3"):
                digest = build_hash("pandas", version, py, subdir)
                packages.append(
                    Package(
                        name="pandas",
                        version=version,
                        subdir=subdir,
                        build=f"py{py.replace('.', '')}{digest}_0",
                        depends=(*_python_pins(py), "numpy >=1.22.4", *chains[:3]),
                    )
                )
    for version in ("12.555.43", "12.560.30"):
        packages.append(
            Package(
                name="nvidia-ml-py",
                version=version,
                build="pyhd8ed1ab_0",
                noarch="python",
                depends=("python >=3.6",),
            )
        )
    for index in range(1, filler):
        packages.extend(_filler(index))
    return packages


def corpus_records(names: set[str]) -> dict[str, dict[str, dict[str, object]]]:
    """subdir -> file name -> repodata entry: the corpus' records of names not in ``names``."""
    found: dict[str, dict[str, dict[str, object]]] = {}
    for subdir in (*PLATFORMS, "noarch"):
        path = CORPUS / subdir / "repodata.json"
        if not path.is_file():
            continue
        document = json.loads(path.read_text())
        for section in ("packages", "packages.conda"):
            for file_name, entry in document.get(section, {}).items():
                if entry["name"] not in names:
                    found.setdefault(subdir, {})[file_name] = entry
    return found


def sized(records: int, corpus: bool = True) -> int:
    """The filler for about ``records`` records in all (the corpus' included)."""
    extra = sum(len(v) for v in corpus_records(set()).values()) if corpus else 0
    return max(100, round((records - extra) / RECORDS_PER_FILLER))


def write_forge(
    root: Path, extra: tuple[Package, ...] = (), filler: int = FILLER, corpus: bool = False
) -> tuple[str, int, int]:
    """Write the channel (plus ``extra``, and the corpus' records with ``corpus``) under
    ``root``; return its URL, record and name counts."""
    packages = [*forge_packages(filler), *extra]
    url = write_channel(root, packages, subdirs=(*PLATFORMS, "noarch"), archives=False)
    names = {p.name for p in packages}
    count = len(packages)
    for subdir, entries in (corpus_records(names) if corpus else {}).items():
        path = root / subdir / "repodata.json"
        document = json.loads(path.read_text())
        for file_name, entry in entries.items():
            section = "packages.conda" if file_name.endswith(".conda") else "packages"
            document[section][file_name] = entry
            names.add(str(entry["name"]))
            count += 1
        path.write_text(json.dumps(document, indent=1, sort_keys=True))
    return url, count, len(names)


if __name__ == "__main__":
    wanted = int(sys.argv[2]) if len(sys.argv) > 2 else None
    size = sized(wanted) if wanted else FILLER
    channel_url, records, names = write_forge(Path(sys.argv[1]), filler=size, corpus=bool(wanted))
    print(f"{channel_url}: {records} records, {names} names")
