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

import contextlib
import dataclasses
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks import proc, secretenv
from agentos_tasks.errors import EXIT_STEP, AgentosError, PolicyViolation
from agentos_tasks.fsutil import atomic_write, sha256_bytes
from agentos_tasks.sandbox.program import plan_program
from agentos_tasks.sandbox.spec import NO_NETWORK
from agentos_tasks.stepkit import (
    confined_spec,
    file_entry,
    network_grant,
    parent_commit,
    sandbox_facts,
    start_ledger,
)
from agentos_tasks.tools import adapters, packs

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from agentos_tasks.model import Step, ToolSpec
    from agentos_tasks.policy import Decision
    from agentos_tasks.policy.schema import ToolRule
    from agentos_tasks.records import FileEntry
    from agentos_tasks.runctx import RunContext
    from agentos_tasks.sandbox.spec import ConfinedResult, ConfinedSpec

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
_WATCH_MAX_BYTES = 1 << 20  # larger files are compared by size and times, not read


def tool_dir(ctx: RunContext, step: Step) -> Path:
    """`outputs/<run>/tools/<step>/`: the task pack, result pack, transcript of one step."""
    return ctx.paths.tool_dir(step.id)


def config_dir_for(worktree_path: Path, step_id: str) -> Path:
    """The CLI's config dir for a step (`<run>/tools/<step>/config`: the files the adapter
    wrote, evidence), derived from the recorded worktree path (`<run>/worktree`), so a
    verifier can rebuild the exact argv from the tape. Inside the sandbox it is an empty
    private tmpfs with those files bound read-only: nothing the CLI writes reaches it."""
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
    return plan_program(name, env, worktree).program


# ---------------------------------------------------------------- git dir watch


