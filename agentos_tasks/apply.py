"""The `apply` and `rollback` tasks: land every step's commit on the target branch once,
after all steps passed and approvals are in; undo it while it is still the branch head.
The git mechanics are landing.py's.

Invariant: after apply the run is sealed: nothing re-executes and a changed request is
refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks import faults, secretenv
from agentos_tasks.answers import check_approvals
from agentos_tasks.errors import EXIT_POLICY, EXIT_STATE, AgentosError
from agentos_tasks.evidence import SCHEMA_VERSION, input_digests, load_manifest, write_result
from agentos_tasks.fsutil import (
    read_json,
    sha256_file,
    write_json,
)
from agentos_tasks.landing import (
    CheckedOut,
    am_in_private,
    checked_out,
    move_branch,
    pack_into,
    refuse_links_in_target,
)
from agentos_tasks.layout import evidence_files
from agentos_tasks.tape import read_events
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from agentos_tasks.git import Git
    from agentos_tasks.records import Manifest
    from agentos_tasks.runctx import RunContext


class ApplyClosed(AgentosError):
    """An apply failure whose tape, result and rollback proof are already written."""


def apply_task(ctx: RunContext) -> None:
    """Land every step's patch on the target branch, once, after all steps passed.

    A refusal (missing approval, moved branch, dirty target, altered patch, a landed
    commit that differs from its step commit) still closes the tape: apply_failed, a
    failed execution_result, run_end. See landing.py for how the branch moves.
    """
    if ctx.sealed:
        # killed after the applied record was written, before the tape said so: say it now
        record_applied_if_missing(ctx)
        return
    faults.point("apply.begin")
    try:
        refuse_leaked_secrets(ctx)
        _apply(ctx)
    except ApplyClosed:
        raise
    except AgentosError as err:
        t = ctx.tape
        t.append("apply_failed", reason=err.message)
        write_result(ctx, "failed", failure={"step": None, "reason": err.message})
        t.append("run_end", status="failed", reason="apply refused")
        raise


def refuse_leaked_secrets(ctx: RunContext) -> None:
    """No run whose evidence holds a secret's value is sealed (landed): every evidence
    file is scanned for the values of the policy's secrets (and their encodings). A secret
    a tool step of this run received must be set now, or nothing could tell: apply waits
    for it rather than seal unchecked."""
    used: dict[str, None] = {}
    for step in ctx.need_request().steps:
        manifest: dict[str, Any] = dict(load_manifest(ctx, step.id) or {})
        sandbox: Any = manifest.get("sandbox") or {}
        used.update(dict.fromkeys(str(n) for n in sandbox.get("secrets") or ()))
    unset = [name for name in used if not os.environ.get(name)]
    if unset:
        raise AgentosError(
            f"cannot apply: secret {', '.join(unset)} is not set, so the evidence cannot be "
            "checked for it before the run is sealed", code=EXIT_POLICY,
            hint=f"export {unset[0]} (the value the tool step used) and re-run the same "
                 "command")
    values = secretenv.secret_values(secretenv.secret_names(ctx.policy), os.environ)
    if values:
        secretenv.refuse_leaks(secretenv.leaks(ctx.paths.root, evidence_files(ctx.paths.root),
                                               values), "cannot apply")


def target_checkout(ctx: RunContext, git: Git, branch: str, head: str) -> CheckedOut | None:
    return checked_out(git, branch, head=head, view_dir=ctx.paths.state / "checkout.git",
                       extra_objects=(ctx.paths.run_git_dir / "objects",))


def _checked_manifests(ctx: RunContext) -> tuple[list[Manifest], list[Path]]:
    """Every step's manifest (all must exist), approvals checked, and the patch files of
    the changed steps, each still what its manifest recorded."""
    req = ctx.need_request()
    manifests = []
    for step in req.steps:
        manifest = load_manifest(ctx, step.id)
        if manifest is None:
            raise AgentosError(f"cannot apply: step {step.id} has no manifest", code=EXIT_STATE)
        manifests.append(manifest)
    check_approvals(ctx, req, manifests)
    changed = [m for m in manifests if m["status"] == "changed"]
    patches = [ctx.paths.root / str(m["patch"]) for m in changed]
    for manifest, patch in zip(changed, patches, strict=True):
        if not patch.exists() or sha256_file(patch) != manifest["patch_sha256"]:
            raise AgentosError(f"cannot apply: {patch} is missing or differs from its manifest",
                               code=EXIT_STATE, hint="the evidence was altered; start a new run")
    return manifests, patches


def _finish_interrupted(ctx: RunContext, branch: str, pre: str, post: str) -> None:
    """An apply of ours moved the branch and was killed before it was recorded: bring a
    checkout that still shows `pre` to `post`."""
    git = ctx.target_git
    checkout = target_checkout(ctx, git, branch, pre)
    if checkout is not None and checkout.git.out("write-tree") == git.tree_of(pre):
        checkout.move(pre, post)


def _land(ctx: RunContext, branch: str, pre: str, *, changed: list[Manifest],
          patches: list[Path], expected_tree: str, interrupted: bool) -> str:
    """am in private, check, pack into the target, move its checkout, move the branch;
    returns the new head (== pre when nothing changed)."""
    git, wt_git = ctx.target_git, ctx.worktree_git
    checkout = target_checkout(ctx, git, branch, pre)
    if checkout is not None:
        if interrupted and checkout.git.out("write-tree") != git.tree_of(pre):
            # killed between moving the checkout and moving the ref: undo the first
            checkout.git.run("read-tree", "-u", "--reset", pre)
        checkout.require_clean()
    if not patches:
        return pre
    ctx.clean_at = None
    post = am_in_private(wt_git, pre, patches, [str(m["commit"]) for m in changed],
                         [str(m["step"]) for m in changed])
    if wt_git.tree_of(post) != expected_tree:
        raise AgentosError(f"the landed tree {wt_git.tree_of(post)[:12]} differs from "
                           f"the tested worktree {expected_tree[:12]}", code=EXIT_STATE)
    base: dict[str, Any] = dict(ctx.base() or {})
    common = Path(str(base.get("git_common_dir")))
    refuse_links_in_target(common, git.git_dir(), branch)  # again: it is written now
    objects = common / "objects"
    pack_into(wt_git, objects, [post, str(changed[-1]["commit"])], pre)
    write_json(ctx.paths.state / "apply_started.json", {"pre": pre, "post": post},
               durable=True)
    if checkout is not None:
        checkout.move(pre, post)
    faults.point("apply.checkout_moved")
    if not move_branch(git, branch, post, pre, f"agentos: apply run {ctx.run_id}"):
        if checkout is not None:
            checkout.move(post, pre)
        raise AgentosError(f"branch {branch} moved while this run was applied; "
                           "nothing applied", code=EXIT_STATE,
                           hint="start a new run from the current head with run=NEW")
    faults.point("apply.branch_moved")
    return post


def _apply(ctx: RunContext) -> None:
    req = ctx.need_request()
    base = ctx.base()
    if base is None:
        raise AgentosError("cannot apply: the worktree task never ran")
    manifests, patches = _checked_manifests(ctx)
    changed = [m for m in manifests if m["status"] == "changed"]
    git = ctx.target_git
    branch = base["branch"]
    expected_tree = ctx.worktree_git.tree_of(manifests[-1]["head"])
    started_record = ctx.paths.state / "apply_started.json"
    started = read_json(started_record) if started_record.exists() else None
    head = git.rev_parse(f"refs/heads/{branch}")
    if started is not None and head == started.get("post") != started.get("pre"):
        pre, post = str(started["pre"]), head
        _finish_interrupted(ctx, branch, pre, post)
    elif head != base["base"]:
        raise AgentosError(
            f"branch {branch} moved since this run started (base "
            f"{base['base'][:12]}, now {head[:12]}); nothing applied", code=EXIT_STATE,
            hint="start a new run from the current head with run=NEW")
    else:
        pre = head
        post = _land(ctx, branch, pre, changed=changed, patches=patches,
                     expected_tree=expected_tree, interrupted=started is not None)
    commits = git.commits_between(pre, post)
    if len(commits) != len(patches) or git.tree_of(post) != expected_tree:
        fail_apply(ctx, git, branch, pre,
                   f"applied tree {git.tree_of(post)[:12]} / {len(commits)} commits differ "
                   f"from the tested worktree {expected_tree[:12]} / {len(patches)} patches")
    write_json(ctx.paths.applied_record, durable=True, obj={
        "branch": branch, "pre_apply_head": pre, "post_apply_head": post, "commits": commits,
        "tree": expected_tree, "request_sha256": req.sha256, "policy_sha256": ctx.policy.sha256,
        "inputs": input_digests(req),
    })
    faults.point("apply.recorded")
    record_applied_if_missing(ctx)


def record_applied_if_missing(ctx: RunContext) -> None:
    """Append patches_applied for the applied record unless the tape's last apply event
    (patches_applied or rollback) already is that very apply. Idempotent: a sealed run
    re-entered after a crash between the record and the tape gets the event exactly once."""
    applied: dict[str, Any] = dict(ctx.applied() or {})
    (ctx.paths.state / "apply_started.json").unlink(missing_ok=True)
    last = None
    for event in read_events(ctx.paths.root):
        if event.get("event") in ("patches_applied", "rollback"):
            last = event
    if last is not None and last.get("event") == "patches_applied" \
            and last.get("post_apply_head") == applied.get("post_apply_head"):
        return
    commits = list(applied.get("commits", []))
    ctx.tape.append("patches_applied", branch=applied.get("branch"),
                    pre_apply_head=applied.get("pre_apply_head"),
                    post_apply_head=applied.get("post_apply_head"), commits=commits,
                    count=len(commits), tree=applied.get("tree"))


def reset_branch(ctx: RunContext, git: Git, branch: str, target: str,
                 reason: str) -> dict[str, Any]:
    """Move `branch` back to `target` (and its checkout, if any); prove it
    (rollback_proof.json, tape)."""
    refuse_links_in_target(git.common_dir(), git.git_dir(), branch)
    before_head = git.rev_parse(f"refs/heads/{branch}")
    before_tree = git.tree_of(before_head)
    checkout = target_checkout(ctx, git, branch, before_head)
    if checkout is not None:
        checkout.require_clean()
        checkout.move(before_head, target)
    if not move_branch(git, branch, target, before_head, f"agentos: {reason}"[:200]):
        if checkout is not None:
            checkout.move(target, before_head)
        raise AgentosError(f"branch {branch} moved during the rollback; nothing changed",
                           code=EXIT_STATE)
    after_head = git.rev_parse(f"refs/heads/{branch}")
    proof: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "reason": reason, "branch": branch,
        "target_head": target, "target_tree": git.tree_of(target),
        "before": {"head": before_head, "tree": before_tree},
        "after": {"head": after_head, "tree": git.tree_of(after_head)},
    }
    proof["match"] = proof["after"] == {"head": target, "tree": proof["target_tree"]}
    write_json(ctx.paths.audit / "rollback_proof.json", proof, durable=True)
    ctx.tape.append("rollback", branch=branch, restored=target, removed_head=before_head,
                     match=proof["match"], reason=reason,
                     proof_sha256=sha256_file(ctx.paths.audit / "rollback_proof.json"))
    if not proof["match"]:
        raise AgentosError(f"rollback of {branch} to {target[:12]} did not match; see "
                           f"{ctx.paths.audit / 'rollback_proof.json'}", code=EXIT_STATE)
    return proof


def fail_apply(ctx: RunContext, git: Git, branch: str, pre: str, reason: str) -> None:
    """Put the branch back exactly where it was, prove it, and fail the apply."""
    ctx.tape.append("apply_failed", reason=reason)
    reset_branch(ctx, git, branch, pre, reason)
    (ctx.paths.state / "apply_started.json").unlink(missing_ok=True)
    write_result(ctx, "failed", failure={"step": None, "reason": reason})
    ctx.tape.append("run_end", status="failed", reason="apply rolled back")
    raise ApplyClosed(f"apply failed and was rolled back: {reason}", code=EXIT_STATE,
                      hint=f"see audit/rollback_proof.json; the branch is back at {pre[:12]}")


def rollback_task(ctx: RunContext) -> None:
    """`doit rollback`: undo an applied run while its commits are still the branch head."""
    applied = ctx.applied()
    if applied is None:
        raise AgentosError(f"run {ctx.run_id} has applied nothing; nothing to roll back",
                           code=EXIT_STATE)
    git = ctx.target_git
    branch = applied["branch"]
    head = git.rev_parse(f"refs/heads/{branch}")
    if head != applied["post_apply_head"]:
        raise AgentosError(
            f"branch {branch} moved after the apply (now {head[:12]}, applied up to "
            f"{applied['post_apply_head'][:12]}); rolling back would discard other commits",
            code=EXIT_STATE, hint="revert the run's commits with git revert instead")
    reset_branch(ctx, git, branch, applied["pre_apply_head"],
                 f"doit rollback of {len(applied['commits'])} applied commit(s)")
    write_json(ctx.paths.state / "rolled_back.json", applied)
    ctx.paths.applied_record.unlink()
    # a re-apply recreates identical commits; its checksums and result must be written anew
    ctx.paths.checksums.unlink(missing_ok=True)
    ctx.paths.sha256sums.unlink(missing_ok=True)
    write_result(ctx, "rolled_back")
    ctx.tape.append("run_end", status="rolled_back",
                     execution_result_sha256=sha256_file(ctx.paths.execution_result))
    print(escape(f"rolled back {branch} to {applied['pre_apply_head'][:12]}; "
                 "`doit run` would apply the run again"))
