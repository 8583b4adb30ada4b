"""envbuild deploy: the DaskCluster and the Helm values, checked against what reads them: the
operator's own CRD schema (tightened to refuse unknown fields), Kubernetes' schemas for the
built-in kinds (kubernetes-validate, strict), the dask chart's values, and an independent
evaluator of node affinity over the labels GPU Feature Discovery puts on real GPU nodes."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import Result

from envbuild.cluster import manifests as deploy
from envbuild.env import runtime
from envbuild.gpucheck import ComputeCapability, Driver, driver_problem, parse_cuda_version
from envbuild.image.plan import ImageSettings, plan_role
from envbuild.lock.lockfile import Lock, content_digest
from envbuild.testing.wheels import PinnedWheel, fetch

from .conftest import REPO, TESTS
from .test_imageplan import golden_lock, with_arm64_workers

GOLDEN = TESTS / "golden" / "deploy"
UPDATE = os.environ.get("ENVBUILD_UPDATE_GOLDEN") == "1"
SETTINGS = ImageSettings(base="debian:bookworm-slim", repository="registry.example.com/dask-gpu")
KUBERNETES = "1.37.0"  # the newest schemas kubernetes-validate ships

# The operator's CRDs ship in its wheel; pinned like the runnable channel's wheels.
OPERATOR_WHEEL = PinnedWheel(
    "any",
    "dask-kubernetes==2026.3.0",
    "dask_kubernetes-2026.3.0-py3-none-any.whl",
    "5cf138e03cb1851063b82b74e9fd4679251238e3867fcae1e3682aada6410728",
)
CRD = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"


def images(lock: Lock) -> dict[str, str]:
    return {
        r: plan_role(lock, r, SETTINGS, runtime.files()).reference for r in deploy.CLUSTER_ROLES
    }


def cpu_scheduler(lock: Lock) -> Lock:
    """The same lock with a scheduler that needs no GPU."""
    roles = tuple(
        dataclasses.replace(r, cuda=None, compute_capability=None, gpus=0)
        if r.name == "scheduler"
        else r
        for r in lock.roles
    )
    return dataclasses.replace(lock, roles=roles)


def cluster(lock: Lock | None = None, **options: Any) -> dict[str, Any]:
    lock = lock or golden_lock()
    return deploy.dask_cluster(
        lock, images(lock), **{"name": "dask-gpu", "namespace": None, "workers": 4, **options}
    )


# --- golden files ------------------------------------------------------------------------------


def rendered(kind: str) -> str:
    lock = golden_lock()
    if kind == "daskcluster":
        document = cluster(lock, namespace="analytics")
    else:
        document = deploy.helm_values(lock, images(lock), workers=4)
    return deploy.render(document, source="envbuild.lock", digest=content_digest(lock))


@pytest.mark.parametrize("kind", ["daskcluster", "helm-values"])
def test_golden(kind: str) -> None:
    text = rendered(kind)
    golden = GOLDEN / f"{kind}.yaml"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), (
        f"{golden.name} changed: review, then ENVBUILD_UPDATE_GOLDEN=1"
    )
    assert rendered(kind) == text  # deterministic
    assert "&id" not in text and "*id" not in text  # no YAML anchors for shared values


def test_the_images_commands_and_gpus_come_from_the_lock() -> None:
    lock = golden_lock()
    document = cluster(lock)
    worker = document["spec"]["worker"]["spec"]["containers"][0]
    scheduler = document["spec"]["scheduler"]["spec"]["containers"][0]
    assert worker["image"] == images(lock)["worker"]
    assert worker["image"].startswith("registry.example.com/dask-gpu:worker-cuda-12.4-")
    assert scheduler["image"].startswith("registry.example.com/dask-gpu:scheduler-cuda-12.4-")
    # args only: the image's entrypoint runs first (GPU check), then the command, guarded.
    assert "command" not in worker and "command" not in scheduler
    assert scheduler["args"] == ["dask", "scheduler", "--preload", "envbuild.dask"]
    assert worker["args"][:2] == ["dask", "worker"] and worker["args"][-2:] == [
        "--preload",
        "envbuild.dask",
    ]
    assert worker["resources"] == {"limits": {"nvidia.com/gpu": "1"}}  # a string quantity
    assert document["spec"]["worker"]["replicas"] == 4
    # A CPU scheduler asks for no GPU and may land on any node of its images' architecture.
    cpu = cluster(cpu_scheduler(lock))["spec"]["scheduler"]["spec"]
    assert "resources" not in cpu["containers"][0] and "tolerations" not in cpu
    assert cpu["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In",
                                           "values": ["amd64"]}]}
                ]
            }
        }
    }  # fmt: skip


# --- the operator's CRD schema, and Kubernetes' own -------------------------------------------


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    wheel = fetch([OPERATOR_WHEEL], REPO / "build" / "cache" / "test-wheels")
    with zipfile.ZipFile(wheel[OPERATOR_WHEEL.file_name]) as archive:
        crd = yaml.safe_load(archive.read(CRD))
    assert (
        crd["spec"]["group"] == "kubernetes.dask.org"
        and crd["spec"]["names"]["kind"] == "DaskCluster"
    )
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def tightened(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema refusing fields it does not name (the API server prunes them silently,
    so a typo such as imagePullPolcy would be lost, not refused), with the object's own
    apiVersion, kind and metadata."""
    strict = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(strict)
    strict["properties"].update(
        apiVersion={"const": "kubernetes.dask.org/v1"},
        kind={"const": "DaskCluster"},
        metadata={
            "type": "object",
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": False,
        },
    )
    strict["required"] = [*strict.get("required", []), "apiVersion", "kind", "metadata"]
    return strict


