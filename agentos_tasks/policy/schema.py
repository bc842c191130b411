"""The policy file: its voluptuous schema, the records it compiles to, and `load_policy`.

A version-1 policy (YAML or JSON) is validated against `POLICY_SCHEMA` (also the source of
the shipped JSON Schema), every mistake reported at file:line; then its globs are compiled
once (`paths.compile_glob`) and each rule gets its id: the user's own, or a stable generated
one such as ``paths.deny[0]``. A user-given id is unique and never one of
`RESERVED_RULE_IDS`, the built-in rules' ids, so every decision names one rule.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import voluptuous as vol

from agentos_tasks import yamlsrc
from agentos_tasks.model import ADAPTERS, OPS
from agentos_tasks.policy.paths import compile_glob

if TYPE_CHECKING:
    import re

WHAT = "policy"
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


# --------------------------------------------------------------------------- schema

def _strict_int(value: Any) -> Any:
    """YAML `true` is an int to Python; a limit or version must be a real number."""
    if isinstance(value, bool):
        raise vol.Invalid("expected an integer, got a boolean")
    return value


_RULE_ID = vol.All(str, vol.Match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                  msg="rule id must match [A-Za-z0-9][A-Za-z0-9_.-]*"))
_GLOB = vol.All(str, vol.Length(min=1, msg="a glob must not be empty"))
_PATH_RULE = vol.Any(_GLOB, {
    vol.Optional("id", description="Rule id named by every decision this rule makes "
                 "(default: a generated one such as paths.deny[0])."): _RULE_ID,
    vol.Required("glob", description="A .gitignore-style glob (e.g. 'src/**', "
                 "'/*.md', '**/.env')."): _GLOB})
_ARGV = vol.All([str], vol.Length(min=1, msg="argv must list at least one token"))


def _no_network(value: Any) -> Any:
    """`network: false`: nothing but the sandbox's own empty loopback."""
    if value is not False:
        raise vol.Invalid("not false")
    return value


def _unrestricted(value: Any) -> Any:
    if value != "unrestricted":
        raise vol.Invalid("not 'unrestricted'")
    return value


def _refuse_true(value: Any) -> Any:
    if value is True:
        raise vol.Invalid("network: true is not accepted (it meant the host's whole network); "
                          "write network: {allow: [\"host:port\", ...]} to name what may be "
                          "reached, or network: unrestricted for any public host (flagged "
                          "in the evidence)")
    return value


def _allow_entry(value: Any) -> Any:
    from agentos_tasks.net.allowlist import parse_entry

    try:
        parse_entry(value)
    except ValueError as exc:
        raise vol.Invalid(str(exc)) from None
    return value


def _address(value: Any) -> Any:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise vol.Invalid(f"{value!r} is not an IP address") from None


_ENV_NAME = vol.All(str, vol.Match(r"^[A-Za-z_][A-Za-z0-9_]*$",
                                   msg="not an environment variable name"))
_NETWORK_MAP = vol.Schema({
    vol.Required("allow", description="Hosts that may be reached: host, host:port, "
                 "*.suffix[:port], an IP literal, or '*'."): [vol.All(str, _allow_entry)],
    vol.Optional("resolve", default=dict, description="Pinned addresses, name -> IP (like "
                 "curl --resolve); each name must be one an allow entry names."):
        {vol.All(str, vol.Length(min=1)): vol.All(str, _address)},
})


def _network(value: Any) -> Any:
    """false | unrestricted | {allow: [...], resolve: {...}}; `true` refused with a hint."""
    _refuse_true(value)
    if value is False or value == "unrestricted":
        return value
    if isinstance(value, dict):
        return _NETWORK_MAP(value)
    raise vol.Invalid("expected false, unrestricted, or {allow: [host, host:port, "
                      "*.suffix, ...], resolve: {name: address}}")


