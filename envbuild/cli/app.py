"""The typer application and what every command shares: error handling, output, options.

Heavy libraries are imported inside the commands so that ``envbuild --help`` stays fast.
Output is plain when piped; on a terminal errors and verdicts are coloured (``NO_COLOR``
turns that off).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from envbuild import __version__
from envbuild.errors import EXIT_CODES, EnvbuildError

F = TypeVar("F", bound=Callable[..., Any])

# "\b" keeps click from rewrapping the list.
_EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {c:>2}  {d}" for c, d in EXIT_CODES.items())

app = typer.Typer(
    name="envbuild",
    help=(
        "Keep the software of a Dask cluster in step: ONE spec (envbuild.yaml) declares the "
        "client, scheduler and worker roles and their GPUs; envbuild resolves ONE locked "
        "environment (envbuild.lock) whose CUDA variants differ only in their CUDA runtime.\n\n"
        "Start with `envbuild init`, edit envbuild.yaml, then `envbuild lock` and commit both "
        "files."
    ),
    epilog=_EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold registry credentials
    rich_markup_mode=None,
)


def colour(stream: Any) -> bool:
    """Whether ``stream`` is a terminal that may be coloured."""
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def styled(text: str, stream: Any, **style: Any) -> str:
    """``text`` in ``style`` on a terminal, plain otherwise."""
    return typer.style(text, **style) if colour(stream) else text


def _fail(error: EnvbuildError) -> None:
    label = styled("error:", sys.stderr, fg="red", bold=True)
    print(f"envbuild: {label} {error}", file=sys.stderr)
    if error.details:
        for line in error.details.splitlines():
            print(f"  {line}", file=sys.stderr)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        print(f"::error title=envbuild::{_annotation(str(error))}", file=sys.stderr)
    if os.environ.get("ENVBUILD_DEBUG"):
        traceback.print_exception(error)


def _annotation(text: str) -> str:
    """Text as a GitHub Actions workflow command value (%, CR and LF escaped)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def handles_errors(command: F) -> F:
    """Turn an EnvbuildError into one line on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EnvbuildError as error:
            _fail(error)
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    print(json.dumps(data, indent=2))


def note(message: str) -> None:
    """A progress line on stderr."""
    print(f"  {message}", file=sys.stderr, flush=True)


def emit(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output`` (atomically, and say so on stderr), or to stdout when
    ``output`` is None or ``-``."""
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        return
    from envbuild.files.atomic import write_atomic

    write_atomic(output, text)
    print(f"wrote {output}", file=sys.stderr)


def output_path(path: Path | None) -> Path | None:
    """``-o -`` means stdout, as no ``-o`` does."""
    return None if path is None or str(path) == "-" else path


def _version(value: bool) -> None:
    if value:
        print(f"envbuild {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    pass


# --- options several commands take ---

SpecOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="The spec (default: ./envbuild.yaml, unless --lockfile alone names a lock to use "
        "without its spec).",
        show_default=False,
    ),
]
LockSpecOption = Annotated[Path, typer.Option("--file", "-f", help="The spec to lock.")]
LockOption = Annotated[
    Path | None,
    typer.Option("--lockfile", help="The lock file (default: envbuild.lock beside the spec)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
RoleOption = Annotated[
    str | None, typer.Option("--role", "-r", help="client, scheduler or worker.")
]
RequiredRole = Annotated[str, typer.Option("--role", "-r", help="client, scheduler or worker.")]


def _platform(value: str | None) -> str | None:
    """A platform, not a path: ``-p`` is the prefix, as in conda and micromamba."""
    if value is not None and ("/" in value or value.startswith(".")):
        raise typer.BadParameter(
            f"{value!r} looks like a folder: the environment's folder is -p/--prefix; "
            "--platform takes a conda platform such as linux-64"
        )
    return value


PlatformOption = Annotated[
    str | None,
    typer.Option(
        "--platform",
        callback=_platform,
        help="Conda platform, e.g. linux-64 (default: this machine's).",
    ),
]
PrefixOption = Annotated[
    Path | None,
    typer.Option(
        "--prefix",
        "-p",
        help="The environment's folder, as conda's -p (default: envs/ROLE beside the lock).",
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="File to write (default, or -: stdout)."),
]
CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Package cache (default: pkgs/ under $ENVBUILD_CACHE_DIR or ~/.cache/envbuild).",
    ),
]
