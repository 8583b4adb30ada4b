"""The envbuild spec: one file that declares the cluster's roles, their hardware and ONE
environment.

The model is strict (unknown keys are errors); ``envbuild.spec.file`` reads a file into it and
words every error with its file and line. The JSON Schema committed under
``envbuild/schema/`` is generated from these models (``envbuild schema``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from envbuild.spec import ROLES
from envbuild.spec.fields import (
    CUDA_MAJOR,
    RESERVED_PACKAGES,
    BaseText,
    ChannelText,
    ComputeCapabilityText,
    CpuText,
    CudaVersion,
    GpuPypiRequirementText,
    MatchSpecText,
    MemoryText,
    Platform,
    PrefixText,
    PypiIndexText,
    PypiRequirementText,
    RepositoryText,
    UserText,
    VersionText,
)
from envbuild.spec.matchspec import package_name
from envbuild.spec.platforms import GPU_PLATFORMS
from envbuild.spec.yamldoc import Loc, dotted, shown

#: Entries of dependencies and gpu-dependencies.
MAX_DEPENDENCIES = 1000


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, alias_generator=_kebab, populate_by_name=True
    )


class GpuRequirement(_Strict):
    """The GPU a role needs: the CUDA runtime of its image and the hardware it must land on."""

    cuda: CudaVersion = Field(
        description='CUDA runtime version of the role\'s variant, MAJOR.MINOR (e.g. "12.4").'
    )
    compute_capability: ComputeCapabilityText | None = Field(
        default=None,
        description='Compute capability every visible GPU must meet, e.g. ">=8.0" (A100).',
    )
    count: int = Field(default=1, ge=1, description="Minimum number of visible GPUs.")


def _gpu_flag(value: Any) -> Any:
    if value is False or value is None:
        return None
    if value is True:
        raise ValueError('write the GPU the role needs instead of true, e.g. {cuda: "12.4"}')
    return value


def _unique(values: list[str]) -> list[str]:
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{shown(value)} is listed twice")
        seen.add(value)
    return values


class Resources(_Strict):
    """What a role's pod asks Kubernetes for (``envbuild deploy``). Not part of the lock."""

    cpu: CpuText | None = Field(
        default=None, description='CPUs per pod, e.g. "8" or "500m" (requests and limits).'
    )
    memory: MemoryText | None = Field(
        default=None, description='Memory per pod, e.g. "64Gi" (requests and limits).'
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Dask worker threads (default: the whole CPUs of cpu; without cpu, "
        "every CPU the container sees).",
    )


class Role(_Strict):
    """One role of the cluster."""

    platforms: list[Platform] | None = Field(
        default=None,
        min_length=1,
        description="Platforms to lock this role for (default: the top-level platforms).",
    )
    gpu: Annotated[GpuRequirement | None, BeforeValidator(_gpu_flag)] = Field(
        default=None, description="false for a CPU role, or the GPU it needs."
    )
    resources: Resources | None = Field(
        default=None, description="CPU, memory and threads of the role's pods (deploy only)."
    )

    @field_validator("platforms")
    @classmethod
    def _no_duplicates(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _unique(values)


class Roles(_Strict):
    """The three roles of a Dask cluster."""

    client: Role
    scheduler: Role
    worker: Role


class SystemRequirements(_Strict):
    """Declared virtual packages (the oldest systems the environment must run on)."""

    linux: VersionText = Field(default="5.10", description="__linux: Linux kernel version.")
    glibc: VersionText = Field(default="2.28", description="__glibc: glibc version.")
    macos: VersionText = Field(default="11.0", description="__osx: macOS version.")


class ImageSettings(_Strict):
    """How role images are built (used by ``envbuild image``)."""

    base: BaseText = Field(
        default="debian:bookworm-slim",
        description="Base image: REGISTRY/PATH[:TAG][@sha256:...], or oci:PATH[:TAG].",
    )
    repository: RepositoryText | None = Field(
        default=None,
        description="Repository to tag and push to, e.g. ghcr.io/org/dask-gpu (no tag).",
    )
    prefix: PrefixText = Field(
        default="/opt/env",
        description="Where the environment lives in the image: a folder of its own.",
    )
    user: UserText = Field(default="dask", description="The user the image runs as (never root).")
    uid: int = Field(
        default=1000, ge=1, le=2**31 - 1, description="Numeric user id (never 0, root)."
    )


class Spec(_Strict):
    """An envbuild spec (envbuild.yaml)."""

    model_config = ConfigDict(title="envbuild spec")

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64, description="Environment name."
    )
    channels: list[ChannelText] = Field(
        min_length=1,
        max_length=32,
        description="Channel names, URLs, or paths relative to this file.",
    )
    platforms: list[Platform] = Field(min_length=1, description="Platforms every role locks.")
    dependencies: list[MatchSpecText] = Field(
        min_length=1,
        max_length=MAX_DEPENDENCIES,
        description="The ONE environment: every role gets exactly these.",
    )
    gpu_dependencies: list[MatchSpecText] = Field(
        default_factory=list,
        max_length=MAX_DEPENDENCIES,
        description="Added to CUDA variants only.",
    )
    pypi_dependencies: list[PypiRequirementText] = Field(
        default_factory=list,
        max_length=MAX_DEPENDENCIES,
        description="PyPI requirements (PEP 508), installed as wheels after the conda packages in "
        "every role; a distribution a conda package provides is never replaced.",
    )
    gpu_pypi_dependencies: list[GpuPypiRequirementText] = Field(
        default_factory=list,
        max_length=MAX_DEPENDENCIES,
        description="PyPI requirements added to CUDA variants only; "
        + CUDA_MAJOR
        + ' in a name is the variant\'s CUDA major ("cupy-cuda{cuda_major}x").',
    )
    pypi_index_urls: list[PypiIndexText] | None = Field(
        default=None,
        max_length=32,
        description="PyPI indexes (PEP 503/691), URLs or paths relative to this file; default "
        "https://pypi.org/simple, [] for none (find-links only). No credentials.",
    )
    pypi_find_links: list[PypiIndexText] = Field(
        default_factory=list,
        max_length=32,
        description="Folders or pages of wheels (pip's --find-links), URLs or paths relative to "
        "this file. No credentials.",
    )
    allow_platform_divergence: list[str] = Field(
        default_factory=list,
        description="Packages whose version may differ between platforms.",
    )
    system_requirements: SystemRequirements = Field(default_factory=SystemRequirements)
    roles: Roles
    image: ImageSettings = Field(default_factory=ImageSettings)

    @field_validator(
        "platforms",
        "channels",
        "dependencies",
        "gpu_dependencies",
        "pypi_dependencies",
        "gpu_pypi_dependencies",
        "pypi_find_links",
    )
    @classmethod
    def _no_duplicates(cls, values: list[str]) -> list[str]:
        return _unique(values)

    @field_validator("pypi_index_urls")
    @classmethod
    def _no_duplicate_indexes(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _unique(values)

    @property
    def uses_pypi(self) -> bool:
        """Whether the spec has PyPI requirements at all."""
        return bool(self.pypi_dependencies or self.gpu_pypi_dependencies)

    def role(self, name: str) -> Role:
        """The role called ``name``."""
        role: Role = getattr(self.roles, name)
        return role

    def role_platforms(self, name: str) -> list[str]:
        """Platforms role ``name`` is locked for."""
        return list(self.role(name).platforms or self.platforms)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the spec, as committed in envbuild/schema/: the models' fields, and
    what the loader checks beyond them that a schema can say (``gpu: false``, no GPU role on
    macOS). Two rules stay the loader's: a package named twice in one list under two
    spellings (``numpy`` and ``numpy >=1``), and the grammar of a PyPI requirement's
    environment markers (after ``;``)."""
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    role = schema["$defs"]["Role"]["properties"]
    role["gpu"]["anyOf"].append({"const": False})
    for name in (
        "platforms",
        "channels",
        "dependencies",
        "gpu-dependencies",
        "pypi-dependencies",
        "gpu-pypi-dependencies",
        "pypi-find-links",
    ):
        schema["properties"][name]["uniqueItems"] = True
    schema["properties"]["pypi-index-urls"]["anyOf"][0]["uniqueItems"] = True
    role["platforms"]["anyOf"][0]["uniqueItems"] = True
    schema["allOf"] = [_no_gpu_on_macos(name) for name in ROLES]
    return schema


def _no_gpu_on_macos(role: str) -> dict[str, Any]:
    """A role with a GPU is locked for no macOS platform (its own, or the top-level ones)."""
    macos = {"contains": {"type": "string", "pattern": "^osx-"}}
    has_gpu = {"required": ["gpu"], "properties": {"gpu": {"type": "object"}}}
    own = {"required": ["platforms"], "properties": {"platforms": {"type": "array"}}}
    return {
        "if": {"required": ["roles"], "properties": {"roles": {"properties": {role: has_gpu}}}},
        "then": {
            "properties": {
                "roles": {"properties": {role: {"properties": {"platforms": {"not": macos}}}}}
            },
            "if": {"properties": {"roles": {"properties": {role: {"not": own}}}}},
            "then": {"properties": {"platforms": {"not": macos}}},
        },
    }


#: Spec fields that do not decide the lock.
_NOT_LOCKED: Any = {"image": True, "roles": {r: {"resources"} for r in ROLES}}
#: PyPI fields: they decide the lock, and are left out of its hash while unset, so that a spec
#: without them keeps the hash (and its lock stays current) it had before they existed.
_PYPI_FIELDS = (
    "pypi-dependencies",
    "gpu-pypi-dependencies",
    "pypi-index-urls",
    "pypi-find-links",
)


def spec_hash(spec: Spec) -> str:
    """sha256 of the canonical JSON of what decides the lock."""
    content = spec.model_dump(mode="json", by_alias=True, exclude=_NOT_LOCKED)
    for key in _PYPI_FIELDS:
        # pypi-index-urls: [] means "no index", unlike unset
        unset: list[str] | None = None if key == "pypi-index-urls" else []
        if content[key] == unset:
            del content[key]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def semantic_problems(spec: Spec) -> Iterator[tuple[Loc, str]]:
    """Rules that span several fields.

    A gpu-dependency may name a package of ``dependencies`` again to pick its CUDA build in
    CUDA variants (``pytorch * cuda*``); within one list a name appears once.
    """
    for field in ("dependencies", "gpu-dependencies"):
        names: dict[str, Loc] = {}
        for index, text in enumerate(getattr(spec, _snake(field))):
            name = package_name(text)
            loc: Loc = (field, index)
            if name is None:  # rejected by the field validator already
                continue
            if name in RESERVED_PACKAGES:
                yield loc, (f"'{name}' is chosen per variant from roles.*.gpu.cuda; remove it here")
            if name in names:
                yield loc, f"'{name}' is already required at {dotted(names[name])}"
            names[name] = loc
    for role_name in ROLES:
        role = spec.role(role_name)
        if role.gpu is None:
            continue
        for platform in spec.role_platforms(role_name):
            if platform not in GPU_PLATFORMS:
                where: Loc = ("roles", role_name, "platforms") if role.platforms else ("platforms",)
                yield where, f"role '{role_name}' has a GPU but {platform} has no CUDA"


def _snake(name: str) -> str:
    return name.replace("-", "_")