_NETWORK = _network
_PROVIDER = {
    vol.Required("base_url", description="The gateway's http(s) URL; its host must be in "
                 "the tool's network.allow."):
        vol.All(str, vol.Match(r"^https?://[^\s/?#]+",
                               msg="base_url must be an http:// or https:// URL")),
    vol.Optional("api_key_env", description="The secret (one of the tool's secrets) "
                 "holding the API key; its value never reaches an argv or a file."): _ENV_NAME,
    vol.Optional("model", description="Model name sent to the provider."):
        vol.All(str, vol.Length(min=1)),
    vol.Optional("protocol", description="Wire protocol (default: the adapter's own: "
                 "claude anthropic, codex openai-responses, opencode openai-chat)."):
        vol.In(["anthropic", "openai-responses", "openai-chat"]),
}

_INT = vol.All(_strict_int, int, vol.Range(min=1, max=2**62))
_SECONDS = vol.All(_strict_int, vol.Any(int, float),
                 vol.Range(min=0, min_included=False, max=7 * 86400))  # a week; no inf

DEFAULT_LIMITS: dict[str, int | float] = {
    "step_seconds": 120, "max_file_bytes": 1_048_576, "max_changed_files": 200,
    "max_steps": 500, "output_bytes": 1_048_576, "memory_bytes": 4_294_967_296,
    "max_processes": 256, "max_open_files": 1024,
    # what a run/tool step may leave in its worktree, ignored files included (leftovers.py):
    # the longest worktree-relative path in bytes and in levels, and entries (files,
    # directories, links: inodes) and bytes beyond what the parent commit's own tree holds
    "path_length": 4096, "path_depth": 256, "files": 100_000, "bytes": 1_073_741_824,
}

LIMIT_DESCRIPTIONS: dict[str, str] = {
    "step_seconds": "Wall-clock seconds a run or tool step may take before it is killed.",
    "max_file_bytes": "Largest file a step may leave, in bytes.",
    "max_changed_files": "Most paths one step may change.",
    "max_steps": "Most steps a request may have.",
    "output_bytes": "Bytes of a step's stdout and stderr kept in its log.",
    "memory_bytes": "Memory a step's processes may use, in bytes.",
    "max_processes": "Processes a step may have at once.",
    "max_open_files": "Open files per process of a step.",
    "path_length": "Longest path, in bytes, a run or tool step may leave in its worktree "
                   "(ignored files included).",
    "path_depth": "Deepest path, in levels, a run or tool step may leave in its worktree.",
    "files": "Entries (files, directories, links) a run or tool step may add beyond the "
             "parent commit's tree.",
    "bytes": "Bytes a run or tool step may add beyond the parent commit's tree.",
}

_LIMITS = {
    vol.Optional(name, default=default, description=LIMIT_DESCRIPTIONS[name]):
        (_SECONDS if name == "step_seconds" else _INT)
    for name, default in DEFAULT_LIMITS.items()
}

_NETWORK_HELP = ("false (none), unrestricted (any public host, flagged in the evidence) or "
                 "{allow: [...], resolve: {...}} through the allowlist proxy")
_PATHS_HELP = "Paths matching these globs (.gitignore syntax) "

