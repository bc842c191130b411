"""Load YAML (or JSON) keeping the source line of every node, for file:line errors.

`load_with_marks` returns the plain data plus a map from the key path of each node
(e.g. ``("steps", 3, "run")``) to its 1-based line, so validation errors from voluptuous
(which report ``error.path``) can name the exact line a user must fix.

Loading is bounded before anything is built: the file is read only when it is a regular
file of at most MAX_BYTES, then one pass over the parser's events (iterative, no
recursion) refuses aliases, more than MAX_NODES nodes and nesting deeper than MAX_DEPTH;
only then are nodes composed. Every refusal is one AgentosError naming file:line.
`check_unknown_keys` names a misspelt key at its own line with a did-you-mean drawn
from the schema's known keys.
"""

from __future__ import annotations

import difflib
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import voluptuous as vol
import yaml

from agentos_tasks.errors import AgentosError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

PathKey = tuple[Any, ...]

MAX_BYTES = 4 << 20  # a request, policy or answers file is a few KiB
MAX_NODES = 100_000  # ~0.3 s to compose with libyaml; a 500-step request is ~6,000
MAX_DEPTH = 64  # requests and policies are 5 levels deep
# libyaml when present (the event pass and composing are ~10x faster); marks are the same
_BASE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class MarkedDoc:
    """Plain data loaded from a file, with the line of every node."""

    source: Path
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)
    raw: bytes = b""  # the bytes `data` was loaded from

    def where(self, path: Sequence[Any] = ()) -> str:
        """`file:line` for the deepest known node along `path`."""
        key: PathKey = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        return f"{self.source}:{self.lines.get(key, 1)}"

    def error(self, message: str, path: Sequence[Any] = (),
              hint: str | None = None) -> AgentosError:
        return AgentosError(message, where=self.where(path), hint=hint)


class _Loader(_BASE_LOADER):  # type: ignore[valid-type,misc]
    """SafeLoader (no Python object tags, ever). Aliases never reach it: `_prescan`
    refuses them, since `*name` makes the loader build the node it names again at every
    use, so ten nested anchors are a billion nodes (an alias bomb). None of agentos'
    files needs them."""


