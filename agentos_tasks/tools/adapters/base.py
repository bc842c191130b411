"""What every adapter shares: the `Invocation` record, the allowed-glob check, and
tolerant readers for the JSON a CLI prints (possibly cut anywhere, possibly garbage).

Pure: nothing here starts a process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import ADAPTERS

if TYPE_CHECKING:
    from collections.abc import Sequence

# Characters that cannot appear inside a Claude permission rule `Edit(<glob>)` (the rule
# list is split on commas and parentheses) or safely in any pattern list.
UNSAFE_GLOB_CHARS = re.compile(r"[(),\x00-\x1f]")
RESULT_TEXT_LIMIT = 2000
MESSAGE_LIMIT = 500


@dataclass(frozen=True)
class Invocation:
    """What the executor runs for a tool step.

    argv: the program and its arguments (argv[0] is looked up on PATH by the executor).
    env: variables laid over the policy's allowlisted environment (config dirs, hermetic
         settings); they win over the allowlist.
    files: config files to write into the step's private config dir before the run
           (relative posix name -> text).
    secret_env: variables the executor sets inside the sandbox from the policy's secrets
           (variable name -> name of the secret whose value it gets, e.g.
           {"ANTHROPIC_API_KEY": "ANTHROPIC_KEY"}); the adapter never sees a value, and
           no value ever reaches argv, env or files.
    """

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)


def unknown_adapter(adapter: str) -> AgentosError:
    """The error for an adapter name outside `ADAPTERS`."""
    return AgentosError(f"unknown tool adapter {adapter!r}",
                        hint=f"use one of: {', '.join(ADAPTERS)}")


def checked_globs(allowed_paths: Sequence[str]) -> tuple[str, ...]:
    """Globs usable in every CLI's rule syntax; anything else is refused, not mangled."""
    if isinstance(allowed_paths, str):
        raise AgentosError("allowed paths must be a list of globs, not a string")
    globs: list[str] = []
    for glob in allowed_paths:
        if not isinstance(glob, str) or not glob.strip():
            raise AgentosError(f"invalid allowed path {glob!r}: must be a non-empty glob")
        if UNSAFE_GLOB_CHARS.search(glob):
            raise AgentosError(f"allowed path {glob!r} contains '(', ')', ',' or a control "
                               "character, which coding-agent permission rules cannot express",
                               hint="rename the path or use a wider glob such as 'dir/**'")
        if glob.startswith("/") or glob.startswith("~") or ".." in glob.split("/"):
            raise AgentosError(f"allowed path {glob!r} must be relative to the worktree",
                               hint="write globs like 'src/**'")
        globs.append(glob)
    return tuple(globs)


def parse_version(output: bytes) -> str:
    """First non-empty line of `--version` output ("2.1.197 (Claude Code)", "codex-cli
    0.169.0", "1.18.33"), or "unknown"; never raises."""
    for line in output.decode("utf-8", "replace").splitlines():
        if line.strip() and not line.startswith("WARNING:"):
            return line.strip()[:200]
    return "unknown"


# --------------------------------------------------------------------------- reading output

def json_objects(output: bytes) -> tuple[list[dict[str, Any]], int, str | None]:
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


def clipped(value: Any, limit: int = MESSAGE_LIMIT) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def add_numbers(totals: dict[str, Any], reported: Any) -> None:
    """Add each numeric field a tool reported to the running total of the same name."""
    if isinstance(reported, dict):
        for key in totals:
            value = as_number(reported.get(key))
            if value is not None:
                totals[key] += value


def as_number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def usage_summary(*, model: Any, input_tokens: Any, output_tokens: Any, cost_usd: Any = None,
                  turns: Any = None) -> dict[str, Any]:
    """The one usage record every adapter puts in `claims["usage_summary"]`.

    {"model": str | None, "input_tokens": int, "output_tokens": int,
     "cost_usd": float | None, "turns": int | None}. `input_tokens` counts every input
    token the model processed, cached or not (claude reports cache reads and writes apart;
    the adapter adds them). Unreadable numbers become 0 (tokens) or None (cost, turns);
    a negative count is refused as 0: this is a tool's claim, never trusted.
    """
    def count(value: Any) -> int:
        number = as_number(value)
        return int(number) if number is not None and number >= 0 else 0

    cost = as_number(cost_usd)
    turn_count = as_number(turns)
    return {
        "model": clipped(model, 200) if isinstance(model, str) and model else None,
        "input_tokens": count(input_tokens),
        "output_tokens": count(output_tokens),
        "cost_usd": float(cost) if cost is not None and cost >= 0 else None,
        "turns": int(turn_count) if turn_count is not None and turn_count >= 0 else None,
    }


__all__ = ["MESSAGE_LIMIT", "RESULT_TEXT_LIMIT", "Invocation", "add_numbers", "as_number",
           "checked_globs", "clipped", "json_objects", "parse_version", "unknown_adapter",
           "usage_summary"]
