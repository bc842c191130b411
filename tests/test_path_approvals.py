"""Approving an `ask` path for one run: the denial's hint holds the answers-file line and
the command; that line, written to a file, lets the re-run land (reusing what ran); an
approval of another step, path or rule approves nothing; EX-G recomputes the approvals
from the evidence and fails on a missing approval or an answers file altered later."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import Built, _must, _new_run, assert_fail, assert_pass, doit, git, read_events

from agentos_tasks.answers_file import ANSWERS_SCHEMA, approved_paths
from agentos_tasks.gates.runner import run_all
from agentos_tasks.policy import decide_path, load_policy

ASK_POLICY = """\
version: 1
id: ask-test
operations: [write, run]
paths:
  allow: ["docs/**"]
  deny: ["secrets/**"]
  ask: ["/setup.cfg", {id: pyproject, glob: "/pyproject.toml"}]
commands:
  - {argv: [python3]}
network: false
isolation: best-effort
env: [PATH, LANG]
"""

# s2 is a run step: only after it ran is it known to change pyproject.toml
RUN_REQUEST = """\
version: 1
id: ask-run
repo: ./repo
init_repo: true
branch: main
policy: policy.yaml
steps:
  - id: s1
    write: {path: docs/a.md, content: "a\\n"}
  - id: s2
    run: [python3, -c, "open('pyproject.toml', 'w').write('[project]\\\\n')"]
  - id: s3
    write: {path: docs/b.md, content: "b\\n"}
"""

# s2 names pyproject.toml itself: denied before anything runs
WRITE_REQUEST = """\
version: 1
id: ask-write
repo: ./repo
init_repo: true
branch: main
policy: policy.yaml
steps:
  - id: s1
    write: {path: docs/a.md, content: "a\\n"}
  - id: s2
    write: {path: pyproject.toml, content: "[project]\\n"}
"""

SNIPPET = re.compile(r"`(\{path_approvals: .*?\})`")
COMMAND = re.compile(r"re-run: `(doit [^`]*)`")


def snippet(stderr: str) -> str:
    match = SNIPPET.search(stderr)
    assert match, stderr
    return match.group(1)


# ------------------------------------------------------------------ builds


@pytest.fixture(scope="module")
def _approved_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Denied after s2 ran, approved with the hint's own line, re-run: landed."""
    built = _new_run(tmp_path_factory.mktemp("ask"), "ask-run", RUN_REQUEST, ASK_POLICY)
    first = doit(built.root, "run", built.request, built.outputs)
    _must(first, False, "ask: denied after s2")
    built.hint = first.stderr  # type: ignore[attr-defined]
    answers = built.root / "answers.yaml"
    answers.write_text(snippet(first.stderr) + "\n")
    second = doit(built.root, "run", built.request, built.outputs, f"answers={answers}")
    _must(second, True, "ask: approved re-run")
    built.rerun = second  # type: ignore[attr-defined]
    built.snapshot()
    yield built


@pytest.fixture
def approved_run(_approved_build: Built) -> Iterator[Built]:
    yield _approved_build.restore()


def write_denied(tmp_path: Path, *extra: str) -> tuple[Built, str]:
    built = _new_run(tmp_path, "ask-write", WRITE_REQUEST, ASK_POLICY)
    proc = doit(built.root, "run", built.request, built.outputs, *extra)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return built, proc.stderr


# ------------------------------------------------------------------ the hint


def test_prerun_denial_hint_says_what_to_write_and_what_to_run(tmp_path: Path) -> None:
    built, stderr = write_denied(tmp_path)
    assert "policy violation: pyproject: pyproject.toml matches ask glob" in stderr
    data = yaml.safe_load(snippet(stderr))
    ANSWERS_SCHEMA(data)  # exactly the answers file's format
    assert approved_paths(data) == {("s2", "pyproject.toml", "pyproject")}
    command = shlex.split(COMMAND.search(stderr).group(1))  # type: ignore[union-attr]
    # run where the user ran it: the request's own policy and ./outputs go without saying
    assert command[command.index("run") + 1:] == ["request=request.yaml",
                                                  "answers=answers.yaml"]
    assert "`agentos exec run --request request.yaml --answers answers.yaml`" in stderr
    assert not (built.repo / "pyproject.toml").exists()