def _read_regular(path: Path, limit: int) -> bytes | None:
    """Up to `limit` bytes of a regular file, never following a symlink and never waiting:
    a FIFO or device planted in place of a git file must not hang the host. None when the
    path is not a regular file (or is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        size = 0
        while size < limit and (chunk := os.read(fd, min(1 << 16, limit - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _git_dirs(ctx: RunContext) -> tuple[Path | None, Path | None]:
    """(the worktree's own git dir, the repository's common git dir), read without git."""
    worktree_gitdir: Path | None = None
    head = _read_regular(ctx.paths.worktree / ".git", 4096) or b""
    pointer = head.decode("utf-8", "replace").strip()
    if pointer.startswith("gitdir: "):
        worktree_gitdir = Path(pointer.removeprefix("gitdir: "))
    base: dict[str, Any] = dict(ctx.base() or {})
    common = base.get("git_common_dir")
    return worktree_gitdir, Path(common) if common else None


@dataclasses.dataclass(frozen=True)
class GitEntryState:
    """One watched git-dir entry as `lstat` saw it: its type, its permission bits and,
    for a regular file of at most _WATCH_MAX_BYTES, its bytes (so it can be put back);
    a larger file is compared by size, times and inode only. Nothing else is ever opened."""

    kind: str  # "file" | "dir" | "symlink" | "fifo" | "socket" | "device" | "other"
    mode: int  # permission bits (stat.S_IMODE)
    data: bytes | None = None  # a small regular file's bytes, a symlink's target
    stamp: tuple[int, ...] = ()  # (size, mtime_ns, ctime_ns, inode) of a large file


@dataclasses.dataclass(frozen=True)
class GitSnapshot:
    """The watched entries of the worktree's git dir and the repository's common git dir,
    as found before the tool ran."""

    worktree_gitdir: Path | None
    common: Path | None
    entries: dict[Path, GitEntryState | None]  # None = absent


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return kind
    return "other"


def _entry_state(path: Path) -> GitEntryState | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    kind, mode = _kind(info.st_mode), stat.S_IMODE(info.st_mode)
    if kind == "symlink":
        try:
            return GitEntryState(kind, mode, os.readlink(os.fsencode(path)))
        except OSError:
            return GitEntryState(kind, mode)
    if kind != "file":
        return GitEntryState(kind, mode)  # type and mode only: never opened
    if info.st_size > _WATCH_MAX_BYTES:
        return GitEntryState(kind, mode, None, (info.st_size, info.st_mtime_ns,
                                                info.st_ctime_ns, info.st_ino))
    data = _read_regular(path, _WATCH_MAX_BYTES + 1)
    if data is None:  # replaced between lstat and open: differs from anything recorded
        return GitEntryState("other", mode)
    if len(data) > _WATCH_MAX_BYTES:  # grew since lstat
        return GitEntryState(kind, mode, None, (len(data), info.st_mtime_ns,
                                                info.st_ctime_ns, info.st_ino))
    return GitEntryState(kind, mode, data)


def _walk(directory: Path, found: list[Path]) -> None:
    """Every entry below `directory` (dirs included), descending only into real dirs."""
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if len(found) >= _WATCH_MAX_FILES:
            return
        found.append(Path(entry.path))
        if entry.is_dir(follow_symlinks=False):
            _walk(Path(entry.path), found)


def _watched_files(worktree_gitdir: Path | None, common: Path | None) -> list[Path]:
    files: list[Path] = []
    # the worktree's git dir is the run's private one: its config and (absent) hooks dir
    # are watched like the target's
    for root in dict.fromkeys(r for r in (common, worktree_gitdir) if r is not None):
        files += [root / name for name in GIT_COMMON_WATCH]
        for sub in GIT_COMMON_WATCH_DIRS:
            files.append(root / sub)
            state = _entry_state(root / sub)
            if state is not None and state.kind == "dir":
                _walk(root / sub, files)
    if worktree_gitdir is not None:
        files += [worktree_gitdir / name for name in GIT_WORKTREE_WATCH]
    return files[:_WATCH_MAX_FILES]


def _snapshot(worktree_gitdir: Path | None, common: Path | None,
              also: Iterable[Path] = ()) -> dict[Path, GitEntryState | None]:
    paths = dict.fromkeys((*_watched_files(worktree_gitdir, common), *also))
    return {path: _entry_state(path) for path in paths}


def snapshot_git_dirs(ctx: RunContext) -> GitSnapshot:
    """Every watched git-dir entry (hooks, config, HEAD ...), read with lstat first.

    Under bwrap these are read-only to the tool anyway; under the best-effort backend
    `none` this is what catches (and undoes) a tool that plants a hook or moves HEAD.
    The repository itself may have planted FIFOs, sockets or symlinks there: only regular
    files are read, and those without following a link or waiting on a writer.
    """
    worktree_gitdir, common = _git_dirs(ctx)
    return GitSnapshot(worktree_gitdir, common, _snapshot(worktree_gitdir, common))


def _real_dirs_between(root: Path, path: Path) -> bool:
    """True when every directory from `root` down to `path`'s parent is a real directory,
    so writing `path` cannot land anywhere else through a symlink the tool planted."""
    try:
        relative = path.parent.relative_to(root)
    except ValueError:
        return False
    directories = [root]
    for part in relative.parts:
        directories.append(directories[-1] / part)
    try:
        return all(stat.S_ISDIR(os.lstat(d).st_mode) for d in directories)
    except OSError:
        return False


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `data` via a fresh temp file (O_EXCL|O_NOFOLLOW) and a rename."""
    temp = path.with_name(f".{path.name}.agentos-restore.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _remove_entry(path: Path) -> None:
    current = _entry_state(path)
    if current is None:
        return
    if current.kind == "dir":
        shutil.rmtree(path, ignore_errors=True)  # never follows symlinks
    else:
        path.unlink(missing_ok=True)


def _put_back(path: Path, original: GitEntryState | None) -> None:
    """Make `path` what it was: removed, or recreated (a file's bytes, a link, a dir, a
    FIFO). A large file or a socket/device cannot be recreated: it is only reported."""
    current = _entry_state(path)
    if original is not None and original.kind == "dir" and current is not None \
            and current.kind == "dir":
        os.chmod(path, original.mode)  # lstat just saw a real dir
        return
    if original is not None and (original.kind in ("socket", "device", "other")
                                 or (original.kind == "file" and original.data is None)):
        return
    _remove_entry(path)
    if original is None:
        return
    if original.kind == "file" and original.data is not None:
        _write_new_file(path, original.data, original.mode)
    elif original.kind == "symlink" and original.data is not None:
        os.symlink(original.data, os.fsencode(path))
    elif original.kind in ("dir", "fifo"):
        (os.mkdir if original.kind == "dir" else os.mkfifo)(path, 0o700)
        os.chmod(path, original.mode)  # exactly as before, whatever the umask


def restore_git_dirs(ctx: RunContext, before: GitSnapshot) -> list[str]:
    """Put watched entries back as they were; return the ones that had changed.

    Only the git dirs found before the tool ran are looked at (a tool that rewrote the
    worktree's `.git` pointer cannot steer this to other host files), parents first, and
    nothing is written through a directory that is no longer a real one.
    """
    after = _snapshot(before.worktree_gitdir, before.common, before.entries)
    changed = sorted((p for p in before.entries.keys() | after.keys()
                      if before.entries.get(p) != after.get(p)), key=str)
    roots = [r for r in (before.common, before.worktree_gitdir) if r is not None]
    for path in changed:
        root = next((r for r in roots if path.is_relative_to(r)), None)
        if root is None or not _real_dirs_between(root, path):
            continue
        with contextlib.suppress(OSError):
            _put_back(path, before.entries.get(path))
    return [str(p) for p in changed]


# ---------------------------------------------------------------- the step


def run_tool_step(ctx: RunContext, step: Step) -> dict[str, Any]:
    """Run the step's tool in the sandboxed worktree; return facts for the manifest.

    Raises AgentosError (EXIT_STEP) on timeout, exit code != expect_exit, or a failure the
    tool's own claims admit; PolicyViolation (paths.git) when the git dir changed. In each
    case the result pack has been written first.
    """
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
    scratch = ctx.paths.tool_home(step.id)  # not evidence: the raw, unredacted output
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)

    task_pack_path = directory / packs.TASK_PACK_NAME
    task_pack = packs.build_task_pack(
        run=ctx.run_id, step=step.id, adapter=tool.adapter, prompt=tool.prompt,
        base_commit=parent_commit(ctx, step), allowed_paths=list(tool.paths),
        policy_sha256=policy.sha256, limits=_limits(ctx), model=tool.model,
        argv=list(tool.argv) if tool.adapter == "command" else None)
    task_pack_sha = packs.write_pack(task_pack_path, task_pack)

    network = tool_network(policy, tool.adapter)
    rule = policy.tool_rule(tool.adapter)
    invocation = adapters.build_invocation(
        tool, worktree=wt, config_dir=config_dir, allowed_paths=list(tool.paths),
        allow_shell=False, network=network is not None, task_pack_path=task_pack_path,
        provider=rule.provider if rule is not None else None)
    secrets = _tool_secrets(ctx, step, rule, invocation)
    config_files = []
    for name, text in sorted(invocation.files.items()):
        target = config_dir / name
        if name.startswith("/") or ".." in Path(name).parts or \
                not target.resolve().is_relative_to(config_dir.resolve()):
            raise AgentosError(f"adapter config file {name!r} would leave {config_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, text.encode("utf-8"))
        config_files.append(target)
    env = {**step_env(policy, os.environ), **invocation.env}
    env.update({name: value.decode("utf-8", "surrogateescape")
                for name, value in secrets.items()})
    executable = adapters.executable_for(tool)
    program = resolve_executable(executable, env, wt)
    if program is None:
        raise AgentosError(
            f"step {step.id}: {tool.adapter} executable {executable!r} not found on the "
            f"step's PATH ({env.get('PATH', '')})", code=EXIT_STEP, where=_where(ctx, step),
            hint="install the CLI, or put its directory on PATH and keep PATH in the "
                 "policy's env: list")
    grant = network_grant(ctx, step.id, network)
    base_spec = dataclasses.replace(
        confined_spec(ctx, network=grant, extra_readonly=(*config_files, task_pack_path)),
        max_file_bytes=None,  # its own state files (SQLite, caches) live in the private
        # home: the worktree's files are judged afterwards (limits.max_file_bytes)
        secret_env=tuple(sorted(secrets)),
        masked=tuple(wt / name for name in adapters.masked_for(tool.adapter)))
    spec = dataclasses.replace(base_spec, env=env)

    git_before = snapshot_git_dirs(ctx)
    # --version with the worktree read-only (it is asked, not trusted, and must change nothing)
    version_spec = dataclasses.replace(
        base_spec, env={k: v for k, v in env.items() if k not in secrets}, secret_env=(),
        network=NO_NETWORK, readonly_paths=(*base_spec.readonly_paths, wt),
        timeout_s=min(VERSION_TIMEOUT_S, float(base_spec.timeout_s)),
        output_limit=VERSION_OUTPUT_LIMIT)
    version_out = directory / VERSION_OUTPUT_NAME
    version_result = _confined(ctx, step, adapters.version_argv(tool.adapter, executable),
                               version_spec, version_out)
    version = adapters.parse_version(version_out.read_bytes()) \
        if version_result.exit_code == 0 and not version_result.timed_out else "unknown"

    transcript = directory / TRANSCRIPT_NAME
    raw = scratch / "output.raw"  # redacted into the transcript, then removed
    start_ledger(grant)
    result = _confined(ctx, step, list(invocation.argv), spec, raw)
    output = secretenv.redact(raw.read_bytes(), secrets)
    atomic_write(transcript, output)
    raw.unlink()
    log = ctx.paths.log(step.id)
    atomic_write(log, output)
    transcript_sha = sha256_bytes(output)
    claims = adapters.parse_claims(tool.adapter, output, model=requested_model(tool, rule))
    facts: dict[str, Any] = {
        "exit_code": result.exit_code, "timed_out": result.timed_out,
        "log": f"logs/{step.id}.out", "log_sha256": transcript_sha,
        "output_bytes": result.output_bytes, "output_truncated": result.output_truncated,
        "sandbox": {**sandbox_facts(ctx, step.id, result, network),
                    "tool_sandbox": adapters.tool_sandbox_note(tool.adapter),
                    # names only: the secrets this tool received (apply scans for them)
                    "secrets": sorted(set(rule.secrets if rule else ()) & set(secrets))},
        "duration_s": round(result.duration_s, 6),
        "tool": {"name": tool.adapter if tool.adapter != "command"
                 else os.path.basename(executable),
                 "version": version, "path": str(program), "argv": list(invocation.argv),
                 "claims": claims, "task_pack_sha256": task_pack_sha,
                 "transcript_sha256": transcript_sha,
                 "transcript": f"tools/{step.id}/{TRANSCRIPT_NAME}"},
    }
    git_changed = restore_git_dirs(ctx, git_before)
    changed = _changed_paths(ctx)
    leaked = secretenv.leaks(wt, changed, secrets) + secretenv.leaks(
        ctx.paths.root, [f"network/{step.id}{suffix}" for suffix in (".jsonl", ".proxy.log")],
        secrets)
    failure: AgentosError | None = None
    if leaked:
        shown = secretenv.redact(", ".join(f"{p} ({n})" for p, n in leaked[:3]).encode(
            "utf-8", "surrogateescape"), secrets).decode("utf-8", "replace")
        failure = PolicyViolation("secrets.leak", f"step {step.id}: the tool wrote a secret's "
                                  f"value into {shown}")
    elif git_changed:
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
        if leaked:  # a file name may be the secret: the pack names paths
            secretenv.redact_file(directory / packs.RESULT_PACK_NAME, secrets)
        _remove_leaked(wt, [rel for rel, _ in leaked if rel in changed])
        raise failure
    return facts


def requested_model(tool: ToolSpec, rule: ToolRule | None) -> str | None:
    """The model a tool step asked for: its own `model:`, else the provider's."""
    if tool.model:
        return tool.model
    return rule.provider.model if rule is not None and rule.provider is not None else None


def _tool_secrets(ctx: RunContext, step: Step, rule: ToolRule | None,
                  invocation: adapters.Invocation) -> dict[str, bytes]:
    """The environment entries that are secrets: each of the rule's `secrets:` set on the
    host, under its own name, and each variable the adapter asks for
    (`Invocation.secret_env`: inner name -> secret name, e.g. ANTHROPIC_API_KEY from a
    gateway's key). A secret the adapter needs (the provider's key) but the host does not
    set is an error before anything runs; other unset secrets are simply not passed."""
    names = rule.secrets if rule is not None else ()
    values = secretenv.secret_values(names, os.environ)
    wanted = dict(invocation.secret_env)
    missing = sorted({source for source in wanted.values() if source not in values})
    if missing:
        raise AgentosError(
            f"step {step.id}: secret {', '.join(missing)} is not set in the environment",
            code=EXIT_STEP, where=_where(ctx, step),
            hint=f"export {missing[0]}=... before doit run (the policy gives it to the "
                 f"{step.tool.adapter if step.tool else 'tool'} tool only)")
    for inner, source in wanted.items():
        values[inner] = values[source]
    return values


def _confined(ctx: RunContext, step: Step, argv: Sequence[str], spec: ConfinedSpec,
              output: Path) -> ConfinedResult:
    """proc.run_confined, a sandbox it refuses to build (a masked repository entry that is
    a symlink or special file) turned into the step's clear error."""
    try:
        return proc.run_confined(argv, spec, output)
    except ValueError as exc:
        raise AgentosError(f"step {step.id}: {exc}", code=EXIT_STEP, where=_where(ctx, step),
                           hint="the repository's tool config entry must be a plain file or "
                                "directory (it is hidden from the tool)") from None


def _remove_leaked(worktree: Path, paths: Sequence[str]) -> None:
    """Take the files holding a secret out of the failed step's worktree (recorded by
    digest in the result pack first); a re-run starts from the parent commit anyway."""
    for rel in paths:
        target = worktree / rel
        with contextlib.suppress(OSError):
            if target.is_symlink() or target.is_file():
                target.unlink()


def _changed_paths(ctx: RunContext) -> list[str]:
    return [c.path for c in ctx.worktree_git.status_changes() if c.status != "D"]


def _write_failure_pack(ctx: RunContext, step: Step, facts: dict[str, Any],
                        failure: AgentosError) -> None:
    """The result pack of a failed tool step: the diff as the tool left it, judged afresh."""
    from agentos_tasks.policy import Decision, check_changes

    changes = ctx.worktree_git.status_changes()
    decision = check_changes(ctx.policy, ctx.paths.worktree, changes, step=step)
    if isinstance(failure, PolicyViolation) and decision.allowed:
        decision = Decision(False, failure.rule_id, failure.what, step=step.id)
    files = [file_entry(ctx.paths.worktree, c) for c in changes if not c.ignored]
    write_result_pack(ctx, step, facts, files, decision, None)


def write_result_pack(  # noqa: PLR0917 - the executor's positional call
        ctx: RunContext, step: Step, outcome: dict[str, Any], files: Sequence[FileEntry],
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
