"""What the step engine and tool steps share: the two git views of a run, the parent
commit of a step, the sandbox spec a confined program gets, and file entries as
manifests and result packs record them. Below steps.py, ops.py and tools/dispatch.py,
so none of them imports another for these."""

from __future__ import annotations

import json
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
from agentos_tasks.sandbox.spec import NO_NETWORK, ConfinedSpec, NetworkGrant

if TYPE_CHECKING:
    from agentos_tasks.model import Change, Step
    from agentos_tasks.policy.schema import NetworkRule
    from agentos_tasks.records import FileEntry
    from agentos_tasks.runctx import RunContext
    from agentos_tasks.sandbox.spec import ConfinedResult


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


def network_grant(ctx: RunContext, step_id: str, rule: NetworkRule | None) -> NetworkGrant:
    """The sandbox's network for a step under `rule`: none, or the allowlist proxy with
    its ledger at `network/<step>.jsonl`."""
    if rule is None:
        return NO_NETWORK
    return NetworkGrant(mode="proxy", allow=rule.allow, resolve=rule.resolve,
                        unrestricted=rule.unrestricted, rule_id=rule.rule_id, step=step_id,
                        ledger=ctx.paths.network_ledger(step_id))


def start_ledger(grant: NetworkGrant) -> None:
    """An empty ledger for a networked step (a re-executed step starts afresh)."""
    if grant.ledger is not None:
        grant.ledger.parent.mkdir(parents=True, exist_ok=True)
        grant.ledger.write_bytes(b"")


def sandbox_facts(ctx: RunContext, step_id: str, result: ConfinedResult,
                  rule: NetworkRule | None) -> dict[str, Any]:
    """How a confined program ran, for the manifest: backend, the argv actually started
    (no secret is ever in it), the network grant and, when networked, the ledger's digest
    and counts (network/<step>.jsonl, written by the proxy outside the sandbox)."""
    facts: dict[str, Any] = {"backend": result.backend,
                             "wrapper_argv": list(result.wrapper_argv),
                             "network": rule.as_dict() if rule is not None else None,
                             "notes": list(result.notes)}
    if rule is not None:
        ledger = ctx.paths.network_ledger(step_id)
        data = ledger.read_bytes() if ledger.is_file() else b""
        decisions = []
        for line in data.splitlines():
            try:
                entry = json.loads(line) if line.strip() else None
            except ValueError:
                entry = {"decision": "unreadable"}
            if isinstance(entry, dict):
                decisions.append(entry.get("decision"))
        facts["ledger"] = {"path": f"network/{step_id}.jsonl", "sha256": sha256_bytes(data),
                           "entries": len(decisions),
                           "denied": sum(1 for d in decisions if d != "allow")}
    return facts


def confined_spec(ctx: RunContext, *, network: NetworkGrant = NO_NETWORK,
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
