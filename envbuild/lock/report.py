"""``envbuild show``: what a lock holds, as a summary (JSON-able) and as text. Pure functions."""

from __future__ import annotations

from typing import Any

from envbuild.lock.consistency import variant_differences
from envbuild.lock.lockfile import Lock
from envbuild.spec.platforms import PLATFORMS


def summarize(lock: Lock, *, fresh: bool | None, packages: bool = False) -> dict[str, Any]:
    """Roles -> variant; per target its package count; what differs between variants and why;
    with ``packages``, every package of every target.

    ``fresh`` says whether the lock matches the spec (None: no spec to compare with).
    """
    differences = variant_differences(lock.by_target(), lock.gpu_dependencies)
    summary: dict[str, Any] = {
        "name": lock.name,
        "spec-hash": lock.spec_hash,
        "fresh": fresh,
        "channels": list(lock.channels),
        "roles": [
            {
                "role": role.name,
                "variant": role.variant,
                "platforms": list(role.platforms),
                "architectures": list(dict.fromkeys(PLATFORMS[p][1] for p in role.platforms)),
                "cuda": role.cuda,
                "compute-capability": role.compute_capability,
                "gpus": role.gpus,
            }
            for role in lock.roles
        ],
        "targets": [
            {
                "target": str(t.target),
                "packages": len(t.packages),
                **({"pypi-packages": len(t.wheels)} if t.wheels else {}),
            }
            for t in lock.targets
        ],
        "differences": [
            {
                "platform": d.platform,
                "package": d.package,
                "variants": dict(d.builds),
                "reason": d.reason,
            }
            for d in differences
        ],
    }
    if any(t.wheels for t in lock.targets):
        summary["pypi-packages"] = pypi_summary(lock)
    if packages:
        summary["packages"] = {
            str(t.target): [
                {"name": p.name, "version": p.version, "build": p.build, "subdir": p.subdir}
                for p in t.packages
            ]
            for t in lock.targets
        }
    return summary


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def render(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    freshness = {True: "matches the spec", False: "STALE: run `envbuild lock`", None: ""}
    lines = [f"{summary['name']}  ({summary['spec-hash'][:19]}…) {freshness[summary['fresh']]}"]
    lines.append("roles:")
    role_rows = []
    for role in summary["roles"]:
        gpu = "no GPU"
        if role["cuda"]:
            gpu = f"GPU: CUDA {role['cuda']}"
            if role["compute-capability"]:
                gpu += f", compute capability {role['compute-capability']}"
            if role["gpus"] > 1:
                gpu += f", {role['gpus']} GPUs"
        where = f"{', '.join(role['platforms'])} ({', '.join(role['architectures'])})"
        role_rows.append([role["role"], role["variant"], where, gpu])
    lines += _table(role_rows)
    lines.append("targets:")
    lines += _table(
        [
            [t["target"], f"{t['packages']} packages"]
            + ([f"+ {t['pypi-packages']} from PyPI"] if "pypi-packages" in t else [])
            for t in summary["targets"]
        ]
    )
    if summary["differences"]:
        lines.append("differences between variants:")
        rows = []
        for d in summary["differences"]:
            shown = "  ".join(f"{v}: {b or '-'}" for v, b in d["variants"].items())
            rows.append([d["platform"], d["package"], shown, d["reason"] or "NOT ALLOWED"])
        lines += _table(rows)
    else:
        lines.append("differences between variants: none")
    if "pypi-packages" in summary:
        lines.append("PyPI packages (wheels, installed after the conda packages):")
        lines += _table(
            [
                [
                    p["name"],
                    "  ".join(f"{v}: {', '.join(t)}" for v, t in p["versions"].items()),
                    f"from {p['source']}",
                    f"needed by {', '.join(p['needed-by'])}",
                ]
                for p in summary["pypi-packages"]
            ]
        )
    if "packages" in summary:
        lines += render_packages(summary)
    return "\n".join(lines)


def pypi_summary(lock: Lock) -> list[dict[str, Any]]:
    """Every PyPI package: its version(s) with their targets, where its wheels come from, and
    what needs it (a spec requirement, or another PyPI package)."""
    import re

    from envbuild.lock.wheels import normalize

    def name_of(requirement: str) -> str:
        return normalize(re.split(r"[\s\[(<>=!~;]", requirement.strip(), maxsplit=1)[0])

    found: dict[str, dict[str, Any]] = {}
    for target in lock.targets:
        asked = {name_of(r) for r in target.pypi_specs}
        for wheel in target.wheels:
            entry = found.setdefault(
                wheel.name,
                {"name": wheel.name, "versions": {}, "sources": set(), "needed-by": set()},
            )
            entry["versions"].setdefault(wheel.version, []).append(str(target.target))
            entry["sources"].add(_source(wheel.url))
            if wheel.name in asked:
                entry["needed-by"].add("the spec")
            for other in target.wheels:
                if wheel.name in {name_of(r) for r in other.requires_dist}:
                    entry["needed-by"].add(other.name)
    return [
        {
            "name": e["name"],
            "versions": e["versions"],
            "source": ", ".join(sorted(e["sources"])),
            "needed-by": sorted(e["needed-by"]),
        }
        for _, e in sorted(found.items())
    ]


def _source(url: str) -> str:
    """Where a wheel comes from: the index's host, or the local folder."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme == "file":
        return parsed.path.rsplit("/", 1)[0]
    return parsed.netloc


def render_packages(summary: dict[str, Any]) -> list[str]:
    """A package x target table of versions, each target headed by the roles that use it."""
    targets = list(summary["packages"])
    roles_of = {
        t: ", ".join(r["role"] for r in summary["roles"] if t.startswith(r["variant"] + "/"))
        for t in targets
    }
    versions: dict[str, dict[str, str]] = {}
    for target, packages in summary["packages"].items():
        for package in packages:
            versions.setdefault(package["name"], {})[target] = package["version"]
    for package in summary.get("pypi-packages", []):
        for version, where in package["versions"].items():
            for target in where:
                versions.setdefault(f"{package['name']} (pypi)", {})[target] = version
    header = [["package", *(roles_of[t] or "-" for t in targets)], ["", *targets]]
    rows = [[name, *(v.get(t, "-") for t in targets)] for name, v in sorted(versions.items())]
    return ["packages:", *_table(header + rows)]


def summarize_stamp(
    prefix: str, stamp: dict[str, Any] | None, lock_digest: str | None
) -> dict[str, Any]:
    """What an environment says it runs, and whether that is the lock in use."""
    found = stamp or {}
    return {
        "prefix": prefix,
        "stamp": bool(stamp),
        "lock": found.get("lock"),
        "target": found.get("target"),
        "variant": found.get("variant"),
        "platform": found.get("platform"),
        "roles": found.get("roles"),
        "this-lock": None if lock_digest is None or not stamp else found.get("lock") == lock_digest,
    }


def render_stamp(summary: dict[str, Any]) -> str:
    """The stamp summary as text."""
    if not summary["stamp"]:
        return f"{summary['prefix']}: no envbuild stamp (not made by envbuild env or image)"
    verdict = {True: "the lock in use", False: "ANOTHER lock than the one in use", None: ""}
    return "\n".join(
        [
            f"{summary['prefix']}: lock {summary['lock']}",
            f"  target {summary['target']} (roles: {', '.join(summary['roles'] or [])})",
            f"  {verdict[summary['this-lock']]}".rstrip(),
        ]
    ).rstrip()
