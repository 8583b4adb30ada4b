"""What a role image is, decided from the lock alone: pure functions, no engine, no files.

A role has one image per Linux platform it is locked for (``linux-64``, ``linux-aarch64``):
a role of one platform is tagged with that image's manifest; a role of several is tagged
with an OCI image index of its images (``RolePlan``), each of which also has a tag of its own
(``...-amd64``, ``...-arm64``) that a build of one platform pushes. Layers of each image,
bottom to top:

1. the spec's base image (this platform's, from an index);
2. ``shared``: the packages every variant of the lock holds (the same name and version; on
   this platform the same build and sha256 in each target), so the images of every role of
   one lock and platform carry the same bytes there; and the PyPI wheels every variant holds
   by the same rule (the same wheel, by sha256, on this platform);
3. ``variant``: this variant's other packages (the CUDA runtime, the gpu-dependencies, what
   a CPU build pulls in), its other wheels (a cupy-cudaXXx, what only it needs), the
   environment's stamp and its record of wheels;
4. ``role``: the role file the GPU check reads, the entrypoint, the check itself, the
   image's SBOM (``envbuild.image.sbom``), the home folder of the image's user.

envbuild writes each layer as a reproducible tar (``envbuild.image.staging``); identical content
gives identical layer digests, so a registry stores the shared layer once, and the scheduler
and worker of one variant share every environment layer. The tag is content-addressed: it
changes exactly when something that goes into the image changes, so an unchanged lock builds
and pushes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envbuild import gpucheck
from envbuild.files.resources import read_template
from envbuild.image.oci import PLATFORMS
from envbuild.lock.exports import render_role_file
from envbuild.lock.lockfile import Lock, LockedPackage, content_digest
from envbuild.lock.wheels import LockedWheel

#: The conda platforms images are built for, in the order of an index's entries.
IMAGE_PLATFORMS = tuple(PLATFORMS)
#: Bump when the image layout changes: every tag changes with it.
IMAGE_FORMAT = "5"
ENVBUILD_DIR = "/opt/envbuild"
ROLE_FILE = "/etc/envbuild/role.json"
#: The arguments that load the Dask guard into a scheduler or worker.
GUARD_ARGS = ("--preload", "envbuild.dask")
#: What a role's image runs when given no command (the Dask guard preloaded).
DEFAULT_COMMANDS: Mapping[str, tuple[str, ...]] = {
    "client": ("python",),
    "scheduler": ("dask", "scheduler", *GUARD_ARGS),
    "worker": ("dask", "worker", *GUARD_ARGS),
}
LABEL_PREFIX = "io.envbuild"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageSettings:
    """The spec's ``image:`` section, as the image code needs it."""

    base: str
    repository: str
    prefix: str = "/opt/env"
    user: str = "dask"
    uid: int = 1000
    #: the spec names no image.repository: images stay in the local engine
    local: bool = False
    #: the digest of the base's manifest for this platform, when it has been resolved
    #: (``envbuild.image.base``): in the labels, the SBOM, the Dockerfile's FROM and the tag,
    #: so a moved base tag gives new images
    base_digest: str | None = None

    @property
    def base_from(self) -> str:
        """The base as a Dockerfile's FROM names it: pinned by digest when known."""
        if self.base_digest and "@" not in self.base and not self.base.startswith("oci:"):
            return f"{self.base}@{self.base_digest}"
        return self.base


@dataclass(frozen=True)
class LayerSplit:
    """Which packages and PyPI wheels of a variant go into the shared layer and which into
    its own."""

    shared: tuple[LockedPackage, ...]
    variant: tuple[LockedPackage, ...]
    shared_wheels: tuple[LockedWheel, ...] = ()
    variant_wheels: tuple[LockedWheel, ...] = ()


def _identity(package: LockedPackage) -> tuple[str, str, str, str]:
    return (package.name, package.version, package.build, package.sha256)


def _wheel_identity(wheel: LockedWheel) -> tuple[str, str, str]:
    return (wheel.name, wheel.version, wheel.sha256)


def _split_wheels(
    lock: Lock, variant: str, platform: str
) -> tuple[tuple[LockedWheel, ...], tuple[LockedWheel, ...]]:
    """The wheels of ``variant`` on ``platform`` that go into the shared layer, and the rest:
    the rule of the packages (every variant holds the name and version; on this platform,
    every target holds the same wheel)."""
    targets = [t for t in lock.targets if t.platform == platform]
    common = set.intersection(*({_wheel_identity(w) for w in t.wheels} for t in targets))
    held: dict[str, set[tuple[str, str]]] = {}
    for target in lock.targets:
        held.setdefault(target.variant, set()).update((w.name, w.version) for w in target.wheels)
    everywhere = set.intersection(*held.values())
    mine = next(t for t in targets if t.variant == variant)
    shared = tuple(
        w for w in mine.wheels if _wheel_identity(w) in common and (w.name, w.version) in everywhere
    )
    return shared, tuple(w for w in mine.wheels if w not in shared)