POLICY_SCHEMA = vol.Schema(
    {
        vol.Required("version", description="Format version; only 1."):
            vol.All(_strict_int, int, vol.In([1], msg="only version 1 is supported")),
        vol.Required("id", description="Policy id, recorded in the evidence."): _RULE_ID,
        vol.Optional("operations", default=list, description="Step kinds that may run at "
                     "all (default: none)."): [vol.In(list(OPS))],
        vol.Optional("paths", default=dict, description="Which paths steps may change; deny "
                     "beats ask beats allow, no allow match is denied."): {
            vol.Optional("allow", default=list,
                         description=_PATHS_HELP + "may be changed."): [_PATH_RULE],
            vol.Optional("deny", default=list,
                         description=_PATHS_HELP + "are refused (case-insensitive)."):
                [_PATH_RULE],
            vol.Optional("ask", default=list,
                         description=_PATHS_HELP + "need a human's approval: denied unless an "
                         "answers file (answers=FILE) approves the path for its step "
                         "(case-insensitive)."): [_PATH_RULE],
            vol.Optional("executable", default=list,
                         description=_PATHS_HELP + "may land executable (100755); default "
                         "nowhere."): [_PATH_RULE],
        },
        vol.Optional("commands", default=list, description="Argv prefixes run steps may "
                     "start with, compared token by token (no shell)."): [
            {vol.Optional("id", description="Rule id named by decisions (default: "
                          "commands[i])."): _RULE_ID,
             vol.Required("argv", description="The argv prefix."): _ARGV,
             vol.Optional("network", description="Network of these commands, only narrower "
                          "than the top-level one: " + _NETWORK_HELP + "."): _NETWORK}
        ],
        vol.Optional("tools", default=list, description="Coding-agent adapters tool steps "
                     "may use, one rule per adapter."): [
            {
                vol.Optional("id", description="Rule id named by decisions (default: "
                             "tools[i])."): _RULE_ID,
                vol.Required("adapter", description="The adapter this rule is for."):
                    vol.In(list(ADAPTERS)),
                vol.Optional("network", default=False, description="What the tool may "
                             "reach: " + _NETWORK_HELP + "."): _NETWORK,
                vol.Optional("review", default=False, description="The tool's patches need a "
                             "recorded reviewer approval (answers=FILE) before apply."):
                    bool,
                vol.Optional("argv", description="`command` adapter only: the argv prefix "
                             "its steps must start with."): _ARGV,
                vol.Optional("secrets", default=list, description="Host environment "
                             "variables only this tool gets; never recorded, never in env."):
                    [_ENV_NAME],
                vol.Optional("provider", description="The model endpoint (gateway) the "
                             "agent CLI talks to."): _PROVIDER,
            }
        ],
        vol.Optional("network", default=False, description="Network of run steps: "
                     + _NETWORK_HELP + "."): _NETWORK,
        vol.Optional("isolation", default="required", description="required: no working "
                     "OS sandbox fails closed; best-effort: run without one, recorded and "
                     "flagged."): vol.In(list(ISOLATION_LEVELS)),
        vol.Optional("limits", default=dict, description="Resource limits the executor and "
                     "sandbox enforce."): _LIMITS,
        vol.Optional("env", default=lambda: list(DEFAULT_ENV), description="Host environment "
                     "variables passed to steps; everything else is cleared."): [_ENV_NAME],
        vol.Optional("require_approval", default=list, description="Step kinds whose patch "
                     "needs a recorded reviewer approval (answers=FILE)."): [vol.In(list(OPS))],
    },
    extra=vol.PREVENT_EXTRA,
)
"""Voluptuous schema of a version-1 policy file (also the source of the shipped JSON Schema)."""


