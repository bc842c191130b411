"""What each task of a run does: policy, worktree, step:<id>, apply, checksums, result.

Invariants:
- The target branch and its working tree are untouched until `apply`.
- Every step starts from a clean checkout of its parent commit (the previous step's
  result, or the recorded base), so a resumed or re-executed step sees exactly what it
  saw the first time.
- A manifest is written (atomically, after the commit and patch) only when the step
  passed; a failed step leaves none, so the next `doit run` resumes there.
- After `apply` the run is sealed: nothing re-executes and a changed request is refused.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from agentos_tasks import __version__, faults, proc
from agentos_tasks.errors import EXIT_STATE, EXIT_STEP, AgentosError, PolicyViolation
from agentos_tasks.fsutil import (
    atomic_write,
    canonical_json,
    read_json,
    sha256_bytes,
    sha256_file,
    write_json,
)
from agentos_tasks.git import Git, init_private_repo
from agentos_tasks.landing import CheckedOut, am_in_private, checked_out, move_branch, pack_into
from agentos_tasks.leftovers import remove_tree
from agentos_tasks.model import Change, Request, Step
from agentos_tasks.runctx import RunContext
from agentos_tasks.tape import Tape
from agentos_tasks.termsafe import escape

SCHEMA_VERSION = 1


# ---------------------------------------------------------------- helpers


def request_record(req: Request) -> dict[str, Any]:
    """The normalised request as recorded in audit/request.json (what gates re-decide)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "id": req.id, "source": str(req.source), "sha256": req.sha256,
        "repo": str(req.repo), "branch": req.branch, "base": req.base,
        "init_repo": req.init_repo,
        "author": {"name": req.author.name, "email": req.author.email},
        "questions": [{"id": q.id, "text": q.text} for q in req.questions],
        "steps": [step_record(s) for s in req.steps],
    }


def step_record(step: Step) -> dict[str, Any]:
    record: dict[str, Any] = {"id": step.id, "index": step.index, "op": step.op,
                              "message": step.message, "line": step.line}
    if step.path is not None:
        record["path"] = step.path
    if step.content is not None:
        record["content_sha256"] = sha256_bytes(step.content)
    if step.patch_file is not None:
        record["patch_file"] = str(step.patch_file)
        record["patch_sha256"] = sha256_file(step.patch_file)
        record["patch_paths"] = list(step.patch_paths)
    if step.op == "run":
        record["argv"] = list(step.argv)
    if step.op in ("run", "tool"):
        record["expect_exit"] = step.expect_exit
    if step.tool is not None:
        record["tool"] = {"adapter": step.tool.adapter, "prompt": step.tool.prompt,
                          "paths": list(step.tool.paths), "argv": list(step.tool.argv),
                          "model": step.tool.model}
    return record


def step_spec(ctx: RunContext, step: Step) -> dict[str, Any]:
    """Canonical spec: everything that, when changed, must re-execute the step."""
    req = ctx.need_request()
    return {
        "schema_version": SCHEMA_VERSION, "run": ctx.run_id, "step": step_record(step),
        "author": {"name": req.author.name, "email": req.author.email},
        "policy_sha256": ctx.policy.sha256,
    }


def tape(ctx: RunContext) -> Tape:
    return ctx.tape


def repo_git(ctx: RunContext) -> Git:
    return Git(ctx.need_request().repo, ctx.need_request().author)


def worktree_git(ctx: RunContext) -> Git:
    return ctx.worktree_git


def read_detached_head(worktree: Path) -> str | None:
    """HEAD of our detached worktree, read from its git dir without starting git."""
    try:
        pointer = (worktree / ".git").read_text().strip()
        gitdir = Path(pointer.removeprefix("gitdir: "))
        return (gitdir / "HEAD").read_text().strip()
    except OSError:
        return None


def load_manifest(ctx: RunContext, step_id: str) -> dict[str, Any] | None:
    try:
        return dict(read_json(ctx.paths.manifest(step_id)))
    except (FileNotFoundError, ValueError):
        return None


def sealed_error(ctx: RunContext, what: str) -> AgentosError:
    applied = ctx.applied() or {}
    commits = applied.get("commits", [])
    span = f"{commits[0][:10]}..{commits[-1][:10]}" if commits else "none"
    return AgentosError(
        f"run {ctx.run_id} is sealed: {len(commits)} commit(s) already applied to "
        f"{applied.get('branch', '?')} ({span}); {what}",
        code=EXIT_STATE,
        hint="start a new run from the branch's current head: add run=NEW "
             "(e.g. doit run request=... run=NEW), or undo this run first with "
             "`doit rollback request=...`; the branch never receives a step twice")