def image_platforms(lock: Lock, role: str) -> tuple[str, ...]:
    """The platforms ``role`` has images for: its Linux ones, in ``IMAGE_PLATFORMS`` order."""
    locked = lock.role(role).platforms
    return tuple(p for p in IMAGE_PLATFORMS if p in locked)


def split_layers(lock: Lock, variant: str, platform: str = "linux-64") -> LayerSplit:
    """The shared packages and ``variant``'s own on ``platform``. Shared: in every variant of
    the lock (the same name and version, whatever platform a variant runs on) and, on this
    platform, byte for byte in each target. So the images of the variants of one platform
    share the layer, and a platform only one variant runs on (the GH200 workers' arm64)
    splits as the others do: the CUDA stack apart, a layer that stays the same when another
    variant comes to that platform."""
    targets = [t for t in lock.targets if t.platform == platform]
    common = set.intersection(*({_identity(p) for p in t.packages} for t in targets))
    held: dict[str, set[tuple[str, str]]] = {}
    for target in lock.targets:
        held.setdefault(target.variant, set()).update((p.name, p.version) for p in target.packages)
    everywhere = set.intersection(*held.values())
    mine = next(t for t in targets if t.variant == variant)
    shared = tuple(
        p for p in mine.packages if _identity(p) in common and (p.name, p.version) in everywhere
    )
    own = tuple(p for p in mine.packages if p not in shared)
    return LayerSplit(shared, own, *_split_wheels(lock, variant, platform))


@dataclass(frozen=True)
class ImagePlan:
    """One role image: where it comes from, what goes into it, and its name."""

    role: str
    variant: str
    settings: ImageSettings
    split: LayerSplit
    labels: Mapping[str, str]
    dockerfile: str
    entrypoint: str
    role_file: str
    digest: str
    #: what the Dockerfile sets (ENV) and runs by default (CMD)
    environment: Mapping[str, str]
    command: tuple[str, ...]
    #: the image's SBOM (CycloneDX JSON, envbuild.image.sbom), shipped in the role layer
    sbom: str = ""
    #: the conda platform the image is for
    platform: str = "linux-64"
    #: one of the images of a role's index (the role is locked for several platforms)
    indexed: bool = False

    @property
    def architecture(self) -> str:
        """``amd64``, ``arm64``: the OCI architecture of ``platform``."""
        return PLATFORMS[self.platform].architecture

    @property
    def tag(self) -> str:
        """``worker-cuda-12.4-<12 hex>``: role, variant and a digest of everything inside;
        ``-arm64`` after it for one image of a role's index."""
        tag = f"{self.role}-{self.variant}-{self.digest.removeprefix('sha256:')[:12]}"
        return f"{tag}-{self.architecture}" if self.indexed else tag

    @property
    def reference(self) -> str:
        return f"{self.settings.repository}:{self.tag}"


@dataclass(frozen=True)
class RolePlan:
    """A role's images, one per platform, and the one tag a cluster pulls: the image's own
    for a role of one platform, an OCI image index of them for a role of several."""

    role: str
    variant: str
    settings: ImageSettings
    images: tuple[ImagePlan, ...]

    @property
    def is_index(self) -> bool:
        return len(self.images) > 1

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(image.platform for image in self.images)

    def image(self, platform: str) -> ImagePlan:
        return next(image for image in self.images if image.platform == platform)

    @property
    def digest(self) -> str:
        """The image's digest; for an index, a digest of its images' (so of everything)."""
        if not self.is_index:
            return self.images[0].digest
        digest = hashlib.sha256(f"{IMAGE_FORMAT}\0index\0".encode())
        for image in self.images:
            digest.update(f"{image.platform} {image.digest}\n".encode())
        return "sha256:" + digest.hexdigest()

    @property
    def tag(self) -> str:
        """The role's tag: its image's, or ``worker-cuda-12.4-<12 hex>`` naming the index."""
        if not self.is_index:
            return self.images[0].tag
        return f"{self.role}-{self.variant}-{self.digest.removeprefix('sha256:')[:12]}"

    @property
    def reference(self) -> str:
        return f"{self.settings.repository}:{self.tag}"