def test_the_daskcluster_validates_against_the_operators_crd(crd_schema: dict[str, Any]) -> None:
    strict = tightened(crd_schema)
    for lock in (golden_lock(), cpu_scheduler(golden_lock())):
        jsonschema.validate(cluster(lock, namespace="analytics"), strict)
    # The tightened schema refuses what the CRD alone lets through.
    typo = cluster()
    typo["spec"]["worker"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    jsonschema.validate(typo, crd_schema)
    with pytest.raises(jsonschema.ValidationError, match="imagePullPolcy"):
        jsonschema.validate(typo, strict)
    numeric = cluster()
    numeric["spec"]["worker"]["replicas"] = "4"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(numeric, strict)


def pod(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": dict(spec)}


def test_pods_and_service_validate_as_kubernetes_kinds_strictly() -> None:
    document = cluster()
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "dask-gpu-scheduler"},
        "spec": document["spec"]["scheduler"]["service"],
    }
    for manifest in (
        pod(document["spec"]["scheduler"]["spec"]),
        pod(document["spec"]["worker"]["spec"]),
        service,
    ):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    # strict mode is what catches an unknown field here
    broken = pod(document["spec"]["worker"]["spec"])
    broken["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


# --- node affinity against GPU Feature Discovery labels ---------------------------------------


def gfd(major: int, minor: int, driver: str, cuda: str, arch: str = "amd64") -> dict[str, str]:
    """The labels GPU Feature Discovery sets on a node (the ones affinity can use)."""
    runtime_major, runtime_minor = cuda.split(".")
    driver_major, driver_minor, *_ = driver.split(".")
    return {
        "kubernetes.io/hostname": "node",
        "kubernetes.io/arch": arch,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.compute.major": str(major),
        "nvidia.com/gpu.compute.minor": str(minor),
        "nvidia.com/cuda.driver.major": driver_major,
        "nvidia.com/cuda.driver.minor": driver_minor,
        "nvidia.com/cuda.runtime.major": runtime_major,
        "nvidia.com/cuda.runtime.minor": runtime_minor,
    }


NODES = {
    "T4 (7.5), driver 535": gfd(7, 5, "535.183.01", "12.2"),
    "A100 (8.0), driver 550": gfd(8, 0, "550.54.15", "12.4"),
    "A100 (8.0), driver 470": gfd(8, 0, "470.256.02", "11.4"),
    "A10 (8.6), driver 550": gfd(8, 6, "550.90.07", "12.4"),
    "H200 (9.0), driver 580": gfd(9, 0, "580.159.04", "13.0"),
    "H200 (9.0), driver 520": gfd(9, 0, "520.61.05", "11.8"),
    "GH200 (9.0, arm64), driver 580": gfd(9, 0, "580.159.04", "13.0", arch="arm64"),
    "no GFD labels": {"kubernetes.io/hostname": "cpu-node", "kubernetes.io/arch": "amd64"},
    "driver labels, no compute capability": {
        k: v for k, v in gfd(8, 0, "550.54.15", "12.4").items() if ".compute." not in k
    },
}


def matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """One NodeSelectorRequirement, as the Kubernetes scheduler reads it."""
    key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
    present = key in labels
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    assert len(values) == 1, expression
    if not present or not labels[key].lstrip("-").isdigit():
        return False
    if operator == "Gt":
        return int(labels[key]) > int(values[0])
    assert operator == "Lt", expression
    return int(labels[key]) < int(values[0])


def schedulable(affinity: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether required node affinity lets a pod onto a node: any term, all its expressions."""
    if not affinity:
        return True
    required = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return any(
        all(matches(e, labels) for e in term["matchExpressions"])
        for term in required["nodeSelectorTerms"]
    )


def gpu_check_passes(compute_capability: str | None, cuda: str, labels: Mapping[str, str]) -> bool:
    """What the image's GPU check at container start would say on this node's GPU."""
    if "nvidia.com/gpu.compute.major" not in labels:
        return False  # nothing says a GPU is there
    cc = (int(labels["nvidia.com/gpu.compute.major"]), int(labels["nvidia.com/gpu.compute.minor"]))
    if compute_capability and ComputeCapability.parse(compute_capability).failed_clause(cc):
        return False
    driver = Driver(
        f"{labels['nvidia.com/cuda.driver.major']}.{labels['nvidia.com/cuda.driver.minor']}",
        (
            int(labels["nvidia.com/cuda.runtime.major"]),
            int(labels["nvidia.com/cuda.runtime.minor"]),
        ),
    )
    return driver_problem(driver, parse_cuda_version(cuda)) is None


@pytest.mark.parametrize("node", NODES)
def test_each_role_lands_only_where_its_gpu_check_passes(node: str) -> None:
    labels = NODES[node]
    lock = golden_lock()
    document = cluster(lock)
    for role in deploy.CLUSTER_ROLES:
        locked = lock.role(role)
        assert locked.cuda
        affinity = document["spec"][role]["spec"]["affinity"]
        expected = gpu_check_passes(locked.compute_capability, locked.cuda, labels)
        # the images are linux-64 only in this lock: an arm64 node cannot run them
        expected = expected and labels["kubernetes.io/arch"] == "amd64"
        assert schedulable(affinity, labels) == expected, (role, node)
    # the table holds both answers for both roles (scheduler >=7.5, worker >=8.0, CUDA 12.4)
    landed = {
        n: [
            r
            for r in deploy.CLUSTER_ROLES
            if schedulable(document["spec"][r]["spec"]["affinity"], NODES[n])
        ]
        for n in NODES
    }
    assert landed["T4 (7.5), driver 535"] == ["scheduler"]
    assert landed["A100 (8.0), driver 550"] == ["scheduler", "worker"]
    assert landed["A100 (8.0), driver 470"] == []  # CUDA 12.4 needs driver >= 525
    assert landed["H200 (9.0), driver 580"] == ["scheduler", "worker"]
    assert landed["GH200 (9.0, arm64), driver 580"] == []  # amd64 images
    assert landed["no GFD labels"] == []


@pytest.mark.parametrize(
    "requirement",
    [">=8.6", ">=7.5,<9.0", ">8.0", "<=8.6", "==8.0", "!=8.6", "<9.0", ">=8.0,!=8.6", None],
)
@pytest.mark.parametrize("cuda", ["11.8", "12.4", "13.0"])
def test_ranges_on_the_node_table(requirement: str | None, cuda: str) -> None:
    affinity = deploy.gpu_affinity(requirement, cuda)
    for node, labels in NODES.items():
        assert schedulable(affinity, labels) == gpu_check_passes(requirement, cuda, labels), node


def test_a_role_of_two_architectures_may_land_on_either_and_one_of_one_only_there() -> None:
    lock = with_arm64_workers(golden_lock())
    document = cluster(lock)
    # The worker's one tag names the index of its amd64 and arm64 images: each node's
    # runtime pulls its own platform's image, so nothing in the pod says which.
    container = document["spec"]["worker"]["spec"]["containers"][0]
    index = plan_role(lock, "worker", SETTINGS, runtime.files())
    assert index.is_index and container["image"] == index.reference
    assert not container["image"].endswith(("-amd64", "-arm64"))
    worker = document["spec"]["worker"]["spec"]["affinity"]
    scheduler = document["spec"]["scheduler"]["spec"]["affinity"]
    h200, gh200 = NODES["H200 (9.0), driver 580"], NODES["GH200 (9.0, arm64), driver 580"]
    assert schedulable(worker, h200) and schedulable(worker, gh200)  # an index of both
    assert schedulable(scheduler, h200) and not schedulable(scheduler, gh200)


_clause = st.tuples(
    st.sampled_from([">=", ">", "<=", "<", "==", "!="]),
    st.integers(min_value=3, max_value=12),
    st.integers(min_value=0, max_value=9),
)


@settings(max_examples=300, deadline=None)
@given(
    clauses=st.lists(_clause, min_size=1, max_size=3),
    gpu=st.tuples(st.integers(min_value=3, max_value=12), st.integers(min_value=0, max_value=9)),
    cuda=st.sampled_from(["11.8", "12.0", "12.9", "13.0"]),
    driver=st.sampled_from(
        [("470.256.02", "11.4"), ("525.60.13", "12.0"), ("535.1", "12.2"), ("580.159.04", "13.0")]
    ),
)
def test_any_requirement_lands_exactly_where_the_check_passes(
    clauses: list[tuple[str, int, int]], gpu: tuple[int, int], cuda: str, driver: tuple[str, str]
) -> None:
    requirement = ",".join(f"{op}{major}.{minor}" for op, major, minor in clauses)
    labels = gfd(*gpu, *driver)
    affinity = deploy.gpu_affinity(requirement, cuda)
    assert schedulable(affinity, labels) == gpu_check_passes(requirement, cuda, labels)


# --- Helm values --------------------------------------------------------------------------------

# The dask chart's values that its templates read (dask/helm-chart dask/values.yaml and
# templates/dask-{scheduler,worker}-deployment.yaml at commit e25bf51), with their types.
_IMAGE = {"repository": str, "tag": str, "pullPolicy": str, "pullSecrets": list}
_POD = {
    "resources": dict,
    "env": list,
    "tolerations": list,
    "affinity": dict,
    "nodeSelector": dict,
    "securityContext": dict,
    "serviceAccountName": str,
    "extraArgs": list,
    "livenessProbe": dict,
    "readinessProbe": dict,
}
CHART_VALUES: dict[str, Any] = {
    "scheduler": {
        "name": str,
        "enabled": bool,
        "image": _IMAGE,
        "replicas": int,
        "serviceType": str,
        "servicePort": int,
        **_POD,
    },
    "worker": {
        "name": str,
        "image": {**_IMAGE, "dask_worker": str},
        "replicas": int,
        "custom_scheduler_url": str,
        "threads_per_worker": int,
        "default_resources": {"cpu": int, "memory": str},
        "portDashboard": int,
        "mounts": dict,
        "annotations": dict,
        **_POD,
    },
    "jupyter": {"enabled": bool},
}


def unknown_keys(values: Mapping[str, Any], shape: Mapping[str, Any], path: str = "") -> list[str]:
    wrong = []
    for key, value in values.items():
        where = f"{path}{key}"
        if key not in shape:
            wrong.append(f"{where} is not a value of the chart")
        elif isinstance(shape[key], dict):
            wrong += unknown_keys(value, shape[key], where + ".")
        elif not isinstance(value, shape[key]):
            wrong.append(
                f"{where} is a {type(value).__name__}, the chart reads a {shape[key].__name__}"
            )
    return wrong


def chart_pod(values: Mapping[str, Any], role: str) -> dict[str, Any]:
    """The pod the chart's template makes of the values (image, args, resources, placement)."""
    section = values[role]
    image = f"{section['image']['repository']}:{section['image']['tag']}"
    first = (
        ["dask-scheduler", "--port=8786"]
        if role == "scheduler"
        else [section["image"]["dask_worker"], "dask-scheduler:8786"]
    )
    limits = section["resources"].get("limits")
    if role == "worker" and limits:
        # dask-worker-deployment.yaml: with limits, --nthreads and --memory-limit always go
        # (`a | default b | default c`: the last fallback is taken as it is)
        fallback = {"cpu": 1, "memory": "4GiB", **section.get("default_resources", {})}
        threads = section.get("threads_per_worker") or limits.get("cpu") or fallback["cpu"]
        memory = limits.get("memory") or fallback["memory"]
        first += ["--nthreads", str(threads), "--memory-limit", str(memory)]
    container = {
        "name": role,
        "image": image,
        "imagePullPolicy": section["image"]["pullPolicy"],
        "args": [*first, *section["extraArgs"]],
    }
    if section["resources"]:
        container["resources"] = section["resources"]
    spec: dict[str, Any] = {"containers": [container]}
    for key in ("affinity", "tolerations"):
        if section[key]:
            spec[key] = section[key]
    return pod(spec)


@pytest.mark.parametrize(
    "lock", [golden_lock(), cpu_scheduler(golden_lock())], ids=["gpu", "cpu-scheduler"]
)
def test_helm_values_are_the_charts_and_match_the_daskcluster(lock: Lock) -> None:
    values = deploy.helm_values(lock, images(lock), workers=3)
    assert unknown_keys(values, CHART_VALUES) == []
    assert values["worker"]["replicas"] == 3 and values["jupyter"] == {"enabled": False}
    document = cluster(lock)
    for role in deploy.CLUSTER_ROLES:
        made = chart_pod(values, role)
        kubernetes_validate.validate(made, KUBERNETES, strict=True)
        container = made["spec"]["containers"][0]
        pod_spec = document["spec"][role]["spec"]
        assert container["image"] == pod_spec["containers"][0]["image"]
        assert container["args"][-2:] == ["--preload", "envbuild.dask"]
        assert container.get("resources") == pod_spec["containers"][0].get("resources")
        assert made["spec"].get("affinity") == pod_spec.get("affinity")
        assert made["spec"].get("tolerations") == pod_spec.get("tolerations")
    # the chart's command; test_runnable checks the environments have it
    assert values["worker"]["image"]["dask_worker"] == "dask-worker"


def effective_worker_options(args: list[str]) -> dict[str, str]:
    """--nthreads and --memory-limit as dask reads them: 0 and auto are its own defaults."""
    found = {"--nthreads": "0", "--memory-limit": "auto"}
    for flag in found:
        if flag in args:
            found[flag] = args[args.index(flag) + 1]
    return found


SIZINGS = {
    "unset": {},
    "cpu+memory": {"worker": deploy.Sizing(cpu="8", memory="64Gi")},
    "threads": {"worker": deploy.Sizing(memory="16G", threads=2)},
    "millicores": {"worker": deploy.Sizing(cpu="1500m"), "scheduler": deploy.Sizing(cpu="2")},
}


@pytest.mark.parametrize("name", sorted(SIZINGS))
@pytest.mark.parametrize(
    "lock", [golden_lock(), cpu_scheduler(golden_lock())], ids=["gpu", "cpu-scheduler"]
)
def test_workers_get_the_threads_and_memory_the_spec_says_in_both_outputs(
    lock: Lock, name: str, crd_schema: dict[str, Any]
) -> None:
    """The chart falls back to 1 thread and 4 GiB whenever a worker has limits (a GPU is one);
    a GPU worker must get what the spec says, or dask's own defaults, never that."""
    sizing = SIZINGS[name]
    values = deploy.helm_values(lock, images(lock), workers=2, sizing=sizing)
    assert unknown_keys(values, CHART_VALUES) == []
    document = deploy.dask_cluster(
        lock, images(lock), name="dask-gpu", namespace=None, workers=2, sizing=sizing
    )
    jsonschema.validate(document, tightened(crd_schema))
    for role in deploy.CLUSTER_ROLES:
        kubernetes_validate.validate(chart_pod(values, role), KUBERNETES, strict=True)
    from_chart = effective_worker_options(
        chart_pod(values, "worker")["spec"]["containers"][0]["args"]
    )
    worker = document["spec"]["worker"]["spec"]["containers"][0]
    from_operator = effective_worker_options(worker["args"])
    assert from_chart == from_operator
    size = sizing.get("worker", deploy.Sizing())
    expected_threads = {"unset": "0", "cpu+memory": "8", "threads": "2", "millicores": "1"}
    assert from_chart["--nthreads"] == expected_threads[name]
    assert from_chart["--memory-limit"] == (size.memory or "auto")
    for role in deploy.CLUSTER_ROLES:
        asked = sizing.get(role, deploy.Sizing())
        container = document["spec"][role]["spec"]["containers"][0]
        for key, value in (("cpu", asked.cpu), ("memory", asked.memory)):
            limits = container.get("resources", {}).get("limits", {})
            requests = container.get("resources", {}).get("requests", {})
            assert limits.get(key) == value and requests.get(key) == value


def test_unknown_chart_keys_are_caught() -> None:
    values = deploy.helm_values(golden_lock(), images(golden_lock()), workers=1)
    values["worker"]["image"]["tags"] = "x"
    values["worker"]["replicas"] = "1"
    assert unknown_keys(values, CHART_VALUES) == [
        "worker.image.tags is not a value of the chart",
        "worker.replicas is a str, the chart reads a int",
    ]


# --- the command: images the registry must have ------------------------------------------------


class _Registry(BaseHTTPRequestHandler):
    """HEAD /v2/REPO/manifests/TAG: 200 with a digest for the tags it holds, 404 otherwise."""

    tags: ClassVar[dict[str, str]] = {}  # tag -> digest

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        tag = self.path.rsplit("/", 1)[-1]
        self.send_response(200 if tag in self.tags else 404)
        if tag in self.tags:
            self.send_header("Docker-Content-Digest", self.tags[tag])
        self.end_headers()


@pytest.fixture
def registry() -> Iterator[tuple[str, dict[str, str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    _Registry.tags = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", _Registry.tags
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def pushed_spec(
    locked: Path, registry: tuple[str, dict[str, str]], envbuild: Callable[..., Result]
) -> Path:
    address, _ = registry
    # The base pinned by digest: its registry (Docker Hub) is not asked, and cannot be here.
    base = "debian:bookworm-slim@sha256:" + "b" * 64
    locked.write_text(
        locked.read_text() + f"image: {{repository: {address}/dask-gpu, base: '{base}'}}\n"
    )
    assert envbuild("lock", "-q", "-f", locked).exit_code == 0
    return locked


def test_deploy_refuses_images_the_registry_lacks_and_names_the_command(
    pushed_spec: Path,
    registry: tuple[str, dict[str, str]],
    envbuild: Callable[..., Result],
    tmp_path: Path,
) -> None:
    _, tags = registry
    output = tmp_path / "cluster.yaml"
    output.write_text("kept\n")
    result = envbuild("deploy", "kubernetes", "-f", pushed_spec, "-o", output)
    assert result.exit_code == 17
    assert "is not in the registry" in result.stderr
    assert "`envbuild image --role scheduler --role worker --push`" in result.stderr
    assert output.read_text() == "kept\n"  # nothing half-written
    # Only the worker pushed: the command names the scheduler alone.
    wrote = envbuild("deploy", "kubernetes", "-f", pushed_spec, "--no-registry-check")
    worker_tag = yaml.safe_load(wrote.stdout)["spec"]["worker"]["spec"]["containers"][0][
        "image"
    ].rsplit(":", 1)[1]
    tags[worker_tag] = "sha256:" + hashlib.sha256(b"worker").hexdigest()
    result = envbuild("deploy", "helm", "-f", pushed_spec)
    assert result.exit_code == 17 and "`envbuild image --role scheduler --push`" in result.stderr


def test_deploy_writes_what_the_registry_has_pinned_by_digest(
    pushed_spec: Path,
    registry: tuple[str, dict[str, str]],
    envbuild: Callable[..., Result],
    tmp_path: Path,
) -> None:
    address, tags = registry
    planned = yaml.safe_load(
        envbuild("deploy", "kubernetes", "-f", pushed_spec, "--no-registry-check").stdout
    )
    references = {
        r: planned["spec"][r]["spec"]["containers"][0]["image"] for r in deploy.CLUSTER_ROLES
    }
    digests = {r: "sha256:" + hashlib.sha256(r.encode()).hexdigest() for r in references}
    for role, reference in references.items():
        assert reference.startswith(f"{address}/dask-gpu:{role}-cuda-12.4-")
        tags[reference.rsplit(":", 1)[1]] = digests[role]
    output = tmp_path / "cluster.yaml"
    result = envbuild(
        "deploy",
        "kubernetes",
        "-f",
        pushed_spec,
        "--name",
        "gpu-prod",
        "-n",
        "dask",
        "--workers",
        "8",
        "--pin-digests",
        "-o",
        output,
    )
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(output.read_text())
    assert output.read_text().startswith("# Generated by envbuild from envbuild.lock (sha256:")
    assert document["metadata"] == {"name": "gpu-prod", "namespace": "dask"}
    assert document["spec"]["worker"]["replicas"] == 8
    assert (
        document["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == "gpu-prod"
    )
    for role in deploy.CLUSTER_ROLES:
        image = document["spec"][role]["spec"]["containers"][0]["image"]
        assert image == f"{references[role]}@{digests[role]}"
    values = yaml.safe_load(envbuild("deploy", "helm", "-f", pushed_spec, "--pin-digests").stdout)
    assert (
        values["worker"]["image"]["tag"]
        == references["worker"].rsplit(":", 1)[1] + "@" + digests["worker"]
    )
    # A registry that answers a malformed digest is refused, not written into the YAML.
    tags[references["worker"].rsplit(":", 1)[1]] = "sha256:../../evil"
    bad = envbuild("deploy", "kubernetes", "-f", pushed_spec, "--pin-digests")
    assert bad.exit_code == 16 and "malformed digest" in bad.stderr


@pytest.mark.parametrize(
    ("spec_name", "cluster_name"),
    [("dask-gpu", "dask-gpu"), ("team_a.v2", "team-a-v2"), ("2024-run", "dask-2024-run")],
)
def test_the_default_cluster_name_is_the_specs_as_kubernetes_takes_it(
    spec_name: str, cluster_name: str
) -> None:
    lock = dataclasses.replace(golden_lock(), name=spec_name)
    assert deploy.default_name(lock) == cluster_name
    long = deploy.default_name(dataclasses.replace(lock, name="x" * 64))
    assert deploy.validate_name(long, "cluster name") == "x" * deploy.NAME_LONGEST
    assert deploy.validate_name("2024-team", "namespace") == "2024-team"
    with pytest.raises(ValueError, match="starting with a letter,"):
        deploy.validate_name("2024-team", "cluster name")


def test_deploy_usage_errors(locked: Path, envbuild: Callable[..., Result]) -> None:
    no_registry = envbuild("deploy", "kubernetes", "-f", locked)
    assert no_registry.exit_code == 17 and "set image.repository" in no_registry.stderr
    bad_name = envbuild(
        "deploy", "kubernetes", "-f", locked, "--name", "Dask_GPU", "--no-registry-check"
    )
    assert bad_name.exit_code == 2 and "is not a cluster name" in bad_name.output
    helm_name = envbuild("deploy", "helm", "-f", locked, "--name", "x", "--no-registry-check")
    assert helm_name.exit_code == 9 and "helm install NAME" in helm_name.stderr
    too_many = envbuild("deploy", "helm", "-f", locked, "--workers", 2**31, "--no-registry-check")
    assert too_many.exit_code == 2  # replicas is an int32
    pinned = envbuild("deploy", "kubernetes", "-f", locked, "--pin-digests", "--no-registry-check")
    assert pinned.exit_code == 9
    locked.write_text(locked.read_text().replace("numpy", "numpy >=1"))
    assert (
        envbuild("deploy", "kubernetes", "-f", locked, "--no-registry-check").exit_code == 4
    )  # stale


def test_the_specs_resources_reach_both_outputs_and_leave_the_lock_alone(
    locked: Path, envbuild: Callable[..., Result]
) -> None:
    text = locked.read_text().replace(
        '    gpu: {cuda: "12.4", compute-capability: ">=8.0"}',
        '    gpu: {cuda: "12.4", compute-capability: ">=8.0"}\n'
        '    resources: {cpu: "16", memory: 120Gi, threads: 4}',
    )
    assert text != locked.read_text()
    # a base pinned by digest: naming the images needs no registry
    locked.write_text(text + "image: {base: 'debian:bookworm-slim@sha256:" + "b" * 64 + "'}\n")
    assert envbuild("lock", "--check", "-f", locked).exit_code == 0  # not part of the lock
    helm = yaml.safe_load(envbuild("deploy", "helm", "-f", locked, "--no-registry-check").stdout)
    worker = helm["worker"]
    assert worker["threads_per_worker"] == 4
    assert worker["resources"]["limits"] == {
        "cpu": "16",
        "memory": "120Gi",
        "nvidia.com/gpu": "1",
    }
    cluster_yaml = envbuild("deploy", "kubernetes", "-f", locked, "--no-registry-check").stdout
    args = yaml.safe_load(cluster_yaml)["spec"]["worker"]["spec"]["containers"][0]["args"]
    assert args[args.index("--nthreads") + 1] == "4"
    assert args[args.index("--memory-limit") + 1] == "120Gi"
