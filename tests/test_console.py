"""What an invocation prints (issue 14): progress i/N, failures labelled by what happened
with a failed step's log tail, the summary (landed, evidence, next commands), documented
exit codes from plain `doit`, and the gates table and its summary line.

One small real run (three steps) is built per module; its printed `next:` command is run
as printed. Tampering tests use the session's good run (conftest) and restore it.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Built
from runutil import DODO, doit, git, write_request

from agentos_tasks import console
from agentos_tasks.errors import EXIT_POLICY, EXIT_STEP, EXIT_USAGE

STEPS = [{"id": "a", "message": "a: one", "write": {"path": "a.txt", "content": "a\n"}},
         {"id": "b", "message": "b: two", "write": {"path": "b.txt", "content": "b\n"}},
         {"id": "c", "message": "c: gen",
          "run": [sys.executable, "-c", "open('c.txt', 'w').write('c')"]}]


@dataclass
class Small:
    root: Path
    run: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    root = tmp_path_factory.mktemp("console")
    write_request(root, STEPS)
    return Small(root, doit(root, "run", "request=req.yaml", env={"TERM": "xterm"}))


def summary_block(stdout: str) -> dict[str, str]:
    """`key: value` lines after the progress lines."""
    block = stdout[stdout.index("\nlanded: ") + 1:]
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
                                             block.splitlines() if ":" in line)}


def as_doit(command: str) -> list[str]:
    """A printed `doit -f DODO ...` command as an argv for this interpreter."""
    words = shlex.split(command)
    assert words[0] == "doit"
    return [sys.executable, "-m", "doit", *words[1:]]


# ------------------------------------------------------------------ progress and summary


def test_plain_progress_numbers_every_step(small: Small) -> None:
    assert small.run.returncode == 0, small.run.stdout + small.run.stderr
    progress = [line for line in small.run.stdout.splitlines() if line.startswith(".  ")]
    assert progress == [".  policy", ".  worktree", ".  [1/3] step:a", ".  [2/3] step:b",
                        ".  [3/3] step:c", ".  apply", ".  checksums", ".  result"]
    assert "\x1b" not in small.run.stdout  # not a terminal: no live display, no colour


def test_summary_says_what_landed_where_the_evidence_is_and_what_next(small: Small) -> None:
    repo = small.root / "repo"
    base, head = git(repo, "rev-parse", "main~3"), git(repo, "rev-parse", "main")
    block = summary_block(small.run.stdout)
    assert block["landed"] == f"3 commit(s) on main, {base[:12]}..{head[:12]}"
    run_dir = small.root / "out" / "r1"
    assert block["evidence"] == str(run_dir)
    assert block["next"] == f"doit -f {DODO} gates run=r1 outputs={small.root / 'out'}"
    assert block["then"].startswith(f"doit -f {DODO} sign run=r1 ")


def test_the_next_command_runs_as_printed_from_anywhere(small: Small,
                                                        tmp_path: Path) -> None:
    command = summary_block(small.run.stdout)["next"]
    proc = subprocess.run(as_doit(command), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (small.root / "out" / "r1" / "reports" / "gates.json").is_file()
    assert list(tmp_path.iterdir()) == []  # nothing written where it was run


def test_live_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that is a terminal gets rich's live line (step i/N and the task), not
    the plain lines; NO_COLOR or TERM=dumb turn it back to plain lines."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    tty = Tty()
    assert not console.plain_output(tty)
    assert console.plain_output(io.StringIO())  # a pipe, a CI log
    reporter = console.RunReporter(tty, {})
    tasks = {"policy": None, "step:a": None, "step:b": None, "result": None}
    reporter.initialize(tasks, ["result"])

    @dataclass
    class Task:
        name: str
        actions: tuple[str, ...] = ("act",)

    try:
        reporter.execute_task(Task("step:b"))
        assert "step 2/2  step:b" in tty.getvalue()
    finally:
        reporter.complete_run()
    assert ".  [2/2]" not in tty.getvalue()
    for name, value in (("NO_COLOR", ""), ("TERM", "dumb")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert console.plain_output(tty), name


# ------------------------------------------------------------------ failures and exit codes


def test_a_failed_step_shows_its_log_tail_and_exits_4(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(30): print(f'line {i}')\nsys.exit(3)"
    write_request(tmp_path, [{"id": "noisy", "run": [sys.executable, "-c", code]}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode == EXIT_STEP, proc.stdout + proc.stderr
    err = proc.stderr
    assert err.startswith("step failed:\n"), err
    assert "exited 3 (expected 0)" in err
    assert f"last {console.LOG_TAIL} line(s) of logs/noisy.out:" in err
    tail = [line.removeprefix("  | ") for line in err.splitlines() if line.startswith("  | ")]
    assert tail == [f"line {i}" for i in range(10, 30)]
    assert "step:noisy failed" not in err and "Traceback" not in err


def test_a_policy_denial_is_labelled_and_exits_3(denied_run: Built) -> None:
    proc = denied_run.gates("run")
    assert proc.returncode == EXIT_POLICY, proc.stdout + proc.stderr
    assert proc.stderr.startswith("policy denied:\n"), proc.stderr
    assert "no-docs" in proc.stderr and "docs/no.md" in proc.stderr
    assert "policy failed" not in proc.stdout + proc.stderr  # never the doit task's name


def test_a_bad_request_exits_2_before_any_task(tmp_path: Path) -> None:
    write_request(tmp_path, [{"id": "a", "run": "rm -rf /"}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert f"error: {tmp_path / 'req.yaml'}:" in proc.stderr and "argv list" in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("code", "message", "expected"), [
    (3, "policy violation: no-docs: docs/x", "policy denied"),
    (4, "step s1 failed: exited 1", "step failed"),
    (5, "2 gate(s) failed: R2, R3", "gates failed"),
    (6, "run r1 is sealed", "run sealed"),
    (6, "questions q1 unanswered", "questions unanswered"),
    (2, "request.yaml: unknown key", "request invalid"),
    (130, "interrupted by SIGINT", "interrupted"),
])
def test_labels_say_what_happened(code: int, message: str, expected: str) -> None:
    from agentos_tasks.errors import AgentosError

    assert console.label(AgentosError(message, code=code)) == expected


# ------------------------------------------------------------------ gates: table and summary


def _gates_json(run_dir: Path) -> list[dict[str, str]]:
    gates: list[dict[str, str]] = json.loads(
        (run_dir / "reports" / "gates.json").read_text())["gates"]
    return gates


def _summary_counts(stdout: str) -> tuple[int, int, int]:
    found = re.findall(r"^(\d+) PASS · (\d+) FAIL · (\d+) N/A$", stdout, re.MULTILINE)
    assert len(found) == 1, stdout
    passed, failed, na = found[0]
    return int(passed), int(failed), int(na)


def _expected_counts(run_dir: Path) -> tuple[int, int, int]:
    statuses = [g["status"] for g in _gates_json(run_dir)]
    return (statuses.count("PASS"), statuses.count("FAIL"),
            statuses.count("NOT_APPLICABLE"))


def _table_rows(stdout: str) -> dict[str, str]:
    """gate id -> status cell of the rich table (rows start with `│ ID `)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 5 and cells[1] and cells[2]:
            rows[cells[1]] = cells[2]
    return rows


