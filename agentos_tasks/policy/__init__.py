"""The policy: what a request may change and run, loaded from YAML/JSON, decided purely.

Every decision is a `Decision` that names the rule that made it (`rule_id`: the rule's own
`id`, or a stable generated one such as ``paths.deny[0]``), so the tape, the report and the
gates can all say *why*. The functions here never start a process and never read the clock:
the executor calls them before anything runs (`check_request`) and after every step over
what really changed (`check_changes`), and the gates call the same functions again to
recompute both decisions from the recorded artifacts.

Path rules are gitignore (gitwildmatch) globs compiled with `pathspec`. Deny beats ask beats
allow; a path no allow rule matches is denied (``paths.default``). `ask` rules deny in a
headless run. Deny and ask globs match case-insensitively (a deny can only get stronger:
on a case-insensitive filesystem ``SECRETS/x`` *is* ``secrets/x``); allow globs match
exactly. A ``.git`` path component (in any case, and its NTFS aliases) is refused whatever
the policy says, and so are names with control or invisible characters (`names`).

What a step leaves is judged for what it is, not only for its name: a symlink by what it
resolves to (deny and ask apply to the target too, `aliases` for links to directories), a
file that lands executable by ``paths.executable``. Counts, sizes and path lengths of
everything a step leaves are bounded by `agentos_tasks.leftovers`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import voluptuous as vol
from pathspec import GitIgnoreSpec

from agentos_tasks import yamlsrc
from agentos_tasks.aliases import reaches_below
from agentos_tasks.errors import PolicyViolation
from agentos_tasks.leftovers import host_path_room, walk
from agentos_tasks.model import OPS, Change, Request, Step, ToolSpec
from agentos_tasks.names import refused_character

WHAT = "policy"
KNOWN_ADAPTERS: tuple[str, ...] = ("claude", "codex", "opencode", "command")
ISOLATION_LEVELS: tuple[str, ...] = ("required", "best-effort")
DEFAULT_ENV: tuple[str, ...] = ("PATH", "LANG")

# Fixed rule ids; a user-given `id` may not reuse one (it would make decisions ambiguous).
RESERVED_RULE_IDS: frozenset[str] = frozenset({
    "allow", "operations", "paths.default", "paths.ignored", "paths.invalid", "paths.absolute",
    "paths.parent", "paths.git", "paths.symlink", "paths.hardlink", "paths.name",
    "paths.executable", "paths.setuid", "paths.special", "commands.default",
    "tools.default", "tool.paths", "limits.max_steps", "limits.max_file_bytes",
    "limits.max_changed_files", "limits.path_length", "limits.path_depth", "limits.files",
    "limits.bytes",
})

_SYMLINK_MODE = "120000"
_EXECUTABLE_MODE = "100755"
_GITLINK_MODE = "160000"


# --------------------------------------------------------------------------- schema

def _strict_int(value: Any) -> Any:
    """YAML `true` is an int to Python; a limit or version must be a real number."""
    if isinstance(value, bool):
        raise vol.Invalid("expected an integer, got a boolean")
    return value


_RULE_ID = vol.All(str, vol.Match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                  msg="rule id must match [A-Za-z0-9][A-Za-z0-9_.-]*"))
_GLOB = vol.All(str, vol.Length(min=1, msg="a glob must not be empty"))
_PATH_RULE = vol.Any(_GLOB, {vol.Optional("id"): _RULE_ID, vol.Required("glob"): _GLOB})
_ARGV = vol.All([str], vol.Length(min=1, msg="argv must list at least one token"))


_INT = vol.All(_strict_int, int, vol.Range(min=1))
_SECONDS = vol.All(_strict_int, vol.Any(int, float), vol.Range(min=0, min_included=False))

DEFAULT_LIMITS: dict[str, int | float] = {
    "step_seconds": 120, "max_file_bytes": 1_048_576, "max_changed_files": 200,
    "max_steps": 500, "output_bytes": 1_048_576, "memory_bytes": 4_294_967_296,
    "max_processes": 256, "max_open_files": 1024,
    # what a run/tool step may leave in its worktree, ignored files included (leftovers.py):
    # the longest worktree-relative path in bytes and in levels, and entries (files,
    # directories, links: inodes) and bytes beyond what the parent commit's own tree holds
    "path_length": 4096, "path_depth": 256, "files": 100_000, "bytes": 1_073_741_824,
}

_LIMITS = {
    vol.Optional(name, default=default): (_SECONDS if name == "step_seconds" else _INT)
    for name, default in DEFAULT_LIMITS.items()
}

POLICY_SCHEMA = vol.Schema(
    {
        vol.Required("version"): vol.All(_strict_int, int, vol.In([1], msg="only version 1 "
                                                                      "is supported")),
        vol.Required("id"): _RULE_ID,
        vol.Optional("operations", default=list): [vol.In(list(OPS))],
        vol.Optional("paths", default=dict): {
            vol.Optional("allow", default=list): [_PATH_RULE],
            vol.Optional("deny", default=list): [_PATH_RULE],
            vol.Optional("ask", default=list): [_PATH_RULE],
            vol.Optional("executable", default=list): [_PATH_RULE],
        },
        vol.Optional("commands", default=list): [
            {vol.Optional("id"): _RULE_ID, vol.Required("argv"): _ARGV}
        ],
        vol.Optional("tools", default=list): [
            {
                vol.Optional("id"): _RULE_ID,
                vol.Required("adapter"): vol.In(list(KNOWN_ADAPTERS)),
                vol.Optional("network", default=False): bool,
                vol.Optional("review", default=False): bool,
                vol.Optional("argv"): _ARGV,
            }
        ],
        vol.Optional("network", default=False): bool,
        vol.Optional("isolation", default="required"): vol.In(list(ISOLATION_LEVELS)),
        vol.Optional("limits", default=dict): _LIMITS,
        vol.Optional("env", default=lambda: list(DEFAULT_ENV)): [
            vol.All(str, vol.Match(r"^[A-Za-z_][A-Za-z0-9_]*$",
                                   msg="not an environment variable name"))
        ],
        vol.Optional("require_approval", default=list): [vol.In(list(OPS))],
    },
    extra=vol.PREVENT_EXTRA,
)
"""Voluptuous schema of a version-1 policy file (also the source of the shipped JSON Schema)."""


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class Decision:
    """One allow/deny verdict and the rule that made it."""

    allowed: bool
    rule_id: str
    reason: str
    subject: str = ""  # the path, argv or adapter that was judged
    step: str | None = None  # step id, when the decision is about one step

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the tape, tool result packs and reports."""
        return {"decision": "allow" if self.allowed else "deny", "allowed": self.allowed,
                "rule_id": self.rule_id, "reason": self.reason, "subject": self.subject,
                "step": self.step}