# --------------------------------------------------------------------------- records

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
class NetworkRule:
    """A `network:` grant: which hosts a step may reach through the allowlist proxy.

    `rule_id` names it in every ledger entry: "network" (run steps), "<tool rule>.network",
    "<command rule>.network". `unrestricted`: any public host (never loopback, private or
    metadata addresses), an explicit and flagged choice.
    """

    rule_id: str
    allow: tuple[str, ...] = ()
    resolve: tuple[tuple[str, str], ...] = ()  # (name, address) pins, like curl --resolve
    unrestricted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The grant as the evidence records it (and a gate compares)."""
        return {"rule_id": self.rule_id, "allow": list(self.allow),
                "resolve": {name: address for name, address in self.resolve},
                "unrestricted": self.unrestricted}


@dataclass(frozen=True)
class CommandRule:
    """`commands[i]`: an argv prefix that run steps may start with, and optionally a
    narrower network for them (`network_given`: the entry has its own `network:`)."""

    rule_id: str
    argv: tuple[str, ...]
    network: NetworkRule | None = None
    network_given: bool = False


@dataclass(frozen=True)
class Provider:
    """`tools[i].provider`: the model endpoint a coding-agent CLI talks to (a gateway).

    `protocol`: "anthropic" (Messages API), "openai-responses" or "openai-chat" (Chat
    Completions); None = the adapter's own default (claude: anthropic, codex:
    openai-responses, opencode: openai-chat). `api_key_env` names the secret (one of the
    rule's `secrets:`) that holds the key; its value never reaches an argv or a file.
    """

    base_url: str
    api_key_env: str | None = None
    model: str | None = None
    protocol: str | None = None


PROVIDER_PROTOCOLS = ("anthropic", "openai-responses", "openai-chat")


@dataclass(frozen=True)
class ToolRule:
    """`tools[i]`: an adapter that tool steps may use, and what it gets."""

    rule_id: str
    adapter: str
    network: NetworkRule | None = None
    review: bool = False
    argv: tuple[str, ...] | None = None  # `command` adapter only: required argv prefix
    secrets: tuple[str, ...] = ()  # host env vars only this tool gets; never recorded
    provider: Provider | None = None


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
    network: NetworkRule | None
    isolation: str
    limits: Limits
    env: tuple[str, ...]
    require_approval: tuple[str, ...]
    executable: tuple[PathRule, ...] = ()  # where a file may land executable (100755)
    # (step, path, ask rule id) an answers file approved for this run (answers.py); not
    # part of the policy file or its sha256, recorded on the tape as paths_approved
    approved_paths: frozenset[tuple[str, str, str]] = frozenset()

    def tool_rule(self, adapter: str) -> ToolRule | None:
        """The (single) tools rule for `adapter`, if the policy lists it."""
        return next((rule for rule in self.tools if rule.adapter == adapter), None)


# --------------------------------------------------------------------------- loading

def default_policy_path() -> Path:
    """The default policy, shipped inside the package (agentos_tasks/policies/; the
    checkout's `policies/` is a link to it)."""
    return Path(__file__).resolve().parents[1] / "policies" / "sandbox_policy.yaml"


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

    network = network_rule(data["network"], "network")
    _check_network(doc, ("network",), network)
    commands = tuple(_command_rule(doc, index, entry, network)
                     for index, entry in enumerate(data["commands"]))

    tools: list[ToolRule] = []
    for index, entry in enumerate(data["tools"]):
        where = ("tools", index)
        if any(rule.adapter == entry["adapter"] for rule in tools):
            raise doc.error(f"{WHAT}: tools: adapter {entry['adapter']!r} listed twice",
                            (*where, "adapter"), hint="one rule per adapter")
        if "argv" in entry and entry["adapter"] != "command":
            raise doc.error(f"{WHAT}: tools[{index}].argv is only for the 'command' adapter",
                            (*where, "argv"), hint="the other adapters build their own argv")
        tools.append(_tool_rule(doc, index, entry, set(data["env"])))

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
        network=network,
        isolation=data["isolation"],
        limits=Limits(**{name: data["limits"][name] for name in DEFAULT_LIMITS}),
        env=tuple(dict.fromkeys(data["env"])),
        require_approval=tuple(dict.fromkeys(data["require_approval"])),
        executable=path_rules["executable"],
    )


def network_rule(value: Any, rule_id: str) -> NetworkRule | None:
    """A validated `network:` value as a rule (None for false)."""
    if value is False or value is None:
        return None
    if value == "unrestricted":
        return NetworkRule(rule_id, unrestricted=True)
    return NetworkRule(rule_id, tuple(dict.fromkeys(value["allow"])),
                       tuple(sorted(value.get("resolve", {}).items())))


def _check_network(doc: yamlsrc.MarkedDoc, where: tuple[Any, ...], rule: NetworkRule | None,
                   provider: Provider | None = None) -> None:
    """The grant compiles as the proxy will compile it; every pin names a host an entry
    allows; a provider's host is reachable under the grant. Else an error at `where`."""
    from urllib.parse import urlsplit

    from agentos_tasks.net.allowlist import decide, make_allowlist, normalize_host

    if rule is None:
        if provider is not None:
            raise doc.error(f"{WHAT}: {_dotted(where[:-1])}.provider.base_url: the tool has "
                            "no network, so it could not reach its provider",
                            (*where[:-1], "provider", "base_url"),
                            hint="add network: {allow: [\"<host>:<port>\"]} naming the "
                                 "provider's host")
        return
    try:
        allowlist = make_allowlist(rule.allow, rule.resolve, rule.unrestricted, rule.rule_id)
    except ValueError as exc:
        raise doc.error(f"{WHAT}: {exc}", where, hint="allow entries are host, host:port, "
                        "*.suffix[:port] or IP literals; `network: unrestricted` for any "
                        "public host") from None
    for name in allowlist.resolve:
        if all(entry.matches(name, port) is None for entry in allowlist.entries
               for port in (entry.ports or (443,))) and not rule.unrestricted:
            raise doc.error(f"{WHAT}: {_dotted(where)}.resolve pins {name}, which no allow "
                            "entry names", (*where, "resolve"),
                            hint=f"add \"{name}:<port>\" to allow, or drop the pin")
    if provider is None:
        return
    url = urlsplit(provider.base_url)
    try:
        host = normalize_host(url.hostname or "")
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError as exc:
        raise doc.error(f"{WHAT}: provider.base_url: {exc}",
                        (*where[:-1], "provider", "base_url")) from None
    pinned = allowlist.resolve.get(host)
    verdict = decide(allowlist, host, port, [pinned] if pinned else ["192.0.2.1"])
    if not verdict.allowed and verdict.rule in ("net.host", "net.port"):
        raise doc.error(f"{WHAT}: provider.base_url {provider.base_url}: {host}:{port} is "
                        f"not in the tool's network allow list ({verdict.reason})",
                        (*where[:-1], "provider", "base_url"),
                        hint=f"add \"{host}:{port}\" to this tool's network.allow")


def _dotted(where: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in where)


def _command_rule(doc: yamlsrc.MarkedDoc, index: int, entry: dict[str, Any],
                  top: NetworkRule | None) -> CommandRule:
    """`commands[index]`; its own `network:` may only narrow the top-level one."""
    rule_id = entry.get("id") or f"commands[{index}]"
    if "network" not in entry:
        return CommandRule(rule_id, tuple(entry["argv"]))
    own = network_rule(entry["network"], f"{rule_id}.network")
    _check_network(doc, ("commands", index, "network"), own)
    if own is not None:
        wider: list[str] = []
        if top is None:
            wider.append("the top-level network is false")
        elif not top.unrestricted:
            if own.unrestricted:
                wider.append("unrestricted")
            wider += [e for e in own.allow if e not in top.allow]
            wider += [f"resolve {n}={a}" for n, a in own.resolve if (n, a) not in top.resolve]
        if wider:
            raise doc.error(f"{WHAT}: commands[{index}].network is wider than the top-level "
                            f"network: {', '.join(wider)}", ("commands", index, "network"),
                            hint="a commands entry may only narrow `network:`; list the host "
                                 "in the top-level network.allow too")
    return CommandRule(rule_id, tuple(entry["argv"]), own, True)


def _tool_rule(doc: yamlsrc.MarkedDoc, index: int, entry: dict[str, Any],
               env: set[str]) -> ToolRule:
    """`tools[index]` with its network, secrets and provider checked against each other."""
    rule_id = entry.get("id") or f"tools[{index}]"
    where: tuple[Any, ...] = ("tools", index)
    secrets = tuple(dict.fromkeys(entry["secrets"]))
    for position, name in enumerate(entry["secrets"]):
        if name in env:
            raise doc.error(f"{WHAT}: tools[{index}].secrets: {name} is also in env:, so every "
                            "step would get it", (*where, "secrets", position),
                            hint=f"remove {name} from env: (a secret goes to its tool only)")
    provider = None
    if "provider" in entry:
        raw = entry["provider"]
        key = raw.get("api_key_env")
        if key is not None and key not in secrets:
            raise doc.error(f"{WHAT}: tools[{index}].provider.api_key_env {key} is not one of "
                            "the tool's secrets", (*where, "provider", "api_key_env"),
                            hint=f"add secrets: [{key}] to this tools entry")
        provider = Provider(raw["base_url"].rstrip("/"), key, raw.get("model"),
                            raw.get("protocol"))
    network = network_rule(entry["network"], f"{rule_id}.network")
    _check_network(doc, (*where, "network"), network, provider)
    return ToolRule(rule_id, entry["adapter"], network, entry["review"],
                    tuple(entry["argv"]) if "argv" in entry else None, secrets, provider)


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


__all__ = [
    "DEFAULT_ENV", "DEFAULT_LIMITS", "ISOLATION_LEVELS", "POLICY_SCHEMA", "RESERVED_RULE_IDS",
    "CommandRule", "Limits", "PathRule", "Policy", "ToolRule", "default_policy_path",
    "load_policy",
]
