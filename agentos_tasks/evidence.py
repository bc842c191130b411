"""What a run records besides the tape: the normalised request (audit/request.json),
canonical step specs, manifests as read back, the execution result, checksums, and the
records that tell a sealed run from an open one.

Invariants: execution_result.json and the checksums are rewritten whole and atomically;
a sealed run's evidence is never rewritten (see sealed_error).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, cast

from agentos_tasks.errors import EXIT_STATE, AgentosError
from agentos_tasks.fsutil import (
    atomic_write,
    read_json,
    sha256_bytes,
    sha256_file,
    write_json,
)
from agentos_tasks.layout import artifact_files

if TYPE_CHECKING:
    from pathlib import Path

    from agentos_tasks.git import Git
    from agentos_tasks.model import Request, Step
    from agentos_tasks.records import ExecutionResult, Manifest, StepSummary
    from agentos_tasks.runctx import RunContext

SCHEMA_VERSION = 1


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
    """What a step means, as audit/request.json records it. Never where it is written
    (its line stays on the Step, for error messages): reformatting a request changes
    nothing here."""
    record: dict[str, Any] = {"id": step.id, "index": step.index, "op": step.op,
                              "message": step.message}
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
    """Canonical spec: everything that, when changed, must re-execute the step, and
    nothing else: operation, paths, content digests, argv, tool settings, message,
    author, policy digest (the parent is the previous manifest, a file_dep of the step).
    Not the step's line, the request's bytes or where its patch file lies."""
    req = ctx.need_request()
    meaning = {k: v for k, v in step_record(step).items() if k != "patch_file"}
    spec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run": ctx.run_id, "step": meaning,
        "author": {"name": req.author.name, "email": req.author.email},
        "policy_sha256": ctx.policy.sha256,
    }
    # ask paths approved for this step: a new approval re-runs this step, no other
    approved = sorted([path, rule] for s, path, rule in ctx.policy.approved_paths
                      if s == step.id)
    if approved:
        spec["path_approvals"] = approved
    return spec


def input_digests(req: Request) -> dict[str, str]:
    return {s.id: sha256_file(f) for s in req.steps for f in s.input_files}


def load_manifest(ctx: RunContext, step_id: str) -> Manifest | None:
    """A step's manifest as written (None when absent or unreadable: the step must run)."""
    try:
        return cast("Manifest", read_json(ctx.paths.manifest(step_id)))
    except (FileNotFoundError, ValueError):
        return None


def sealed_error(ctx: RunContext, what: str) -> AgentosError:
    applied: dict[str, Any] = dict(ctx.applied() or {})
    commits = applied.get("commits", [])
    span = f"{commits[0][:10]}..{commits[-1][:10]}" if commits else "none"
    return AgentosError(
        f"run {ctx.run_id} is sealed: {len(commits)} commit(s) already applied to "
        f"{applied.get('branch', '?')} ({span}); {what}",
        code=EXIT_STATE,
        hint="start a new run from the branch's current head: add run=NEW "
             "(e.g. doit run request=... run=NEW), or undo this run first with "
             "`doit rollback request=...`; the branch never receives a step twice")


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


def checksums_task(ctx: RunContext) -> None:
    applied = ctx.applied()
    if applied is None:
        raise AgentosError("checksums: nothing applied yet")
    closed = _closing_event(ctx)
    if closed is not None and closed.get("checksums_sha256") == _digest_or_none(
            ctx.paths.checksums) and ctx.paths.sha256sums.is_file():
        return  # a closed run's checksums stay as its run_end recorded them
    req = ctx.need_request()
    final_paths: set[str] = set()
    for step in req.steps:
        manifest: dict[str, Any] = dict(load_manifest(ctx, step.id) or {})
        final_paths.update(f["path"] for f in manifest.get("files", []))
    tree = tree_digests(ctx.target_git, applied["post_apply_head"], sorted(final_paths))
    artifacts = {rel: sha256_file(ctx.paths.root / rel) for rel in artifact_files(ctx.paths.root)}
    write_json(ctx.paths.checksums, durable=True, obj={
        "schema_version": SCHEMA_VERSION, "algorithm": "sha256",
        "tree_commit": applied["post_apply_head"], "final_tree": tree, "artifacts": artifacts,
    })
    atomic_write(ctx.paths.sha256sums,
                 "".join(f"{d}  {p}\n" for p, d in sorted(artifacts.items())).encode(),
                 durable=True)


def _closing_event(ctx: RunContext) -> dict[str, Any] | None:
    """The tape's last event when it is run_end(applied), else None."""
    try:
        with open(ctx.paths.tape, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 65536))
            last = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        event = json.loads(last)
    except (OSError, ValueError):
        return None
    if isinstance(event, dict) and event.get("event") == "run_end" \
            and event.get("status") == "applied":
        return event
    return None


def _digest_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None


def run_closed_as_applied(ctx: RunContext) -> bool:
    """The tape's last event is run_end(applied): the result task has nothing to add."""
    return _closing_event(ctx) is not None


def result_task(ctx: RunContext) -> None:
    """Write execution_result.json and close the tape with run_end(applied), once: an
    invocation that finds the run already closed on these very files adds nothing (doit
    forgets what a killed invocation did, so this task may run again after a crash)."""
    ctx.tape.recover()  # e.g. a head left one line behind by a kill right after run_end
    closed = _closing_event(ctx)
    if closed is not None \
            and closed.get("execution_result_sha256") == _digest_or_none(
                ctx.paths.execution_result) \
            and closed.get("checksums_sha256") == _digest_or_none(ctx.paths.checksums):
        return
    write_result(ctx, "applied")
    ctx.tape.append("run_end", status="applied",
                     execution_result_sha256=sha256_file(ctx.paths.execution_result),
                     checksums_sha256=sha256_file(ctx.paths.checksums))


def write_result(ctx: RunContext, status: str, failure: dict[str, Any] | None = None) -> None:
    req = ctx.need_request()
    base: dict[str, Any] = dict(ctx.base() or {})
    applied: dict[str, Any] = dict(ctx.applied() or {})
    steps: list[StepSummary] = []
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
    backends = sorted({str(m["sandbox"]["backend"]) for m in
                       filter(None, (load_manifest(ctx, s.id) for s in req.steps))
                       if "sandbox" in m})
    policy = ctx.policy
    result: ExecutionResult = {
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
