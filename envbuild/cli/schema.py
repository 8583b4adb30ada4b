"""``envbuild schema``: the JSON Schema of envbuild.yaml, for editors."""

from __future__ import annotations

from envbuild.cli.app import app, print_json


@app.command(short_help="Print the JSON Schema of envbuild.yaml (for editors).")
def schema() -> None:
    """Print the JSON Schema of envbuild.yaml (for editors: yaml-language-server)."""
    from envbuild.spec.model import json_schema

    print_json(json_schema())
