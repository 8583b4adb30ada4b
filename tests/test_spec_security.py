"""Values of the spec that reach a Dockerfile or a shell script are validated before anything
is written: the image section's hostile values through the console script (issue 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ENVBUILD = str(Path(sys.executable).parent / "envbuild")

HOSTILE = [
    ("base", '"x\\nRUN touch /pwned"', "is not an image reference"),
    ("base", "'--platform=linux/arm64 evil'", "is not an image reference"),
    ("base", "''", "is not an image reference"),
    ("prefix", "'/opt/env;touch${IFS}/tmp/x;#'", "is not a prefix"),
    ("prefix", "'/opt/my env'", "is not a prefix"),
    ("prefix", "/", "is not a prefix"),
    ("prefix", "/etc", "is inside /etc"),
    ("prefix", "/opt/../../x", "is not a prefix"),
    ("user", "root", "never run as root"),
    ("uid", "0", "greater than or equal to 1"),
    ("uid", "99999999999", "less than or equal to 2147483647"),
    ("repository", "UPPER/x", "is not an image repository"),
]


@pytest.mark.parametrize(("key", "value", "why"), HOSTILE, ids=[f"{k}={v}" for k, v, _ in HOSTILE])
def test_a_hostile_image_value_is_refused_naming_the_line(
    locked: Path, tmp_path: Path, key: str, value: str, why: str
) -> None:
    text = locked.read_text()
    locked.write_text(text + f"image:\n  {key}: {value}\n")
    line = len(text.splitlines()) + 2
    context = tmp_path / "context"
    done = subprocess.run(
        [ENVBUILD, "image", "--role", "worker", "--context", str(context), "-f", str(locked)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith(f"envbuild: error: {locked}:{line}: image.{key}: "), done.stderr
    assert why in done.stderr and len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr and not context.exists()
    assert not Path("/pwned").exists()
