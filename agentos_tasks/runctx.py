"""One run: where its files live, which request/policy it executes, and its recorded state.

The run directory `outputs/<run_id>/` is reused by every invocation of the same run.
It exists once a run has started (its tape): an invocation that created it and ends
before the first tape event (a refusal before anything ran, `doit list`) removes it
again (`RunContext.release`), so a request refused up front leaves nothing behind.
Its `.state/` holds doit's dep file, the run lock, canonical step specs and the
base/applied records; everything in `audit/`, `steps/`, `patches/`, `logs/`, `tools/`
and `reports/` is evidence.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from agentos_tasks.errors import EXIT_STATE, AgentosError
from agentos_tasks.fsutil import read_json, refuse_special
from agentos_tasks.git import Git
from agentos_tasks.layout import RunPaths

if TYPE_CHECKING:
    from agentos_tasks.model import Request, Step
    from agentos_tasks.policy import Policy
    from agentos_tasks.records import AppliedRecord, BaseRecord
    from agentos_tasks.tape import Tape



def resolve_cli_path(raw: str, cwd: Path) -> Path:
    """Command-line paths are relative to where the user ran the command."""
    path = Path(raw).expanduser()
    return (path if path.is_absolute() else cwd / path).resolve()


def given_cli_path(raw: str, cwd: Path) -> Path:
    """An input file's absolute path as the user named it, symlinks kept, so that errors
    name the file the user typed (`policies/x.yaml`, not the package file it links to)."""
    path = Path(raw).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else cwd / path))


@dataclass
class RunContext:
    """Everything one invocation needs to build and run the graph for one run."""

    run_id: str
    paths: RunPaths
    request: Request | None
    policy_path: Path | None
    answers_path: Path | None = None
    key_path: Path | None = None
    # where the user ran the command (doit moves to the dodo file's directory)
    cwd: Path = field(default_factory=Path.cwd)
    _lock: IO[bytes] | None = field(default=None, repr=False)
    # commit the worktree is known to be clean at (saves a reset between steps)
    clean_at: str | None = None
    # start.preflight passed in this invocation (the target is checked once)
    target_checked: bool = False
    # directories lock() created (the run directory, then missing parents), deepest first
    _created: list[Path] = field(default_factory=list, repr=False)

    @cached_property
    def policy(self) -> Policy:
        from agentos_tasks.policy import load_policy

        if self.policy_path is None:
            raise AgentosError("no policy: this run has no request loaded")
        policy = load_policy(self.policy_path)
        if self.answers_path is None:
            return policy
        from agentos_tasks.answers_file import approved_paths, load_answers_file

        # the answers file's path approvals (ask paths one step may change) for this run
        approved = approved_paths(load_answers_file(self.answers_path))
        return dataclasses.replace(policy, approved_paths=approved)

    @cached_property
    def tape(self) -> Tape:
        """The run's tape; one object per invocation, so its head is read once. It signs
        as it goes with the executor key (attest.executor.SigningTape): each step_end's
        in-toto link and, when the invocation ends, the tape head."""
        from agentos_tasks.attest.executor import SigningTape

        return SigningTape(self)

    @cached_property
    def worktree_git(self) -> Git:
        """git in the run's worktree, through the run's private git dir (never the
        target's config, never discovery from the worktree)."""
        return Git(self.paths.worktree, self.need_request().author,
                   private_dir=self.paths.run_git_dir, work_tree=self.paths.worktree)

    @cached_property
    def target_git(self) -> Git:
        """git in the target repository (plumbing only; its config is vetted once per
        invocation, see git.Git)."""
        return Git(self.need_request().repo, self.need_request().author)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.request.steps if self.request else ()

    def need_request(self) -> Request:
        if self.request is None:
            raise AgentosError("request= is required for this task",
                               hint="doit run request=requests/demo.yaml")
        return self.request

    @property
    def sealed(self) -> bool:
        return self.paths.applied_record.exists()

    def applied(self) -> AppliedRecord | None:
        try:
            return cast("AppliedRecord", read_json(self.paths.applied_record))
        except FileNotFoundError:
            return None

    def base(self) -> BaseRecord | None:
        try:
            return cast("BaseRecord", read_json(self.paths.base_record))
        except FileNotFoundError:
            return None

    def lock(self) -> None:
        """Hold `.state/lock` for this process: two invocations of one run never interleave."""
        if self._lock is not None:
            return
        missing = self.paths.root
        while not missing.exists() and missing != missing.parent:
            self._created.append(missing)
            missing = missing.parent
        if self._created:
            atexit.register(self.release)
        self.paths.state.mkdir(parents=True, exist_ok=True)
        # the worktree inside holds whatever steps wrote: no other local user may enter
        os.chmod(self.paths.root, 0o700)
        lock_path = self.paths.state / "lock"
        refuse_special(lock_path)  # a FIFO or symlink planted there: one clear error
        handle = open(lock_path, "a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # another process holds the run: never remove what it is using
            self._created = []
            handle.seek(0)
            holder = handle.read().decode(errors="replace").strip() or "?"
            handle.close()
            raise AgentosError(f"run {self.run_id} is in use by another agentos process "
                               f"(pid {holder})", code=EXIT_STATE,
                               hint="wait for it to finish, or use run=NAME for another "
                                    "run") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Drop the lock; remove the run directory when this invocation created it and
        the run never started (no tape): nothing ran, so nothing is left behind."""
        created, self._created = self._created, []
        lock, self._lock = self._lock, None
        try:
            # only while holding the lock (another process may be about to use the dir)
            if lock is None or not created or os.path.lexists(self.paths.tape):
                return
            from agentos_tasks.leftovers import remove_tree

            remove_tree(self.paths.root)
        finally:
            if lock is not None:
                lock.close()
        for parent in created[1:]:  # outputs/ (and above) only when we made it and it is empty
            try:
                parent.rmdir()
            except OSError:
                break


def build_context(
    *,
    request: str | None,
    policy: str | None = None,
    run: str | None = None,
    outputs: str | None = None,
    answers: str | None = None,
    key: str | None = None,
    cwd: Path | None = None,
) -> RunContext:
    """Build the context from command-line values (doit vars or `agentos exec` options)."""
    from agentos_tasks.request import load_request

    cwd = cwd or Path.cwd()
    # nothing is found relative to a checkout: an installed agentos writes where it runs
    outputs_dir = resolve_cli_path(outputs, cwd) if outputs else cwd / "outputs"
    req = load_request(given_cli_path(request, cwd)) if request else None
    if req is None and not run:
        raise AgentosError("request= (or run= for an existing run) is required",
                           hint="doit run request=requests/demo.yaml")
    run_id = run or (req.id if req else "")
    if "/" in run_id or run_id in ("", ".", "..") or run_id.startswith("."):
        raise AgentosError(f"invalid run name {run_id!r}", hint="use letters, digits, _ . -")
    if outputs_dir.exists() and not outputs_dir.is_dir():
        raise AgentosError(f"outputs={outputs_dir} is not a directory",
                           hint="outputs= names the directory that holds run directories")
    paths = RunPaths(outputs_dir / run_id)
    if req is None and not paths.root.is_dir():
        raise AgentosError(f"no run {run_id!r} under {outputs_dir}",
                           hint="give request= to start it, or check outputs=")
    policy_path: Path | None = None
    if req is not None:
        if policy:
            policy_path = given_cli_path(policy, cwd)
        elif req.policy:
            policy_path = req.policy
        else:
            from agentos_tasks.policy import default_policy_path

            policy_path = default_policy_path()
        _check_layout(req, paths)
    return RunContext(
        run_id=run_id, paths=paths, request=req, policy_path=policy_path,
        answers_path=resolve_cli_path(answers, cwd) if answers else None,
        key_path=resolve_cli_path(key, cwd) if key else None, cwd=cwd,
    )


def _check_layout(req: Request, paths: RunPaths) -> None:
    """The run directory (and its worktree) must not live inside the target repository."""
    run_root = paths.root.resolve()
    repo = req.repo.resolve()
    if run_root == repo or repo in run_root.parents:
        raise AgentosError(
            f"the run directory {run_root} would be inside the target repository {repo}",
            where=f"{req.source}:{req.lines.get('repo', 1)}",
            hint="point outputs= (or the request's repo:) elsewhere: evidence must not "
                 "live in the tree it describes")
