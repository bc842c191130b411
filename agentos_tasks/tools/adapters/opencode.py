"""OpenCode: `opencode run`, headless, hermetic, edits allowed only on the step's globs.

OpenCode (`opencode run --help`; https://opencode.ai/docs/permissions,
https://opencode.ai/docs/config; packages/opencode/src/cli/cmd/run.ts and flag.ts in
github.com/sst/opencode, read from the 1.18.33 binary):
  run --format json          JSONL: {type: step_start|text|reasoning|tool_use|step_finish|
                             error, timestamp, sessionID, part{...}|error{name,data{message}}}
  --pure                     no external plugins
  --dir DIR                  directory to run in = the worktree
  a permission "ask" in `run` prints "! permission requested: <perm> (<patterns>);
  auto-rejecting" (stderr) and the tool part ends with status "error", "The user rejected
  permission to use this specific tool call." -> claims_failure. Our rules never say ask.
  env OPENCODE_PERMISSION (JSON, merged last over every config), OPENCODE_CONFIG_CONTENT
  (autoupdate false, share disabled, snapshot false, formatter false, lsp false),
  OPENCODE_DISABLE_PROJECT_CONFIG=1 (no opencode.json / .opencode/ from the repository),
  OPENCODE_DISABLE_AUTOUPDATE, OPENCODE_DISABLE_SHARE, OPENCODE_DISABLE_LSP_DOWNLOAD,
  OPENCODE_DISABLE_CLAUDE_CODE, XDG_*_HOME/HOME=config_dir.
  --version                  prints "1.18.33"
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from agentos_tasks.tools.adapters.base import (
    RESULT_TEXT_LIMIT,
    Invocation,
    add_numbers,
    as_number,
    clipped,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from agentos_tasks.model import ToolSpec
    from agentos_tasks.policy.schema import Provider

EXECUTABLE = "opencode"
_REJECTED = ("rejected permission", "specified a rule which prevents")
_ASKED = re.compile(r"permission requested: (.*?); auto-rejecting")


def edit_patterns(globs: Sequence[str]) -> list[str]:
    """gitignore globs -> OpenCode wildcard patterns (`*` and `?` only; `*` crosses `/`).

    OpenCode matches the worktree-relative path. `**` becomes `*`; a glob without a slash
    matches at any depth in gitignore, so it also gets a `*/` form. Slightly wider than
    gitignore at worst: the executor's own diff check is the authority.
    """
    patterns: list[str] = []
    for glob in globs:
        pattern = re.sub(r"\*+", "*", glob.lstrip("/"))
        if pattern.endswith("/"):
            pattern += "*"
        candidates = [pattern]
        if "/" not in glob.strip("/"):
            candidates.append("*/" + pattern)
        elif not re.search(r"[*?]", pattern.rsplit("/", 1)[-1]):
            candidates.append(pattern + "/*")  # a directory name covers its contents
        for candidate in candidates:
            if candidate not in patterns:
                patterns.append(candidate)
    return patterns


def invocation(tool: ToolSpec, worktree: Path, config_dir: Path,
               globs: tuple[str, ...], allow_shell: bool, *,
               provider: Provider | None = None) -> Invocation:
    """`opencode run ... -- PROMPT` with a deny-by-default OPENCODE_PERMISSION."""
    # Last matching rule wins, so the catch-all deny comes first.
    edit_rules: dict[str, str] = {"*": "deny"}
    for pattern in edit_patterns(globs):
        edit_rules[pattern] = "allow"
    permission: dict[str, Any] = {
        "*": "deny",
        "read": {"*": "allow", "*.env": "deny", "*.env.*": "deny"},
        "glob": "allow", "grep": "allow", "list": "allow", "todowrite": "allow",
        "edit": edit_rules,
        "bash": "allow" if allow_shell else "deny",
        "webfetch": "deny", "websearch": "deny",
        "external_directory": "deny", "doom_loop": "deny", "question": "deny",
        "task": "deny", "skill": "deny", "lsp": "deny",
    }
    config = {"$schema": "https://opencode.ai/config.json", "autoupdate": False,
              "share": "disabled", "snapshot": False, "formatter": False, "lsp": False}
    argv = ["opencode", "run", "--format", "json", "--pure", "--dir", str(worktree)]
    if tool.model:
        argv += ["-m", tool.model]
    argv += ["--", tool.prompt]
    xdg = config_dir / "xdg"
    env = {
        "HOME": str(config_dir),
        "XDG_CONFIG_HOME": str(xdg / "config"),
        "XDG_DATA_HOME": str(xdg / "data"),
        "XDG_CACHE_HOME": str(xdg / "cache"),
        "XDG_STATE_HOME": str(xdg / "state"),
        "OPENCODE_CONFIG_CONTENT": json.dumps(config, sort_keys=True),
        "OPENCODE_PERMISSION": json.dumps(permission),
        "OPENCODE_DISABLE_PROJECT_CONFIG": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    }
    return Invocation(argv=tuple(argv), env=env, files={})


def read_claims(objects: list[dict[str, Any]], output: bytes) -> dict[str, Any]:
    """Steps, cost, tool calls, rejections and errors from the JSONL events; the
    permission requests from the merged text (they are printed, not JSON)."""
    claims: dict[str, Any] = {
        "session_id": None, "steps": 0, "cost": 0.0,
        "tokens": {"input": 0, "output": 0, "reasoning": 0},
        "tool_calls": [], "tool_errors": [], "permission_rejections": [],
        "permission_requests": [], "errors": [], "final_text": None,
    }
    for event in objects:
        kind = event.get("type")
        if not isinstance(kind, str):
            continue
        if isinstance(event.get("sessionID"), str) and claims["session_id"] is None:
            claims["session_id"] = clipped(event["sessionID"])
        raw_part = event.get("part")
        part: dict[str, Any] = raw_part if isinstance(raw_part, dict) else {}
        if kind == "step_finish":
            claims["steps"] += 1
            cost = as_number(part.get("cost"))
            if cost is not None:
                claims["cost"] += cost
            add_numbers(claims["tokens"], part.get("tokens"))
        elif kind == "text":
            claims["final_text"] = clipped(part.get("text", ""), RESULT_TEXT_LIMIT)
        elif kind == "tool_use":
            _tool(claims, part)
        elif kind == "error":
            error = event.get("error")
            message: Any = error
            if isinstance(error, dict):
                data = error.get("data")
                message = (data.get("message") if isinstance(data, dict) else None) \
                    or error.get("name") or error
            claims["errors"].append(clipped(message))
    text = output.decode("utf-8", "replace")
    claims["permission_requests"] = [clipped(m) for m in _ASKED.findall(text)]
    return claims


def _tool(claims: dict[str, Any], part: dict[str, Any]) -> None:
    raw_state = part.get("state")
    state: dict[str, Any] = raw_state if isinstance(raw_state, dict) else {}
    status = state.get("status")
    name = clipped(part.get("tool", ""))
    claims["tool_calls"].append({"tool": name, "status": clipped(status or ""),
                                 "title": clipped(state.get("title", ""))})
    if status == "error":
        error = clipped(state.get("error", ""))
        claims["tool_errors"].append({"tool": name, "error": error})
        if any(marker in error for marker in _REJECTED):
            claims["permission_rejections"].append({"tool": name, "error": error})


def failure(claims: Mapping[str, Any]) -> str | None:
    """A permission asked or refused, an error event, or no readable JSON."""
    if claims.get("permission_requests"):
        return (f"opencode asked for permission ({claims['permission_requests'][0]}); "
                "a headless run never asks, so the request was rejected")
    if claims.get("permission_rejections"):
        first = claims["permission_rejections"][0]
        return f"opencode was refused permission for {first.get('tool')}: {first.get('error')}"
    if claims.get("errors"):
        return f"opencode reported an error: {claims['errors'][-1]}"
    if not claims.get("json_objects"):
        return f"opencode printed no JSON events ({claims.get('parse_error', 'no output')})"
    if claims.get("parse_error"):
        return f"opencode output unreadable: {claims['parse_error']}"
    return None


__all__ = ["EXECUTABLE", "edit_patterns", "failure", "invocation", "read_claims"]
