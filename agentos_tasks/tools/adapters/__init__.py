"""Build the command line for a coding-agent CLI and read back what it claims.

Pure: nothing here starts a process. The executor runs `Invocation.argv` through
`proc.run_confined` inside the sandboxed worktree, with `Invocation.env` laid over the
policy's allowlisted environment and `Invocation.files` written into a private per-step
config directory (`config_dir`, created by the executor, bound read-write into the
sandbox at the same path). Each CLI is made headless and hermetic:

- it never waits for a human: every approval that would have been asked becomes a
  denial, and a denial is a step failure (`claims_failure`), never a hang;
- it loads no configuration, hooks, plugins, MCP servers or rules from the repository
  or from the user's home: its home/config dir is `config_dir`;
- it may edit only the step's allowed paths, and runs no shell unless the policy allows.

What a tool says about itself (`parse_claims`) is recorded, never trusted: the executor
computes the diff itself and judges it against the policy.

Sources for every flag and setting (checked against the installed CLIs'
`--help` of claude 2.1.197, codex-cli 0.169.0, opencode 1.18.33 — npm
@anthropic-ai/claude-code, @openai/codex, opencode-ai — and their docs/source):

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

`command` adapter: runs `tool.argv` as given; the prompt is in env AGENTOS_PROMPT, the
task pack path in AGENTOS_TASK_PACK, the allowed globs (one per line) in
AGENTOS_ALLOWED_PATHS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import ToolSpec

ADAPTERS: tuple[str, ...] = ("claude", "codex", "opencode", "command")

# The executable each real adapter runs (looked up on PATH by the executor).
EXECUTABLES: dict[str, str] = {"claude": "claude", "codex": "codex", "opencode": "opencode"}

CLAUDE_SETTINGS_FILE = "agentos-claude-settings.json"
# Claude Code built-in tools a file-editing step gets; Bash only when the policy allows.
CLAUDE_EDIT_TOOLS: tuple[str, ...] = ("Read", "Edit", "Write", "Glob", "Grep")
CLAUDE_DENIED_TOOLS: tuple[str, ...] = ("WebFetch", "WebSearch", "Task", "NotebookEdit")

# Characters that cannot appear inside a Claude permission rule `Edit(<glob>)` (the rule
# list is split on commas and parentheses) or safely in any pattern list.
_UNSAFE_GLOB_CHARS = re.compile(r"[(),\x00-\x1f]")
_RESULT_TEXT_LIMIT = 2000
_MESSAGE_LIMIT = 500


@dataclass(frozen=True)
class Invocation:
    """What the executor runs for a tool step.

    argv: the program and its arguments (argv[0] is looked up on PATH by the executor).
    env: variables laid over the policy's allowlisted environment (config dirs, hermetic
         settings); they win over the allowlist.
    files: config files to write into the step's private config dir before the run
           (relative posix name -> text).
    """

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def build_invocation(
    tool: ToolSpec,
    *,
    worktree: Path,
    config_dir: Path,
    allowed_paths: Sequence[str],
    allow_shell: bool,
    network: bool,
    task_pack_path: Path | None = None,
) -> Invocation:
    """The argv/env/files that run `tool` headless, hermetic and confined to `allowed_paths`.

    `allowed_paths` are the gitignore globs the tool may change (the step's `paths`
    intersected with the policy by the caller); `allow_shell` and `network` come from the
    policy's `tools:` entry for this adapter.
    """
    adapter = tool.adapter
    if adapter not in ADAPTERS:
        raise AgentosError(f"unknown tool adapter {adapter!r}",
                           hint=f"use one of: {', '.join(ADAPTERS)}")
    globs = _checked_globs(allowed_paths)
    if adapter == "command":
        return _command_invocation(tool, globs, task_pack_path)
    if not tool.prompt.strip():
        raise AgentosError(f"tool step for {adapter} has an empty prompt",
                           hint="give the tool a prompt: tool: {adapter: ..., prompt: ...}")
    if adapter == "claude":
        return _claude_invocation(tool, config_dir, globs, allow_shell)
    if adapter == "codex":
        return _codex_invocation(tool, worktree, config_dir, allow_shell, network)
    # OpenCode's web tools stay denied either way; the CLI itself needs the network for
    # its API, which the sandbox grants or not.
    return _opencode_invocation(tool, worktree, config_dir, globs, allow_shell)


def _checked_globs(allowed_paths: Sequence[str]) -> tuple[str, ...]:
    """Globs usable in every CLI's rule syntax; anything else is refused, not mangled."""
    if isinstance(allowed_paths, str):
        raise AgentosError("allowed paths must be a list of globs, not a string")
    globs: list[str] = []
    for glob in allowed_paths:
        if not isinstance(glob, str) or not glob.strip():
            raise AgentosError(f"invalid allowed path {glob!r}: must be a non-empty glob")
        if _UNSAFE_GLOB_CHARS.search(glob):
            raise AgentosError(f"allowed path {glob!r} contains '(', ')', ',' or a control "
                               "character, which coding-agent permission rules cannot express",
                               hint="rename the path or use a wider glob such as 'dir/**'")
        if glob.startswith("/") or glob.startswith("~") or ".." in glob.split("/"):
            raise AgentosError(f"allowed path {glob!r} must be relative to the worktree",
                               hint="write globs like 'src/**'")
        globs.append(glob)
    return tuple(globs)


