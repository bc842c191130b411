"""OpenCode: `opencode run`, headless, hermetic, edits allowed only on the step's globs.

OpenCode (`opencode run --help`; https://opencode.ai/docs/permissions,
https://opencode.ai/docs/config, https://opencode.ai/docs/providers; packages/opencode/src
/cli/cmd/run.ts, flag.ts, config/config.ts and npm.ts in github.com/sst/opencode, read
from the 1.18.33 binary):
  run --format json          JSONL: {type: step_start|text|reasoning|tool_use|step_finish|
                             error, timestamp, sessionID, part{...}|error{name,data{message}}}
                             tool_use part: {tool, callID, state{status completed|error,
                             input, output|error, title}}; step_finish part: {tokens{input,
                             output, reasoning, cache{read, write}}, cost}. An API error is
                             one `error` event {name: APIError, data{message, statusCode}}
                             and exit 1. Recorded: tests/fakes/samples/opencode_real_*.
  --pure                     no external plugins from the config's `plugin:` list... but
                             NOT the repository's .opencode/plugin/*.js nor a file:// plugin
                             in its opencode.json: both still run with --pure and
                             OPENCODE_DISABLE_PROJECT_CONFIG=1 (checked) -> MASKED
  --dir DIR                  directory to run in = the worktree
  -m provider/model          the model; with a provider, agentos/<model>
  a permission "ask" in `run` prints "! permission requested: <perm> (<patterns>);
  auto-rejecting" (stderr) and the tool part ends with status "error", "The user rejected
  permission to use this specific tool call." -> claims_failure. Our rules never say ask;
  a denied edit ends "The user has specified a rule which prevents you from using this
  specific tool call" -> claims_failure.
  env OPENCODE_PERMISSION (JSON, merged last over every config), OPENCODE_CONFIG_CONTENT
  (autoupdate false, share disabled, snapshot false, formatter false, lsp false, and the
  provider), OPENCODE_DISABLE_PROJECT_CONFIG=1, OPENCODE_DISABLE_AUTOUPDATE,
  OPENCODE_DISABLE_SHARE, OPENCODE_DISABLE_LSP_DOWNLOAD, OPENCODE_DISABLE_CLAUDE_CODE,
  OPENCODE_DISABLE_EXTERNAL_SKILLS (.claude/.agents skills), OPENCODE_DISABLE_DEFAULT_PLUGINS
  (the built-in auth plugins), OPENCODE_DISABLE_MODELS_FETCH (otherwise every run GETs
  https://models.opencode.ai/api.json), XDG_*_HOME/HOME=config_dir.
  No downloads: for each config directory OpenCode starts a background `npm install
  @opencode-ai/plugin` (npm.ts `Npm.install`) unless the directory already has
  node_modules/ and a package.json whose dependencies the package-lock.json root lists;
  `files` seeds exactly that in xdg/config/opencode, so nothing is fetched (checked: no
  request leaves but the provider's). The provider SDK (@ai-sdk/openai-compatible,
  @ai-sdk/anthropic, @ai-sdk/openai) is bundled in the binary.
  provider: OPENCODE_CONFIG_CONTENT provider "agentos" {npm: the SDK for the protocol,
  options{baseURL: provider.base_url, apiKey: "{env:AGENTOS_PROVIDER_API_KEY}"}, models{
  <model>: {tool_call: true}}}, model and small_model "agentos/<model>"; the key comes as
  secret AGENTOS_PROVIDER_API_KEY <- provider.api_key_env, never in the config text.
  base_url is the SDK's base URL: for openai-chat/openai-responses the part before
  /chat/completions or /responses (usually ending in /v1), for anthropic the part before
  /messages (ending in /v1; appended when missing). OpenCode honours HTTP(S)_PROXY and
  NO_PROXY for it, loopback included (no built-in bypass). Its first request is a title
  request without tools; the agent's turns carry tools.
  MASKED: .opencode, opencode.json, opencode.jsonc (hidden in the sandbox); AGENTS.md is
  content and stays.
  RLIMIT_FSIZE must not apply: OpenCode's SQLite WAL in XDG_DATA_HOME grows past 1 MiB.
  --version                  prints "1.18.33"
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
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from agentos_tasks.model import ToolSpec
    from agentos_tasks.policy.schema import Provider

EXECUTABLE = "opencode"
# Repository entries OpenCode loads as configuration, plugins included (hidden in the sandbox).
MASKED: tuple[str, ...] = (".opencode", "opencode.json", "opencode.jsonc")
PROVIDER_ID = "agentos"
API_KEY_VARIABLE = "AGENTOS_PROVIDER_API_KEY"
# The AI SDK provider package for each protocol (all bundled in the opencode binary).
PROVIDER_SDKS: dict[str, str] = {"openai-chat": "@ai-sdk/openai-compatible",
                                 "openai-responses": "@ai-sdk/openai",
                                 "anthropic": "@ai-sdk/anthropic"}
# What makes OpenCode's background `npm install @opencode-ai/plugin` into its global config
# dir a no-op (npm.ts: node_modules/ exists and the lock's root lists every dependency).
_PLUGIN_DEPENDENCY = {"@opencode-ai/plugin": "1.18.33"}
NO_INSTALL_FILES: dict[str, str] = {
    "xdg/config/opencode/package.json":
        json.dumps({"dependencies": _PLUGIN_DEPENDENCY}, indent=2) + "\n",
    "xdg/config/opencode/package-lock.json":
        json.dumps({"lockfileVersion": 3, "requires": True,
                    "packages": {"": {"dependencies": _PLUGIN_DEPENDENCY}}}, indent=2) + "\n",
    "xdg/config/opencode/node_modules/.agentos-no-install":
        "agentos: OpenCode must not install packages here (see adapters/opencode.py)\n",
}
# The tools whose failure means the change the model meant to make was not made.
FILE_TOOLS: frozenset[str] = frozenset({"edit", "write", "patch", "multiedit", "apply_patch"})
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
    config: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json", "autoupdate": False,
        "share": "disabled", "snapshot": False, "formatter": False, "lsp": False}
    model = tool.model
    secret_env: dict[str, str] = {}
    if provider is not None:
        model = f"{PROVIDER_ID}/{_provider_model(tool, provider)}"
        config["provider"] = {PROVIDER_ID: _provider_entry(provider, model.split("/", 1)[1])}
        config["model"] = config["small_model"] = model
        if provider.api_key_env:
            secret_env[API_KEY_VARIABLE] = provider.api_key_env
    argv = ["opencode", "run", "--format", "json", "--pure", "--dir", str(worktree)]
    if model:
        argv += ["-m", model]
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
        "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
    }
    return Invocation(argv=tuple(argv), env=env, files=dict(NO_INSTALL_FILES),
                      secret_env=secret_env)


def _provider_model(tool: ToolSpec, provider: Provider) -> str:
    """The model id inside our provider: the step's (an "agentos/" prefix dropped), else
    the provider's; OpenCode cannot run without one."""
    model = tool.model or provider.model
    if model and model.startswith(PROVIDER_ID + "/"):
        model = model[len(PROVIDER_ID) + 1:]
    if not model or "/" in model or not model.strip():
        raise AgentosError(
            f"the opencode adapter needs a plain model id for its provider, got {model!r}",
            hint="set tools[i].provider.model (or the step's tool.model) to the id the "
                 "endpoint serves, e.g. 'gpt-4.1' (no provider prefix)")
    return model


