"""Role images with PyPI wheels: each wheel unpacked into the staged prefix for ``/opt/env``
(nothing of the image runs while it is staged), compiled, recorded so ``verify`` works on the
image's prefix, and put in the shared layer when every variant has the same wheel, else in the
variant layer. From the runnable channel and the offline index: xarray for every role, a
cupy wheel per CUDA major (a CUDA 11.8 scheduler, CUDA 12.4 workers on amd64 and arm64)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import marshal
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from envbuild.env.pypi import check_wheels
from envbuild.errors import ImageBuildError
from envbuild.image.wheels import compiler_for, install_wheels
from envbuild.lock.wheels import LockedWheel

from .conftest import ContainerSetup, image_section
from .pypi_setup import pypi_spec, pypi_wheels
from .test_arm64_images import EM_AARCH64, EM_X86_64, elf_machines

__all__ = ["pypi_wheels"]

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
NO_ENGINE = "unix:///nonexistent/docker.sock"
SITE = "lib/python3.11/site-packages"
ROLES = ("client", "scheduler", "worker")


# --- the wheel format, on a small wheel made here -------------------------------------------


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, files: dict[str, bytes], *, lie: str | None = None) -> LockedWheel:
    """``demo_pkg-1.0-py3-none-any.whl`` holding ``files`` and its dist-info; ``lie``: a
    member whose RECORD hash is wrong."""
    dist_info = "demo_pkg-1.0.dist-info"
    members = {
        **files,
        f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": b"[console_scripts]\ndemo = demo_pkg.cli:main\n",
    }
    record = "".join(
        f"{name},{_hash(b'other' if name == lie else data)},{len(data)}\n"
        for name, data in members.items()
    )
    path = folder / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith("/tool") else 0o644) << 16
            archive.writestr(info, data)
        archive.writestr(f"{dist_info}/RECORD", record + f"{dist_info}/RECORD,,\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LockedWheel("demo-pkg", "1.0", path.name, path.as_uri(), digest)


PACKAGE = {
    "demo_pkg/__init__.py": b"VALUE = {'a', 'b'}\n",
    "demo_pkg/cli.py": b"def main():\n    return 0\n",
    "demo_pkg-1.0.data/scripts/tool": b"#!python\nprint('tool')\n",
    "demo_pkg-1.0.data/data/share/demo/readme.txt": b"data\n",
    "demo_pkg-1.0.data/headers/demo.h": b"#define DEMO 1\n",
}


def staged_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / SITE).mkdir(parents=True)
    return root


def test_a_wheel_is_laid_out_compiled_and_recorded_for_the_images_prefix(tmp_path: Path) -> None:
    compiler = compiler_for("3.11")
    assert compiler is not None  # envbuild's own python is 3.11, as the runnable channel's
    wheel = make_wheel(tmp_path, PACKAGE)
    root = staged_root(tmp_path)

    install_wheels(
        [(wheel, tmp_path / wheel.file_name)], root, prefix="/opt/env", site=SITE, compiler=compiler
    )

    site = root / SITE
    assert (site / "demo_pkg" / "cli.py").read_bytes() == PACKAGE["demo_pkg/cli.py"]
    tool = root / "bin" / "tool"
    assert tool.read_text().splitlines()[0] == "#!/opt/env/bin/python" and os.access(tool, os.X_OK)
    launcher = (root / "bin" / "demo").read_text()
    assert launcher.startswith("#!/opt/env/bin/python\n") and os.access(root / "bin/demo", os.X_OK)
    assert "from demo_pkg.cli import main" in launcher and "sys.exit(main())" in launcher
    assert (root / "share" / "demo" / "readme.txt").read_bytes() == b"data\n"
    assert (root / "include" / "python3.11" / "demo-pkg" / "demo.h").is_file()
    assert (site / "demo_pkg-1.0.dist-info" / "INSTALLER").read_text() == "envbuild\n"
    # Unchecked-hash pycs naming the image's paths: never recompiled, never rewritten.
    pyc = site / "demo_pkg" / "__pycache__" / "cli.cpython-311.pyc"
    data = pyc.read_bytes()
    assert data[4:8] == (1).to_bytes(4, "little")  # hash-based, source not checked
    code = marshal.loads(data[16:])  # noqa: S302 (the pyc this test just had written)
    assert code.co_filename == f"/opt/env/{SITE}/demo_pkg/cli.py"
    # What env writes, and what verify reads: every file against its RECORD hash.
    recorded = json.loads((root / "etc" / "envbuild" / "wheels.json").read_text())
    assert recorded == {
        "demo-pkg": {
            "dist-info": f"{SITE}/demo_pkg-1.0.dist-info",
            "sha256": wheel.sha256,
            "version": "1.0",
        }
    }
    record = (site / "demo_pkg-1.0.dist-info" / "RECORD").read_text()
    assert (
        "../../../bin/tool,sha256=" in record
        and "demo_pkg/__pycache__/cli.cpython-311.pyc,," in record
    )
    target: Any = SimpleNamespace(wheels=(wheel,))
    assert check_wheels(target, root, files=True, stamp=None).files == ()
    tool.write_text("#!/bin/sh\necho changed\n")
    problems = check_wheels(target, root, files=True, stamp=None).files
    assert problems == (("bin/tool", "demo-pkg.pypi", "was modified"),)


def test_the_same_wheel_stages_the_same_bytes_twice(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, PACKAGE)
    trees = []
    for name in ("one", "two"):
        root = staged_root(tmp_path / name)
        install_wheels(
            [(wheel, tmp_path / wheel.file_name)],
            root,
            prefix="/opt/env",
            site=SITE,
            compiler=compiler_for("3.11"),
        )
        trees.append(
            {
                p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode)
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
        )
    assert trees[0] == trees[1] and len(trees[0]) > 10


@pytest.mark.parametrize(
    ("files", "lie", "message"),
    [
        ({"../outside.py": b""}, None, "climbs out with '..'"),
        ({"demo_pkg-1.0.data/data/conda-meta/x.json": b"{}"}, None, "conda-meta/"),
        ({"demo_pkg-1.0.data/data/etc/envbuild/stamp.json": b"{}"}, None, "etc/envbuild/"),
        ({"demo_pkg-1.0.data/elsewhere/x": b""}, None, "unknown scheme 'elsewhere'"),
        ({"demo_pkg/__init__.py": b"x = 1\n"}, "demo_pkg/__init__.py", "wheel's RECORD"),
        ({"demo_pkg-1.0.data/data/bin/python3.11": b"not python"}, None, "already installed"),
        ({"demo_pkg-1.0.data/data/linked/x": b""}, None, "through a symlink"),
    ],
    ids=["dot-dot", "conda-meta", "stamp", "scheme", "record", "clash", "symlink"],
)
def test_a_wheel_that_leaves_its_place_is_refused(
    tmp_path: Path, files: dict[str, bytes], lie: str | None, message: str
) -> None:
    wheel = make_wheel(tmp_path, files, lie=lie)
    root = staged_root(tmp_path)
    (root / "bin").mkdir()
    (root / "bin" / "python3.11").write_bytes(b"\x7fELF the interpreter")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "linked").symlink_to(outside)
    with pytest.raises(ImageBuildError) as refused:
        install_wheels(
            [(wheel, tmp_path / wheel.file_name)], root, prefix="/opt/env", site=SITE, compiler=None
        )
    assert message in str(refused.value) and wheel.file_name in str(refused.value)
    assert list(outside.iterdir()) == [] and not (tmp_path / "outside.py").exists()
    assert (root / "bin" / "python3.11").read_bytes() == b"\x7fELF the interpreter"


# --- images of a lock with PyPI wheels --------------------------------------------------------


@dataclass
class Built:
    """Every role's images of a lock with wheels, written to an OCI layout (no engine)."""

    setup: ContainerSetup
    folder: Path
    spec: Path
    env: dict[str, str]
    outcomes: dict[str, dict[str, Any]]
    layout: Path

    def envbuild(self, *args: object, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENVBUILD, *map(str, args)],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=900,
            env={**self.env, **extra},
        )

    def manifest(self, role: str, platform: str = "linux-64") -> dict[str, Any]:
        outcome = self.outcomes[role]
        digest = (
            next(m["digest"] for m in outcome["manifests"] if m["platforms"] == [platform])
            if outcome["manifests"]
            else outcome["digest"]
        )
        return json.loads(self.blob(digest))  # type: ignore[no-any-return]

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    def layer(self, role: str, name: str, platform: str = "linux-64") -> Path:
        """The gzip blob of the image's ``name`` layer (shared, variant, role: the last three)."""
        layers = self.manifest(role, platform)["layers"]
        digest = layers[-3:][("shared", "variant", "role").index(name)]["digest"]
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def members(blob: Path) -> dict[str, bytes | None]:
    """Path -> content of every file of a layer blob whose content is small or JSON
    (None for the rest)."""
    found: dict[str, bytes | None] = {}
    with gzip.open(blob) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                small = member.size < 64_000 or member.name.endswith(".json")
                extracted = tar.extractfile(member) if small else None
                found[member.name] = extracted.read() if extracted else None
    return found


