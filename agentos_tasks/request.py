"""Load and validate a change request (YAML, version 1).

Everything a user can get wrong is reported before anything runs, as one AgentosError
naming the file, the line and the key: unknown keys, a shell string where an argv list
belongs, duplicate or malformed step ids, missing content/patch files, a bad version.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import voluptuous as vol

from agentos_tasks.model import ADAPTERS, OPS, Author, Question, Request, Step, ToolSpec
from agentos_tasks.yamlsrc import MarkedDoc, check_unknown_keys, load_with_marks, validate

# no leading dot: ids name files and directories (steps/<id>.json, tools/<id>/), so
# `.`, `..` and hidden names are refused
ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"

_ident = vol.All(str, vol.Match(ID_PATTERN, msg="must match [A-Za-z0-9_-][A-Za-z0-9_.-]*"),
                 vol.Length(min=1, max=100))
_nonempty = vol.All(str, vol.Length(min=1))
# A commit identity lands in commits and reflogs: no control characters, no `<>` (git's
# own delimiters), no shell syntax a later reader of a log might evaluate.
_identity = vol.All(str, vol.Length(min=1, max=200),
                    vol.Match(r"^[^\x00-\x1f\x7f<>$`\\]+$",
                              msg="no control characters, <, >, $, ` or \\ allowed"))


def _arg(value: object) -> str:
    """argv items: strings; bare YAML numbers/booleans (`[sleep, 5]`) become their text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise vol.Invalid("argv items must be non-empty strings")


_argv = vol.All([_arg], vol.Length(min=1))


def _strict_int(value: object) -> object:
    """YAML `true` is an int to Python; a version or exit code must be a real number."""
    if isinstance(value, bool):
        raise vol.Invalid("expected an integer, got a boolean")
    return value


WRITE_SCHEMA = vol.Schema(vol.All(
    {vol.Required("path", description="File to create or replace, relative to the "
                  "repository root."): _nonempty,
     vol.Exclusive("content", "content",
                   description="The file's full new content (UTF-8 text)."): str,
     vol.Exclusive("content_file", "content", description="A file whose bytes become the "
                   "content, relative to the request file; never read through a symlink."):
        _nonempty},
    vol.Any(vol.Schema({vol.Required("content"): object}, extra=vol.ALLOW_EXTRA),
            vol.Schema({vol.Required("content_file"): object}, extra=vol.ALLOW_EXTRA),
            msg="write needs `content` or `content_file`"),
))
TOOL_SCHEMA = vol.Schema({
    vol.Required("adapter", description="The coding-agent adapter that does the step; the "
                 "policy must list it under tools."):
        vol.In(ADAPTERS, msg=f"adapter must be one of {', '.join(ADAPTERS)}"),
    vol.Required("prompt", description="The task given to the agent."): str,
    vol.Optional("paths", description="Globs (.gitignore syntax) the agent may change; the "
                 "policy still judges every changed path."): [_nonempty],
    vol.Optional("argv", description="The command to run (required for the `command` "
                 "adapter; must start with the policy rule's argv)."): _argv,
    vol.Optional("model", description="Model name passed to the agent CLI."): _nonempty,
})
STEP_SCHEMA = vol.Schema({
    vol.Required("id", description="Step id, unique in the request; names its artifacts "
                 "(steps/<id>.json)."): _ident,
    vol.Optional("message", description="Commit message of the step's patch (default: the "
                 "id)."): _nonempty,
    vol.Optional("write", description="Operation: write one file."): WRITE_SCHEMA,
    vol.Optional("delete", description="Operation: delete one file."): vol.Schema(
        {vol.Required("path", description="File to delete, relative to the repository "
                      "root."): _nonempty}),
    vol.Optional("patch", description="Operation: apply a unified diff or `git "
                 "format-patch --binary` file, relative to the request file."): _nonempty,
    vol.Optional("run", description="Operation: run a command in the sandbox, as an argv "
                 "list (never a shell string); the policy must allow its prefix."): _argv,
    vol.Optional("expect_exit", description="Exit code a run or tool step must return "
                 "(default 0)."): vol.All(_strict_int, int, vol.Range(min=0, max=255)),
    vol.Optional("tool", description="Operation: hand the step to a coding agent."):
        TOOL_SCHEMA,
})
REQUEST_SCHEMA = vol.Schema({
    vol.Required("version", description="Format version; only 1."):
        vol.All(_strict_int, int, vol.In([1], msg="only version 1 is supported")),
    vol.Required("id", description="Run id; names the run directory."): _ident,
    vol.Required("repo", description="Target git repository (its top level), relative to "
                 "the request file."): _nonempty,
    vol.Optional("init_repo", description="Demo only: create the repository with one "
                 "commit if it is absent."): bool,
    vol.Optional("base", description="Commit the worktree starts from (default: the "
                 "branch head)."): _nonempty,
    vol.Optional("branch", description="Branch the patches land on (default: the "
                 "repository's current branch)."): _nonempty,
    vol.Optional("policy", description="Policy file, relative to the request file "
                 "(default: the shipped sandbox policy; policy= overrides)."): _nonempty,
    vol.Optional("author", description="Commit identity of the landed commits."): {
        vol.Required("name", description="Author name."): _identity,
        vol.Required("email", description="Author email."): _identity},
    vol.Required("steps", description="The steps, run in order; each has exactly one "
                 "operation: write, delete, patch, run or tool."):
        vol.All([STEP_SCHEMA], vol.Length(min=1, msg="at least one step")),
    vol.Optional("questions", description="Questions a human must answer (answers=FILE) "
                 "before any step runs."): [
        {vol.Required("id", description="Question id; the key of its answer."): _ident,
         vol.Required("text", description="The question."): _nonempty}],
})


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_request(path: Path) -> Request:
    """Read, validate and resolve a request file. Raises AgentosError with file:line."""
    doc = load_with_marks(path, "request")  # errors name the path as given
    path = path.resolve()
    if not isinstance(doc.data, dict):
        found = "a list" if isinstance(doc.data, list) else f"a {type(doc.data).__name__}"
        raise doc.error(f"a request must be a mapping with version, id, repo and steps "
                        f"(found {found})", hint="see requests/demo.yaml")
    check_unknown_keys(doc, REQUEST_SCHEMA, "request")
    _precheck(doc)
    data = validate(doc, REQUEST_SCHEMA, "request")
    base_dir = path.parent
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(data["steps"]):
        where = ("steps", index)
        if raw["id"] in seen:
            raise doc.error(f"duplicate step id {raw['id']!r} (first at line {seen[raw['id']]})",
                            (*where, "id"), hint="step ids name artifacts and must be unique")
        seen[raw["id"]] = doc.lines.get((*where, "id"), 0)
        steps.append(_build_step(doc, raw, index, base_dir))
    author = Author(**data["author"]) if "author" in data else Author()
    policy = data.get("policy")
    return Request(
        source=path,
        sha256=sha256_bytes(doc.raw),
        version=data["version"],
        id=data["id"],
        repo=(base_dir / data["repo"]).resolve(),
        init_repo=bool(data.get("init_repo", False)),
        base=data.get("base"),
        branch=data.get("branch"),
        policy=(base_dir / policy).resolve() if policy else None,
        author=author,
        steps=tuple(steps),
        questions=tuple(Question(q["id"], q["text"]) for q in data.get("questions", [])),
        lines={k: doc.lines.get((k,), 1) for k in data},
    )


