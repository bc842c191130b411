"""Run a tool step: hand the worktree to a coding-agent CLI (or any command) in the sandbox.

The executor calls `run_tool_step` from `execute_op` and, after it has judged the real
diff, `write_result_pack`. This module:

1. writes `tools/<step>/tool_task_pack.json` (what the tool was asked, from which base
   commit, inside which paths, under which policy and limits);
2. finds the CLI on the step's allowlisted PATH the way the sandbox will (pyenv shims
   resolved), asks it `--version` in the sandbox with the worktree read-only;
3. runs the adapter's headless, hermetic invocation (`adapters.build_invocation`) through
   `proc.run_confined`: worktree read-write, the per-step config files read-only inside a
   private, empty $HOME (`tools/<step>/config` is a tmpfs in the sandbox, so nothing the
   CLI writes there reaches the host), network only when the policy's `tools:` entry for
   this adapter says so;
4. keeps the merged output as `tools/<step>/transcript.jsonl` (and `logs/<step>.out`),
   parses the tool's claims, and fails the step on a timeout, an unexpected exit code, a
   failure the claims admit, or any change to the repository's git dir. Before failing it
   writes the result pack with the diff as it is, so the evidence of a failure exists.

Nothing the tool says is trusted: the diff in the result pack is what the executor
computed from the worktree, and the policy decision is the executor's own.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks import proc, sandbox
from agentos_tasks.errors import EXIT_STEP, AgentosError, PolicyViolation
from agentos_tasks.fsutil import atomic_write, sha256_bytes
from agentos_tasks.model import Step, ToolSpec
from agentos_tasks.runctx import RunContext
from agentos_tasks.tools import adapters, packs

if TYPE_CHECKING:
    from agentos_tasks.policy import Decision

TRANSCRIPT_NAME = "transcript.jsonl"
VERSION_OUTPUT_NAME = "version.out"
CONFIG_DIR_NAME = "config"
VERSION_TIMEOUT_S = 15.0
VERSION_OUTPUT_LIMIT = 4096
# Files of a git dir whose change would make git run something or move what a step built on.
GIT_COMMON_WATCH: tuple[str, ...] = ("config", "config.worktree")
GIT_COMMON_WATCH_DIRS: tuple[str, ...] = ("hooks", "info")
GIT_WORKTREE_WATCH: tuple[str, ...] = ("HEAD", "config", "config.worktree", "commondir",
                                       "gitdir")
_WATCH_MAX_FILES = 2000


def tool_dir(ctx: RunContext, step: Step) -> Path:
    """`outputs/<run>/tools/<step>/`: the task pack, result pack, transcript of one step."""
    return ctx.paths.tool_dir(step.id)


def config_dir_for(worktree_path: Path, step_id: str) -> Path:
    """The CLI's private home/config dir for a step, derived from the recorded worktree path
    (`<run>/worktree`), so a verifier can rebuild the exact argv from the tape."""
    return worktree_path.parent / "tools" / step_id / CONFIG_DIR_NAME


def _tool_spec(step: Step) -> ToolSpec:
    if step.tool is None:
        raise AgentosError(f"step {step.id} is a tool step without `tool:`", code=EXIT_STEP)
    return step.tool


def _where(ctx: RunContext, step: Step) -> str:
    return f"{ctx.need_request().source}:{step.line}"


def _limits(ctx: RunContext) -> dict[str, Any]:
    return dataclasses.asdict(ctx.policy.limits)


def resolve_executable(name: str, env: dict[str, str], worktree: Path) -> Path | None:
    """The host file the sandboxed PATH lookup of `name` will run (pyenv shims resolved)."""
    return sandbox.plan_program(name, env, worktree).program


# ---------------------------------------------------------------- git dir watch


def _git_dirs(ctx: RunContext) -> tuple[Path | None, Path | None]:
    """(the worktree's own git dir, the repository's common git dir), read without git."""
    worktree_gitdir: Path | None = None
    try:
        pointer = (ctx.paths.worktree / ".git").read_text().strip()
        if pointer.startswith("gitdir: "):
            worktree_gitdir = Path(pointer.removeprefix("gitdir: "))
    except OSError:
        pass
    base = ctx.base() or {}
    common = base.get("git_common_dir")
    return worktree_gitdir, Path(common) if common else None


def _watched_files(ctx: RunContext) -> list[Path]:
    worktree_gitdir, common = _git_dirs(ctx)
    files: list[Path] = []
    if common is not None:
        files += [common / name for name in GIT_COMMON_WATCH]
        for sub in GIT_COMMON_WATCH_DIRS:
            directory = common / sub
            if directory.is_dir():
                files += sorted(p for p in directory.rglob("*") if not p.is_dir())
    if worktree_gitdir is not None:
        files += [worktree_gitdir / name for name in GIT_WORKTREE_WATCH]
    return files[:_WATCH_MAX_FILES]


def snapshot_git_dirs(ctx: RunContext) -> dict[Path, bytes | None]:
    """Bytes of every watched git-dir file (None = absent): hooks, config, HEAD ...

    Under bwrap these are read-only to the tool anyway; under the best-effort backend
    `none` this is what catches (and undoes) a tool that plants a hook or moves HEAD.
    """
    snap: dict[Path, bytes | None] = {}
    for path in _watched_files(ctx):
        try:
            snap[path] = path.read_bytes() if not path.is_symlink() else \
                b"symlink:" + os.readlink(path).encode()
        except OSError:
            snap[path] = None
    return snap


def restore_git_dirs(ctx: RunContext, before: dict[Path, bytes | None]) -> list[str]:
    """Put watched files back as they were; return the ones that had changed."""
    after = snapshot_git_dirs(ctx)
    changed = sorted(str(p) for p in before.keys() | after.keys()
                     if before.get(p) != after.get(p))
    for name in changed:
        path = Path(name)
        original = before.get(path)
        if path.is_symlink() or path.exists():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if original is not None and not original.startswith(b"symlink:"):
            atomic_write(path, original)
    return changed


# ---------------------------------------------------------------- the step


def run_tool_step(ctx: RunContext, step: Step) -> dict[str, Any]:
    """Run the step's tool in the sandboxed worktree; return facts for the manifest.

    Raises AgentosError (EXIT_STEP) on timeout, exit code != expect_exit, or a failure the
    tool's own claims admit; PolicyViolation (paths.git) when the git dir changed. In each
    case the result pack has been written first.
    """
    from agentos_tasks.executor import confined_spec, parent_commit
    from agentos_tasks.policy import step_env, tool_network

    tool = _tool_spec(step)
    policy = ctx.policy
    wt = ctx.paths.worktree
    if not tool.paths:
        raise AgentosError(f"tool step {step.id} lists no paths: the tool could change nothing",
                           code=EXIT_STEP, where=_where(ctx, step),
                           hint="add paths: [\"src/**\", ...] to the step's tool:")
    directory = tool_dir(ctx, step)
    if directory.exists():
        shutil.rmtree(directory)  # a re-executed step starts its evidence afresh
    directory.mkdir(parents=True)
    config_dir = config_dir_for(wt, step.id)
    config_dir.mkdir(parents=True, exist_ok=True)

    task_pack_path = directory / packs.TASK_PACK_NAME
    task_pack = packs.build_task_pack(
        run=ctx.run_id, step=step.id, adapter=tool.adapter, prompt=tool.prompt,
        base_commit=parent_commit(ctx, step), allowed_paths=list(tool.paths),
        policy_sha256=policy.sha256, limits=_limits(ctx), model=tool.model,
        argv=list(tool.argv) if tool.adapter == "command" else None)
    task_pack_sha = packs.write_pack(task_pack_path, task_pack)

    network = tool_network(policy, tool.adapter)
    invocation = adapters.build_invocation(
        tool, worktree=wt, config_dir=config_dir, allowed_paths=list(tool.paths),
        allow_shell=False, network=network, task_pack_path=task_pack_path)
    config_files = []
    for name, text in sorted(invocation.files.items()):
        target = config_dir / name
        if target.resolve().parent != config_dir.resolve():
            raise AgentosError(f"adapter config file {name!r} would leave {config_dir}")
        atomic_write(target, text.encode("utf-8"))
        config_files.append(target)
    env = {**step_env(policy, os.environ), **invocation.env}
    executable = adapters.executable_for(tool)
    program = resolve_executable(executable, env, wt)
    if program is None:
        raise AgentosError(
            f"step {step.id}: {tool.adapter} executable {executable!r} not found on the "
            f"step's PATH ({env.get('PATH', '')})", code=EXIT_STEP, where=_where(ctx, step),
            hint="install the CLI, or put its directory on PATH and keep PATH in the "
                 "policy's env: list")
    base_spec = confined_spec(ctx, network=network,
                              extra_readonly=(*config_files, task_pack_path))
    spec = dataclasses.replace(base_spec, env=env)

    git_before = snapshot_git_dirs(ctx)
    # --version with the worktree read-only (it is asked, not trusted, and must change nothing)
    version_spec = dataclasses.replace(
        base_spec, env=env, network=False, readonly_paths=(*base_spec.readonly_paths, wt),
        timeout_s=min(VERSION_TIMEOUT_S, float(base_spec.timeout_s)),
        output_limit=VERSION_OUTPUT_LIMIT)
    version_out = directory / VERSION_OUTPUT_NAME
    version_result = proc.run_confined(adapters.version_argv(tool.adapter, executable),
                                       version_spec, version_out)
    version = adapters.parse_version(version_out.read_bytes()) \
        if version_result.exit_code == 0 and not version_result.timed_out else "unknown"

    transcript = directory / TRANSCRIPT_NAME
    result = proc.run_confined(list(invocation.argv), spec, transcript)
    output = transcript.read_bytes()
    log = ctx.paths.log(step.id)
    atomic_write(log, output)
    transcript_sha = sha256_bytes(output)
    claims = adapters.parse_claims(tool.adapter, output)
    facts: dict[str, Any] = {
        "exit_code": result.exit_code, "timed_out": result.timed_out,
        "log": f"logs/{step.id}.out", "log_sha256": transcript_sha,
        "output_bytes": result.output_bytes, "output_truncated": result.output_truncated,
        "sandbox": {"backend": result.backend, "wrapper_argv": list(result.wrapper_argv),
                    "network": network},
        "duration_s": round(result.duration_s, 6),
        "tool": {"name": tool.adapter if tool.adapter != "command"
                 else os.path.basename(executable),
                 "version": version, "path": str(program), "argv": list(invocation.argv),
                 "claims": claims, "task_pack_sha256": task_pack_sha,
                 "transcript_sha256": transcript_sha,
                 "transcript": f"tools/{step.id}/{TRANSCRIPT_NAME}"},
    }
    git_changed = restore_git_dirs(ctx, git_before)
    failure: AgentosError | None = None
    if git_changed:
        failure = PolicyViolation("paths.git", f"step {step.id}: the tool changed the git dir "
                                  f"({', '.join(git_changed[:3])}); restored")
    elif result.timed_out:
        failure = AgentosError(
            f"step {step.id}: {tool.adapter} ({executable}) timed out after "
            f"{policy.limits.step_seconds}s and was killed", code=EXIT_STEP,
            where=_where(ctx, step),
            hint=f"see {transcript}; raise limits.step_seconds in the policy if needed")
    elif result.exit_code != step.expect_exit:
        failure = AgentosError(
            f"step {step.id}: {tool.adapter} ({executable}) exited {result.exit_code} "
            f"(expected {step.expect_exit})", code=EXIT_STEP, where=_where(ctx, step),
            hint=f"transcript in {transcript}")
    else:
        admitted = adapters.claims_failure(tool.adapter, claims)
        if admitted is not None:
            failure = AgentosError(f"step {step.id}: {admitted}", code=EXIT_STEP,
                                   where=_where(ctx, step),
                                   hint=f"transcript in {transcript}")
    if failure is not None:
        facts["failure"] = failure.message
        _write_failure_pack(ctx, step, facts, failure)
        raise failure
    return facts


def _write_failure_pack(ctx: RunContext, step: Step, facts: dict[str, Any],
                        failure: AgentosError) -> None:
    """The result pack of a failed tool step: the diff as the tool left it, judged afresh."""
    from agentos_tasks.executor import file_entry, worktree_git
    from agentos_tasks.policy import Decision, check_changes

    changes = worktree_git(ctx).status_changes()
    decision = check_changes(ctx.policy, ctx.paths.worktree, changes, step=step)
    if isinstance(failure, PolicyViolation) and decision.allowed:
        decision = Decision(False, failure.rule_id, failure.what, step=step.id)
    files = [file_entry(ctx.paths.worktree, c) for c in changes if not c.ignored]
    write_result_pack(ctx, step, facts, files, decision, None)


def write_result_pack(  # noqa: PLR0917 - the executor's positional call
        ctx: RunContext, step: Step, outcome: dict[str, Any], files: list[dict[str, Any]],
        decision: Decision, patch_sha256: str | None) -> str:
    """Write `tools/<step>/tool_result_pack.json` atomically; return its sha256.

    `files` and `decision` are the executor's own (computed from the worktree), never the
    tool's claims; the digest goes into the manifest and onto the tape (step_end), so a
    pack rewritten later no longer matches.
    """
    tool = _tool_spec(step)
    facts = outcome["tool"]
    failure = outcome.get("failure")
    if failure is None and not decision.allowed:
        failure = f"policy violation: {decision.rule_id}: {decision.reason}"
    pack = packs.build_result_pack(
        run=ctx.run_id, step=step.id, adapter=tool.adapter,
        tool_name=facts["name"], tool_version=facts["version"], tool_path=facts["path"],
        argv=facts["argv"], exit_code=int(outcome["exit_code"]),
        duration_s=float(outcome.get("duration_s", 0.0)),
        transcript_sha256=facts["transcript_sha256"], claims=facts["claims"],
        diff_files=files, patch_sha256=patch_sha256,
        decision="allow" if decision.allowed else "deny", rule_id=decision.rule_id,
        task_pack_sha256=facts["task_pack_sha256"],
        timed_out=bool(outcome.get("timed_out", False)), failure=failure)
    return packs.write_pack(tool_dir(ctx, step) / packs.RESULT_PACK_NAME, pack)
