"""Expected failures: one line for the user and a distinct exit code each.

Anything that is not an ``EnvbuildError`` is a bug and shows a traceback.
"""

from __future__ import annotations

from typing import ClassVar


class EnvbuildError(Exception):
    """An expected failure the user can fix; ``str(error)`` is one line.

    ``details`` holds what a tool said at length (a solver's explanation), printed below it.
    """

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


class SpecError(EnvbuildError):
    """The spec file is missing, malformed or invalid (names the file and line)."""

    exit_code = 3


class LockStaleError(EnvbuildError):
    """The lock does not match the spec (``lock --check``, or a command that needs a fresh lock)."""

    exit_code = 4


class LockFileError(EnvbuildError):
    """The lock file is missing, corrupt, or written by a newer envbuild."""

    exit_code = 5


class ChannelError(EnvbuildError):
    """A channel cannot be read (does not exist, unreachable)."""

    exit_code = 6


class SolveError(EnvbuildError):
    """A target (variant x platform) cannot be satisfied."""

    exit_code = 7


class ConsistencyError(EnvbuildError):
    """The targets cannot share one environment (the consistency invariant is violated)."""

    exit_code = 8


class SelectionError(EnvbuildError):
    """A role, platform or format that the lock does not have."""

    exit_code = 9


class OutputError(EnvbuildError):
    """An output path cannot be written."""

    exit_code = 10


class InstallError(EnvbuildError):
    """Creating an environment failed (a package's bytes do not match the lock, ...)."""

    exit_code = 11


class PrefixMismatchError(EnvbuildError):
    """``verify`` found an environment that differs from the lock."""

    exit_code = 12


#: Exit codes, for the README and ``--help``.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "other expected error",
    2: "command-line usage error",
    **{
        cls.exit_code: (cls.__doc__ or "").split("\n")[0]
        for cls in (
            SpecError,
            LockStaleError,
            LockFileError,
            ChannelError,
            SolveError,
            ConsistencyError,
            SelectionError,
            OutputError,
            InstallError,
            PrefixMismatchError,
        )
    },
}
