"""The first two tasks of a run: `policy` (the pre-run decision over the whole request;
records request, policy and inputs; checks answers) and `worktree` (the run's private
git dir and its worktree at the recorded base).

Invariants: a denied request changes nothing and is recorded (policy_denied, a denied
result, run_end); the target branch and working tree are untouched until apply.
What can be checked before the first step is checked before it, before anything is
recorded (`preflight`: the target is a git repository's top, the branch exists, its
working tree is clean, the base names a commit). A request file that differs from the
run's recorded one only in form (comments, whitespace, key order, YAML style) is the
same request: it never re-runs a step or seals a run (`adopt_recorded_request`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks import __version__
from agentos_tasks.errors import EXIT_STATE, AgentosError, PolicyViolation
from agentos_tasks.evidence import input_digests, request_record, sealed_error, write_result
from agentos_tasks.fsutil import (
    RefusedFile,
    atomic_write,
    read_json,
    read_regular,
    sha256_bytes,
    sha256_file,
    write_json,
)
from agentos_tasks.git import Git, init_private_repo
from agentos_tasks.landing import checked_out, refuse_links_in_target
from agentos_tasks.leftovers import remove_tree
from agentos_tasks.tape import read_events
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from agentos_tasks.model import Request
    from agentos_tasks.policy import Decision, Policy
    from agentos_tasks.runctx import RunContext


def policy_task(ctx: RunContext) -> None:
    """Pre-run check over the whole request; records request and policy; answers questions."""
    from agentos_tasks.policy import check_request

    recover_tape(ctx)
    req = ctx.need_request()
    policy = ctx.policy
    decision = check_request(policy, req)
    preflight(ctx)
    if ctx.sealed:
        applied: dict[str, Any] = dict(ctx.applied() or {})
        same = (applied.get("request_sha256") == req.sha256
                and applied.get("policy_sha256") == policy.sha256
                and applied.get("inputs") == input_digests(req))
        if same and policy.approved_paths == _recorded_approvals(ctx):
            return
        if same and decision.allowed:
            raise sealed_error(ctx, "its path approvals differ from the answers file given "
                                    "now (pass the same answers=FILE again)")
        if not decision.allowed:
            # a sealed run's evidence is never rewritten: report, record nothing
            raise PolicyViolation(decision.rule_id, decision.reason,
                                  where=_step_where(req, decision),
                                  hint=f"run {ctx.run_id} is sealed, so this denial is not "
                                       "recorded there; add run=NEW to record it in a new run")
        raise sealed_error(ctx, "the request, its input files or the policy changed since")
    if _decided_already(ctx, req):
        return  # e.g. the request file was only reformatted: nothing new to decide
    from agentos_tasks.gates.static import package_source_digest

    t = ctx.tape
    source = package_source_digest()  # which agentos code decides and runs this
    if t.state().count == 0:
        t.append("run_start", run=ctx.run_id, agentos_version=__version__,
                 agentos_source_sha256=source,
                 request=str(req.source), request_sha256=req.sha256)
    audit = ctx.paths.audit
    if req.presented_sha256 is None:
        # the run's request is recorded once; a file equivalent to it keeps the record
        request_bytes = req.source.read_bytes()
        if sha256_bytes(request_bytes) != req.sha256:
            raise AgentosError(f"request file {req.source} changed while loading; re-run")
        atomic_write(audit / "request.yaml", request_bytes)
    policy_bytes = policy.source.read_bytes()
    if sha256_bytes(policy_bytes) != policy.sha256:
        raise AgentosError(f"policy file {policy.source} changed while loading; re-run")
    atomic_write(audit / "policy.yaml", policy_bytes)
    if req.presented_sha256 is None:
        write_json(audit / "request.json", request_record(req))
    for step in req.steps:  # the bytes every content_file / patch step used, by sha256
        for path in step.input_files:
            data = path.read_bytes()
            target = audit / "inputs" / sha256_bytes(data)
            if not target.exists():
                atomic_write(target, data)
    t.append("policy_loaded", agentos_source_sha256=source,
             policy_id=policy.id, policy_sha256=policy.sha256,
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
                              hint=_denial_hint(ctx, req, decision))
    answers = _record_answers(ctx, req)
    write_json(ctx.paths.policy_record, {
        "decision": "allow", "rule_id": decision.rule_id, "request_sha256": req.sha256,
        "policy_sha256": policy.sha256, "answers_sha256": answers,
        "input_sha256": input_digests(req),
    })


def _recorded_approvals(ctx: RunContext) -> frozenset[tuple[str, str, str]]:
    """The path approvals the run recorded (audit/answers.yaml), empty when none."""
    from agentos_tasks.answers_file import approved_paths, load_answers_file

    recorded = ctx.paths.audit / "answers.yaml"
    return approved_paths(load_answers_file(recorded)) if recorded.is_file() else frozenset()


def _record_answers(ctx: RunContext, req: Request) -> str | None:
    """Answers to the request's questions and path approvals, recorded; the answers
    file's sha256 when either was used."""
    answers = None
    if req.questions:
        from agentos_tasks.answers import check_answers

        answers = check_answers(ctx, req)
    if ctx.policy.approved_paths:
        answers = record_path_approvals(ctx, req)
    return answers


