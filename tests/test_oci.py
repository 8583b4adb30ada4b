"""Images without an engine: OCI documents (pure, golden), the SBOM against CycloneDX's
schema, and end to end (no engine running) on Debian's docker-registry, then pulled and run
by a real engine."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envbuild.env import runtime
from envbuild.image import oci
from envbuild.image.assemble import assemble
from envbuild.image.base import BaseImage, parse_base
from envbuild.image.plan import ImageSettings, plan_image
from envbuild.image.sbom import conda_purl
from envbuild.testing import docker as local_docker
from envbuild.testing import nvml

from .conftest import ContainerSetup, image_section, require, runnable_spec
from .test_imageplan import GOLDEN, UPDATE, golden_lock

SETTINGS = ImageSettings(
    base="debian:bookworm-slim",
    repository="registry.example.com/dask-gpu",
    base_digest="sha256:" + "b" * 64,
)
#: A base as Debian's images are: one layer, PATH in its environment, a label.
BASE_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"],
        "Cmd": ["bash"],
        "Labels": {"vendor": "debian", "org.opencontainers.image.title": "debian"},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 64]},
    "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "debuerreotype"}],
}
BASE = BaseImage(
    name="debian:bookworm-slim",
    digest="sha256:" + "b" * 64,
    config=BASE_CONFIG,
    layers=(
        oci.Layer(
            oci.Descriptor(oci.LAYER_GZIP, "sha256:" + "e" * 64, 29_000_000), "sha256:" + "d" * 64
        ),
    ),
    repository="docker.io/library/debian",
)
AMD64 = oci.platform_of("linux-64")


def _fake_layers(role: str) -> list[oci.Layer]:
    """Stand-ins for the staged layers: digests of their names."""
    found = []
    for name in ("shared", "variant", "role"):
        key = name if name != "role" else f"role-{role}"
        blob = "sha256:" + hashlib.sha256(f"blob {key}".encode()).hexdigest()
        diff = "sha256:" + hashlib.sha256(f"tar {key}".encode()).hexdigest()
        found.append(
            oci.Layer(oci.Descriptor(oci.LAYER_GZIP, blob, 1000), diff, f"envbuild: {name}")
        )
    return found


def _image(role: str) -> tuple[oci.Image, Any]:
    plan = plan_image(golden_lock(), role, SETTINGS, runtime.files())
    return assemble(plan, _fake_layers(role), BASE, AMD64), plan


@pytest.mark.parametrize("role", ["client", "scheduler", "worker"])
def test_config_and_manifest_golden(role: str) -> None:
    image, _ = _image(role)
    for name, data in (
        (f"config.{role}.json", image.config),
        (f"manifest.{role}.json", image.manifest),
    ):
        golden = GOLDEN / name
        if UPDATE:
            golden.write_bytes(data)
        assert data == golden.read_bytes(), f"{name} changed: review, then ENVBUILD_UPDATE_GOLDEN=1"
    assert _image(role)[0].digest == image.digest  # the same inputs, the same bytes


def test_the_config_is_the_base_with_the_role_on_top() -> None:
    image, plan = _image("worker")
    config = json.loads(image.config)
    settings = config["config"]
    env = dict(entry.split("=", 1) for entry in settings["Env"])
    assert (
        env["PATH"] == "/opt/env/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    assert env["LANG"] == "C"  # the base's variables stay
    assert env["ENVBUILD_ROLE"] == "worker" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert settings["User"] == "1000:1000" and settings["WorkingDir"] == "/home/dask"
    assert settings["Entrypoint"] == ["/opt/envbuild/entrypoint.sh"]
    assert settings["Cmd"] == ["dask", "worker", "--preload", "envbuild.dask"]  # not bash
    assert settings["Labels"]["vendor"] == "debian"
    assert settings["Labels"]["org.opencontainers.image.title"] == "dask-gpu-worker"
    assert settings["Labels"]["org.opencontainers.image.base.digest"] == BASE.digest
    assert config["rootfs"]["diff_ids"][0] == "sha256:" + "d" * 64
    assert len(config["rootfs"]["diff_ids"]) == len(config["history"]) == 4
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    manifest = json.loads(image.manifest)
    assert manifest["annotations"][oci.BASE_DIGEST] == BASE.digest
    assert manifest["layers"][0]["digest"] == BASE.layers[0].blob.digest
    assert plan.tag.startswith("worker-cuda-12.4-")


def test_a_moved_base_gives_new_tags_and_another_platform_is_refused() -> None:
    lock = golden_lock()
    moved = dataclasses.replace(SETTINGS, base_digest="sha256:" + "c" * 64)
    for role in ("client", "scheduler", "worker"):
        before = plan_image(lock, role, SETTINGS, runtime.files())
        after = plan_image(lock, role, moved, runtime.files())
        assert before.tag != after.tag
        assert "@sha256:" + "c" * 64 in after.dockerfile.splitlines()[3]  # FROM, pinned
    arm = dataclasses.replace(BASE, config={**BASE_CONFIG, "architecture": "arm64"})
    plan = plan_image(lock, "worker", SETTINGS, runtime.files())
    with pytest.raises(Exception, match="base image is for linux/arm64, not linux/amd64"):
        assemble(plan, _fake_layers("worker"), arm, AMD64)


def test_layer_blobs_are_reproducible_gzip(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(bytes(range(256)) * 64 + b"the same bytes\n" * 1000)
    first = oci.compress(layer, tmp_path / "one.gz")
    assert first == oci.compress(layer, tmp_path / "two.gz")
    blob = (tmp_path / "one.gz").read_bytes()
    assert blob[3] == 0 and blob[4:8] == b"\0\0\0\0"  # no file name, mtime 0
    assert gzip.decompress(blob) == layer.read_bytes()
    # What zlib's deflate at level 1 gives on every machine: a zlib that compresses
    # differently (zlib-ng's compat library) gives other blob digests, not other images.
    assert first == (
        "sha256:ecf5a188d704cd74ab51d4479023bca12ce09fb74d1c076c60a83c1d3bc8e5f8",
        608,
    ), f"zlib {zlib.ZLIB_RUNTIME_VERSION} compresses differently"


def test_base_references() -> None:
    hub = parse_base("debian:bookworm-slim")
    assert (hub.repository, hub.tag, hub.digest) == (
        "docker.io/library/debian",
        "bookworm-slim",
        None,
    )
    pinned = parse_base("ghcr.io/org/base@sha256:" + "a" * 64)
    assert (pinned.repository, pinned.tag, pinned.digest) == (
        "ghcr.io/org/base",
        None,
        "sha256:" + "a" * 64,
    )
    local = parse_base("127.0.0.1:5000/envbuild-demo/base:bookworm")
    assert (local.repository, local.tag) == ("127.0.0.1:5000/envbuild-demo/base", "bookworm")
    layout = parse_base("oci:../build/base:bookworm", Path("/work/spec"))
    assert (layout.layout, layout.tag) == (Path("/work/spec/../build/base"), "bookworm")
    assert parse_base("oci:/srv/base").tag is None


def test_the_sbom_validates_and_lists_every_package_with_its_purl() -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    lock = golden_lock()
    for role in ("client", "worker"):
        plan = plan_image(lock, role, SETTINGS, runtime.files())
        errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(plan.sbom)
        assert errors is None, errors
        document = json.loads(plan.sbom)
        libraries = [c for c in document["components"] if c["type"] == "library"]
        packages = lock.role_target(role, "linux-64").packages
        assert sorted(c["name"] for c in libraries) == sorted(p.name for p in packages)
        by_name = {p.name: p for p in packages}
        for component in libraries:
            package = by_name[component["name"]]
            assert component["hashes"] == [{"alg": "SHA-256", "content": package.sha256}]
            purl = PackageURL.from_string(component["purl"])
            assert (purl.type, purl.name, purl.version) == ("conda", package.name, package.version)
            assert purl.qualifiers["build"] == package.build
            assert purl.qualifiers["channel"] == package.channel
            assert purl.qualifiers["subdir"] == package.subdir
            assert component["purl"] == conda_purl(package)
        base = next(c for c in document["components"] if c["type"] == "container")
        assert base["version"] == SETTINGS.base_digest
        properties = {
            p["name"]: p["value"] for p in document["metadata"]["component"]["properties"]
        }
        assert properties["envbuild:role"] == role
        assert properties["envbuild:variant"] == lock.role(role).variant
        assert plan_image(lock, role, SETTINGS, runtime.files()).sbom == plan.sbom


def test_an_oci_layout_names_each_image_by_its_tag(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    images = []
    for role in ("scheduler", "worker"):
        image, _ = _image(role)
        layers = []
        for layer in image.layers:
            path = blobs / layer.blob.digest[7:]
            path.write_bytes(b"not really " + layer.blob.digest.encode())
            layers.append(dataclasses.replace(layer, path=path))
        images.append(dataclasses.replace(image, layers=tuple(layers)))
    layout = tmp_path / "layout"
    oci.write_layout(layout, images[:1])
    oci.write_layout(layout, images[1:])  # added; the scheduler stays
    index = json.loads((layout / "index.json").read_text())
    names = [m["annotations"][oci.REF_NAME] for m in index["manifests"]]
    assert names == [images[0].tag, images[1].tag]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for image in images:
        manifest = layout / "blobs" / "sha256" / image.digest[7:]
        assert manifest.read_bytes() == image.manifest


def test_an_index_in_a_layout_resolves_per_platform_as_a_base(tmp_path: Path) -> None:
    from envbuild.image.base import reference_digest, resolve
    from envbuild.image.blobs import BlobStore

    images = []
    for subdir in ("linux-64", "linux-aarch64"):
        platform = oci.platform_of(subdir)
        tar = tmp_path / f"{subdir}.tar"
        tar.write_bytes(f"a root for {subdir}".encode())
        blob = tmp_path / f"{subdir}.tar.gz"
        digest, size = oci.compress(tar, blob)
        diff_id = oci.digest_of(tar.read_bytes())
        layer = oci.Layer(oci.Descriptor(oci.LAYER_GZIP, digest, size), diff_id, path=blob)
        config = oci.document(
            {**platform.to_dict(), "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
        )
        manifest = oci.document(oci.image_manifest(oci.describe(config, oci.CONFIG), [layer.blob]))
        images.append(oci.Image(subdir, config, manifest, (layer,), platform))
    index = oci.Index("bookworm", tuple(images))
    layout = tmp_path / "layout"
    oci.write_layout(layout, [index])

    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert (entry["mediaType"], entry["digest"]) == (oci.INDEX, index.digest)
    assert entry["annotations"] == {oci.REF_NAME: "bookworm"}
    document = json.loads((layout / "blobs" / "sha256" / index.digest[7:]).read_bytes())
    assert [m["platform"] for m in document["manifests"]] == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    ]
    # As image.base, the index resolves to each platform's image; a third it lacks is named.
    reference = parse_base(f"oci:{layout}:bookworm")
    assert reference_digest(reference) == index.digest
    store = BlobStore(tmp_path / "blobs")
    for image in images:
        base = resolve(reference, index.digest, image.platform, store)
        assert base.digest == index.digest and base.layers[0].blob == image.layers[0].blob
        assert base.config["architecture"] == image.platform.architecture
    with pytest.raises(
        Exception, match=r"has no linux/ppc64le image \(it has: linux/amd64, linux/arm64\)"
    ):
        resolve(reference, index.digest, oci.platform_of("linux-ppc64le"), store)


# --- end to end: no engine to build or push, a real registry, a real engine to run -----------

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
NO_ENGINE = "unix:///nonexistent/docker.sock"
A100 = "NVIDIA A100-SXM4-40GB,8.0,GPU-a100"
T4 = "Tesla T4,7.5,GPU-t4"


@dataclass
class Pushed:
    """The example's three role images, pushed with no engine, once for this module."""

    setup: ContainerSetup
    folder: Path
    spec: Path
    env: dict[str, str]
    first: dict[str, Any]  # role -> the JSON outcome of the first push
    repository: str

    def envbuild(self, *args: object, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENVBUILD, *map(str, args)],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=900,
            env={**self.env, **extra},
        )

    def reference(self, role: str) -> str:
        return str(self.first[role]["reference"])

    def engine(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.setup.host)


