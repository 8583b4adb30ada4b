"""The envbuild spec: one file that declares the cluster's roles, their hardware and ONE
environment.

The model is strict (unknown keys are errors) and every error names the file and line. The
JSON Schema committed under ``envbuild/schema/`` is generated from these models
(``envbuild schema``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from envbuild import gpucheck
from envbuild.errors import SpecError
from envbuild.matchspec import package_name
from envbuild.platforms import GPU_PLATFORMS, PLATFORMS

SPEC_FILE_NAME = "envbuild.yaml"
ROLES = ("client", "scheduler", "worker")
#: Packages envbuild chooses per variant; a spec must not pin them itself.
RESERVED_PACKAGES = frozenset({"cuda-version", "__cuda"})
DEFAULT_CHANNEL_ALIAS = "https://conda.anaconda.org"

Loc = tuple[str | int, ...]


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
        raise ValueError(f"'{text}' names no package")
    return text


def _platform(text: str) -> str:
    if text not in PLATFORMS:
        raise ValueError(f"unknown platform '{text}' (known: {', '.join(PLATFORMS)})")
    return text


def _cuda(text: str) -> str:
    gpucheck.parse_cuda_version(text)
    return text


def _compute_capability(text: str) -> str:
    gpucheck.ComputeCapability.parse(text)
    return text


def _version(text: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        raise ValueError(f"'{text}' is not a version like \"2.28\"")
    return text


_TOKEN_SEGMENT = re.compile(r"/t/[^/]+/")


def _channel(text: str) -> str:
    if not text.strip() or any(c.isspace() for c in text):
        raise ValueError(f"'{text}' is not a channel name, URL or path")
    _, _, rest = text.partition("://")
    if rest and ("@" in rest.split("/")[0] or _TOKEN_SEGMENT.search("/" + rest)):
        # Never echo the secret itself: the message names the problem and the fix.
        raise ValueError(
            "a channel URL carries credentials, which would land in envbuild.lock and every "
            "export: remove them and keep them in rattler's credential store "
            "(RATTLER_AUTH_FILE)"
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
    repository: str | None = Field(default=None, description="Repository to tag and push to.")
    prefix: str = Field(default="/opt/env", pattern=r"^/", description="Environment path.")
    user: str = Field(default="dask", pattern=r"^[a-z_][a-z0-9_-]*$", description="Run as.")
    uid: int = Field(default=1000, ge=1, description="Numeric user id (never 0).")


class Spec(_Strict):
    """An envbuild spec (envbuild.yaml)."""

    model_config = ConfigDict(title="envbuild spec")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Environment name.")
    channels: list[ChannelText] = Field(
        min_length=1, description="Channel names, URLs, or paths relative to this file."
    )
    platforms: list[Platform] = Field(min_length=1, description="Platforms every role locks.")
    dependencies: list[MatchSpecText] = Field(
        min_length=1, description="The ONE environment: every role gets exactly these."
    )
    gpu_dependencies: list[MatchSpecText] = Field(
        default_factory=list, description="Added to CUDA variants only."
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
                raise ValueError(f"'{value}' is listed twice")
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


# --- reading a spec file ---


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that keeps unquoted numbers like 12.4 as text ("12.10" must not become 12.1)."""


_SpecLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class SpecFile:
    """A validated spec and where it came from."""

    path: Path
    spec: Spec
    lines: dict[Loc, int]  # location in the document -> 1-based line

    def where(self, loc: Loc) -> str:
        """``"envbuild.yaml:7"`` for a location in the document."""
        return _where(self.path, self.lines, loc)

    @property
    def content_hash(self) -> str:
        """Hash of everything that decides the lock (not the image settings, not comments)."""
        return spec_hash(self.spec)

    def check_match_specs(self) -> None:
        """Parse every match spec with the solver's parser; SpecError names the line.

        Kept out of parsing so that an up-to-date lock is confirmed without loading the
        solver: a spec whose hash matches its lock was fully checked when it was locked.
        """
        from envbuild.conda import match_spec_name

        for field in ("dependencies", "gpu-dependencies"):
            for index, text in enumerate(getattr(self.spec, _snake(field))):
                try:
                    match_spec_name(text)
                except ValueError as exc:
                    loc: Loc = (field, index)
                    raise SpecError(f"{self.where(loc)}: {_dotted(loc)}: {exc}") from None

    def channel_urls(self) -> list[str]:
        """Channels as URLs: names via conda.anaconda.org, paths relative to the spec file."""
        return [resolve_channel(c, self.path.parent) for c in self.spec.channels]


