"""R2 and EX-C: the steps ran in a worktree outside the target, and the target branch saw
nothing of them until the single apply.

R2: every worktree lies outside the target work tree; the branch head is the post-apply
head and pre..post holds one commit per patch file with the same `git patch-id`, in the
same order (no refs/replace or grafts rewrite what git shows). EX-C: the branch stays at
base until patches_applied and every step event precedes it; every path a step recorded
lies inside the worktree; the sandbox bound only the worktree writable and each sandbox
record agrees with the recorded policy (isolation, network).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import PolicyViolation
from agentos_tasks.gates.common import (
    FAIL,
    NA,
    PASS,
    RUN_INPUTS,
    Fail,
    Gate,
    Verdict,
    event_index,
    executed_manifests,
    last_step_end,
    recorded_policy,
    request_from_record,
    require_chain,
    status_of,
    verdict,
    wrapped_argv,
)
from agentos_tasks.gates.gitlog import branch_position, commits_after
from agentos_tasks.policy import normalize_path, step_network

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.model import Step


# ------------------------------------------------------------------ R2


@verdict
def r2_worktree(ctx: GateContext) -> Verdict:
    """Every worktree lies outside the target work tree and was created before any step;
    unapplied, the branch is still at base; applied, it is at the post-apply head and
    pre..post holds exactly the patch files' commits (same patch ids, same order)."""
    result = ctx.result
    status = result.get("status")
    if status in ("denied", "blocked"):
        return NA, f"run {status} before any step: no worktree expected"
    if not ctx.chain.ok:
        return FAIL, f"tape does not verify: {ctx.chain.reason}"
    check_worktrees_outside(ctx, result)
    head = ctx.branch_head()
    if status != "applied":
        if head != result.get("base"):
            return FAIL, f"run not applied, yet branch head {str(head)[:12]} != base " \
                         f"{str(result.get('base'))[:12]}"
        return PASS, "steps ran in a worktree; branch untouched (not applied)"
    pre, post = applied_heads(ctx, result, head)
    check_history_not_rewritten(ctx)
    count = check_branch_holds_patches(ctx, pre, post)
    return PASS, f"worktree outside the target; {count} commits == patches, same " \
                 f"patch ids and order; {branch_position(ctx, post, head)}"


def check_worktrees_outside(ctx: GateContext, result: dict[str, Any]) -> None:
    """Every worktree_created lies outside the target work tree, on the recorded base,
    before the first step_start."""
    created = ctx.events_named("worktree_created")
    if not created:
        raise Fail("tape has no worktree_created event")
    repo = Path(result["repo"]).resolve()
    for event in created:
        path = Path(event["path"]).resolve()
        if path == repo or repo in path.parents:
            raise Fail(f"worktree {path} lies inside the target work tree {repo}")
        if event.get("base") != result.get("base"):
            raise Fail("worktree_created base differs from execution_result base")
    first_wt = ctx.events.index(created[0])
    if any(ctx.events.index(e) < first_wt for e in ctx.events_named("step_start")):
        raise Fail("a step started before the worktree was created")


def applied_heads(ctx: GateContext, result: dict[str, Any], head: str | None) -> tuple[str, str]:
    """(pre-apply head, post-apply head) of an applied run: recorded, on the tape's last
    patches_applied, and the branch still holds it on its first-parent history."""
    pre, post = result.get("pre_apply_head"), result.get("post_apply_head")
    if not isinstance(pre, str) or not isinstance(post, str):
        raise Fail("execution_result lacks pre/post-apply heads for an applied run")
    applied = ctx.events_named("patches_applied")
    if not applied or applied[-1].get("post_apply_head") != post:
        raise Fail("execution_result post_apply_head has no matching patches_applied event")
    commits_after(ctx, post, head)
    return pre, post


def check_history_not_rewritten(ctx: GateContext) -> None:
    """No refs/replace or info/grafts: plain git must show what the commits hold."""
    rewritten = ctx.git.run("for-each-ref", "--format=%(refname)", "refs/replace/").text
    grafts = ctx.git.git_dir() / "info" / "grafts"
    if rewritten.strip() or grafts.exists():
        raise Fail("the repository rewrites history for git (refs/replace or info/grafts): "
                   "plain git would show other content than the commits hold")


def check_branch_holds_patches(ctx: GateContext, pre: str, post: str) -> int:
    """pre..post holds one commit per changed step's patch file, with the same patch ids
    in the same order; returns the number of commits."""
    commits = ctx.git.commits_between(pre, post)
    changed = [s for s in ctx.step_ids() if ctx.manifest(s).get("status") == "changed"]
    patches = b"".join(ctx.read_bytes(f"patches/{step_id}.patch") for step_id in changed)
    patch_ids = [pid for pid, _ in ctx.git.patch_ids(patches)] if patches else []
    if len(commits) != len(changed):
        raise Fail(f"{pre[:10]}..{post[:10]} holds {len(commits)} commits for "
                   f"{len(changed)} patches")
    branch_ids = ctx.git.range_patch_ids(pre, post)
    if [c for _, c in branch_ids] != commits or len(patch_ids) != len(changed):
        raise Fail("a commit or patch file holds no diff (empty or unreadable patch)")
    if [pid for pid, _ in branch_ids] != patch_ids:
        raise Fail("patch ids of the branch's commits differ from the patch files (content "
                   "or order)")
    return len(commits)

