"""The registry client against a hostile registry (issue 16, items 6-10), through the console
script: ``plan``, ``image --role worker --skip-existing`` (with and without ``--dry-run``) and
``deploy kubernetes --pin-digests`` (tests/hostile_registry.py has the servers).

The contract every hostile answer meets: exit code 16, one line on stderr starting
``envbuild: error:``, no traceback, no secret anywhere in the output, and the command done in
under DEADLINE_S with ENVBUILD_REGISTRY_TIMEOUT=3; credentials never reach another origin
after a redirect, nor a non-loopback host over plain HTTP. And the credentials a user logged
in with are used, whichever way docker stored them (item 10).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import DATA, require
from .hostile_registry import (
    ACCESS_TOKEN,
    BASIC,
    DIGEST,
    IDENTITY_TOKEN,
    SECRETS,
    SERVICE,
    Decoy,
    Proxy,
    Registry,
    auth_config,
    helper_script,
)

ENVBUILD = str(Path(sys.executable).parent / "envbuild")
#: ENVBUILD_REGISTRY_TIMEOUT in every command here (seconds).
REGISTRY_TIMEOUT = "3"
#: How long a command may take with that timeout, its own start included: plan asks about up
#: to three images, one after the other. Below the 15 s per-read timeout envbuild had before
#: it had a deadline, so that the per-read timeout alone cannot pass.
DEADLINE_S = 12.0
#: When a command still running is killed and called hung.
HUNG_S = 30.0
COMMANDS = {
    "plan": ["plan"],
    # what would be built, and what is in the registry already: the registry is asked
    "image-dry-run": ["image", "--role", "worker", "--skip-existing", "--dry-run"],
    # as a CI job runs it (without --push): the registry is asked before anything is built
    "image": ["image", "--role", "worker", "--skip-existing"],
    "deploy": ["deploy", "kubernetes", "--pin-digests"],
}
BOGUS_DIGESTS = {
    "climbing": "sha256:../../../etc/passwd",
    "short": "sha256:" + "0" * 63,
    "other-algorithm": "md5:" + "0" * 32,
    "trailing-text": DIGEST + " FAKE-TRAILER",
}
HOSTILE = [
    "redirect-307-port",
    "redirect-302-host",
    "redirect-307-bearer-host",
    "remote-plain-realm",
    "many-headers",
    "long-header",
    "garbage-status",
    "token-list",
    "token-crlf",
    "token-huge",
    "token-endless",
    "drip-headers",
    "silent",
    *(f"bogus-digest:{name}" for name in BOGUS_DIGESTS),
]


@dataclass
class Servers:
    registry: Registry
    decoy_port: Decoy  # 127.0.0.1, another port
    decoy_host: Decoy  # 127.0.0.2, the registry's port
    proxy: Proxy  # the only way to registry.example.invalid

    def reset(self, mode: str, digest: str = DIGEST) -> None:
        self.registry.set_mode(mode, digest=digest)
        for server in (self.decoy_port, self.decoy_host, self.proxy):
            server.reset()

    def leaks(self) -> list[str]:
        """Credentials that reached a server they must never reach."""
        found = []
        for name, server in (
            ("the decoy on another port", self.decoy_port),
            ("the decoy on 127.0.0.2", self.decoy_host),
            ("registry.example.invalid over plain HTTP", self.proxy),
        ):
            sent = server.authorizations()
            if sent:
                schemes = sorted({value.split(" ")[0] for value in sent})
                found.append(f"{name} received {len(sent)} Authorization headers ({schemes})")
        return found


@dataclass
class Done:
    returncode: int | None  # None: killed after HUNG_S
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    registry = Registry()
    decoy_port = Decoy("127.0.0.1")
    try:
        decoy_host = Decoy("127.0.0.2", registry.port)
    except OSError as exc:  # macOS routes only 127.0.0.1 to loopback by default
        registry.close()
        decoy_port.close()
        require(False, f"no server can listen on 127.0.0.2 here ({exc})")
        raise
    proxy = Proxy()
    registry.decoy_port, registry.decoy_host = decoy_port, decoy_host
    try:
        yield Servers(registry, decoy_port, decoy_host, proxy)
    finally:
        for server in (registry, decoy_port, decoy_host, proxy):
            server.close()


@pytest.fixture(scope="module")
def spec(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dask-gpu scenario with image.repository on the hostile registry, locked."""
    from envbuild.testing.catalog import write_dask_gpu_channel

    folder = tmp_path_factory.mktemp("hostile-spec")
    shutil.copytree(DATA / "dask-gpu", folder, dirs_exist_ok=True)
    write_dask_gpu_channel(folder / "channel")
    path = folder / "envbuild.yaml"
    repository = f"{servers.registry.address}/dask-gpu"
    # The base pinned by digest: no registry but the hostile one is asked (tags depend on the
    # base's digest, and Docker Hub cannot be reached here).
    base = "debian:bookworm-slim@sha256:" + "b" * 64
    path.write_text(path.read_text() + f"image: {{repository: {repository}, base: '{base}'}}\n")
    env = {**os.environ, "ENVBUILD_CACHE_DIR": str(folder / "cache")}
    locked = subprocess.run(
        [ENVBUILD, "lock", "-q", "-f", str(path)], capture_output=True, text=True, env=env
    )
    assert locked.returncode == 0, locked.stderr
    return path


