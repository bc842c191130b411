"""The first two tasks of a run: `policy` (the pre-run decision over the whole request;
records request, policy and inputs; checks answers) and `worktree` (the run's private
git dir and its worktree at the recorded base).

Invariants: a denied request changes nothing and is recorded (policy_denied, a denied
result, run_end); the target branch and working tree are untouched until apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks import __version__
from agentos_tasks.errors import AgentosError, PolicyViolation
from agentos_tasks.evidence import input_digests, request_record, sealed_error, write_result
from agentos_tasks.fsutil import (
    atomic_write,
    sha256_bytes,
    write_json,
)
from agentos_tasks.git import Git, init_private_repo
from agentos_tasks.landing import refuse_links_in_target
from agentos_tasks.leftovers import remove_tree
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from agentos_tasks.model import Request
    from agentos_tasks.runctx import RunContext


def policy_task(ctx: RunContext) -> None:
    """Pre-run check over the whole request; records request and policy; answers questions."""
    from agentos_tasks.policy import check_request

    req = ctx.need_request()
    policy = ctx.policy
    decision = check_request(policy, req)
    if ctx.sealed:
        applied: dict[str, Any] = dict(ctx.applied() or {})
        if (applied.get("request_sha256") == req.sha256
                and applied.get("policy_sha256") == policy.sha256
                and applied.get("inputs") == input_digests(req)):
            return
        if not decision.allowed:
            # a sealed run's evidence is never rewritten: report, record nothing
            raise PolicyViolation(decision.rule_id, decision.reason,
                                  where=_step_where(req, decision),
                                  hint=f"run {ctx.run_id} is sealed, so this denial is not "
                                       "recorded there; add run=NEW to record it in a new run")
        raise sealed_error(ctx, "the request, its input files or the policy changed since")
    t = ctx.tape
    if t.state().count == 0:
        t.append("run_start", run=ctx.run_id, agentos_version=__version__,
                 request=str(req.source), request_sha256=req.sha256)
    audit = ctx.paths.audit
    atomic_write(audit / "request.yaml", req.source.read_bytes())
    policy_bytes = policy.source.read_bytes()
    if sha256_bytes(policy_bytes) != policy.sha256:
        raise AgentosError(f"policy file {policy.source} changed while loading; re-run")
    atomic_write(audit / "policy.yaml", policy_bytes)
    write_json(audit / "request.json", request_record(req))
    for step in req.steps:  # the bytes every content_file / patch step used, by sha256
        for path in step.input_files:
            data = path.read_bytes()
            target = audit / "inputs" / sha256_bytes(data)
            if not target.exists():
                atomic_write(target, data)
    t.append("policy_loaded", policy_id=policy.id, policy_sha256=policy.sha256,
             policy_path=str(policy.source), request_sha256=req.sha256,
             isolation=policy.isolation,
             network=policy.network.as_dict() if policy.network is not None else False)
    if not decision.allowed:
        branch, head = _target_head(ctx)
        t.append("policy_denied", step=decision.step, rule_id=decision.rule_id,
                 reason=decision.reason, subject=decision.subject, branch=branch,
                 branch_head=head)
        write_result(ctx, "denied", failure={"rule_id": decision.rule_id,
                                             "reason": decision.reason, "step": decision.step})
        t.append("run_end", status="denied", rule_id=decision.rule_id)
        raise PolicyViolation(decision.rule_id, decision.reason, where=_step_where(req, decision),
                              hint=f"policy {policy.id} ({policy.source}) decided; nothing ran "
                                   "and the target branch is unchanged")
    answers = None
    if req.questions:
        from agentos_tasks.answers import check_answers

        answers = check_answers(ctx, req)
    write_json(ctx.paths.policy_record, {
        "decision": "allow", "rule_id": decision.rule_id, "request_sha256": req.sha256,
        "policy_sha256": policy.sha256, "answers_sha256": answers,
    })


def _step_where(req: Request, decision: Any) -> str:
    for step in req.steps:
        if step.id == decision.step:
            return f"{req.source}:{step.line}"
    return str(req.source)


def _target_head(ctx: RunContext) -> tuple[str | None, str | None]:
    """The target branch and its head at decision time (None when there is no repo yet)."""
    req = ctx.need_request()
    if not (req.repo / ".git").exists() and not (req.repo / "HEAD").is_file():
        return req.branch, None
    git = ctx.target_git
    branch = req.branch or git.current_branch()
    return branch, git.try_rev_parse(f"refs/heads/{branch}") if branch else None


def worktree_uptodate(ctx: RunContext) -> bool:
    if ctx.sealed:
        return True
    return (ctx.paths.worktree / ".git").is_file() and ctx.paths.base_record.exists()


def worktree_task(ctx: RunContext) -> None:
    """Create (or re-create) the run's worktree at the recorded base commit."""
    if ctx.sealed:
        return
    req = ctx.need_request()
    if req.init_repo and not (req.repo / ".git").exists():
        init_demo_repo(req)
    if not req.repo.is_dir():
        raise AgentosError(f"target repository {req.repo} does not exist",
                           where=f"{req.source}:{req.lines.get('repo', 1)}",
                           hint="create it, fix repo:, or set init_repo: true for a demo")
    git = ctx.target_git
    if not is_target_top(git, req.repo):
        raise AgentosError(f"{req.repo} is not the top of a git repository",
                           where=f"{req.source}:{req.lines.get('repo', 1)}",
                           hint="repo: must name a repository's top-level directory "
                                "(or a bare repository's own directory)")
    record = ctx.base()
    if record is None:
        branch = req.branch or git.current_branch()
        if branch is None:
            raise AgentosError(f"{req.repo} has a detached HEAD; name the target branch",
                               where=f"{req.source}:1", hint="add branch: <name>")
        if git.try_rev_parse(f"refs/heads/{branch}") is None:
            raise AgentosError(f"branch {branch!r} does not exist in {req.repo}",
                               where=f"{req.source}:{req.lines.get('branch', 1)}")
        base = git.rev_parse(f"{req.base}^{{commit}}" if req.base else f"refs/heads/{branch}")
        record = {"repo": str(req.repo), "branch": branch, "base": base,
                  "git_common_dir": str(git.common_dir())}
    wt = ctx.paths.worktree
    if wt.exists():
        remove_tree(wt)  # whatever depth a crashed step left
    # the run's own git dir: our config, the target's objects as a read-only alternate;
    # objects the run makes stay here until apply packs the landed ones into the target
    common = Path(record["git_common_dir"])
    # before anything runs: landing will write there, never through a link
    refuse_links_in_target(common, git.git_dir(), record["branch"])
    init_private_repo(ctx.paths.run_git_dir, fmt_config=common / "config",
                      alternates=[common / "objects"], head=record["base"])
    wt.mkdir(parents=True)
    (wt / ".git").write_text(f"gitdir: {ctx.paths.run_git_dir}\n")
    wt_git = ctx.worktree_git
    wt_git.run("reset", "--hard", "-q", record["base"])
    write_json(ctx.paths.base_record, record)
    ctx.clean_at = record["base"]
    ctx.tape.append("worktree_created", path=str(wt), repo=record["repo"],
                     branch=record["branch"], base=record["base"],
                     git_common_dir=record["git_common_dir"])


