"""R1 and EX-A: the recorded policy, re-decided over the recorded request and over what
every step changed.

R1 recomputes the pre-run decision from audit/request.json + audit/policy.yaml: a denied
run exited denied, the tape has policy_denied with that rule, no step started and the
branch did not move. EX-A re-decides every operation and path (rename sources too) under
the recorded policy, checks that what each step did is what its request step fixes (a
write lands exactly its path and content, a run step ran exactly its argv, ...), and that
the policy digest on the tape, in every manifest and in execution_result is
sha256(audit/policy.yaml).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.gates.common import (
    FAIL,
    NA,
    PASS,
    RUN_INPUTS,
    Fail,
    Gate,
    Verdict,
    executed_manifests,
    last_step_end,
    patch_paths,
    recorded_policy,
    request_from_record,
    require_chain,
    tool_dirs,
    verdict,
    wrapped_argv,
)
from agentos_tasks.policy import check_request, decide_path, normalize_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.model import Request, Step
    from agentos_tasks.policy import Policy


# ------------------------------------------------------------------ R1


def r1_policy(ctx: GateContext) -> Verdict:
    policy = recorded_policy(ctx)
    request = request_from_record(ctx.request_record)
    if sha256_bytes(ctx.read_bytes("audit/request.yaml")) != request.sha256:
        return FAIL, "audit/request.yaml does not match the recorded request digest"
    decision = check_request(policy, request)
    denied = ctx.events_named("policy_denied")
    if not ctx.chain.ok:
        return FAIL, f"tape does not verify: {ctx.chain.reason}"
    if decision.allowed:
        if denied:
            approved = approved_after_denial(ctx, policy, request, denied[-1])
            if approved is not None:
                return PASS, approved
            redecided = redecided_under_another_policy(ctx, denied[-1])
            if redecided is not None:
                return PASS, redecided
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


def redecided_under_another_policy(ctx: GateContext, denial: dict[str, Any]) -> str | None:
    """Denied under one policy, then run again under another (`policy=`): the tape shows
    the policy in force at the denial (the policy_loaded before it) and a later
    policy_loaded of the recorded policy, whose decision (recomputed above) allows. The
    earlier policy's bytes are not kept, so its denial is reported, not recomputed."""
    loaded = ctx.events_named("policy_loaded")
    at = int(denial.get("seq", -1))
    before = [e for e in loaded if int(e.get("seq", -1)) < at]
    after = [e for e in loaded if int(e.get("seq", -1)) > at]
    current = sha256_bytes(ctx.read_bytes("audit/policy.yaml"))
    if not before or not after or after[-1].get("policy_sha256") != current \
            or before[-1].get("policy_sha256") == current:
        return None
    return (f"denied by {denial.get('rule_id')} under an earlier policy "
            f"{str(before[-1].get('policy_sha256'))[:12]}, then decided again under the "
            f"recorded policy {current[:12]}, which allows the request")


def approved_after_denial(ctx: GateContext, policy: Policy, request: Request,
                          denial: dict[str, Any]) -> str | None:
    """When the run was first denied by an ask rule and went on once an answers file
    approved the path: what R1 found (else None). The recorded policy without approvals
    must deny exactly as the tape says, by an ask rule, and paths_approved must follow the
    last policy_denied (EX-G checks that the approvals are the recorded answers file's)."""
    bare = check_request(dataclasses.replace(policy, approved_paths=frozenset()), request)
    if bare.allowed or not bare.approvable:
        return None
    if (bare.rule_id, bare.step) != (denial.get("rule_id"), denial.get("step")):
        return None
    seq = int(denial.get("seq", -1))
    later = [e for e in ctx.events_named("paths_approved") if int(e.get("seq", -1)) > seq]
    if not later:
        return None
    return f"denied by ask rule {bare.rule_id} (step {bare.step}: {bare.subject}), then " \
           f"approved by the answers file (paths_approved seq {later[0].get('seq')}) and allowed"


# ------------------------------------------------------------------ EX-A


PROGRAM_KEYS = ("sandbox", "log", "log_sha256", "output_bytes", "output_truncated",
                "timed_out")
TOOL_KEYS = ("tool", "tool_result_pack_sha256")


