"""A YAML document read defensively: its data, and the line of every value in it.

Hostile or careless input must end in one clear error, fast:

- unquoted numbers such as ``12.10`` stay text (a float would turn it into 12.1);
- a key given twice is an error naming both lines;
- aliases (``*name``) may not expand the document beyond ``MAX_NODES`` nodes (a
  "billion laughs" of a few hundred bytes would otherwise take minutes and gigabytes);
- nesting deeper than ``MAX_DEPTH`` and characters YAML refuses (a NUL byte) are errors.

Pure: text in, data out; ``YamlError`` carries the line where it can.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

#: Nodes a document may expand to, aliases counted at every use.
MAX_NODES = 100_000
#: Levels of nesting.
MAX_DEPTH = 64

Loc = tuple[str | int, ...]


class YamlError(ValueError):
    """The document cannot be read; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@functools.cache
def _loader_class() -> Any:
    """SafeLoader that keeps unquoted numbers like 12.4 as text; libyaml's parser when the
    wheel has it (12x faster on a 100,000-line document). Made on first use: importing yaml
    costs 20 ms that a current lock never needs."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader: Any = type("_Loader", (base,), {})
    loader.yaml_implicit_resolvers = {
        key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return loader


@dataclass(frozen=True)
class YamlDocument:
    """What a document holds, and the 1-based line of each location in it."""

    data: Any
    lines: dict[Loc, int]

    def line_of(self, loc: Loc) -> int | None:
        """The line of the deepest known location on the way to ``loc``."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _measure(root: yaml.Node) -> tuple[int, int]:
    """Nodes the document has once every alias is expanded (a shared node counted at every
    use, capped just above MAX_NODES), and its depth: computed once per distinct node, so a
    few hundred bytes of aliases cost microseconds, not billions of steps."""
    measured: dict[int, tuple[int, int]] = {}
    # Iterative post-order: the document may be deep before its depth is known.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in measured:
            continue
        children = _children(node)
        pending = [c for c in children if id(c) not in measured]
        if pending and not ready:
            stack.append((node, True))
            stack.extend((c, False) for c in pending)
            continue
        size = min(1 + sum(measured[id(c)][0] for c in children), MAX_NODES + 1)
        depth = 1 + max((measured[id(c)][1] for c in children), default=0)
        measured[id(node)] = (size, depth)
    return measured[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _positions(root: yaml.Node) -> dict[Loc, int]:
    """Location -> line; a key given twice is an error."""
    import yaml

    lines: dict[Loc, int] = {}
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise YamlError(
                        f"duplicate key '{_shorten(str(key))}' (first at line {seen[key]})", line
                    )
                seen[key] = line
                # A scalar's error is reported on its own line, a collection's at its key.
                lines[(*loc, key)] = (
                    line
                    if isinstance(value_node, yaml.CollectionNode)
                    else value_node.start_mark.line + 1
                )
                stack.append((value_node, (*loc, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(node.value))
    return lines


def parse(text: str) -> YamlDocument:
    """Read one YAML document; YamlError explains what is wrong and where."""
    import yaml

    loader = _loader_class()(text)
    limit = sys.getrecursionlimit()
    try:
        # PyYAML composes recursively: give it room for MAX_DEPTH levels, and no more.
        sys.setrecursionlimit(max(limit, 20 * MAX_DEPTH + 200))
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, {})
        size, depth = _measure(node)
        if depth > MAX_DEPTH:
            raise YamlError(f"invalid YAML: nested more than {MAX_DEPTH} levels deep")
        if size > MAX_NODES:
            raise YamlError(
                f"the document expands to more than {MAX_NODES} values through aliases (*name)"
            )
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(
            f"invalid YAML: {exc.problem or exc.context}", mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {_shorten(str(exc))}") from None
    except RecursionError:
        raise YamlError(f"invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    finally:
        sys.setrecursionlimit(limit)
        loader.dispose()
    return YamlDocument(data, _positions(node))


def dotted(loc: Loc) -> str:
    """``roles.worker.gpu.cuda`` or ``dependencies[2]`` for a location."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut short: error messages never repeat megabytes of input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _dumper_class() -> Any:
    """SafeDumper that writes a value shared between places in full at each (a Kubernetes
    document with ``&id001`` anchors reads badly and some tools refuse it)."""
    import yaml

    base: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return type("_Dumper", (base,), {"ignore_aliases": lambda self, data: True})


def dump(data: Any, *, width: int = 100) -> str:
    """Block-style YAML of ``data``, keys in the order given, no anchors or aliases."""
    import yaml

    return str(
        yaml.dump(
            data,
            Dumper=_dumper_class(),
            sort_keys=False,
            default_flow_style=False,
            width=width,
            allow_unicode=True,
        )
    )
