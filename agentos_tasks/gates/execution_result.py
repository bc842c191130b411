"""EX-H: execution_result.json is complete and consistent: every required field, an
absolute repo path that is the recorded request's, counts that recount from its steps
list, and (applied) one commit per changed step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import (
    PASS,
    RUN_INPUTS,
    Fail,
    Gate,
    Verdict,
    status_of,
    verdict,
)

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext


REQUIRED_RESULT_FIELDS = ("schema_version", "run", "status", "request", "policy", "sandbox",
                          "repo", "branch", "base", "pre_apply_head", "post_apply_head",
                          "commits_applied", "steps", "counts")
COUNT_KEYS = ("changed", "unchanged", "failed", "pending")


@verdict
def ex_h_result(ctx: GateContext) -> Verdict:
    """execution_result.json has every required field, an absolute repo path, counts that
    recount from its steps list, and (applied) one commit per changed step."""
    result = ctx.result
    missing = [k for k in REQUIRED_RESULT_FIELDS if k not in result]
    if missing:
        raise Fail(f"execution_result.json lacks {', '.join(missing)}")
    status = status_of(ctx)
    check_run_identity(ctx, result)
    check_outcome_recorded(ctx, result, status)
    recount = recount_steps(ctx, result)
    if status == "applied":
        if recount["failed"] or recount["pending"]:
            raise Fail("applied run with failed or pending steps")
        if recount["commits_applied"] != recount["changed"]:
            raise Fail(f"{recount['commits_applied']} commits applied for "
                       f"{recount['changed']} changed steps")
        if not result["pre_apply_head"] or not result["post_apply_head"]:
            raise Fail("applied run without pre/post-apply heads")
    elif recount["commits_applied"]:
        raise Fail(f"run {status}, yet commits_applied lists {recount['commits_applied']}")
    return PASS, f"every required field present; counts recount ({recount['steps']} steps, " \
                 f"{recount['changed']} changed, {recount['commits_applied']} commits)"


def check_run_identity(ctx: GateContext, result: dict[str, Any]) -> None:
    """The run, request digest, absolute repo and branch are the recorded request's (and,
    for the branch, the tape's)."""
    if not Path(str(result["repo"])).is_absolute():
        raise Fail(f"repo {result['repo']!r} is not an absolute path")
    if result["run"] != ctx.run_dir.name and result["run"] != ctx.request_record.get("id"):
        raise Fail(f"run {result['run']!r} is neither the run directory nor the request id")
    if (result.get("request") or {}).get("sha256") != ctx.request_record.get("sha256"):
        raise Fail("execution_result request sha256 differs from audit/request.json")
    if Path(str(result["repo"])) != Path(str(ctx.request_record.get("repo"))):
        raise Fail(f"execution_result names repo {result['repo']}, the recorded request "
                   f"{ctx.request_record.get('repo')}")
    branches = {str(e.get("branch")) for e in ctx.events
                if e.get("event") in ("worktree_created", "patches_applied")}
    branches |= {str(b) for b in (result["branch"], ctx.request_record.get("branch"))
                 if b is not None}
    if len(branches) > 1:
        raise Fail(f"execution_result, the request and the tape name different branches: "
                   f"{sorted(branches)}")


def check_outcome_recorded(ctx: GateContext, result: dict[str, Any], status: str) -> None:
    """A failed run records its failure (and the tape a step_failed or apply_failed); a
    rolled-back run has a rollback on the tape."""
    if status == "failed":
        if not isinstance(result.get("failure"), dict):
            raise Fail("run failed, yet execution_result records no failure")
        if not ctx.events_named("step_failed") and not ctx.events_named("apply_failed"):
            raise Fail("run failed, yet the tape has no step_failed or apply_failed")
    if status == "rolled_back" and not ctx.events_named("rollback"):
        raise Fail("run rolled_back, yet the tape has no rollback event")


def recount_steps(ctx: GateContext, result: dict[str, Any]) -> dict[str, int]:
    """The counts recomputed from the steps list (the request's steps, in order), which
    `counts` must equal; each changed/unchanged entry agrees with its manifest."""
    steps = result["steps"]
    counts = result["counts"]
    if not isinstance(steps, list) or not isinstance(counts, dict):
        raise Fail("steps is not a list or counts is not an object")
    ids = [s.get("id") for s in steps]
    if ids != ctx.step_ids():
        raise Fail(f"steps list {ids[:4]} differs from the request's steps")
    recount = {k: sum(s.get("status") == k for s in steps) for k in COUNT_KEYS}
    recount["steps"] = len(steps)
    recount["commits_applied"] = len(result["commits_applied"] or [])
    for key, value in recount.items():
        if counts.get(key) != value:
            raise Fail(f"counts.{key} is {counts.get(key)!r}, the lists give {value}")
    for entry in steps:
        if entry.get("status") in ("changed", "unchanged"):
            manifest = ctx.manifest(str(entry["id"]))
            for key in ("status", "commit", "patch_sha256"):
                if manifest.get(key) != entry.get(key):
                    raise Fail(f"step {entry['id']}: {key} differs from its manifest")
    return recount

EX_H = Gate("EX-H", "execution_result.json complete and consistent", ex_h_result,
            RUN_INPUTS)