def build(folder: Path, spec: Path, env: dict[str, str], layout: Path) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [ENVBUILD, "image", "--all", "--oci", layout, "--json", "-f", spec],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {i["role"]: i for i in json.loads(done.stdout)["images"]}


@pytest.fixture(scope="module")
def built(
    runnable_channel: Path,
    containers: ContainerSetup,
    pypi_wheels: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Built]:
    folder = tmp_path_factory.mktemp("pypi-images")
    spec = pypi_spec(
        folder,
        runnable_channel,
        pypi_wheels,
        pypi=["xarray"],
        gpu_pypi=["cupy-cuda{cuda_major}x"],
        scheduler_cuda="11.8",
        image=image_section(containers.base, f"{containers.registry.address}/pypi"),
    )
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE, "ENVBUILD_CACHE_DIR": str(folder / "cache")}
    subprocess.run([ENVBUILD, "lock", "-q", "-f", spec], cwd=folder, env=env, check=True)
    layout = folder / "layout"
    yield Built(containers, folder, spec, env, build(folder, spec, env, layout), layout)


def _wheel_files(files: dict[str, bytes | None], dist_info: str) -> list[str]:
    return [p for p in files if p.startswith(f"opt/env/{SITE}/{dist_info}/")]


@pytest.mark.slow
def test_each_cuda_major_gets_its_own_cupy_wheel_and_every_role_the_same_xarray(
    built: Built,
) -> None:
    shared = {role: built.layer(role, "shared") for role in ROLES}
    assert len({p.name for p in shared.values()}) == 1  # one shared layer, byte for byte
    common = members(shared["client"])
    assert f"opt/env/{SITE}/xarray/core/__pycache__/dataset.cpython-311.pyc" in common
    assert _wheel_files(common, "xarray-2026.2.0.dist-info")
    wheel_only = (f"opt/env/{SITE}/cupy", f"opt/env/{SITE}/fastrlock")
    assert not [p for p in common if p.startswith(wheel_only)]
    own = {role: members(built.layer(role, "variant")) for role in ROLES}
    records = {r: json.loads(own[r]["opt/env/etc/envbuild/wheels.json"] or b"") for r in ROLES}
    assert {r: sorted(records[r]) for r in ROLES} == {
        "client": ["xarray"],
        "scheduler": ["cupy-cuda11x", "fastrlock", "xarray"],
        "worker": ["cupy-cuda12x", "fastrlock", "xarray"],
    }
    assert _wheel_files(own["scheduler"], "cupy_cuda11x-13.3.0.dist-info")
    assert not _wheel_files(own["scheduler"], "cupy_cuda12x-13.3.0.dist-info")
    assert _wheel_files(own["worker"], "cupy_cuda12x-13.3.0.dist-info")
    # fastrlock: the same wheel in both CUDA variants, but the CPU one lacks it
    assert _wheel_files(own["worker"], "fastrlock-0.8.2.dist-info")
    assert [p for p in own["client"] if p.startswith(f"opt/env/{SITE}/")] == []
    stamp = json.loads(own["worker"]["opt/env/etc/envbuild/stamp.json"] or b"")
    assert stamp["pypi"].startswith("sha256:")
    # The SBOM lists each wheel in its layer, and stays valid CycloneDX with parsable purls.
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    text = members(built.layer("scheduler", "role"))["opt/envbuild/sbom.cdx.json"] or b""
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text.decode()) is None
    sbom = json.loads(text)
    cupy = next(c for c in sbom["components"] if c["name"] == "cupy-cuda11x")
    purl = PackageURL.from_string(cupy["purl"])
    assert (purl.type, purl.name, purl.version) == ("pypi", "cupy-cuda11x", "13.3.0")
    assert purl.qualifiers == {
        "file_name": "cupy_cuda11x-13.3.0-cp311-cp311-manylinux2014_x86_64.whl"
    }
    pypi = {
        c["purl"].split("?")[0]: {p["name"]: p["value"] for p in c["properties"]}["envbuild:layer"]
        for c in sbom["components"]
        if c["purl"].startswith("pkg:pypi/")
    }
    assert pypi == {
        "pkg:pypi/xarray@2026.2.0": "shared",
        "pkg:pypi/cupy-cuda11x@13.3.0": "variant",
        "pkg:pypi/fastrlock@0.8.2": "variant",
    }