@dataclass(frozen=True)
class Limits:
    """Resource limits; the executor and sandbox enforce them, they are not advisory."""

    step_seconds: float
    max_file_bytes: int
    max_changed_files: int
    max_steps: int
    output_bytes: int
    memory_bytes: int
    max_processes: int
    max_open_files: int
    path_length: int = 4096
    path_depth: int = 256
    files: int = 100_000
    bytes: int = 1_073_741_824


@dataclass(frozen=True)
class PathRule:
    """One glob of `paths.allow|deny|ask`, compiled once."""

    rule_id: str
    glob: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, path: str) -> bool:
        """True when the glob matches `path` or any parent directory of it (gitignore).

        pathspec's regexes already end in ``(/|$)``, so a match on a directory prefix
        covers everything below it, as in .gitignore.
        """
        return self.regex.search(path) is not None


@dataclass(frozen=True)
class CommandRule:
    """`commands[i]`: an argv prefix that run steps may start with."""

    rule_id: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ToolRule:
    """`tools[i]`: an adapter that tool steps may use, and what it gets."""

    rule_id: str
    adapter: str
    network: bool = False
    review: bool = False
    argv: tuple[str, ...] | None = None  # `command` adapter only: required argv prefix


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy; `sha256` is of the raw file bytes (what the tape records)."""

    source: Path
    sha256: str
    id: str
    version: int
    operations: tuple[str, ...]
    allow: tuple[PathRule, ...]
    deny: tuple[PathRule, ...]
    ask: tuple[PathRule, ...]
    commands: tuple[CommandRule, ...]
    tools: tuple[ToolRule, ...]
    network: bool
    isolation: str
    limits: Limits
    env: tuple[str, ...]
    require_approval: tuple[str, ...]
    executable: tuple[PathRule, ...] = ()  # where a file may land executable (100755)

    def tool_rule(self, adapter: str) -> ToolRule | None:
        """The (single) tools rule for `adapter`, if the policy lists it."""
        return next((rule for rule in self.tools if rule.adapter == adapter), None)


# --------------------------------------------------------------------------- loading

def default_policy_path() -> Path:
    """`<repo root>/policies/sandbox_policy.yaml`, found next to this package."""
    return Path(__file__).resolve().parent.parent / "policies" / "sandbox_policy.yaml"


def load_policy(path: Path) -> Policy:
    """Read, validate and compile a policy file; any mistake is an AgentosError at file:line."""
    doc = yamlsrc.load_with_marks(path, WHAT)
    data = yamlsrc.validate(doc, POLICY_SCHEMA, WHAT)
    raw = path.read_bytes()
    _check_rule_ids(doc, data)

    path_rules: dict[str, tuple[PathRule, ...]] = {}
    for kind in ("deny", "ask", "allow", "executable"):
        compiled = []
        for index, entry in enumerate(data["paths"][kind]):
            where: tuple[Any, ...] = ("paths", kind, index)
            glob = entry if isinstance(entry, str) else entry["glob"]
            explicit = None if isinstance(entry, str) else entry.get("id")
            glob_where = where if isinstance(entry, str) else (*where, "glob")
            try:
                regex = compile_glob(glob, ignore_case=kind in ("deny", "ask"))
            except ValueError as exc:
                raise doc.error(f"{WHAT}: paths.{kind}[{index}]: {exc}", glob_where,
                                hint="globs use .gitignore syntax, e.g. 'src/**' or "
                                     "'**/.env'") from None
            compiled.append(PathRule(explicit or f"paths.{kind}[{index}]", glob, regex))
        path_rules[kind] = tuple(compiled)

    commands = tuple(
        CommandRule(entry.get("id") or f"commands[{index}]", tuple(entry["argv"]))
        for index, entry in enumerate(data["commands"])
    )

    tools: list[ToolRule] = []
    for index, entry in enumerate(data["tools"]):
        where = ("tools", index)
        if any(rule.adapter == entry["adapter"] for rule in tools):
            raise doc.error(f"{WHAT}: tools: adapter {entry['adapter']!r} listed twice",
                            (*where, "adapter"), hint="one rule per adapter")
        if "argv" in entry and entry["adapter"] != "command":
            raise doc.error(f"{WHAT}: tools[{index}].argv is only for the 'command' adapter",
                            (*where, "argv"), hint="the other adapters build their own argv")
        tools.append(ToolRule(entry.get("id") or f"tools[{index}]",
                              entry["adapter"], entry["network"], entry["review"],
                              tuple(entry["argv"]) if "argv" in entry else None))

    return Policy(
        source=path.resolve(),
        sha256=hashlib.sha256(raw).hexdigest(),
        id=data["id"],
        version=data["version"],
        operations=tuple(dict.fromkeys(data["operations"])),
        allow=path_rules["allow"],
        deny=path_rules["deny"],
        ask=path_rules["ask"],
        commands=commands,
        tools=tuple(tools),
        network=data["network"],
        isolation=data["isolation"],
        limits=Limits(**{name: data["limits"][name] for name in DEFAULT_LIMITS}),
        env=tuple(dict.fromkeys(data["env"])),
        require_approval=tuple(dict.fromkeys(data["require_approval"])),
        executable=path_rules["executable"],
    )


def _check_rule_ids(doc: yamlsrc.MarkedDoc, data: dict[str, Any]) -> None:
    """User-given rule ids are unique and never a built-in id; errors in file order."""
    located: list[tuple[int, str, tuple[Any, ...]]] = []
    sections: list[tuple[tuple[Any, ...], list[Any]]] = [
        (("paths", kind), data["paths"][kind])
        for kind in ("allow", "deny", "ask", "executable")
    ] + [(("commands",), data["commands"]), (("tools",), data["tools"])]
    for prefix, entries in sections:
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and "id" in entry:
                where = (*prefix, index, "id")
                located.append((doc.lines.get(where, 0), entry["id"], where))
    seen: dict[str, tuple[Any, ...]] = {}
    for _line, explicit, where in sorted(located, key=lambda item: item[0]):
        if explicit in RESERVED_RULE_IDS:
            raise doc.error(f"{WHAT}: rule id {explicit!r} is reserved", where,
                            hint="choose another id; reserved ids name built-in rules")
        if explicit in seen:
            raise doc.error(f"{WHAT}: duplicate rule id {explicit!r} (first at "
                            f"{doc.where(seen[explicit])})", where)
        seen[explicit] = where


@functools.lru_cache(maxsize=4096)
def compile_glob(glob: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile one gitignore glob to a regex; ValueError says why a glob is unusable."""
    if "\0" in glob or "\n" in glob or "\r" in glob:
        raise ValueError(f"glob {glob!r} contains a control character")
    if glob.startswith("!"):
        raise ValueError(f"negated glob {glob!r} is not supported (use a deny rule)")
    if glob.startswith("#"):
        raise ValueError(f"glob {glob!r} is a .gitignore comment (escape it as '\\#')")
    if ".." in glob.strip("/").split("/"):
        raise ValueError(f"glob {glob!r} has a '..' segment; globs are relative to the "
                         "repository root and never leave it")
    try:
        patterns = GitIgnoreSpec.from_lines([glob]).patterns
    except Exception as exc:  # pathspec raises its own error types per version
        raise ValueError(f"invalid glob {glob!r}: {exc}") from None
    if len(patterns) != 1 or patterns[0].include is not True or patterns[0].regex is None:
        raise ValueError(f"glob {glob!r} matches nothing")
    source: str = patterns[0].regex.pattern
    return re.compile(source, re.IGNORECASE if ignore_case else 0)