def check_step_record(step: Step, record: dict[str, Any], manifest: dict[str, Any],
                      has_attributes: Callable[[str], bool] | None = None) -> None:
    """What a manifest may say is fixed by its request step: op, message and index; a
    write lands exactly its path with the requested content; a delete only deletes its
    path; a patch stays within its recorded paths; a run step ran exactly its argv and
    exited as expected; only run/tool steps record a program, only tool steps a tool."""
    where = f"steps/{step.id}.json"
    for key, want in (("op", step.op), ("index", step.index), ("message", step.message)):
        if manifest.get(key) != want:
            raise Fail(f"{where}: {key} {manifest.get(key)!r}, the request says {want!r}")
    if step.op == "write":
        check_write_record(step, record, manifest, has_attributes)
    if step.op == "delete":
        check_delete_record(step, manifest)
    if step.op == "patch":
        check_patch_record(step, manifest)
    check_program_record(step, manifest, where)


def request_path(step: Step) -> str:
    """The path a write or delete step names (the request schema requires one)."""
    if step.path is None:
        raise Fail(f"the recorded request's {step.op} step {step.id} names no path")
    return step.path


def check_write_record(step: Step, record: dict[str, Any], manifest: dict[str, Any],
                       has_attributes: Callable[[str], bool] | None) -> None:
    """A write lands exactly its path with the requested content (other bytes only where
    a .gitattributes in the tree can explain them)."""
    path = request_path(step)
    files = manifest.get("files") or []
    changed = manifest.get("status") == "changed"
    want_files = [(normalize_path(path), record.get("content_sha256"))]
    written = [(f.get("path"), f.get("written_sha256", f.get("sha256"))) for f in files]
    normalised = [f for f in files if f.get("written_sha256") not in (None, f.get("sha256"))]
    if normalised and (has_attributes is None
                       or not has_attributes(str(manifest.get("commit")))):
        raise Fail(f"write step {step.id} landed other bytes than it wrote, and the tree "
                   "has no .gitattributes that could explain it")
    if (changed and written != want_files) or \
            any(f.get("status") not in ("A", "M") for f in files):
        raise Fail(f"write step {step.id} must land exactly {step.path} with content "
                   f"{str(record.get('content_sha256'))[:12]}; its manifest lists "
                   f"{[(f.get('path'), str(f.get('sha256'))[:12]) for f in files][:3]}")


def check_delete_record(step: Step, manifest: dict[str, Any]) -> None:
    """A delete only deletes its path."""
    path = request_path(step)
    files = manifest.get("files") or []
    changed = manifest.get("status") == "changed"
    if changed and [(f.get("path"), f.get("status")) for f in files] != \
            [(normalize_path(path), "D")]:
        raise Fail(f"delete step {step.id} may only delete {step.path}; its manifest "
                   f"lists {[(f.get('path'), f.get('status')) for f in files][:3]}")


def check_patch_record(step: Step, manifest: dict[str, Any]) -> None:
    """A patch step changes only paths its patch touches (rename sources too)."""
    allowed = {normalize_path(p) for p in step.patch_paths}
    for entry in manifest.get("files") or []:
        for raw in (entry.get("path"), entry.get("old_path")):
            if raw is not None and raw not in allowed:
                raise Fail(f"patch step {step.id} changed {raw}, which its patch does "
                           f"not touch ({sorted(allowed)[:3]})")


def check_program_record(step: Step, manifest: dict[str, Any], where: str) -> None:
    """Only run and tool steps record a program: in a sandbox, exiting as the request
    expects; a run step ran exactly its argv, a tool step its tool's."""
    if step.op in ("run", "tool"):
        if not isinstance(manifest.get("sandbox"), dict):
            raise Fail(f"{where}: {step.op} step without a sandbox record")
        if manifest.get("exit_code") != step.expect_exit:
            raise Fail(f"{where}: exit code {manifest.get('exit_code')!r}, the request "
                       f"expects {step.expect_exit}")
    else:
        extra = [k for k in (*PROGRAM_KEYS, *TOOL_KEYS) if k in manifest]
        if extra or manifest.get("exit_code") is not None:
            raise Fail(f"{where}: a {step.op} step runs no program, yet its manifest "
                       f"records {extra or ['exit_code']}")
    if step.op == "run":
        if not wrapped_argv(manifest["sandbox"].get("wrapper_argv"), list(step.argv)):
            raise Fail(f"{where}: the sandbox ran something other than the request's argv "
                       f"{list(step.argv)[:3]}")
        if any(k in manifest for k in TOOL_KEYS):
            raise Fail(f"{where}: a run step with a tool record")
    if step.op == "tool":
        tool = manifest.get("tool")
        if not isinstance(tool, dict) or not manifest.get("tool_result_pack_sha256"):
            raise Fail(f"{where}: a tool step without its tool record")
        if not wrapped_argv(manifest["sandbox"].get("wrapper_argv"),
                            [str(a) for a in tool.get("argv") or []]):
            raise Fail(f"{where}: the sandbox ran something other than the tool's argv")

