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
    label: ClassVar[str] = "unexpected error: a bug (rerun with ENVBUILD_DEBUG=1, report it)"

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


class UsageError(EnvbuildError):
    """The command line asks for something that cannot be done as asked (as click's own
    usage errors)."""

    exit_code = 2
    label = "command-line usage error"


class SpecError(EnvbuildError):
    """The spec file is missing, malformed or invalid (names the file and line)."""

    exit_code = 3
    label = "invalid spec"


class LockStaleError(EnvbuildError):
    """The lock does not match the spec (``lock --check``, or a command that needs a fresh lock)."""

    exit_code = 4
    label = "lock is stale"


class LockFileError(EnvbuildError):
    """The lock file is missing, corrupt, or written by a newer envbuild."""

    exit_code = 5
    label = "lock file missing or unreadable"


class ChannelError(EnvbuildError):
    """A channel cannot be read (does not exist, unreachable)."""

    exit_code = 6
    label = "channel cannot be read"


class SolveError(EnvbuildError):
    """A target (variant x platform) cannot be satisfied."""

    exit_code = 7
    label = "a target cannot be solved"


class ConsistencyError(EnvbuildError):
    """The targets cannot share one environment (the consistency invariant is violated)."""

    exit_code = 8
    label = "targets cannot share one environment"


class SelectionError(EnvbuildError):
    """A role, platform or format that the lock does not have."""

    exit_code = 9
    label = "no such role, platform or package"


class OutputError(EnvbuildError):
    """An output path cannot be written."""

    exit_code = 10
    label = "output cannot be written"


class InstallError(EnvbuildError):
    """Creating an environment failed (a package's bytes do not match the lock, ...)."""

    exit_code = 11
    label = "environment cannot be created"


class PrefixMismatchError(EnvbuildError):
    """``verify`` found an environment that differs from the lock."""

    exit_code = 12
    label = "environment differs from the lock"


class EngineError(EnvbuildError):
    """No container engine answers (DOCKER_HOST, or the default socket)."""

    exit_code = 13
    label = "no container engine"


class ImageBuildError(EnvbuildError):
    """An image cannot be built (base image missing, build failed, platform not buildable)."""

    exit_code = 14
    label = "image cannot be built"


class ImagePushError(EnvbuildError):
    """An image cannot be pushed (registry refused, unreachable, no credentials)."""

    exit_code = 15
    label = "image cannot be pushed"


class RegistryError(EnvbuildError):
    """A registry cannot say whether it has an image (unreachable, refused, malformed)."""

    exit_code = 16
    label = "registry cannot be read"


class ImageMissingError(EnvbuildError):
    """An image a deployment needs is not in its registry (not built, or not pushed)."""

    exit_code = 17
    label = "image not in the registry"


class UnsafePackageError(EnvbuildError):
    """A package would write outside its prefix (or layer), over envbuild's own files, or
    expands beyond the size limit: refused before anything is installed or staged."""

    exit_code = 18
    label = "a package is unsafe to install"


#: Exit codes, for --help and the README.
EXIT_CODES: dict[int, str] = {
    0: "success",
    EnvbuildError.exit_code: EnvbuildError.label,
    UsageError.exit_code: UsageError.label,
    **{
        cls.exit_code: cls.label
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
            EngineError,
            ImageBuildError,
            ImagePushError,
            RegistryError,
            ImageMissingError,
            UnsafePackageError,
        )
    },
}