# --------------------------------------------------------------------------- paths

def _is_git_component(component: str) -> bool:
    """`.git` as git itself refuses it: any case, NTFS trailing dots/spaces, 8.3 alias."""
    lowered = component.lower()
    return lowered.rstrip(". ") == ".git" or lowered == "git~1"


def normalize_path(raw: str) -> str:
    """Worktree-relative posix path with '.', '' and inner '..' resolved; refuses escapes.

    Raises PolicyViolation: ``paths.absolute`` (leading '/'), ``paths.parent`` ('..' that
    leaves the root), ``paths.git`` (a '.git' component anywhere), ``paths.invalid`` (empty,
    NUL or other C0 control characters, DEL, backslashes, or the root itself),
    ``paths.name`` (C1 controls, bidi and other invisible format characters: `names`).
    """
    if not isinstance(raw, str) or not raw:
        raise PolicyViolation("paths.invalid", f"empty or non-text path {raw!r}")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
        raise PolicyViolation("paths.invalid", f"control character in path {raw!r}")
    if any(0xDC80 <= ord(char) <= 0xDCFF for char in raw):
        # bytes that are not UTF-8 (decoded with surrogateescape): refuse, they cannot be
        # recorded faithfully in JSON evidence or SHA256SUMS
        raise PolicyViolation("paths.invalid", f"path is not valid UTF-8: {raw!r}")
    refused = refused_character(raw)
    if refused is not None:
        raise PolicyViolation("paths.name", f"{refused} in path {raw!a}",
                              hint="names with control, bidi or invisible characters do not "
                                   "show as what they are; rename the file")
    if "\\" in raw:
        # Legal in a Linux file name, but a separator elsewhere ('..\\x'); never ambiguous here.
        raise PolicyViolation("paths.invalid", f"backslash in path {raw!r}",
                              hint="use '/' as the path separator")
    if raw.startswith("/"):
        raise PolicyViolation("paths.absolute", f"absolute path {raw!r}",
                              hint="paths are relative to the repository root")
    parts: list[str] = []
    for component in raw.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                raise PolicyViolation("paths.parent", f"path {raw!r} leaves the repository")
            parts.pop()
            continue
        if _is_git_component(component):
            raise PolicyViolation("paths.git", f"path {raw!r} is inside .git",
                                  hint=".git is never writable, whatever the policy says")
        parts.append(component)
    if not parts:
        raise PolicyViolation("paths.invalid", f"path {raw!r} names the repository root")
    return "/".join(parts)