def _outcomes(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    return {i["role"]: i for i in json.loads(done.stdout)["images"]}


def _pushed_spec(folder: Path, channel: Path, setup: ContainerSetup, repository: str) -> Path:
    return runnable_spec(folder, channel, edit=image_section(setup.base, repository))


@pytest.fixture(scope="module")
def pushed(
    runnable_channel: Path, containers: ContainerSetup, tmp_path_factory: pytest.TempPathFactory
) -> Pushed:
    folder = tmp_path_factory.mktemp("oci")
    # a repository of its own: other test modules push the example to the same registry
    repository = f"{containers.registry.address}/oci-dask-gpu"
    spec = _pushed_spec(folder, runnable_channel, containers, repository)
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE, "ENVBUILD_CACHE_DIR": str(folder / "cache")}
    subprocess.run([ENVBUILD, "lock", "-q", "-f", spec], cwd=folder, env=env, check=True)
    done = subprocess.run(
        [ENVBUILD, "image", "--all", "--push", "--json", "-f", spec],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    return Pushed(containers, folder, spec, env, _outcomes(done), repository)


@pytest.mark.slow
def test_pushed_with_no_engine_then_pulled_by_tag_and_digest_and_run(pushed: Pushed) -> None:
    client = pushed.engine()
    try:
        for role, outcome in pushed.first.items():
            assert outcome["status"] == "built" and outcome["digest"].startswith("sha256:")
            for reference in (outcome["reference"], f"{pushed.repository}@{outcome['digest']}"):
                image = client.images.pull(reference)
                assert image.attrs["Config"]["User"] == "1000:1000"
                said = client.containers.run(
                    reference,
                    ["python", "-c", "import os, dask; print(os.getuid(), dask.__version__)"],
                    network_mode="none",
                    environment={"ENVBUILD_GPU_CHECK": "skip"},
                    remove=True,
                )
                assert said.decode().split()[-2] == "1000", role
            labels = client.images.get(outcome["reference"]).labels
            assert labels["org.opencontainers.image.base.name"] == pushed.setup.base
            assert labels["org.opencontainers.image.base.digest"].startswith("sha256:")
    finally:
        client.close()
    # The base's layer was mounted from its repository on the same registry: never sent.
    assert pushed.first["client"]["mounted"] == 1


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(nvml.compiler() is not None, "gcc builds the fake NVML library")
    folder = nvml.build(tmp_path_factory.mktemp("nvml")).parent
    folder.chmod(0o755)  # mounted into images that run as uid 1000
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("gpu", "code"), [(T4, 22), (A100, 0)], ids=["T4", "A100"])
def test_the_pushed_workers_gpu_check(pushed: Pushed, fake_nvml: Path, gpu: str, code: int) -> None:
    client = pushed.engine()
    try:
        client.images.pull(pushed.reference("worker"))
        container = client.containers.run(
            pushed.reference("worker"),
            ["python", "-c", "print('started')"],
            detach=True,
            network_mode="none",
            volumes={str(fake_nvml): {"bind": "/opt/fake-nvml", "mode": "ro"}},
            environment={
                "LD_LIBRARY_PATH": "/opt/fake-nvml",
                "FAKE_NVML_DEVICES": gpu,
                "FAKE_NVML_DRIVER": "550.54.15",
                "FAKE_NVML_CUDA": "12040",
            },
        )
        try:
            status = container.wait(timeout=60)["StatusCode"]
            output = container.logs().decode()
        finally:
            container.remove(force=True)
    finally:
        client.close()
    assert status == code, output
    assert ("started" in output) == (code == 0)
    if code:
        assert "compute capability 7.5 < 8.0" in output


