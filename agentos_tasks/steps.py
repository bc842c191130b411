"""The step engine: run one step in the worktree, judge its real diff, commit, export,
record.

Invariants:
- Every step starts from a clean checkout of its parent commit (the previous step's
  result, or the recorded base), so a resumed or re-executed step sees exactly what it
  saw the first time.
- A manifest is written (atomically, after the commit and patch) only when the step
  passed; a failed step leaves none, so the next `doit run` resumes there.
- What is committed is exactly what the policy judged (check_tree_is_judged).
"""

from __future__ import annotations

import contextlib
import errno
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import EXIT_STATE, EXIT_STEP, AgentosError, PolicyViolation
from agentos_tasks.evidence import (
    SCHEMA_VERSION,
    load_manifest,
    sealed_error,
    step_spec,
    tree_digests,
    write_result,
)
from agentos_tasks.fsutil import (
    atomic_write,
    canonical_json,
    sha256_bytes,
    sha256_file,
    write_json,
)
from agentos_tasks.ops import execute_op
from agentos_tasks.stepkit import file_entry, parent_commit, read_detached_head
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from agentos_tasks.git import Git
    from agentos_tasks.model import Change, Step
    from agentos_tasks.policy import Decision
    from agentos_tasks.records import Manifest
    from agentos_tasks.runctx import RunContext


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
    policy = ctx.policy
    git = ctx.worktree_git
    parent = parent_commit(ctx, step)
    spec_sha = sha256_bytes(canonical_json(step_spec(ctx, step)))
    if reusable_manifest(ctx, git, step, parent, spec_sha):
        # doit's DB is written at the end of an invocation; after a crash it forgets steps
        # that did complete. Their manifests (written last, atomically) are the truth; a
        # sealed run killed before run_end gets here too, and goes on to close its tape.
        print(escape(f"{step.id}: reusing its manifest from an interrupted invocation"))
        return
    if ctx.sealed:
        raise sealed_error(ctx, f"step {step.id} cannot run again")
    if ctx.paths.manifest(step.id).exists():
        # re-executing: whatever came after this step is no longer valid
        for later in ctx.steps[step.index:]:
            ctx.paths.manifest(later.id).unlink(missing_ok=True)
    prepare_worktree(ctx, git, parent)
    dotgit = (ctx.paths.worktree / ".git").read_bytes()
    t = ctx.tape
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
                                  f"{decision.subject or '?'}: {decision.reason}",
                                  hint=_approval_hint(ctx, step, changes, decision))
        landing = [c for c in changes if not c.ignored]
        refuse_nested_repositories(ctx.paths.worktree, landing)
        manifest = commit_step(ctx, git, step, parent, changes, outcome, spec_sha,
                               decision.rule_id, time.monotonic() - started)
    except AgentosError as err:
        fail_step(ctx, step, err)
        raise
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = f"no space left on the device ({err.strerror})" if full \
            else f"internal error: {err!r}"
        with contextlib.suppress(OSError):  # on a full disk the tape may not take it
            fail_step(ctx, step, AgentosError(reason, code=EXIT_STATE if full else EXIT_STEP))
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


def _approval_hint(ctx: RunContext, step: Step, changes: list[Change],
                   decision: Decision) -> str | None:
    """For a change only an ask rule denies: the answers-file lines that approve every such
    path this step changed, and the command that re-runs it (else None)."""
    if not decision.approvable:
        return None
    from agentos_tasks.answers import approval_hint
    from agentos_tasks.policy import decide_path

    tool_paths = step.tool.paths if step.op == "tool" and step.tool is not None else None
    needed = [(step.id, decision.subject, decision.rule_id)]
    for change in changes:
        for raw in (change.path, change.old_path):
            if raw is None:
                continue
            other = decide_path(ctx.policy, raw, tool_paths=tool_paths, ignored=change.ignored,
                                step=step.id)
            if other.approvable and (step.id, other.subject, other.rule_id) not in needed:
                needed.append((step.id, other.subject, other.rule_id))
    return approval_hint(ctx, needed)


def _looks_like_git_dir(directory: Path) -> bool:
    """git's own test for a repository directory (bare or a `.git`): HEAD, objects/, refs/."""
    return ((directory / "HEAD").is_file() and (directory / "objects").is_dir()
            and (directory / "refs").is_dir())


