"""The `command` adapter: any program, run as the step's `argv` says.

It runs `tool.argv` as given; the prompt is in env AGENTOS_PROMPT, the
task pack path in AGENTOS_TASK_PACK, the allowed globs (one per line) in
AGENTOS_ALLOWED_PATHS.

It claims nothing: its claims are the size of its output, and only its exit code (and
the diff agentos computes) decide the step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.tools.adapters.base import Invocation

if TYPE_CHECKING:
    from pathlib import Path

    from agentos_tasks.model import ToolSpec


def invocation(tool: ToolSpec, globs: tuple[str, ...],
               task_pack_path: Path | None) -> Invocation:
    """The step's argv; prompt, task pack and allowed globs in the environment."""
    if not tool.argv:
        raise AgentosError("tool adapter 'command' needs argv",
                           hint="tool: {adapter: command, argv: [prog, arg, ...], prompt: ...}")
    env = {"AGENTOS_PROMPT": tool.prompt, "AGENTOS_ALLOWED_PATHS": "\n".join(globs)}
    if task_pack_path is not None:
        env["AGENTOS_TASK_PACK"] = str(task_pack_path)
    return Invocation(argv=tuple(tool.argv), env=env, files={})


def executable(tool: ToolSpec) -> str:
    """The program to find on PATH: the first token of the step's argv."""
    if not tool.argv:
        raise AgentosError("tool adapter 'command' needs argv")
    return tool.argv[0]


def read_claims(stdout: bytes) -> dict[str, Any]:
    """All a command says about its run: how much it printed."""
    return {"adapter": "command", "output_bytes": len(stdout)}


__all__ = ["executable", "invocation", "read_claims"]
