"""The lock document's fields checked for type and form before it is read, so that a
hand-edited or damaged lock fails naming the field, not later in an export or install. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from envbuild.lock.wheels import check_wheels_document
from envbuild.spec.channels import carries_credentials


class BadField(ValueError):
    """A field of the lock document that has the wrong type or form."""


_HEX = re.compile(r"^[0-9a-f]*$")
_TEXT_LISTS = ("depends", "constrains", "targets")
#: package field -> (types allowed, required)
_PACKAGE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "version": ((str,), True),
    "build": ((str,), True),
    "build_number": ((int,), True),
    "subdir": ((str,), True),
    "url": ((str,), True),
    "channel": ((str,), False),
    "fn": ((str,), True),
    "sha256": ((str,), True),
    "md5": ((str,), True),
    "size": ((int, type(None)), False),
    "noarch": ((str, type(None)), False),
    "license": ((str, type(None)), False),
    "timestamp": ((int, type(None)), False),
}


def _expect(value: object, types: tuple[type, ...], where: str) -> None:
    if type(value) in types:  # the common case, and bool is not int here
        return
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:39] + "…"
        raise BadField(f"{where} must be {names}, not {shown}")


def _expect_texts(value: object, where: str) -> None:
    if not isinstance(value, list):
        raise BadField(f"{where} must be a list of strings")
    if all(type(item) is str for item in value):
        return
    for index, item in enumerate(value):
        _expect(item, (str,), f"{where}[{index}]")


def check_document(doc: Mapping[str, Any]) -> None:
    """Types and forms of every field the reader uses, so that a hand-edited or damaged lock
    fails here, naming the field, and not later in an export or install."""
    for key in ("name", "spec-hash"):
        _expect(doc.get(key), (str,), key)
    for key in ("channels", "gpu-dependencies"):
        _expect_texts(doc.get(key), key)
    for channel in doc["channels"]:
        if carries_credentials(channel):
            raise BadField("channels: a channel carries credentials; remove them")
    _expect(doc.get("roles"), (dict,), "roles")
    _expect(doc.get("variants"), (dict,), "variants")
    for name, variant in doc["variants"].items():
        _expect(variant, (dict,), f"variants.{name}")
        _expect_texts(variant.get("specs"), f"variants.{name}.specs")
        _expect_texts(variant.get("pypi-specs", []), f"variants.{name}.pypi-specs")
        _expect(variant.get("targets"), (dict,), f"variants.{name}.targets")
        for platform, target in variant["targets"].items():
            where = f"variants.{name}.targets.{platform}.virtual-packages"
            _expect(target, (dict,), f"variants.{name}.targets.{platform}")
            _expect_texts(target.get("virtual-packages"), where)
    _expect(doc.get("packages"), (list,), "packages")
    for index, entry in enumerate(doc["packages"]):
        where = f"packages[{index}]"
        _expect(entry, (dict,), where)
        for key, (types, required) in _PACKAGE_FIELDS.items():
            if required or key in entry:
                _expect(entry.get(key), types, f"{where}.{key}")
        for key in _TEXT_LISTS:
            _expect_texts(entry.get(key, [] if key != "targets" else None), f"{where}.{key}")
        for key, length in (("sha256", 64), ("md5", 32)):
            if len(entry[key]) != length or not _HEX.match(entry[key]):
                raise BadField(f"{where}.{key} is not a {key} digest")
        if carries_credentials(entry["url"]):
            raise BadField(f"{where}.url carries credentials; remove them")
    try:
        check_wheels_document(doc.get("pypi-packages", []))
    except ValueError as exc:
        raise BadField(str(exc)) from None
