"""The ``envbuild`` command. Commands parse arguments, call one library function, and print.

Heavy libraries are imported inside the commands so that ``envbuild --help`` stays fast.
Output is plain when piped; on a terminal errors and verdicts are coloured (``NO_COLOR``
turns that off).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from envbuild import __version__
from envbuild.errors import EXIT_CODES, EnvbuildError, OutputError, PrefixMismatchError

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


def _colour(stream: Any) -> bool:
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def _styled(text: str, stream: Any, **style: Any) -> str:
    return typer.style(text, **style) if _colour(stream) else text


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


def _fail(error: EnvbuildError) -> None:
    label = _styled("error:", sys.stderr, fg="red", bold=True)
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


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _note(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


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


def _output(path: Path | None) -> Path | None:
    """``-o -`` means stdout, as no ``-o`` does."""
    return None if path is None or str(path) == "-" else path


@app.command(short_help="Write a commented envbuild.yaml to start from.")
@handles_errors
def init(
    spec_path: Annotated[
        Path, typer.Option("--file", "-f", help="Where to write the spec.")
    ] = Path("envbuild.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented envbuild.yaml to start from."""
    from envbuild.files.atomic import write_atomic
    from envbuild.files.resources import read_template

    if spec_path.exists() and not force:
        raise OutputError(f"{spec_path} already exists (use --force to overwrite it)")
    write_atomic(spec_path, read_template("envbuild.yaml"))
    print(f"wrote {spec_path}: edit channels, dependencies and roles, then run `envbuild lock`")


@app.command(short_help="Resolve ONE consistent lock for every role, variant and platform.")
@handles_errors
def lock(
    spec_path: LockSpecOption = Path("envbuild.yaml"),
    lock_path: LockOption = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Solve nothing; exit 4 when the lock does not match the spec."
        ),
    ] = False,
    update: Annotated[
        list[str] | None,
        typer.Option(
            "--update",
            metavar="PACKAGE",
            help="Let PACKAGE (and what must move with it) take newer versions; repeatable. "
            "Every other package keeps its locked version.",
        ),
    ] = None,
    update_all: Annotated[
        bool, typer.Option("--update-all", help="Re-solve from scratch, ignoring the old lock.")
    ] = False,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Resolve ONE consistent lock for every role, CUDA variant and platform.

    An unchanged spec solves nothing and leaves envbuild.lock untouched. Progress goes to
    stderr, one line per target. Two runs on one lock file take turns.
    """
    from envbuild.lock import locking
    from envbuild.lock.progress import SilentReporter, StderrReporter

    if check:
        current = locking.check(spec_path, lock_path)
        path = lock_path or locking.default_lock_path(spec_path)
        if as_json:
            _print_json({"lockfile": str(path), "fresh": True, "spec-hash": current.spec_hash})
        elif not quiet:
            print(f"{path} matches {spec_path}")
        return
    reporter = SilentReporter() if quiet or as_json else StderrReporter()
    outcome = locking.lock(
        spec_path, lock_path, update=update or (), update_all=update_all, reporter=reporter
    )
    packages = len({p for t in outcome.lock.targets for p in t.packages})
    if as_json:
        _print_json(
            {
                "lockfile": str(outcome.path),
                "status": outcome.status,
                "solves": outcome.solves,
                "seconds": round(outcome.seconds, 3),
                "spec-hash": outcome.lock.spec_hash,
                "targets": {str(t.target): len(t.packages) for t in outcome.lock.targets},
                "packages": packages,
            }
        )
    elif not quiet:
        described = {
            "up-to-date": f"{outcome.path} is up to date with {spec_path}; nothing solved",
            "written": f"wrote {outcome.path}",
            "unchanged": f"{outcome.path} unchanged (the solve gave the same lock)",
        }[outcome.status]
        if outcome.status != "up-to-date":
            described += (
                f": {len(outcome.lock.targets)} targets, {packages} packages, "
                f"{outcome.solves} solves in {outcome.seconds:.2f} s"
            )
        print(described)


@app.command(short_help="Show roles, variants, packages and what differs (and why).")
@handles_errors
def show(
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
    packages: Annotated[
        bool,
        typer.Option("--packages", help="Also list every package's version, per role and target."),
    ] = False,
    prefix: Annotated[
        Path | None,
        typer.Option(
            "--prefix",
            help="Show what the environment at PREFIX runs (its stamp: lock, variant, roles) "
            "and whether it is the lock in use.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show roles and their variants, package counts per target, and what differs between
    variants (and why it may). A stale lock is shown, and marked STALE."""
    from envbuild.lock import locking, report

    if prefix is not None:
        from envbuild.env.environments import read_stamp
        from envbuild.lock.lockfile import content_digest

        digest = None
        if spec_path or lock_path or Path(locking.SPEC_FILE_NAME).exists():
            digest = content_digest(locking.locate(spec_path, lock_path, stale_ok=True).lock)
        found = report.summarize_stamp(str(prefix), read_stamp(prefix), digest)
        _print_json(found) if as_json else print(report.render_stamp(found))
        return
    used = locking.locate(spec_path, lock_path, stale_ok=True)
    summary = report.summarize(used.lock, fresh=used.fresh, packages=packages)
    if as_json:
        _print_json(summary)
        return
    text = report.render(summary)
    if _colour(sys.stdout):
        text = text.replace("NOT ALLOWED", typer.style("NOT ALLOWED", fg="red", bold=True))
        text = text.replace("STALE", typer.style("STALE", fg="yellow", bold=True))
    print(text)