def _provider_entry(provider: Provider, model: str) -> dict[str, Any]:
    protocol = provider.protocol or "openai-chat"
    if protocol not in PROVIDER_SDKS:
        raise AgentosError(f"unknown provider protocol {protocol!r} for opencode",
                           hint=f"use one of: {', '.join(PROVIDER_SDKS)}")
    base_url = provider.base_url.rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise AgentosError(f"opencode provider base_url {provider.base_url!r} is not an "
                           "http(s) URL", hint="write it like https://gateway.example/v1")
    if protocol == "anthropic" and not base_url.endswith("/v1"):
        base_url += "/v1"  # @ai-sdk/anthropic posts to {baseURL}/messages
    options: dict[str, Any] = {"baseURL": base_url}
    if provider.api_key_env:
        options["apiKey"] = "{env:" + API_KEY_VARIABLE + "}"
    return {"npm": PROVIDER_SDKS[protocol], "name": "agentos provider", "options": options,
            "models": {model: {"name": model, "tool_call": True}}}


def read_claims(objects: list[dict[str, Any]], output: bytes, *,
                model: str | None = None) -> dict[str, Any]:
    """Steps, cost, tool calls, rejections and errors from the JSONL events; the
    permission requests from the merged text (they are printed, not JSON). `model` is the
    one asked for (OpenCode's events name none)."""
    claims: dict[str, Any] = {
        "session_id": None, "steps": 0, "cost": 0.0,
        "tokens": {"input": 0, "output": 0, "reasoning": 0},
        "cache_tokens": {"read": 0, "write": 0},
        "tool_calls": [], "tool_errors": [], "failed_file_tools": [],
        "permission_rejections": [], "permission_requests": [], "errors": [],
        "final_text": None,
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
            tokens = part.get("tokens")
            if isinstance(tokens, dict):
                add_numbers(claims["cache_tokens"], tokens.get("cache"))
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
    claims["usage_summary"] = usage_summary(
        model=model,
        input_tokens=claims["tokens"]["input"] + claims["cache_tokens"]["read"]
        + claims["cache_tokens"]["write"],
        output_tokens=claims["tokens"]["output"] + claims["tokens"]["reasoning"],
        cost_usd=claims["cost"], turns=claims["steps"])
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
        elif name in FILE_TOOLS:
            claims["failed_file_tools"].append({"tool": name, "error": error})


def failure(claims: Mapping[str, Any]) -> str | None:
    """A permission asked or refused, an error event, a file-editing tool call that
    failed (the change the model meant is not there), or no readable JSON. Other tool
    errors (a read of a missing file) are recorded in `tool_errors`, not failures."""
    if claims.get("permission_requests"):
        return (f"opencode asked for permission ({claims['permission_requests'][0]}); "
                "a headless run never asks, so the request was rejected")
    if claims.get("permission_rejections"):
        first = claims["permission_rejections"][0]
        return f"opencode was refused permission for {first.get('tool')}: {first.get('error')}"
    if claims.get("errors"):
        return f"opencode reported an error: {claims['errors'][-1]}"
    failed = claims.get("failed_file_tools") or []
    if failed:
        first = failed[0]
        return (f"opencode had {len(failed)} file edit(s) fail: {first.get('tool')}: "
                f"{clipped(first.get('error', ''), 200)}")
    if not claims.get("json_objects"):
        return f"opencode printed no JSON events ({claims.get('parse_error', 'no output')})"
    if claims.get("parse_error"):
        return f"opencode output unreadable: {claims['parse_error']}"
    return None


__all__ = ["API_KEY_VARIABLE", "EXECUTABLE", "FILE_TOOLS", "MASKED", "NO_INSTALL_FILES",
           "PROVIDER_ID", "PROVIDER_SDKS", "edit_patterns", "failure", "invocation",
           "read_claims"]
