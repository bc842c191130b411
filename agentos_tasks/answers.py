"""Questions a request asks before it may run, and reviewer approvals before apply.

An answers file (YAML, passed as `answers=FILE`) looks like:

    answers:
      q1: {by: alice@example.com, at: "2026-11-25T10:00:00Z", text: "yes, src/api.py only"}
    approvals:
      step_05: {by: bob@example.com, at: "2026-11-25T11:00:00Z", patch_sha256: "<sha256>",
                text: "reviewed the diff"}

Without answers, a request with questions stops before any step executes
(`questions_blocked` on the tape). An approval binds the exact patch it approves.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import voluptuous as vol

from agentos_tasks.errors import EXIT_STATE, AgentosError
from agentos_tasks.evidence import write_result
from agentos_tasks.fsutil import atomic_write, sha256_file
from agentos_tasks.yamlsrc import load_with_marks, validate

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agentos_tasks.model import Request
    from agentos_tasks.records import Manifest
    from agentos_tasks.runctx import RunContext


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
})


def load_answers(ctx: RunContext) -> dict[str, Any] | None:
    if ctx.answers_path is None:
        return None
    doc = load_with_marks(ctx.answers_path, "answers")
    data: dict[str, Any] = validate(doc, ANSWERS_SCHEMA, "answers")
    data["_where"] = doc.where
    return data


def check_answers(ctx: RunContext, req: Request) -> str | None:
    """Stop before any step when a question is unanswered; record the answers otherwise."""
    t = ctx.tape
    data = load_answers(ctx)
    answered = (data or {}).get("answers", {})
    missing = [q.id for q in req.questions if q.id not in answered]
    if missing:
        t.append("questions_blocked", questions=[q.id for q in req.questions], missing=missing,
                 answers_file=str(ctx.answers_path) if ctx.answers_path else None)
        write_result(ctx, "blocked", failure={"reason": "unanswered questions",
                                              "questions": missing})
        t.append("run_end", status="blocked")
        raise AgentosError(
            f"{len(missing)} question(s) need an answer before any step runs: "
            + ", ".join(missing), code=EXIT_STATE,
            where=f"{req.source}:{req.lines.get('questions', 1)}",
            hint="write answers: {<id>: {by: ..., at: <ISO time>, text: ...}} to a YAML file "
                 "and re-run with answers=FILE")
    if ctx.answers_path is None:  # every question answered means a file was given
        raise AgentosError("answers were found without an answers file", code=EXIT_STATE)
    unknown = sorted(set(answered) - {q.id for q in req.questions})
    if unknown:
        raise AgentosError(f"answers for unknown question(s): {', '.join(unknown)}",
                           where=str(ctx.answers_path))
    atomic_write(ctx.paths.audit / "answers.yaml", ctx.answers_path.read_bytes())
    digest = sha256_file(ctx.answers_path)
    t.append("resume_applied", answers_sha256=digest, answered=sorted(answered),
             answers={k: answered[k] for k in sorted(answered)})
    return digest


def check_approvals(ctx: RunContext, req: Request, manifests: Sequence[Manifest]) -> None:
    """Apply only when every step the policy says needs review has an approval of its patch."""
    from agentos_tasks.policy import needs_approval

    by_id = {s.id: s for s in req.steps}
    needed = [m for m in manifests
              if m["status"] == "changed" and needs_approval(ctx.policy, by_id[m["step"]])]
    if not needed:
        return
    data = load_answers(ctx) or {}
    approvals = data.get("approvals", {})
    for manifest in needed:
        approval = approvals.get(manifest["step"])
        if approval is None or approval["patch_sha256"] != manifest["patch_sha256"]:
            raise AgentosError(
                f"step {manifest['step']} needs a reviewer approval of patch "
                f"{manifest['patch_sha256']} before apply", code=EXIT_STATE,
                hint=f"review patches/{manifest['step']}.patch, then add approvals: "
                     f"{{{manifest['step']}: {{by, at, text, patch_sha256}}}} to an answers "
                     "file and re-run with answers=FILE")
    if ctx.answers_path is not None:
        atomic_write(ctx.paths.audit / "answers.yaml", ctx.answers_path.read_bytes())