@pytest.mark.slow
def test_the_arm64_worker_gets_the_aarch64_wheels_only(built: Built) -> None:
    lock = json.loads((built.folder / "envbuild.lock").read_text())
    arm = [e for e in lock["pypi-packages"] if "cuda-12.4/linux-aarch64" in e["targets"]]
    blobs = [built.layer("worker", n, "linux-aarch64") for n in ("shared", "variant")]
    machines = elf_machines(blobs)
    wheel_only = (f"opt/env/{SITE}/cupy", f"opt/env/{SITE}/fastrlock")
    from_wheels = {p for p in machines if p.startswith(wheel_only)}
    assert len(from_wheels) > 20  # cupy's and fastrlock's extensions, from the wheels
    assert {machines[p] for p in from_wheels} == {EM_AARCH64}
    assert set(machines.values()) == {EM_AARCH64}
    own = members(blobs[1])
    recorded = json.loads(own["opt/env/etc/envbuild/wheels.json"] or b"")
    assert {n: w["sha256"] for n, w in recorded.items()} == {e["name"]: e["sha256"] for e in arm}
    assert "aarch64" in next(e["fn"] for e in arm if e["name"] == "cupy-cuda12x")
    amd64 = elf_machines([built.layer("worker", "variant")])
    assert {amd64[p] for p in amd64 if p.startswith(wheel_only)} == {EM_X86_64}


