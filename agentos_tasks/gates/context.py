"""What gates read: artifacts of one run directory, loaded lazily, every read recorded.

Reads go through `GateContext` so each gate's evidence list (path + sha256 or MISSING)
is exactly what it looked at.

The run directory may come from someone else (`doit gates run=...`, `agentos verify`,
`agentos tool verify`). Before its first read a context checks that it holds nothing but
directories and regular files (fsutil.check_received_tree; the worktree aside): otherwise
every read raises Missing naming the FIFO, socket, device or symlink, so each gate FAILs
saying why instead of blocking on a FIFO or reading what a symlink points at. Every read
is fsutil.read_regular (O_NOFOLLOW | O_NONBLOCK, regular files only, bounded).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.fsutil import RefusedFile, check_received_tree, read_regular
from agentos_tasks.gates.request_record import parse_request_yaml, record_disagreement
from agentos_tasks.git import Git, private_objects_usable
from agentos_tasks.tape import verify_chain

if TYPE_CHECKING:
    from agentos_tasks.tape import ChainReport


class Missing(Exception):
    """An artifact a gate needs does not exist (or does not parse)."""


_AGREEMENT: dict[tuple[object, ...], str | None] = {}
_REPOS: dict[Path, Path] = {}


def use_repo(run_dir: Path, repo: Path) -> None:
    """Check the run in `run_dir` against `repo` instead of the path it recorded: a clone
    of its target elsewhere (`agentos verify --repo`), or the real target of a run a fleet
    worker executed on a throwaway clone. Commits are content-addressed, so the gates that
    read git prove the same things there; the recorded records must still agree."""
    _REPOS[run_dir.resolve()] = repo.resolve()


class GateContext:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._evidence: dict[str, str | None] = {}
        self._checked = False
        self._refusal: str | None = None

    # ---- reading (the only way a gate gets at the run directory's bytes)
    def refusal(self) -> str | None:
        """Why this run directory is not read at all (it holds a FIFO, socket, device or
        symlink, named), or None; checked once per context, before the first read."""
        if not self._checked:
            try:
                check_received_tree(self.run_dir)
            except RefusedFile as exc:
                self._refusal = exc.message
            self._checked = True
        return self._refusal

    def guard(self) -> None:
        """Raise Missing when the run directory must not be read (see `refusal`)."""
        refused = self.refusal()
        if refused is not None:
            raise Missing(refused)

    def _read(self, rel: str) -> bytes:
        """The bytes of run-relative `rel`, recorded as evidence (sha256, or MISSING).

        Raises Missing for a refused run directory, a missing file or a file that is not
        a regular one (fsutil.read_regular: never follows a symlink, never blocks)."""
        try:
            self.guard()
            data = read_regular(self.run_dir / rel)
        except Missing:
            self._evidence[rel] = None
            raise
        except RefusedFile as exc:
            self._evidence[rel] = None
            raise Missing(exc.message) from None
        except OSError:
            self._evidence[rel] = None
            raise Missing(f"{rel} is missing") from None
        self._evidence[rel] = hashlib.sha256(data).hexdigest()
        return data

    # ---- evidence bookkeeping
    def note(self, rel: str) -> Path:
        """Record `rel` as evidence and return its path. Raises Missing when the run
        directory is refused as a whole (callers may open the path themselves next)."""
        self.guard()
        try:
            self._read(rel)
        except Missing:
            pass
        return self.run_dir / rel

    def evidence_list(self) -> list[dict[str, Any]]:
        return [{"path": p, "sha256": d if d else "MISSING"}
                for p, d in sorted(self._evidence.items())]

    def exists(self, rel: str) -> bool:
        """True when `rel` is present in any form: a FIFO or symlink there is not
        "absent" (that could turn a FAIL into NOT_APPLICABLE), its read raises Missing."""
        return os.path.lexists(self.note(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._read(rel)

    def json(self, rel: str) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except ValueError:
            raise Missing(f"{rel} is not valid JSON") from None

    def sha256(self, rel: str) -> str | None:
        self.note(rel)
        return self._evidence.get(rel)

    def request_yaml(self) -> dict[str, Any]:
        """audit/request.yaml as plain data (the request file exactly as it was run)."""
        doc = parse_request_yaml(self.read_bytes("audit/request.yaml"))
        if doc is None:
            raise Missing("audit/request.yaml does not parse")
        if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
            raise Missing("audit/request.yaml has no steps list")
        return doc

    def answers_file(self) -> dict[str, Any] | None:
        """audit/answers.yaml validated as the executor validates it; None when absent."""
        if not self.exists("audit/answers.yaml"):
            return None
        import yaml

        from agentos_tasks.answers_file import ANSWERS_SCHEMA

        try:
            data = ANSWERS_SCHEMA(yaml.safe_load(self.read_bytes("audit/answers.yaml")) or {})
        except Exception as exc:  # unreadable, not YAML, or not the schema
            raise Missing(f"audit/answers.yaml is not a valid answers file: "
                          f"{str(exc).splitlines()[0]}") from None
        return dict(data)

    # ---- common artifacts
    @cached_property
    def chain(self) -> ChainReport:
        self.note("audit/run_tape.jsonl")  # raises Missing for a refused run directory:
        self.note("audit/tape_head.json")  # verify_chain opens the tape itself
        return verify_chain(self.run_dir)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.chain.events

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    @cached_property
    def result(self) -> dict[str, Any]:
        data = self.json("execution_result.json")
        if not isinstance(data, dict):
            raise Missing("execution_result.json is not an object")
        return data

    @cached_property
    def request_record(self) -> dict[str, Any]:
        """audit/request.json, which every gate re-decides from — accepted only when it
        says exactly what the recorded request file (audit/request.yaml) and the recorded
        inputs (audit/inputs/) say, so it cannot be rewritten to fit a policy."""
        data = self.json("audit/request.json")
        if not isinstance(data, dict):
            raise Missing("audit/request.json is not an object")
        raw_yaml = self.read_bytes("audit/request.yaml")
        inputs = self.run_dir / "audit" / "inputs"
        key = (hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
               hashlib.sha256(raw_yaml).hexdigest(), str(inputs),
               tuple(sorted((p.name, p.stat().st_mtime_ns) for p in inputs.glob("*"))))
        if key not in _AGREEMENT:  # every gate asks; parse the request file once
            _AGREEMENT[key] = record_disagreement(data, raw_yaml, inputs)
        problem = _AGREEMENT[key]
        if problem:
            raise Missing(f"audit/request.json disagrees with audit/request.yaml: {problem}")
        return data

    def manifest(self, step_id: str) -> dict[str, Any]:
        data = self.json(f"steps/{step_id}.json")
        if not isinstance(data, dict):
            raise Missing(f"steps/{step_id}.json is not an object")
        return data

    def step_ids(self) -> list[str]:
        return [s["id"] for s in self.request_record["steps"]]

    # ---- git (the repos named by the recorded evidence)
    def repo_path(self) -> Path:
        """The target repository as the recorded request names it; execution_result and
        the tape must agree (gates never follow a decoy repository)."""
        repo = Path(self.request_record["repo"])
        try:
            named = self.result.get("repo")
        except Missing:
            named = None
        if named is not None and Path(named) != repo:
            raise Missing(f"execution_result.json names repo {named}, the recorded request "
                          f"{repo}")
        for event in self.events_named("worktree_created"):
            if Path(event.get("repo", "")) != repo:
                raise Missing(f"the tape's worktree_created names repo {event.get('repo')}, "
                              f"the recorded request {repo}")
        return _REPOS.get(self.run_dir.resolve(), repo)

    def recorded_repo(self) -> Path:
        """Where the run was executed (the recorded request's repo), whatever `use_repo`
        says to read git from."""
        return Path(self.request_record["repo"])

    @cached_property
    def git(self) -> Git:
        """git in the target repository; a run's objects that never landed (a failed or
        not yet applied run) are read from its private git dir, as an alternate."""
        own = self.run_dir / ".state" / "repo.git" / "objects"
        target = Git(self.repo_path())
        if not own.is_dir():
            return target
        try:
            objects = target.common_dir() / "objects"
        except (AgentosError, OSError):
            return target  # no repository there: the gates that use git say so
        return Git(self.repo_path(), alternates=(own,)) \
            if private_objects_usable(own, objects) else target

    def branch(self) -> str:
        """The target branch: the request's, or the one the worktree task recorded; every
        record of it must agree."""
        wanted = self.request_record.get("branch")
        named = {str(e.get("branch")) for e in self.events_named("worktree_created")}
        named |= {str(e.get("branch")) for e in self.events_named("patches_applied")}
        try:
            if self.result.get("branch") is not None:
                named.add(str(self.result["branch"]))
        except Missing:
            pass
        if wanted is not None:
            named.add(str(wanted))
        if len(named) > 1:
            raise Missing(f"the run's records name different branches: {sorted(named)}")
        if not named:
            raise Missing("no branch is recorded for this run")
        return named.pop()

    def branch_head(self) -> str | None:
        return self.git.try_rev_parse(f"refs/heads/{self.branch()}")

    def branch_head_fingerprint(self) -> str:
        try:
            return f"{self.repo_path()}@{self.branch()}={self.branch_head()}"
        except Exception:  # no repo / no result: the gate itself will FAIL on it
            return "unknown"
