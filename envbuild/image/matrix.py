"""``envbuild plan``: the CI build matrix of a lock's role images.

One build per variant and platform: the roles that share a variant share its environment
layers, so one CI job builds their images of one platform together (``envbuild image
--role scheduler --role worker --platform linux-64``), on an x86 runner for every platform
(building an arm64 image runs nothing, so needs no Arm machine and no emulation). Each image
has its content-addressed tag and, when the spec names a registry, whether the registry
holds it already (one HEAD of its manifest: nothing is pulled). A role of several platforms
is complete when its index is there too; the job that pushes the last of its images pushes
the index. The JSON is a GitHub Actions matrix as it is (``fromJSON``): ``{"include":
[...]}``, one entry per build.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envbuild.image.plan import RolePlan


@dataclass(frozen=True)
class PlannedImage:
    """One role image of the matrix: a role's image for one platform."""

    role: str
    variant: str
    reference: str
    #: None: no registry to ask (the spec names no image.repository)
    in_registry: bool | None
    #: the base image and its digest (a moved base tag gives new images)
    base: str = ""
    base_digest: str | None = None
    platform: str = "linux-64"
    #: the role's index, when it has several platforms, and whether the registry has it
    index: str | None = None
    index_in_registry: bool | None = None

    @property
    def complete(self) -> bool | None:
        """Whether the registry has what this build adds (the image, and its role's index)."""
        if self.index is None or not self.in_registry:
            return self.in_registry
        return self.index_in_registry


@dataclass(frozen=True)
class Build:
    """The images of one variant for one platform, built by one CI job."""

    variant: str
    images: tuple[PlannedImage, ...]
    platform: str = "linux-64"

    @property
    def roles(self) -> list[str]:
        return [i.role for i in self.images]

    @property
    def missing(self) -> list[str]:
        """Roles whose image (or index) the registry lacks (all when there is no registry)."""
        return [i.role for i in self.images if not i.complete]


def plan_builds(plans: Sequence[RolePlan], look_up: Callable[[str], bool] | None) -> list[Build]:
    """Group the images of ``plans`` by variant and platform, asking ``look_up`` (None: no
    registry) for each tag."""
    by_build: dict[tuple[str, str], list[PlannedImage]] = {}
    for role in plans:
        index = role.reference if role.is_index else None
        index_there = look_up(index) if index is not None and look_up is not None else None
        for plan in role.images:
            present = look_up(plan.reference) if look_up is not None else None
            base, digest = plan.settings.base, plan.settings.base_digest
            image = PlannedImage(
                plan.role,
                plan.variant,
                plan.reference,
                present,
                base,
                digest,
                plan.platform,
                index,
                index_there,
            )
            by_build.setdefault((plan.variant, plan.platform), []).append(image)
    return [
        Build(variant, tuple(images), platform)
        for (variant, platform), images in sorted(by_build.items())
    ]


def github_matrix(builds: Sequence[Build]) -> dict[str, list[dict[str, Any]]]:
    """The matrix: ``strategy: {matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}}``."""
    return {
        "include": [
            {
                "variant": build.variant,
                "platform": build.platform,
                "roles": " ".join(build.roles),
                "args": " ".join(
                    [*(f"--role {role}" for role in build.roles), f"--platform {build.platform}"]
                ),
                "images": " ".join(i.reference for i in build.images),
                "indexes": " ".join(i.index for i in build.images if i.index),
                "missing": " ".join(build.missing),
                "present": not build.missing,
                "base": build.images[0].base,
                "base_digest": build.images[0].base_digest,
            }
            for build in builds
        ]
    }


def render_table(builds: Sequence[Build], skipped: Mapping[str, str]) -> str:
    """A table for people: one row per role image, grouped by build; then the indexes."""
    state = {True: "in the registry", False: "missing", None: "no registry"}
    rows = [["build", "role", "variant", "platform", "image", "registry"]]
    for number, build in enumerate(builds, 1):
        for image in build.images:
            rows.append(
                [
                    str(number),
                    image.role,
                    image.variant,
                    image.platform,
                    image.reference,
                    state[image.in_registry],
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    indexes: dict[str, tuple[str, list[str], bool | None]] = {}
    for image in (i for b in builds for i in b.images if i.index):
        assert image.index is not None
        found = indexes.setdefault(image.role, (image.index, [], image.index_in_registry))
        found[1].append(image.platform)
    lines += [
        f"{role}: index {index} ({', '.join(platforms)}): {state[there]}"
        for role, (index, platforms, there) in indexes.items()
    ]
    lines += [f"{role}: no image ({why})" for role, why in skipped.items()]
    bases = {(i.base, i.base_digest) for b in builds for i in b.images if i.base_digest}
    lines += [f"base {name}: {digest}" for name, digest in sorted(bases)]
    todo = sum(len(b.missing) for b in builds)
    names = ", ".join(f"{b.variant} {b.platform}" for b in builds)
    lines.append(
        f"{len(builds)} build{'s' if len(builds) != 1 else ''} ({names}); "
        f"{todo} image{'s' if todo != 1 else ''} to build"
    )
    return "\n".join(lines)


def write_github_output(builds: Sequence[Build]) -> None:
    """Append ``matrix=...`` and ``missing=N`` to the file ``$GITHUB_OUTPUT`` names."""
    import json
    import os
    from pathlib import Path

    from envbuild.errors import OutputError

    target = os.environ.get("GITHUB_OUTPUT")
    if not target:
        raise OutputError("--github-output: GITHUB_OUTPUT is not set (not in GitHub Actions?)")
    document = github_matrix(builds)
    missing = sum(len(b.missing) for b in builds)
    with Path(target).open("a", encoding="utf-8") as handle:
        handle.write(f"matrix={json.dumps(document, separators=(',', ':'))}\n")
        handle.write(f"missing={missing}\n")
