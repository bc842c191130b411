"""The run tape: hash chain, atomic head, recovery from a torn last line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.tape import GENESIS, Tape, read_events, verify_chain


def filled(tmp_path: Path, n: int = 4) -> Tape:
    tape = Tape(tmp_path)
    tape.append("run_start", run="r")
    for i in range(n - 1):
        tape.append("step_start", f"s{i}", op="write")
    return tape


def test_chain_links_every_line_and_head_matches(tmp_path: Path) -> None:
    filled(tmp_path)
    lines = (tmp_path / "audit/run_tape.jsonl").read_bytes().splitlines()
    prev = GENESIS
    for seq, line in enumerate(lines):
        record = json.loads(line)
        assert record["seq"] == seq and record["prev"] == prev
        assert list(record)[:3] == ["seq", "ts", "event"] and list(record)[-1] == "prev"
        prev = sha256_bytes(line)
    head = json.loads((tmp_path / "audit/tape_head.json").read_text())
    assert head == {"count": 4, "head": prev}
    assert verify_chain(tmp_path).ok


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "truncate", "head"])
def test_tampering_is_detected(tmp_path: Path, tamper: str) -> None:
    filled(tmp_path)
    path = tmp_path / "audit/run_tape.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    if tamper == "edit":
        lines[1] = lines[1].replace(b'"op":"write"', b'"op":"run"')
    elif tamper == "delete":
        del lines[2]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "truncate":
        lines = lines[:-1]
    if tamper == "head":
        (tmp_path / "audit/tape_head.json").write_text('{"count": 4, "head": "00"}')
    else:
        path.write_bytes(b"".join(lines))
    report = verify_chain(tmp_path)
    assert not report.ok
    expected = {"edit": "prev", "delete": "seq", "reorder": "seq", "truncate": "tape_head",
                "head": "tape_head"}[tamper]
    assert expected in report.reason


def test_missing_or_empty_tape_fails(tmp_path: Path) -> None:
    assert "missing" in verify_chain(tmp_path).reason
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit/run_tape.jsonl").write_bytes(b"")
    assert not verify_chain(tmp_path).ok


def test_torn_last_line_is_cut_and_recorded(tmp_path: Path) -> None:
    filled(tmp_path)
    path = tmp_path / "audit/run_tape.jsonl"
    with open(path, "ab") as handle:
        handle.write(b'{"seq":4,"ts":"x","event":"step_e')  # crash mid-write
    assert not verify_chain(tmp_path).ok
    tape = Tape(tmp_path)
    tape.append("step_end", "s0", status="changed")
    report = verify_chain(tmp_path)
    assert report.ok, report.reason
    events = [e["event"] for e in report.events]
    # the tape also ended in an open step_start (s2): closed first, one run_resumed for both
    assert events[-4:] == ["step_start", "step_interrupted", "run_resumed", "step_end"]
    assert report.events[-3]["step"] == "s2" and report.events[-3]["started_seq"] == 3
    assert report.events[-2]["torn_bytes"] == len(b'{"seq":4,"ts":"x","event":"step_e')
    assert report.events[-2]["reason"] == "step s2 interrupted; torn last line removed"
    assert [e["seq"] for e in report.events] == list(range(len(events)))


def test_new_invocation_after_run_end_is_marked_resumed(tmp_path: Path) -> None:
    tape = filled(tmp_path, 1)
    tape.append("run_end", status="failed")
    Tape(tmp_path).append("step_start", "s1")
    events = [e["event"] for e in verify_chain(tmp_path).events]
    assert events[-3:] == ["run_end", "run_resumed", "step_start"]


def test_unknown_event_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Tape(tmp_path).append("made_up")


def test_open_step_start_is_closed_on_the_next_invocation(tmp_path: Path) -> None:
    """A killed invocation left step_start last: the next append is preceded by
    step_interrupted of that step (naming its seq) and run_resumed, on consecutive lines."""
    tape = Tape(tmp_path)
    tape.append("run_start", run="r")
    tape.append("step_start", "s1", op="run")
    Tape(tmp_path).append("step_start", "s1", op="run")
    report = verify_chain(tmp_path)
    assert report.ok, report.reason
    shape = [(e["event"], e.get("step")) for e in report.events]
    assert shape == [("run_start", None), ("step_start", "s1"), ("step_interrupted", "s1"),
                     ("run_resumed", None), ("step_start", "s1")]
    assert report.events[2]["started_seq"] == 1
    assert report.events[3]["reason"] == "step s1 interrupted"
    assert "torn_bytes" not in report.events[3]


def test_closed_or_not_last_step_start_adds_no_recovery_event(tmp_path: Path) -> None:
    """Only a tape that ENDS in step_start is recovered: a closed step, or a step_start
    followed by something else (a broken tape EX-E must fail), is left as it is."""
    tape = Tape(tmp_path / "closed")
    tape.append("step_start", "s1")
    tape.append("step_end", "s1", status="changed")
    Tape(tmp_path / "closed").append("run_end", status="applied")
    assert [e["event"] for e in read_events(tmp_path / "closed")] == \
        ["step_start", "step_end", "run_end"]
    tape = Tape(tmp_path / "broken")
    tape.append("step_start", "s1")
    tape.append("policy_loaded")
    Tape(tmp_path / "broken").append("run_end", status="failed")
    assert [e["event"] for e in read_events(tmp_path / "broken")] == \
        ["step_start", "policy_loaded", "run_end"]


def test_read_events_leaves_out_a_torn_line(tmp_path: Path) -> None:
    filled(tmp_path, 2)
    with open(tmp_path / "audit/run_tape.jsonl", "ab") as handle:
        handle.write(b'{"seq":2,"ev')
    assert [e["seq"] for e in read_events(tmp_path)] == [0, 1]
    assert read_events(tmp_path / "nowhere") == []


APPEND_FIVE = """
import sys
from pathlib import Path
from agentos_tasks.tape import Tape
tape = Tape(Path(sys.argv[1]))
for i in range(5):
    tape.append("step_start" if i % 2 else "step_end", f"s{i}")