def _denial_hint(ctx: RunContext, req: Request, decision: Decision) -> str:
    """How to approve what only ask rules deny (an answers file and the command), else
    who decided."""
    policy = ctx.policy
    if decision.approvable:
        from agentos_tasks.answers import approval_hint

        return approval_hint(ctx, approvable_paths(policy, req))
    return f"policy {policy.id} ({policy.source}) decided; nothing ran and the target " \
           "branch is unchanged"


def approvable_paths(policy: Policy, req: Request) -> list[tuple[str, str, str]]:
    """(step, path, ask rule id) of every path the request names that only an ask rule
    denies: what an answers file's path_approvals would have to approve."""
    from agentos_tasks.policy import decide_path

    found: list[tuple[str, str, str]] = []
    for step in req.steps:
        for path in step.declared_paths():
            decision = decide_path(policy, path, step=step.id)
            if decision.approvable:
                found.append((step.id, decision.subject, decision.rule_id))
    return found


def record_path_approvals(ctx: RunContext, req: Request) -> str:
    """Record the answers file that approves ask paths: audit/answers.yaml (its bytes) and
    paths_approved on the tape (its sha256 and every approval); returns the sha256."""
    from agentos_tasks.answers_file import approved_paths, load_answers_file

    if ctx.answers_path is None:  # approved_paths come from an answers file
        raise AgentosError("path approvals were found without an answers file", code=EXIT_STATE)
    raw = ctx.answers_path.read_bytes()
    data = load_answers_file(ctx.answers_path)
    approvals = data.get("path_approvals") or {}
    known = {s.id for s in req.steps}
    unknown = sorted(set(approvals) - known)
    if unknown:
        raise AgentosError(f"path_approvals for unknown step(s): {', '.join(unknown)}",
                           where=str(ctx.answers_path),
                           hint=f"the request's steps are {', '.join(sorted(known))}")
    if sha256_bytes(raw) != sha256_file(ctx.answers_path) \
            or approved_paths(data) != ctx.policy.approved_paths:
        raise AgentosError(f"answers file {ctx.answers_path} changed while loading; re-run")
    atomic_write(ctx.paths.audit / "answers.yaml", raw)
    digest = sha256_bytes(raw)
    ctx.tape.append("paths_approved", answers_sha256=digest, approvals=[
        {"step": step, "path": path, **{k: str(entry[k]) for k in ("rule_id", "by", "at",
                                                                   "text")}}
        for step in sorted(approvals) for path, entry in sorted(approvals[step].items())])
    return digest


