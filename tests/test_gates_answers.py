"""A1, A2, A3 against real runs with questions: blocked, then answered (and approved)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import (
    Built,
    assert_fail,
    assert_na,
    assert_pass,
    read_events,
    rechain,
    reseal,
    sha256,
)

from agentos_tasks.gates.common import FAIL
from agentos_tasks.gates.runner import run_all


def _answers(run: Built) -> Any:
    return run.run_dir / "audit" / "answers.yaml"


def _rechain_answers_digest(run: Built) -> None:
    """A forger who edits answers.yaml also fixes resume_applied's answers_sha256."""
    events = read_events(run.run_dir)
    digest = sha256(_answers(run).read_bytes())
    for event in events:
        if event["event"] == "resume_applied":
            event["answers_sha256"] = digest
    reseal(run.run_dir, events)


# ------------------------------------------------------------------ baselines


@pytest.mark.parametrize("gate_id", ["A1", "A2", "A3"])
def test_not_applicable_without_questions(good_run: Built, gate_id: str) -> None:
    assert_na(good_run.run_dir, gate_id)


def test_blocked_run(blocked_run: Built) -> None:
    assert "blocked on 2" in assert_pass(blocked_run.run_dir, "A1").reason
    assert_na(blocked_run.run_dir, "A2")
    assert_na(blocked_run.run_dir, "A3")
    assert not [r.id for r in run_all(blocked_run.run_dir) if r.status == FAIL]


def test_answered_run(answered_run: Built) -> None:
    for gate_id in ("A1", "A2", "A3", "EX-G"):
        assert_pass(answered_run.run_dir, gate_id)
    assert "alice@example.com" in assert_pass(answered_run.run_dir, "A3").reason
    assert not [(r.id, r.reason) for r in run_all(answered_run.run_dir) if r.status == FAIL]


# ------------------------------------------------------------------ A1


def test_a1_fails_when_a_step_starts_after_questions_blocked(blocked_run: Built) -> None:
    events = read_events(blocked_run.run_dir)
    index = next(i for i, e in enumerate(events) if e["event"] == "questions_blocked")
    events[index + 1:index + 1] = [
        {"event": "step_start", "step": "w1", "op": "write", "parent": "0" * 40},
        {"event": "step_failed", "step": "w1", "reason": "x"}]
    rechain(blocked_run.run_dir, events)
    assert_fail(blocked_run.run_dir, "A1", "w1", "after questions_blocked")


def test_a1_fails_when_the_block_is_erased_from_a_blocked_run(blocked_run: Built) -> None:
    events = [e for e in read_events(blocked_run.run_dir) if e["event"] != "questions_blocked"]
    rechain(blocked_run.run_dir, events)
    assert_fail(blocked_run.run_dir, "A1", "no questions_blocked")


def test_a1_fails_when_steps_ran_before_the_answers(answered_run: Built) -> None:
    events = [e for e in read_events(answered_run.run_dir) if e["event"] != "resume_applied"]
    rechain(answered_run.run_dir, events)
    assert_fail(answered_run.run_dir, "A1", "w1", "without a resume_applied")


def test_a1_fails_when_resume_answered_only_some_questions(answered_run: Built) -> None:
    events = read_events(answered_run.run_dir)
    first = next(e for e in events if e["event"] == "resume_applied")
    first["answered"] = ["q1"]
    rechain(answered_run.run_dir, events)
    assert_fail(answered_run.run_dir, "A1", "q2", "unanswered")


# ------------------------------------------------------------------ A2


def test_a2_fails_without_resume_applied(answered_run: Built) -> None:
    events = [e for e in read_events(answered_run.run_dir) if e["event"] != "resume_applied"]
    rechain(answered_run.run_dir, events)
    assert_fail(answered_run.run_dir, "A2", "no resume_applied")