# ---------------------------------------------------------------- policy task


def policy_task(ctx: RunContext) -> None:
    """Pre-run check over the whole request; records request and policy; answers questions."""
    from agentos_tasks.policy import check_request

    req = ctx.need_request()
    policy = ctx.policy
    decision = check_request(policy, req)
    if ctx.sealed:
        applied = ctx.applied() or {}
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
    t = tape(ctx)
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
             isolation=policy.isolation, network=policy.network)
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
    git = repo_git(ctx)
    branch = req.branch or git.current_branch()
    return branch, git.try_rev_parse(f"refs/heads/{branch}") if branch else None


def input_digests(req: Request) -> dict[str, str]:
    return {s.id: sha256_file(f) for s in req.steps for f in s.input_files}


# ---------------------------------------------------------------- worktree task


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
    git = repo_git(ctx)
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
    init_private_repo(ctx.paths.run_git_dir, fmt_config=common / "config",
                      alternates=[common / "objects"], head=record["base"])
    wt.mkdir(parents=True)
    (wt / ".git").write_text(f"gitdir: {ctx.paths.run_git_dir}\n")
    wt_git = worktree_git(ctx)
    wt_git.run("reset", "--hard", "-q", record["base"])
    write_json(ctx.paths.base_record, record)
    ctx.clean_at = record["base"]
    tape(ctx).append("worktree_created", path=str(wt), repo=record["repo"],
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


# ---------------------------------------------------------------- step tasks


def parent_commit(ctx: RunContext, step: Step) -> str:
    if step.index == 0:
        base = ctx.base()
        if base is None:
            raise AgentosError("worktree task has not run (no base recorded)")
        return str(base["base"])
    prev = load_manifest(ctx, ctx.steps[step.index - 1].id)
    if prev is None:
        raise AgentosError(f"previous step {ctx.steps[step.index - 1].id} has no manifest")
    return str(prev["head"])


def prepare_worktree(ctx: RunContext, git: Git, parent: str) -> None:
    """Reset to `parent` and remove everything else (untracked and ignored)."""
    if ctx.clean_at == parent and read_detached_head(ctx.paths.worktree) == parent:
        return
    git.run("reset", "--hard", "-q", parent)
    from agentos_tasks.leftovers import clean_worktree  # git clean, robust for deep trees

    clean_worktree(git, ctx.paths.worktree)
    ctx.clean_at = parent


def run_step(ctx: RunContext, step: Step) -> None:
    """Execute one step in the worktree, judge its real diff, commit, export, record."""
    if ctx.sealed:
        raise sealed_error(ctx, f"step {step.id} cannot run again")
    policy = ctx.policy
    git = worktree_git(ctx)
    parent = parent_commit(ctx, step)
    spec_sha = sha256_bytes(canonical_json(step_spec(ctx, step)))
    if reusable_manifest(ctx, git, step, parent, spec_sha):
        # doit's DB is written at the end of an invocation; after a crash it forgets steps
        # that did complete. Their manifests (written last, atomically) are the truth.
        print(escape(f"{step.id}: reusing its manifest from an interrupted invocation"))
        return
    if ctx.paths.manifest(step.id).exists():
        # re-executing: whatever came after this step is no longer valid
        for later in ctx.steps[step.index:]:
            ctx.paths.manifest(later.id).unlink(missing_ok=True)
    prepare_worktree(ctx, git, parent)
    dotgit = (ctx.paths.worktree / ".git").read_bytes()
    t = tape(ctx)
    t.append("step_start", step.id, op=step.op, parent=parent, spec_sha256=spec_sha)
    started = time.monotonic()
    ctx.clean_at = None
    try:
        outcome = execute_op(ctx, git, step)
        if (ctx.paths.worktree / ".git").read_bytes() != dotgit:
            raise PolicyViolation("paths.git", "the step rewrote the worktree's .git file")
        if step.op in ("run", "tool"):  # bounded walk of all it left; defuses special files
            from agentos_tasks.leftovers import survey_step

            survey_step(ctx.paths.worktree, policy.limits, git, parent, step.id)
        # write/delete: the executor itself is the only actor, its change is known exactly;
        # anything else (run, tool, patch) is judged on git's view of the whole worktree
        changes = outcome.pop("own_changes", None)
        if changes is None:
            changes = git.status_changes()
        from agentos_tasks.policy import check_changes

        decision = check_changes(policy, ctx.paths.worktree, changes, step=step)
        if not decision.allowed:
            if step.op == "tool":
                from agentos_tasks.tools.dispatch import write_result_pack

                write_result_pack(ctx, step, outcome,
                                  [file_entry(ctx.paths.worktree, c) for c in changes
                                   if not c.ignored], decision, None)
            raise PolicyViolation(decision.rule_id, f"step {step.id} changed "
                                  f"{decision.subject or '?'}: {decision.reason}")
        landing = [c for c in changes if not c.ignored]
        for change in landing:
            if change.new_mode == "160000" or (ctx.paths.worktree / change.path / ".git").exists():
                raise PolicyViolation("paths.git", f"{change.path} is a nested git repository")
        manifest = commit_step(ctx, git, step, parent, changes, outcome, spec_sha,
                               decision.rule_id, time.monotonic() - started)
    except AgentosError as err:
        fail_step(ctx, step, err)
        raise
    except Exception as err:  # an executor bug must still leave an honest tape
        fail_step(ctx, step, AgentosError(f"internal error: {err!r}", code=EXIT_STEP))
        raise
    # a program may leave gitignored files behind: the next step must not see them
    ctx.clean_at = manifest["head"] if step.op in ("write", "delete", "patch") else None
    t.append("step_end", step.id, status=manifest["status"], exit_code=manifest["exit_code"],
             files=[{k: f[k] for k in ("path", "status", "sha256")} for f in manifest["files"]],
             patch_sha256=manifest["patch_sha256"], commit=manifest["commit"],
             head=manifest["head"], manifest_sha256=sha256_file(ctx.paths.manifest(step.id)),
             **({"tool_result_pack_sha256": manifest["tool_result_pack_sha256"]}
                if "tool_result_pack_sha256" in manifest else {}))


def reusable_manifest(ctx: RunContext, git: Git, step: Step, parent: str, spec_sha: str) -> bool:
    """A manifest left by an interrupted invocation counts only when it provably belongs to
    this exact step: same spec, same parent, its digest on the tape's last step_end for the
    step, and (when it changed something) its commit and patch still there."""
    manifest = load_manifest(ctx, step.id)
    if manifest is None or manifest.get("spec_sha256") != spec_sha \
            or manifest.get("parent") != parent:
        return False
    path = ctx.paths.manifest(step.id)
    digest = sha256_file(path)
    last_end = None
    for line in reversed(ctx.paths.tape.read_bytes().splitlines()) if ctx.paths.tape.exists() \
            else []:
        if b'"step_start"' in line or b'"step_end"' in line or b'"step_failed"' in line:
            event = json.loads(line)
            if event.get("step") == step.id:
                last_end = event if event.get("event") == "step_end" else None
                break
    if last_end is None or last_end.get("manifest_sha256") != digest:
        return False
    if manifest["status"] == "changed":
        patch = ctx.paths.patch(step.id)
        if not patch.exists() or sha256_file(patch) != manifest["patch_sha256"]:
            return False
        if git.try_rev_parse(f"{manifest['commit']}^{{commit}}") != manifest["commit"]:
            return False
    return True


def execute_op(ctx: RunContext, git: Git, step: Step) -> dict[str, Any]:
    """Perform the step's operation in the worktree; returns facts for the manifest."""
    from agentos_tasks.policy import normalize_path, safe_target

    wt = ctx.paths.worktree
    if step.op == "write":
        assert step.path is not None and step.content is not None
        target = safe_target(wt, step.path)
        if target.is_dir():
            raise AgentosError(f"step {step.id}: {step.path} is a directory", code=EXIT_STEP)
        if len(step.content) > ctx.policy.limits.max_file_bytes:
            raise PolicyViolation("limits.max_file_bytes",
                                  f"{step.path} would be {len(step.content)} bytes")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise PolicyViolation("paths.special", f"{step.path} exists and is not a regular "
                                  "file; a write step replaces only regular files")
        existed = target.exists()
        old_mode = _git_mode(target) if existed else None
        if existed and target.read_bytes() == step.content:
            return {"exit_code": None, "own_changes": []}
        target.write_bytes(step.content)
        change = Change(path=normalize_path(step.path), status="M" if existed else "A",
                        old_mode=old_mode, new_mode=_git_mode(target))
        return {"exit_code": None, "own_changes": [change]}
    if step.op == "delete":
        assert step.path is not None
        target = safe_target(wt, step.path)
        if not target.exists() and not target.is_symlink():
            raise AgentosError(f"step {step.id}: cannot delete {step.path}: no such file",
                               code=EXIT_STEP, where=f"{ctx.need_request().source}:{step.line}")
        if target.is_dir() and not target.is_symlink():
            raise AgentosError(f"step {step.id}: {step.path} is a directory; delete files "
                               "one by one", code=EXIT_STEP)
        old_mode = _git_mode(target)
        target.unlink()
        return {"exit_code": None, "own_changes": [
            Change(path=normalize_path(step.path), status="D", old_mode=old_mode)]}
    if step.op == "patch":
        assert step.patch_file is not None
        patch = str(step.patch_file)
        check = git.run("apply", "--check", "--cached", "--binary", "--", patch, check=False)
        if check.returncode != 0:
            detail = check.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AgentosError(f"step {step.id}: patch does not apply: "
                               f"{'; '.join(detail[:3])}", code=EXIT_STEP,
                               where=f"{ctx.need_request().source}:{step.line}",
                               hint="regenerate it against the base commit, or fix the "
                                    "step before it")
        git.run("apply", "--cached", "--binary", "--", patch)
        # the index holds the exact result; bring the files in line with it
        git.run("checkout-index", "-a", "-f")
        deleted = git.run("diff", "--cached", "--no-renames", "--name-only", "-z",
                          "--diff-filter=D", "HEAD").stdout
        for name in filter(None, deleted.split(b"\0")):
            target = wt / name.decode("utf-8", "surrogateescape")
            if target.is_symlink() or target.is_file():
                target.unlink()
        git.run("reset", "-q")
        return {"exit_code": None}
    if step.op == "run":
        return run_confined_step(ctx, step, list(step.argv), network=ctx.policy.network)
    if step.op == "tool":
        from agentos_tasks.tools.dispatch import run_tool_step

        return dict(run_tool_step(ctx, step))
    raise AgentosError(f"unknown operation {step.op}")


def _git_mode(path: Path) -> str:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return "120000"
    return "100755" if info.st_mode & stat.S_IXUSR else "100644"


def confined_spec(ctx: RunContext, *, network: bool,
                  extra_readonly: tuple[Path, ...] = ()) -> proc.ConfinedSpec:
    from agentos_tasks.policy import step_env

    policy = ctx.policy
    base = ctx.base() or {}
    limits = policy.limits
    return proc.ConfinedSpec(
        worktree=ctx.paths.worktree,
        # the run's private git dir (shown with a synthesized config, no hooks) and the
        # target's objects (its alternate); never the target's git dir itself
        readonly_paths=(ctx.paths.run_git_dir,
                        Path(base.get("git_common_dir", ctx.paths.run_git_dir)) / "objects",
                        ctx.paths.worktree / ".git", *extra_readonly),
        env=step_env(policy, os.environ), network=network, isolation=policy.isolation,
        timeout_s=limits.step_seconds, output_limit=limits.output_bytes,
        max_file_bytes=limits.max_file_bytes, memory_bytes=limits.memory_bytes,
        max_processes=limits.max_processes, max_open_files=limits.max_open_files,
    )


def run_confined_step(ctx: RunContext, step: Step, argv: list[str], *,
                      network: bool) -> dict[str, Any]:
    log = ctx.paths.log(step.id)
    result = proc.run_confined(argv, confined_spec(ctx, network=network), log)
    facts = {
        "exit_code": result.exit_code, "timed_out": result.timed_out,
        "log": f"logs/{step.id}.out", "log_sha256": sha256_file(log),
        "output_bytes": result.output_bytes, "output_truncated": result.output_truncated,
        "sandbox": {"backend": result.backend, "wrapper_argv": list(result.wrapper_argv),
                    "network": network},
        "duration_s": round(result.duration_s, 6),
    }
    if result.timed_out:
        raise AgentosError(f"step {step.id}: {argv[0]} timed out after "
                           f"{ctx.policy.limits.step_seconds}s and was killed", code=EXIT_STEP,
                           hint=f"see {log}; raise limits.step_seconds in the policy if needed")
    if result.exit_code != step.expect_exit:
        raise AgentosError(f"step {step.id}: {' '.join(argv)} exited {result.exit_code} "
                           f"(expected {step.expect_exit})", code=EXIT_STEP,
                           where=f"{ctx.need_request().source}:{step.line}",
                           hint=f"output in {log}")
    return facts


def attributes_may_apply(ctx: RunContext, changes: list[Change]) -> bool:
    """Could a .gitattributes (or info/attributes) change these files on their way into a
    blob? Checked on the file system only, so the common case costs no git call."""
    base = ctx.base() or {}
    common = Path(str(base.get("git_common_dir", "")))
    if (common / "info" / "attributes").exists():
        return True
    wt = ctx.paths.worktree
    for change in changes:
        parent = (wt / change.path).parent
        while True:
            if (parent / ".gitattributes").exists():
                return True
            if parent == wt or wt not in parent.parents:
                break
            parent = parent.parent
    return False


def file_entry(wt: Path, change: Change) -> dict[str, Any]:
    target = wt / change.path
    digest: str | None = None
    if change.status != "D":
        try:
            info = target.lstat()
            if stat.S_ISLNK(info.st_mode):
                digest = sha256_bytes(os.readlink(target).encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(info.st_mode):
                digest = sha256_file(target)
        except FileNotFoundError:
            digest = None
    return {"path": change.path, "status": change.status, "old_path": change.old_path,
            "old_mode": change.old_mode, "new_mode": change.new_mode, "sha256": digest}


def commit_step(ctx: RunContext, git: Git, step: Step, parent: str, changes: list[Change],  # noqa: PLR0917
                outcome: dict[str, Any], spec_sha: str, rule_id: str,
                elapsed: float) -> dict[str, Any]:
    wt = ctx.paths.worktree
    landing = [c for c in changes if not c.ignored]
    patch_path = ctx.paths.patch(step.id)
    files = [file_entry(wt, c) for c in landing]
    commit: str | None = None
    patch_sha: str | None = None
    if landing:
        if step.op in ("write", "delete"):
            added = git.run("add", "-A", "--", *{c.path for c in landing}, check=False)
            if added.returncode != 0:
                detail = added.stderr.decode("utf-8", "replace").strip()
                raise AgentosError(
                    f"step {step.id}: git refuses to stage {step.path}: {detail[:200]}",
                    code=EXIT_STEP, where=f"{ctx.need_request().source}:{step.line}",
                    hint="a path the repository's .gitignore ignores can never land")
        else:
            git.run("add", "-A", "--", ".")
        tree = git.out("write-tree")
        if tree == git.tree_of(parent):
            # e.g. a write that git's attributes normalise back to the parent's blob
            files = []
        else:
            check_tree_is_judged(git, step, parent, tree, landing)
            message_file = ctx.paths.state / "commit-message"
            # ending in one newline, as mailinfo ends it: `git am` of this commit's patch
            # then makes this very commit again (same id), so what lands is what was tested
            atomic_write(message_file, step.message.rstrip("\n").encode("utf-8") + b"\n")
            # one date for author and committer: `git am --committer-date-is-author-date`
            # then lands a commit identical to this one
            commit = git.commit_tree(tree, parent, message_file,
                                     date=f"@{int(time.time())} +0000")
            git.run("update-ref", "--no-deref", "HEAD", commit)
            if step.op not in ("write", "delete") or attributes_may_apply(ctx, landing):
                # record what lands: git attributes (eol, encoding) may make the committed
                # blob differ from the file the step left in the worktree
                landed = tree_digests(git, commit, [f["path"] for f in files
                                                    if f["sha256"] is not None])
                for entry in files:
                    if entry["sha256"] is not None and entry["path"] in landed \
                            and landed[entry["path"]] != entry["sha256"]:
                        entry["written_sha256"] = entry["sha256"]
                        entry["sha256"] = landed[entry["path"]]
            patch = git.commit_patch(commit)
            atomic_write(patch_path, patch)
            patch_sha = sha256_bytes(patch)
    if commit is None:
        patch_path.unlink(missing_ok=True)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run": ctx.run_id, "step": step.id,
        "index": step.index, "op": step.op, "message": step.message,
        "status": "changed" if commit else "unchanged",
        "parent": parent, "commit": commit, "head": commit or parent,
        "files": files, "ignored": sorted(c.path for c in changes if c.ignored),
        "patch": f"patches/{step.id}.patch" if commit else None, "patch_sha256": patch_sha,
        "exit_code": outcome.get("exit_code"),
        "policy_check": {"decision": "allow", "rule_id": rule_id,
                         "policy_sha256": ctx.policy.sha256},
        "spec_sha256": spec_sha, "duration_s": round(elapsed, 6),
    }
    if step.op == "tool":
        from agentos_tasks.policy import Decision
        from agentos_tasks.tools.dispatch import write_result_pack

        manifest["tool_result_pack_sha256"] = write_result_pack(
            ctx, step, outcome, files, Decision(True, rule_id, "allowed"), patch_sha)
    for key in ("log", "log_sha256", "output_bytes", "output_truncated", "sandbox", "timed_out",
                "tool"):
        if key in outcome:
            manifest[key] = outcome[key]
    write_json(ctx.paths.manifest(step.id), manifest)
    return manifest


def check_tree_is_judged(git: Git, step: Step, parent: str, tree: str,
                         landing: list[Change]) -> None:
    """What is about to be committed is exactly what the policy judged: every path that
    differs between the parent's tree and the new one (objects only, no worktree or
    submodule is consulted) was a judged change, and none is a gitlink."""
    judged = {c.path for c in landing} | {c.old_path for c in landing if c.old_path}
    for old_mode, new_mode, path in git.tree_changes(parent, tree):
        if "160000" in (old_mode, new_mode):
            raise PolicyViolation("paths.git", f"step {step.id} would commit a gitlink "
                                  f"(submodule) change at {path}")
        if path not in judged:
            raise PolicyViolation("paths.unjudged", f"step {step.id} would commit {path}, "
                                  "which the policy check never saw")


def fail_step(ctx: RunContext, step: Step, err: AgentosError) -> None:
    """Record the failure; leave no manifest from this step on, so a re-run resumes here."""
    for later in ctx.steps[step.index:]:
        ctx.paths.manifest(later.id).unlink(missing_ok=True)
    ctx.clean_at = None
    t = tape(ctx)
    t.append("step_failed", step.id, reason=err.message,
             rule_id=getattr(err, "rule_id", None), code=err.code)
    write_result(ctx, "failed", failure={"step": step.id, "reason": err.message,
                                         "rule_id": getattr(err, "rule_id", None)})
    t.append("run_end", status="failed", step_failed=step.id)


# ---------------------------------------------------------------- apply


class ApplyClosed(AgentosError):
    """An apply failure whose tape, result and rollback proof are already written."""


def apply_task(ctx: RunContext) -> None:
    """Land every step's patch on the target branch, once, after all steps passed.

    A refusal (missing approval, moved branch, dirty target, altered patch, a landed
    commit that differs from its step commit) still closes the tape: apply_failed, a
    failed execution_result, run_end. See landing.py for how the branch moves.
    """
    if ctx.sealed:
        return
    try:
        _apply(ctx)
    except ApplyClosed:
        raise
    except AgentosError as err:
        t = tape(ctx)
        t.append("apply_failed", reason=err.message)
        write_result(ctx, "failed", failure={"step": None, "reason": err.message})
        t.append("run_end", status="failed", reason="apply refused")
        raise


def target_checkout(ctx: RunContext, git: Git, branch: str, head: str) -> CheckedOut | None:
    return checked_out(git, branch, head=head, view_dir=ctx.paths.state / "checkout.git",
                       extra_objects=(ctx.paths.run_git_dir / "objects",))


def _apply(ctx: RunContext) -> None:
    req = ctx.need_request()
    base = ctx.base()
    if base is None:
        raise AgentosError("cannot apply: the worktree task never ran")
    manifests = []
    for step in req.steps:
        manifest = load_manifest(ctx, step.id)
        if manifest is None:
            raise AgentosError(f"cannot apply: step {step.id} has no manifest", code=EXIT_STATE)
        manifests.append(manifest)
    from agentos_tasks.answers import check_approvals

    check_approvals(ctx, req, manifests)
    changed = [m for m in manifests if m["status"] == "changed"]
    patches = [ctx.paths.root / m["patch"] for m in changed]
    for manifest, patch in zip(changed, patches, strict=True):
        if not patch.exists() or sha256_file(patch) != manifest["patch_sha256"]:
            raise AgentosError(f"cannot apply: {patch} is missing or differs from its manifest",
                               code=EXIT_STATE, hint="the evidence was altered; start a new run")
    git = repo_git(ctx)
    branch = base["branch"]
    wt_git = worktree_git(ctx)
    expected_tree = wt_git.tree_of(manifests[-1]["head"])
    started_record = ctx.paths.state / "apply_started.json"
    started = read_json(started_record) if started_record.exists() else None
    head = git.rev_parse(f"refs/heads/{branch}")
    if started is not None and head == started.get("post") != started.get("pre"):
        # an apply of ours moved the branch and was interrupted before it was recorded
        pre, post = str(started["pre"]), head
        checkout = target_checkout(ctx, git, branch, pre)
        if checkout is not None and checkout.git.out("write-tree") == git.tree_of(pre):
            checkout.move(pre, post)
    else:
        if head != base["base"]:
            raise AgentosError(
                f"branch {branch} moved since this run started (base "
                f"{base['base'][:12]}, now {head[:12]}); nothing applied", code=EXIT_STATE,
                hint="start a new run from the current head with run=NEW")
        pre = post = head
        checkout = target_checkout(ctx, git, branch, pre)
        if checkout is not None:
            if started is not None and checkout.git.out("write-tree") != git.tree_of(pre):
                # interrupted between moving the checkout and moving the ref: undo the first
                checkout.git.run("read-tree", "-u", "--reset", pre)
            checkout.require_clean()
        if patches:
            ctx.clean_at = None
            post = am_in_private(wt_git, pre, patches, [str(m["commit"]) for m in changed],
                                 [str(m["step"]) for m in changed])
            if wt_git.tree_of(post) != expected_tree:
                raise AgentosError(f"the landed tree {wt_git.tree_of(post)[:12]} differs from "
                                   f"the tested worktree {expected_tree[:12]}", code=EXIT_STATE)
            objects = Path(str(base.get("git_common_dir"))) / "objects"
            pack_into(wt_git, objects, [post, str(changed[-1]["commit"])], pre)
            write_json(started_record, {"pre": pre, "post": post}, durable=True)
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
    started_record.unlink(missing_ok=True)
    tape(ctx).append("patches_applied", branch=branch, pre_apply_head=pre,
                     post_apply_head=post, commits=commits, count=len(commits),
                     tree=expected_tree)


def reset_branch(ctx: RunContext, git: Git, branch: str, target: str,
                 reason: str) -> dict[str, Any]:
    """Move `branch` back to `target` (and its checkout, if any); prove it
    (rollback_proof.json, tape)."""
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
    tape(ctx).append("rollback", branch=branch, restored=target, removed_head=before_head,
                     match=proof["match"], reason=reason,
                     proof_sha256=sha256_file(ctx.paths.audit / "rollback_proof.json"))
    if not proof["match"]:
        raise AgentosError(f"rollback of {branch} to {target[:12]} did not match; see "
                           f"{ctx.paths.audit / 'rollback_proof.json'}", code=EXIT_STATE)
    return proof


def fail_apply(ctx: RunContext, git: Git, branch: str, pre: str, reason: str) -> None:
    """Put the branch back exactly where it was, prove it, and fail the apply."""
    tape(ctx).append("apply_failed", reason=reason)
    reset_branch(ctx, git, branch, pre, reason)
    (ctx.paths.state / "apply_started.json").unlink(missing_ok=True)
    write_result(ctx, "failed", failure={"step": None, "reason": reason})
    tape(ctx).append("run_end", status="failed", reason="apply rolled back")
    raise ApplyClosed(f"apply failed and was rolled back: {reason}", code=EXIT_STATE,
                      hint=f"see audit/rollback_proof.json; the branch is back at {pre[:12]}")


def rollback_task(ctx: RunContext) -> None:
    """`doit rollback`: undo an applied run while its commits are still the branch head."""
    applied = ctx.applied()
    if applied is None:
        raise AgentosError(f"run {ctx.run_id} has applied nothing; nothing to roll back",
                           code=EXIT_STATE)
    git = repo_git(ctx)
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
    tape(ctx).append("run_end", status="rolled_back",
                     execution_result_sha256=sha256_file(ctx.paths.execution_result))
    print(escape(f"rolled back {branch} to {applied['pre_apply_head'][:12]}; "
                 "`doit run` would apply the run again"))


# ---------------------------------------------------------------- checksums + result


ARTIFACT_DIRS = ("patches", "steps", "logs", "tools", "audit/inputs")
ARTIFACT_FILES = ("audit/request.yaml", "audit/policy.yaml", "audit/request.json",
                  "audit/answers.yaml", "audit/rollback_proof.json")


def artifact_files(run_dir: Path) -> list[str]:
    """Run-relative paths of every artifact the checksums cover (sorted)."""
    found = [f for f in ARTIFACT_FILES if (run_dir / f).is_file()]
    for sub in ARTIFACT_DIRS:
        base = run_dir / sub
        if base.is_dir():
            found += [p.relative_to(run_dir).as_posix() for p in base.rglob("*") if p.is_file()]
    return sorted(found)


def checksums_task(ctx: RunContext) -> None:
    applied = ctx.applied()
    if applied is None:
        raise AgentosError("checksums: nothing applied yet")
    req = ctx.need_request()
    final_paths: set[str] = set()
    for step in req.steps:
        manifest = load_manifest(ctx, step.id) or {}
        final_paths.update(f["path"] for f in manifest.get("files", []))
    tree = tree_digests(repo_git(ctx), applied["post_apply_head"], sorted(final_paths))
    artifacts = {rel: sha256_file(ctx.paths.root / rel) for rel in artifact_files(ctx.paths.root)}
    write_json(ctx.paths.checksums, durable=True, obj={
        "schema_version": SCHEMA_VERSION, "algorithm": "sha256",
        "tree_commit": applied["post_apply_head"], "final_tree": tree, "artifacts": artifacts,
    })
    atomic_write(ctx.paths.sha256sums,
                 "".join(f"{d}  {p}\n" for p, d in sorted(artifacts.items())).encode(),
                 durable=True)


def tree_digests(git: Git, commit: str, paths: list[str]) -> dict[str, str]:
    """sha256 of each path's content at `commit` (absent paths, i.e. deleted, are skipped)."""
    if not paths:
        return {}
    request = "".join(f"{commit}:{p}\n" for p in paths).encode()
    out = git.run("cat-file", "--batch", input=request).stdout
    digests: dict[str, str] = {}
    pos = 0
    for path in paths:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if header[-1] == b"missing":
            continue
        size = int(header[2])
        if header[1] == b"blob":
            digests[path] = sha256_bytes(out[pos:pos + size])
        pos += size + 1
    return digests


def run_closed_as_applied(ctx: RunContext) -> bool:
    """The tape's last event is run_end(applied): the result task has nothing to add."""
    try:
        with open(ctx.paths.tape, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 65536))
            last = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        event = json.loads(last)
    except (OSError, ValueError):
        return False
    return bool(event.get("event") == "run_end" and event.get("status") == "applied")