def _first_match(rules: Sequence[PathRule], path: str) -> PathRule | None:
    return next((rule for rule in rules if rule.matches(path)), None)


def decide_path(policy: Policy, path: str, *, tool_paths: Sequence[str] | None = None,
                ignored: bool = False) -> Decision:
    """May `path` be changed? Order: safety, deny, ask, (ignored stops here), tool paths, allow.

    `tool_paths` are the globs of a tool step (`ToolSpec.paths`): a tool may only change
    paths inside them *and* inside the policy. `ignored` marks a gitignored file a command
    created: it never lands, so only deny/ask and the safety rules judge it.
    """
    try:
        normal = normalize_path(path)
    except PolicyViolation as exc:
        # a name refused for its characters is recorded and shown escaped, never raw
        shown = ascii(path)[1:-1] if exc.rule_id in ("paths.name", "paths.invalid") \
            and isinstance(path, str) else str(path)
        return Decision(False, exc.rule_id, exc.what, subject=shown)
    deny = _first_match(policy.deny, normal)
    if deny is not None:
        return Decision(False, deny.rule_id, f"{normal} matches deny glob {deny.glob!r}", normal)
    ask = _first_match(policy.ask, normal)
    if ask is not None:
        return Decision(False, ask.rule_id, f"{normal} matches ask glob {ask.glob!r}: needs "
                        "approval, and a headless run denies it", normal)
    if ignored:
        return Decision(True, "paths.ignored", f"{normal} is gitignored (never lands) and no "
                        "deny or ask rule matches", normal)
    if tool_paths is not None and not _tool_paths_match(tool_paths, normal):
        return Decision(False, "tool.paths", f"{normal} is outside the tool's paths "
                        f"{list(tool_paths)}", normal)
    allow = _first_match(policy.allow, normal)
    if allow is not None:
        return Decision(True, allow.rule_id, f"{normal} matches allow glob {allow.glob!r}",
                        normal)
    return Decision(False, "paths.default", f"{normal} matches no allow glob", normal)


