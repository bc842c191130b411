"""The run tape: hash chain, atomic head, recovery from a torn last line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.tape import GENESIS, Tape, verify_chain


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
    assert events[-2:] == ["run_resumed", "step_end"]
    assert report.events[-2]["torn_bytes"] > 0
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