"""


@pytest.mark.parametrize("crash", ["2", "2:line"])
def test_crash_after_event_kills_right_after_that_event(tmp_path: Path, crash: str) -> None:
    """AGENTOS_CRASH_AFTER_EVENT=N: SIGKILL once event N is on disk (N:line: before the head
    moved). The next Tape recovers to a valid chain either way."""
    env = {**os.environ, "AGENTOS_CRASH_AFTER_EVENT": crash}
    project = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", APPEND_FIVE, str(tmp_path)], env=env,
                          cwd=project, capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [e["seq"] for e in read_events(tmp_path)] == [0, 1, 2]
    head = json.loads((tmp_path / "audit/tape_head.json").read_text())
    assert head["count"] == (3 if crash == "2" else 2)
    assert verify_chain(tmp_path).ok is (crash == "2")
    assert Tape(tmp_path).recover().count == 3  # a head one line behind is moved, no event
    assert verify_chain(tmp_path).ok
    Tape(tmp_path).append("run_end", status="failed")
    report = verify_chain(tmp_path)
    assert report.ok, report.reason
    assert [e["event"] for e in report.events] == \
        ["step_end", "step_start", "step_end", "run_end"]


def test_recover_repairs_only_a_head_one_line_behind(tmp_path: Path) -> None:
    """A head two lines behind (or otherwise wrong) is evidence of tampering, not of a
    crash between a line and its head: recover leaves it for verify_chain to report."""
    filled(tmp_path, 3).append("step_end", "s1", status="changed")
    lines = (tmp_path / "audit/run_tape.jsonl").read_bytes().splitlines()
    stale = {"count": 2, "head": sha256_bytes(lines[1])}
    (tmp_path / "audit/tape_head.json").write_text(json.dumps(stale))
    Tape(tmp_path).recover()
    assert json.loads((tmp_path / "audit/tape_head.json").read_text()) == stale
    assert "tape_head.json says 2 events" in verify_chain(tmp_path).reason


def test_a_tape_that_lost_only_its_final_newline_is_completed(tmp_path: Path) -> None:
    """Review finding: a closed (sealed) run whose tape lost only its final newline was
    'torn' to the gates forever and a re-run had nothing to append. A last line that
    parses, is the next seq and chains is whole: recovery adds the newline, no event."""
    tape = filled(tmp_path, 3)
    tape.append("run_end", status="applied")
    path = tmp_path / "audit/run_tape.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    assert verify_chain(tmp_path).reason == "tape ends with a torn line"
    assert Tape(tmp_path).recover().count == 4
    assert path.read_bytes() == whole
    assert verify_chain(tmp_path).ok


@pytest.mark.parametrize("tamper", ["prev", "seq", "event"])
def test_a_newline_less_last_line_that_does_not_chain_is_cut(tmp_path: Path,
                                                             tamper: str) -> None:
    """Only a line that provably follows its predecessor is completed; a forged or
    misplaced one without its newline is cut like any torn write, and recorded."""
    filled(tmp_path, 3)
    path = tmp_path / "audit/run_tape.jsonl"
    lines = path.read_bytes().splitlines()
    record = json.loads(lines[-1])
    record.update({"prev": sha256_bytes(lines[-1]), "seq": 3, "event": "run_end"})
    record.update({"prev": "f" * 64} if tamper == "prev" else
                  {"seq": 4} if tamper == "seq" else {"event": "made_up"})
    tail = json.dumps(record, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines) + b"\n" + tail)
    Tape(tmp_path).append("step_end", "s1", status="changed")
    report = verify_chain(tmp_path)
    assert report.ok, report.reason
    resumed = [e for e in report.events if e["event"] == "run_resumed"]
    assert len(resumed) == 1 and resumed[0]["torn_bytes"] == len(tail)
    assert "made_up" not in [e["event"] for e in report.events]
    assert not any(e["event"] == "run_end" for e in report.events)


@pytest.mark.parametrize("crash", ["2:torn", "2:nonl"])
def test_crash_while_writing_an_event(tmp_path: Path, crash: str) -> None:
    """AGENTOS_CRASH_AFTER_EVENT=N:torn kills with half of line N on disk, N:nonl with all
    of it but its newline. The half line is cut (run_resumed says so); the whole one is
    completed and kept."""
    env = {**os.environ, "AGENTOS_CRASH_AFTER_EVENT": crash}
    project = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", APPEND_FIVE, str(tmp_path)], env=env,
                          cwd=project, capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    data = (tmp_path / "audit/run_tape.jsonl").read_bytes()
    assert data.count(b"\n") == 2 and not data.endswith(b"\n")
    assert verify_chain(tmp_path).reason == "tape ends with a torn line"
    Tape(tmp_path).append("run_end", status="failed")
    report = verify_chain(tmp_path)
    assert report.ok, report.reason
    names = [e["event"] for e in report.events]
    if crash == "2:torn":  # event 2 (step_end s2) is gone; s1's start is closed
        assert names == ["step_end", "step_start", "step_interrupted", "run_resumed",
                         "run_end"]
        assert "torn last line removed" in report.events[3]["reason"]
    else:
        assert names == ["step_end", "step_start", "step_end", "run_end"]