def buildable_roles(lock: Lock) -> tuple[list[str], dict[str, str]]:
    """Roles with a Linux target, and why each other role has no image."""
    roles, skipped = [], {}
    for role in lock.roles:
        if image_platforms(lock, role.name):
            roles.append(role.name)
        else:
            platforms = ", ".join(role.platforms)
            skipped[role.name] = (
                f"locked for {platforms} only; images are built for {', '.join(IMAGE_PLATFORMS)}"
            )
    return roles, skipped


def image_labels(
    lock: Lock, role: str, settings: ImageSettings, lock_digest: str, platform: str = "linux-64"
) -> dict[str, str]:
    """OCI labels and envbuild's own, sorted by key. Not the spec's hash: a change to one
    role's settings must not rebuild the images of the others."""
    locked = lock.role(role)
    labels = {
        "org.opencontainers.image.title": f"{lock.name}-{role}",
        "org.opencontainers.image.description": (
            f"The {role} of the {lock.name} Dask cluster, from envbuild.lock {lock_digest[:19]}"
        ),
        "org.opencontainers.image.base.name": settings.base,
        **(
            {"org.opencontainers.image.base.digest": settings.base_digest}
            if settings.base_digest
            else {}
        ),
        f"{LABEL_PREFIX}.lock": lock_digest,
        f"{LABEL_PREFIX}.role": role,
        f"{LABEL_PREFIX}.variant": locked.variant,
        f"{LABEL_PREFIX}.platform": platform,
        f"{LABEL_PREFIX}.cuda": locked.cuda or "none",
        f"{LABEL_PREFIX}.compute-capability": locked.compute_capability or "any",
        f"{LABEL_PREFIX}.gpus": str(locked.gpus),
    }
    return dict(sorted(labels.items()))


