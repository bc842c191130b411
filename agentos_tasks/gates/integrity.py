"""R3: the evidence is whole: the tape chain and tape_head.json verify; manifests,
patches, tape and execution_result agree; checksums.json and SHA256SUMS match every
artifact and the final tree. A tape rewritten with a consistent chain but missing its
last step_end or run_end fails here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import FAIL, PASS, RUN_INPUTS, Fail, Gate, Verdict, verdict

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext


@verdict
def r3_evidence(ctx: GateContext) -> Verdict:
    """The tape verifies and ends with the run_end of execution_result's status; every
    changed or unchanged step agrees between manifest, tape and execution_result; an
    applied run's run_end binds execution_result and checksums, which match everything."""
    chain = ctx.chain
    if not chain.ok:
        return FAIL, f"tape: {chain.reason}"
    result = ctx.result
    status = result.get("status")
    ends = ctx.events_named("run_end")
    if not ends:
        return FAIL, "tape has no run_end"
    last = ctx.events[-1]
    if last.get("event") != "run_end" or last.get("status") != status:
        return FAIL, f"tape's last event is {last.get('event')}/{last.get('status')}, " \
                     f"execution_result says {status}"
    check_steps_agree(ctx, result)
    if status != "applied":
        return PASS, f"tape verifies ({chain.count} events) and agrees with " \
                     f"execution_result ({status})"
    if last.get("execution_result_sha256") != ctx.sha256("execution_result.json"):
        return FAIL, "execution_result.json differs from the digest in run_end"
    if last.get("checksums_sha256") != ctx.sha256("audit/checksums.json"):
        return FAIL, "audit/checksums.json differs from the digest in run_end"
    applied = ctx.events_named("patches_applied")
    if not applied or applied[-1].get("commits") != result.get("commits_applied"):
        return FAIL, "commits_applied differs from the tape's patches_applied"
    return check_checksums(ctx, chain.count)


def check_steps_agree(ctx: GateContext, result: dict[str, Any]) -> None:
    """Per step: manifest, patch file, the tape's step_end and execution_result agree."""
    step_end: dict[str, dict[str, Any]] = {}
    for event in ctx.events_named("step_end"):
        step_end[event["step"]] = event
    for entry in result.get("steps", []):
        if entry["status"] not in ("changed", "unchanged"):
            continue
        step_id = entry["id"]
        end = step_end.get(step_id)
        if end is None:
            raise Fail(f"step {step_id} is {entry['status']} but the tape has no step_end")
        manifest_sha = ctx.sha256(f"steps/{step_id}.json")
        if manifest_sha is None:
            raise Fail(f"steps/{step_id}.json is missing")
        if end.get("manifest_sha256") != manifest_sha:
            raise Fail(f"steps/{step_id}.json differs from the digest on the tape")
        manifest = ctx.manifest(step_id)
        for key in ("commit", "patch_sha256", "status"):
            if manifest.get(key) != entry.get(key) or end.get(key) != manifest.get(key):
                raise Fail(f"step {step_id}: {key} disagrees between manifest, tape and "
                           "execution_result")
        if manifest["status"] == "changed":
            if ctx.sha256(f"patches/{step_id}.patch") != manifest["patch_sha256"]:
                raise Fail(f"patches/{step_id}.patch is missing or differs from its manifest")
        elif ctx.exists(f"patches/{step_id}.patch"):
            raise Fail(f"unchanged step {step_id} has a patch file")

def check_checksums(ctx: GateContext, count: int) -> Verdict:
    from agentos_tasks.evidence import tree_digests
    from agentos_tasks.layout import artifact_files

    sums = ctx.json("audit/checksums.json")
    listed: dict[str, str] = sums.get("artifacts", {})
    present = set(artifact_files(ctx.run_dir))
    if set(listed) != present:
        extra = sorted(present - set(listed))
        gone = sorted(set(listed) - present)
        return FAIL, f"checksums.json does not cover the artifacts: unlisted {extra[:3]}, " \
                     f"missing {gone[:3]}"
    for rel, digest in listed.items():
        if ctx.sha256(rel) != digest:
            return FAIL, f"{rel} does not match checksums.json"
    sha256sums = ctx.read_bytes("audit/SHA256SUMS").decode()
    expected = "".join(f"{d}  {p}\n" for p, d in sorted(listed.items()))
    if sha256sums != expected:
        return FAIL, "audit/SHA256SUMS disagrees with checksums.json"
    tree = sums.get("final_tree", {})
    actual = tree_digests(ctx.git, sums["tree_commit"], sorted(tree))
    if actual != tree:
        bad = sorted(p for p in tree if actual.get(p) != tree[p])
        return FAIL, f"final tree files differ from checksums.json: {bad[:3]}"
    if sums["tree_commit"] != ctx.result.get("post_apply_head"):
        return FAIL, "checksums.json tree_commit is not the post-apply head"
    return PASS, f"chain of {count} events verifies; {len(listed)} artifacts and " \
                 f"{len(tree)} final-tree files match; execution_result agrees with the tape"


R3 = Gate("R3", "tape chain, head, checksums and execution_result agree", r3_evidence,
          (*RUN_INPUTS, "logs/*", "tools/*/*"), uses_repo=True)
