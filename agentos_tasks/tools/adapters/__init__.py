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

Each adapter is one module (`claude`, `codex`, `opencode`, `command`) that builds its
invocation, reads its claims and says when they fail a step; each lists every flag and
setting it uses and where it is documented, checked against the installed CLIs'
`--help` of claude 2.1.332, codex-cli 0.171.0, opencode 1.18.33 (npm
@anthropic-ai/claude-code, @openai/codex, opencode-ai) and their docs/source. `base`
holds what they share. This module is the one entry point the executor and the gates use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import ADAPTERS
from agentos_tasks.tools.adapters import claude, codex, command, opencode
from agentos_tasks.tools.adapters.base import (
    Invocation,
    checked_globs,
    json_objects,
    parse_version,
    unknown_adapter,
)
from agentos_tasks.tools.adapters.claude import (
    CLAUDE_DENIED_TOOLS,
    CLAUDE_EDIT_TOOLS,
    CLAUDE_SETTINGS_FILE,
)
from agentos_tasks.tools.adapters.opencode import edit_patterns as opencode_edit_patterns

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from agentos_tasks.model import ToolSpec
    from agentos_tasks.policy.schema import Provider

# The executable each real adapter runs (looked up on PATH by the executor).
EXECUTABLES: dict[str, str] = {"claude": claude.EXECUTABLE, "codex": codex.EXECUTABLE,
                               "opencode": opencode.EXECUTABLE}


def build_invocation(
    tool: ToolSpec,
    *,
    worktree: Path,
    config_dir: Path,
    allowed_paths: Sequence[str],
    allow_shell: bool,
    network: bool,
    task_pack_path: Path | None = None,
    provider: Provider | None = None,
) -> Invocation:
    """The argv/env/files that run `tool` headless, hermetic and confined to `allowed_paths`.

    `allowed_paths` are the gitignore globs the tool may change (the step's `paths`
    intersected with the policy by the caller); `allow_shell`, `network` (whether any
    grant exists) and `provider` (the model endpoint) come from the policy's `tools:`
    entry for this adapter.
    """
    adapter = tool.adapter
    if adapter not in ADAPTERS:
        raise unknown_adapter(adapter)
    globs = checked_globs(allowed_paths)
    if adapter == "command":
        return command.invocation(tool, globs, task_pack_path)
    if not tool.prompt.strip():
        raise AgentosError(f"tool step for {adapter} has an empty prompt",
                           hint="give the tool a prompt: tool: {adapter: ..., prompt: ...}")
    if adapter == "claude":
        return claude.invocation(tool, config_dir, globs, allow_shell, provider=provider)
    if adapter == "codex":
        return codex.invocation(tool, worktree, config_dir, allow_shell, network,
                                provider=provider)
    # OpenCode's web tools stay denied either way; the CLI itself needs the network for
    # its API, which the sandbox grants or not.
    return opencode.invocation(tool, worktree, config_dir, globs, allow_shell,
                               provider=provider)


def masked_for(adapter: str) -> tuple[str, ...]:
    """Worktree entries (repository-level config of the CLI: plugins, hooks, settings,
    MCP servers) hidden from the tool inside the sandbox, so the repository cannot
    configure the agent that edits it."""
    if adapter not in ADAPTERS:
        raise unknown_adapter(adapter)
    module = {"claude": claude, "codex": codex, "opencode": opencode}.get(adapter)
    return tuple(getattr(module, "MASKED", ())) if module is not None else ()


def tool_sandbox_note(adapter: str) -> str:
    """What the adapter did with the CLI's own sandbox (ours is the boundary)."""
    module = {"claude": claude, "codex": codex, "opencode": opencode}.get(adapter)
    return str(getattr(module, "TOOL_SANDBOX_NOTE", "")) if module is not None else ""


def executable_for(tool: ToolSpec) -> str:
    """The program the executor must find on PATH for this tool."""
    if tool.adapter == "command":
        return command.executable(tool)
    if tool.adapter not in EXECUTABLES:
        raise unknown_adapter(tool.adapter)
    return EXECUTABLES[tool.adapter]


def version_argv(adapter: str, executable: str) -> list[str]:
    """How to ask a CLI its version (recorded in the result pack as tool.version)."""
    if adapter not in ADAPTERS:
        raise unknown_adapter(adapter)
    return [executable, "--version"]


def parse_claims(adapter: str, stdout: bytes, model: str | None = None) -> dict[str, Any]:
    """What the tool says about its run, in a small stable shape; never raises on garbage.

    `stdout` is the captured (merged, possibly truncated) output. Any problem reading it
    is reported as `parse_error` next to whatever did parse. `model`: the model the step
    asked for (the tool's or the provider's), for the usage summary when the CLI does not
    name one itself.
    """
    if adapter not in ADAPTERS:
        raise unknown_adapter(adapter)
    if adapter == "command":
        return command.read_claims(stdout)
    objects, other, problem = json_objects(stdout)
    if adapter == "claude":
        claims = claude.read_claims(objects, model=model)
    elif adapter == "codex":
        claims = codex.read_claims(objects, stdout, model=model)
    else:
        claims = opencode.read_claims(objects, stdout, model=model)
    claims["adapter"] = adapter
    claims["json_objects"] = len(objects)
    claims["other_lines"] = other
    if problem is not None:
        claims["parse_error"] = problem
    elif not objects:
        claims["parse_error"] = "no JSON output found"
    return claims


def claims_failure(adapter: str, claims: Mapping[str, Any]) -> str | None:
    """A reason to fail the step from the tool's own claims alone, else None.

    The executor fails a tool step when the exit code is not 0 OR this returns a reason.
    Missing evidence of success (no result object, no completed turn, no JSON) fails too:
    a cut or garbled transcript must not pass for a clean run. Any permission the tool
    was refused is a failure: in a headless run an `ask` is a deny, and a deny means the
    tool wanted something the policy does not give.
    """
    if adapter not in ADAPTERS:
        raise unknown_adapter(adapter)
    if adapter == "command":
        return None
    if adapter == "claude":
        return claude.failure(claims)
    if adapter == "codex":
        return codex.failure(claims)
    return opencode.failure(claims)


__all__ = [
    "ADAPTERS", "CLAUDE_DENIED_TOOLS", "CLAUDE_EDIT_TOOLS", "CLAUDE_SETTINGS_FILE",
    "EXECUTABLES", "Invocation", "build_invocation", "claims_failure", "executable_for",
    "masked_for", "opencode_edit_patterns", "parse_claims", "parse_version",
    "tool_sandbox_note", "version_argv",
]
