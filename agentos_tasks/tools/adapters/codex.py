"""Codex: `codex exec`, headless, hermetic, its own sandbox writing only in the worktree.

Codex (`codex exec --help`; codex-rs/exec/src/exec_events.rs and
event_processor_with_jsonl_output.rs in github.com/openai/codex; https://developers.openai.com/codex):
  exec --json                JSONL: thread.started{thread_id}, turn.started,
                             item.started/updated/completed{item{id,type,...}},
                             turn.completed{usage{input_tokens,cached_input_tokens,
                             output_tokens}}, turn.failed{error{message}}, error{message}
                             (also transient "Reconnecting..."), request_user_input
  --color never              no ANSI in the merged log
  --sandbox workspace-write  codex's own sandbox for its commands: writes only in -C DIR
  -C DIR                     working root = the worktree
  --skip-git-repo-check      do not refuse when the worktree's git dir is not visible
  --ephemeral                no session files persisted
  --ignore-user-config       do not load $CODEX_HOME/config.toml (auth still via env)
  --ignore-rules             no user or project execpolicy .rules files
  -c approval_policy="never" `exec` has no --ask-for-approval (top-level TUI flag only);
                             "never": failures go back to the model, nobody is asked
  -c sandbox_workspace_write.network_access=BOOL  shell commands' network (policy network
                             and allow_shell)
  -c web_search="disabled"   no web search tool
  --disable hooks|plugins    feature flags (`codex features list`): no repository hooks
  --disable shell_tool|unified_exec   no shell tools unless the policy allows a shell
  --version                  prints "codex-cli 0.169.0"
  env CODEX_HOME=config_dir (must exist; codex writes its state there), HOME=config_dir;
  API key via OPENAI_API_KEY / CODEX_API_KEY in the policy env allowlist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.tools.adapters.base import (
    RESULT_TEXT_LIMIT,
    Invocation,
    add_numbers,
    as_number,
    clipped,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from agentos_tasks.model import ToolSpec

EXECUTABLE = "codex"


def invocation(tool: ToolSpec, worktree: Path, config_dir: Path, allow_shell: bool,
               network: bool) -> Invocation:
    """`codex exec ... -- PROMPT`: codex's own workspace-write sandbox, no approvals."""
    shell_network = "true" if (network and allow_shell) else "false"
    argv = ["codex", "exec", "--json", "--color", "never",
            "--sandbox", "workspace-write",
            "--skip-git-repo-check", "--ephemeral",
            "--ignore-user-config", "--ignore-rules",
            "-C", str(worktree),
            "-c", 'approval_policy="never"',
            "-c", f"sandbox_workspace_write.network_access={shell_network}",
            "-c", 'web_search="disabled"',
            "--disable", "hooks", "--disable", "plugins"]
    if not allow_shell:
        argv += ["--disable", "shell_tool", "--disable", "unified_exec"]
    if tool.model:
        argv += ["-m", tool.model]
    argv += ["--", tool.prompt]
    env = {"CODEX_HOME": str(config_dir), "HOME": str(config_dir)}
    return Invocation(argv=tuple(argv), env=env, files={})


def read_claims(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Turns, usage, file changes, commands and errors from the JSONL events."""
    claims: dict[str, Any] = {
        "thread_id": None, "turns_started": 0, "turns_completed": 0, "turns_failed": [],
        "errors": [], "usage": {"input_tokens": 0, "cached_input_tokens": 0,
                                "output_tokens": 0},
        "file_changes": [], "commands": [], "declined_commands": [],
        "user_input_requests": [], "item_errors": [], "final_message": None,
        "last_event": None,
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
            claims["errors"].append(clipped(event.get("message", "")))
        elif kind == "request_user_input":
            claims["user_input_requests"].append(clipped(event.get("questions", [])))
        elif kind == "item.completed":
            _item(claims, event.get("item"))
    return claims


def _item(claims: dict[str, Any], item: Any) -> None:
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind == "file_change":
        changes = item.get("changes")
        for change in changes if isinstance(changes, list) else []:
            if isinstance(change, dict):
                claims["file_changes"].append({"path": clipped(change.get("path", "")),
                                               "kind": clipped(change.get("kind", "")),
                                               "status": clipped(item.get("status", ""))})
    elif kind == "command_execution":
        entry = {"command": clipped(item.get("command", "")),
                 "exit_code": as_number(item.get("exit_code")),
                 "status": clipped(item.get("status", ""))}
        claims["commands"].append(entry)
        if item.get("status") == "declined":
            claims["declined_commands"].append(entry["command"])
    elif kind == "agent_message":
        claims["final_message"] = clipped(item.get("text", ""), RESULT_TEXT_LIMIT)
    elif kind == "error":
        claims["item_errors"].append(clipped(item.get("message", "")))


def failure(claims: Mapping[str, Any]) -> str | None:
    """A user-input request, a failed turn, a declined command, or no completed turn."""
    if claims.get("user_input_requests"):
        return "codex asked for user input, which a headless run cannot give"
    if claims.get("turns_failed"):
        return f"codex turn failed: {claims['turns_failed'][-1]}"
    if claims.get("declined_commands"):
        return (f"codex had {len(claims['declined_commands'])} command(s) declined: "
                f"{claims['declined_commands'][0]}")
    if not claims.get("turns_completed"):
        errors = claims.get("errors") or []
        detail = errors[-1] if errors else claims.get("parse_error") or "no turn.completed"
        return f"codex did not complete a turn: {detail}"
    if claims.get("last_event") == "error":
        return f"codex ended with an error: {(claims.get('errors') or ['?'])[-1]}"
    return None


__all__ = ["EXECUTABLE", "failure", "invocation", "read_claims"]