@pytest.mark.slow
def test_verify_passes_on_an_images_prefix_and_finds_a_changed_wheel_file(
    built: Built, tmp_path: Path
) -> None:
    root = tmp_path / "worker"
    root.mkdir()
    for name in ("shared", "variant"):
        with tarfile.open(built.layer("worker", name)) as tar:
            tar.extractall(root, filter="tar")
    verify = ("verify", "--role", "worker", "--platform", "linux-64", "--files", "-f", built.spec)
    done = built.envbuild(*verify, "--prefix", root / "opt" / "env")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("packages and 3 PyPI wheels)\n")  # cupy, fastrlock, xarray
    module = root / "opt" / "env" / SITE / "xarray" / "__init__.py"
    module.write_text(module.read_text() + "\nraise SystemExit('tampered')\n")
    done = built.envbuild(*verify, "--prefix", root / "opt" / "env")
    assert done.returncode == 12
    assert "xarray/__init__.py (xarray.pypi) was modified" in done.stderr


@pytest.mark.slow
def test_the_images_import_their_wheels_as_uid_1000_without_a_network(built: Built) -> None:
    import docker

    loaded = built.envbuild(
        "image", "--role", "client", "--role", "scheduler", "--json", "-f", built.spec,
        DOCKER_HOST=built.setup.host,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    references = {i["role"]: i["reference"] for i in json.loads(loaded.stdout)["images"]}
    program = (
        "import importlib.metadata as m, json, os, xarray\n"
        "data = xarray.DataArray([[0, 1, 2], [3, 4, 5]], dims=('x', 'y'))\n"
        "print(json.dumps([os.getuid(), xarray.__version__, xarray.__file__,\n"
        "                  [int(v) for v in data.sum('x').values]]))\n"
    )
    cupy = "import cupy, importlib.metadata as m; print(m.version('cupy-cuda11x'), cupy.__file__)"
    client = docker.DockerClient(base_url=built.setup.host)
    try:

        def run(role: str, *command: str) -> tuple[str, str]:
            container = client.containers.run(
                references[role], list(command), detach=True, network_mode="none",
                environment={"ENVBUILD_GPU_CHECK": "skip"},
            )  # fmt: skip
            try:
                assert container.wait(timeout=300)["StatusCode"] == 0, container.logs()
                out = container.logs(stdout=True, stderr=False).decode()
                return out, container.logs(stdout=False, stderr=True).decode()
            finally:
                container.remove(force=True)

        out, verbose = run("client", "python", "-v", "-c", program)
        uid, version, where, summed = json.loads(out.strip().splitlines()[-1])
        assert (uid, version, summed) == (1000, "2026.2.0", [3, 5, 7])
        assert where == f"/opt/env/{SITE}/xarray/__init__.py"
        # Every xarray module came from its pyc; none had to be compiled (and could not be
        # written by uid 1000): the layers' pycs are valid for the image's python.
        used = [line for line in verbose.splitlines() if line.startswith("# code object from")]
        assert sum(f"/{SITE}/xarray/" in line for line in used) > 50
        assert not [line for line in verbose.splitlines() if "could not create" in line]
        out, _ = run("scheduler", "python", "-c", cupy)
        assert out.split() == ["13.3.0", f"/opt/env/{SITE}/cupy/__init__.py"]
    finally:
        client.close()


@pytest.mark.slow
def test_the_same_lock_gives_the_same_layers_from_empty_caches(
    built: Built, tmp_path: Path
) -> None:
    env = {**built.env, "ENVBUILD_CACHE_DIR": str(tmp_path / "cache")}  # nothing staged
    again = build(built.folder, built.spec, env, tmp_path / "layout")

    def digests(outcomes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            role: (o["digest"], [(m["platforms"], m["digest"]) for m in o["manifests"]])
            for role, o in outcomes.items()
        }

    assert digests(again) == digests(built.outcomes)
    assert (tmp_path / "cache" / "pypi" / "wheels").is_dir()  # fetched again, not borrowed
