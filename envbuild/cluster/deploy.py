"""``envbuild deploy``: the Kubernetes cluster of a lock's scheduler and worker images.

The images a cluster pulls are confirmed with the registry (``envbuild.image.registry``) by
their content-addressed tags, optionally pinned by digest; the documents themselves are
rendered by the pure functions of ``envbuild.cluster.manifests``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from envbuild.cluster import manifests
from envbuild.env import runtime
from envbuild.errors import ImageBuildError
from envbuild.image.plan import ImageSettings, buildable_roles, plan_role
from envbuild.lock.lockfile import Lock, content_digest


def deployment(
    lock: Lock,
    settings: ImageSettings,
    kind: Literal["kubernetes", "helm"],
    *,
    source: str,
    name: str | None,
    namespace: str | None,
    workers: int,
    check_registry: bool,
    pin_digests: bool,
    sizing: Mapping[str, manifests.Sizing] | None = None,
    resolve: Callable[[ImageSettings], ImageSettings] = lambda settings: settings,
) -> str:
    """The DaskCluster (``kubernetes``) or the dask chart's values (``helm``), as YAML text."""
    from envbuild.errors import SelectionError

    if kind == "helm" and (name or namespace):
        raise SelectionError(
            "--name and --namespace are helm's: helm install NAME dask/dask -n NAMESPACE -f FILE"
        )
    references = cluster_images(
        lock,
        settings,
        manifests.CLUSTER_ROLES,
        check_registry=check_registry,
        pin_digests=pin_digests,
        resolve=resolve,
    )
    if kind == "kubernetes":
        document = manifests.dask_cluster(
            lock,
            references,
            name=name or manifests.default_name(lock),
            namespace=namespace,
            workers=workers,
            sizing=sizing,
        )
    else:
        document = manifests.helm_values(lock, references, workers=workers, sizing=sizing)
    return manifests.render(document, source=source, digest=content_digest(lock))


def role_sizing(spec_path: Path | None) -> dict[str, manifests.Sizing]:
    """The spec's ``roles.ROLE.resources`` (none for a lock used without its spec)."""
    if spec_path is None:
        return {}
    from envbuild.spec.file import load_spec

    spec = load_spec(spec_path).spec
    found = {}
    for role in manifests.CLUSTER_ROLES:
        resources = spec.role(role).resources
        if resources is not None:
            found[role] = manifests.Sizing(resources.cpu, resources.memory, resources.threads)
    return found


def cluster_images(
    lock: Lock,
    settings: ImageSettings,
    roles: Sequence[str],
    *,
    check_registry: bool = True,
    pin_digests: bool = False,
    resolve: Callable[[ImageSettings], ImageSettings] = lambda settings: settings,
) -> dict[str, str]:
    """``envbuild deploy``: role -> the image reference a cluster pulls: the content-addressed
    tag (with ``@sha256:...`` when ``pin_digests``), after the registry confirmed it has each
    one. Refuses images that have no registry, or that it lacks, naming the command to run.
    ``resolve`` completes the settings with the base's digest (the tags depend on it), once
    nothing else is in the way."""
    from envbuild.errors import ImageMissingError, RegistryError, SelectionError
    from envbuild.image import registry

    _, skipped = buildable_roles(lock)
    for role in roles:
        if role in skipped:
            raise ImageBuildError(f"no image for role '{role}': {skipped[role]}")
    if check_registry and settings.local:
        raise ImageMissingError(
            f"the images ({settings.repository}) have no registry a cluster can pull from: set "
            "image.repository in envbuild.yaml, run `envbuild image --all --push`, then deploy "
            "(or pass --no-registry-check for a cluster that has the images loaded already)"
        )
    if pin_digests and not check_registry:
        raise SelectionError(
            "--pin-digests asks the registry for the digests: drop --no-registry-check"
        )
    settings = resolve(settings)
    source = runtime.files()
    # A role of several platforms: its tag names the index, and each node pulls its own.
    plans = {role: plan_role(lock, role, settings, source) for role in roles}
    references = {role: plan.reference for role, plan in plans.items()}
    if not check_registry:
        return references
    digests = {role: registry.manifest_digest(reference) for role, reference in references.items()}
    missing = [role for role, digest in digests.items() if digest is None]
    if missing:
        flags = " ".join(f"--role {role}" for role in missing)
        raise ImageMissingError(
            f"{references[missing[0]]} is not in the registry: build and push it first "
            f"(`envbuild image {flags} --push`)"
        )
    if not pin_digests:
        return references
    for role, digest in digests.items():
        if not digest:
            raise RegistryError(
                f"the registry has {references[role]} but did not say its digest "
                "(no Docker-Content-Digest header): deploy without --pin-digests"
            )
    return {role: f"{references[role]}@{digests[role]}" for role in roles}