def _answers_digest(ctx: RunContext, req: Request) -> str | None:
    """What check_answers / record_path_approvals record as answers_sha256 for this
    invocation."""
    if ctx.answers_path is None or not ctx.answers_path.is_file():
        return None
    if not req.questions and not ctx.policy.approved_paths:
        return None
    return sha256_file(ctx.answers_path)


def _decided_already(ctx: RunContext, req: Request) -> bool:
    """The policy record already decided exactly this: the same request (as recorded),
    input files (a content_file's bytes), policy and answers. doit re-runs the policy
    task when the request file's bytes change; a reformatted file changes nothing here,
    so nothing is recorded again."""
    try:
        record = read_json(ctx.paths.policy_record)
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or not ctx.paths.tape.is_file():
        return False
    if (req.questions or ctx.policy.approved_paths) and record.get("answers_sha256") is None:
        return False
    return bool(record.get("decision") == "allow"
                and record.get("request_sha256") == req.sha256
                and record.get("input_sha256") == input_digests(req)
                and record.get("policy_sha256") == ctx.policy.sha256
                and record.get("answers_sha256") == _answers_digest(ctx, req))


_FORM_ONLY = ("sha256", "source")  # where the request file is and its bytes' digest
_STEP_FORM_ONLY = ("line", "patch_file")  # where a step is written, where its patch lies


def request_meaning(record: dict[str, Any]) -> dict[str, Any]:
    """What a request record (audit/request.json) says, without where and how it was
    written: two files with the same meaning are the same request."""
    meaning = {k: v for k, v in record.items() if k not in _FORM_ONLY}
    steps = record.get("steps")
    if isinstance(steps, list):
        meaning["steps"] = [{k: v for k, v in step.items() if k not in _STEP_FORM_ONLY}
                            if isinstance(step, dict) else step for step in steps]
    return meaning


def adopt_recorded_request(ctx: RunContext) -> None:
    """When the run already recorded a request (audit/request.yaml + request.json) that
    means what the given file means, the run goes on with the recorded one: `sha256`
    becomes the recorded digest (every later record names it), `presented_sha256` keeps
    the given file's. A real change (content, argv, paths, ...) is left alone: it
    re-runs what it changes, or is refused by a sealed run, as before."""
    req = ctx.request
    if req is None:
        return
    audit = ctx.paths.audit
    try:
        recorded = read_json(audit / "request.json")
        recorded_yaml = read_regular(audit / "request.yaml")
    except (OSError, ValueError, RefusedFile):
        return  # nothing recorded yet (or unreadable: the gates will say so)
    if not isinstance(recorded, dict) or recorded.get("sha256") != sha256_bytes(recorded_yaml):
        return
    if recorded["sha256"] == req.sha256:
        return
    if request_meaning(recorded) == request_meaning(request_record(req)):
        ctx.request = dataclasses.replace(req, sha256=str(recorded["sha256"]),
                                          presented_sha256=req.sha256)


def _step_where(req: Request, decision: Any) -> str:
    for step in req.steps:
        if step.id == decision.step:
            return f"{req.source}:{step.line}"  # the line map beside the spec
    return str(req.source)


def _target_head(ctx: RunContext) -> tuple[str | None, str | None]:
    """The target branch and its head at decision time (None when there is no repo yet)."""
    req = ctx.need_request()
    if not (req.repo / ".git").exists() and not (req.repo / "HEAD").is_file():
        return req.branch, None
    git = ctx.target_git
    branch = req.branch or git.current_branch()
    return branch, git.try_rev_parse(f"refs/heads/{branch}") if branch else None


def _repo_where(req: Request, key: str = "repo") -> str:
    return f"{req.source}:{req.lines.get(key, req.lines.get('repo', 1))}"