def decide_executable(policy: Policy, path: str) -> Decision:
    """May `path` land executable (git mode 100755, as a new file or by a mode change)?

    Only where a ``paths.executable`` glob matches (exact case, like allow); no glob, no
    executable: ``paths.executable``. A file that already was 100755 keeps its mode freely.
    """
    normal = normalize_path(path)
    rule = _first_match(policy.executable, normal)
    if rule is not None:
        return Decision(True, rule.rule_id, f"{normal} may be executable: matches "
                        f"paths.executable glob {rule.glob!r}", normal)
    return Decision(False, "paths.executable", f"{normal} would land executable (100755) but "
                    "matches no paths.executable glob", normal)


def _tool_paths_match(tool_paths: Sequence[str], path: str) -> bool:
    for glob in tool_paths:
        try:
            regex = compile_glob(glob)
        except ValueError:
            continue  # decide_tool refuses such a step before it runs
        if regex.search(path) is not None:
            return True
    return False


# --------------------------------------------------------------------------- commands, tools

def decide_argv(policy: Policy, argv: Sequence[str]) -> Decision:
    """A run step's argv is allowed iff some `commands[]` argv is a token-exact prefix of it.

    There is no shell: ``bash -c "..."`` is the argv ``[bash, -c, ...]`` and needs its own
    rule; ``/usr/bin/python`` is not ``python``.
    """
    tokens = tuple(argv)
    shown = shlex.join(tokens)
    if not tokens:
        return Decision(False, "commands.default", "empty argv", shown)
    for rule in policy.commands:
        if tokens[: len(rule.argv)] == rule.argv:
            return Decision(True, rule.rule_id, f"argv starts with {list(rule.argv)}", shown)
    return Decision(False, "commands.default", f"no commands rule is a prefix of {shown}", shown)


def decide_tool(policy: Policy, tool: ToolSpec) -> Decision:
    """A tool step is allowed iff its adapter is listed and its path globs stay in the repo."""
    rule = policy.tool_rule(tool.adapter)
    if rule is None:
        return Decision(False, "tools.default", f"adapter {tool.adapter!r} is not listed in "
                        "tools", tool.adapter)
    for glob in tool.paths:
        try:
            normalize_path(glob)
            compile_glob(glob)
        except PolicyViolation as exc:
            return Decision(False, exc.rule_id, f"tool path glob: {exc.what}", glob)
        except ValueError as exc:
            return Decision(False, "tool.paths", str(exc), glob)
    if tool.adapter == "command":
        shown = shlex.join(tool.argv)
        if not tool.argv:
            return Decision(False, rule.rule_id, "the command adapter needs an argv", shown)
        if rule.argv is not None and tool.argv[: len(rule.argv)] != rule.argv:
            return Decision(False, rule.rule_id, f"argv does not start with {list(rule.argv)}",
                            shown)
    return Decision(True, rule.rule_id, f"adapter {tool.adapter!r} is listed", tool.adapter)


def tool_network(policy: Policy, adapter: str) -> bool:
    """Whether the sandbox gives `adapter` network access (False when not listed)."""
    rule = policy.tool_rule(adapter)
    return rule.network if rule is not None else False


def step_network(policy: Policy, step: Step) -> bool:
    """Network for one step: tools per their rule, run steps per `network`, others never."""
    if step.op == "tool" and step.tool is not None:
        return tool_network(policy, step.tool.adapter)
    return policy.network if step.op == "run" else False