def test_the_hints_line_lands_a_prerun_denied_request(tmp_path: Path) -> None:
    built, stderr = write_denied(tmp_path)
    (built.root / "answers.yaml").write_text(snippet(stderr) + "\n")
    command = shlex.split(COMMAND.search(stderr).group(1))  # type: ignore[union-attr]
    # the hint's own command, as printed (doit as this interpreter's module)
    proc = subprocess.run([sys.executable, "-m", *command], cwd=built.root, text=True,
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git(built.repo, "show", "main:pyproject.toml") == "[project]"
    results = {r.id: r for r in run_all(built.run_dir)}
    assert {r.status for r in results.values()} <= {"PASS", "NOT_APPLICABLE"}, \
        [(r.id, r.reason) for r in results.values() if r.status == "FAIL"]
    assert results["R1"].status == "PASS" and "approved" in results["R1"].reason
    assert results["EX-G"].status == "PASS"


@pytest.mark.parametrize(("approval", "why"), [
    ({"s1": {"pyproject.toml": "pyproject"}}, "another step"),
    ({"s2": {"setup.cfg": "paths.ask[0]"}}, "another path"),
    ({"s2": {"pyproject.toml": "paths.ask[0]"}}, "another rule"),
    ({"s2": {"PyProject.toml": "pyproject"}}, "another spelling"),
])
def test_an_approval_of_something_else_approves_nothing(tmp_path: Path,
                                                        approval: dict[str, dict[str, str]],
                                                        why: str) -> None:
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump({"path_approvals": {
        step: {path: {"rule_id": rule, "by": "a@example.com", "at": "2026-12-01T10:00:00Z",
                      "text": why} for path, rule in paths.items()}
        for step, paths in approval.items()}}))
    built, stderr = write_denied(tmp_path, f"answers={answers}")
    assert "pyproject.toml matches ask glob" in stderr, why
    assert f"add to {answers}:" in stderr  # the hint names the file given
    assert not (built.repo / "pyproject.toml").exists()


def test_an_approval_for_an_unknown_step_is_refused(tmp_path: Path) -> None:
    answers = tmp_path / "answers.yaml"
    answers.write_text("path_approvals: {s2: {pyproject.toml: {rule_id: pyproject, by: a, "
                       "at: '2026-12-01T10:00:00Z', text: ok}}, s9: {x: {rule_id: pyproject, "
                       "by: a, at: '2026-12-01T10:00:00Z', text: ok}}}\n")
    _built, stderr = write_denied(tmp_path, f"answers={answers}")
    assert "path_approvals for unknown step(s): s9" in stderr


def test_decide_path_approves_only_that_step_path_and_rule(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(ASK_POLICY)
    policy = load_policy(tmp_path / "p.yaml")
    approved = policy.__class__(**{**policy.__dict__, "approved_paths": frozenset(
        {("s2", "pyproject.toml", "pyproject"), ("s2", "secrets/k", "paths.deny[0]")})})
    assert decide_path(approved, "pyproject.toml", step="s2").allowed
    assert decide_path(approved, "./pyproject.toml", step="s2").rule_id == "pyproject"
    assert not decide_path(approved, "pyproject.toml", step="s1").allowed
    assert not decide_path(approved, "pyproject.toml").allowed
    assert not decide_path(approved, "pyproject.toml", step="s2", tool_paths=["docs/**"]).allowed
    denied = decide_path(approved, "secrets/k", step="s2")  # a deny is never approvable
    assert not denied.allowed and not denied.approvable


# ------------------------------------------------------------------ re-run and gates


def test_a_step_that_changed_an_ask_path_is_approved_and_only_it_reruns(
        approved_run: Built) -> None:
    hint = approved_run.hint  # type: ignore[attr-defined]
    assert "step s2 changed pyproject.toml" in hint and "(rule pyproject, step s2)" in hint
    events = read_events(approved_run.run_dir)
    starts = [e["step"] for e in events if e["event"] == "step_start"]
    assert starts == ["s1", "s2", "s2", "s3"]  # s1 reused, s2 re-executed
    approved = [e for e in events if e["event"] == "paths_approved"]
    assert [(a["step"], a["path"], a["rule_id"]) for a in approved[-1]["approvals"]] == \
        [("s2", "pyproject.toml", "pyproject")]
    assert git(approved_run.repo, "log", "--format=%s", "main").splitlines()[:3] == \
        ["s3", "s2", "s1"]
    assert_pass(approved_run.run_dir, "EX-G")
    assert_pass(approved_run.run_dir, "EX-A")


def test_gate_fails_when_the_recorded_answers_file_is_altered(approved_run: Built) -> None:
    answers = approved_run.run_dir / "audit" / "answers.yaml"
    answers.write_text(answers.read_text().replace("by: ", "by: mallory-"))
    assert_fail(approved_run.run_dir, "EX-G", "altered after the run")


def test_gate_fails_when_the_approval_is_missing(approved_run: Built) -> None:
    answers = approved_run.run_dir / "audit" / "answers.yaml"
    answers.write_text("path_approvals: {s2: {setup.cfg: {rule_id: 'paths.ask[0]', by: m, "
                       "at: '2026-12-01T10:00:00Z', text: other}}}\n")
    assert_fail(approved_run.run_dir, "EX-G", "step s2 changed pyproject.toml",
                "without an approval")
    assert_fail(approved_run.run_dir, "EX-A", "pyproject")
    answers.unlink()
    assert_fail(approved_run.run_dir, "EX-G", "audit/answers.yaml is missing")


def test_a_landed_run_rerun_without_its_approvals_says_so(approved_run: Built) -> None:
    proc = doit(approved_run.root, "run", approved_run.request, approved_run.outputs)
    assert proc.returncode != 0
    assert "path approvals differ from the answers file given now" in proc.stderr
    again = doit(approved_run.root, "run", approved_run.request, approved_run.outputs,
                 f"answers={approved_run.root / 'answers.yaml'}")
    assert again.returncode == 0, again.stdout + again.stderr  # the same file: nothing to do
    assert [e["event"] for e in read_events(approved_run.run_dir)][-1] == "run_end"