def _command_invocation(tool: ToolSpec, globs: tuple[str, ...],
                        task_pack_path: Path | None) -> Invocation:
    if not tool.argv:
        raise AgentosError("tool adapter 'command' needs argv",
                           hint="tool: {adapter: command, argv: [prog, arg, ...], prompt: ...}")
    env = {"AGENTOS_PROMPT": tool.prompt, "AGENTOS_ALLOWED_PATHS": "\n".join(globs)}
    if task_pack_path is not None:
        env["AGENTOS_TASK_PACK"] = str(task_pack_path)
    return Invocation(argv=tuple(tool.argv), env=env, files={})


def _claude_invocation(tool: ToolSpec, config_dir: Path, globs: tuple[str, ...],
                       allow_shell: bool) -> Invocation:
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


def _codex_invocation(tool: ToolSpec, worktree: Path, config_dir: Path, allow_shell: bool,
                      network: bool) -> Invocation:
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


def opencode_edit_patterns(globs: Sequence[str]) -> list[str]:
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


def _opencode_invocation(tool: ToolSpec, worktree: Path, config_dir: Path,
                         globs: tuple[str, ...], allow_shell: bool) -> Invocation:
    # Last matching rule wins, so the catch-all deny comes first.
    edit_rules: dict[str, str] = {"*": "deny"}
    for pattern in opencode_edit_patterns(globs):
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


def executable_for(tool: ToolSpec) -> str:
    """The program the executor must find on PATH for this tool."""
    if tool.adapter == "command":
        if not tool.argv:
            raise AgentosError("tool adapter 'command' needs argv")
        return tool.argv[0]
    if tool.adapter not in EXECUTABLES:
        raise AgentosError(f"unknown tool adapter {tool.adapter!r}",
                           hint=f"use one of: {', '.join(ADAPTERS)}")
    return EXECUTABLES[tool.adapter]


def version_argv(adapter: str, executable: str) -> list[str]:
    """How to ask a CLI its version (recorded in the result pack as tool.version)."""
    if adapter not in ADAPTERS:
        raise AgentosError(f"unknown tool adapter {adapter!r}",
                           hint=f"use one of: {', '.join(ADAPTERS)}")
    return [executable, "--version"]


def parse_version(output: bytes) -> str:
    """First non-empty line of `--version` output ("2.1.197 (Claude Code)", "codex-cli
    0.169.0", "1.18.33"), or "unknown"; never raises."""
    for line in output.decode("utf-8", "replace").splitlines():
        if line.strip() and not line.startswith("WARNING:"):
            return line.strip()[:200]
    return "unknown"


# --------------------------------------------------------------------------- claims


def _json_objects(output: bytes) -> tuple[list[dict[str, Any]], int, str | None]:
    """JSON objects, one per line, from merged stdout+stderr that may be cut anywhere.

    Returns (objects, count of non-JSON lines, first parse problem or None). A line that
    starts like JSON but does not parse (a truncated last line) is a parse problem.
    """
    text = output.decode("utf-8", "replace")
    objects: list[dict[str, Any]] = []
    other = 0
    problem: str | None = None
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("{"):
            other += 1
            continue
        try:
            value = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            where = "last line (output cut?)" if number == len(lines) else f"line {number}"
            problem = problem or f"{where}: invalid JSON: {str(exc)[:120]}"
            continue
        if isinstance(value, dict):
            objects.append(value)
        else:
            other += 1
    if not objects and problem is None:
        # Pretty-printed JSON spanning lines: one object from the first brace.
        start = text.find("{")
        if start >= 0:
            try:
                value, _ = json.JSONDecoder().raw_decode(text[start:])
            except (ValueError, RecursionError) as exc:
                problem = f"invalid JSON: {str(exc)[:120]}"
            else:
                if isinstance(value, dict):
                    objects.append(value)
    return objects, other, problem


