"""The fleet's merge queue: every result lands here, in the driver, one at a time.

Invariants:
- A worker never writes the real target: it executes its request (steps, apply, gates)
  on a throwaway clone whose branch sat at the base the driver gave it.
- Landing is serialized (one thread, one result at a time). A result lands only if its
  run passed and the target branch is still at the run's base: then the run's own
  commits (content-addressed, so exactly what the worker's gates checked) are packed
  into the target and the branch moves with one compare-and-swap update-ref. A branch
  that moved is not merged into: the request is executed again from the new head (the
  `run=NEW` semantics: its `run` checks see the combined tree), at most `max_reruns`
  times, then reported.
- After landing, every gate runs again on the driver against the real target
  (gates.context.use_repo); a FAIL moves the branch back (compare-and-swap) and the
  request is reported. Nothing lands twice: a request's state is final once landed.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import EXIT_STATE, EXIT_STEP, AgentosError
from agentos_tasks.fleet.worker import job_inputs, unpack_run
from agentos_tasks.fsutil import read_json, write_json
from agentos_tasks.git import Git
from agentos_tasks.landing import checked_out, move_branch, pack_into, refuse_links_in_target

if TYPE_CHECKING:
    from agentos_tasks.fleet.engines import Engine

FINAL = ("landed", "failed")
WORKER_REQUEST = re.compile(r"/\S*agentos-fleet-[^/\s]+/request/request\.yaml")


@dataclass
class Entry:
    """One request of the fleet and where it stands."""

    request: Path
    request_id: str
    repo: Path
    branch: str
    url: str
    attempt: int = 0
    run: str = ""
    base: str = ""
    state: str = "queued"
    node: str = ""
    steps: int = 0
    commits: list[str] = field(default_factory=list)
    gates: str = ""
    reason: str = ""
    run_dir: str = ""
    started: float = 0.0
    timing: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"request": str(self.request), "run": self.run, "repo": str(self.repo),
                "branch": self.branch, "state": self.state, "node": self.node,
                "attempts": self.attempt, "steps": self.steps, "commits": self.commits,
                "gates": self.gates, "reason": self.reason, "run_dir": self.run_dir,
                "timing": self.timing}


def plan(requests: list[Path]) -> list[Entry]:
    """Load and check every request before anything runs (one clear error for a bad one);
    a request whose target is not a git repository or names no branch is refused here."""
    from agentos_tasks.request import load_request

    entries: list[Entry] = []
    for path in requests:
        req = load_request(path)
        git = Git(req.repo, req.author)
        if not req.repo.is_dir() or git.run("rev-parse", "--git-dir",
                                            check=False).returncode != 0:
            raise AgentosError(f"{path}: target {req.repo} is not a git repository",
                               hint="repo: names the repository the request changes")
        try:
            job_inputs(path)
        except ValueError as err:
            raise AgentosError(f"{path}: {err}", hint="a fleet ships a request with the "
                               "files below its directory; move the file there") from None
        try:
            branch = req.branch or git.current_branch()
        except AgentosError as err:
            raise AgentosError(f"{path}: target {req.repo} is not a git repository",
                               hint=err.message) from None
        if not branch or git.try_rev_parse(f"refs/heads/{branch}") is None:
            raise AgentosError(f"{path}: branch {branch!r} does not exist in {req.repo}",
                               hint="name an existing branch with branch:")
        entries.append(Entry(request=path, request_id=req.id, repo=req.repo.resolve(),
                             branch=branch, url=req.repo.resolve().as_uri()))
    ids = [e.request_id for e in entries]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise AgentosError(f"two requests of the fleet have the id {dup!r}",
                           hint="run ids name evidence directories: give each request its id")
    return entries


class Fleet:
    """Submit every request, land each result as it arrives, re-run what went stale."""

    def __init__(self, entries: list[Entry], engine: Engine, outputs: Path, *,
                 max_reruns: int = 5, key: Path | None = None,
                 show: Any = None) -> None:
        self.entries = entries
        self.engine = engine
        self.outputs = outputs
        self.max_reruns = max_reruns
        self.key = key
        self.show = show or (lambda entries, changed: None)
        self.id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self._handles: dict[Any, Entry] = {}
        self._taken: set[str] = set()
        self._t0, self._t0_wall = time.monotonic(), time.time()
        self.engine_start = engine.start_seconds

    def _since(self) -> float:
        """Seconds since this fleet started (the timeline's clock, the driver's)."""
        return round(time.monotonic() - self._t0, 3)

    # ---- submitting
    def _submit(self, entry: Entry) -> None:
        git = Git(entry.repo)
        entry.base = str(git.rev_parse(f"refs/heads/{entry.branch}"))
        entry.attempt += 1
        entry.run = self._free_run_id(entry)
        entry.node, entry.steps, entry.gates = "", 0, ""
        entry.state, entry.started = "submitted", time.monotonic()
        entry.timing.append({"run": entry.run, "submitted": self._since()})
        job = {"run": entry.run, "url": entry.url, "branch": entry.branch,
               "base": entry.base, **job_inputs(entry.request)}
        self._handles[self.engine.submit(job)] = entry
        self.show(self.entries, entry)

    def _free_run_id(self, entry: Entry) -> str:
        """`<id>`, or `<id>-<n>` for a re-run: never the name of a run directory that is
        already in --outputs (an earlier fleet's landed and signed run stays as it is)."""
        n = entry.attempt
        while True:
            run = entry.request_id if n == 1 else f"{entry.request_id}-{n}"
            if not (self.outputs / run).exists() and run not in self._taken:
                self._taken.add(run)
                return run
            n += 1

    def run(self) -> int:
        self.outputs.mkdir(parents=True, exist_ok=True)
        for entry in self.entries:
            self._submit(entry)
        while self._handles:
            for handle, outcome in self.engine.wait_any(list(self._handles)):
                entry = self._handles.pop(handle)
                self._settle(entry, outcome)
                if entry.state in FINAL:  # a re-run was shown as it was submitted
                    self.show(self.entries, entry)
        summary = self.outputs / f"fleet-{self.id}.json"
        write_json(summary, {"fleet": self.id, "engine": self.engine.name,
                             "timing": {"wall": self._since(),
                                        "engine_start": self.engine_start},
                             "requests": [e.row() for e in self.entries]})
        self.summary_path = summary
        ok = all(e.state == "landed" and e.gates == "PASS" for e in self.entries)
        return 0 if ok else EXIT_STEP

    # ---- one result, in the driver's one thread
    def _settle(self, entry: Entry, outcome: dict[str, Any] | BaseException) -> None:
        timing = entry.timing[-1]
        timing["returned"] = self._since()
        try:
            self._settle_one(entry, outcome, timing)
        finally:
            timing["settled"] = self._since()

    def _settle_one(self, entry: Entry, outcome: dict[str, Any] | BaseException,
                    timing: dict[str, Any]) -> None:
        if isinstance(outcome, BaseException):
            entry.state, entry.reason = "failed", f"worker error: {outcome}"[:300]
            return
        entry.node = str(outcome.get("node", ""))
        worker_timing = outcome.get("timing")
        if isinstance(worker_timing, dict):  # the worker's own say: shown, never used
            timing["worker"] = {str(k): v for k, v in worker_timing.items()
                                if isinstance(v, (int, float)) and k != "started_at"}
            started_at = worker_timing.get("started_at")
            if isinstance(started_at, (int, float)):  # the worker's clock (same host: ours)
                timing["started"] = round(started_at - self._t0_wall, 3)
        run_dir = self._unpack(entry, outcome)
        timing["unpacked"] = self._since()
        moved = Git(entry.repo).rev_parse(f"refs/heads/{entry.branch}") != entry.base
        if outcome.get("exit") != 0 and moved and entry.attempt <= self.max_reruns:
            # it may have failed for what a fleet-mate changed: decide on the new head
            entry.state, entry.reason = "rerun", "failed on a base that moved: re-running"
            self._submit(entry)
            return
        if outcome.get("exit") != 0:
            lines = str(outcome.get("stderr", "")).strip().splitlines()
            said = next((ln for ln in lines if ln.startswith("error:")), lines[-1] if lines else "")
            said = WORKER_REQUEST.sub(str(entry.request), said)  # the user's file, not ours
            entry.state = "failed"
            entry.reason = f"run exited {outcome.get('exit')}: {said.strip()}"[:300]
            return
        if run_dir is None:
            entry.state, entry.reason = "failed", "the worker returned no run directory"
            return
        head = Git(entry.repo).rev_parse(f"refs/heads/{entry.branch}")
        if head != entry.base:
            if entry.attempt > self.max_reruns:
                entry.state = "failed"
                entry.reason = f"branch {entry.branch} moved before each of " \
                               f"{entry.attempt} attempts could land; gave up"
                return
            entry.state = "rerun"
            entry.reason = f"base moved to {head[:12]}: re-running from there"
            self._submit(entry)
            return
        try:
            self._land(entry, run_dir, timing)
        except AgentosError as err:
            entry.state, entry.reason = "failed", err.message[:300]

    def _unpack(self, entry: Entry, outcome: dict[str, Any]) -> Path | None:
        data = outcome.get("tar") or b""
        if not data:
            return None
        dest = self.outputs / entry.run
        if dest.exists():  # never: run ids are taken free; a run directory is never replaced
            raise AgentosError(f"{dest} exists; a run directory is never replaced")
        with tempfile.TemporaryDirectory(dir=self.outputs, prefix=".fleet-") as scratch:
            unpacked = unpack_run(bytes(data), Path(scratch))
            if unpacked.name != entry.run:
                raise AgentosError(f"worker returned run {unpacked.name!r} for {entry.run!r}")
            unpacked.rename(dest)
        entry.run_dir = str(dest)
        result = _read(dest / "execution_result.json")
        entry.steps = len(result.get("steps") or [])
        return dest

    def _land(self, entry: Entry, run_dir: Path, timing: dict[str, Any]) -> None:
        """Move the real branch from the run's base to its post-apply head; gates again
        against the real target; a FAIL moves the branch back."""
        applied = _read(run_dir / ".state" / "applied.json")
        pre, post = str(applied.get("pre_apply_head")), str(applied.get("post_apply_head"))
        commits = [str(c) for c in applied.get("commits") or []]
        if pre != entry.base:
            raise AgentosError(f"run {entry.run} applied onto {pre[:12]}, not its base "
                               f"{entry.base[:12]}", code=EXIT_STATE)
        target = Git(entry.repo)
        if post != pre:
            own = run_dir / ".state" / "repo.git"
            objects = target.common_dir() / "objects"
            refuse_links_in_target(target.common_dir(), target.git_dir(), entry.branch)
            with tempfile.TemporaryDirectory(prefix="agentos-fleet-view-") as view:
                private = worker_objects(Path(view) / "objects.git", own, objects, pre)
                check_landing_range(private, pre, post, len(commits))
                checkout = checked_out(target, entry.branch, head=pre,
                                       view_dir=Path(view) / "view.git",
                                       extra_objects=(own / "objects",))
                if checkout is not None:
                    checkout.require_clean()
                pack_into(private, objects, [post], pre)
                if checkout is not None:
                    checkout.move(pre, post)
                if not move_branch(target, entry.branch, post, pre,
                                   f"agentos fleet: land run {entry.run}"):
                    if checkout is not None:
                        checkout.move(post, pre)
                    raise AgentosError(f"branch {entry.branch} moved while run {entry.run} "
                                       "was landed; nothing landed", code=EXIT_STATE)
                entry.commits = commits
                timing["landed"] = self._since()
                gates = self._gates(run_dir, entry.repo)
                timing["gated"] = self._since()
                if gates != "PASS":
                    if checkout is not None:
                        checkout.move(post, pre)
                    if move_branch(target, entry.branch, pre, post,
                                   f"agentos fleet: undo run {entry.run} (gates failed)"):
                        entry.commits = []
                    entry.gates = gates
                    raise AgentosError(f"gates failed on the target after landing ({gates});"
                                       " the branch was moved back", code=EXIT_STATE)
        else:  # nothing to land (every step unchanged): the gates still decide
            gates = self._gates(run_dir, entry.repo)
            if gates != "PASS":
                entry.gates = gates
                raise AgentosError(f"gates failed on the target ({gates})", code=EXIT_STATE)
        entry.gates = "PASS"
        entry.state = "landed"
        if self.key is not None:
            from agentos_tasks.attest import sign_run

            sign_run(run_dir, self.key)

    @staticmethod
    def _gates(run_dir: Path, repo: Path) -> str:
        """Every gate, recomputed on the driver with git read from the real target."""
        from agentos_tasks.gates.common import FAIL
        from agentos_tasks.gates.context import use_repo
        from agentos_tasks.gates.report import write_reports
        from agentos_tasks.gates.runner import run_all

        use_repo(run_dir, repo)
        results = run_all(run_dir)
        try:
            write_reports(run_dir, results, show=False)
        except AgentosError:
            pass
        failed = [r.id for r in results if r.status == FAIL]
        return "PASS" if not failed else "FAIL " + ",".join(failed)


def worker_objects(git_dir: Path, own: Path, target_objects: Path, pre: str) -> Git:
    """A private git dir of ours (our config, no hooks) that reads the target's objects
    and the worker's objects, nothing else: the worker's own git dir, its config and any
    alternates file it carries are never used (a worker is not trusted with host git)."""
    from agentos_tasks.git import init_private_repo

    for name in ("alternates", "http-alternates"):
        (own / "objects" / "info" / name).unlink(missing_ok=True)
    init_private_repo(git_dir, fmt_config=target_objects.parent / "config",
                      alternates=[target_objects, own / "objects"], head=pre)
    return Git(git_dir, private_dir=git_dir, work_tree=git_dir)


def check_landing_range(git: Git, pre: str, post: str, count: int) -> None:
    """What would land is a first-parent range on `pre` of exactly the commits the worker
    recorded, before anything of the target moves."""
    if git.run("merge-base", "--is-ancestor", pre, post, check=False).returncode != 0:
        raise AgentosError(f"the worker's post-apply head {post[:12]} does not descend from "
                           f"the base {pre[:12]}; nothing landed", code=EXIT_STATE)
    landed = git.run("rev-list", "--first-parent", f"{pre}..{post}").text.split()
    if len(landed) != count:
        raise AgentosError(f"the worker's range {pre[:12]}..{post[:12]} holds {len(landed)} "
                           f"commit(s), its record {count}; nothing landed", code=EXIT_STATE)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def summary_lines(fleet: Fleet) -> list[str]:
    lines = []
    for e in fleet.entries:
        what = f"{len(e.commits)} commit(s) on {e.branch}" if e.state == "landed" else e.reason
        lines.append(f"{e.state:7} {e.request_id}: {what} (attempts {e.attempt}, node "
                     f"{e.node or '-'}; gates {e.gates or '-'})")
    landed = sum(e.state == "landed" for e in fleet.entries)
    lines.append(f"fleet {fleet.id}: {landed} of {len(fleet.entries)} landed; summary "
                 f"{getattr(fleet, 'summary_path', '')}")
    return lines


def dumps(fleet: Fleet) -> str:
    return json.dumps([e.row() for e in fleet.entries], indent=2)
