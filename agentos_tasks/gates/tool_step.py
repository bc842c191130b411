"""One tool step's recorded facts, as the TL gates read them: the request step and the
recorded policy, the task and result packs (validated by agentos_tasks.tools.packs), the
step's last outcome on the tape, its worktree and its manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.gates.common import Fail, recorded_policy, request_from_record
from agentos_tasks.tools import packs

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.model import Step, ToolSpec
    from agentos_tasks.policy import Policy

SYMLINK_MODE = "120000"
GITLINK_MODE = "160000"


class ToolStep:
    """The recorded facts of one tool step, read lazily through the gate context."""

    def __init__(self, ctx: GateContext, step_id: str, pack_rel: str | None = None) -> None:
        self.ctx = ctx
        self.id = step_id
        self.pack_rel = pack_rel or f"tools/{step_id}/{packs.RESULT_PACK_NAME}"
        self.task_rel = f"tools/{step_id}/{packs.TASK_PACK_NAME}"
        self.transcript_rel = f"tools/{step_id}/transcript.jsonl"
        self.manifest_rel = f"steps/{step_id}.json"
        self.patch_rel = f"patches/{step_id}.patch"
        self._pack: dict[str, Any] | None = None
        self._task: dict[str, Any] | None = None

    # -- request / policy
    def step(self) -> Step:
        for step in request_from_record(self.ctx.request_record).steps:
            if step.id == self.id:
                if step.op != "tool" or step.tool is None:
                    raise Fail(f"step {self.id} is a {step.op} step, not a tool step")
                return step
        raise Fail(f"the recorded request has no step {self.id!r}")

    def spec(self) -> ToolSpec:
        tool = self.step().tool
        if tool is None:  # step() refuses a step without one
            raise Fail(f"step {self.id} is not a tool step")
        return tool

    def policy(self) -> Policy:
        return recorded_policy(self.ctx)

    # -- packs
    def pack(self) -> dict[str, Any]:
        if self._pack is None:
            self._pack = _load(self.ctx, self.pack_rel, packs.load_result_pack,
                               "tool result pack")
            if self._pack["step"] != self.id or self._pack["run"] != self.ctx.run_dir.name:
                raise Fail(f"{self.pack_rel} is for run {self._pack['run']!r} step "
                           f"{self._pack['step']!r}, not {self.ctx.run_dir.name!r} {self.id!r}")
        return self._pack

    def task(self) -> dict[str, Any]:
        if self._task is None:
            self._task = _load(self.ctx, self.task_rel, packs.load_task_pack, "tool task pack")
        return self._task

    def allowed_paths(self) -> list[str]:
        """The task pack's allowed paths when it is valid, else the request's globs."""
        try:
            return list(self.task()["allowed_paths"])
        except Fail:
            return list(self.spec().paths)

    # -- tape / manifest
    def outcome(self) -> tuple[str, dict[str, Any] | None]:
        """("landed", step_end) | ("failed", step_failed) | ("pending", None) for the last
        execution of this step on the tape."""
        events = self.ctx.events
        starts = [i for i, e in enumerate(events)
                  if e.get("event") == "step_start" and e.get("step") == self.id]
        if not starts:
            return "pending", None
        for event in events[starts[-1] + 1:]:
            if event.get("step") != self.id:
                continue
            if event.get("event") == "step_end":
                return "landed", event
            if event.get("event") == "step_failed":
                return "failed", event
        return "pending", None

    def start_event(self) -> dict[str, Any]:
        starts = [e for e in self.ctx.events_named("step_start") if e.get("step") == self.id]
        if not starts:
            raise Fail(f"the tape has no step_start for {self.id}")
        return starts[-1]

    def worktree_path(self) -> Path:
        """The worktree the step ran in: the last worktree_created before its start."""
        start_seq = self.start_event().get("seq", -1)
        created = [e for e in self.ctx.events_named("worktree_created")
                   if isinstance(e.get("seq"), int) and e["seq"] < start_seq]
        if not created:
            raise Fail(f"no worktree_created on the tape before step {self.id} started")
        return Path(str(created[-1].get("path")))

    def manifest(self) -> dict[str, Any]:
        return self.ctx.manifest(self.id)


def _load(ctx: GateContext, rel: str, loader: Callable[[Path], dict[str, Any]],
          what: str) -> dict[str, Any]:
    path = ctx.note(rel)
    if not path.is_file():
        raise Fail(f"{rel} is missing")
    try:
        return loader(path)
    except AgentosError as err:
        raise Fail(f"{what} {rel} is invalid: {err.message}") from None


def landed_or_failed(ts: ToolStep) -> tuple[str, dict[str, Any] | None]:
    state, event = ts.outcome()
    if state == "pending":
        raise Fail(f"step {ts.id} has no step_end or step_failed on the tape after its start")
    return state, event


def nothing_landed(ts: ToolStep) -> None:
    """A failed step must have left no manifest and no patch behind."""
    if ts.ctx.exists(ts.manifest_rel):
        raise Fail(f"step {ts.id} failed, yet {ts.manifest_rel} exists")
    if ts.ctx.exists(ts.patch_rel):
        raise Fail(f"step {ts.id} failed, yet {ts.patch_rel} exists")