def is_target_top(git: Git, repo: Path) -> bool:
    """`repo` is a work tree's top level, or a bare repository's own directory (the run's
    worktree is then the only checkout; landing moves the ref and packs the objects)."""
    probe = git.run("rev-parse", "--is-bare-repository", "--absolute-git-dir", check=False)
    lines = probe.text.split("\n")
    if probe.returncode != 0 or len(lines) < 2:
        return False
    if lines[0] == "true":
        return Path(lines[1]).resolve() == repo.resolve()
    top = git.run("rev-parse", "--show-toplevel", check=False)
    return top.returncode == 0 and Path(top.text.strip()).resolve() == repo.resolve()


def remove_worktree(ctx: RunContext) -> None:
    """`doit clean`: remove the worktree only, never evidence."""
    wt = ctx.paths.worktree
    if wt.exists():
        remove_tree(wt)
    print(escape(f"removed worktree {wt}"))


def init_demo_repo(req: Request) -> None:
    req.repo.mkdir(parents=True, exist_ok=True)
    git = Git(req.repo, req.author)
    git.run("init", "-q", "-b", req.branch or "main")
    (req.repo / "README.md").write_text(f"# {req.repo.name}\n\nDemo target repository.\n")
    git.run("add", "README.md")
    git.run("commit", "-q", "-m", "initial commit")