def _text(value: Any, limit: int = _MESSAGE_LIMIT) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _add_numbers(totals: dict[str, Any], reported: Any) -> None:
    """Add each numeric field a tool reported to the running total of the same name."""
    if isinstance(reported, dict):
        for key in totals:
            value = _number(reported.get(key))
            if value is not None:
                totals[key] += value


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def parse_claims(adapter: str, stdout: bytes) -> dict[str, Any]:
    """What the tool says about its run, in a small stable shape; never raises on garbage.

    `stdout` is the captured (merged, possibly truncated) output. Any problem reading it
    is reported as `parse_error` next to whatever did parse.
    """
    if adapter not in ADAPTERS:
        raise AgentosError(f"unknown tool adapter {adapter!r}",
                           hint=f"use one of: {', '.join(ADAPTERS)}")
    if adapter == "command":
        return {"adapter": "command", "output_bytes": len(stdout)}
    objects, other, problem = _json_objects(stdout)
    if adapter == "claude":
        claims = _claude_claims(objects)
    elif adapter == "codex":
        claims = _codex_claims(objects)
    else:
        claims = _opencode_claims(objects, stdout)
    claims["adapter"] = adapter
    claims["json_objects"] = len(objects)
    claims["other_lines"] = other
    if problem is not None:
        claims["parse_error"] = problem
    elif not objects:
        claims["parse_error"] = "no JSON output found"
    return claims


def _claude_claims(objects: list[dict[str, Any]]) -> dict[str, Any]:
    results = [obj for obj in objects if obj.get("type") == "result"]
    if not results:
        return {"result_found": False}
    result = results[-1]
    denials = result.get("permission_denials")
    denials = denials if isinstance(denials, list) else []
    errors = result.get("errors")
    claims: dict[str, Any] = {
        "result_found": True,
        "subtype": _text(result.get("subtype", "")),
        "is_error": result.get("is_error") is True,
        "is_error_raw": result.get("is_error"),
        "session_id": _text(result.get("session_id", "")),
        "total_cost_usd": _number(result.get("total_cost_usd")),
        "num_turns": _number(result.get("num_turns")),
        "duration_ms": _number(result.get("duration_ms")),
        "usage": result.get("usage") if isinstance(result.get("usage"), dict) else {},
        "permission_denials": [
            {"tool_name": _text(d.get("tool_name", "")),
             "tool_use_id": _text(d.get("tool_use_id", "")),
             "tool_input": _text(d.get("tool_input", {}))}
            for d in denials if isinstance(d, dict)
        ],
        "errors": [_text(e) for e in errors] if isinstance(errors, list) else [],
        "result": _text(result.get("result", ""), _RESULT_TEXT_LIMIT),
    }
    if "terminal_reason" in result:
        claims["terminal_reason"] = _text(result["terminal_reason"])
    return claims


def _codex_claims(objects: list[dict[str, Any]]) -> dict[str, Any]:
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
            claims["thread_id"] = _text(event.get("thread_id", ""))
        elif kind == "turn.started":
            claims["turns_started"] += 1
        elif kind == "turn.completed":
            claims["turns_completed"] += 1
            _add_numbers(claims["usage"], event.get("usage"))
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            claims["turns_failed"].append(_text(message or "turn failed"))
        elif kind == "error":
            claims["errors"].append(_text(event.get("message", "")))
        elif kind == "request_user_input":
            claims["user_input_requests"].append(_text(event.get("questions", [])))
        elif kind == "item.completed":
            _codex_item(claims, event.get("item"))
    return claims