def test_gates_table_fits_80_columns_once_with_a_true_summary(
        good_run: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    proc = good_run.gates()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    gates = _gates_json(good_run.run_dir)
    rows = _table_rows(proc.stdout)
    assert rows == {g["id"]: {"NOT_APPLICABLE": "N/A"}.get(g["status"], g["status"])
                    for g in gates}
    for gate in gates:  # once, in the table: no per-gate status lines besides it
        assert len(re.findall(rf"^│ {re.escape(gate['id'])} ", proc.stdout, re.MULTILINE)) \
            == 1
        assert f"gates:{gate['id']}" not in proc.stdout
    assert _summary_counts(proc.stdout) == _expected_counts(good_run.run_dir)
    assert _summary_counts(proc.stdout)[0] > 0


def tamper_patch(built: Built) -> None:
    patch = built.run_dir / "patches" / "s1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+alpha", b"+omega"))


def test_a_cached_rerun_still_shows_every_result(good_run: Built) -> None:
    first = good_run.gates()
    assert first.returncode == 0
    cached = good_run.gates()
    assert cached.returncode == 0
    assert "reused (inputs unchanged)" in cached.stdout
    assert _table_rows(cached.stdout) == _table_rows(first.stdout)
    assert _summary_counts(cached.stdout) == _summary_counts(first.stdout)


def test_a_cached_rerun_of_failing_gates_still_shows_fail(good_run: Built) -> None:
    tamper_patch(good_run)
    first = good_run.gates()
    assert first.returncode == 5, first.stdout + first.stderr
    again = good_run.gates()
    assert again.returncode == 5
    rows = _table_rows(again.stdout)
    failed = [g["id"] for g in _gates_json(good_run.run_dir) if g["status"] == "FAIL"]
    assert failed and all(rows[g] == "FAIL" for g in failed)
    assert _summary_counts(again.stdout) == _expected_counts(good_run.run_dir)
    assert again.stderr.startswith("gates failed:\n"), again.stderr


def test_reporter_json_is_truthful_per_gate(good_run: Built) -> None:
    from importlib.metadata import entry_points

    plugin = [ep.value for ep in entry_points(group="doit.REPORTER") if ep.name == "json"]
    assert plugin == ["agentos_tasks.console:GateJsonReporter"], \
        "the doit.REPORTER entry point is missing: pip install -e '.[test]'"
    tamper_patch(good_run)
    proc = good_run.gates("run", "--reporter", "json", "gates")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    tasks = {t["name"]: t for t in json.loads(proc.stdout)["tasks"]}
    gates = {g["id"]: g for g in _gates_json(good_run.run_dir)}
    assert any(g["status"] == "FAIL" for g in gates.values())
    for gate_id, gate in gates.items():
        task = tasks[f"gates:{gate_id}"]
        assert task["gate_status"] == gate["status"]
        if gate["status"] == "FAIL":
            assert task["result"] == "fail" and task["error"] == gate["reason"]
        else:
            assert task["result"] in ("success", "up-to-date"), task


def test_reporter_json_is_truthful_for_a_copied_run_directory(good_run: Built,
                                                               tmp_path: Path) -> None:
    """A run directory copied elsewhere (doit's DB inside it): its stored up-to-date marks
    are bound to where they were made, so every gate is evaluated again and reported with
    its status, none as 'no verified gate result'."""
    import shutil

    from runutil import doit

    assert good_run.gates().returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(good_run.run_dir, copy / good_run.run_dir.name)
    patch = sorted((copy / good_run.run_dir.name / "patches").glob("*.patch"))[0]
    patch.write_bytes(patch.read_bytes().replace(b"+", b"+X", 1))
    proc = doit(tmp_path, "run", "--reporter", "json", "gates", f"run={good_run.run_dir.name}",
                f"outputs={copy}")
    tasks = {t["name"]: t for t in json.loads(proc.stdout)["tasks"]}
    gates = {g["id"]: g for g in _gates_json(copy / good_run.run_dir.name)}
    for gate_id, gate in gates.items():
        assert tasks[f"gates:{gate_id}"].get("gate_status") == gate["status"], tasks[
            f"gates:{gate_id}"]
