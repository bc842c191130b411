"""Codex: `codex exec`, headless, hermetic; our sandbox is the boundary, not codex's.

Checked against codex-cli 0.171.0 (npm @openai/codex, `codex exec --help`, `codex
features list`, `codex debug models --bundled`) run against the scripted model server,
and codex-rs in github.com/openai/codex (model-provider-info/src/lib.rs: the
`model_providers` keys; codex-api/src/sse/responses.rs: the Responses SSE it reads;
exec/src/exec_events.rs: the JSONL below).

  exec --json                JSONL: thread.started{thread_id}, turn.started,
                             item.started/updated/completed{item{id,type,...}},
                             turn.completed{usage{input_tokens,cached_input_tokens,
                             output_tokens,...}}, turn.failed{error{message}},
                             error{message} ("Reconnecting... N/M (...)" while retrying)
  --color never              no ANSI in the merged log
  --sandbox danger-full-access  codex's own sandbox off (TOOL_SANDBOX_NOTE)
  -C DIR                     working root = the worktree
  --skip-git-repo-check      the worktree's git dir may not be visible
  --ephemeral                no session files persisted
  --ignore-user-config       no $CODEX_HOME/config.toml; `--trust` is refused with it, so
                             the repository's .codex/config.toml (providers, MCP servers,
                             hooks, sandbox, approvals) stays "untrusted project-local
                             configuration" and is not loaded
  --ignore-rules             no user or project execpolicy .rules files
  -c approval_policy="never" nobody is asked; failures go back to the model
  -c web_search="disabled"   no web search tool
  -c analytics.enabled=false no metrics to ab.chatgpt.com:443 (without it, every run
                             tries that host: a denied connection in the network ledger)
  --disable FEATURE          hooks, plugins, apps, MCP skill installs, sub-agents, browser
                             and computer use, goals, ...: DISABLED_FEATURES; without a
                             shell also shell_tool and unified_exec
  -c model_provider=ID       with a `provider:` from the policy: a `model_providers.ID`
  -c model_providers.ID={name, base_url, env_key, wire_api="responses",
                             supports_websockets=false}  (the API key is read from the env
                             var `env_key` names: the policy secret's own name)
  -c model_catalog_json=PATH with a provider: a one-model catalog written into the config
                             dir (it replaces the bundled catalog), so the model has
                             metadata (no "Model metadata not found" warning item) and the
                             freeform `apply_patch` tool; `shell_type` "disabled" unless
                             the policy allows a shell
  -m MODEL                   tool.model, else provider.model
  env CODEX_HOME=config_dir (must exist; codex writes its state there), HOME=config_dir.

A failed edit is not in the JSONL when the patch does not verify (the model only gets
the error as the tool's output): codex logs it on stderr as
`<time> ERROR codex_core::tools::router: error=...`, which `read_claims` reads from the
merged output. A patch that verifies but cannot be written gives a `file_change` item
with status "failed".
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.tools.adapters.base import (
    RESULT_TEXT_LIMIT,
    Invocation,
    add_numbers,
    as_number,
    clipped,
    usage_summary,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from agentos_tasks.model import ToolSpec
    from agentos_tasks.policy.schema import Provider

EXECUTABLE = "codex"
PROVIDER_ID = "agentos"
CATALOG_FILE = "agentos_model_catalog.json"
PROTOCOL = "openai-responses"  # codex 0.171 speaks only the Responses API (wire_api)

# Worktree entries hidden inside the sandbox: the repository's codex config
# (.codex/config.toml, hooks.json, rules/, skills/) and its skills (.agents/skills).
# Codex already ignores untrusted project config; masking keeps it that way whatever a
# later version decides. AGENTS.md is only instructions to the model (it cannot grant a
# permission, provider, hook or server) and stays visible.
MASKED: tuple[str, ...] = (".codex", ".agents")

TOOL_SANDBOX_NOTE = (
    "codex's own sandbox is off (--sandbox danger-full-access, approval_policy=never): "
    "its bubblewrap cannot nest inside the agentos sandbox (no user namespaces there), "
    "and the agentos sandbox is the boundary: only the worktree is writable, the network "
    "is the step's allowlist proxy, and the diff is judged against the policy afterwards")

# Feature flags (`codex features list`, 0.171.0) that would reach beyond the worktree or
# load code or configuration we do not choose.
DISABLED_FEATURES: tuple[str, ...] = (
    "hooks", "plugins", "remote_plugin", "apps", "skill_mcp_dependency_install",
    "multi_agent", "goals", "browser_use", "browser_use_external", "computer_use",
    "image_generation", "tool_suggest", "daemon_auto_start", "unbounded_connection_retries",
    "shell_snapshot",
)
SHELL_FEATURES: tuple[str, ...] = ("shell_tool", "unified_exec")

BASE_INSTRUCTIONS = (
    "You are Codex, a coding agent working headless in a git worktree. Make the requested "
    "change by editing files with the apply_patch tool (paths relative to the working "
    "directory). Nobody can answer questions or approve anything: finish the task, or "
    "say plainly why you cannot.")

# `2026-12-02T04:52:38.552765Z ERROR codex_core::tools::router: error=...`
_TOOL_ERROR = re.compile(r"^\S*\s*ERROR codex_core::tools::[\w:]+: error=(.*)$")
# Notices of a retry, not failures: "Reconnecting... 2/5 (...)" error events and the
# "Falling back from WebSockets to HTTPS transport. ..." error item (OpenAI's provider).
_TRANSIENT = re.compile(r"^(Reconnecting\.\.\. \d+/\d+|Falling back from WebSockets to HTTPS)")


def invocation(tool: ToolSpec, worktree: Path, config_dir: Path, allow_shell: bool,
               network: bool, *, provider: Provider | None = None) -> Invocation:
    """`codex exec ... -- PROMPT`: no approvals, codex's sandbox off (ours is the
    boundary), and with a `provider` a `model_providers` entry plus a one-model catalog."""
    del network  # the sandbox grants the network or not; codex's own sandbox is off
    argv = ["codex", "exec", "--json", "--color", "never",
            "--sandbox", "danger-full-access",
            "--skip-git-repo-check", "--ephemeral",
            "--ignore-user-config", "--ignore-rules",
            "-C", str(worktree),
            "-c", 'approval_policy="never"',
            "-c", 'web_search="disabled"',
            "-c", "analytics.enabled=false"]
    features = [*DISABLED_FEATURES, *(() if allow_shell else SHELL_FEATURES)]
    for feature in features:
        argv += ["--disable", feature]
    files: dict[str, str] = {}
    model = tool.model
    if provider is not None:
        model = tool.model or provider.model
        if not model:
            raise AgentosError("a codex tool with a provider needs a model",
                               hint="set tools[].provider.model in the policy or the "
                                    "step's tool.model")
        argv += ["-c", f"model_provider={_toml(PROVIDER_ID)}",
                 "-c", f"model_providers.{PROVIDER_ID}={provider_table(provider)}",
                 "-c", f"model_catalog_json={_toml(str(config_dir / CATALOG_FILE))}"]
        files[CATALOG_FILE] = model_catalog(model, allow_shell)
    if model:
        argv += ["-m", model]
    argv += ["--", tool.prompt]
    env = {"CODEX_HOME": str(config_dir), "HOME": str(config_dir)}
    # codex reads the key from the variable `env_key` names: the secret's own name. Asked
    # for anyway, so a key the host does not set fails before anything runs.
    secret_env = {provider.api_key_env: provider.api_key_env} \
        if provider is not None and provider.api_key_env else {}
    return Invocation(argv=tuple(argv), env=env, files=files, secret_env=secret_env)


def _toml(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=True)


def provider_table(provider: Provider) -> str:
    """The inline TOML table of `model_providers.agentos` (no secret in it: `env_key`
    names the variable that holds the key)."""
    protocol = provider.protocol or PROTOCOL
    if protocol != PROTOCOL:
        raise AgentosError(f"codex cannot use a {protocol!r} provider",
                           hint=f"codex speaks only {PROTOCOL!r} (the Responses API): set "
                                "provider.protocol to it, or use another adapter")
    base_url = provider.base_url
    if not re.fullmatch(r"https?://[^\s\"\\]+", base_url or ""):
        raise AgentosError(f"provider base_url {base_url!r} is not an http(s) URL",
                           hint="codex posts to <base_url>/responses, e.g. "
                                "https://gateway.example.com/v1")
    fields = [f"name={_toml(PROVIDER_ID)}", f"base_url={_toml(base_url.rstrip('/'))}"]
    if provider.api_key_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", provider.api_key_env):
            raise AgentosError(f"provider api_key_env {provider.api_key_env!r} is not an "
                               "environment variable name")
        fields.append(f"env_key={_toml(provider.api_key_env)}")
    fields += ['wire_api="responses"', "supports_websockets=false"]
    return "{" + ", ".join(fields) + "}"


def model_catalog(model: str, allow_shell: bool) -> str:
    """A catalog (`model_catalog_json`) with the one model: the fields codex 0.171 requires
    plus the freeform apply_patch tool and a shell only when the policy allows one."""
    entry: dict[str, Any] = {
        "slug": model, "display_name": model, "base_instructions": BASE_INSTRUCTIONS,
        "apply_patch_tool_type": "freeform",
        "shell_type": "unified_exec" if allow_shell else "disabled",
        "experimental_supported_tools": [], "priority": 0, "support_verbosity": False,
        "supported_in_api": True, "supported_reasoning_levels": [],
        "truncation_policy": {"mode": "tokens", "limit": 10000}, "visibility": "list",
    }
    return json.dumps({"models": [entry]}, indent=1, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- claims

def read_claims(objects: list[dict[str, Any]], output: bytes = b"",
                model: str | None = None) -> dict[str, Any]:
    """Turns, usage, file changes, commands and errors from the JSONL events, plus the
    tool errors codex logs on stderr (`output`: the merged output the objects came from).
    Codex names no model in its events: `model` is the one it was asked to use (`-m`),
    recorded in `usage_summary` as asked, not as reported."""
    claims: dict[str, Any] = {
        "thread_id": None, "turns_started": 0, "turns_completed": 0, "turns_failed": [],
        "errors": [], "transient_errors": [],
        "usage": {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0},
        "file_changes": [], "failed_file_changes": [], "commands": [],
        "declined_commands": [], "user_input_requests": [], "item_errors": [],
        "failed_tool_calls": [], "tool_errors": tool_errors(output),
        "final_message": None, "last_event": None,
    }
    for event in objects:
        kind = event.get("type")
        if not isinstance(kind, str):
            continue
        claims["last_event"] = kind
        if kind == "thread.started":
            claims["thread_id"] = clipped(event.get("thread_id", ""))
        elif kind == "turn.started":
            claims["turns_started"] += 1
        elif kind == "turn.completed":
            claims["turns_completed"] += 1
            add_numbers(claims["usage"], event.get("usage"))
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            claims["turns_failed"].append(clipped(message or "turn failed"))
        elif kind == "error":
            message = clipped(event.get("message", ""))
            key = "transient_errors" if _TRANSIENT.match(message) else "errors"
            claims[key].append(message)
        elif kind == "request_user_input":
            claims["user_input_requests"].append(clipped(event.get("questions", [])))
        elif kind == "item.completed":
            _item(claims, event.get("item"))
    claims["usage_summary"] = _usage_summary(claims, model)
    return claims


def tool_errors(output: bytes) -> list[str]:
    """The first line of each `ERROR codex_core::tools::...: error=...` log line."""
    found = []
    for line in output.decode("utf-8", "replace").splitlines():
        match = _TOOL_ERROR.match(line.strip())
        if match:
            found.append(clipped(match.group(1)))
    return found


def _usage_summary(claims: Mapping[str, Any], model: str | None) -> dict[str, Any]:
    """The shared usage record; codex's input_tokens already include the cached ones (the
    Responses API counts them in), and it reports no cost."""
    usage = claims["usage"]
    return usage_summary(model=model, input_tokens=usage["input_tokens"],
                         output_tokens=usage["output_tokens"], cost_usd=None,
                         turns=claims["turns_completed"])


def _item(claims: dict[str, Any], item: Any) -> None:
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    status = clipped(item.get("status", ""))
    if kind == "file_change":
        changes = item.get("changes")
        for change in changes if isinstance(changes, list) else []:
            if isinstance(change, dict):
                change_entry = {"path": clipped(change.get("path", "")),
                                "kind": clipped(change.get("kind", "")), "status": status}
                claims["file_changes"].append(change_entry)
                if status == "failed":
                    claims["failed_file_changes"].append(change_entry)
        if status == "failed" and not isinstance(changes, list):
            claims["failed_file_changes"].append({"path": "", "kind": "", "status": status})
    elif kind == "command_execution":
        entry: dict[str, Any] = {"command": clipped(item.get("command", "")),
                                 "exit_code": as_number(item.get("exit_code")),
                                 "status": status}
        claims["commands"].append(entry)
        if status == "declined":
            claims["declined_commands"].append(entry["command"])
    elif kind == "mcp_tool_call" and status == "failed":
        error = item.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        claims["failed_tool_calls"].append(clipped(message or item.get("tool", "")))
    elif kind == "agent_message":
        claims["final_message"] = clipped(item.get("text", ""), RESULT_TEXT_LIMIT)
    elif kind == "error":
        message = clipped(item.get("message", ""))
        claims["transient_errors" if _TRANSIENT.match(message) else "item_errors"].append(
            message)


def failure(claims: Mapping[str, Any]) -> str | None:
    """Anything codex reports as gone wrong fails the step: a user-input request, a failed
    turn, a failed file change or tool call, a tool error it logged, an error item or
    event (retry notices excepted when a turn completed after them), a declined command,
    or no completed turn."""
    if claims.get("user_input_requests"):
        return "codex asked for user input, which a headless run cannot give"
    if claims.get("turns_failed"):
        return f"codex turn failed: {claims['turns_failed'][-1]}"
    checks = (("failed_file_changes", "file change(s) failed",
               lambda e: f"{e['kind']} {e['path']}".strip()),
              ("tool_errors", "tool error(s)", str), ("failed_tool_calls",
                                                      "tool call(s) failed", str),
              ("item_errors", "error item(s)", str), ("errors", "error event(s)", str),
              ("declined_commands", "command(s) declined", str))
    for key, what, show in checks:
        found = claims.get(key) or []
        if found:
            return f"codex reported {len(found)} {what}: {show(found[0])}"
    if not claims.get("turns_completed"):
        transient = claims.get("transient_errors") or []
        detail = transient[-1] if transient else claims.get("parse_error") or \
            "no turn.completed"
        return f"codex did not complete a turn: {detail}"
    return None


__all__ = ["CATALOG_FILE", "DISABLED_FEATURES", "EXECUTABLE", "MASKED", "TOOL_SANDBOX_NOTE",
           "failure", "invocation", "model_catalog", "provider_table", "read_claims",
           "tool_errors"]
