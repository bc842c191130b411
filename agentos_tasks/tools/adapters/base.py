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
    """

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


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


__all__ = ["MESSAGE_LIMIT", "RESULT_TEXT_LIMIT", "Invocation", "add_numbers", "as_number",
           "checked_globs", "clipped", "json_objects", "parse_version", "unknown_adapter"]