def _precheck(doc: MarkedDoc) -> None:
    """Errors voluptuous would word badly: shell strings, several operations in one step."""
    steps = doc.data.get("steps")
    if not isinstance(steps, list):
        return
    for index, raw in enumerate(steps):
        if not isinstance(raw, dict):
            raise doc.error("each step must be a mapping", ("steps", index))
        if isinstance(raw.get("run"), str):
            raise doc.error("`run` must be an argv list, not a shell string",
                            ("steps", index, "run"),
                            hint='write run: [python, -m, pytest]; a shell is only used '
                                 'when you ask for one: run: [sh, -c, "..."]')
        ops = [op for op in OPS if op in raw]
        label = raw.get("id", f"#{index + 1}")
        if len(ops) != 1:
            found = ", ".join(ops) if ops else "none"
            raise doc.error(f"step {label}: exactly one of {', '.join(OPS)} is required "
                            f"(found: {found})", ("steps", index))
        if "expect_exit" in raw and ops[0] not in ("run", "tool"):
            raise doc.error(f"step {label}: expect_exit only applies to run and tool steps",
                            ("steps", index, "expect_exit"))


def _input_file(doc: MarkedDoc, where: tuple[Any, ...], base_dir: Path, rel: str,
                what: str) -> Path:
    named = Path(os.path.abspath(base_dir / rel))
    target = named.resolve()
    if not target.is_file():
        raise doc.error(f"{what} not found: {rel} (resolved to {target})", where,
                        hint="paths inside a request are relative to the request file")
    if target != named:
        # a symlink someone else controls (e.g. inside the target repository) must not
        # point an input at a host secret such as ~/.ssh/id_rsa
        raise doc.error(f"{what} {rel} is reached through a symlink (to {target})", where,
                        hint="name the real file; inputs are never read through symlinks")
    return target


# Lines of a commit message that `git am` (mailsplit/mailinfo) would not keep as message:
# a patch or diffstat start, an mbox separator, a scissors line, or (first body line) an
# in-body header that rewrites author, date or subject.
_MESSAGE_PATCH_LINE = re.compile(r"^(diff -|Index: |---(\s|$)|\+\+\+ |>*From |-- ?>8 ?--)")
_MESSAGE_INBODY_HEADER = re.compile(r"^(From|Subject|Date|Author)\s*:", re.IGNORECASE)


