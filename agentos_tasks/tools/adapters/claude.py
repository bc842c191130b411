"""Claude Code: `claude -p`, headless, hermetic and confined to the step's globs.

Claude Code (`claude --help`; https://code.claude.com/docs/en/cli-reference,
https://code.claude.com/docs/en/settings, https://code.claude.com/docs/en/agent-sdk/permissions):
  -p/--print                 non-interactive; the workspace trust dialog is skipped
  --output-format json       one final object: type "result", subtype, is_error, result,
                             session_id, total_cost_usd, num_turns, duration_ms, usage,
                             permission_denials[{tool_name, tool_use_id, tool_input}]
                             (recorded from a real run: tests/fakes/samples/)
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
  --version                  prints "2.1.197 (Claude Code)"
  env CLAUDE_CONFIG_DIR, DISABLE_AUTOUPDATER, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC
  (https://code.claude.com/docs/en/settings#environment-variables)
  Not used: --add-dir, --dangerously-skip-permissions, --bare (would refuse OAuth tokens).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agentos_tasks.tools.adapters.base import (
    RESULT_TEXT_LIMIT,
    Invocation,
    as_number,
    clipped,
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
    argv = ["claude", "-p", "--output-format", "json",
            "--permission-mode", "dontAsk",
            "--tools", ",".join(tools),
            "--allowedTools", *allowed,
            "--disallowedTools", *denied,
            "--setting-sources", "user",
            "--settings", str(settings_path),
            "--strict-mcp-config",
            "--disable-slash-commands",
            "--no-session-persistence"]
    if tool.model:
        argv += ["--model", tool.model]
    argv += ["--", tool.prompt]
    env = {
        "CLAUDE_CONFIG_DIR": str(config_dir),
        "HOME": str(config_dir),
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    files = {CLAUDE_SETTINGS_FILE: json.dumps(settings, indent=2, sort_keys=True) + "\n"}
    return Invocation(argv=tuple(argv), env=env, files=files)


def read_claims(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The last `result` object, in a small stable shape."""
    results = [obj for obj in objects if obj.get("type") == "result"]
    if not results:
        return {"result_found": False}
    result = results[-1]
    denials = result.get("permission_denials")
    denials = denials if isinstance(denials, list) else []
    errors = result.get("errors")
    claims: dict[str, Any] = {
        "result_found": True,
        "subtype": clipped(result.get("subtype", "")),
        "is_error": result.get("is_error") is True,
        "is_error_raw": result.get("is_error"),
        "session_id": clipped(result.get("session_id", "")),
        "total_cost_usd": as_number(result.get("total_cost_usd")),
        "num_turns": as_number(result.get("num_turns")),
        "duration_ms": as_number(result.get("duration_ms")),
        "usage": result.get("usage") if isinstance(result.get("usage"), dict) else {},
        "permission_denials": [
            {"tool_name": clipped(d.get("tool_name", "")),
             "tool_use_id": clipped(d.get("tool_use_id", "")),
             "tool_input": clipped(d.get("tool_input", {}))}
            for d in denials if isinstance(d, dict)
        ],
        "errors": [clipped(e) for e in errors] if isinstance(errors, list) else [],
        "result": clipped(result.get("result", ""), RESULT_TEXT_LIMIT),
    }
    if "terminal_reason" in result:
        claims["terminal_reason"] = clipped(result["terminal_reason"])
    return claims


def failure(claims: Mapping[str, Any]) -> str | None:
    """No result, an error, a subtype other than success, or any permission denial."""
    if not claims.get("result_found"):
        detail = claims.get("parse_error") or "no JSON"
        return f"claude printed no result object ({detail})"
    if claims.get("is_error") or claims.get("is_error_raw") is not False:
        reason = claims.get("result") or "; ".join(claims.get("errors") or []) or "no detail"
        return (f"claude reported is_error (subtype {claims.get('subtype')!r}): "
                f"{clipped(reason, 200)}")
    if claims.get("subtype") != "success":
        return f"claude run ended with subtype {claims.get('subtype')!r}"
    denials = claims.get("permission_denials") or []
    if denials:
        names = sorted({str(d.get("tool_name")) for d in denials if isinstance(d, dict)})
        return (f"claude was denied {len(denials)} tool call(s) ({', '.join(names)}): "
                "a headless run never asks, so a denied permission fails the step")
    return None


__all__ = ["CLAUDE_DENIED_TOOLS", "CLAUDE_EDIT_TOOLS", "CLAUDE_SETTINGS_FILE", "EXECUTABLE",
           "failure", "invocation", "read_claims"]
