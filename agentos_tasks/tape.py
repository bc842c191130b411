"""The run tape: an append-only, hash-chained, fsync'd JSON-lines audit log.

Each line is one event: ``{"seq", "ts", "event", "step", ..., "prev"}`` where ``prev`` is
the sha256 of the previous line's bytes (without its newline; 64 zeros for the first).
``audit/tape_head.json`` ({count, head}) is replaced atomically after every append, so a
truncated, reordered or edited tape no longer matches its head.

Recovery, at the start of an invocation (`start.recover_tape`) or its first append
(keeping ``seq`` contiguous):
- a last line that lacks only its newline (it parses, is the next ``seq``, chains) is
  completed with it; any other torn last line is cut, ``run_resumed`` records how many
  bytes (the event it was is then made again: a torn ``step_end`` re-runs its step);
- a tape that ends in a ``step_start`` (the invocation running that step was killed or
  interrupted) gets ``step_interrupted`` for that step, then ``run_resumed``. Gate EX-E
  accepts an unclosed step in exactly that shape: step_start, step_interrupted of the same
  step, run_resumed, on consecutive lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agentos_tasks import faults
from agentos_tasks.fsutil import RefusedFile, fsync_dir, read_regular, sha256_bytes, write_json

if TYPE_CHECKING:
    from pathlib import Path

GENESIS = "0" * 64
EVENTS = frozenset({
    "run_start", "policy_loaded", "policy_denied", "worktree_created", "step_start",
    "step_end", "step_failed", "step_interrupted", "questions_blocked", "resume_applied",
    "paths_approved",
    "run_resumed", "patches_applied", "apply_failed", "rollback", "run_end",
})


@dataclass(frozen=True)
class TapeState:
    count: int
    head: str
    last_event: str | None


def encode_event(seq: int, event: str, prev: str, fields: dict[str, Any]) -> bytes:
    record: dict[str, Any] = {
        "seq": seq,
        "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
        "event": event,
    }
    record.update(fields)
    record["prev"] = prev
    # a file name that is not UTF-8 (surrogate-escaped) becomes a JSON \udcXX escape
    return json.dumps(record, sort_keys=False, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8", "backslashreplace")


class Tape:
    """Appends events to ``audit/run_tape.jsonl`` of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "audit" / "run_tape.jsonl"
        self.head_path = run_dir / "audit" / "tape_head.json"
        self._state: TapeState | None = None

    def state(self) -> TapeState:
        if self._state is None:
            self._state = self._recover()
        return self._state

    def _recover(self) -> TapeState:
        """Read the tape; cut a torn last line (crash mid-write) and close a step left
        open by a killed invocation; note both (step_interrupted, run_resumed)."""
        if not self.path.exists():
            return TapeState(0, GENESIS, None)
        data = self.path.read_bytes()
        torn = b""
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            if _complete_line(data[:cut].splitlines(), data[cut:]):
                # killed after the whole line, before its newline: the event is there
                with open(self.path, "ab") as handle:
                    handle.write(b"\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                data += b"\n"
            else:
                torn, data = data[cut:], data[:cut]
                with open(self.path, "r+b") as handle:
                    handle.truncate(cut)
                    os.fsync(handle.fileno())
        lines = data.splitlines()
        head = sha256_bytes(lines[-1]) if lines else GENESIS
        last = json.loads(lines[-1]) if lines else None
        state = TapeState(len(lines), head, last.get("event") if last else None)
        open_start = last if last is not None and last.get("event") == "step_start" else None
        # killed again between step_interrupted and its run_resumed: finish that pair
        half_closed = last is not None and last.get("event") == "step_interrupted"
        if not torn and open_start is None and not half_closed:
            self._repair_lagging_head(lines, state)
            return state
        self._state = state
        reasons = ["an earlier recovery was interrupted"] if half_closed else []
        if open_start is not None:
            step = str(open_start.get("step"))
            self._write("step_interrupted", step, {
                "step": step, "started_seq": open_start.get("seq"),
                "reason": "the invocation that started this step ended before closing it "
                          "(killed or interrupted); the step runs again from its parent"})
            reasons.append(f"step {step} interrupted")
        fields: dict[str, Any] = {}
        if torn:
            reasons.append("torn last line removed")
            fields["torn_bytes"] = len(torn)
        self._write("run_resumed", None, {"reason": "; ".join(reasons), **fields})
        return self._state

    def recover(self) -> TapeState:
        """Recover now (what the first append would do): for an invocation that finds
        nothing to add, e.g. a closed run re-entered after a crash."""
        return self.state()

    def _repair_lagging_head(self, lines: list[bytes], state: TapeState) -> None:
        """Killed between a line's fsync and the head's replacement: the head still names
        the line before the last. Exactly that lag is repaired; any other mismatch is left
        for verify_chain (and the gates) to report."""
        try:
            head = json.loads(self.head_path.read_bytes())
        except (OSError, ValueError):
            return
        before = sha256_bytes(lines[-2]) if len(lines) >= 2 else GENESIS
        if lines and head == {"count": len(lines) - 1, "head": before}:
            write_json(self.head_path, {"count": state.count, "head": state.head})

    def append(self, event: str, step: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one event durably and move the head. Returns the record written."""
        if event not in EVENTS:
            raise ValueError(f"unknown tape event {event!r}")
        state = self.state()
        if state.last_event == "run_end" and event not in ("run_start", "run_resumed"):
            # a new invocation continues a run that had ended (failed, denied, blocked)
            self._write("run_resumed", None, {"reason": "new invocation"})
            state = self.state()
        payload: dict[str, Any] = {}
        if step is not None:
            payload["step"] = step
        payload.update(fields)
        return self._write(event, step, payload)

    def _write(self, event: str, step: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        state = self.state()
        line = encode_event(state.count, event, state.head, payload)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        with open(self.path, "ab") as handle:
            faults.torn_write(state.count, handle, line)
            handle.write(line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        if new_file:
            fsync_dir(self.path.parent)
        faults.after_tape_event(state.count, head_written=False)
        head = sha256_bytes(line)
        self._state = TapeState(state.count + 1, head, event)
        write_json(self.head_path, {"count": state.count + 1, "head": head})
        faults.after_tape_event(state.count, head_written=True)
        return dict(json.loads(line))


def _complete_line(lines: list[bytes], tail: bytes) -> bool:
    """A last line without its newline is a whole event when it parses, is the next seq,
    chains to the line before and names a known event: only its newline is missing.
    Anything else is a torn write and is cut."""
    try:
        record = json.loads(tail)
    except ValueError:
        return False
    prev = sha256_bytes(lines[-1]) if lines else GENESIS
    return (isinstance(record, dict) and record.get("seq") == len(lines)
            and record.get("prev") == prev and record.get("event") in EVENTS)


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The tape's events as written, unverified (the executor's own reading of what it
    recorded; gates use verify_chain). A torn last line is left out; no tape, no events."""
    try:
        data = (run_dir / "audit" / "run_tape.jsonl").read_bytes()
    except FileNotFoundError:
        return []
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
    return [dict(json.loads(line)) for line in data.splitlines()]


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    reason: str
    count: int
    head: str
    events: list[dict[str, Any]]


def verify_chain(run_dir: Path) -> ChainReport:
    """Check every `prev`, contiguous `seq`, parseable lines, and the recorded head."""
    tape = run_dir / "audit" / "run_tape.jsonl"
    head_file = run_dir / "audit" / "tape_head.json"
    try:
        data = read_regular(tape)
    except FileNotFoundError:
        return ChainReport(False, "audit/run_tape.jsonl is missing", 0, GENESIS, [])
    except (OSError, RefusedFile) as exc:
        return ChainReport(False, f"audit/run_tape.jsonl cannot be read: {exc}", 0, GENESIS, [])
    if data and not data.endswith(b"\n"):
        return ChainReport(False, "tape ends with a torn line", 0, GENESIS, [])
    prev = GENESIS
    events: list[dict[str, Any]] = []
    for index, line in enumerate(data.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            return ChainReport(False, f"line {index + 1} is not JSON", index, prev, events)
        if not isinstance(record, dict) or record.get("seq") != index:
            return ChainReport(False, f"line {index + 1}: seq is {record.get('seq')!r}, "
                               f"expected {index}", index, prev, events)
        if record.get("prev") != prev:
            return ChainReport(False, f"line {index + 1}: prev does not match the sha256 of "
                               "the line before", index, prev, events)
        if record.get("event") not in EVENTS:
            return ChainReport(False, f"line {index + 1}: unknown event "
                               f"{record.get('event')!r}", index, prev, events)
        events.append(record)
        prev = sha256_bytes(line)
    if not events:
        return ChainReport(False, "tape is empty", 0, prev, events)
    try:
        head = json.loads(read_regular(head_file, limit=1 << 16))
    except FileNotFoundError:
        return ChainReport(False, "audit/tape_head.json is missing", len(events), prev, events)
    except (ValueError, RefusedFile, OSError) as exc:
        return ChainReport(False, f"audit/tape_head.json is not a readable JSON file "
                           f"({str(exc).splitlines()[0][:80]})", len(events), prev, events)
    if head != {"count": len(events), "head": prev}:
        return ChainReport(False, f"tape_head.json says {head.get('count')} events / "
                           f"{str(head.get('head'))[:12]}, tape has {len(events)} / {prev[:12]}",
                           len(events), prev, events)
    return ChainReport(True, f"{len(events)} events chain to head {prev[:12]}", len(events),
                       prev, events)
