"""What gates read: artifacts of one run directory, loaded lazily, every read recorded.

Reads go through `GateContext` so each gate's evidence list (path + sha256 or MISSING)
is exactly what it looked at.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from agentos_tasks.git import Git
from agentos_tasks.tape import ChainReport, verify_chain


class Missing(Exception):
    """An artifact a gate needs does not exist (or does not parse)."""


class GateContext:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._evidence: dict[str, str | None] = {}

    # ---- evidence bookkeeping
    def note(self, rel: str) -> Path:
        path = self.run_dir / rel
        try:
            self._evidence[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            self._evidence[rel] = None
        return path

    def evidence_list(self) -> list[dict[str, Any]]:
        return [{"path": p, "sha256": d if d else "MISSING"}
                for p, d in sorted(self._evidence.items())]

    def exists(self, rel: str) -> bool:
        return self.note(rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        path = self.note(rel)
        try:
            return path.read_bytes()
        except OSError:
            raise Missing(f"{rel} is missing") from None

    def json(self, rel: str) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except ValueError:
            raise Missing(f"{rel} is not valid JSON") from None

    def sha256(self, rel: str) -> str | None:
        self.note(rel)
        return self._evidence.get(rel)

    # ---- common artifacts
    @cached_property
    def chain(self) -> ChainReport:
        self.note("audit/run_tape.jsonl")
        self.note("audit/tape_head.json")
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
        data = self.json("audit/request.json")
        if not isinstance(data, dict):
            raise Missing("audit/request.json is not an object")
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
        try:
            return Path(self.result["repo"])
        except Missing:
            return Path(self.request_record["repo"])

    @cached_property
    def git(self) -> Git:
        return Git(self.repo_path())

    def branch(self) -> str:
        return str(self.result.get("branch") or self.request_record.get("branch"))

    def branch_head(self) -> str | None:
        return self.git.try_rev_parse(f"refs/heads/{self.branch()}")

    def branch_head_fingerprint(self) -> str:
        try:
            return f"{self.repo_path()}@{self.branch()}={self.branch_head()}"
        except Exception:  # no repo / no result: the gate itself will FAIL on it
            return "unknown"