@verdict
def ex_a_policy(ctx: GateContext) -> Verdict:
    """Every operation and path on the tape (and in manifests and patches) is allowed by
    audit/policy.yaml, re-decided here; the policy digest on the tape, in every manifest
    and in execution_result equals sha256(audit/policy.yaml)."""
    require_chain(ctx)
    policy = recorded_policy(ctx)
    digest = ctx.sha256("audit/policy.yaml")
    request = request_from_record(ctx.request_record)
    steps = {s.id: s for s in request.steps}
    check_started_steps(ctx, policy, request, steps)
    manifests = executed_manifests(ctx)
    # patches of steps without tool globs are parsed in one git call, then judged alike
    plain = [s for s, m in manifests if m.get("status") == "changed"
             and steps[s].op != "tool"]
    plain_paths = list(dict.fromkeys(patch_paths(ctx, [f"patches/{s}.patch" for s in plain])))
    decided = decide_plain_patches(ctx, policy, plain, plain_paths)
    ends = last_step_end(ctx)
    for step_id, manifest in manifests:
        decided += decide_step_paths(ctx, policy, steps[step_id], manifest,
                                     end=ends.get(step_id, {}), patch_decided=step_id in plain)
        recorded = (manifest.get("policy_check") or {}).get("policy_sha256")
        if recorded != digest:
            raise Fail(f"steps/{step_id}.json was checked under policy {str(recorded)[:12]}, "
                       f"audit/policy.yaml is {str(digest)[:12]}")
    check_step_records(ctx, steps, manifests)
    check_plain_patches_listed(ctx, manifests, plain, plain_paths)
    check_tool_dirs(ctx, request)
    check_policy_digests(ctx, digest)
    started = len(ctx.events_named("step_start"))
    return PASS, f"{started} step run(s) and {decided} path decision(s) allowed by policy " \
                 f"{policy.id} ({str(digest)[:12]})"


def check_started_steps(ctx: GateContext, policy: Policy, request: Request,
                        steps: dict[str, Step]) -> None:
    """Every step the tape starts is a request step with its op; when steps ran, the
    whole request passes the pre-run check again."""
    for event in ctx.events_named("step_start"):
        step = steps.get(str(event.get("step")))
        if step is None:
            raise Fail(f"tape starts step {event.get('step')!r}, which the request lacks")
        if event.get("op") != step.op:
            raise Fail(f"step {step.id}: tape says op {event.get('op')!r}, request {step.op!r}")
    if ctx.events_named("step_start"):
        decision = check_request(policy, request)
        if not decision.allowed:
            raise Fail(f"step {decision.step} is denied by {decision.rule_id} under the "
                       f"recorded policy: {decision.reason}")


def patch_with(ctx: GateContext, plain: list[str], path: str) -> str:
    """The first of the `plain` steps whose patch file names `path` ("?" for none)."""
    return next((s for s in plain if path.encode() in ctx.read_bytes(f"patches/{s}.patch")),
                "?")


def decide_plain_patches(ctx: GateContext, policy: Policy, plain: list[str],
                         plain_paths: list[str]) -> int:
    """Every path the non-tool steps' patches touch is allowed; returns the count. A path
    only an ask rule denies is allowed when every step whose patch touches it had it
    approved (audit/answers.yaml)."""
    for path in plain_paths:
        decision = decide_path(policy, path)
        if decision.approvable:
            touching = [s for s in plain if path in patch_paths(ctx, [f"patches/{s}.patch"])]
            denied = [s for s in touching if not decide_path(policy, path, step=s).allowed]
            if touching and not denied:
                continue
            decision = dataclasses.replace(decision, step=(denied or ["?"])[0])
        if not decision.allowed:
            step = decision.step or patch_with(ctx, plain, path)
            raise Fail(f"patches/{step}.patch changes {path}: denied by {decision.rule_id} "
                       "under the recorded policy")
    return len(plain_paths)