@pytest.mark.slow
def test_a_second_push_sends_nothing(pushed: Pushed) -> None:
    again = _outcomes(pushed.envbuild("image", "--all", "--push", "--json", "-f", pushed.spec))
    for role, outcome in again.items():
        assert (outcome["pushed"], outcome["bytes_sent"], outcome["mounted"]) == (0, 0, 0), role
        assert outcome["digest"] == pushed.first[role]["digest"]


@pytest.mark.slow
def test_another_machine_and_registry_get_the_same_digests_the_worker_only_its_layer(
    pushed: Pushed, runnable_channel: Path, tmp_path: Path
) -> None:
    with local_docker.registry() as other:
        repository = f"{other.address}/dask-gpu"
        spec = _pushed_spec(tmp_path, runnable_channel, pushed.setup, repository)
        env = {"ENVBUILD_CACHE_DIR": str(tmp_path / "cache")}  # staged again, from nothing
        assert pushed.envbuild("lock", "-q", "-f", spec, **env).returncode == 0
        one = pushed.envbuild("image", "--role", "scheduler", "--push", "--json", "-f", spec, **env)
        scheduler = _outcomes(one)["scheduler"]
        two = pushed.envbuild("image", "--role", "worker", "--push", "--json", "-f", spec, **env)
        worker = _outcomes(two)["worker"]
    assert scheduler["digest"] == pushed.first["scheduler"]["digest"]
    assert worker["digest"] == pushed.first["worker"]["digest"]  # the index of both
    # The base came from the first registry (another one: no mount); then only the role's.
    assert scheduler["pushed"] == 4 and scheduler["mounted"] == 0
    amd64, arm64 = worker["manifests"]
    assert (amd64["platforms"], arm64["platforms"]) == (["linux-64"], ["linux-aarch64"])
    assert (amd64["pushed"], amd64["already_in_registry"]) == (1, 3)
    assert amd64["bytes_sent"] < 200_000  # the role layer (and config), not the environment
    # The GH200 workers' image shares no layer with the x86 ones: its base, its packages.
    assert (arm64["pushed"], arm64["already_in_registry"], arm64["mounted"]) == (4, 0, 0)
    assert (
        worker["pushed"] == 5 and worker["bytes_sent"] == amd64["bytes_sent"] + arm64["bytes_sent"]
    )


