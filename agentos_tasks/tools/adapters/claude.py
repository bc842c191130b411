"""Claude Code: `claude -p`, headless, hermetic and confined to the step's globs.

Claude Code (`claude --help`; https://code.claude.com/docs/en/cli-reference,
https://code.claude.com/docs/en/settings, https://code.claude.com/docs/en/agent-sdk/permissions,
https://code.claude.com/docs/en/llm-gateway), checked against 2.1.332:
  -p/--print                 non-interactive; the workspace trust dialog is skipped
  --output-format stream-json --verbose
                             JSONL: system/init {model, tools, apiKeySource, permissionMode},
                             assistant {message.content[text|tool_use{id, name, input}]},
                             user {message.content[tool_result{tool_use_id, is_error,
                             content}]}, system/permission_denied, and last a "result"
                             {subtype, is_error, result, session_id, total_cost_usd, num_turns,
                             usage, modelUsage, permission_denials[{tool_name, tool_use_id,
                             tool_input}], terminal_reason, api_error_status}. The plain
                             `json` format prints only that result: a failed Edit (tool_result
                             is_error) would be invisible. stream-json requires --verbose
                             ("When using --print, --output-format=stream-json requires
                             --verbose"). Recorded from real runs: tests/fakes/samples/.
  --permission-mode dontAsk  "a matching ask rule is denied instead, because that mode never
                             prompts"; anything not pre-approved is denied and listed in
                             permission_denials (acceptEdits would still prompt for Bash)
  --tools A,B                the built-in tool set: Read,Edit,Write,Glob,Grep (+Bash)
  --allowedTools R...        pre-approved rules: Read, Glob, Grep, Edit(<glob>) per allowed
                             path (Edit rules cover every file-editing tool; gitignore
                             globs relative to the cwd = worktree), Bash when allowed
  --disallowedTools R...     Bash, WebFetch, WebSearch, Task... (bare-name deny removes the tool)
  --setting-sources user     no project/local settings (.claude/settings*.json: hooks,
                             permissions); "user" is CLAUDE_CONFIG_DIR=config_dir, empty
  --settings FILE            our settings: disableAllHooks, defaultMode dontAsk,
                             disableBypassPermissionsMode, enableAllProjectMcpServers false
  --strict-mcp-config        no MCP servers except --mcp-config (none): .mcp.json ignored
  --disable-slash-commands   no skills/commands from the repository
  --no-session-persistence   nothing saved for --resume
  --model M                  the step's model, else the provider's
  --version                  prints "2.1.332 (Claude Code)"
  env CLAUDE_CONFIG_DIR, DISABLE_AUTOUPDATER, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC (no
  side requests at all: a run sends only its agent turns to POST /v1/messages?beta=true)
  (https://code.claude.com/docs/en/settings#environment-variables)
  provider (anthropic Messages only): env ANTHROPIC_BASE_URL = provider.base_url (the root:
  the SDK appends /v1/messages), secret ANTHROPIC_API_KEY <- provider.api_key_env (sent as
  x-api-key; init reports apiKeySource "ANTHROPIC_API_KEY"). Claude honours HTTP(S)_PROXY
  and NO_PROXY for the base URL, loopback included (no built-in bypass). A 400 from the API
  is re-sent (6 requests in all, with fewer betas), then the result is is_error with
  api_error_status; 5xx/429 are retried with back-off (CLAUDE_CODE_MAX_RETRIES).
  MASKED: .claude (settings, hooks, agents, commands, skills) and .mcp.json are hidden in
  the sandbox; CLAUDE.md is content and stays.
  Not used: --add-dir, --dangerously-skip-permissions, --bare (would refuse OAuth tokens).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.tools.adapters.base import (
    RESULT_TEXT_LIMIT,
    Invocation,
    as_number,
    clipped,
    usage_summary,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from agentos_tasks.model import ToolSpec
    from agentos_tasks.policy.schema import Provider

EXECUTABLE = "claude"
CLAUDE_SETTINGS_FILE = "agentos-claude-settings.json"
# Claude Code built-in tools a file-editing step gets; Bash only when the policy allows.
CLAUDE_EDIT_TOOLS: tuple[str, ...] = ("Read", "Edit", "Write", "Glob", "Grep")
CLAUDE_DENIED_TOOLS: tuple[str, ...] = ("WebFetch", "WebSearch", "Task", "NotebookEdit")
# The tools whose failure means the change the model meant to make was not made.
FILE_TOOLS: frozenset[str] = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit"})
# Repository entries Claude Code would load as configuration (hidden in the sandbox).
MASKED: tuple[str, ...] = (".claude", ".mcp.json")
API_KEY_VARIABLE = "ANTHROPIC_API_KEY"


def invocation(tool: ToolSpec, config_dir: Path, globs: tuple[str, ...],
               allow_shell: bool, *,
               provider: Provider | None = None) -> Invocation:
    """`claude -p ... -- PROMPT` with our settings file; edits only on `globs`."""
    tools = list(CLAUDE_EDIT_TOOLS) + (["Bash"] if allow_shell else [])
    allowed = ["Read", "Glob", "Grep"] + [f"Edit({glob})" for glob in globs]
    denied = list(CLAUDE_DENIED_TOOLS)
    if allow_shell:
        allowed.append("Bash")
    else:
        denied.insert(0, "Bash")
    settings = {
        "disableAllHooks": True,
        "enableAllProjectMcpServers": False,
        "permissions": {"defaultMode": "dontAsk", "disableBypassPermissionsMode": "disable"},
    }
    settings_path = config_dir / CLAUDE_SETTINGS_FILE
    argv = ["claude", "-p", "--output-format", "stream-json", "--verbose",
            "--permission-mode", "dontAsk",
            "--tools", ",".join(tools),
            "--allowedTools", *allowed,
            "--disallowedTools", *denied,
            "--setting-sources", "user",
            "--settings", str(settings_path),
            "--strict-mcp-config",
            "--disable-slash-commands",
            "--no-session-persistence"]
    model = tool.model or (provider.model if provider is not None else None)
    if model:
        argv += ["--model", model]
    argv += ["--", tool.prompt]
    env = {
        "CLAUDE_CONFIG_DIR": str(config_dir),
        "HOME": str(config_dir),
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    secret_env: dict[str, str] = {}
    if provider is not None:
        _check_provider(provider)
        env["ANTHROPIC_BASE_URL"] = provider.base_url.rstrip("/")
        if provider.api_key_env:
            secret_env[API_KEY_VARIABLE] = provider.api_key_env
    files = {CLAUDE_SETTINGS_FILE: json.dumps(settings, indent=2, sort_keys=True) + "\n"}
    return Invocation(argv=tuple(argv), env=env, files=files, secret_env=secret_env)


def _check_provider(provider: Provider) -> None:
    if provider.protocol not in (None, "anthropic"):
        raise AgentosError(
            f"the claude adapter speaks only the Anthropic Messages API, but the policy's "
            f"provider for it says protocol {provider.protocol!r}",
            hint="set the provider's protocol to 'anthropic' (or leave it out), or put an "
                 "Anthropic-compatible gateway in front of that endpoint")
    if not provider.base_url.startswith(("http://", "https://")):
        raise AgentosError(f"claude provider base_url {provider.base_url!r} is not an "
                           "http(s) URL", hint="write it like https://gateway.example:8443")


def read_claims(objects: list[dict[str, Any]], *, model: str | None = None) -> dict[str, Any]:
    """The last `result` object, the tool calls and failed tool results of the stream, in a
    small stable shape. `model` is the one asked for, used when the stream names none."""
    stream = _stream(objects)
    results = [obj for obj in objects if obj.get("type") == "result"]
    if not results:
        claims: dict[str, Any] = {"result_found": False, **stream}
        claims["usage_summary"] = usage_summary(
            model=stream["model"] or model, input_tokens=0, output_tokens=0)
        return claims
    result = results[-1]
    denials = result.get("permission_denials")
    denials = denials if isinstance(denials, list) else []
    errors = result.get("errors")
    raw_usage = result.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    claims = {
        "result_found": True,
        "subtype": clipped(result.get("subtype", "")),
        "is_error": result.get("is_error") is True,
        "is_error_raw": result.get("is_error"),
        "session_id": clipped(result.get("session_id", "")),
        "total_cost_usd": as_number(result.get("total_cost_usd")),
        "num_turns": as_number(result.get("num_turns")),
        "duration_ms": as_number(result.get("duration_ms")),
        "api_error_status": as_number(result.get("api_error_status")),
        "usage": usage,
        "permission_denials": [
            {"tool_name": clipped(d.get("tool_name", "")),
             "tool_use_id": clipped(d.get("tool_use_id", "")),
             "tool_input": clipped(d.get("tool_input", {}))}
            for d in denials if isinstance(d, dict)
        ],
        "errors": [clipped(e) for e in errors] if isinstance(errors, list) else [],
        "result": clipped(result.get("result", ""), RESULT_TEXT_LIMIT),
        **stream,
    }
    if "terminal_reason" in result:
        claims["terminal_reason"] = clipped(result["terminal_reason"])
    claims["usage_summary"] = usage_summary(
        model=stream["model"] or _model_from_usage(result) or model,
        input_tokens=sum((as_number(usage.get(key)) or 0) for key in (
            "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")),
        output_tokens=usage.get("output_tokens"),
        cost_usd=result.get("total_cost_usd"), turns=result.get("num_turns"))
    return claims


def _model_from_usage(result: Mapping[str, Any]) -> str | None:
    models = result.get("modelUsage")
    if isinstance(models, dict) and len(models) == 1:
        name = next(iter(models))
        return name if isinstance(name, str) else None
    return None


def _stream(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """From the stream-json events: the model (init), each tool call, and each tool result
    that came back as an error (a failed edit, a denied call)."""
    model: str | None = None
    calls: dict[str, str] = {}
    tool_calls: list[dict[str, str]] = []
    tool_errors: list[dict[str, str]] = []
    for event in objects:
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            if isinstance(event.get("model"), str):
                model = event["model"]
            continue
        message = event.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if kind not in ("assistant", "user") or not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                name = clipped(block.get("name", ""))
                calls[str(block.get("id", ""))] = name
                tool_calls.append({"tool": name, "id": clipped(block.get("id", ""))})
            elif block.get("type") == "tool_result" and block.get("is_error") is True:
                tool = calls.get(str(block.get("tool_use_id", "")), "?")
                tool_errors.append({"tool": tool, "error": clipped(_text(block.get("content")))})
    failed = [e for e in tool_errors if e["tool"] in FILE_TOOLS]
    return {"model": clipped(model) if model else None, "tool_calls": tool_calls,
            "tool_errors": tool_errors, "failed_file_tools": failed}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else json.dumps(content, default=str)


def failure(claims: Mapping[str, Any]) -> str | None:
    """No result, an error, a subtype other than success, any permission denial, or a
    file-editing tool call that failed (the change the model meant is not there)."""
    if not claims.get("result_found"):
        detail = claims.get("parse_error") or "no JSON"
        return f"claude printed no result object ({detail})"
    if claims.get("is_error") or claims.get("is_error_raw") is not False:
        reason = claims.get("result") or "; ".join(claims.get("errors") or []) or "no detail"
        status = claims.get("api_error_status")
        api = f", API status {status}" if status is not None else ""
        return (f"claude reported is_error (subtype {claims.get('subtype')!r}{api}): "
                f"{clipped(reason, 200)}")
    if claims.get("subtype") != "success":
        return f"claude run ended with subtype {claims.get('subtype')!r}"
    denials = claims.get("permission_denials") or []
    if denials:
        names = sorted({str(d.get("tool_name")) for d in denials if isinstance(d, dict)})
        return (f"claude was denied {len(denials)} tool call(s) ({', '.join(names)}): "
                "a headless run never asks, so a denied permission fails the step")
    failed = claims.get("failed_file_tools") or []
    if failed:
        first = failed[0]
        return (f"claude had {len(failed)} file edit(s) fail: {first.get('tool')}: "
                f"{clipped(first.get('error', ''), 200)}")
    return None


__all__ = ["API_KEY_VARIABLE", "CLAUDE_DENIED_TOOLS", "CLAUDE_EDIT_TOOLS",
           "CLAUDE_SETTINGS_FILE", "EXECUTABLE", "FILE_TOOLS", "MASKED", "failure",
           "invocation", "read_claims"]