def test_a2_fails_when_the_answers_file_is_deleted(answered_run: Built) -> None:
    _answers(answered_run).unlink()
    assert_fail(answered_run.run_dir, "A2", "answers.yaml is missing")


def test_a2_fails_when_the_answers_file_changed_after_resume(answered_run: Built) -> None:
    path = _answers(answered_run)
    path.write_text(path.read_text().replace("yes, delete it", "no, keep it"))
    assert_fail(answered_run.run_dir, "A2", "answers_sha256")


def test_a2_fails_when_no_step_ran_after_resume(answered_run: Built) -> None:
    events = read_events(answered_run.run_dir)
    start = next(i for i, e in enumerate(events) if e["event"] == "step_start")
    resumes = [e for e in events if e["event"] == "resume_applied"]
    before = [e for e in events[:start] if e["event"] != "resume_applied"]
    rest = [e for e in events[start:] if e["event"] != "resume_applied"]
    rechain(answered_run.run_dir, before + rest[:-1] + resumes[-1:] + rest[-1:])
    assert_fail(answered_run.run_dir, "A2", "no step started after resume_applied")


# ------------------------------------------------------------------ A3


def test_a3_fails_when_an_answer_is_removed(answered_run: Built) -> None:
    path = _answers(answered_run)
    path.write_text("\n".join(line for line in path.read_text().splitlines()
                              if not line.strip().startswith("q2:")) + "\n")
    _rechain_answers_digest(answered_run)
    assert_fail(answered_run.run_dir, "A3", "q2", "no answer")


def test_a3_fails_when_an_answer_lacks_its_author(answered_run: Built) -> None:
    path = _answers(answered_run)
    path.write_text(path.read_text().replace("by: alice@example.com, ", ""))
    _rechain_answers_digest(answered_run)
    assert_fail(answered_run.run_dir, "A3", "not a valid answers file")


def test_a3_fails_when_answers_differ_from_the_tape(answered_run: Built) -> None:
    path = _answers(answered_run)
    path.write_text(path.read_text().replace("alice@example.com", "mallory@example.com"))
    _rechain_answers_digest(answered_run)
    assert_pass(answered_run.run_dir, "A2")  # the digest was fixed ...
    assert_fail(answered_run.run_dir, "A3", "differ")  # ... the recorded answers were not


def test_a3_fails_when_the_answers_file_is_deleted(answered_run: Built) -> None:
    _answers(answered_run).unlink()
    assert_fail(answered_run.run_dir, "A3", "answers.yaml is missing")


# ------------------------------------------------------------------ NOT_APPLICABLE only with nothing to check


APPROVALS_ONLY = """\
approvals:
  s7: {by: carol@example.com, at: "2026-11-25T11:00:00Z", text: "ok", patch_sha256: "%s"}
"""


@pytest.mark.parametrize("gate_id", ["A1", "A2", "A3"])
def test_an_approvals_only_answers_file_passes_without_questions(good_run: Built,
                                                                 gate_id: str) -> None:
    _answers(good_run).write_text(APPROVALS_ONLY % ("a" * 64))
    result = assert_pass(good_run.run_dir, gate_id)
    assert "approvals only" in result.reason


@pytest.mark.parametrize("gate_id", ["A1", "A2", "A3"])
def test_answers_to_questions_never_asked_fail(good_run: Built, gate_id: str) -> None:
    _answers(good_run).write_text(
        'answers:\n  q9: {by: eve@example.com, at: "2026-11-25T10:00:00Z", text: "yes"}\n')
    assert_fail(good_run.run_dir, gate_id, "asks no questions", "q9")


@pytest.mark.parametrize("name", ["questions_blocked", "resume_applied"])
def test_question_events_in_a_run_without_questions_fail(good_run: Built, name: str) -> None:
    events = read_events(good_run.run_dir)
    events.insert(2, {"event": name, "missing": ["q1"], "answered": ["q1"]})
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "A1", "asks no questions", name)
