"""Channels as a spec writes them, as URLs, and the secrets they must never carry. Pure."""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_CHANNEL_ALIAS = "https://conda.anaconda.org"
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
CREDENTIALS_MESSAGE = (
    "a channel carries credentials (user:password@, a /t/TOKEN/ segment or a ?query), which "
    "would land in envbuild.lock, every export and the repodata cache: remove them and keep "
    "them in rattler's credential store (RATTLER_AUTH_FILE)"
)


def carries_credentials(channel: str) -> bool:
    """Whether a channel name, URL or path holds a secret: ``user:pw@host``, anaconda.org's
    ``/t/TOKEN`` path segment, or a query or fragment (``?token=...``), with or without a
    scheme."""
    scheme = _SCHEME.match(channel)
    rest = channel[scheme.end() :] if scheme else channel
    host, _, path = rest.partition("/")
    if "@" in host or "?" in rest or "#" in rest:
        return True
    remote = scheme is not None and not channel.lower().startswith("file:")
    return remote and re.match(r"t/[^/]+", path) is not None


def is_url(channel: str) -> bool:
    """Whether a channel is written as a URL (``https://...``, ``file://...``)."""
    return _SCHEME.match(channel) is not None


def resolve_channel(channel: str, base: Path) -> str:
    """A channel as written in a spec -> its URL: names via conda.anaconda.org, paths relative
    to ``base``."""
    if is_url(channel):
        return channel.rstrip("/")
    if channel.startswith((".", "/", "~")) or "/" in channel:
        return (base / Path(channel).expanduser()).resolve().as_uri()
    return f"{DEFAULT_CHANNEL_ALIAS}/{channel}"
