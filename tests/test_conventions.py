"""Conventions users bring from conda, micromamba and other CLIs: -p is the prefix, shells
complete commands, output folders are made, `run --` runs a command (issues 16 and 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

ENVBUILD = str(Path(sys.executable).parent / "envbuild")


def console(*args: object, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVBUILD, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_dash_p_is_the_prefix_as_in_conda(locked: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "envs" / "worker"
    made = console("env", "--role", "worker", "-p", prefix, "-f", locked, "-q")
    assert made.returncode == 0, made.stderr
    assert (prefix / "conda-meta").is_dir() and (prefix / "etc/envbuild/stamp.json").is_file()
    checked = console("verify", "--role", "worker", "-p", prefix, "-f", locked)
    assert checked.returncode == 0 and f"{prefix} matches cuda-12.4/linux-64" in checked.stdout
    shown = console("show", "-p", prefix, "-f", locked)
    assert shown.returncode == 0 and "cuda-12.4" in shown.stdout


def test_a_path_given_as_the_platform_gets_a_hint(locked: Path, tmp_path: Path) -> None:
    done = console("env", "--role", "worker", "--platform", "envs/worker", "-f", locked)
    assert done.returncode == 2
    assert "looks like a folder" in done.stderr and "-p/--prefix" in done.stderr
    assert not (tmp_path / "envs").exists()


def test_shell_completion_completes_commands_and_options(tmp_path: Path) -> None:
    script = console("completion", "bash")
    assert script.returncode == 0 and "_ENVBUILD_COMPLETE=complete_bash" in script.stdout
    # what bash does with it, in a real bash
    session = (
        f'eval "$({ENVBUILD} completion bash)"\n'
        f"PATH={Path(ENVBUILD).parent}:$PATH\n"
        "COMP_WORDS=(envbuild ima); COMP_CWORD=1; _envbuild_completion envbuild\n"
        'echo "commands: ${COMPREPLY[*]}"\n'
        "COMP_WORDS=(envbuild env --ro); COMP_CWORD=2; _envbuild_completion envbuild\n"
        'echo "options: ${COMPREPLY[*]}"\n'
    )
    done = subprocess.run(["bash", "-c", session], capture_output=True, text=True, check=True)
    assert "commands: image" in done.stdout and "options: --role" in done.stdout
    for shell in ("zsh", "fish", "powershell"):
        assert console("completion", shell).returncode == 0
    assert console("completion", "tcsh").returncode == 2


def test_missing_output_folders_are_made(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    lock_path = spec.parent / "locks" / "gpu" / "envbuild.lock"
    done = envbuild("lock", "-f", spec, "--lockfile", lock_path)
    assert done.exit_code == 0, done.output
    assert lock_path.is_file()
    out = spec.parent / "exports" / "worker.txt"
    args = ("export", "--format", "explicit", "--role", "worker", "-o", out)
    assert envbuild(*args, "-f", spec, "--lockfile", lock_path).exit_code == 0
    assert out.read_text().count("@EXPLICIT") == 1


def test_a_failed_lock_leaves_no_folder_behind(
    scenario: Callable[..., Path], envbuild: Callable[..., Result]
) -> None:
    spec = scenario("dask-gpu")
    spec.write_text(spec.read_text().replace("numpy", "numpy >=99"))
    lock_path = spec.parent / "locks" / "envbuild.lock"
    assert envbuild("lock", "-f", spec, "--lockfile", lock_path).exit_code == 7
    assert not (spec.parent / "locks").exists()


@pytest.mark.slow
def test_run_executes_the_command_never_options_of_the_shell(locked: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "worker"
    assert console("env", "--role", "worker", "-p", prefix, "-f", locked, "-q").returncode == 0
    # bash's `exec -a NAME CMD` would run echo; the command is `-a` itself
    done = console(
        "run", "--role", "worker", "-p", prefix, "-f", locked, "--", "-a", "x", "/bin/echo", "hi"
    )
    assert done.returncode == 127 and "hi" not in done.stdout
    ran = console("run", "--role", "worker", "-p", prefix, "-f", locked, "--", "/bin/echo", "hi")
    assert ran.returncode == 0 and ran.stdout == "hi\n"
    nothing = console("run", "--role", "worker", "-p", prefix, "-f", locked)
    assert nothing.returncode == 2 and "name a command to run after --" in nothing.stderr


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_progress_is_live_on_a_terminal_short_when_piped_and_absent_when_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from envbuild.cli import progress

    terminal = _Stream(tty=True)
    update = progress.bar("checking", stream=terminal)  # type: ignore[arg-type]
    assert update is not None
    for done in range(1, 4):
        update(done, 3)
    assert terminal.text == "\r  checking: 1/3\r  checking: 2/3\r  checking: 3/3\n"

    clock = iter([0.0, 0.1, 0.2, 0.3])  # quick work, piped: nothing at all
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    piped = _Stream(tty=False)
    quick = progress.bar("checking", stream=piped)  # type: ignore[arg-type]
    assert quick is not None
    for done in range(1, 4):
        quick(done, 3)
    assert piped.text == ""

    clock = iter([0.0, 3.0, 6.0, 7.0])  # slow work, piped: a line every 5 s and the last
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    slow = progress.bar("checking", stream=piped)  # type: ignore[arg-type]
    assert slow is not None
    for done in range(1, 4):
        slow(done, 3)
    assert piped.text == "  checking: 2/3 (6.0 s)\n  checking: 3/3 (7.0 s)\n"
    assert progress.bar("checking", quiet=True) is None
