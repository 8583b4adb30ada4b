"""``envbuild deploy``: the Kubernetes cluster (DaskCluster or Helm values) for the images."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import typer

from envbuild.cli.app import LockOption, OutputOption, SpecOption, app, emit, handles_errors


class DeployTarget(StrEnum):
    kubernetes = "kubernetes"
    helm = "helm"


def _kubernetes_label(kind: str) -> Callable[[str | None], str | None]:
    """A typer callback that refuses what Kubernetes would refuse as a ``kind``."""

    def check(value: str | None) -> str | None:
        from envbuild.cluster import manifests

        try:
            return None if value is None else manifests.validate_name(value, kind)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return check


Kind = Annotated[
    DeployTarget,
    typer.Argument(
        metavar="kubernetes|helm",
        help="kubernetes: a DaskCluster for the dask-kubernetes operator; helm: values for "
        "the dask Helm chart (helm install NAME dask/dask -f values.yaml).",
        show_default=False,
    ),
]
Name = Annotated[
    str | None,
    typer.Option(
        "--name",
        callback=_kubernetes_label("cluster name"),
        help="The DaskCluster's name (default: the spec's name); its scheduler's Service is "
        "NAME-scheduler.",
        show_default=False,
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        callback=_kubernetes_label("namespace"),
        help="The DaskCluster's namespace (default: kubectl's).",
        show_default=False,
    ),
]
# replicas is an int32 in Kubernetes
Workers = Annotated[int, typer.Option("--workers", min=0, max=2**31 - 1, help="Worker replicas.")]
PinDigests = Annotated[
    bool,
    typer.Option(
        "--pin-digests",
        help="Name the images by tag and registry digest (repo:tag@sha256:...), so that a "
        "tag moved in the registry cannot change what runs.",
    ),
]
NoRegistryCheck = Annotated[
    bool,
    typer.Option(
        "--no-registry-check",
        help="Do not ask the registry whether it has the images (for a cluster that has them "
        "loaded already, e.g. kind load docker-image).",
    ),
]


@app.command(
    short_help="Write the Kubernetes cluster (DaskCluster, or Helm values) for the images."
)
@handles_errors
def deploy(
    target: Kind,
    name: Name = None,
    namespace: Namespace = None,
    workers: Workers = 4,
    pin_digests: PinDigests = False,
    no_registry_check: NoRegistryCheck = False,
    output: OutputOption = None,
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
    from envbuild.cluster.deploy import deployment, role_sizing
    from envbuild.image.build import image_settings, with_base_digest
    from envbuild.lock import locking

    used = locking.locate(spec_path, lock_path)
    text = deployment(
        used.lock,
        image_settings(used.spec, used.lock),
        target.value,
        resolve=lambda settings: with_base_digest(settings, used.spec),
        source=used.path.name,
        name=name,
        namespace=namespace,
        workers=workers,
        check_registry=not no_registry_check,
        pin_digests=pin_digests,
        sizing=role_sizing(used.spec),
    )
    emit(text, output)
