"""Reading a spec file: its bytes, its YAML (with the line of every value), the model, and
every problem worded with the file and line.

Importing this module is cheap: pydantic (the model, ``envbuild.spec.model``) and the solver are
loaded only when a spec must be validated, so a command whose lock is current by the spec
file's bytes (``read_spec_bytes`` + ``digest``) never pays for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from envbuild.errors import SpecError
from envbuild.spec import ROLES, yamldoc
from envbuild.spec.channels import resolve_channel
from envbuild.spec.yamldoc import Loc, dotted, shown

if TYPE_CHECKING:
    from pydantic import BaseModel

    from envbuild.spec.model import Spec

#: A spec is a few kilobytes; anything near this is not one.
MAX_SPEC_BYTES = 1 << 20


def digest(data: bytes) -> str:
    """``sha256:...`` of a spec file's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
        from envbuild.spec.model import spec_hash

        return spec_hash(self.spec)

    def check_match_specs(self, parse: Callable[[str], object]) -> None:
        """Parse every match spec with ``parse`` (the solver's parser, which raises
        ValueError); SpecError names the line.

        Kept out of parsing so that an up-to-date lock is confirmed without loading the
        solver: a spec whose hash matches its lock was fully checked when it was locked.
        """
        problems = []
        fields = (("dependencies", "dependencies"), ("gpu-dependencies", "gpu_dependencies"))
        for field, attribute in fields:
            for index, text in enumerate(getattr(self.spec, attribute)):
                try:
                    parse(text)
                except ValueError as exc:
                    loc: Loc = (field, index)
                    problems.append(f"{self.where(loc)}: {dotted(loc)}: {exc}")
        if problems:
            raise _spec_error(problems)

    def pypi_locations(self) -> tuple[list[str] | None, list[str]]:
        """PyPI index URLs (None: the default index) and find-links, paths made absolute
        relative to the spec file (as channels are)."""
        from envbuild.spec.channels import is_url

        def located(text: str) -> str:
            if is_url(text):
                return text.rstrip("/")
            return str((self.path.parent / Path(text).expanduser()).resolve())

        indexes = self.spec.pypi_index_urls
        return (
            None if indexes is None else [located(u) for u in indexes],
            [located(u) for u in self.spec.pypi_find_links],
        )

    def channel_urls(self) -> list[str]:
        """Channels as URLs: names via conda.anaconda.org, paths relative to the spec file."""
        return [resolve_channel(c, self.path.parent) for c in self.spec.channels]


def _where(path: Path, lines: dict[Loc, int], loc: Loc) -> str:
    """``"envbuild.yaml:7"``: the line of the deepest known location on the way to ``loc``."""
    line = yamldoc.YamlDocument(None, lines).line_of(loc)
    return f"{path}:{line}" if line else str(path)


def _spec_error(problems: list[str]) -> SpecError:
    """One SpecError: the first problem on its line, every other one below it."""
    return SpecError(problems[0], details="\n".join(problems[1:]) or None)


def _allowed_keys(loc: Loc) -> list[str] | None:
    """Keys allowed in the mapping that contains ``loc``'s last element."""
    from pydantic import BaseModel

    from envbuild.spec.model import Spec

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
            return f"unknown role {shown(key)} (roles are {', '.join(ROLES)})"
        return f"unknown key {shown(key)} (allowed here: {', '.join(allowed)})"
    if kind == "missing":
        if loc[:-1] == ("roles",):
            return f"role '{key}' is missing: a spec declares {', '.join(ROLES)}"
        return f"missing required key '{key}'"
    message: str = error["msg"]
    message = message.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.startswith(("string_", "too_", "greater_than")):
        message = f"{message[0].lower()}{message[1:]} (got {shown(error['input'])})"
    return message


def parse_spec(
    text: str, path: Path, *, match_specs: Callable[[str], object] | None = None
) -> SpecFile:
    """Parse and validate spec ``text`` read from ``path``; raise SpecError naming the line.

    Every problem is reported: the first on the error's line, the others below it.
    ``match_specs``, the solver's parser, also checks every match spec fully
    (``check_match_specs()``); without it only their package names are checked.
    """
    try:
        document = yamldoc.parse(text)
    except yamldoc.YamlError as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        raise SpecError(f"{where}: {exc}") from None
    data, lines = document.data, document.lines
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a mapping with name, channels, platforms, ... keys")
    from pydantic import ValidationError

    from envbuild.spec.model import Spec, semantic_problems

    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        # A misspelt key shows up as unknown and as missing: name the misspelling first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise _spec_error(
            [
                f"{_where(path, lines, tuple(e['loc']))}: {dotted(tuple(e['loc']))}: "
                f"{_describe_error(e)}"
                for e in errors
            ]
        ) from None
    spec_file = SpecFile(path=path, spec=spec, lines=lines)
    problems = [f"{spec_file.where(loc)}: {dotted(loc)}: {m}" for loc, m in semantic_problems(spec)]
    if problems:
        raise _spec_error(problems)
    if match_specs is not None:
        spec_file.check_match_specs(match_specs)
    return spec_file


def read_spec_bytes(path: Path) -> bytes:
    """The spec file's bytes; SpecError when it is missing, not a file, or far too big."""
    try:
        if not path.is_file():
            if path.exists():
                raise SpecError(f"{path}: not a spec file (a folder or a device?)")
            raise SpecError(
                f"{path}: no such spec file (run `envbuild init` to write one, or pass -f FILE)"
            )
        with path.open("rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES >> 20} MiB: not a spec file")
    return data


def load_spec(
    path: Path, *, match_specs: Callable[[str], object] | None = None, data: bytes | None = None
) -> SpecFile:
    """Read and validate the spec at ``path`` (``match_specs``: see ``parse_spec``; ``data``:
    its bytes, when the caller read them already)."""
    raw = read_spec_bytes(path) if data is None else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_spec(text, path, match_specs=match_specs)
