"""Files shipped with envbuild: templates (``templates/`` in the source tree, and
``envbuild/templates/`` inside the wheel) and the spec's JSON Schema."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).parent.parent
_CANDIDATES = (_PACKAGE / "templates", _PACKAGE.parent / "templates")


def template_path(name: str) -> Path:
    """Path of template ``name``, from the wheel or from a source checkout."""
    for folder in _CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"template {name} is missing from this envbuild installation")


def read_template(name: str) -> str:
    """Text of template ``name``."""
    return template_path(name).read_text(encoding="utf-8")


SCHEMA_PATH = _PACKAGE / "schema" / "envbuild.schema.json"
