"""Questions a request asks before it may run, and reviewer approvals before apply.

An answers file (YAML, passed as `answers=FILE`) looks like:

    answers:
      q1: {by: alice@example.com, at: "2026-11-25T10:00:00Z", text: "yes, src/api.py only"}
    approvals:
      step_05: {by: bob@example.com, at: "2026-11-25T11:00:00Z", patch_sha256: "<sha256>",
                text: "reviewed the diff"}
    path_approvals:
      step_02:
        pyproject.toml: {rule_id: "paths.ask[1]", by: carol@example.com,
                         at: "2026-11-25T12:00:00Z", text: "bump the version"}

Without answers, a request with questions stops before any step executes
(`questions_blocked` on the tape). An approval binds the exact patch it approves. A path
approval lets one step change one path an `ask` rule covers (that exact path, that rule,
that step); the policy task records it (`paths_approved`, with the file's sha256) and
EX-G recomputes from the evidence which approvals the run needed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.answers_file import ANSWERS_SCHEMA
from agentos_tasks.errors import EXIT_STATE, AgentosError
from agentos_tasks.evidence import write_result
from agentos_tasks.fsutil import atomic_write, sha256_file
from agentos_tasks.yamlsrc import load_with_marks, validate

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agentos_tasks.model import Request
    from agentos_tasks.records import Manifest
    from agentos_tasks.runctx import RunContext


def approval_snippet(needed: Sequence[tuple[str, str, str]], *, by: str, at: str) -> str:
    """One line of YAML (flow style) an answers file can hold to approve `needed`
    (step, path, rule_id); `by` and `at` say who approves and when."""
    import yaml

    tree: dict[str, dict[str, dict[str, str]]] = {}
    for step, path, rule_id in needed:
        tree.setdefault(step, {})[path] = {"rule_id": rule_id, "by": by, "at": at,
                                           "text": f"approved: step {step} may change {path}"}
    return yaml.safe_dump({"path_approvals": tree}, default_flow_style=True, sort_keys=False,
                          width=1 << 20, allow_unicode=False).strip()


def approval_hint(ctx: RunContext, needed: Sequence[tuple[str, str, str]]) -> str:
    """What to write and what to run to approve `needed` (step, path, ask rule id)."""
    import getpass
    from datetime import UTC

    try:
        by = getpass.getuser()
    except (KeyError, OSError):
        by = "reviewer"
    at = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    snippet = approval_snippet(needed, by=by, at=at)
    target = ctx.answers_path or ctx.cwd / "answers.yaml"
    doit_cmd, agentos_cmd = rerun_commands(ctx, target)
    what = ", ".join(f"{path} (rule {rule_id}, step {step})" for step, path, rule_id in needed)
    verb = "add to" if ctx.answers_path is not None else "write to"
    return (f"{what} needs a human's approval. To approve it for this run, {verb} "
            f"{_cli_path(ctx, target)}: `{snippet}` then re-run: `{doit_cmd}` (or "
            f"`{agentos_cmd}`); steps that already ran are reused")


def _cli_path(ctx: RunContext, path: Path) -> str:
    """`path` as the user would type it where they ran the command."""
    try:
        return str(path.resolve().relative_to(ctx.cwd.resolve()))
    except ValueError:
        return str(path.resolve())


def rerun_commands(ctx: RunContext, answers: Path) -> tuple[str, str]:
    """The doit and the `agentos exec run` command lines that run this run again with
    `answers` (policy, run and outputs only when the request alone does not imply them)."""
    import shlex

    from agentos_tasks.policy import default_policy_path

    req = ctx.need_request()
    given = {"request": _cli_path(ctx, req.source)}
    if ctx.policy_path is not None and ctx.policy_path not in (req.policy,
                                                               default_policy_path()):
        given["policy"] = _cli_path(ctx, ctx.policy_path)
    if ctx.run_id != req.id:
        given["run"] = ctx.run_id
    if ctx.paths.root.parent.resolve() != (ctx.cwd / "outputs").resolve():
        given["outputs"] = _cli_path(ctx, ctx.paths.root.parent)
    given["answers"] = _cli_path(ctx, answers)
    dodo = Path(__file__).resolve().parents[1] / "dodo.py"
    doit = ["doit"] if (ctx.cwd / "dodo.py").is_file() or not dodo.is_file() \
        else ["doit", "-f", _cli_path(ctx, dodo)]
    doit += ["run", *(f"{k}={v}" for k, v in given.items())]
    agentos = ["agentos", "exec", "run"]
    for key, value in given.items():
        agentos += [f"--{key}", value]
    return shlex.join(doit), shlex.join(agentos)


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