def _target_branch(ctx: RunContext, git: Git) -> str:
    """The target is a repository's top and the branch exists; returns the branch."""
    req = ctx.need_request()
    if not req.repo.is_dir():
        raise AgentosError(f"target repository {req.repo} does not exist",
                           where=_repo_where(req),
                           hint="create it, fix repo:, or set init_repo: true for a demo")
    if not is_target_top(git, req.repo):
        raise AgentosError(f"{req.repo} is not the top of a git repository",
                           where=_repo_where(req),
                           hint="repo: must name a repository's top-level directory "
                                "(or a bare repository's own directory)")
    record = ctx.base()
    branch = record["branch"] if record is not None else req.branch or git.current_branch()
    if branch is None:
        raise AgentosError(f"{req.repo} has a detached HEAD; name the target branch",
                           where=_repo_where(req), hint="add branch: <name>")
    if git.try_rev_parse(f"refs/heads/{branch}") is None:
        raise AgentosError(f"branch {branch!r} does not exist in {req.repo}",
                           where=_repo_where(req, "branch"),
                           hint="create it (git branch NAME) or fix branch:")
    return branch


def preflight(ctx: RunContext) -> None:
    """Everything about the target that can be checked before the first step: it exists
    and is a git repository's top, the branch exists, the base names a commit, and the
    working tree that has the branch checked out is clean (apply checks that again).
    Nothing is written: a refusal here leaves no run directory behind (see
    RunContext.lock). Once per invocation; a sealed run has nothing left to run."""
    if ctx.sealed or ctx.target_checked:
        return
    req = ctx.need_request()
    if req.init_repo and not (req.repo / ".git").exists():
        ctx.target_checked = True  # the worktree task creates the demo repository
        return
    git = ctx.target_git
    branch = _target_branch(ctx, git)
    if ctx.base() is None and req.base and \
            git.try_rev_parse(f"{req.base}^{{commit}}") is None:
        raise AgentosError(f"base {req.base!r} does not name a commit in {req.repo}",
                           where=_repo_where(req, "base"),
                           hint="base: takes a commit, tag or branch of the target")
    if (ctx.paths.state / "apply_started.json").exists():
        # an apply of ours was interrupted: the checkout may already show its commits;
        # apply finishes or undoes that first, then checks the tree itself
        ctx.target_checked = True
        return
    head = git.rev_parse(f"refs/heads/{branch}")
    with tempfile.TemporaryDirectory(prefix="agentos-preflight-") as view:
        checkout = checked_out(git, branch, head=head, view_dir=Path(view) / "view.git",
                               extra_objects=())
        if checkout is not None:
            checkout.require_clean()
    ctx.target_checked = True


def recover_tape(ctx: RunContext) -> None:
    """Recover the run's tape before anything reads it (see tape.Tape._recover): a line
    torn by a kill is cut or completed, an open step closed, before a step decides from
    the tape whether its manifest may be reused. No tape yet: nothing is written."""
    if ctx.paths.tape.is_file():
        ctx.tape.recover()


def worktree_uptodate(ctx: RunContext) -> bool:
    recover_tape(ctx)  # doit asks this before any step task runs, also when policy is cached
    if ctx.sealed:
        return True
    try:
        preflight(ctx)
    except Exception:  # the worktree task runs it again and reports it
        return False
    return ((ctx.paths.worktree / ".git").is_file() and ctx.paths.base_record.exists()
            # killed while writing worktree_created (cut on recovery): create it again
            and any(e.get("event") == "worktree_created" for e in read_events(ctx.paths.root)))


def worktree_task(ctx: RunContext) -> None:
    """Create (or re-create) the run's worktree at the recorded base commit."""
    if ctx.sealed:
        return
    preflight(ctx)
    req = ctx.need_request()
    if req.init_repo and not (req.repo / ".git").exists():
        init_demo_repo(req)
    git = ctx.target_git
    branch = _target_branch(ctx, git)
    record = ctx.base()
    if record is None:
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
