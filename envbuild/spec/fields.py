"""The spec's field types: each a validator for the loader and the JSON Schema an editor
checks, written side by side so that the two agree (tests/test_spec_schema.py holds them to
it over a table of good and bad specs).

A pattern here is written for both engines: Python's ``re`` (the validators) and ECMA-262
(JSON Schema), so lookaheads are fine and inline flags are not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

from envbuild import gpucheck
from envbuild.spec.channels import CREDENTIALS_MESSAGE, carries_credentials
from envbuild.spec.matchspec import package_name
from envbuild.spec.platforms import PLATFORMS
from envbuild.spec.yamldoc import shown

#: Packages envbuild chooses per variant; a spec must not pin them itself.
RESERVED_PACKAGES = ("cuda-version", "__cuda")


def _field(check: Callable[[str], str], schema: dict[str, Any]) -> Any:
    """A string type checked by ``check`` when loading, described by ``schema`` for editors."""
    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", **schema})]


# --- packages ---

_NAMED = r"^\s*(?:[A-Za-z0-9_.\-/:]+::)?[A-Za-z0-9_]"
_RESERVED = (
    r"(?!\s*(?:[A-Za-z0-9_.\-/:]+::)?(?:"
    + "|".join(re.escape(n) for n in RESERVED_PACKAGES)
    + r")(?![A-Za-z0-9_.\-]))"
)


def _match_spec(text: str) -> str:
    # Only the cheap part here; lock parses every match spec fully with the solver.
    if package_name(text) is None:
        raise ValueError(f"{shown(text)} names no package")
    return text


# --- platforms, CUDA, compute capability, versions ---


def _platform(text: str) -> str:
    if text not in PLATFORMS:
        raise ValueError(f"unknown platform {shown(text)} (known: {', '.join(PLATFORMS)})")
    return text


_CUDA = "^(?:" + "|".join(str(m) for m in gpucheck.DRIVER_FLOOR_BY_CUDA_MAJOR) + r")\.[0-9]{1,3}$"


def _cuda(text: str) -> str:
    gpucheck.parse_cuda_version(text)
    return text


_CLAUSE = r"\s*(?:>=|<=|==|!=|>|<)\s*[0-9]+\.[0-9]+\s*"
_COMPUTE_CAPABILITY = rf"^(?=.{{0,99}}$){_CLAUSE}(?:,{_CLAUSE})*$"


def _compute_capability(text: str) -> str:
    gpucheck.ComputeCapability.parse(text)
    return text


_VERSION = r"^[0-9]{1,9}(?:\.[0-9]{1,9}){0,4}$"


def _version(text: str) -> str:
    # Components beyond nine digits overflow the solver's integers.
    if not re.fullmatch(_VERSION, text):
        raise ValueError(f'{shown(text)} is not a version like "2.28"')
    return text


# --- channels ---

_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]*://"
#: No whitespace or control characters, no query or fragment, no user@ before the first /,
#: and no anaconda.org /t/TOKEN/ segment on a remote URL (what ``carries_credentials`` sees).
_CHANNEL = (
    r"^(?![\s\S]*[?#])"
    rf"(?!(?:{_SCHEME})?[^/]*@)"
    rf"(?!(?![fF][iI][lL][eE]:){_SCHEME}[^/]*/t/[^/]+)"
    r"[^\s\x00-\x1f\x7f]+$"
)


def _channel(text: str) -> str:
    if not text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{shown(text)} is not a channel name, URL or path")
    if carries_credentials(text):
        raise ValueError(CREDENTIALS_MESSAGE)  # never echo the secret itself
    return text


# --- images ---

# Docker's reference grammar. A first component is a host only when it has a dot or a port,
# or is localhost (as Docker decides); the path is lowercase.
_HOST = (
    r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*:[0-9]{1,5})"
)
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_REPOSITORY = rf"(?:{_HOST}/)?{_PATH}"
_REFERENCE = rf"{_REPOSITORY}(?::{_TAG})?(?:@sha256:[a-f0-9]{{64}})?"
#: A local OCI image layout as a base: oci:PATH[:TAG] (a path of plain characters).
_OCI_LAYOUT = rf"oci:[A-Za-z0-9_./-]+(?::{_TAG})?"


def _repository(text: str) -> str:
    if "@" in text or "://" in text:
        # never echo it: what precedes an @ may be a token
        raise ValueError(
            "write the repository as REGISTRY/PATH (e.g. ghcr.io/org/dask-gpu), without a "
            "scheme, credentials or digest: registry credentials belong in the Docker config "
            "(docker login)"
        )
    if len(text) > 255 or not re.fullmatch(_REPOSITORY, text):
        raise ValueError(
            f"{shown(text)} is not an image repository: REGISTRY[:PORT]/PATH, the path in "
            "lowercase letters, digits and . _ - separators, no :TAG (envbuild tags the images)"
        )
    return text


def _base(text: str) -> str:
    if len(text) > 255 or not re.fullmatch(rf"{_REFERENCE}|{_OCI_LAYOUT}", text):
        raise ValueError(
            f"{shown(text)} is not an image reference: [REGISTRY[:PORT]/]PATH[:TAG][@sha256:...] "
            "with a lowercase path (e.g. debian:bookworm-slim), or oci:PATH[:TAG] for a local "
            "OCI layout"
        )
    return text


#: Where an image's environment must not go: the system's own folders and envbuild's.
#: /usr/local/NAME and /srv/NAME are folders of their own.
SYSTEM_FOLDERS = (
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
    "/mnt", "/opt/envbuild", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",  # noqa: S108
    "/var",
)  # fmt: skip
_OWN_FOLDERS = ("/usr/local/", "/srv/")
# The exceptions (/usr/local/NAME, /srv/NAME) spelled out as lookaheads.
_PREFIX = (
    r"^(?=.{1,200}$)(?![\s\S]*/\.\.?(?:/|$))"
    r"(?!/usr/local(?:/?$))(?!/srv/?$)"
    r"(?!(?:"
    + "|".join(re.escape(f) for f in SYSTEM_FOLDERS if f not in ("/usr", "/srv"))
    + r")(?:/|$))"
    r"(?!/usr(?:/?$|/(?!local/)))"
    r"(?:/[A-Za-z0-9_.-]+)+$"
)


def _prefix(text: str) -> str:
    parts = text.split("/")
    plain = re.fullmatch(r"(?:/[A-Za-z0-9_.-]+)+", text)
    if not plain or any(p in (".", "..") for p in parts) or len(text) > 200:
        raise ValueError(
            f"{shown(text)} is not a prefix: an absolute, normalized path of letters, digits "
            "and . _ - (e.g. /opt/env)"
        )
    inside = [f for f in SYSTEM_FOLDERS if text == f or text.startswith(f + "/")]
    if inside and not text.startswith(_OWN_FOLDERS):
        raise ValueError(
            f"{shown(text)} is inside {inside[0]}, which belongs to the base image or envbuild: "
            "choose a folder of its own, e.g. /opt/env"
        )
    return text


_USER = r"[a-z_][a-z0-9_-]{0,31}"


def _user(text: str) -> str:
    if not re.fullmatch(_USER, text):
        raise ValueError(
            f"{shown(text)} is not a user name: lowercase letters, digits, _ and -, starting "
            "with a letter or _, at most 32 characters"
        )
    if text == "root":
        raise ValueError("images never run as root: choose another user (e.g. dask)")
    return text


MatchSpecText = _field(_match_spec, {"pattern": _RESERVED + _NAMED})
Platform = _field(_platform, {"enum": list(PLATFORMS)})
CudaVersion = _field(_cuda, {"pattern": _CUDA})
ComputeCapabilityText = _field(_compute_capability, {"pattern": _COMPUTE_CAPABILITY})
VersionText = _field(_version, {"pattern": _VERSION})
ChannelText = _field(_channel, {"pattern": _CHANNEL, "minLength": 1})
RepositoryText = _field(_repository, {"pattern": f"^{_REPOSITORY}$", "maxLength": 255})
BaseText = _field(_base, {"pattern": f"^(?:{_REFERENCE}|{_OCI_LAYOUT})$", "maxLength": 255})
PrefixText = _field(_prefix, {"pattern": _PREFIX})
UserText = _field(_user, {"pattern": f"^(?!root$){_USER}$"})


# --- resources (Kubernetes quantities that dask reads too) ---

#: CPUs: a whole number or millicores ("500m"), as Kubernetes writes them.
_CPU = r"^(?:[1-9][0-9]{0,5}|[1-9][0-9]{0,8}m|(?!0+\.0+$)[0-9]{1,6}\.[0-9]{1,3})$"
#: Memory: bytes with a binary (Ki..Ti) or decimal (K..T) suffix; both Kubernetes and dask
#: (``--memory-limit``) read these the same way.
_MEMORY = r"^[1-9][0-9]{0,15}(?:Ki|Mi|Gi|Ti|K|M|G|T)?$"


def _cpu(text: str) -> str:
    if not re.fullmatch(_CPU, text) or _millicores(text) == 0:
        raise ValueError(f'{shown(text)} is not a CPU quantity: e.g. "8", "1.5" or "500m"')
    return text


def _millicores(text: str) -> int:
    if text.endswith("m"):
        return int(text[:-1])
    whole, _, fraction = text.partition(".")
    return int(whole) * 1000 + int((fraction + "000")[:3])


def _memory(text: str) -> str:
    if not re.fullmatch(_MEMORY, text):
        raise ValueError(f'{shown(text)} is not a memory quantity: e.g. "64Gi" or "16G"')
    return text


def threads_for(cpu: str) -> int:
    """Dask threads for a CPU quantity: whole CPUs, at least one."""
    return max(1, _millicores(cpu) // 1000)


CpuText = _field(_cpu, {"pattern": _CPU})
MemoryText = _field(_memory, {"pattern": _MEMORY})


# --- PyPI requirements and indexes ---

#: The one placeholder a gpu-pypi-dependency may carry in its name: the variant's CUDA major.
CUDA_MAJOR = "{cuda_major}"
_PYPI_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PYPI_TEMPLATE_NAME = (
    r"(?:[A-Za-z0-9]|\{cuda_major\})(?:(?:[A-Za-z0-9._-]|\{cuda_major\})*"
    r"(?:[A-Za-z0-9]|\{cuda_major\}))?"
)
_EXTRAS = rf"\[\s*(?:{_PYPI_NAME}(?:\s*,\s*{_PYPI_NAME})*)?\s*\]"
# PEP 440 versions in their usual spelling (pre, post and dev releases in normal form); the
# loader also parses every requirement with packaging, behind this pattern.
_RELEASE = r"[0-9]+(?:\.[0-9]+)*"
_SUFFIX = r"(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
_LOCAL = r"\+[a-z0-9]+(?:\.[a-z0-9]+)*"
_CLAUSE_508 = (
    rf"(?:(?:==|!=)\s*{_RELEASE}(?:\.\*|{_SUFFIX}(?:{_LOCAL})?)"
    rf"|~=\s*[0-9]+(?:\.[0-9]+)+{_SUFFIX}"
    rf"|(?:<=|>=|<|>)\s*{_RELEASE}{_SUFFIX})"
)
_SPECIFIERS = rf"{_CLAUSE_508}(?:\s*,\s*{_CLAUSE_508})*"
#: Markers are checked by the loader alone (their grammar is beyond a pattern's reach).
_TAIL = rf"\s*(?:{_EXTRAS}\s*)?(?:(?:\(\s*{_SPECIFIERS}\s*\)|{_SPECIFIERS})\s*)?(?:;[^\n]*\S)?\s*$"
_REQUIREMENT = rf"^(?=[\s\S]{{1,400}}$)\s*{_PYPI_NAME}{_TAIL}"
_TEMPLATE_REQUIREMENT = rf"^(?=[\s\S]{{1,400}}$)\s*{_PYPI_TEMPLATE_NAME}{_TAIL}"


def pypi_name(text: str) -> str:
    """The normalized distribution name of a PEP 508 requirement (PEP 503: ``Foo_Bar`` is
    ``foo-bar``); ValueError for text that is not a requirement with a version from an index."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not re.fullmatch(_REQUIREMENT, text):
        raise ValueError(
            f"{shown(text)} is not a PyPI requirement: NAME[EXTRAS] [VERSIONS] [; MARKERS], "
            'e.g. "xarray >=2024.7" (no direct URLs: versions come from the index)'
        )
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"{shown(text)} is not a PyPI requirement: {str(exc)[:80]}") from None
    return re.sub(r"[-_.]+", "-", requirement.name).lower()


