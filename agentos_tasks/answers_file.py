"""The answers file itself: its schema, its loader and the path approvals it grants.
Pure (no run context), so the run context can read it without importing the rest of
answers.py (which writes evidence)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import voluptuous as vol

from agentos_tasks.yamlsrc import load_with_marks, validate

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def _timestamp(value: Any) -> str:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise vol.Invalid("must be an ISO 8601 timestamp") from None
    return text


_EVIDENCE = {vol.Required("by"): vol.All(str, vol.Length(min=1)),
             vol.Required("at"): _timestamp,
             vol.Required("text"): vol.All(str, vol.Length(min=1))}
ANSWERS_SCHEMA = vol.Schema({
    vol.Optional("answers"): {str: _EVIDENCE},
    vol.Optional("approvals"): {str: {**_EVIDENCE, vol.Required("patch_sha256"):
                                      vol.Match(r"^[0-9a-f]{64}$")}},
    vol.Optional("path_approvals"): {str: {vol.All(str, vol.Length(min=1)): {
        **_EVIDENCE, vol.Required("rule_id"): vol.All(str, vol.Length(min=1))}}},
})


def approved_paths(data: Mapping[str, Any] | None) -> frozenset[tuple[str, str, str]]:
    """(step, path, rule_id) of an answers file's path_approvals; a path as written in the
    file, normalised as the policy normalises it (a path it refuses approves nothing)."""
    from agentos_tasks.errors import PolicyViolation
    from agentos_tasks.policy.paths import normalize_path

    found: set[tuple[str, str, str]] = set()
    for step, paths in ((data or {}).get("path_approvals") or {}).items():
        for path, entry in paths.items():
            try:
                found.add((step, normalize_path(path), entry["rule_id"]))
            except PolicyViolation:
                continue
    return frozenset(found)


def load_answers_file(path: Path) -> dict[str, Any]:
    """An answers file, validated (AgentosError at file:line, exit 2)."""
    data: dict[str, Any] = validate(load_with_marks(path, "answers"), ANSWERS_SCHEMA,
                                    "answers")
    return data
