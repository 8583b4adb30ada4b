"""The CI image pipeline, step by step as a team's CI runs it, on a real engine and registry;
and the CI examples a team copies."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import yaml

from .conftest import REPO, ContainerSetup, image_section, require, runnable_spec

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
EXAMPLES = REPO / "examples" / "ci"
SECRET = "ci-token-never-printed"


@pytest.mark.slow
def test_lock_check_plan_build_push_and_only_what_changed(
    runnable_channel: Path, containers: ContainerSetup, tmp_path: Path
) -> None:
    repository = f"{containers.registry.address}/pipeline"
    spec = runnable_spec(
        tmp_path,
        runnable_channel,
        edit=image_section(containers.base, repository),
    )
    config = tmp_path / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"ci:{SECRET}".encode()).decode()
    (config / "config.json").write_text(
        json.dumps({"auths": {containers.registry.address: {"auth": auth}}})
    )
    env = {
        **os.environ,
        "DOCKER_HOST": containers.host,
        "DOCKER_CONFIG": str(config),
        "ENVBUILD_CACHE_DIR": str(tmp_path / "cache"),
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "github-output"),
    }
    said: list[str] = []

    def envbuild(*args: object) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [ENVBUILD, *map(str, args), "-f", str(spec)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        said.append(done.stdout + done.stderr)
        return done

    def plan() -> dict[tuple[str, str], dict[str, object]]:
        done = envbuild("plan", "--json")
        assert done.returncode == 0, done.stderr
        entries = json.loads(done.stdout)["include"]
        return {(entry["variant"], entry["platform"]): entry for entry in entries}

    assert envbuild("lock", "-q").returncode == 0
    assert envbuild("lock", "--check").returncode == 0
    # 1. Nothing in the registry: a build per variant and platform (the workers are A100s
    #    and GH200s), every image missing.
    first = plan()
    gpu, arm, cpu = ("cuda-12.4", "linux-64"), ("cuda-12.4", "linux-aarch64"), ("cpu", "linux-64")
    assert sorted(first) == [cpu, gpu, arm]
    assert first[gpu]["roles"] == "scheduler worker"
    assert first[gpu]["args"] == "--role scheduler --role worker --platform linux-64"
    assert first[arm]["args"] == "--role worker --platform linux-aarch64"
    assert first[gpu]["missing"] == "scheduler worker" and first[cpu]["missing"] == "client"
    assert first[arm]["missing"] == "worker" and first[arm]["indexes"] == first[gpu]["indexes"]
    # 2. Each build's job, as the matrix drives it (here one after the other; on CI at once).
    jobs = {}
    for key, entry in first.items():
        job = envbuild("image", *str(entry["args"]).split(), "--push", "--skip-existing")
        assert job.returncode == 0, job.stderr
        assert job.stdout.count(" built ") == len(str(entry["roles"]).split())
        jobs[key] = job.stdout
    # The worker's tag names the index of both: pushed by the job that completed it, not
    # before (a tag never names half an index).
    assert "not pushed yet" in jobs[gpu] and "linux-aarch64 image too" in jobs[gpu]
    assert ": pushed (linux-64, linux-aarch64)" in jobs[arm]
    # 3. Everything is in the registry: the plan says so, and a second run does nothing.
    assert all(entry["present"] and entry["missing"] == "" for entry in plan().values())
    table = envbuild("plan")
    assert table.stdout.count("in the registry") == 5  # four images, one index
    assert "0 images to build" in table.stdout
    again = envbuild("image", "--all", "--push", "--skip-existing")
    assert again.returncode == 0
    assert again.stdout.count("is in the registry: skipped") == 3
    assert " built " not in again.stdout and "layers sent" not in again.stdout
    # A dry run says what the same command would do: it asks the registry too.
    dry = envbuild("image", "--all", "--dry-run", "--skip-existing")
    assert dry.returncode == 0 and dry.stdout.count("is in the registry: skipped") == 3
    # 3b. Deploy: the cluster pulls exactly what was pushed, pinned to the registry's digests.
    deployed = envbuild("deploy", "kubernetes", "--pin-digests", "-o", tmp_path / "cluster.yaml")
    assert deployed.returncode == 0, deployed.stderr
    cluster = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    engine = docker.DockerClient(base_url=containers.host)
    for role in ("scheduler", "worker"):
        image = cluster["spec"][role]["spec"]["containers"][0]["image"]
        tagged, digest = image.split("@")
        assert tagged.startswith(f"{repository}:{role}-cuda-12.4-")
        pulled = engine.images.pull(*tagged.rsplit(":", 1))  # pushed without an engine
        assert f"{repository}@{digest}" in pulled.attrs["RepoDigests"]
    # 4. The spec changes: the lock check fails, with its exit code and an annotation.
    spec.write_text(
        spec.read_text().replace('compute-capability: ">=8.0"', 'compute-capability: ">=9.0"')
    )
    stale = envbuild("lock", "--check")
    assert stale.returncode == 4
    assert "::error title=envbuild::" in stale.stderr and "is stale" in stale.stderr
    # 5. Re-lock: only the images whose content changed are missing, and only they are built.
    assert envbuild("lock", "-q").returncode == 0
    changed = plan()
    assert changed[gpu]["missing"] == "worker" and changed[cpu]["missing"] == ""
    assert changed[arm]["missing"] == "worker"
    early = envbuild("deploy", "helm")  # before the jobs pushed the new worker images
    assert early.returncode == 17 and "`envbuild image --role worker --push`" in early.stderr
    job = envbuild("image", *str(changed[gpu]["args"]).split(), "--push", "--skip-existing")
    assert job.returncode == 0, job.stderr
    assert "scheduler  cuda-12.4  " in job.stdout and "is in the registry: skipped" in job.stdout
    assert job.stdout.count(" built ") == 1 and "worker     cuda-12.4  built" in job.stdout
    assert envbuild("deploy", "helm").returncode == 17  # the arm64 image is not there yet
    job = envbuild("image", *str(changed[arm]["args"]).split(), "--push", "--skip-existing")
    assert job.returncode == 0 and ": pushed (linux-64, linux-aarch64)" in job.stdout
    # GitHub outputs were written; no credential was ever printed.
    envbuild("plan", "--github-output")
    output = (tmp_path / "github-output").read_text()
    assert re.search(r"^matrix=\{\"include\":", output, re.MULTILINE) and "missing=0" in output
    assert not any(SECRET in text for text in said)


def test_the_github_workflow_passes_actionlint(tmp_path: Path) -> None:
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    require(actionlint is not None, "actionlint (a dev dependency) is not installed")
    assert actionlint is not None
    workflow = EXAMPLES / "github-actions.yml"
    done = subprocess.run([actionlint, "-no-color", str(workflow)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(workflow.read_text().replace("needs: plan", "needs: plann"))
    assert subprocess.run([actionlint, str(broken)], capture_output=True).returncode != 0


def _envbuild_lines(text: str) -> list[list[str]]:
    lines = []
    for line in text.splitlines():
        command = line.split(" #")[0]
        found = re.search(r"(?:run:|^\s*-)\s+envbuild ([a-z]+)(.*)", command)
        if found:
            lines.append([found.group(1), *re.findall(r"(--[a-z-]+)", found.group(2))])
    return lines


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_every_envbuild_command_in_the_examples_exists(name: str) -> None:
    commands = _envbuild_lines((EXAMPLES / name).read_text())
    assert commands, name
    for command, *flags in commands:
        helped = subprocess.run(
            [ENVBUILD, command, "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert helped.returncode == 0, f"envbuild {command}"
        for flag in flags:
            assert flag in helped.stdout, f"envbuild {command} has no {flag}"


def test_the_gitlab_pipeline_hangs_together() -> None:
    document = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    stages = document["stages"]
    jobs = {k: v for k, v in document.items() if isinstance(v, dict) and "script" in v}
    assert set(jobs) == {"lock-check", "images"}
    for name, job in jobs.items():
        assert job["stage"] in stages, name
        for needed in job.get("needs", []):
            assert needed in jobs and stages.index(jobs[needed]["stage"]) < stages.index(
                job["stage"]
            )
    roles = document["images"]["parallel"]["matrix"][0]["ROLE"]
    assert roles == ["client", "scheduler", "worker"]
    assert 'envbuild image --role "$ROLE" --push --skip-existing' in document["images"]["script"]