def result_task(ctx: RunContext) -> None:
    write_result(ctx, "applied")
    tape(ctx).append("run_end", status="applied",
                     execution_result_sha256=sha256_file(ctx.paths.execution_result),
                     checksums_sha256=sha256_file(ctx.paths.checksums))


def write_result(ctx: RunContext, status: str, failure: dict[str, Any] | None = None) -> None:
    req = ctx.need_request()
    base = ctx.base() or {}
    applied = ctx.applied() or {}
    steps: list[dict[str, Any]] = []
    for step in req.steps:
        manifest = load_manifest(ctx, step.id)
        if manifest is None:
            failed = failure is not None and failure.get("step") == step.id
            steps.append({"id": step.id, "op": step.op, "status": "failed" if failed
                          else "pending", "commit": None, "patch": None, "patch_sha256": None,
                          "files": [], "exit_code": None})
            continue
        steps.append({"id": step.id, "op": step.op, "status": manifest["status"],
                      "commit": manifest["commit"], "patch": manifest["patch"],
                      "patch_sha256": manifest["patch_sha256"],
                      "files": [{k: f[k] for k in ("path", "status", "sha256")}
                                for f in manifest["files"]],
                      "exit_code": manifest["exit_code"]})
    backends = sorted({m.get("sandbox", {}).get("backend") for m in
                       filter(None, (load_manifest(ctx, s.id) for s in req.steps))
                       if m.get("sandbox")})
    policy = ctx.policy
    result = {
        "schema_version": SCHEMA_VERSION, "run": ctx.run_id, "status": status,
        "request": {"path": str(req.source), "sha256": req.sha256},
        "policy": {"path": str(policy.source), "sha256": policy.sha256, "id": policy.id,
                   "isolation": policy.isolation},
        # "unused": no run or tool step, so no program ran (write/delete/patch are ours)
        "sandbox": {"backend": "+".join(backends) if backends else "unused",
                    "backends": backends},
        "repo": str(req.repo), "branch": base.get("branch", req.branch),
        "base": base.get("base"),
        "pre_apply_head": applied.get("pre_apply_head"),
        "post_apply_head": applied.get("post_apply_head"),
        "commits_applied": applied.get("commits", []),
        "steps": steps,
        "counts": {
            "steps": len(steps),
            "changed": sum(s["status"] == "changed" for s in steps),
            "unchanged": sum(s["status"] == "unchanged" for s in steps),
            "failed": sum(s["status"] == "failed" for s in steps),
            "pending": sum(s["status"] == "pending" for s in steps),
            "commits_applied": len(applied.get("commits", [])),
        },
        "failure": failure,
    }
    write_json(ctx.paths.execution_result, result, durable=True)