class ExportFormat(StrEnum):
    conda_lock = "conda-lock"
    explicit = "explicit"
    environment = "environment"
    pixi = "pixi"
    role_file = "role-file"


RoleOption = Annotated[
    str | None, typer.Option("--role", "-r", help="client, scheduler or worker.")
]
RequiredRole = Annotated[str, typer.Option("--role", "-r", help="client, scheduler or worker.")]
PlatformOption = Annotated[
    str | None,
    typer.Option(
        "--platform", "-p", help="Conda platform, e.g. linux-64 (default: this machine's)."
    ),
]
PrefixOption = Annotated[
    Path | None,
    typer.Option("--prefix", help="The environment's folder (default: envs/ROLE beside the lock)."),
]


@app.command(short_help="Export the lock for conda-lock, conda/micromamba and pixi.")
@handles_errors
def export(
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="conda-lock (one variant, all its platforms), explicit (@EXPLICIT urls), "
            "environment (environment.yml with exact pins), pixi (every variant and platform), "
            "role-file (the role's GPU requirements for `python -m envbuild.gpucheck`).",
        ),
    ],
    role: RoleOption = None,
    platform: PlatformOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default, or -: stdout)."),
    ] = None,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Export the lock for other conda tools: conda-lock, conda/micromamba, pixi.

    A stale lock (the spec changed since it was locked) is refused.
    """
    from envbuild.lock import conda, exports, locking

    used = locking.locate(spec_path, lock_path)
    target = _output(output)
    text = exports.export(
        used.lock,
        fmt.value,
        target,
        role=role,
        platform=platform,
        source=used.path.name,
        current_platform=conda.current_platform(),
    )
    if text is not None:
        sys.stdout.write(text)
    else:
        print(f"wrote {target}", file=sys.stderr)


CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Package cache (default: pkgs/ under $ENVBUILD_CACHE_DIR or ~/.cache/envbuild).",
    ),
]


@app.command(short_help="Create or update a role's conda environment from the lock.")
@handles_errors
def env(
    role: RequiredRole,
    prefix: PrefixOption = None,
    platform: PlatformOption = None,
    cache_dir: CacheOption = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Also check every installed file, and install again (from the checked "
            "archives) the packages whose files were changed or removed.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Create (or bring up to date) a real conda environment for a role, from the lock.

    Local archives are checked against the lock's sha256 before anything is installed. A
    complete environment is left untouched; a folder that is not an environment is refused.
    Two runs on one prefix take turns; a prefix this command created and could not finish is
    removed.
    """
    from envbuild.env import environments
    from envbuild.lock import conda, locking

    used = locking.locate(spec_path, lock_path)
    target = used.lock.role_target(role, platform or conda.current_platform())
    prefix = prefix or environments.default_prefix(used.path, role)
    outcome = environments.create_env(
        used.lock,
        target,
        prefix,
        cache_dir=cache_dir,
        show_progress=sys.stderr.isatty() and not quiet,
        repair=repair,
        waiting=None if quiet else _note,
    )
    if quiet:
        return
    if outcome.status == "up-to-date":
        print(f"{prefix} already matches {target.target} ({outcome.packages} packages)")
    else:
        print(
            f"{outcome.status} {prefix}: {target.target}, {outcome.packages} packages "
            f"({len(outcome.fetched)} installed) in {outcome.seconds:.2f} s"
        )


