"""EX-G: every changed step the recorded policy sends to review has an approval in
audit/answers.yaml that binds its patch file's actual sha256; and every path a started
step named or changed that only an `ask` rule denies has a path approval there, for that
step, path and rule, recorded by the run (paths_approved binds the file's sha256).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from agentos_tasks.answers_file import approved_paths
from agentos_tasks.errors import PolicyViolation
from agentos_tasks.gates.common import (
    NA,
    PASS,
    RUN_INPUTS,
    Fail,
    Gate,
    Verdict,
    executed_manifests,
    recorded_policy,
    request_from_record,
    require_chain,
    verdict,
)
from agentos_tasks.policy import decide_path, needs_approval, normalize_path

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.model import Request
    from agentos_tasks.policy import Policy


@verdict
def ex_g_approvals(ctx: GateContext) -> Verdict:
    """Patch approvals of the steps the recorded policy sends to review, and path approvals
    of the ask paths started steps named or changed, all recomputed from the evidence."""
    require_chain(ctx)
    policy = recorded_policy(ctx)
    request = request_from_record(ctx.request_record)
    manifests = dict(executed_manifests(ctx))
    said = check_path_approvals(ctx, policy, request, manifests)
    needed = [s for s in request.steps if needs_approval(policy, s)
              and manifests.get(s.id, {}).get("status") == "changed"]
    if not needed:
        if said:
            return PASS, said
        return NA, "no changed step needs an approval under the recorded policy"
    data = ctx.answers_file()
    if data is None:
        raise Fail(f"{len(needed)} step(s) need approval, audit/answers.yaml is missing")
    approvals = data.get("approvals", {})
    for step in needed:
        approval = approvals.get(step.id)
        if approval is None:
            raise Fail(f"step {step.id} ({step.op}) needs an approval; none recorded")
        actual = ctx.sha256(f"patches/{step.id}.patch")
        if actual is None:
            raise Fail(f"patches/{step.id}.patch is missing")
        if approval["patch_sha256"] != actual:
            raise Fail(f"approval of {step.id} by {approval['by']} binds patch "
                       f"{approval['patch_sha256'][:12]}, the patch file is {actual[:12]}")
        if manifests[step.id].get("patch_sha256") != actual:
            raise Fail(f"patches/{step.id}.patch differs from its manifest")
    return PASS, f"{len(needed)} step(s) approved, each binding its patch file's sha256" \
        + (f"; {said}" if said else "")


def needed_path_approvals(ctx: GateContext, policy: Policy, request: Request,
                          manifests: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(step, path, ask rule id) the run needed approved: every path a started step named
    (write/delete/patch) or its manifest lists (changed, renamed from, left ignored) that
    the recorded policy, without approvals, denies by an ask rule alone."""
    bare = dataclasses.replace(policy, approved_paths=frozenset())
    started = {str(e.get("step")) for e in ctx.events_named("step_start")}
    found: list[tuple[str, str, str]] = []
    for step in request.steps:
        if step.id not in started:
            continue
        manifest = manifests.get(step.id) or {}
        tool_paths = step.tool.paths if step.op == "tool" and step.tool is not None else None
        paths = [(p, False) for p in step.declared_paths()]
        paths += [(str(p), False) for f in manifest.get("files", [])
                  for p in (f.get("path"), f.get("old_path")) if p]
        paths += [(str(p), True) for p in manifest.get("ignored", [])]
        for path, ignored in paths:
            decision = decide_path(bare, path, tool_paths=tool_paths, ignored=ignored,
                                   step=step.id)
            key = (step.id, decision.subject, decision.rule_id)
            if decision.approvable and key not in found:
                found.append(key)
    return found


def check_path_approvals(ctx: GateContext, policy: Policy, request: Request,
                         manifests: dict[str, Any]) -> str | None:
    """Fail unless every needed path approval is in audit/answers.yaml and that file is
    the one the run recorded (the last paths_approved: its sha256 and its approvals).
    Returns what was checked, or None when no path approval exists or was needed."""
    needed = needed_path_approvals(ctx, policy, request, manifests)
    data = ctx.answers_file()
    given = approved_paths(data)
    if not needed and not given:
        return None
    if data is None:
        step, path, rule_id = needed[0]
        raise Fail(f"step {step} changed {path} (ask rule {rule_id}): no approval, "
                   "audit/answers.yaml is missing")
    for step, path, rule_id in needed:
        if (step, path, rule_id) not in given:
            raise Fail(f"step {step} changed {path} (ask rule {rule_id}) without an approval "
                       "for that step, path and rule in audit/answers.yaml")
    events = ctx.events_named("paths_approved")
    if not events:
        raise Fail("audit/answers.yaml approves paths, but the tape has no paths_approved")
    last = events[-1]
    digest = ctx.sha256("audit/answers.yaml")
    if last.get("answers_sha256") != digest:
        raise Fail(f"audit/answers.yaml ({str(digest)[:12]}) is not the answers file the run "
                   f"recorded ({str(last.get('answers_sha256'))[:12]}, paths_approved): "
                   "altered after the run")
    entries = last.get("approvals")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise Fail("paths_approved on the tape does not list its approvals")
    try:
        on_tape = {(str(e["step"]), normalize_path(str(e["path"])), str(e["rule_id"]))
                   for e in entries}
    except (KeyError, PolicyViolation) as exc:
        raise Fail(f"paths_approved on the tape holds a malformed approval ({exc})") from None
    if on_tape != set(given):
        raise Fail("the approvals on the tape's paths_approved differ from audit/answers.yaml")
    return f"{len(needed)} ask path(s) approved for their step in the recorded answers " \
           f"file ({str(digest)[:12]})"


EX_G = Gate("EX-G", "steps and ask paths needing approval have one (patch, step/path/rule)",
            ex_g_approvals, RUN_INPUTS)