# ------------------------------------------------------------------ EX-C


STEP_EVENTS = ("step_start", "step_end", "step_failed")
WRITABLE_BINDS = ("--bind", "--bind-try", "--dev-bind", "--dev-bind-try")


def inside_worktree(worktree: Path, raw: str) -> str:
    """Normalise a recorded path; raise Fail when it would land outside the worktree."""
    try:
        normal = normalize_path(raw)
    except PolicyViolation as exc:
        raise Fail(f"recorded path {raw!r} is outside the worktree ({exc.rule_id})") from None
    joined = PurePosixPath(worktree.as_posix()) / normal
    if worktree.as_posix() not in (str(joined), *map(str, joined.parents)):
        raise Fail(f"recorded path {raw!r} is outside the worktree {worktree}")
    return normal


def writable_binds(argv: list[str]) -> list[str]:
    found = []
    for i, token in enumerate(argv):
        if token == "--":  # noqa: S105 - end of bwrap options
            break
        if token in WRITABLE_BINDS and i + 2 < len(argv):
            found.append(argv[i + 2])
    return found


def sandbox_argv(step: Step, manifest: dict[str, Any]) -> list[str]:
    """The argv the step's sandbox had to run: the request's (run) or the tool's."""
    if step.op == "run":
        return list(step.argv)
    return [str(a) for a in (manifest.get("tool") or {}).get("argv") or []]