def refuse_nested_repositories(worktree: Path, landing: list[Change]) -> None:
    """No change may land inside a repository of its own: a `.git` dir or file, a gitlink,
    or a bare repository's layout (HEAD + objects/ + refs/), whose config a later git run
    in the target's checkout would obey (an fsmonitor, a hook path)."""
    seen: set[Path] = set()
    for change in landing:
        target = worktree / change.path
        if change.new_mode == "160000" or (target / ".git").exists():
            raise PolicyViolation("paths.git", f"{change.path} is a nested git repository")
        for directory in (target, *target.parents):
            if directory == worktree or worktree not in directory.parents:
                break
            if directory in seen:
                break
            seen.add(directory)
            if _looks_like_git_dir(directory):
                rel = directory.relative_to(worktree).as_posix()
                raise PolicyViolation("paths.git", f"{change.path} lies in {rel}, which is laid "
                                      "out as a git repository (HEAD, objects/, refs/)")


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
        if any(name in line for name in (b'"step_start"', b'"step_end"', b'"step_failed"',
                                         b'"step_interrupted"')):
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


def attributes_may_apply(ctx: RunContext, changes: list[Change]) -> bool:
    """Could a .gitattributes (or info/attributes) change these files on their way into a
    blob? Checked on the file system only, so the common case costs no git call."""
    base: dict[str, Any] = dict(ctx.base() or {})
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


def commit_step(ctx: RunContext, git: Git, step: Step, parent: str, changes: list[Change],  # noqa: PLR0917
                outcome: dict[str, Any], spec_sha: str, rule_id: str,
                elapsed: float) -> Manifest:
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
        message_file = ctx.paths.state / "commit-message"
        # ending in one newline, as mailinfo ends it: `git am` of this commit's patch
        # then makes this very commit again (same id), so what lands is what was tested
        atomic_write(message_file, step.message.rstrip("\n").encode("utf-8") + b"\n")
        # one date for author and committer: `git am --committer-date-is-author-date`
        # then lands a commit identical to this one
        made = git.commit_index(parent, message_file, date=f"@{int(time.time())} +0000")
        _tree, tree_changes = git.commit_changes(made, parent)
        if not tree_changes:
            # e.g. a write that git's attributes normalise back to the parent's blob
            git.run("update-ref", "--no-deref", "HEAD", parent)
            files = []
        else:
            try:
                check_tree_is_judged(step, tree_changes, landing)
            except PolicyViolation:
                git.run("update-ref", "--no-deref", "HEAD", parent)  # nothing unjudged stays
                raise
            commit = made
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
    manifest: Manifest = {
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
    _record_program_facts(manifest, outcome)
    write_json(ctx.paths.manifest(step.id), manifest)
    return manifest


def _record_program_facts(manifest: Manifest, outcome: dict[str, Any]) -> None:
    """What a run or tool step's program did, from the op's facts (absent for write,
    delete and patch: the executor itself acted there)."""
    if "log" in outcome:
        manifest["log"] = str(outcome["log"])
    if "log_sha256" in outcome:
        manifest["log_sha256"] = str(outcome["log_sha256"])
    if "output_bytes" in outcome:
        manifest["output_bytes"] = int(outcome["output_bytes"])
    if "output_truncated" in outcome:
        manifest["output_truncated"] = bool(outcome["output_truncated"])
    if "sandbox" in outcome:
        manifest["sandbox"] = outcome["sandbox"]
    if "timed_out" in outcome:
        manifest["timed_out"] = bool(outcome["timed_out"])
    if "tool" in outcome:
        manifest["tool"] = dict(outcome["tool"])


def check_tree_is_judged(step: Step, tree_changes: list[tuple[str, str, str]],
                         landing: list[Change]) -> None:
    """What was committed is exactly what the policy judged: every path that differs
    between the parent's tree and the commit's (objects only, no worktree or submodule
    is consulted) was a judged change, and none is a gitlink. The caller moves HEAD back
    when this refuses: no manifest or patch ever names such a commit."""
    judged = {c.path for c in landing} | {c.old_path for c in landing if c.old_path}
    for old_mode, new_mode, path in tree_changes:
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
    t = ctx.tape
    t.append("step_failed", step.id, reason=err.message,
             rule_id=getattr(err, "rule_id", None), code=err.code)
    write_result(ctx, "failed", failure={"step": step.id, "reason": err.message,
                                         "rule_id": getattr(err, "rule_id", None)})
    t.append("run_end", status="failed", step_failed=step.id)
