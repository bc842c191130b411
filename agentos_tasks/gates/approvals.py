"""EX-G: every changed step the recorded policy sends to review has an approval in
audit/answers.yaml that binds its patch file's actual sha256.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from agentos_tasks.policy import needs_approval

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext


@verdict
def ex_g_approvals(ctx: GateContext) -> Verdict:
    """Every changed step the recorded policy sends to review has an approval in
    audit/answers.yaml that binds the patch file's actual sha256."""
    require_chain(ctx)
    policy = recorded_policy(ctx)
    request = request_from_record(ctx.request_record)
    manifests = dict(executed_manifests(ctx))
    needed = [s for s in request.steps if needs_approval(policy, s)
              and manifests.get(s.id, {}).get("status") == "changed"]
    if not needed:
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
    return PASS, f"{len(needed)} step(s) approved, each binding its patch file's sha256"


EX_G = Gate("EX-G", "steps needing approval have one binding their patch", ex_g_approvals,
            RUN_INPUTS)
