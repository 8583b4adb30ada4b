"""Registry credentials: the one place envbuild reads them, for every path that talks to a
registry (``registry``'s requests, and the engine's pushes and pulls through docker-py, which
get them passed explicitly instead of reading the config their own way).

Read where docker reads them: ``DOCKER_AUTH_CONFIG`` (a config document in the environment, as
GitLab CI sets it) when set, else ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``.
In that document, as the docker CLI looks: ``credHelpers[HOST]``, then ``credsStore`` (both
run ``docker-credential-NAME get``), then ``auths`` (``auth``: base64 user:password, or
``username``/``password``; ``identitytoken``: an OAuth2 refresh token, as ``az acr login`` and
Docker Desktop leave it). Keys are compared as docker-py and the docker CLI compare them:
``https://HOST/v2/``, ``http://HOST/`` and ``HOST`` all name HOST; Docker Hub is
``https://index.docker.io/v1/`` (``index.docker.io``, ``docker.io`` and
``registry-1.docker.io`` are the same registry). Nothing here is ever printed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envbuild.errors import RegistryError

DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset(("docker.io", "index.docker.io", "registry-1.docker.io"))
HUB_KEY = "https://index.docker.io/v1/"
#: What a credential helper's Username says when its Secret is an identity token.
TOKEN_USER = "<token>"  # noqa: S105 - a marker, no secret
HELPER_TIMEOUT_S = 60


@dataclass(frozen=True)
class Credential:
    """A login for one registry: a user and password, or an identity (refresh) token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def basic(self) -> str | None:
        """The ``Authorization`` value for a Basic challenge, if there is a user/password."""
        if not (self.username or self.password):
            return None
        login = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(login).decode("ascii")

    def for_engine(self, registry: str) -> dict[str, str]:
        """The ``auth_config`` docker-py sends the engine (X-Registry-Auth)."""
        server = HUB_KEY if registry_key(registry) == DOCKER_HUB else registry
        if self.identity_token:
            return {"identitytoken": self.identity_token, "serveraddress": server}
        return {"username": self.username, "password": self.password, "serveraddress": server}


def registry_key(text: str) -> str:
    """A registry as a config key names it, normalized: ``https://HOST/v2/`` -> ``HOST``;
    every spelling of Docker Hub -> ``docker.io``."""
    host = text.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in HUB_ALIASES else host


def lookup(registry: str) -> Credential | None:
    """The credential for ``registry`` (``HOST[:PORT]``, or ``docker.io``), None if none."""
    config = _config()
    key = registry_key(registry)
    helper = _entry(config.get("credHelpers"), key)
    if isinstance(helper, str) and helper:
        found = _from_helper(helper, key)
        if found:
            return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_helper(store, key)
        if found:
            return found
    entry = _entry(config.get("auths"), key)
    return _from_entry(entry, key) if isinstance(entry, dict) else None


def engine_auth(registry: str) -> dict[str, str]:
    """What docker-py must send the engine for ``registry``: the credential, or ``{}`` (an
    anonymous request; docker-py reads its own config when given None, which must not
    happen: one source of truth)."""
    found = lookup(registry)
    return found.for_engine(registry) if found else {}


def _config() -> dict[str, Any]:
    inline = os.environ.get("DOCKER_AUTH_CONFIG")
    if inline:
        where, text = "DOCKER_AUTH_CONFIG", inline
    else:
        path = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise RegistryError(f"cannot read the Docker config {where} ({reason})") from None
    try:
        found = json.loads(text)
    except ValueError:
        raise RegistryError(f"{where} is not a JSON document (the Docker config)") from None
    if not isinstance(found, dict):
        raise RegistryError(f"{where} is not a JSON object (the Docker config)")
    return found


def _entry(table: object, key: str) -> object:
    """``table[key]``, the key compared as docker compares them (exact spelling first)."""
    if not isinstance(table, dict):
        return None
    if key in table:
        return table[key]
    for name, value in table.items():
        if isinstance(name, str) and registry_key(name) == key:
            return value
    return None


def _from_entry(entry: dict[str, Any], key: str) -> Credential | None:
    username, password = entry.get("username"), entry.get("password")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise RegistryError(
                f"the Docker config's auth for {key} is not base64 of user:password"
            ) from None
        username, _, password = decoded.partition(":")
    identity = entry.get("identitytoken")
    found = Credential(
        username if isinstance(username, str) else "",
        password if isinstance(password, str) else "",
        identity if isinstance(identity, str) else "",
    )
    return found if found.basic() or found.identity_token else None


def _from_helper(helper: str, key: str) -> Credential | None:
    """``docker-credential-HELPER get``; None when it is not installed or has nothing for
    ``key`` (docker's protocol: it exits non-zero). What it prints is never repeated."""
    if "/" in helper or helper.startswith("."):
        raise RegistryError("the Docker config names a credential helper that is not a name")
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        return None
    server = HUB_KEY if key == DOCKER_HUB else key
    try:
        done = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            check=False,
            timeout=HELPER_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        raise RegistryError(
            f"the credential helper docker-credential-{helper} did not answer for {key}"
        ) from None
    if done.returncode != 0:
        return None
    try:
        found = json.loads(done.stdout)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise RegistryError(
            f"the credential helper docker-credential-{helper} answered something that is "
            f"not a credential for {key}"
        )
    user, secret = found.get("Username"), found.get("Secret")
    user = user if isinstance(user, str) else ""
    secret = secret if isinstance(secret, str) else ""
    if user == TOKEN_USER:
        return Credential(identity_token=secret) if secret else None
    return Credential(user, secret) if user or secret else None