def check_sandboxes(ctx: GateContext, manifests: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Every program step's sandbox record agrees with the recorded policy: under
    `isolation: required` backend bwrap, its network record equals the policy's grant
    (step_network: the tool's rule, or the top-level network narrowed by the command's
    rule) and the bwrap argv unshares the network whatever the grant (a grant is the
    allowlist proxy, never the host's network); execution_result's sandbox backends are
    the manifests'. Returns the steps that ran unsandboxed (backend none, best-effort)."""
    policy = recorded_policy(ctx)
    steps = {s.id: s for s in request_from_record(ctx.request_record).steps}
    required = policy.isolation == "required"
    backends: set[str] = set()
    unsandboxed: list[str] = []
    for step_id, manifest in manifests:
        step = steps[step_id]
        sandbox = manifest.get("sandbox")
        if step.op not in ("run", "tool"):
            if sandbox is not None:
                raise Fail(f"{step.op} step {step_id} records a sandbox; it runs no program")
            continue
        if not isinstance(sandbox, dict):
            raise Fail(f"{step.op} step {step_id} has no sandbox record")
        backend = sandbox.get("backend")
        rule = step_network(policy, step)
        grant = rule.as_dict() if rule is not None else None
        if sandbox.get("network") != grant:
            raise Fail(f"step {step_id}: sandbox network {sandbox.get('network')!r}, the "
                       f"recorded policy grants {grant}")
        wrapper = sandbox.get("wrapper_argv")
        inner = sandbox_argv(step, manifest)
        if not isinstance(wrapper, list) or not wrapped_argv(wrapper, inner):
            raise Fail(f"step {step_id}: the sandbox argv does not end with -- and the "
                       "step's argv")
        options = [str(a) for a in wrapper[:len(wrapper) - len(inner) - 1]]
        if backend == "bwrap":
            if not options or Path(options[0]).name != "bwrap":
                raise Fail(f"step {step_id}: backend bwrap, yet its argv starts with "
                           f"{options[:1]}")
            unshared = "--share-net" not in options and (
                "--unshare-all" in options or "--unshare-net" in options)
            if not unshared:
                raise Fail(f"step {step_id}: its bwrap argv keeps the host's network; a "
                           "network grant goes through the allowlist proxy only")
        elif backend == "none":
            if required:
                raise Fail(f"step {step_id} ran with sandbox backend none under isolation: "
                           "required")
            unsandboxed.append(step_id)
        else:
            raise Fail(f"step {step_id}: unknown sandbox backend {backend!r}")
        backends.add(str(backend))
    claimed = ctx.result.get("sandbox") or {}
    listed = sorted(backends)
    if claimed.get("backends") != listed or \
            claimed.get("backend") != ("+".join(listed) if listed else "unused"):
        raise Fail(f"execution_result sandbox {claimed.get('backend')!r} "
                   f"{claimed.get('backends')!r}, the manifests say {listed}")
    if (ctx.result.get("policy") or {}).get("isolation") != policy.isolation:
        raise Fail(f"execution_result names isolation "
                   f"{(ctx.result.get('policy') or {}).get('isolation')!r}, the recorded "
                   f"policy {policy.isolation!r}")
    return unsandboxed


@verdict
def ex_c_untouched(ctx: GateContext) -> Verdict:
    """The target branch stays at base until apply, every step event precedes the one
    patches_applied, and every path a step wrote (manifests, tape, sandbox binds) lies
    inside the run's worktree."""
    require_chain(ctx)
    status = status_of(ctx)
    result = ctx.result
    started = ctx.events_named("step_start")
    if not started and status in ("denied", "blocked"):
        return NA, f"run {status} before any step: nothing was written"
    worktree = run_worktree(ctx)
    base = result.get("base")
    if started and base is None:
        raise Fail("steps ran, yet execution_result records no base")
    created = ctx.events_named("worktree_created")
    if created[-1].get("base") != base:
        raise Fail(f"worktree_created base {str(created[-1].get('base'))[:12]} != "
                   f"execution_result base {str(base)[:12]}")
    checked = check_written_paths(ctx, worktree)
    unsandboxed = check_sandboxes(ctx, executed_manifests(ctx))
    flagged = f"; unsandboxed steps: {', '.join(unsandboxed)} (backend none, isolation " \
              "best-effort)" if unsandboxed else ""
    applied_at = event_index(ctx, ("patches_applied",))
    rollbacks = event_index(ctx, ("rollback",))
    check_sealed_after_apply(ctx, applied_at, rollbacks)
    if status != "applied":
        if applied_at and not any(r > applied_at[-1] for r in rollbacks):
            raise Fail(f"run {status}, yet the tape has patches_applied and no rollback after it")
        head = ctx.branch_head()
        if base is not None and head != base:
            raise Fail(f"run not applied, yet branch head {str(head)[:12]} != base "
                       f"{str(base)[:12]}")
        return PASS, f"not applied: branch still at base; {checked} recorded path(s) inside " \
                     f"the worktree{flagged}"
    check_applied_on_base(ctx, result, base, applied_at)
    return PASS, f"branch at base {str(base)[:12]} until apply; every step event precedes " \
                 f"patches_applied; {checked} recorded path(s) inside the worktree{flagged}"


def run_worktree(ctx: GateContext) -> Path:
    """The run's one worktree, as every worktree_created names it."""
    created = ctx.events_named("worktree_created")
    if not created:
        raise Fail("steps ran but the tape has no worktree_created event")
    worktree = Path(str(created[-1].get("path")))
    if any(Path(str(e.get("path"))) != worktree for e in created):
        raise Fail("worktree_created events name different worktrees")
    return worktree


def check_written_paths(ctx: GateContext, worktree: Path) -> int:
    """Every path a manifest or step_end records lies inside the worktree, and a sandbox
    bound nothing else writable; returns the number of manifest paths checked."""
    checked = 0
    ends = last_step_end(ctx)
    for step_id, manifest in executed_manifests(ctx):
        for entry in manifest.get("files", []):
            for raw in (entry.get("path"), entry.get("old_path")):
                if raw is not None:
                    inside_worktree(worktree, str(raw))
                    checked += 1
        for entry in ends.get(step_id, {}).get("files", []):
            inside_worktree(worktree, str(entry.get("path")))
        argv = (manifest.get("sandbox") or {}).get("wrapper_argv") or []
        for bound in writable_binds([str(a) for a in argv]):
            if Path(bound) != worktree:
                raise Fail(f"step {step_id}'s sandbox bound {bound} writable, not only its "
                           f"worktree {worktree}")
    return checked


def check_sealed_after_apply(ctx: GateContext, applied_at: list[int],
                             rollbacks: list[int]) -> None:
    """After an apply the run is sealed: only a rollback reopens it (steps, a new apply)."""
    for index, event in enumerate(ctx.events):
        if event.get("event") not in (*STEP_EVENTS, "patches_applied"):
            continue
        earlier = [a for a in applied_at if a < index]
        if earlier and not any(earlier[-1] < r < index for r in rollbacks):
            what = f"{event.get('event')} of {event.get('step')}" if event.get("step") \
                else str(event.get("event"))
            raise Fail(f"{what} comes after patches_applied with no rollback in between")


def check_applied_on_base(ctx: GateContext, result: dict[str, Any], base: Any,
                          applied_at: list[int]) -> None:
    """An applied run's branch did not move before the apply, and the first applied
    commit sits on the base."""
    if not applied_at:
        raise Fail("run applied, but the tape has no patches_applied")
    applied = ctx.events[applied_at[-1]]
    pre = result.get("pre_apply_head")
    if pre != base or applied.get("pre_apply_head") != pre:
        raise Fail(f"branch moved before apply: base {str(base)[:12]}, pre-apply head "
                   f"{str(pre)[:12]} (tape {str(applied.get('pre_apply_head'))[:12]})")
    commits = result.get("commits_applied") or []
    if commits:
        parent = ctx.git.try_rev_parse(f"{commits[0]}^")
        if parent != base:
            raise Fail(f"first applied commit {commits[0][:12]} sits on {str(parent)[:12]}, "
                       f"not on base {str(base)[:12]}")

R2 = Gate("R2", "steps ran in a worktree; branch holds exactly the patches", r2_worktree,
          RUN_INPUTS, uses_repo=True)
EX_C = Gate("EX-C", "target branch untouched until apply; steps wrote only in the worktree; "
            "sandbox records agree with the policy", ex_c_untouched, RUN_INPUTS,
            uses_repo=True)
