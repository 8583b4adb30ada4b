"""A Docker engine, a base image and a registry started on this machine, for the image tests
and ``make demo``; nothing outside the machine is needed but Debian's mirror (once, for the
base image).

- ``engine()``: Debian's ``dockerd`` on a temporary data root and its own socket (no
  iptables, no bridge: containers use the host network), stopped by PID.
- ``base_image()``: a minimal Debian bookworm made with ``debootstrap`` (with the libraries
  the runnable channel's python loads), trimmed and tarred reproducibly (sorted, mtime 0),
  cached, and imported into the engine.
- ``arm64_base_tar()``: the same base for arm64, made here without emulation (for the arm64
  tests, which run its libraries under qemu-user, and arm64 images).
- ``base_layout()``, ``base_index_layout()``: the base as an OCI image layout, for amd64, or
  an index of amd64 and arm64 (the demo's ``image.base``); ``push_base()`` copies one into a
  registry.
- ``registry()``: Debian's ``docker-registry`` on 127.0.0.1 (Docker treats loopback
  registries as insecure: no TLS needed), stopped by PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from envbuild.image import oci

BASE_REFERENCE = "envbuild-demo/base:bookworm"
#: What the runnable channel's python and the wheels load from the system.
BASE_PACKAGES = (
    "ca-certificates",
    "libbz2-1.0",
    "libdb5.3",
    "libexpat1",
    "libffi8",
    "liblzma5",
    "libncursesw6",
    "libnsl2",
    "libreadline8",
    "libsqlite3-0",
    "libssl3",
    "libstdc++6",
    "libtinfo6",
    "libtirpc3",
    "libuuid1",
    "zlib1g",
)
MIRROR = "http://deb.debian.org/debian"
#: Trimmed from the base: package lists, caches, documentation, logs.
TRIMMED = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "var/log",
)


class SetupError(Exception):
    """An engine, base image or registry cannot be had here; the message says why."""


def tools_missing() -> list[str]:
    """The commands the engine, the base image and the registry need that are missing."""
    needed = ("dockerd", "debootstrap", "docker-registry", "skopeo")
    return [tool for tool in needed if shutil.which(tool) is None]


def usable() -> str | None:
    """Why no engine can be started here (None: it can)."""
    if os.geteuid() != 0:
        return "starting a Docker engine needs root"
    missing = tools_missing()
    if missing:
        packages = "docker.io debootstrap docker-registry skopeo"
        return f"{', '.join(missing)} not installed (apt-get install {packages})"
    return None


def _wait(condition: object, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-800:] if log and log.exists() else ""
    raise SetupError(f"{what} did not come up in {timeout:.0f} s: {tail}")


@contextlib.contextmanager
def engine(data_root: Path | None = None) -> Iterator[str]:
    """A private dockerd; yields its DOCKER_HOST. ``data_root`` keeps its images for the
    next start (the demo); by default they go with it."""
    # A short path: the engine's sockets live under it, and unix socket paths are short.
    folder = Path(tempfile.mkdtemp(prefix="ebd-", dir="/tmp"))
    socket_path = folder / "docker.sock"
    log = folder / "dockerd.log"
    # Resolved: runc refuses a rootfs whose path goes through a symlink (a linked build/cache).
    data = data_root.resolve() if data_root else folder / "data"
    command = [
        "dockerd",
        "--data-root",
        str(data),
        "--exec-root",
        str(folder / "exec"),
        "--pidfile",
        str(folder / "dockerd.pid"),
        "-H",
        f"unix://{socket_path}",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    host = f"unix://{socket_path}"
    try:
        _wait(lambda: answers(host), "dockerd", 60, log)
        yield host
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def answers(host: str) -> bool:
    path = host.removeprefix("unix://")
    if not Path(path).exists():
        return False
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(path)
            client.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"200 OK" in client.recv(256)
        except OSError:
            return False


def base_tar(cache: Path) -> Path:
    """The base image as a reproducible tar, made with debootstrap once and cached."""
    key = hashlib.sha256(" ".join((*BASE_PACKAGES, MIRROR, "1")).encode()).hexdigest()[:12]
    path = cache / f"base-bookworm-{key}.tar"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".rootfs-") as tmp:
        root = Path(tmp) / "root"
        done = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(root),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise SetupError(f"debootstrap failed: {' | '.join(last)}")
        _trimmed_tar(root, path)
    return path


def _trimmed_tar(root: Path, path: Path) -> None:
    """``root`` without what a runtime does not need, as a reproducible tar at ``path``
    (sorted, mtime 0, root-owned), written beside it first and renamed into place."""
    for part in TRIMMED:
        shutil.rmtree(root / part, ignore_errors=True)
    staged = root.parent / "base.tar"
    subprocess.run(
        ["tar", "-C", str(root), "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
         "--numeric-owner", "-cf", str(staged), "."],
        check=True,
    )  # fmt: skip
    staged.replace(path)


def arm64_base_tar(cache: Path) -> Path:
    """The base for arm64 as a reproducible tar, cached: the same Debian bookworm minbase and
    BASE_PACKAGES as ``base_tar``, for arm64, made on this x86 machine without emulation.

    ``debootstrap --foreign`` runs only its first stage here (it downloads every package and
    unpacks the required ones); the rest are unpacked here as dpkg would. No maintainer
    script runs (that would need an arm64 machine or binfmt); of what they make, the two a
    Python image needs are made here (``_configure_unrun``). Enough for a root that
    ``qemu-aarch64-static -L`` loads libraries from, or an image base that provides them;
    unlike ``base_tar``'s, it has no ld.so.cache (the loader searches the multiarch folders),
    no /etc/alternatives, no shadow files and no /etc files that base-files' script copies.
    """
    key = hashlib.sha256(" ".join((*BASE_PACKAGES, MIRROR, "arm64", "2")).encode()).hexdigest()
    path = cache / f"base-bookworm-arm64-{key[:12]}.tar"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".rootfs-arm64-") as tmp:
        root = Path(tmp) / "root"
        done = subprocess.run(
            [
                "debootstrap",
                "--arch=arm64",
                "--foreign",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(root),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise SetupError(f"debootstrap --arch=arm64 --foreign failed: {' | '.join(last)}")
        for deb in sorted((root / "var" / "cache" / "apt" / "archives").glob("*.deb")):
            # As dpkg unpacks: through the merged-/usr links (/lib -> usr/lib), not over them.
            data = subprocess.run(
                ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
            ).stdout
            subprocess.run(
                ["tar", "-x", "--keep-directory-symlink", "-C", str(root)], input=data, check=True
            )
        shutil.rmtree(root / "debootstrap", ignore_errors=True)
        _configure_unrun(root)
        _trimmed_tar(root, path)
    return path


def _configure_unrun(root: Path) -> None:
    """What two maintainer scripts would have made in an unpacked root: users and groups
    (base-passwd's masters; passwords ``*``, no shadow file) and the CA bundle
    (update-ca-certificates' concatenation, byte-identical to the amd64 base's)."""
    for name in ("passwd", "group"):
        if not (root / "etc" / name).exists():
            shutil.copyfile(root / "usr/share/base-passwd" / f"{name}.master", root / "etc" / name)
    certificates = sorted((root / "usr/share/ca-certificates").rglob("*.crt"))
    bundle = b"".join(c.read_bytes().rstrip(b"\n") + b"\n" for c in certificates)
    (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssl/certs/ca-certificates.crt").write_bytes(bundle)


BASE_TAG = "bookworm"


def _base_image(tar: Path, platform: str, folder: Path) -> oci.Image:
    """The base tar as a one-layer image for ``platform``, its blob written into the layout
    ``folder``."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    partial = folder / "layer.tar.gz"
    digest, size = oci.compress(tar, partial)
    blob = blobs / digest.removeprefix("sha256:")
    partial.rename(blob)
    diff_id = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    layer = oci.Layer(oci.Descriptor(oci.LAYER_GZIP, digest, size), diff_id, path=blob)
    where = oci.platform_of(platform)
    config = oci.document(
        {
            **where.to_dict(),
            "created": oci.EPOCH,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": oci.EPOCH, "created_by": "debootstrap (envbuild.testing)"}],
        }
    )
    manifest = oci.document(oci.image_manifest(oci.describe(config, oci.CONFIG), [layer.blob]))
    return oci.Image(f"{BASE_TAG}-{where.architecture}", config, manifest, (layer,), where)


def _cached_layout(layout: Path, write: Callable[[Path], None]) -> Path:
    """``layout``, written by ``write`` into a temporary folder once, then renamed."""
    if (layout / "index.json").is_file():
        return layout
    partial = layout.with_name(f".{layout.name}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    partial.rename(layout)
    return layout


def base_layout(cache: Path) -> Path:
    """The amd64 base image as an OCI image layout (tag ``bookworm``), written from
    ``base_tar`` with envbuild's own OCI code once and cached."""
    tar = base_tar(cache)

    def write(folder: Path) -> None:
        image = _base_image(tar, "linux-64", folder)
        oci.write_layout(folder, [dataclasses.replace(image, tag=BASE_TAG)])

    return _cached_layout(cache / f"{tar.stem}-oci", write)


def base_index_layout(cache: Path) -> Path:
    """The base for linux/amd64 and linux/arm64 (``base_tar``, ``arm64_base_tar``) as an OCI
    image layout whose tag ``bookworm`` names an image index of the two, as Debian's images
    on Docker Hub are: for ``image.base: oci:PATH:bookworm`` (the demo's), or to copy into a
    registry (``push_base``). Written once and cached; the arm64 root needs root and
    debootstrap the first time."""
    amd64, arm64 = base_tar(cache), arm64_base_tar(cache)

    def write(folder: Path) -> None:
        images = (
            _base_image(amd64, "linux-64", folder),
            _base_image(arm64, "linux-aarch64", folder),
        )
        oci.write_layout(folder, [oci.Index(BASE_TAG, images)])

    key = hashlib.sha256(f"{amd64.name} {arm64.name}".encode()).hexdigest()[:12]
    return _cached_layout(cache / f"base-bookworm-index-{key}-oci", write)


def push_base(layout: Path, address: str, repository: str = "envbuild-demo/base") -> str:
    """Copy the base layout (an image or an index, with every platform's image) into the
    registry at ``address`` with skopeo; its reference."""
    reference = f"{address}/{repository}:{BASE_TAG}"
    done = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-tls-verify=false",
            f"oci:{layout}:{BASE_TAG}",
            f"docker://{reference}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SetupError(f"skopeo copy of the base failed: {done.stderr.strip()[-400:]}")
    return reference


def import_base(host: str, tar: Path, reference: str = BASE_REFERENCE) -> str:
    """Import the base tar into the engine at ``host``, as ``reference``."""
    import docker

    client = docker.DockerClient(base_url=host)
    try:
        repository, _, tag = reference.rpartition(":")
        client.api.import_image(src=str(tar), repository=repository, tag=tag)
    finally:
        client.close()
    return reference


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Registry:
    """A running registry: its address, and the folder it stores blobs in."""

    address: str
    storage: Path

    def stored_bytes(self) -> int:
        """Bytes of the blobs (layers and configs) the registry holds."""
        blobs = self.storage / "docker" / "registry" / "v2" / "blobs"
        return sum(p.stat().st_size for p in blobs.rglob("data") if p.is_file())


@contextlib.contextmanager
def registry() -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1."""
    folder = Path(tempfile.mkdtemp(prefix="envbuild-registry-"))
    port = free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    log = folder / "registry.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(folder / "config.yml")],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    try:
        _wait(lambda: _registry_answers(address), "docker-registry", 30, log)
        yield Registry(address, folder / "data")
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _registry_answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=1) as answer:
            return int(answer.status) == 200
    except OSError:
        return False