def needs_approval(policy: Policy, step: Step) -> bool:
    """True when a reviewer approval must be recorded before this step's patch is applied."""
    if step.op in policy.require_approval:
        return True
    if step.op == "tool" and step.tool is not None:
        rule = policy.tool_rule(step.tool.adapter)
        return rule is not None and rule.review
    return False


def step_env(policy: Policy, host_env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment a step gets: the allowlisted names present on the host.

    PATH loses empty and relative entries: inside the sandbox they resolve against the
    worktree, where a repository file named `python3` would win over the real one.
    """
    env = {name: host_env[name] for name in policy.env if name in host_env}
    if "PATH" in env:
        entries = [e for e in env["PATH"].split(os.pathsep) if e and os.path.isabs(e)]
        env["PATH"] = os.pathsep.join(dict.fromkeys(entries))
    return env


# --------------------------------------------------------------------------- request / changes

def check_request(policy: Policy, request: Request) -> Decision:
    """Pre-run check of the WHOLE request; the first denial wins and names its step."""
    if len(request.steps) > policy.limits.max_steps:
        return Decision(False, "limits.max_steps", f"{len(request.steps)} steps exceed "
                        f"limits.max_steps={policy.limits.max_steps}", request.id)
    for step in request.steps:
        decision = _check_step(policy, step)
        if not decision.allowed:
            return Decision(False, decision.rule_id, decision.reason, decision.subject, step.id)
    return Decision(True, "allow", f"{len(request.steps)} steps allowed by policy {policy.id!r}",
                    request.id)


def _check_step(policy: Policy, step: Step) -> Decision:
    if step.op not in policy.operations:
        return Decision(False, "operations", f"operation {step.op!r} is not in operations "
                        f"{list(policy.operations)}", step.op)
    for path in step.declared_paths():
        decision = decide_path(policy, path)
        if not decision.allowed:
            return decision
        if len(os.fsencode(path)) > policy.limits.path_length:
            return Decision(False, "limits.path_length", f"a path of {len(os.fsencode(path))} "
                            f"bytes exceeds limits.path_length={policy.limits.path_length}",
                            decision.subject)
        levels = decision.subject.count("/") + 1
        if levels > policy.limits.path_depth:
            return Decision(False, "limits.path_depth", f"a path of {levels} levels exceeds "
                            f"limits.path_depth={policy.limits.path_depth}",
                            decision.subject[:200])
    if step.op == "write" and step.content is not None \
            and len(step.content) > policy.limits.max_file_bytes:
        return Decision(False, "limits.max_file_bytes", f"{len(step.content)} bytes exceed "
                        f"limits.max_file_bytes={policy.limits.max_file_bytes}",
                        step.path or "")
    if step.op == "run":
        decision = decide_argv(policy, step.argv)
        if not decision.allowed:
            return decision
    if step.op == "tool":
        if step.tool is None:
            return Decision(False, "tools.default", "tool step without a tool", step.id)
        decision = decide_tool(policy, step.tool)
        if not decision.allowed:
            return decision
    return Decision(True, "allow", f"step {step.id} allowed", step.id)


def check_changes(policy: Policy, worktree: Path, changes: Sequence[Change], *,
                  step: Step) -> Decision:
    """Post-step check over what REALLY changed in `worktree` (computed by the executor).

    Judges every path (and the old path of a rename) with `decide_path`, inside the tool's
    own globs for tool steps; refuses symlinks that are absolute or point outside the
    worktree, into .git or at its root, or resolve to what deny/ask rules cover (under
    that rule's id), hard-linked files, nested repositories (gitlinks), files landing
    executable outside ``paths.executable``, files above `limits.max_file_bytes`, more
    than `limits.max_changed_files` landing changes, and changes the host cannot open.
    """
    root = worktree.resolve()
    changes = _expand_directories(root, changes)
    landing = [change for change in changes if not change.ignored]
    if len(landing) > policy.limits.max_changed_files:
        return Decision(False, "limits.max_changed_files", f"{len(landing)} changed files "
                        f"exceed limits.max_changed_files={policy.limits.max_changed_files}",
                        step.id, step.id)
    tool_paths = step.tool.paths if step.op == "tool" and step.tool is not None else None
    for change in changes:
        try:
            decision = _check_change(policy, root, change, tool_paths)
        except OSError as exc:
            decision = _uninspectable(change.path, exc)
        if not decision.allowed:
            return Decision(False, decision.rule_id, decision.reason, decision.subject, step.id)
    return Decision(True, "allow", f"{len(landing)} changes ({len(changes) - len(landing)} "
                    "ignored) allowed", step.id, step.id)


def _expand_directories(root: Path, changes: Sequence[Change]) -> list[Change]:
    """Replace a change that is a whole directory (git lists an untracked or ignored
    directory as one entry unless told `-uall`) by one change per file or link inside it,
    so nothing inside escapes judgement."""
    expanded: list[Change] = []
    for change in changes:
        try:
            normal = normalize_path(change.path)
            _refuse_symlinked_parents(root, normal, include_leaf=True)
            target = root / normal
            is_dir = target.is_dir()
        except (PolicyViolation, OSError):
            expanded.append(change)  # judged (and refused) as it is
            continue
        if change.status == "D" or change.new_mode == _GITLINK_MODE or not is_dir:
            expanded.append(change)
            continue
        try:
            inside = _entries_below(target)
        except OSError as exc:
            raise PolicyViolation("paths.invalid", f"cannot list {normal}: {exc}") from None
        expanded += [Change(f"{normal}/{rel}", "A", ignored=change.ignored) for rel in inside]
    return expanded


def _entries_below(directory: Path) -> list[str]:
    """Every non-directory below `directory` (files, links, other nodes), relative, sorted;
    fd-based and iterative (`leftovers.walk`): any depth, never through a symlink."""
    found: list[str] = []

    def visit(_fd: int, rel: str, _name: str, info: os.stat_result) -> bool:
        if stat.S_ISDIR(info.st_mode):
            return True
        found.append(rel)
        return False

    walk(directory, visit)
    return sorted(found)


def _uninspectable(path: str, exc: OSError) -> Decision:
    """A change the host cannot even lstat is refused, never a traceback."""
    if exc.errno == errno.ENAMETOOLONG:
        return Decision(False, "limits.path_length", f"{len(os.fsencode(path))}-byte path is "
                        "too long for the host to open (ENAMETOOLONG)", path[:200])
    return Decision(False, "paths.invalid", f"cannot inspect {path!a}: {exc.strerror}",
                    path[:200])


def _check_change(policy: Policy, root: Path, change: Change,
                  tool_paths: Sequence[str] | None) -> Decision:
    for raw in (change.path, change.old_path):
        if raw is None:
            continue
        decision = decide_path(policy, raw, tool_paths=tool_paths, ignored=change.ignored)
        if not decision.allowed:
            return decision
    normal = normalize_path(change.path)  # decide_path accepted it
    if change.new_mode == _GITLINK_MODE:
        return Decision(False, "paths.git", f"{normal} is a nested git repository (gitlink)",
                        normal)
    if change.status == "D":
        return Decision(True, "allow", f"{normal} deleted", normal)
    try:
        _refuse_symlinked_parents(root, normal)
    except PolicyViolation as exc:
        return Decision(False, exc.rule_id, exc.what, normal)
    target = root / normal
    try:
        info = target.lstat()
    except FileNotFoundError:
        return Decision(True, "allow", f"{normal} no longer exists", normal)
    if stat.S_ISLNK(info.st_mode) or change.new_mode == _SYMLINK_MODE:
        return _check_symlink(policy, root, normal)
    if stat.S_ISREG(info.st_mode):
        if info.st_nlink > 1:
            return Decision(False, "paths.hardlink", f"{normal} has {info.st_nlink} hard links",
                            normal)
        if not change.ignored and info.st_size > policy.limits.max_file_bytes:
            return Decision(False, "limits.max_file_bytes", f"{normal} has {info.st_size} "
                            f"bytes > limits.max_file_bytes={policy.limits.max_file_bytes}",
                            normal)
        # git records the owner's x bit: 100755 lands when it is set (ignored files never land)
        if not change.ignored and info.st_mode & stat.S_IXUSR \
                and change.old_mode != _EXECUTABLE_MODE:
            decision = decide_executable(policy, normal)
            if not decision.allowed:
                return decision
    return Decision(True, "allow", f"{normal} allowed", normal)


def _check_symlink(policy: Policy, root: Path, normal: str) -> Decision:
    """A symlink may only point, relatively, to somewhere inside the worktree but not .git
    or the root itself, and never to a path deny or ask rules cover (`_check_alias`)."""
    link = root / normal
    try:
        target = os.readlink(link)
    except OSError:
        return Decision(False, "paths.symlink", f"{normal} was recorded as a symlink but is "
                        "not one", normal)
    if target.startswith("/"):
        return Decision(False, "paths.symlink", f"{normal} -> {target}: absolute target",
                        normal)
    parent = normal.rsplit("/", 1)[0] if "/" in normal else ""
    parts = [part for part in parent.split("/") if part]
    for component in target.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                return Decision(False, "paths.symlink", f"{normal} -> {target}: points "
                                "outside the worktree", normal)
            parts.pop()
            continue
        if _is_git_component(component):
            return Decision(False, "paths.symlink", f"{normal} -> {target}: points into .git",
                            normal)
        parts.append(component)
    # The lexical answer can be fooled by symlinks already in the tree; ask the filesystem.
    resolved = Path(os.path.realpath(link))
    if resolved != root and root not in resolved.parents:
        return Decision(False, "paths.symlink", f"{normal} -> {target}: resolves outside the "
                        f"worktree ({resolved})", normal)
    if any(_is_git_component(part) for part in resolved.relative_to(root).parts):
        return Decision(False, "paths.symlink", f"{normal} -> {target}: resolves into .git",
                        normal)
    if resolved == root or not parts:
        return Decision(False, "paths.symlink", f"{normal} -> {target}: resolves to the "
                        "repository root, which would alias .git and every denied path", normal)
    # where it ends (through every link on the way) and what its text names, both judged
    holds_paths = resolved.is_dir() or not os.path.lexists(resolved)  # dangling: may become one
    for aliased in dict.fromkeys((resolved.relative_to(root).as_posix(), "/".join(parts))):
        decision = _check_alias(policy, f"{normal} -> {target}", aliased, holds_paths)
        if decision is not None:
            return Decision(False, decision.rule_id, decision.reason, normal)
    return Decision(True, "allow", f"{normal} -> {target} stays inside the worktree", normal)


def _check_alias(policy: Policy, link: str, aliased: str, holds_paths: bool) -> Decision | None:
    """The denial, if `aliased` (what a link resolves to) is a path deny or ask rules cover:
    itself, or — for a directory — something below it that only its name puts there."""
    segments = aliased.split("/")
    for kind, rules in (("deny", policy.deny), ("ask", policy.ask)):
        suffix = "" if kind == "deny" else ": needs approval, and a headless run denies it"
        for rule in rules:
            if rule.matches(aliased):
                return Decision(False, rule.rule_id, f"{link} resolves to {aliased}, which "
                                f"matches {kind} glob {rule.glob!r}{suffix}", aliased)
            if holds_paths and reaches_below(rule.glob, segments, ignore_case=True):
                return Decision(False, rule.rule_id, f"{link} aliases the directory {aliased}: "
                                f"paths below it match {kind} glob {rule.glob!r}{suffix}",
                                aliased)
    return None


def _refuse_symlinked_parents(root: Path, normal: str, *, include_leaf: bool = False) -> None:
    parts = normal.split("/")
    upto = len(parts) if include_leaf else len(parts) - 1
    current = root
    for component in parts[:upto]:
        current = current / component
        try:
            info = current.lstat()
        except FileNotFoundError:
            return  # nothing below a missing component exists either
        if stat.S_ISLNK(info.st_mode):
            raise PolicyViolation("paths.symlink", f"{current.relative_to(root)} is a symlink "
                                  f"on the way to {normal}")


def safe_target(worktree: Path, relpath: str) -> Path:
    """Absolute path to write or delete `relpath` at, refusing any symlinked component.

    Normalises first (PolicyViolation as in `normalize_path`), then refuses
    (``paths.symlink``) if any existing component inside the worktree, the last one
    included, is a symlink: writing through one could land outside the worktree; and
    (``limits.path_length``) a path the host could not open, longer than PATH_MAX.
    """
    normal = normalize_path(relpath)
    path_max, room = host_path_room(worktree)
    if len(os.fsencode(normal)) > room:
        raise PolicyViolation("limits.path_length", f"a {len(os.fsencode(normal))}-byte path "
                              f"is longer than the host can open here ({room} bytes: "
                              f"PATH_MAX={path_max} less the worktree's own path)")
    _refuse_symlinked_parents(worktree, normal, include_leaf=True)
    return worktree / normal


__all__ = [
    "DEFAULT_LIMITS", "KNOWN_ADAPTERS", "POLICY_SCHEMA", "RESERVED_RULE_IDS",
    "CommandRule", "Decision", "Limits", "PathRule", "Policy", "ToolRule", "check_changes",
    "check_request", "compile_glob", "decide_argv", "decide_executable", "decide_path",
    "decide_tool", "default_policy_path", "load_policy", "needs_approval", "normalize_path",
    "safe_target", "step_env", "step_network", "tool_network",
]