def _pypi_requirement(text: str) -> str:
    pypi_name(text)
    return text


def _gpu_pypi_requirement(text: str) -> str:
    head = re.match(rf"\s*{_PYPI_TEMPLATE_NAME}", text)
    rest = text[head.end() :] if head else text
    if "{" in rest or "}" in rest or "{" in text.replace(CUDA_MAJOR, ""):
        raise ValueError(
            f"{shown(text)}: the only placeholder is {CUDA_MAJOR}, in the package name (the "
            'variant\'s CUDA major, e.g. "cupy-cuda{cuda_major}x")'
        )
    pypi_name(text.replace(CUDA_MAJOR, "12"))
    return text


def _pypi_index(text: str) -> str:
    if not text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{shown(text)} is not a PyPI index URL or path")
    if carries_credentials(text):
        raise ValueError(PYPI_CREDENTIALS_MESSAGE)  # never echo the secret itself
    return text


PYPI_CREDENTIALS_MESSAGE = (
    "a PyPI index or find-links location carries credentials (user:password@, a /t/TOKEN/ "
    "segment or a ?query), which would land in envbuild.lock and every export: remove them "
    "and keep them in ~/.netrc, which the resolver and installer read"
)

PypiRequirementText = _field(_pypi_requirement, {"pattern": _REQUIREMENT})
GpuPypiRequirementText = _field(
    _gpu_pypi_requirement,
    # a brace only as {cuda_major}, and only before the markers
    {"pattern": r"^(?![^;]*\{(?!cuda_major\}))(?![^;]*;[\s\S]*[{}])" + _TEMPLATE_REQUIREMENT[1:]},
)
PypiIndexText = _field(_pypi_index, {"pattern": _CHANNEL, "minLength": 1})