def message_problem(message: str) -> str | None:
    """Why `message` could act as more than a message when the patch is applied, or None.

    Landing checks every commit anyway; this names the line before anything runs."""
    lines = message.split("\n")
    if "\r" in message or "\x00" in message:
        return "it contains a carriage return or NUL"
    for number, line in enumerate(lines, 1):
        if _MESSAGE_PATCH_LINE.match(line):
            return f"line {number} ({line[:30]!r}) would start a patch or a new mail"
    body = [line for line in lines[1:] if line.strip()]
    if body and _MESSAGE_INBODY_HEADER.match(body[0]):
        return f"its first body line ({body[0][:30]!r}) would be read as a mail header"
    if _MESSAGE_INBODY_HEADER.match(lines[0]) and lines[0].lower().startswith("from"):
        return f"its subject ({lines[0][:30]!r}) would be read as a mail header"
    return None


def _build_step(doc: MarkedDoc, raw: dict[str, Any], index: int, base_dir: Path) -> Step:
    where = ("steps", index)
    op = next(op for op in OPS if op in raw)
    problem = message_problem(str(raw.get("message", raw["id"])))
    if problem is not None:
        raise doc.error(f"step {raw['id']}: message refused: {problem}", (*where, "message"),
                        hint="a step message lands as the commit message through git am; "
                             "indent such lines or reword them")
    common: dict[str, Any] = {
        "id": raw["id"], "index": index, "op": op,
        "message": raw.get("message", raw["id"]), "line": doc.lines.get(where, 0),
    }
    if op == "write":
        spec = raw["write"]
        if "content_file" in spec:
            src = _input_file(doc, (*where, "write", "content_file"), base_dir,
                              spec["content_file"], "content_file")
            return Step(**common, path=spec["path"], content=src.read_bytes(), content_file=src,
                        input_files=(src,))
        return Step(**common, path=spec["path"], content=spec["content"].encode("utf-8"))
    if op == "delete":
        return Step(**common, path=raw["delete"]["path"])
    if op == "patch":
        src = _input_file(doc, (*where, "patch"), base_dir, raw["patch"], "patch file")
        paths = patch_paths(src.read_bytes())
        if not paths:
            raise doc.error(f"patch file {raw['patch']} contains no diff", (*where, "patch"),
                            hint="use a unified diff or `git format-patch --binary` output")
        return Step(**common, patch_file=src, patch_paths=paths, input_files=(src,))
    if op == "run":
        return Step(**common, argv=tuple(raw["run"]), expect_exit=raw.get("expect_exit", 0))
    spec = raw["tool"]
    if spec["adapter"] == "command" and "argv" not in spec:
        raise doc.error("the command adapter needs `argv`", (*where, "tool"))
    tool = ToolSpec(adapter=spec["adapter"], prompt=spec["prompt"],
                    paths=tuple(spec.get("paths", ())), argv=tuple(spec.get("argv", ())),
                    model=spec.get("model"))
    return Step(**common, tool=tool, expect_exit=raw.get("expect_exit", 0))


_QUOTED = re.compile(rb'^"((?:[^"\\]|\\.)*)"')


def _unquote(raw: bytes) -> str:
    """Undo git's C-style path quoting ("a\\tb", octal escapes)."""
    match = _QUOTED.match(raw)
    if not match:
        return raw.decode("utf-8", "surrogateescape")
    body = match.group(1).decode("latin-1").encode("latin-1").decode("unicode_escape")
    return body.encode("latin-1").decode("utf-8", "surrogateescape")


def _strip_prefix(name: str) -> str | None:
    if name == "/dev/null":
        return None
    return name.split("/", 1)[1] if "/" in name else name


def patch_paths(patch: bytes) -> tuple[str, ...]:
    """Every path a unified / git diff touches (old and new names), in order of appearance.

    Used for the pre-run policy check only; the post-step check judges the real diff.
    """
    found: list[str] = []

    def add(name: str | None) -> None:
        if name is not None and name not in found:
            found.append(name)

    for line in patch.splitlines():
        for prefix in (b"--- ", b"+++ "):
            if line.startswith(prefix):
                name = line[4:].split(b"\t")[0].rstrip(b"\r")
                add(_strip_prefix(_unquote(name)))
        for prefix in (b"rename from ", b"rename to ", b"copy from ", b"copy to "):
            if line.startswith(prefix):
                add(_unquote(line[len(prefix):].rstrip(b"\r")))
        if line.startswith(b"diff --git "):
            rest = line[len(b"diff --git "):].rstrip(b"\r")
            if rest.startswith(b'"'):
                match = _QUOTED.match(rest)
                if match:
                    add(_strip_prefix(_unquote(rest[: match.end()])))
                continue
            # unquoted "a/X b/X": both halves are the same length when names are equal
            half = (len(rest) - 1) // 2
            if len(rest) % 2 == 1 and rest[half:half + 1] == b" ":
                add(_strip_prefix(rest[:half].decode("utf-8", "surrogateescape")))
    return tuple(found)