@pytest.fixture(scope="module")
def engine_host() -> Iterator[str]:
    """A private Docker engine: ``image --dry-run`` asks it what it holds."""
    from envbuild.testing import docker as local_docker

    why = local_docker.usable()
    require(why is None, f"no Docker engine can be started here: {why}")
    with local_docker.engine() as host:
        yield host


def _docker_config(folder: Path, document: dict[str, object], source: str) -> dict[str, str]:
    """The environment that hands ``document`` to envbuild through ``source``: the config
    file ($DOCKER_CONFIG/config.json) or DOCKER_AUTH_CONFIG."""
    config = folder / "docker-config"
    config.mkdir(exist_ok=True)
    helpers = folder / "bin"
    helpers.mkdir(exist_ok=True)
    helper = helpers / "docker-credential-hostile"
    helper.write_text(helper_script())
    helper.chmod(0o755)
    env = {"DOCKER_CONFIG": str(config), "PATH": f"{helpers}:{os.environ['PATH']}"}
    if source == "config-file":
        (config / "config.json").write_text(json.dumps(document))
    else:
        (config / "config.json").unlink(missing_ok=True)
        env["DOCKER_AUTH_CONFIG"] = json.dumps(document)
    return env


def _run(
    servers: Servers, spec: Path, args: list[str], tmp_path: Path, env: dict[str, str]
) -> Done:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in ("https_proxy", "all_proxy", "http_proxy", "no_proxy")
        and key not in ("DOCKER_AUTH_CONFIG", "GITHUB_ACTIONS", "ENVBUILD_DEBUG")
    }
    proxy = f"http://{servers.proxy.address}"
    loopback = "127.0.0.1,127.0.0.2,localhost"
    environment.update(
        ENVBUILD_REGISTRY_TIMEOUT=REGISTRY_TIMEOUT,
        http_proxy=proxy,
        HTTP_PROXY=proxy,
        no_proxy=loopback,
        NO_PROXY=loopback,
    )
    environment.update(env)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [ENVBUILD, *args, "-f", str(spec)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=environment,
            timeout=HUNG_S,
        )
    except subprocess.TimeoutExpired as hung:
        return Done(None, _text(hung.stdout), _text(hung.stderr), time.monotonic() - started)
    return Done(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _secrets_in(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _contract(done: Done) -> list[str]:
    """What the command did wrong against the contract (an empty list: nothing)."""
    problems = []
    if done.returncode is None:
        problems.append(f"hung: still running after {HUNG_S:.0f} s, killed")
    elif done.returncode != 16:
        problems.append(f"exit code {done.returncode}, not 16")
    elif done.seconds >= DEADLINE_S:
        problems.append(f"took {done.seconds:.1f} s (ENVBUILD_REGISTRY_TIMEOUT={REGISTRY_TIMEOUT})")
    if "Traceback" in done.stdout + done.stderr:
        problems.append("a traceback")
    leaked = _secrets_in(done.stdout + done.stderr)
    if leaked:
        problems.append(f"secrets printed: {leaked}")
    lines = done.stderr.splitlines()
    if done.returncode is not None and (
        len(lines) != 1 or not lines[0].startswith("envbuild: error:")
    ):
        text = " | ".join(line.strip(" │─╭╮╰╯") for line in lines if line.strip(" │─╭╮╰╯"))
        problems.append(f"stderr is not one 'envbuild: error:' line: {text[-400:]!r}")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_registry_is_exit_16_one_line_in_time_and_gets_no_credential_it_should_not(
    hostile: str,
    command: str,
    servers: Servers,
    spec: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    mode, _, bogus = hostile.partition(":")
    servers.reset(mode, BOGUS_DIGESTS[bogus] if bogus else DIGEST)
    env = _docker_config(tmp_path, auth_config(servers.registry.address, "auth"), "config-file")
    if command.startswith("image"):
        # a Docker engine only where the command needs one, started once for the module
        env["DOCKER_HOST"] = request.getfixturevalue("engine_host")
    done = _run(servers, spec, COMMANDS[command], tmp_path, env)
    problems = _contract(done) + servers.leaks()
    if mode == "remote-plain-realm":
        reached = bool(servers.registry.seen)
    else:
        reached = mode in servers.registry.served
    if not reached:
        problems.append(
            f"the registry never gave its hostile answer ({mode}): the command did not ask it"
        )
    assert not problems, f"{done.seconds:.1f} s: " + "; ".join(problems)


def test_the_decoys_and_the_proxy_record_what_they_are_sent(servers: Servers) -> None:
    """The servers' own check, so that an empty record means something: the registry
    redirects where the tests say, and a credential sent there, or through the proxy, is
    recorded."""
    servers.reset("redirect-302-host")
    path = "/v2/dask-gpu/manifests/x"
    for host, port, headers in (
        (servers.registry.host, servers.registry.port, {"Authorization": f"Basic {BASIC}"}),
        (servers.decoy_host.host, servers.decoy_host.port, {"Authorization": "Basic eA=="}),
    ):
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("HEAD", path, headers=headers)
        answer = connection.getresponse()
        connection.close()
        if host == servers.registry.host:
            assert answer.status == 302
            assert answer.headers["Location"] == f"http://127.0.0.2:{servers.registry.port}{path}"
        else:
            assert answer.status == 200
    assert servers.decoy_host.authorizations() == ["Basic eA=="]
    assert servers.registry.served == ["redirect-302-host"]
    connection = http.client.HTTPConnection(servers.proxy.host, servers.proxy.port, timeout=10)
    connection.request(
        "GET", "http://registry.example.invalid/token", headers={"Authorization": "Basic eA=="}
    )
    assert connection.getresponse().status == 200
    connection.close()
    assert servers.proxy.authorizations() == ["Basic eA=="]
    assert servers.leaks()
    # The OAuth2 endpoint gives a token for the identity token posted as docker posts it, and
    # for nothing else.
    servers.reset("identity-ok")
    form = {
        "grant_type": "refresh_token",
        "refresh_token": IDENTITY_TOKEN,
        "service": SERVICE,
        "scope": "repository:dask-gpu:pull",
        "client_id": "docker",
    }
    for method, body, status in (
        ("POST", urllib.parse.urlencode(form), 200),
        ("POST", urllib.parse.urlencode({**form, "refresh_token": "x"}), 401),
        ("GET", "", 401),
    ):
        connection = http.client.HTTPConnection(
            servers.registry.host, servers.registry.port, timeout=10
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if method == "GET":
            headers["Authorization"] = f"Basic {BASIC}"
        connection.request(method, "/oauth2/token", body=body or None, headers=headers)
        answer = connection.getresponse()
        assert answer.status == status, (method, body)
        if status == 200:
            assert json.loads(answer.read())["access_token"] == ACCESS_TOKEN
        connection.close()


# --- item 10: the credentials a user logged in with ----------------------------------------


@pytest.mark.parametrize("kind", ["identitytoken", "identitytoken-acr"])
def test_an_identity_token_login_is_a_refresh_token_for_the_oauth2_endpoint(
    kind: str, servers: Servers, spec: Path, tmp_path: Path
) -> None:
    """ACR and Docker Desktop logins leave ``identitytoken``: docker posts it to the realm as
    an OAuth2 refresh token; the token endpoint here takes nothing else."""
    servers.reset("identity-ok")
    env = _docker_config(tmp_path, auth_config(servers.registry.address, kind), "config-file")
    planned = _run(servers, spec, ["plan", "--json"], tmp_path, env)
    assert planned.returncode == 0, planned.stderr
    include = json.loads(planned.stdout)["include"]
    assert include and all(entry["present"] and entry["missing"] == "" for entry in include)
    posts = [s for s in servers.registry.seen if s.method == "POST"]
    assert posts and all(IDENTITY_TOKEN.encode() in s.body for s in posts)
    deployed = _run(servers, spec, ["deploy", "kubernetes", "--pin-digests"], tmp_path, env)
    assert deployed.returncode == 0, deployed.stderr
    cluster = yaml.safe_load(deployed.stdout)
    for role in ("scheduler", "worker"):
        assert cluster["spec"][role]["spec"]["containers"][0]["image"].endswith(f"@{DIGEST}")
    for done in (planned, deployed):
        assert not _secrets_in(done.stdout + done.stderr)


SAME_CREDENTIALS = [
    pytest.param("auth", "basic-ok", "{}", id="auth-basic"),
    pytest.param("username", "basic-ok", "{}", id="username-password-basic"),
    pytest.param("auth", "bearer-ok", "{}", id="auth-bearer"),
    pytest.param("username", "bearer-ok", "{}", id="username-password-bearer"),
    pytest.param("helper", "basic-ok", "{}", id="credential-helper"),
    pytest.param("identitytoken", "identity-ok", "{}", id="identitytoken"),
    # spellings of the key that docker (and docker-py, which pushes) resolve to the host
    pytest.param("auth", "basic-ok", "https://{}", id="key-https-scheme"),
    pytest.param("auth", "basic-ok", "http://{}/", id="key-http-scheme-slash"),
    pytest.param("auth", "basic-ok", "https://{}/v2/", id="key-https-v2-path"),
]


@pytest.mark.parametrize("source", ["config-file", "DOCKER_AUTH_CONFIG"])
@pytest.mark.parametrize(("kind", "mode", "key"), SAME_CREDENTIALS)
def test_plan_uses_the_same_credentials_from_the_config_file_or_docker_auth_config(
    kind: str, mode: str, key: str, source: str, servers: Servers, spec: Path, tmp_path: Path
) -> None:
    servers.reset(mode)
    address = servers.registry.address
    document = auth_config(address, kind, key.format(address))
    env = _docker_config(tmp_path, document, source)
    planned = _run(servers, spec, ["plan", "--json"], tmp_path, env)
    assert planned.returncode == 0, planned.stderr
    include = json.loads(planned.stdout)["include"]
    assert include and all(entry["present"] and entry["missing"] == "" for entry in include)
    assert not _secrets_in(planned.stdout + planned.stderr)
