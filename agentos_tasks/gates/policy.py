"""R1 policy, R2 worktree proof, R3 evidence chain: recomputed from artifacts and git."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.model import Author, Request, Step, ToolSpec
from gates.context import GateContext

if TYPE_CHECKING:
    from gates import Gate, Missing

PASS, FAIL, NA = "PASS", "FAIL", "NOT_APPLICABLE"
Verdict = tuple[str, str]


def request_from_record(record: dict[str, Any]) -> Request:
    """Rebuild the request (as far as the policy needs it) from audit/request.json."""
    steps = []
    for raw in record["steps"]:
        tool = raw.get("tool")
        steps.append(Step(
            id=raw["id"], index=raw["index"], op=raw["op"], message=raw["message"],
            line=raw.get("line", 0), path=raw.get("path"),
            patch_paths=tuple(raw.get("patch_paths", ())), argv=tuple(raw.get("argv", ())),
            expect_exit=raw.get("expect_exit", 0),
            tool=ToolSpec(tool["adapter"], tool["prompt"], tuple(tool["paths"]),
                          tuple(tool["argv"]), tool.get("model")) if tool else None,
        ))
    return Request(source=Path(record["source"]), sha256=record["sha256"], version=1,
                   id=record["id"], repo=Path(record["repo"]), init_repo=record["init_repo"],
                   base=record.get("base"), branch=record.get("branch"), policy=None,
                   author=Author(**record["author"]), steps=tuple(steps))


def recorded_policy(ctx: GateContext) -> Any:
    from agentos_tasks.policy import load_policy

    ctx.note("audit/policy.yaml")
    path = ctx.run_dir / "audit" / "policy.yaml"
    if not path.is_file():
        raise Missing("audit/policy.yaml is missing")
    return load_policy(path)


# ------------------------------------------------------------------ R1


def r1_policy(ctx: GateContext) -> Verdict:
    policy = recorded_policy(ctx)
    request = request_from_record(ctx.request_record)
    if sha256_bytes(ctx.read_bytes("audit/request.yaml")) != request.sha256:
        return FAIL, "audit/request.yaml does not match the recorded request digest"
    from agentos_tasks.policy import check_request

    decision = check_request(policy, request)
    denied = ctx.events_named("policy_denied")
    if not ctx.chain.ok:
        return FAIL, f"tape does not verify: {ctx.chain.reason}"
    if decision.allowed:
        if denied:
            return FAIL, f"the recorded policy allows the request, but the tape has " \
                         f"policy_denied ({denied[-1].get('rule_id')})"
        return NA, "the recorded policy allows the request (nothing to deny)"
    result = ctx.result
    if result.get("status") != "denied":
        return FAIL, f"policy denies ({decision.rule_id}) but the run's status is " \
                     f"{result.get('status')!r}"
    if not any(e.get("rule_id") == decision.rule_id for e in denied):
        return FAIL, f"policy denies by {decision.rule_id}, tape has no policy_denied with it"
    started = ctx.events_named("step_start")
    if started:
        return FAIL, f"denied request, yet {len(started)} step(s) started"
    if ctx.events_named("patches_applied") or result.get("commits_applied"):
        return FAIL, "denied request, yet patches were applied"
    last = denied[-1]
    if "branch_head" not in last or "branch" not in last:
        return FAIL, "policy_denied does not record the branch and its head at decision time"
    recorded_head = last["branch_head"]
    branch = last["branch"] or ctx.request_record.get("branch")
    head = ctx.git.try_rev_parse(f"refs/heads/{branch}") \
        if branch and Path(ctx.request_record["repo"]).exists() else None
    if head != recorded_head:
        # None recorded = no repository/branch yet; a denied run must not create one either
        return FAIL, f"branch moved: {branch} is at {str(head)[:12]}, recorded " \
                     f"{str(recorded_head)[:12]} when the request was denied"
    return PASS, f"denied by {decision.rule_id}: no step started, branch unchanged"


# ------------------------------------------------------------------ R2


def r2_worktree(ctx: GateContext) -> Verdict:
    result = ctx.result
    status = result.get("status")
    if status in ("denied", "blocked"):
        return NA, f"run {status} before any step: no worktree expected"
    if not ctx.chain.ok:
        return FAIL, f"tape does not verify: {ctx.chain.reason}"
    created = ctx.events_named("worktree_created")
    if not created:
        return FAIL, "tape has no worktree_created event"
    repo = Path(result["repo"]).resolve()
    for event in created:
        path = Path(event["path"]).resolve()
        if path == repo or repo in path.parents:
            return FAIL, f"worktree {path} lies inside the target work tree {repo}"
        if event.get("base") != result.get("base"):
            return FAIL, "worktree_created base differs from execution_result base"
    first_wt = ctx.events.index(created[0])
    if any(ctx.events.index(e) < first_wt for e in ctx.events_named("step_start")):
        return FAIL, "a step started before the worktree was created"
    head = ctx.branch_head()
    if status != "applied":
        if head != result.get("base"):
            return FAIL, f"run not applied, yet branch head {str(head)[:12]} != base " \
                         f"{str(result.get('base'))[:12]}"
        return PASS, "steps ran in a worktree; branch untouched (not applied)"
    pre, post = result.get("pre_apply_head"), result.get("post_apply_head")
    if not isinstance(pre, str) or not isinstance(post, str):
        return FAIL, "execution_result lacks pre/post-apply heads for an applied run"
    applied = ctx.events_named("patches_applied")
    if not applied or applied[-1].get("post_apply_head") != post:
        return FAIL, "execution_result post_apply_head has no matching patches_applied event"
    if head != post:
        return FAIL, f"branch head {str(head)[:12]} != recorded post-apply head {str(post)[:12]}"
    rewritten = ctx.git.run("for-each-ref", "--format=%(refname)", "refs/replace/").text
    grafts = ctx.git.git_dir() / "info" / "grafts"
    if rewritten.strip() or grafts.exists():
        return FAIL, "the repository rewrites history for git (refs/replace or info/grafts): " \
                     "plain git would show other content than the commits hold"
    commits = ctx.git.commits_between(pre, post)
    changed = [s for s in ctx.step_ids() if ctx.manifest(s).get("status") == "changed"]
    patches = b"".join(ctx.read_bytes(f"patches/{step_id}.patch") for step_id in changed)
    patch_ids = [pid for pid, _ in ctx.git.patch_ids(patches)] if patches else []
    if len(commits) != len(changed):
        return FAIL, f"{pre[:10]}..{post[:10]} holds {len(commits)} commits for " \
                     f"{len(changed)} patches"
    branch_ids = ctx.git.range_patch_ids(pre, post)
    if [c for _, c in branch_ids] != commits or len(patch_ids) != len(changed):
        return FAIL, "a commit or patch file holds no diff (empty or unreadable patch)"
    if [pid for pid, _ in branch_ids] != patch_ids:
        return FAIL, "patch ids of the branch's commits differ from the patch files (content " \
                     "or order)"
    return PASS, f"worktree outside the target; {len(commits)} commits == patches, same " \
                 "patch ids and order; branch at post-apply head"


# ------------------------------------------------------------------ R3


def r3_evidence(ctx: GateContext) -> Verdict:
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
    # per-step agreement: manifests, patches, tape step_end
    step_end: dict[str, dict[str, Any]] = {}
    for event in ctx.events_named("step_end"):
        step_end[event["step"]] = event
    for entry in result.get("steps", []):
        if entry["status"] not in ("changed", "unchanged"):
            continue
        step_id = entry["id"]
        end = step_end.get(step_id)
        if end is None:
            return FAIL, f"step {step_id} is {entry['status']} but the tape has no step_end"
        manifest_sha = ctx.sha256(f"steps/{step_id}.json")
        if manifest_sha is None:
            return FAIL, f"steps/{step_id}.json is missing"
        if end.get("manifest_sha256") != manifest_sha:
            return FAIL, f"steps/{step_id}.json differs from the digest on the tape"
        manifest = ctx.manifest(step_id)
        for key in ("commit", "patch_sha256", "status"):
            if manifest.get(key) != entry.get(key) or end.get(key) != manifest.get(key):
                return FAIL, f"step {step_id}: {key} disagrees between manifest, tape and " \
                             "execution_result"
        if manifest["status"] == "changed":
            if ctx.sha256(f"patches/{step_id}.patch") != manifest["patch_sha256"]:
                return FAIL, f"patches/{step_id}.patch is missing or differs from its manifest"
        elif ctx.exists(f"patches/{step_id}.patch"):
            return FAIL, f"unchanged step {step_id} has a patch file"
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


def _gates() -> list[Gate]:
    artifacts = ("audit/*", "execution_result.json", "steps/*.json", "patches/*.patch")
    return [
        Gate("R1", "policy decision recomputed from the recorded request and policy",
             r1_policy, ("audit/*", "execution_result.json"), uses_repo=True),
        Gate("R2", "steps ran in a worktree; branch holds exactly the patches", r2_worktree,
             artifacts, uses_repo=True),
        Gate("R3", "tape chain, head, checksums and execution_result agree", r3_evidence,
             (*artifacts, "logs/*", "tools/*/*"), uses_repo=True),
    ]


from gates import Gate  # noqa: E402  (the framework imports this module last)

GATES = _gates()
