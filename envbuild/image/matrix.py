"""``envbuild plan``: the CI build matrix of a lock's role images.

One build per variant: the roles that share a variant share its environment layers, so one
CI job builds their images together (``envbuild image --role scheduler --role worker``).
Each image has its content-addressed tag and, when the spec names a registry, whether the
registry holds it already (one HEAD of its manifest: nothing is pulled). The JSON is a
GitHub Actions matrix as it is (``fromJSON``): ``{"include": [...]}``, one entry per build.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envbuild.image.plan import IMAGE_PLATFORM, ImagePlan


@dataclass(frozen=True)
class PlannedImage:
    """One role image of the matrix."""

    role: str
    variant: str
    reference: str
    #: None: no registry to ask (the spec names no image.repository)
    in_registry: bool | None
    #: the base image and its digest (a moved base tag gives new images)
    base: str = ""
    base_digest: str | None = None


@dataclass(frozen=True)
class Build:
    """The images of one variant, built by one CI job."""

    variant: str
    images: tuple[PlannedImage, ...]

    @property
    def roles(self) -> list[str]:
        return [i.role for i in self.images]

    @property
    def missing(self) -> list[str]:
        """Roles whose image the registry lacks (all of them when there is no registry)."""
        return [i.role for i in self.images if not i.in_registry]


def plan_builds(plans: Sequence[ImagePlan], look_up: Callable[[str], bool] | None) -> list[Build]:
    """Group ``plans`` by variant, asking ``look_up`` (None: no registry) for each tag."""
    by_variant: dict[str, list[PlannedImage]] = {}
    for plan in plans:
        present = look_up(plan.reference) if look_up is not None else None
        base, digest = plan.settings.base, plan.settings.base_digest
        image = PlannedImage(plan.role, plan.variant, plan.reference, present, base, digest)
        by_variant.setdefault(plan.variant, []).append(image)
    return [Build(variant, tuple(images)) for variant, images in sorted(by_variant.items())]


def github_matrix(builds: Sequence[Build]) -> dict[str, list[dict[str, Any]]]:
    """The matrix: ``strategy: {matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}}``."""
    return {
        "include": [
            {
                "variant": build.variant,
                "platform": IMAGE_PLATFORM,
                "roles": " ".join(build.roles),
                "args": " ".join(f"--role {role}" for role in build.roles),
                "images": " ".join(i.reference for i in build.images),
                "missing": " ".join(build.missing),
                "present": not build.missing,
                "base": build.images[0].base,
                "base_digest": build.images[0].base_digest,
            }
            for build in builds
        ]
    }


def render_table(builds: Sequence[Build], skipped: Mapping[str, str]) -> str:
    """A table for people: one row per role image, grouped by build."""
    state = {True: "in the registry", False: "missing", None: "no registry"}
    rows = [["build", "role", "variant", "image", "registry"]]
    for number, build in enumerate(builds, 1):
        for image in build.images:
            rows.append(
                [str(number), image.role, image.variant, image.reference, state[image.in_registry]]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines += [f"{role}: no image ({why})" for role, why in skipped.items()]
    bases = {(i.base, i.base_digest) for b in builds for i in b.images if i.base_digest}
    lines += [f"base {name}: {digest}" for name, digest in sorted(bases)]
    todo = sum(len(b.missing) for b in builds)
    lines.append(
        f"{len(builds)} build{'s' if len(builds) != 1 else ''} "
        f"({', '.join(b.variant for b in builds)}); {todo} image{'s' if todo != 1 else ''} to build"
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