def _prescan(text: str, path: Path, what: str) -> None:
    """One pass over the parser's events: no alias, at most MAX_NODES nodes, at most
    MAX_DEPTH levels. Iterative, so hostile input costs at most one linear scan."""
    parser = _Loader(text)
    depth = nodes = 0
    merge_key = False
    try:
        while True:
            event = parser.get_event()
            if event is None or isinstance(event, yaml.StreamEndEvent):
                return
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                if merge_key:
                    raise AgentosError(f"YAML merge keys (<<: *{event.anchor}) are not "
                                       "supported", where=f"{path}:{line}",
                                       hint="write the keys out in each mapping")
                raise AgentosError(f"YAML aliases (*{event.anchor}) are not allowed here; "
                                   "write the value out", where=f"{path}:{line}")
            merge_key = isinstance(event, yaml.ScalarEvent) and event.value == "<<" \
                and event.implicit[0]  # plain, as YAML reads a merge key
            if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                nodes += 1
                if nodes > MAX_NODES:
                    raise AgentosError(f"{what} file has more than {MAX_NODES} YAML nodes",
                                       where=f"{path}:{line}",
                                       hint=f"a {what} file is small; put large content in "
                                            "a content_file")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise AgentosError(f"{what} file is nested too deeply ({MAX_DEPTH} "
                                       "levels at most)", where=f"{path}:{line}",
                                       hint=f"a {what} file is a few levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        parser.dispose()


def _construct(node: yaml.Node, path: PathKey, doc: MarkedDoc, loader: _Loader) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # YAML 1.1 only: 1.2 tools
                doc.lines[(*path, "<<")] = key_node.start_mark.line + 1  # read a key '<<'
                raise doc.error("YAML merge keys (<<) are not supported", (*path, "<<"),
                                hint="write the keys out in each mapping")
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


def read_bounded(path: Path, what: str, limit: int = MAX_BYTES) -> bytes:
    """The bytes of `path` (a regular file, symlinks followed), at most `limit`; a FIFO or
    device is refused instead of blocking, a larger file before it is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AgentosError(f"{what} file not found: {path}", hint="check the path; paths on the "
                           "command line are relative to the current directory") from None
    except OSError as exc:
        raise AgentosError(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise AgentosError(f"{what} file {path} is a {kind}" if kind == "directory"
                               else f"{what} file {path} is {kind}",
                               hint=f"name a {what} YAML file")
        too_big = AgentosError(f"{what} file {path} is larger than {limit >> 20} MiB; "
                               "refusing to read it", where=f"{path}:1",
                               hint=f"a {what} file is small; put large content in a "
                                    "content_file")
        if info.st_size > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise too_big
        return b"".join(chunks)
    except OSError as exc:
        raise AgentosError(f"cannot read {what} file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def decode_utf8(raw: bytes, path: Path, what: str) -> str:
    """`raw` as text; a byte that is not UTF-8 is named by line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise AgentosError(f"{what} file is not UTF-8: byte 0x{raw[exc.start]:02x} at "
                           f"column {column}", where=f"{path}:{line}",
                           hint="save the file as UTF-8") from None


def load_with_marks(path: Path, what: str) -> MarkedDoc:
    """Read `path` (YAML or JSON) into a MarkedDoc; any syntax error names file:line."""
    raw = read_bounded(path, what)
    text = decode_utf8(raw, path, what)
    doc = MarkedDoc(source=path, data=None, raw=raw)
    loader: _Loader | None = None
    try:
        _prescan(text, path, what)
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise AgentosError(f"{what} file is empty (no YAML document in it)",
                               where=f"{path}:1", hint=f"see {reference(what)}")
        try:
            doc.data = _construct(node, (), doc, loader)
        except (ValueError, OverflowError) as exc:  # e.g. an int of 5,000 digits
            raise AgentosError(f"invalid YAML value: {str(exc)[:200]}", where=f"{path}:1",
                               hint=f"see {reference(what)}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        if "maximum nesting depth" in str(exc.problem):  # PyYAML >= 6.0.4 stops it itself
            raise AgentosError(f"{what} file is nested too deeply ({MAX_DEPTH} levels at "
                               "most)", where=f"{path}:{line}",
                               hint=f"a {what} file is a few levels deep") from None
        started = (f" ({exc.context} at line {exc.context_mark.line + 1})"
                   if exc.context and exc.context_mark else "")
        raise AgentosError(f"invalid YAML: {exc.problem or exc}{started}",
                           where=f"{path}:{line}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 1
        raise AgentosError(f"invalid YAML: {exc.reason} (character {exc.character!r})",
                           where=f"{path}:{line}",
                           hint="control characters must be escaped in a quoted string"
                           ) from None
    except yaml.YAMLError as exc:
        raise AgentosError(f"invalid YAML: {exc}", where=f"{path}:1") from None
    except RecursionError:
        raise AgentosError(f"{what} file is nested too deeply to read", where=f"{path}:1",
                           hint="a request, policy or answers file is a few levels deep"
                           ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc


def validate(doc: MarkedDoc, schema: vol.Schema, what: str) -> Any:
    """Validate with voluptuous; the first error becomes one AgentosError at file:line.
    An unknown key is named first, at its own line, with a did-you-mean."""
    check_unknown_keys(doc, schema, what)
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
                        hint=_quote_hint(doc, path, msg) or f"see {reference(what)}")


def reference(what: str) -> str:
    """Where the keys of a request, policy or answers file are documented."""
    return {"policy": "docs/policy.md"}.get(what, "docs/requests.md")


def _quote_hint(doc: MarkedDoc, path: Sequence[Any], msg: str) -> str | None:
    """YAML reads unquoted `yes`, `on`, `1.0`, `0123`, `null` as a boolean, number or
    nothing: where text was expected, say so and show the quoted form."""
    if not msg.startswith("expected str") or not path:
        return None
    value: Any = doc.data
    try:
        for part in path:
            value = value[part]
    except (KeyError, IndexError, TypeError):
        return None
    if value is not None and not isinstance(value, (bool, int, float)):
        return None
    line = doc.lines.get(tuple(path), 0)
    text = doc.raw.decode("utf-8", "replace").splitlines()
    written = text[line - 1].split(":", 1)[-1].strip() if 0 < line <= len(text) else ""
    written = written.split(" #", 1)[0].strip() or str(value)
    kind = "nothing (null)" if value is None else \
        f"the {type(value).__name__} {value!r}"
    return (f"YAML reads the unquoted {written} as {kind}; quote it to keep it text: "
            f"{path[-1]}: \"{written}\"")


Shape = dict[str, Any] | list[Any] | None


def schema_shape(schema: Any) -> Shape:
    """The keys a voluptuous schema knows, as nested dicts (mappings) and one-item lists
    (sequences); None where any value is accepted or the keys are not fixed."""
    if isinstance(schema, vol.Schema):
        return schema_shape(schema.schema)
    if isinstance(schema, vol.All):
        for validator in schema.validators:
            shape = schema_shape(validator)
            if shape is not None:
                return shape
        return None
    if isinstance(schema, dict):
        keys = [k.schema if isinstance(k, vol.Marker) else k for k in schema]
        if not all(isinstance(k, str) for k in keys):
            return None  # {str: ...}: any key
        return {str(k.schema if isinstance(k, vol.Marker) else k): schema_shape(v)
                for k, v in schema.items()}
    if isinstance(schema, list) and len(schema) == 1:
        inner = schema_shape(schema[0])
        return [inner] if inner is not None else None
    return None


def _unknown_keys(data: Any, shape: Shape, path: PathKey) -> list[tuple[PathKey, list[str]]]:
    if isinstance(shape, dict) and isinstance(data, dict):
        found: list[tuple[PathKey, list[str]]] = []
        for key, value in data.items():
            if key not in shape:
                found.append(((*path, key), sorted(shape)))
            else:
                found.extend(_unknown_keys(value, shape[key], (*path, key)))
        return found
    if isinstance(shape, list) and isinstance(data, list):
        return [hit for i, item in enumerate(data)
                for hit in _unknown_keys(item, shape[0], (*path, i))]
    return []


def check_unknown_keys(doc: MarkedDoc, schema: Any, what: str) -> None:
    """The first key (in file order) the schema does not know: one error at that key's
    own line, with the closest known key when one is close (`wrte` -> `write`)."""
    hits = _unknown_keys(doc.data, schema_shape(schema), ())
    if not hits:
        return
    path, known = min(hits, key=lambda hit: doc.lines.get(hit[0], 0))
    key = str(path[-1])
    dotted = ".".join(str(p) for p in path)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise doc.error(f"{what}: {dotted}: unknown key {key!r}{suggestion}", path,
                    hint=f"known keys here: {', '.join(known)}; see {reference(what)}")