def _environment(
    lock: Lock, role: str, settings: ImageSettings, lock_digest: str
) -> dict[str, str]:
    locked = lock.role(role)
    home = f"/home/{settings.user}"
    environment = {
        "PATH": f"{settings.prefix}/bin:{SYSTEM_PATH}",
        "CONDA_PREFIX": settings.prefix,
        "ENVBUILD_ROLE": role,
        "ENVBUILD_VARIANT": locked.variant,
        "ENVBUILD_LOCK": lock_digest,
        "ENVBUILD_ROLE_FILE": ROLE_FILE,
        "PYTHONPATH": ENVBUILD_DIR,  # the GPU check and the Dask guard (envbuild.env.runtime)
        "HOME": home,
        "USER": settings.user,
        "LOGNAME": settings.user,
    }
    if locked.cuda:
        # The NVIDIA container runtime mounts the driver only when these are set.
        environment["NVIDIA_VISIBLE_DEVICES"] = "all"
        environment["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
        environment.update(nvidia_requirements(locked.cuda, locked.compute_capability))
    return environment


#: The constraint language of libnvidia-container (NVIDIA_REQUIRE_*): "=" for equality.
_NVIDIA_OPERATORS = {">=": ">=", "<=": "<=", ">": ">", "<": "<", "==": "=", "!=": "!="}


def nvidia_requirements(cuda: str, compute_capability: str | None) -> dict[str, str]:
    """``NVIDIA_REQUIRE_*`` for the NVIDIA container runtime, which refuses to start the
    container on a node that does not meet them (before envbuild's own check runs): a driver
    that runs the CUDA runtime's major (minor-version compatibility, as the GPU check
    judges: ``cuda>=12.0`` and the major's oldest driver branch), and every GPU's compute
    capability (``arch``; clauses within one variable separated by commas are ANDed)."""
    major, _ = gpucheck.parse_cuda_version(cuda)
    floor = gpucheck.DRIVER_FLOOR_BY_CUDA_MAJOR[major]
    found = {"NVIDIA_REQUIRE_CUDA": f"cuda>={major}.0,driver>={floor}"}
    if compute_capability:
        clauses = gpucheck.ComputeCapability.parse(compute_capability).clauses
        found["NVIDIA_REQUIRE_ARCH"] = ",".join(
            f"arch{_NVIDIA_OPERATORS[op]}{bound[0]}.{bound[1]}" for op, bound in clauses
        )
    return found


def _quoted(value: str) -> str:
    return json.dumps(value)


LAYER_FILES = ("shared.tar", "variant.tar", "role.tar")


def render_dockerfile(
    lock: Lock,
    role: str,
    settings: ImageSettings,
    labels: Mapping[str, str],
    environment: Mapping[str, str],
    command: Sequence[str],
    lock_digest: str,
    *,
    base: str | None = None,
    layers: Sequence[str] = LAYER_FILES,
) -> str:
    """The role's Dockerfile (templates/Dockerfile): ADD of the layer tars, ENV, LABEL, a
    numeric USER, the entrypoint and the role's default command."""
    continuation = " \\\n    "
    return string.Template(read_template("Dockerfile")).substitute(
        lock_name=lock.name,
        lock_digest=lock_digest[:19],
        role=role,
        variant=lock.role(role).variant,
        base=base or settings.base_from,
        adds="\n".join(f"ADD {layer} /" for layer in layers),
        env=continuation.join(f"{k}={_quoted(v)}" for k, v in environment.items()),
        labels=continuation.join(f"{_quoted(k)}={_quoted(v)}" for k, v in labels.items()),
        uid=settings.uid,
        home=f"/home/{settings.user}",
        envbuild_dir=ENVBUILD_DIR,
        command=json.dumps(list(command)),
    )


def render_entrypoint(role: str, variant: str, settings: ImageSettings) -> str:
    """The entrypoint (templates/entrypoint.sh): activate, check the GPU, exec. Every value
    is validated by the spec and quoted for the shell all the same."""
    return string.Template(read_template("entrypoint.sh")).substitute(
        role=shlex.quote(role),
        variant=shlex.quote(variant),
        prefix=shlex.quote(settings.prefix),
        role_file=shlex.quote(ROLE_FILE),
        envbuild_dir=shlex.quote(ENVBUILD_DIR),
    )


def image_sbom(
    lock: Lock,
    role: str,
    settings: ImageSettings,
    split: LayerSplit,
    lock_digest: str,
    platform: str = "linux-64",
) -> str:
    """The role image's SBOM (envbuild.image.sbom): its packages, layer by layer, and the
    base by digest."""
    from envbuild.image.base import parse_base
    from envbuild.image.sbom import render_sbom

    base = parse_base(settings.base)
    return render_sbom(
        name=lock.name,
        role=role,
        variant=lock.role(role).variant,
        platform=platform,
        lock_digest=lock_digest,
        layers={"shared": split.shared, "variant": split.variant},
        wheels={"shared": split.shared_wheels, "variant": split.variant_wheels},
        base=settings.base,
        base_digest=settings.base_digest,
        base_repository=base.repository,
        base_tag=base.tag,
    )


def plan_image(
    lock: Lock,
    role: str,
    settings: ImageSettings,
    runtime: Mapping[str, bytes],
    platform: str | None = None,
) -> ImagePlan:
    """Everything about ``role``'s image for ``platform`` (by default its first image
    platform) that the lock and the settings decide."""
    locked = lock.role(role)
    platforms = image_platforms(lock, role)
    platform = platform or (platforms[0] if platforms else "linux-64")
    lock_digest = content_digest(lock)
    labels = image_labels(lock, role, settings, lock_digest, platform)
    environment = _environment(lock, role, settings, lock_digest)
    command = DEFAULT_COMMANDS[role]
    dockerfile = render_dockerfile(lock, role, settings, labels, environment, command, lock_digest)
    entrypoint = render_entrypoint(role, locked.variant, settings)
    role_file = render_role_file(lock, role)
    split = split_layers(lock, locked.variant, platform)
    sbom = image_sbom(lock, role, settings, split, lock_digest, platform)
    digest = hashlib.sha256()
    for part in (IMAGE_FORMAT, dockerfile, entrypoint, role_file, sbom):
        digest.update(part.encode())
        digest.update(b"\0")
    for name, content in sorted(runtime.items()):
        digest.update(name.encode() + b"\0" + content + b"\0")
    for layer in (split.shared, split.variant):
        for package in layer:
            digest.update(" ".join(_identity(package)).encode() + b"\n")
        digest.update(b"\0")
    if split.shared_wheels or split.variant_wheels:  # a lock without wheels keeps its tags
        for wheels in (split.shared_wheels, split.variant_wheels):
            for wheel in wheels:
                digest.update(" ".join(_wheel_identity(wheel)).encode() + b"\n")
            digest.update(b"\0")
    digest.update(f"{settings.prefix} {settings.user} {settings.uid}".encode())
    return ImagePlan(
        role=role,
        variant=locked.variant,
        settings=settings,
        split=split,
        labels=labels,
        dockerfile=dockerfile,
        entrypoint=entrypoint,
        role_file=role_file,
        digest="sha256:" + digest.hexdigest(),
        environment=environment,
        command=tuple(command),
        sbom=sbom,
        platform=platform,
        indexed=len(platforms) > 1,
    )


def plan_role(
    lock: Lock, role: str, settings: ImageSettings, runtime: Mapping[str, bytes]
) -> RolePlan:
    """``role``'s images, one per platform it is locked for, and its tag."""
    images = tuple(
        plan_image(lock, role, settings, runtime, platform)
        for platform in image_platforms(lock, role)
    )
    return RolePlan(role, lock.role(role).variant, settings, images)
