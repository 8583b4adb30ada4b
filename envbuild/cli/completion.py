"""``envbuild completion SHELL``: the script that completes envbuild's commands and options."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from envbuild.cli.app import app

#: The variable the shell sets when it asks envbuild for completions.
COMPLETE_VAR = "_ENVBUILD_COMPLETE"


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"


@app.command(short_help="Print the shell completion script for bash, zsh, fish or PowerShell.")
def completion(
    shell: Annotated[Shell, typer.Argument(help="bash, zsh, fish or powershell.")],
) -> None:
    """Print the completion script for SHELL; load it from your shell's startup file:

    \b
      bash:  eval "$(envbuild completion bash)"        (in ~/.bashrc)
      zsh:   eval "$(envbuild completion zsh)"         (in ~/.zshrc)
      fish:  envbuild completion fish > ~/.config/fish/completions/envbuild.fish
    """
    from typer._completion_shared import get_completion_script

    print(get_completion_script(prog_name="envbuild", complete_var=COMPLETE_VAR, shell=shell))


def enable_if_asked(environ: dict[str, str]) -> None:
    """Register typer's completion classes when the shell asks for completions (only then:
    ``--help`` and every command stay as fast as without completion)."""
    if environ.get(COMPLETE_VAR):
        from typer._completion_classes import completion_init

        completion_init()