@app.command(short_help="Build role images that differ only in their CUDA layer.")
@handles_errors
def image(
    role: Annotated[
        list[str] | None,
        typer.Option("--role", "-r", help="A role to build; repeatable (see envbuild plan)."),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every role that runs on linux-64.")] = False,
    push: Annotated[
        bool, typer.Option("--push", help="Push to image.repository (credentials: Docker config).")
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing", help="Neither build nor push an image the registry has already."
        ),
    ] = False,
    context: Annotated[
        Path | None,
        typer.Option(
            "--context",
            metavar="DIR",
            help="Write the Dockerfile and layers to DIR and stop: no engine needed; build it "
            "with docker build, buildah or kaniko.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be built; build nothing.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Stream the engine's log.")
    ] = False,
    as_json: JsonOption = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Build role images from the lock: the base image, a layer of the packages every variant
    shares, a layer of this variant's own (the CUDA runtime), and the role's files; the
    entrypoint checks the GPU, then runs the role's command.

    Tags are content-addressed: an unchanged lock builds nothing and pushes no layer.
    Uses the engine that DOCKER_HOST names (or the default socket).
    """
    from envbuild.errors import SelectionError
    from envbuild.files.cache import package_cache
    from envbuild.image import build as images
    from envbuild.lock import locking

    if bool(role) == every:
        raise SelectionError("choose roles with --role ROLE (repeatable), or every role with --all")
    used = locking.locate(spec_path, lock_path)
    settings = images.image_settings(used.spec, used.lock)
    roles, skipped = images.select_roles(used.lock, role or [], every)

    def say(message: str) -> None:
        if not as_json:
            print(message, flush=True)

    def engine_log(line: str) -> None:
        if verbose:
            print(f"  {line}", file=sys.stderr, flush=True)

    for name, why in skipped.items():
        say(f"{name:<10} skipped: {why}")
    outcomes = images.build_images(
        used.lock,
        settings,
        roles,
        cache_dir=package_cache(),
        push=push,
        skip_existing=skip_existing,
        context_dir=context,
        dry_run=dry_run,
        log=say,
        engine_log=engine_log,
    )
    if as_json:
        _print_json(
            {
                "images": [o.to_dict() for o in outcomes],
                "skipped": [{"role": r, "why": w} for r, w in skipped.items()],
            }
        )


@app.command(short_help="Print the CI build matrix: a build per variant, what the registry has.")
@handles_errors
def plan(
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the matrix as GitHub Actions reads it (fromJSON)."),
    ] = False,
    github_output: Annotated[
        bool,
        typer.Option(
            "--github-output",
            help="Also write matrix=... and missing=N to the file $GITHUB_OUTPUT names.",
        ),
    ] = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Print the build matrix of the role images: one build per variant (its roles share the
    environment layers), each image's content-addressed tag, and whether the registry
    (image.repository) has it, asked through the registry API without pulling.

    A CI job per build runs `envbuild image ARGS --push --skip-existing`.
    """
    from envbuild.image import build as images
    from envbuild.image import matrix
    from envbuild.lock import locking

    used = locking.locate(spec_path, lock_path)
    settings = images.image_settings(used.spec, used.lock)
    roles, skipped = images.select_roles(used.lock, [], True)
    builds = images.plan_matrix(used.lock, settings, roles)
    document = matrix.github_matrix(builds)
    if github_output:
        target = os.environ.get("GITHUB_OUTPUT")
        if not target:
            raise OutputError("--github-output: GITHUB_OUTPUT is not set (not in GitHub Actions?)")
        missing = sum(len(b.missing) for b in builds)
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(f"matrix={json.dumps(document, separators=(',', ':'))}\n")
            handle.write(f"missing={missing}\n")
    if as_json:
        _print_json(document)
    else:
        print(matrix.render_table(builds, skipped))


class DeployTarget(StrEnum):
    kubernetes = "kubernetes"
    helm = "helm"


def _kubernetes_label(kind: str) -> Callable[[str | None], str | None]:
    """A typer callback that refuses what Kubernetes would refuse as a ``kind``."""

    def check(value: str | None) -> str | None:
        from envbuild.cluster import manifests as deploy

        try:
            return None if value is None else deploy.validate_name(value, kind)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return check


@app.command(
    short_help="Write the Kubernetes cluster (DaskCluster, or Helm values) for the images."
)
@handles_errors
def deploy(
    target: Annotated[
        DeployTarget,
        typer.Argument(
            metavar="kubernetes|helm",
            help="kubernetes: a DaskCluster for the dask-kubernetes operator; helm: values for "
            "the dask Helm chart (helm install NAME dask/dask -f values.yaml).",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            callback=_kubernetes_label("cluster name"),
            help="The DaskCluster's name (default: the spec's name); its scheduler's Service is "
            "NAME-scheduler.",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            "-n",
            callback=_kubernetes_label("namespace"),
            help="The DaskCluster's namespace (default: kubectl's).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        # replicas is an int32 in Kubernetes
        int, typer.Option("--workers", min=0, max=2**31 - 1, help="Worker replicas.")
    ] = 4,
    pin_digests: Annotated[
        bool,
        typer.Option(
            "--pin-digests",
            help="Name the images by tag and registry digest (repo:tag@sha256:...), so that a "
            "tag moved in the registry cannot change what runs.",
        ),
    ] = False,
    no_registry_check: Annotated[
        bool,
        typer.Option(
            "--no-registry-check",
            help="Do not ask the registry whether it has the images (for a cluster that has them "
            "loaded already, e.g. kind load docker-image).",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default, or -: stdout)."),
    ] = None,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Write the Kubernetes cluster of the locked scheduler and worker images.

    The images go by their content-addressed tags, which the registry (image.repository) must
    have: `envbuild image --all --push` first. Each pod runs its role's command through the
    image's entrypoint (the GPU check, then the Dask guard), asks for the role's GPUs
    (nvidia.com/gpu), and may land only on nodes whose GPU Feature Discovery labels show the
    role's compute capability and a driver that runs its CUDA runtime. The CPU client is not
    deployed: it connects to the scheduler's Service (see the README).

    \b
    Examples:
      envbuild deploy kubernetes --workers 8 -o cluster.yaml && kubectl apply -f cluster.yaml
      envbuild deploy helm -o values.yaml && helm install dask dask/dask -f values.yaml
    """
    from envbuild.cluster import manifests as rendering
    from envbuild.errors import SelectionError
    from envbuild.files.atomic import write_atomic
    from envbuild.image import build as images
    from envbuild.lock import locking
    from envbuild.lock.lockfile import content_digest

    if target is DeployTarget.helm and (name or namespace):
        raise SelectionError(
            "--name and --namespace are helm's: helm install NAME dask/dask -n NAMESPACE -f FILE"
        )
    used = locking.locate(spec_path, lock_path)
    settings = images.image_settings(used.spec, used.lock)
    references = images.cluster_images(
        used.lock,
        settings,
        rendering.CLUSTER_ROLES,
        check_registry=not no_registry_check,
        pin_digests=pin_digests,
    )
    if target is DeployTarget.kubernetes:
        document = rendering.dask_cluster(
            used.lock,
            references,
            name=name or rendering.default_name(used.lock),
            namespace=namespace,
            workers=workers,
        )
    else:
        document = rendering.helm_values(used.lock, references, workers=workers)
    text = rendering.render(document, source=used.path.name, digest=content_digest(used.lock))
    destination = _output(output)
    if destination is None:
        sys.stdout.write(text)
        return
    write_atomic(destination, text)
    print(f"wrote {destination}", file=sys.stderr)


@app.command(short_help="Check that an environment holds exactly the lock (exit 12 if not).")
@handles_errors
def verify(
    role: RequiredRole,
    prefix: PrefixOption = None,
    platform: PlatformOption = None,
    files: Annotated[
        bool,
        typer.Option(
            "--files",
            help="Also check every installed file: content (sha256), and that files, links "
            "and folders are what their packages installed.",
        ),
    ] = False,
    no_stamp: Annotated[
        bool,
        typer.Option(
            "--no-stamp",
            "--no-marker",
            help="Do not require envbuild's stamp (for environments made by other tools from "
            "an export).",
        ),
    ] = False,
    as_json: JsonOption = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Check that an environment holds exactly what the lock says (exit 12 when it does not).

    When it does not, the command that repairs it is printed.
    """
    from envbuild.env import environments
    from envbuild.lock import conda, locking

    used = locking.locate(spec_path, lock_path)
    target = used.lock.role_target(role, platform or conda.current_platform())
    prefix = prefix or environments.default_prefix(used.path, role)
    _require_environment(prefix, role)
    report = environments.verify_prefix(target, prefix, files=files, stamp=not no_stamp)
    if as_json:
        _print_json(report.to_dict())
    elif report.clean:
        print(f"{prefix} matches {target.target} ({len(target.packages)} packages)")
    if not report.clean:
        raise _mismatch(report, role, prefix, platform, spec_path, lock_path)


def _require_environment(prefix: Path, role: str) -> None:
    if not prefix.exists():
        raise PrefixMismatchError(
            f"{prefix}: no environment there; create it with: "
            f"envbuild env --role {role} --prefix {prefix}"
        )


def _mismatch(
    report: Any,
    role: str,
    prefix: Path,
    platform: str | None,
    spec_path: Path | None,
    lock_path: Path | None,
) -> PrefixMismatchError:
    """What verify found, with the one command that repairs it."""
    import shlex

    fix = ["envbuild", "env", "--role", role, "--prefix", str(prefix)]
    for flag, value in (("--platform", platform), ("-f", spec_path), ("--lockfile", lock_path)):
        if value:
            fix += [flag, str(value)]
    if report.files:
        fix.append("--repair")
    problems = report.problems()
    return PrefixMismatchError(
        f"{prefix} differs from the lock's {report.target}: {len(problems)} problem"
        f"{'s' if len(problems) != 1 else ''}; repair it with: {shlex.join(fix)}",
        details="\n".join(problems),
    )


@app.command(
    short_help="Run a command inside a role's environment.",
    context_settings={"ignore_unknown_options": True},
)
@handles_errors
def run(
    role: RequiredRole,
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command and its arguments, after --.", show_default=False),
    ] = None,
    prefix: PrefixOption = None,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Run even when the environment differs from the lock."),
    ] = False,
    spec_path: SpecOption = None,
    lock_path: LockOption = None,
) -> None:
    """Run a command inside a role's environment, activated as conda activates it
    (PATH, CONDA_PREFIX, the packages' activation scripts).

    The environment must be what `envbuild verify` accepts, or the command is refused with
    the same message (exit 12); --no-verify runs it anyway. The command's exit code is
    envbuild's: `envbuild run --role worker -- dask worker tcp://scheduler:8786`.
    """
    from envbuild.env import environments
    from envbuild.lock import conda, locking

    used = locking.locate(spec_path, lock_path)
    platform = conda.current_platform()
    target = used.lock.role_target(role, platform)
    prefix = prefix or environments.default_prefix(used.path, role)
    _require_environment(prefix, role)
    if not no_verify:
        report = environments.verify_prefix(target, prefix)
        if not report.clean:
            raise _mismatch(report, role, prefix, None, spec_path, lock_path)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    environments.exec_in(prefix, platform, command or [], {"ENVBUILD_ROLE": role})


@app.command(short_help="Print the JSON Schema of envbuild.yaml (for editors).")
def schema() -> None:
    """Print the JSON Schema of envbuild.yaml (for editors: yaml-language-server)."""
    from envbuild.spec.model import json_schema

    _print_json(json_schema())


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main() -> None:
    """Console-script entry point."""
    try:
        app()
        status = 0
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    # Skip interpreter shutdown: rattler's runtime threads may still be dropping Python objects
    # right after a solve, and racing them can abort the process (see envbuild.lock.conda.Solver).
    # Every file is written (atomically, fsynced) before this point; envbuild has no exit hooks.
    os._exit(status)
