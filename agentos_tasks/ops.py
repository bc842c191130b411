"""Step operations: write, delete, patch, run (tool steps are tools/dispatch.py). Each
performs its change in the worktree and returns facts for the manifest; write and delete
also return the exact change they made (the executor is the only actor there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks import proc
from agentos_tasks.errors import EXIT_STEP, AgentosError, PolicyViolation
from agentos_tasks.fsutil import sha256_file
from agentos_tasks.model import Change, Step
from agentos_tasks.policy import normalize_path, safe_target
from agentos_tasks.stepkit import (
    confined_spec,
    git_mode,
    network_grant,
    sandbox_facts,
    start_ledger,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentos_tasks.git import Git
    from agentos_tasks.policy.schema import NetworkRule
    from agentos_tasks.runctx import RunContext


Facts = dict[str, Any]


def _declared_path(step: Step) -> str:
    """The path a write or delete step names (the request schema requires one)."""
    if step.path is None:
        raise AgentosError(f"step {step.id}: {step.op} without a path", code=EXIT_STEP)
    return step.path


def write_op(ctx: RunContext, git: Git, step: Step) -> Facts:
    """Write the step's content to its path: regular files only, within max_file_bytes."""
    path = _declared_path(step)
    content = step.content
    if content is None:
        raise AgentosError(f"step {step.id}: write without content", code=EXIT_STEP)
    target = safe_target(ctx.paths.worktree, path)
    if target.is_dir():
        raise AgentosError(f"step {step.id}: {path} is a directory", code=EXIT_STEP)
    if len(content) > ctx.policy.limits.max_file_bytes:
        raise PolicyViolation("limits.max_file_bytes", f"{path} would be {len(content)} bytes")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise PolicyViolation("paths.special", f"{path} exists and is not a regular "
                              "file; a write step replaces only regular files")
    existed = target.exists()
    old_mode = git_mode(target) if existed else None
    if existed and target.read_bytes() == content:
        return {"exit_code": None, "own_changes": []}
    target.write_bytes(content)
    change = Change(path=normalize_path(path), status="M" if existed else "A",
                    old_mode=old_mode, new_mode=git_mode(target))
    return {"exit_code": None, "own_changes": [change]}


def delete_op(ctx: RunContext, git: Git, step: Step) -> Facts:
    """Delete one file (or symlink) the step names; never a directory."""
    path = _declared_path(step)
    target = safe_target(ctx.paths.worktree, path)
    if not target.exists() and not target.is_symlink():
        raise AgentosError(f"step {step.id}: cannot delete {path}: no such file",
                           code=EXIT_STEP, where=f"{ctx.need_request().source}:{step.line}")
    if target.is_dir() and not target.is_symlink():
        raise AgentosError(f"step {step.id}: {path} is a directory; delete files "
                           "one by one", code=EXIT_STEP)
    old_mode = git_mode(target)
    target.unlink()
    return {"exit_code": None, "own_changes": [
        Change(path=normalize_path(path), status="D", old_mode=old_mode)]}


def patch_op(ctx: RunContext, git: Git, step: Step) -> Facts:
    """Apply the step's patch byte-exactly (`git apply --cached` first, then the files)."""
    if step.patch_file is None:
        raise AgentosError(f"step {step.id}: patch without a patch file", code=EXIT_STEP)
    wt = ctx.paths.worktree
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


def run_op(ctx: RunContext, git: Git, step: Step) -> Facts:
    """Run the step's argv in the sandbox, with the policy's network grant for run steps
    (the top-level `network:`, narrowed by the command rule's own)."""
    from agentos_tasks.policy import step_network

    return run_confined_step(ctx, step, list(step.argv), network=step_network(ctx.policy, step))


def tool_op(ctx: RunContext, git: Git, step: Step) -> Facts:
    """Hand the step to a coding-agent CLI (tools/dispatch.py)."""
    from agentos_tasks.tools.dispatch import run_tool_step

    return dict(run_tool_step(ctx, step))


# The one table from an operation name (model.OPS) to what performs it.
OPERATIONS: dict[str, Callable[[RunContext, Git, Step], Facts]] = {
    "write": write_op, "delete": delete_op, "patch": patch_op, "run": run_op, "tool": tool_op,
}


def execute_op(ctx: RunContext, git: Git, step: Step) -> Facts:
    """Perform the step's operation in the worktree; returns facts for the manifest."""
    operation = OPERATIONS.get(step.op)
    if operation is None:
        raise AgentosError(f"unknown operation {step.op}", code=EXIT_STEP)
    return operation(ctx, git, step)


def run_confined_step(ctx: RunContext, step: Step, argv: list[str], *,
                      network: NetworkRule | None) -> dict[str, Any]:
    log = ctx.paths.log(step.id)
    grant = network_grant(ctx, step.id, network)
    start_ledger(grant)
    result = proc.run_confined(argv, confined_spec(ctx, network=grant), log)
    facts = {
        "exit_code": result.exit_code, "timed_out": result.timed_out,
        "log": f"logs/{step.id}.out", "log_sha256": sha256_file(log),
        "output_bytes": result.output_bytes, "output_truncated": result.output_truncated,
        "sandbox": sandbox_facts(ctx, step.id, result, network),
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