def _codex_item(claims: dict[str, Any], item: Any) -> None:
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind == "file_change":
        changes = item.get("changes")
        for change in changes if isinstance(changes, list) else []:
            if isinstance(change, dict):
                claims["file_changes"].append({"path": _text(change.get("path", "")),
                                               "kind": _text(change.get("kind", "")),
                                               "status": _text(item.get("status", ""))})
    elif kind == "command_execution":
        entry = {"command": _text(item.get("command", "")),
                 "exit_code": _number(item.get("exit_code")),
                 "status": _text(item.get("status", ""))}
        claims["commands"].append(entry)
        if item.get("status") == "declined":
            claims["declined_commands"].append(entry["command"])
    elif kind == "agent_message":
        claims["final_message"] = _text(item.get("text", ""), _RESULT_TEXT_LIMIT)
    elif kind == "error":
        claims["item_errors"].append(_text(item.get("message", "")))


_OPENCODE_REJECTED = ("rejected permission", "specified a rule which prevents")
_OPENCODE_ASKED = re.compile(r"permission requested: (.*?); auto-rejecting")


def _opencode_claims(objects: list[dict[str, Any]], output: bytes) -> dict[str, Any]:
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
            claims["session_id"] = _text(event["sessionID"])
        raw_part = event.get("part")
        part: dict[str, Any] = raw_part if isinstance(raw_part, dict) else {}
        if kind == "step_finish":
            claims["steps"] += 1
            cost = _number(part.get("cost"))
            if cost is not None:
                claims["cost"] += cost
            _add_numbers(claims["tokens"], part.get("tokens"))
        elif kind == "text":
            claims["final_text"] = _text(part.get("text", ""), _RESULT_TEXT_LIMIT)
        elif kind == "tool_use":
            _opencode_tool(claims, part)
        elif kind == "error":
            error = event.get("error")
            message: Any = error
            if isinstance(error, dict):
                data = error.get("data")
                message = (data.get("message") if isinstance(data, dict) else None) \
                    or error.get("name") or error
            claims["errors"].append(_text(message))
    text = output.decode("utf-8", "replace")
    claims["permission_requests"] = [_text(m) for m in _OPENCODE_ASKED.findall(text)]
    return claims


def _opencode_tool(claims: dict[str, Any], part: dict[str, Any]) -> None:
    raw_state = part.get("state")
    state: dict[str, Any] = raw_state if isinstance(raw_state, dict) else {}
    status = state.get("status")
    name = _text(part.get("tool", ""))
    claims["tool_calls"].append({"tool": name, "status": _text(status or ""),
                                 "title": _text(state.get("title", ""))})
    if status == "error":
        error = _text(state.get("error", ""))
        claims["tool_errors"].append({"tool": name, "error": error})
        if any(marker in error for marker in _OPENCODE_REJECTED):
            claims["permission_rejections"].append({"tool": name, "error": error})


def claims_failure(adapter: str, claims: Mapping[str, Any]) -> str | None:
    """A reason to fail the step from the tool's own claims alone, else None.

    The executor fails a tool step when the exit code is not 0 OR this returns a reason.
    Missing evidence of success (no result object, no completed turn, no JSON) fails too:
    a cut or garbled transcript must not pass for a clean run. Any permission the tool
    was refused is a failure: in a headless run an `ask` is a deny, and a deny means the
    tool wanted something the policy does not give.
    """
    if adapter not in ADAPTERS:
        raise AgentosError(f"unknown tool adapter {adapter!r}",
                           hint=f"use one of: {', '.join(ADAPTERS)}")
    if adapter == "command":
        return None
    if adapter == "claude":
        return _claude_failure(claims)
    if adapter == "codex":
        return _codex_failure(claims)
    return _opencode_failure(claims)


def _claude_failure(claims: Mapping[str, Any]) -> str | None:
    if not claims.get("result_found"):
        detail = claims.get("parse_error") or "no JSON"
        return f"claude printed no result object ({detail})"
    if claims.get("is_error") or claims.get("is_error_raw") is not False:
        reason = claims.get("result") or "; ".join(claims.get("errors") or []) or "no detail"
        return f"claude reported is_error (subtype {claims.get('subtype')!r}): {_text(reason, 200)}"
    if claims.get("subtype") != "success":
        return f"claude run ended with subtype {claims.get('subtype')!r}"
    denials = claims.get("permission_denials") or []
    if denials:
        names = sorted({str(d.get("tool_name")) for d in denials if isinstance(d, dict)})
        return (f"claude was denied {len(denials)} tool call(s) ({', '.join(names)}): "
                "a headless run never asks, so a denied permission fails the step")
    return None


def _codex_failure(claims: Mapping[str, Any]) -> str | None:
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


def _opencode_failure(claims: Mapping[str, Any]) -> str | None:
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