@pytest.mark.slow
def test_an_oci_layout_that_skopeo_copies_and_an_engine_runs(
    pushed: Pushed, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    written = _outcomes(
        pushed.envbuild("image", "--all", "--oci", layout, "--json", "-f", pushed.spec)
    )
    index = json.loads((layout / "index.json").read_text())
    tags = {m["annotations"][oci.REF_NAME]: m["digest"] for m in index["manifests"]}
    for role, outcome in written.items():
        tag = outcome["reference"].rsplit(":", 1)[1]
        assert tags[tag] == outcome["digest"] == pushed.first[role]["digest"]
    tag = pushed.reference("scheduler").rsplit(":", 1)[1]
    target = f"{pushed.setup.registry.address}/copied:{tag}"
    copied = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{target}",
        ],
        capture_output=True,
        text=True,
    )
    assert copied.returncode == 0, copied.stderr
    client = pushed.engine()
    try:
        client.images.pull(target)
        said = client.containers.run(
            target,
            ["dask", "scheduler", "--version"],
            network_mode="none",
            environment={"ENVBUILD_GPU_CHECK": "skip"},
            remove=True,
        )
    finally:
        client.close()
    assert "version" in said.decode()


@pytest.mark.slow
def test_load_puts_the_same_image_into_the_engine(pushed: Pushed) -> None:
    host = {"DOCKER_HOST": pushed.setup.host}
    loaded = _outcomes(
        pushed.envbuild("image", "--role", "client", "--json", "-f", pushed.spec, **host)
    )
    assert loaded["client"]["status"] in ("built", "up-to-date")
    client = pushed.engine()
    try:
        image = client.images.get(pushed.reference("client"))
        pulled = client.images.pull(f"{pushed.repository}@{pushed.first['client']['digest']}")
        assert image.id == pulled.id  # the same config: the same image
        said = client.containers.run(
            pushed.reference("client"),
            ["python", "-c", "print(1 + 1)"],
            remove=True,
            network_mode="none",
        )
    finally:
        client.close()
    assert said.decode().split()[-1] == "2"


