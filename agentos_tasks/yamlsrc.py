"""Load YAML (or JSON) keeping the source line of every node, for file:line errors.

`load_with_marks` returns the plain data plus a map from the key path of each node
(e.g. ``("steps", 3, "run")``) to its 1-based line, so validation errors from voluptuous
(which report ``error.path``) can name the exact line a user must fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import voluptuous as vol
import yaml

from agentos_tasks.errors import AgentosError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

PathKey = tuple[Any, ...]


@dataclass
class MarkedDoc:
    """Plain data loaded from a file, with the line of every node."""

    source: Path
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def where(self, path: Sequence[Any] = ()) -> str:
        """`file:line` for the deepest known node along `path`."""
        key: PathKey = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        return f"{self.source}:{self.lines.get(key, 1)}"

    def error(self, message: str, path: Sequence[Any] = (),
              hint: str | None = None) -> AgentosError:
        return AgentosError(message, where=self.where(path), hint=hint)


class _Loader(yaml.SafeLoader):
    """SafeLoader: no Python object tags, ever, and no aliases: `*name` makes the loader
    build the node it names again at every use, so ten nested anchors are a billion
    nodes (an alias bomb). None of agentos' files needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed here; write the "
                "value out", event.start_mark)
        return super().compose_node(parent, index)


def _construct(node: yaml.Node, path: PathKey, doc: MarkedDoc, loader: _Loader) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise doc.error(f"mapping key must be a scalar, got {type(key).__name__}",
                                path)
            if key in result:
                doc.lines[(*path, key)] = key_node.start_mark.line + 1
                raise doc.error(f"duplicate key {key!r}", (*path, key))
            result[key] = _construct(value_node, (*path, key), doc, loader)
            doc.lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), doc, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_with_marks(path: Path, what: str) -> MarkedDoc:
    """Read `path` (YAML or JSON) into a MarkedDoc; any syntax error names file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AgentosError(f"{what} file not found: {path}", hint="check the path; paths on the "
                           "command line are relative to the current directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentosError(f"cannot read {what} file {path}: {exc}") from None
    doc = MarkedDoc(source=path, data=None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise AgentosError(f"{what} file is empty", where=f"{path}:1")
        doc.data = _construct(node, (), doc, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        started = (f" ({exc.context} at line {exc.context_mark.line + 1})"
                   if exc.context and exc.context_mark else "")
        raise AgentosError(f"invalid YAML: {exc.problem or exc}{started}",
                           where=f"{path}:{line}") from None
    except yaml.YAMLError as exc:
        raise AgentosError(f"invalid YAML: {exc}", where=f"{path}:1") from None
    except RecursionError:
        raise AgentosError(f"{what} file is nested too deeply to read", where=f"{path}:1",
                           hint="a request, policy or answers file is a few levels deep"
                           ) from None
    finally:
        loader.dispose()
    return doc


def validate(doc: MarkedDoc, schema: vol.Schema, what: str) -> Any:
    """Validate with voluptuous; the first error becomes one AgentosError at file:line."""
    try:
        return schema(doc.data)
    except vol.MultipleInvalid as exc:
        first = sorted(exc.errors, key=lambda e: doc.lines.get(tuple(e.path), 0))[0]
        raise _invalid(doc, first, what) from None
    except vol.Invalid as exc:
        raise _invalid(doc, exc, what) from None


def _invalid(doc: MarkedDoc, exc: vol.Invalid, what: str) -> AgentosError:
    path = list(exc.path)
    key = ".".join(str(p) for p in path) or "<top>"
    msg = exc.error_message
    if msg == "extra keys not allowed":
        msg = f"unknown key {path[-1]!r}" if path else "unknown key"
    elif msg == "required key not provided":
        msg = f"missing required key {path[-1]!r}" if path else msg
    return AgentosError(f"{what}: {key}: {msg}", where=doc.where(path),
                        hint=f"see the {what} schema in README.md")
