"""TL-D and TL-F: the policy's word on a tool step.

TL-D: the recorded policy decision equals a fresh decision of the recorded policy on the
recorded diff. TL-F: when the policy requires review of the step, audit/answers.yaml has
an approval binding the patch's sha256.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import NA, PASS, Fail, Verdict
from agentos_tasks.gates.tool_step import GITLINK_MODE, landed_or_failed
from agentos_tasks.policy import decide_path, needs_approval

if TYPE_CHECKING:
    from agentos_tasks.gates.tool_step import ToolStep
    from agentos_tasks.policy import Policy


# ------------------------------------------------------------------ TL-D


# Denials check_changes can only make with the worktree at hand (file sizes, links, the
# git dir): a recorded deny by one of these is accepted when nothing of the step landed.
WORKTREE_ONLY_RULES: frozenset[str] = frozenset({
    "paths.symlink", "paths.hardlink", "limits.max_file_bytes", "paths.git",
})


def fresh_decision(policy: Policy, files: list[dict[str, Any]], allowed: list[str],
                   modes: dict[str, str | None], step: str) -> tuple[str, str, str]:
    """(allow|deny, rule_id, reason) of the recorded policy over a recorded diff: the
    check_changes rules that need no worktree (count, paths within the tool globs, .git,
    gitlinks)."""
    limit = policy.limits.max_changed_files
    if len(files) > limit:
        return "deny", "limits.max_changed_files", f"{len(files)} files > {limit}"
    for entry in files:
        for raw in (entry.get("path"), entry.get("old_path")):
            if raw is None:
                continue
            decision = decide_path(policy, str(raw), tool_paths=allowed, step=step)
            if not decision.allowed:
                return "deny", decision.rule_id, decision.reason
        if modes.get(str(entry.get("path"))) == GITLINK_MODE:
            return "deny", "paths.git", f"{entry.get('path')} is a gitlink"
    return "allow", "allow", f"{len(files)} change(s) allowed"


def tl_d(ts: ToolStep, strict: bool) -> Verdict:
    pack = ts.pack()
    policy = ts.policy()
    state, _event = landed_or_failed(ts)
    modes: dict[str, str | None] = {}
    if state == "landed":
        manifest = ts.manifest()
        modes = {str(f.get("path")): f.get("new_mode") for f in manifest.get("files", [])}
        check = manifest.get("policy_check") or {}
        if check.get("policy_sha256") != ts.ctx.sha256("audit/policy.yaml"):
            raise Fail(f"{ts.manifest_rel} was judged under another policy digest")
        if (check.get("decision"), check.get("rule_id")) != (
                pack["policy_check"]["decision"], pack["policy_check"]["rule_id"]):
            raise Fail(f"{ts.id}: result pack policy_check {pack['policy_check']} differs from "
                       f"the manifest's {check.get('decision')}/{check.get('rule_id')}")
    decision, rule_id, reason = fresh_decision(policy, pack["diff"]["files"],
                                               ts.allowed_paths(), modes, ts.id)
    recorded = (pack["policy_check"]["decision"], pack["policy_check"]["rule_id"])
    if recorded == (decision, rule_id):
        return PASS, f"{ts.id}: recorded {decision}/{rule_id} == fresh decision ({reason})"
    if (state == "failed" and recorded[0] == "deny" and decision == "allow"
            and recorded[1] in WORKTREE_ONLY_RULES):
        return PASS, f"{ts.id}: recorded deny/{recorded[1]} (a worktree-only rule; nothing " \
                     "landed)"
    raise Fail(f"{ts.id}: recorded policy_check {recorded[0]}/{recorded[1]}, a fresh decision "
               f"on the diff says {decision}/{rule_id} ({reason})")


# ------------------------------------------------------------------ TL-F


def tl_f(ts: ToolStep, strict: bool) -> Verdict:
    policy = ts.policy()
    if not needs_approval(policy, ts.step()):
        return NA, f"{ts.id}: the recorded policy requires no review of this step"
    state, _event = landed_or_failed(ts)
    if state != "landed":
        return NA, f"{ts.id}: needs review, but the step did not land (nothing to approve)"
    manifest = ts.manifest()
    if manifest.get("status") != "changed":
        return NA, f"{ts.id}: needs review, but the tool changed nothing (no patch)"
    actual = ts.ctx.sha256(ts.patch_rel)
    if actual is None:
        raise Fail(f"{ts.patch_rel} is missing")
    data = ts.ctx.answers_file()
    if data is None:
        raise Fail(f"{ts.id} needs a reviewer sign-off; audit/answers.yaml is missing")
    approval = data.get("approvals", {}).get(ts.id)
    if approval is None:
        raise Fail(f"{ts.id} needs a reviewer sign-off; none recorded in audit/answers.yaml")
    if approval["patch_sha256"] != actual:
        raise Fail(f"{ts.id}: sign-off by {approval['by']} binds patch "
                   f"{approval['patch_sha256'][:12]}, {ts.patch_rel} is {actual[:12]}")
    return PASS, f"{ts.id}: signed off by {approval['by']} at {approval['at']}, binding " \
                 f"{actual[:12]}"