def _read_from_image(pushed: Pushed, reference: str, path: str) -> dict[str, bytes]:
    client = pushed.engine()
    client.images.pull(reference)
    container = client.containers.create(reference, "true")
    try:
        stream = io.BytesIO(b"".join(container.get_archive(path)[0]))
    finally:
        container.remove()
        client.close()
    with tarfile.open(fileobj=stream) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize("role", ["client", "worker"])
def test_the_sbom_in_the_image_lists_its_conda_meta_and_is_its_referrer(
    pushed: Pushed, role: str
) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from envbuild.image.remote import find_referrers, open_registry

    reference = pushed.reference(role)
    shipped = _read_from_image(pushed, reference, "/opt/envbuild/sbom.cdx.json")["sbom.cdx.json"]
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(shipped.decode()) is None
    records = _read_from_image(pushed, reference, "/opt/env/conda-meta")
    installed = [json.loads(data) for name, data in records.items() if name.endswith(".json")]
    target = f"{'cpu' if role == 'client' else 'cuda-12.4'}/linux-64"
    lock = {
        (p["name"], p["version"], p["build"]): p["sha256"]
        for p in json.loads((pushed.folder / "envbuild.lock").read_text())["packages"]
        if target in p["targets"]
    }
    libraries = [c for c in json.loads(shipped)["components"] if c["type"] == "library"]
    components = [c for c in libraries if c["purl"].startswith("pkg:conda/")]
    # The example's PyPI wheel (xarray): what the image's record of wheels says, by sha256.
    wheels = _read_from_image(pushed, reference, "/opt/env/etc/envbuild/wheels.json")
    recorded = json.loads(wheels["wheels.json"])
    in_sbom = {
        (c["name"], c["version"], c["hashes"][0]["content"])
        for c in libraries
        if c["purl"].startswith("pkg:pypi/")
    }
    assert in_sbom == {(n, w["version"], w["sha256"]) for n, w in recorded.items()} != set()
    for record in installed:
        key = (record["name"], record["version"], record["build"])
        matching = [
            c for c in components if (c["name"], c["version"], _property(c, "conda:build")) == key
        ]
        assert len(matching) == 1, key
        assert matching[0]["hashes"][0]["content"] == lock[key]
    assert len(components) == len(installed)
    exported = pushed.envbuild("export", "--format", "sbom", "--role", role, "-f", pushed.spec)
    assert exported.returncode == 0 and exported.stdout.encode() == shipped
    # The artifact that refers to the image (the amd64 one the engine pulled, of the worker's
    # index), found from the image's digest alone.
    outcome = pushed.first[role]
    digest = outcome["manifests"][0]["digest"] if outcome["manifests"] else outcome["digest"]
    referrers = find_referrers(pushed.repository, digest)
    assert [r.artifact_type for r in referrers] == ["application/vnd.cyclonedx+json"]
    blob = pushed.folder / f"sbom-{role}.json"
    with open_registry(pushed.repository) as registry:
        body, _, _ = registry.get_manifest(referrers[0].digest, (oci.MANIFEST,))
        artifact = json.loads(body)
        assert artifact["subject"]["digest"] == digest
        registry.get_blob(artifact["layers"][0]["digest"], blob)
    assert blob.read_bytes() == shipped
    # Each platform's image has its own SBOM, of its own packages.
    for image in outcome["manifests"][1:]:
        (referrer,) = find_referrers(pushed.repository, image["digest"])
        with open_registry(pushed.repository) as registry:
            body, _, _ = registry.get_manifest(referrer.digest, (oci.MANIFEST,))
            sbom = pushed.folder / f"sbom-{role}-{image['platforms'][0]}.json"
            registry.get_blob(json.loads(body)["layers"][0]["digest"], sbom)
        exported = pushed.envbuild(
            "export", "--format", "sbom", "--role", role, "--platform", image["platforms"][0],
            "-f", pushed.spec,
        )  # fmt: skip
        assert exported.returncode == 0 and exported.stdout.encode() == sbom.read_bytes()
        subdirs = {
            _property(c, "conda:subdir") for c in json.loads(sbom.read_bytes())["components"]
        }
        assert "linux-aarch64" in subdirs and "linux-64" not in subdirs


def _property(component: dict[str, Any], name: str) -> str | None:
    return next((p["value"] for p in component["properties"] if p["name"] == name), None)
