"""reports/report.md: generated from the run's artifacts only, gaps shown as MISSING."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from test_sign import make_run_dir, write_gates

from agentos_tasks.report import REPORT_RELPATH, render_report, write_report


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _row(report: str, first_cell: str) -> str:
    """The table row whose first cell is `first_cell` (fails the test when absent)."""
    rows = [line for line in report.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, rows)
    return rows[0]


def test_report_lists_request_policy_sandbox_and_heads(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    report = render_report(run_dir)
    result = json.loads((run_dir / "execution_result.json").read_text())
    assert report.startswith("# agentos run report: demo-six-files\n")
    assert ("Status: **PASS** (gates: 2 PASS, 0 FAIL, 1 NOT_APPLICABLE) · "
            "execution result: **applied**") in report
    # digests and commits are shown by 12 characters; the full values once, at the end
    assert _row(report, "request sha256") == f"| request sha256 | {result['request']['sha256'][:12]} |"
    full = report.split("## Full digests (for verification)")[1]
    assert _row(full, "request sha256 (full)") == (
        f"| request sha256 (full) | {result['request']['sha256']} |")
    assert _row(full, "policy sha256 (full)").endswith(f" {result['policy']['sha256']} |")
    assert _row(full, "post-apply head (full)") == f"| post-apply head (full) | {'2' * 40} |"
    assert _row(full, "commit 1 (full)") == f"| commit 1 (full) | {'1' * 40} |"
    assert _row(full, "commit 2 (full)") == f"| commit 2 (full) | {'2' * 40} |"
    head = report.split("## Full digests")[0]
    assert result["request"]["sha256"] not in head and "1" * 40 not in head
    assert "/abs/requests/demo.yaml" in _row(report, "request path")
    assert "(matches)" in _row(report, "request copy")
    assert "sandbox-default" in _row(report, "policy id")
    assert _row(report, "policy sha256") == f"| policy sha256 | {result['policy']['sha256'][:12]} |"
    assert "required" in _row(report, "isolation")
    assert "bwrap" in _row(report, "sandbox backend")
    assert "/abs/outputs/demo-repo" in _row(report, "repo")
    assert "main" in _row(report, "branch")
    assert _row(report, "base") == f"| base | {'0' * 12} |"
    assert _row(report, "pre-apply head") == f"| pre-apply head | {'0' * 12} |"
    assert _row(report, "post-apply head") == f"| post-apply head | {'2' * 12} |"
    assert "| 2 |" in _row(report, "commits applied")
    # each landed commit is named by its step's id (this fixture's manifests record no
    # commit message; see the next test for one that does)
    assert f"1. {'1' * 12} step_01\n" in report and f"2. {'2' * 12} step_02\n" in report


def test_landed_commits_are_named_by_their_messages(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    manifest_path = run_dir / "steps/step_01.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["message"] = "step_01: add the [docs](http://x) | <b>index</b>"
    manifest_path.write_text(json.dumps(manifest))
    report = render_report(run_dir)
    assert (f"1. {'1' * 12} step_01: add the \\[docs\\](http://x) \\| &lt;b&gt;index&lt;/b&gt;\n"
            in report)


def test_report_steps_table(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    report = render_report(run_dir)
    assert ("| id | op | status | files changed | worktree commit | landed as | patch sha256 "
            "| exit |") in report
    step_01 = _row(report, "step_01")
    assert "| write | changed |" in step_01
    assert "1: docs/a.md (A)" in step_01
    assert f"| {'1' * 12} | {'1' * 12} |" in step_01
    assert f"| {_sha(run_dir / 'patches/step_01.patch')[:12]} |" in step_01
    assert _sha(run_dir / "patches/step_01.patch") not in step_01
    step_03 = _row(report, "step_03")
    assert "| run | unchanged | 0 | none | - | none | 0 |" in step_03


def test_report_gates_table(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    report = render_report(run_dir)
    assert "| id | status | reason |" in report
    assert _row(report, "R2") == (
        "| R2 | PASS | branch head equals post-apply head; 2 commits == 2 patches |")
    assert _row(report, "A1") == "| A1 | NOT_APPLICABLE | request has no questions |"
    assert "Gate summary (counted from the table): PASS 2, FAIL 0, NOT_APPLICABLE 1" in report


def test_report_shows_failing_gates_and_escapes_table_breakers(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    write_gates(run_dir, "demo-six-files",
                [("R3", "FAIL", "line 4 | forged\nsecond line"), ("R2", "PASS", "ok")])
    report = render_report(run_dir)
    # the header says what the gates say, whatever the executor's own status
    assert ("Status: **FAIL** (gates: 1 PASS, 1 FAIL, 0 NOT_APPLICABLE; failing: R3) · "
            "execution result: **applied**") in report
    assert _row(report, "R3") == "| R3 | FAIL | line 4 \\| forged second line |"
    assert "PASS 1, FAIL 1, NOT_APPLICABLE 0" in report


def test_report_digests_of_key_artifacts(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    report = render_report(run_dir)
    for relpath in ("audit/tape_head.json", "audit/checksums.json", "execution_result.json",
                    "reports/gates.json"):
        assert _row(report, relpath) == f"| {relpath} | {_sha(run_dir / relpath)} |"
    head = json.loads((run_dir / "audit/tape_head.json").read_text())
    assert f"Tape head: count 6, head {head['head']}" in report
    assert f"- patches/step_02.patch: {_sha(run_dir / 'patches/step_02.patch')}" in report


def test_missing_artifacts_are_shown_as_missing(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    (run_dir / "reports/gates.json").unlink()
    (run_dir / "audit/checksums.json").unlink()
    (run_dir / "audit/tape_head.json").unlink()
    (run_dir / "audit/policy.yaml").unlink()
    report = render_report(run_dir)
    assert "Gates: MISSING (reports/gates.json)" in report
    assert "Status: **MISSING** (gates: MISSING (reports/gates.json)) · execution result: **applied**" in report
    assert _row(report, "audit/checksums.json") == "| audit/checksums.json | MISSING |"
    assert _row(report, "reports/gates.json") == "| reports/gates.json | MISSING |"
    assert "Tape head: MISSING (audit/tape_head.json)" in report
    assert "audit/policy.yaml: MISSING" in _row(report, "policy copy")


def test_missing_execution_result_is_shown_not_skipped(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    (run_dir / "execution_result.json").unlink()
    report = render_report(run_dir)
    assert "Execution result: MISSING (execution_result.json)" in report
    assert "Status: **PASS** (gates: 2 PASS, 0 FAIL, 1 NOT_APPLICABLE) · execution result: **MISSING**" in report
    assert "Steps: MISSING (execution_result.json)" in report
    assert _row(report, "policy id") == "| policy id | MISSING |"
    assert _row(report, "post-apply head") == "| post-apply head | MISSING |"
    assert "## Gates" in report and _row(report, "R2").startswith("| R2 | PASS |")


def test_missing_fields_and_null_heads(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    result_path = run_dir / "execution_result.json"
    result = json.loads(result_path.read_text())
    del result["policy"]
    del result["sandbox"]
    result["status"] = "denied"
    result["post_apply_head"] = None
    result["steps"][0]["patch_sha256"] = None
    result_path.write_text(json.dumps(result))
    report = render_report(run_dir)
    assert "· execution result: **denied**" in report
    assert _row(report, "policy id") == "| policy id | MISSING |"
    assert _row(report, "sandbox backend") == "| sandbox backend | MISSING |"
    # null head is recorded as "no head", which differs from an absent field
    assert _row(report, "post-apply head") == "| post-apply head | none |"
    # a changed step without a patch digest is a gap, not "none"
    assert "| MISSING | - |" in _row(report, "step_01")


def test_unreadable_and_differing_copies_are_flagged(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    (run_dir / "reports/gates.json").write_text("{not json")
    (run_dir / "audit/request.yaml").write_text("edited after the run\n")
    report = render_report(run_dir)
    assert "Gates: UNREADABLE (reports/gates.json:" in report
    assert "DIFFERS from the recorded digest" in _row(report, "request copy")


def test_many_changed_files_are_cut(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    result_path = run_dir / "execution_result.json"
    result = json.loads(result_path.read_text())
    result["steps"][0]["files"] = [{"path": f"f{i}.txt", "status": "A", "sha256": "x"}
                                   for i in range(12)]
    result_path.write_text(json.dumps(result))
    assert "12: f0.txt (A)" in _row(render_report(run_dir), "step_01")
    assert "(+7 more)" in _row(render_report(run_dir), "step_01")


def test_write_report_is_deterministic_and_atomic(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    path = write_report(run_dir)
    assert path == run_dir / REPORT_RELPATH
    first = path.read_bytes()
    assert write_report(run_dir).read_bytes() == first
    assert first.decode() == render_report(run_dir)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
