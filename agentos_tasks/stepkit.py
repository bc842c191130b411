"""What the step engine and tool steps share: the two git views of a run, the parent
commit of a step, the sandbox spec a confined program gets, and file entries as
manifests and result packs record them. Below steps.py, ops.py and tools/dispatch.py,
so none of them imports another for these."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.evidence import load_manifest
from agentos_tasks.fsutil import (
    sha256_bytes,
    sha256_file,
)
from agentos_tasks.sandbox.spec import ConfinedSpec

if TYPE_CHECKING:
    from agentos_tasks.model import Change, Step
    from agentos_tasks.records import FileEntry
    from agentos_tasks.runctx import RunContext


def read_detached_head(worktree: Path) -> str | None:
    """HEAD of our detached worktree, read from its git dir without starting git."""
    try:
        pointer = (worktree / ".git").read_text().strip()
        gitdir = Path(pointer.removeprefix("gitdir: "))
        return (gitdir / "HEAD").read_text().strip()
    except OSError:
        return None


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


def confined_spec(ctx: RunContext, *, network: bool,
                  extra_readonly: tuple[Path, ...] = ()) -> ConfinedSpec:
    from agentos_tasks.policy import step_env

    policy = ctx.policy
    base: dict[str, Any] = dict(ctx.base() or {})
    limits = policy.limits
    return ConfinedSpec(
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


def file_entry(wt: Path, change: Change) -> FileEntry:
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


def git_mode(path: Path) -> str:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return "120000"
    return "100755" if info.st_mode & stat.S_IXUSR else "100644"
