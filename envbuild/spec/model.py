"""The envbuild spec: one file that declares the cluster's roles, their hardware and ONE
environment.

The model is strict (unknown keys are errors); ``envbuild.spec.file`` reads a file into it and
words every error with its file and line. The JSON Schema committed under
``envbuild/schema/`` is generated from these models (``envbuild schema``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from envbuild import gpucheck
from envbuild.spec import ROLES
from envbuild.spec.channels import CREDENTIALS_MESSAGE, carries_credentials
from envbuild.spec.matchspec import package_name
from envbuild.spec.platforms import GPU_PLATFORMS, PLATFORMS
from envbuild.spec.yamldoc import Loc, dotted, shown

#: Packages envbuild chooses per variant; a spec must not pin them itself.
RESERVED_PACKAGES = frozenset({"cuda-version", "__cuda"})
#: Entries of dependencies and gpu-dependencies.
MAX_DEPENDENCIES = 1000


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, alias_generator=_kebab, populate_by_name=True
    )


# --- field types ---


def _match_spec(text: str) -> str:
    # Only the cheap part here; SpecFile.check_match_specs() parses fully with the solver.
    if package_name(text) is None:
        raise ValueError(f"{shown(text)} names no package")
    return text


def _platform(text: str) -> str:
    if text not in PLATFORMS:
        raise ValueError(f"unknown platform {shown(text)} (known: {', '.join(PLATFORMS)})")
    return text


def _cuda(text: str) -> str:
    gpucheck.parse_cuda_version(text)
    return text


def _compute_capability(text: str) -> str:
    gpucheck.ComputeCapability.parse(text)
    return text


def _version(text: str) -> str:
    # Components beyond nine digits overflow the solver's integers.
    if not re.fullmatch(r"\d{1,9}(\.\d{1,9}){0,4}", text):
        raise ValueError(f'{shown(text)} is not a version like "2.28"')
    return text


def _channel(text: str) -> str:
    if not text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{shown(text)} is not a channel name, URL or path")
    if carries_credentials(text):
        raise ValueError(CREDENTIALS_MESSAGE)  # never echo the secret itself
    return text


# Docker's reference grammar: [HOST[:PORT]/]PATH, lowercase path components, no tag.
_REPOSITORY = re.compile(
    r"((?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]{1,5})?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)


def _repository(text: str) -> str:
    if "@" in text or "://" in text:
        # never echo it: what precedes an @ may be a token
        raise ValueError(
            "write the repository as REGISTRY/PATH (e.g. ghcr.io/org/dask-gpu), without a "
            "scheme, credentials or digest: registry credentials belong in the Docker config "
            "(docker login)"
        )
    if len(text) > 255 or not _REPOSITORY.fullmatch(text):
        raise ValueError(
            f"{shown(text)} is not an image repository: REGISTRY[:PORT]/PATH, the path in "
            "lowercase letters, digits and . _ - separators, no :TAG (envbuild tags the images)"
        )
    return text


MatchSpecText = Annotated[str, AfterValidator(_match_spec)]
Platform = Annotated[str, AfterValidator(_platform)]
ChannelText = Annotated[str, AfterValidator(_channel)]


class GpuRequirement(_Strict):
    """The GPU a role needs: the CUDA runtime of its image and the hardware it must land on."""

    cuda: Annotated[str, AfterValidator(_cuda)] = Field(
        description='CUDA runtime version of the role\'s variant, MAJOR.MINOR (e.g. "12.4").'
    )
    compute_capability: Annotated[str, AfterValidator(_compute_capability)] | None = Field(
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


class Roles(_Strict):
    """The three roles of a Dask cluster."""

    client: Role
    scheduler: Role
    worker: Role


class SystemRequirements(_Strict):
    """Declared virtual packages (the oldest systems the environment must run on)."""

    linux: Annotated[str, AfterValidator(_version)] = Field(
        default="5.10", description="__linux: Linux kernel version."
    )
    glibc: Annotated[str, AfterValidator(_version)] = Field(
        default="2.28", description="__glibc: glibc version."
    )
    macos: Annotated[str, AfterValidator(_version)] = Field(
        default="11.0", description="__osx: macOS version."
    )


class ImageSettings(_Strict):
    """How role images are built (used by ``envbuild image``)."""

    base: str = Field(default="debian:bookworm-slim", description="Base image.")
    repository: Annotated[str, AfterValidator(_repository)] | None = Field(
        default=None,
        description="Repository to tag and push to, e.g. ghcr.io/org/dask-gpu (no tag).",
    )
    prefix: str = Field(default="/opt/env", pattern=r"^/", description="Environment path.")
    user: str = Field(default="dask", pattern=r"^[a-z_][a-z0-9_-]*$", description="Run as.")
    uid: int = Field(default=1000, ge=1, description="Numeric user id (never 0).")


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
    allow_platform_divergence: list[str] = Field(
        default_factory=list,
        description="Packages whose version may differ between platforms.",
    )
    system_requirements: SystemRequirements = Field(default_factory=SystemRequirements)
    roles: Roles
    image: ImageSettings = Field(default_factory=ImageSettings)

    @field_validator("platforms", "channels", "dependencies", "gpu_dependencies")
    @classmethod
    def _no_duplicates(cls, values: list[str]) -> list[str]:
        seen = set()
        for value in values:
            if value in seen:
                raise ValueError(f"{shown(value)} is listed twice")
            seen.add(value)
        return values

    def role(self, name: str) -> Role:
        """The role called ``name``."""
        role: Role = getattr(self.roles, name)
        return role

    def role_platforms(self, name: str) -> list[str]:
        """Platforms role ``name`` is locked for."""
        return list(self.role(name).platforms or self.platforms)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the spec, as committed in envbuild/schema/."""
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def spec_hash(spec: Spec) -> str:
    """sha256 of the canonical JSON of what decides the lock."""
    content = spec.model_dump(mode="json", by_alias=True, exclude={"image"})
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