def decide_step_paths(ctx: GateContext, policy: Policy, step: Step,
                      manifest: dict[str, Any], *, end: dict[str, Any],
                      patch_decided: bool) -> int:
    """Every path one step changed (manifest, step_end and, unless decided with the plain
    patches, its patch file) is allowed under its tool globs, and so is every ignored
    file it left; returns the number of changed paths decided."""
    tool_paths = step.tool.paths if step.op == "tool" and step.tool is not None else None
    paths: list[str] = []
    for entry in manifest.get("files", []):
        paths += [p for p in (entry.get("path"), entry.get("old_path")) if p]
    paths += [str(f.get("path")) for f in end.get("files", [])]
    if manifest.get("status") == "changed" and not patch_decided:
        paths += patch_paths(ctx, [f"patches/{step.id}.patch"])
    ignored = set(manifest.get("ignored", []))
    unique = list(dict.fromkeys(paths))
    for path in unique:
        decision = decide_path(policy, path, tool_paths=tool_paths, step=step.id)
        if not decision.allowed:
            raise Fail(f"step {step.id} changed {path}: denied by {decision.rule_id} "
                       f"under the recorded policy")
    for path in sorted(ignored):
        decision = decide_path(policy, path, tool_paths=tool_paths, ignored=True,
                               step=step.id)
        if not decision.allowed:
            raise Fail(f"step {step.id} left ignored {path}: denied by "
                       f"{decision.rule_id} under the recorded policy")
    return len(unique)


def check_step_records(ctx: GateContext, steps: dict[str, Step],
                       manifests: list[tuple[str, dict[str, Any]]]) -> None:
    """What each step did is fixed by its request step (EX-D ties manifests to the
    commits)."""
    records = {str(r.get("id")): r for r in ctx.request_record["steps"]}

    def has_attributes(commit: str) -> bool:
        names = ctx.git.run("ls-tree", "-r", "--name-only", "-z", "--", commit,
                            check=False).stdout.split(b"\0")
        return any(n == b".gitattributes" or n.endswith(b"/.gitattributes") for n in names)

    for step_id, manifest in manifests:
        check_step_record(steps[step_id], records[step_id], manifest, has_attributes)


def check_plain_patches_listed(ctx: GateContext, manifests: list[tuple[str, dict[str, Any]]],
                               plain: list[str], plain_paths: list[str]) -> None:
    """Every path a non-tool step's patch touches is listed by a manifest."""
    listed = {str(p) for s, m in manifests if s in plain for f in m.get("files", [])
              for p in (f.get("path"), f.get("old_path")) if p}
    for path in plain_paths:
        if path not in listed:
            raise Fail(f"patches/{patch_with(ctx, plain, path)}.patch changes {path}, which "
                       "no manifest lists")


def check_tool_dirs(ctx: GateContext, request: Request) -> None:
    """Only the request's tool steps leave tools/<step>/."""
    tools = {s.id for s in request.steps if s.op == "tool"}
    strays = [name for name in tool_dirs(ctx) if name not in tools]
    if strays:
        raise Fail(f"tools/{strays[0]}/ exists, but {strays[0]!r} is not a tool step of the "
                   "request")


def check_policy_digests(ctx: GateContext, digest: str | None) -> None:
    """The tape's policy_loaded and execution_result name sha256(audit/policy.yaml)."""
    loaded = ctx.events_named("policy_loaded")
    if not loaded:
        raise Fail("tape has no policy_loaded event")
    if loaded[-1].get("policy_sha256") != digest:
        raise Fail(f"policy_loaded records policy {str(loaded[-1].get('policy_sha256'))[:12]}, "
                   f"audit/policy.yaml is {str(digest)[:12]}")
    result_digest = (ctx.result.get("policy") or {}).get("sha256")
    if result_digest != digest:
        raise Fail(f"execution_result names policy {str(result_digest)[:12]}, "
                   f"audit/policy.yaml is {str(digest)[:12]}")

R1 = Gate("R1", "policy decision recomputed from the recorded request and policy",
          r1_policy, ("audit/*", "execution_result.json"), uses_repo=True)
EX_A = Gate("EX-A", "every operation and path is allowed by the recorded policy; each step "
            "did what its request step fixes", ex_a_policy, (*RUN_INPUTS, "tools/*"))