def _where(path: Path, lines: dict[Loc, int], loc: Loc) -> str:
    """``"envbuild.yaml:7"``: the line of the deepest known location on the way to ``loc``."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f"{path}:{lines[loc[:end]]}"
    return str(path)


def spec_hash(spec: Spec) -> str:
    """sha256 of the canonical JSON of what decides the lock."""
    content = spec.model_dump(mode="json", by_alias=True, exclude={"image"})
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def resolve_channel(channel: str, base: Path) -> str:
    """A channel as written in a spec -> its URL."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", channel):
        return channel.rstrip("/")
    if channel.startswith((".", "/", "~")) or "/" in channel:
        return (base / Path(channel).expanduser()).resolve().as_uri()
    return f"{DEFAULT_CHANNEL_ALIAS}/{channel}"


def _positions(node: yaml.Node, loc: Loc, out: dict[Loc, int], path: Path) -> None:
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(f"{path}:{line}: duplicate key '{key}' (first at line {seen[key]})")
            seen[key] = line
            out[(*loc, key)] = line
            _positions(value_node, (*loc, key), out, path)
            out[(*loc, key)] = (
                line
                if isinstance(value_node, yaml.CollectionNode)
                else (value_node.start_mark.line + 1)
            )
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _positions(item, (*loc, index), out, path)


def _allowed_keys(loc: Loc) -> list[str] | None:
    """Keys allowed in the mapping that contains ``loc``'s last element."""
    model: type[BaseModel] = Spec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        for arg in list(candidates):
            candidates += get_args(arg)
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return None
        model = models[0]
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe_error(error: Any) -> str:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    key = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc) or []
        if loc[:-1] == ("roles",):
            return f"unknown role '{key}' (roles are {', '.join(ROLES)})"
        return f"unknown key '{key}' (allowed here: {', '.join(allowed)})"
    if kind == "missing":
        if loc[:-1] == ("roles",):
            return f"role '{key}' is missing: a spec declares {', '.join(ROLES)}"
        return f"missing required key '{key}'"
    message: str = error["msg"]
    message = message.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.startswith(("string_", "too_", "greater_than")):
        message = f"{message[0].lower()}{message[1:]} (got {error['input']!r})"
    return message


def _dotted(loc: Loc) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def parse_spec(text: str, path: Path, *, full: bool = True) -> SpecFile:
    """Parse and validate spec ``text`` read from ``path``; raise SpecError naming the line.

    ``full=False`` leaves the solver-backed match-spec check to ``check_match_specs()``.
    """
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if node is None or not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a mapping with name, channels, platforms, ... keys")
    lines: dict[Loc, int] = {}
    _positions(node, (), lines, path)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        # A misspelt key shows up as unknown and as missing: name the misspelling first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        loc = tuple(first["loc"])
        where = _where(path, lines, loc)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecError(f"{where}: {_dotted(loc)}: {_describe_error(first)}{more}") from None
    spec_file = SpecFile(path=path, spec=spec, lines=lines)
    for loc, message in _semantic_problems(spec):
        raise SpecError(f"{spec_file.where(loc)}: {_dotted(loc)}: {message}")
    if full:
        spec_file.check_match_specs()
    return spec_file


def _semantic_problems(spec: Spec) -> Iterator[tuple[Loc, str]]:
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
                yield loc, f"'{name}' is already required at {_dotted(names[name])}"
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


def load_spec(path: Path, *, full: bool = True) -> SpecFile:
    """Read and validate the spec at ``path`` (``full``: see ``parse_spec``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"{path}: no such spec file (run `envbuild init` to write one, or pass -f FILE)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec: {exc}") from None
    return parse_spec(text, path, full=full)
