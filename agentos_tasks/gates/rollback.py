"""EX-F: a rollback on the tape and audit/rollback_proof.json come together, and the
proof's trees are recomputed from git: the branch went back to the target head (and stays
there unless a later apply started from exactly there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import (
    NA,
    PASS,
    RUN_INPUTS,
    Fail,
    Gate,
    Verdict,
    event_index,
    require_chain,
    status_of,
    verdict,
)

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext


@verdict
def ex_f_rollback(ctx: GateContext) -> Verdict:
    """A rollback on the tape has a proof (and vice versa) whose trees are recomputed from
    git: the branch was put back at target_head with target_tree, and still is unless a
    later apply succeeded from exactly there."""
    require_chain(ctx)
    status = status_of(ctx)
    rollbacks = event_index(ctx, ("rollback",))
    has_proof = ctx.exists("audit/rollback_proof.json")
    if not rollbacks and not has_proof:
        # a status of rolled_back without any rollback is EX-H's finding (status vs tape)
        return NA, "no rollback on the tape and no rollback_proof.json"
    if not rollbacks:
        raise Fail("audit/rollback_proof.json exists but the tape has no rollback event")
    if not has_proof:
        raise Fail("tape has a rollback event but audit/rollback_proof.json is missing")
    proof = read_proof(ctx, ctx.events[rollbacks[-1]])
    target_head, target_tree = proof["target_head"], proof["target_tree"]  # read_proof checked
    check_proof_trees(ctx, proof)
    head = ctx.git.try_rev_parse(f"refs/heads/{proof.get('branch')}")
    later = [i for i in event_index(ctx, ("patches_applied",)) if i > rollbacks[-1]]
    if later:
        if status == "rolled_back":
            raise Fail("execution_result says rolled_back, yet patches were applied after "
                       "the last rollback")
        if ctx.result.get("pre_apply_head") != target_head:
            raise Fail("a later apply did not start from the rolled-back head")
        return PASS, f"rolled back to {target_head[:12]} (tree {target_tree[:12]}), later " \
                     "applied from there"
    if head != target_head:
        raise Fail(f"branch head {str(head)[:12]} != rolled-back head {target_head[:12]}")
    return PASS, f"branch restored to {target_head[:12]}; tree {target_tree[:12]} before " \
                 "apply == after rollback"


def read_proof(ctx: GateContext, event: dict[str, Any]) -> dict[str, Any]:
    """audit/rollback_proof.json, bound by the last rollback event's proof_sha256, with
    before/after trees, a target the event names too, and `match` true in both."""
    proof = ctx.json("audit/rollback_proof.json")
    if not isinstance(proof, dict):
        raise Fail("rollback_proof.json is not an object")
    if event.get("proof_sha256") != ctx.sha256("audit/rollback_proof.json"):
        raise Fail("rollback_proof.json differs from the proof_sha256 on the rollback event")
    before, after = proof.get("before"), proof.get("after")
    target_head, target_tree = proof.get("target_head"), proof.get("target_tree")
    if not (isinstance(before, dict) and isinstance(after, dict)
            and before.get("tree") and after.get("tree") and target_head and target_tree):
        raise Fail("rollback_proof.json lacks before/after tree digests or its target")
    if proof.get("match") is not True or event.get("match") is not True:
        raise Fail("rollback_proof says the branch was not restored (match is not true)")
    if after != {"head": target_head, "tree": target_tree}:
        raise Fail(f"after-rollback state {after} != target {target_head}/{target_tree}")
    if event.get("restored") != target_head or event.get("branch") != proof.get("branch"):
        raise Fail("rollback event and proof name different targets")
    return proof


def check_proof_trees(ctx: GateContext, proof: dict[str, Any]) -> None:
    """The proof's trees are what git says: target_tree is target_head's tree and
    before.tree is before.head's."""
    target_head, target_tree = proof.get("target_head"), proof.get("target_tree")
    before = proof["before"]
    git = ctx.git
    if git.try_rev_parse(f"{target_head}^{{tree}}") != target_tree:
        raise Fail(f"target_tree {str(target_tree)[:12]} is not the tree of "
                   f"{str(target_head)[:12]} in the repository")
    actual_before = git.try_rev_parse(f"{before.get('head')}^{{tree}}")
    if actual_before is None:
        raise Fail(f"before.head {str(before.get('head'))[:12]} is not a commit in the "
                   "repository")
    if actual_before != before.get("tree"):
        raise Fail("before.tree is not the tree of before.head in the repository")

EX_F = Gate("EX-F", "rollback proof recomputed from git", ex_f_rollback, RUN_INPUTS,
            uses_repo=True)
