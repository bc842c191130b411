"""R1, R2, R3 against real runs, each tampered with and watched to FAIL; `doit gates`."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import (
    Built,
    assert_fail,
    assert_na,
    assert_pass,
    gate,
    git,
    read_events,
    read_json,
    rechain,
    reseal,
    sha256,
    update_checksums,
    write_json,
)

from agentos_tasks.gates.common import FAIL, PASS
from agentos_tasks.gates.runner import REGISTRY as GATE_REGISTRY
from agentos_tasks.gates.runner import run_all

# ------------------------------------------------------------------ baselines


def test_good_run_passes_every_gate(good_run: Built) -> None:
    results = {r.id: r for r in run_all(good_run.run_dir)}
    assert not [r for r in results.values() if r.status == FAIL], \
        [(r.id, r.reason) for r in results.values() if r.status == FAIL]
    for gate_id in ("R2", "R3", "EX-A", "EX-C", "EX-D", "EX-E", "EX-H"):
        assert results[gate_id].status == PASS, results[gate_id]
    assert results["R2"].evidence, "a gate names the evidence it looked at"


def test_r1_not_applicable_on_an_allowed_run(good_run: Built) -> None:
    assert_na(good_run.run_dir, "R1")


def test_r1_passes_on_a_denied_run(denied_run: Built) -> None:
    result = assert_pass(denied_run.run_dir, "R1")
    assert "no-docs" in result.reason


# ------------------------------------------------------------------ R1


PERMISSIVE_SWAP = """\
version: 1
id: test-deny-docs
operations: [write, delete]
paths:
  allow: ["**"]
isolation: best-effort
"""


def test_r1_fails_when_the_policy_is_swapped_for_one_that_allows(denied_run: Built) -> None:
    (denied_run.run_dir / "audit" / "policy.yaml").write_text(PERMISSIVE_SWAP)
    assert_fail(denied_run.run_dir, "R1", "allows the request", "policy_denied")


def test_r1_fails_when_the_branch_moved_after_a_denied_run(denied_run: Built) -> None:
    (denied_run.repo / "docs").mkdir()
    (denied_run.repo / "docs" / "no.md").write_text("sneaked in\n")
    git(denied_run.repo, "add", "docs/no.md")
    git(denied_run.repo, "commit", "-q", "-m", "sneak")
    assert_fail(denied_run.run_dir, "R1", "branch moved")


def test_r1_fails_when_the_denial_is_erased_from_a_rechained_tape(denied_run: Built) -> None:
    events = [e for e in read_events(denied_run.run_dir) if e["event"] != "policy_denied"]
    rechain(denied_run.run_dir, events)
    assert_fail(denied_run.run_dir, "R1", "no policy_denied")


# ------------------------------------------------------------------ R2


def test_r2_and_ex_d_report_later_commits_on_the_branch_and_pass(good_run: Built) -> None:
    """The branch moving on is not the run's doing: its commits are still there."""
    for n in (1, 2):
        (good_run.repo / f"extra{n}.txt").write_text("not from a step\n")
        git(good_run.repo, "add", f"extra{n}.txt")
        git(good_run.repo, "commit", "-q", "-m", f"extra {n}")
    r2, ex_d = gate(good_run.run_dir, "R2"), gate(good_run.run_dir, "EX-D")
    assert r2.status == PASS and "branch moved on: 2 later commit(s)" in r2.reason, r2.reason
    assert ex_d.status == PASS and "2 later commit(s) on the branch are not this run's" \
        in ex_d.reason, ex_d.reason


def test_r2_and_ex_d_fail_when_the_runs_last_commit_is_rewritten(good_run: Built) -> None:
    git(good_run.repo, "commit", "-q", "--amend", "-m", "rewritten")
    assert_fail(good_run.run_dir, "R2", "lost, rewound or rewrote the run's commits")
    assert_fail(good_run.run_dir, "EX-D", "message", "!= step")  # says which step differs


def test_r2_fails_when_the_runs_commits_arrive_through_a_merge(good_run: Built) -> None:
    """On the branch's history, but merged in from a side branch: not an unbroken range."""
    post = git(good_run.repo, "rev-parse", "HEAD")
    pre = json.loads((good_run.run_dir / "execution_result.json").read_text())["pre_apply_head"]
    git(good_run.repo, "reset", "-q", "--hard", pre)
    (good_run.repo / "side.txt").write_text("side\n")
    git(good_run.repo, "add", "side.txt")
    git(good_run.repo, "commit", "-q", "-m", "side")
    git(good_run.repo, "merge", "-q", "--no-edit", "--no-ff", post)
    assert_fail(good_run.run_dir, "R2", "not on the first-parent history")


def test_r2_fails_when_a_commit_is_dropped_by_reset(good_run: Built) -> None:
    git(good_run.repo, "reset", "-q", "--hard", "HEAD~1")
    assert_fail(good_run.run_dir, "R2", "post-apply head")


def test_r2_fails_when_a_patch_is_altered_and_every_checksum_updated(good_run: Built) -> None:
    patch = good_run.run_dir / "patches" / "s1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+alpha", b"+omega"))
    reseal(good_run.run_dir)
    assert_pass(good_run.run_dir, "R3")  # the forger beat the digests ...
    assert_fail(good_run.run_dir, "R2", "patch ids")  # ... not the branch


# ------------------------------------------------------------------ R3


def _tape(run: Built) -> Path:
    return run.run_dir / "audit" / "run_tape.jsonl"


def test_r3_fails_on_an_edited_tape_line(good_run: Built) -> None:
    tape = _tape(good_run)
    tape.write_bytes(tape.read_bytes().replace(b'"s1: add docs"', b'"s1: add DOCS"', 1)
                     .replace(b'"op":"delete"', b'"op":"write"', 1))
    assert_fail(good_run.run_dir, "R3", "tape")


def test_r3_fails_on_a_deleted_line(good_run: Built) -> None:
    lines = _tape(good_run).read_bytes().splitlines(keepends=True)
    _tape(good_run).write_bytes(b"".join(lines[:5] + lines[6:]))
    assert_fail(good_run.run_dir, "R3", "line 6")


def test_r3_fails_on_reordered_lines(good_run: Built) -> None:
    lines = _tape(good_run).read_bytes().splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    _tape(good_run).write_bytes(b"".join(lines))
    assert_fail(good_run.run_dir, "R3", "seq")


def test_r3_fails_on_a_truncated_tape(good_run: Built) -> None:
    lines = _tape(good_run).read_bytes().splitlines(keepends=True)
    _tape(good_run).write_bytes(b"".join(lines[:-1]))
    assert_fail(good_run.run_dir, "R3", "tape_head.json says")


def test_r3_fails_on_a_torn_last_line(good_run: Built) -> None:
    data = _tape(good_run).read_bytes()
    _tape(good_run).write_bytes(data[:-20])
    assert_fail(good_run.run_dir, "R3", "torn")


def test_r3_fails_on_a_rechained_tape_without_run_end(good_run: Built) -> None:
    events = read_events(good_run.run_dir)
    assert events[-1]["event"] == "run_end"
    rechain(good_run.run_dir, events[:-1])
    assert_fail(good_run.run_dir, "R3", "no run_end")


def test_r3_fails_on_a_rechained_tape_without_the_last_step_end(good_run: Built) -> None:
    events = read_events(good_run.run_dir)
    last_end = max(i for i, e in enumerate(events) if e["event"] == "step_end")
    rechain(good_run.run_dir, events[:last_end] + events[last_end + 1:])
    assert_fail(good_run.run_dir, "R3", "no step_end")


def test_r3_fails_on_a_swapped_checksum(good_run: Built) -> None:
    sums_path = good_run.run_dir / "audit" / "checksums.json"
    sums = read_json(sums_path)
    a, b = "patches/s1.patch", "patches/s2.patch"
    sums["artifacts"][a], sums["artifacts"][b] = sums["artifacts"][b], sums["artifacts"][a]
    write_json(sums_path, sums)
    assert_fail(good_run.run_dir, "R3", "checksums.json")


def test_r3_fails_on_a_swapped_checksum_with_run_end_rechained(good_run: Built) -> None:
    run_dir = good_run.run_dir
    sums_path = run_dir / "audit" / "checksums.json"
    sums = read_json(sums_path)
    a, b = "patches/s1.patch", "patches/s2.patch"
    sums["artifacts"][a], sums["artifacts"][b] = sums["artifacts"][b], sums["artifacts"][a]
    write_json(sums_path, sums)
    events = read_events(run_dir)
    events[-1]["checksums_sha256"] = sha256(sums_path.read_bytes())
    rechain(run_dir, events)
    assert_fail(run_dir, "R3", "does not match checksums.json")


def test_r3_fails_on_a_patch_altered_with_checksum_files_updated(good_run: Built) -> None:
    run_dir = good_run.run_dir
    patch = run_dir / "patches" / "s2.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+X = 1", b"+X = 2"))
    update_checksums(run_dir)
    events = read_events(run_dir)
    events[-1]["checksums_sha256"] = sha256((run_dir / "audit" / "checksums.json").read_bytes())
    rechain(run_dir, events)
    assert_fail(run_dir, "R3", "patches/s2.patch", "differs from its manifest")


def test_r3_fails_when_execution_result_is_forged(good_run: Built) -> None:
    path = good_run.run_dir / "execution_result.json"
    result = read_json(path)
    result["commits_applied"] = result["commits_applied"][:-1]
    write_json(path, result)
    assert_fail(good_run.run_dir, "R3", "execution_result.json differs")


# ------------------------------------------------------------------ deleted artifacts


def _missing_in_evidence(run: Built, rel: str) -> list[str]:
    """Gates that looked for `rel`, found it MISSING, and still did not FAIL."""
    lenient = []
    for result in run_all(run.run_dir):
        seen = {e["path"]: e["sha256"] for e in result.evidence}
        if seen.get(rel) == "MISSING" and result.status != FAIL:
            lenient.append(f"{result.id}={result.status}")
    return lenient


def test_a_deleted_manifest_fails_never_passes(good_run: Built) -> None:
    (good_run.run_dir / "steps" / "s3.json").unlink()
    assert_fail(good_run.run_dir, "R3", "steps/s3.json")
    assert_fail(good_run.run_dir, "EX-E", "steps/s3.json")
    assert_fail(good_run.run_dir, "EX-H", "steps/s3.json")
    assert _missing_in_evidence(good_run, "steps/s3.json") == []


def test_a_deleted_patch_fails_never_passes(good_run: Built) -> None:
    (good_run.run_dir / "patches" / "s5.patch").unlink()
    assert_fail(good_run.run_dir, "R2", "patches/s5.patch")
    assert_fail(good_run.run_dir, "R3", "patches/s5.patch")
    assert_fail(good_run.run_dir, "EX-D", "patches/s5.patch")
    assert _missing_in_evidence(good_run, "patches/s5.patch") == []


def test_a_deleted_execution_result_fails_never_passes(good_run: Built) -> None:
    (good_run.run_dir / "execution_result.json").unlink()
    for gate_id in ("R2", "R3", "EX-C", "EX-D", "EX-E", "EX-H"):
        assert_fail(good_run.run_dir, gate_id, "execution_result.json")
    assert _missing_in_evidence(good_run, "execution_result.json") == []


# ------------------------------------------------------------------ doit gates


def _gates_json(run: Built) -> dict[str, dict[str, str]]:
    doc = json.loads((run.run_dir / "reports" / "gates.json").read_text())
    return {g["id"]: g for g in doc["gates"]}


def test_doit_gates_fails_on_a_moved_branch_without_rerunning_anything(good_run: Built) -> None:
    tape_before = _tape(good_run).read_bytes()
    git(good_run.repo, "reset", "-q", "--hard", "HEAD~1")
    out = good_run.gates()
    assert out.returncode != 0, out.stdout
    assert "step:" not in out.stdout and "Traceback" not in out.stderr, out.stderr
    report = _gates_json(good_run)
    assert report["R2"]["status"] == FAIL and "post-apply head" in report["R2"]["reason"]
    assert _tape(good_run).read_bytes() == tape_before


def test_doit_gates_fails_on_a_deleted_manifest_and_does_not_regenerate_it(
        good_run: Built) -> None:
    tape_before = _tape(good_run).read_bytes()
    (good_run.run_dir / "steps" / "s3.json").unlink()
    out = good_run.gates()
    assert out.returncode != 0
    assert "step:" not in out.stdout, out.stdout
    assert not (good_run.run_dir / "steps" / "s3.json").exists()
    assert _gates_json(good_run)["R3"]["status"] == FAIL
    assert _tape(good_run).read_bytes() == tape_before


def _partial_mtimes(built: Built) -> dict[str, int]:
    """mtime_ns of each gate's kept result (.state/gates/<ID>.json): rewritten iff evaluated."""
    return {p.stem: p.stat().st_mtime_ns
            for p in (built.run_dir / ".state" / "gates").glob("*.json")}


def test_doit_gates_passes_then_is_up_to_date(good_run: Built) -> None:
    first = good_run.gates()
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"gates: {len(GATE_REGISTRY)} evaluated, 0 reused" in first.stdout, first.stdout
    kept = _partial_mtimes(good_run)
    assert {"R2", "EX-D"} <= kept.keys()
    second = good_run.gates()
    assert second.returncode == 0
    # the static gates re-run only if the package source changed in between
    static = {"static.no_subprocess", "EX-B"}
    again = _partial_mtimes(good_run)
    assert {g: t for g, t in again.items() if g not in static} == \
        {g: t for g, t in kept.items() if g not in static}
    assert "0 evaluated" in second.stdout or "2 evaluated" in second.stdout, second.stdout


def test_doit_gates_reruns_a_gate_after_the_branch_moved(good_run: Built) -> None:
    assert good_run.gates().returncode == 0
    kept = _partial_mtimes(good_run)
    git(good_run.repo, "commit", "-q", "--allow-empty", "-m", "empty")
    out = good_run.gates()  # checked again (not a cached PASS), and still holds
    assert out.returncode == 0, out.stdout
    assert _partial_mtimes(good_run)["R2"] != kept["R2"]  # evaluated again, not reused
    assert "branch moved on: 1 later commit(s)" in _gates_json(good_run)["R2"]["reason"]
    git(good_run.repo, "reset", "-q", "--hard", "HEAD~2")  # now the run lost a commit
    out = good_run.gates()
    assert out.returncode != 0
    assert _gates_json(good_run)["R2"]["status"] == FAIL


def test_r1_accepts_a_denial_under_an_earlier_policy_then_a_run_under_another(
        tmp_path: Path) -> None:
    """Denied (exit 3), then the same run under a policy that allows it: R1 says so and
    PASSes; every other gate passes too (the run is signable)."""
    from runutil import doit, write_policy, write_request

    write_policy(tmp_path / "policy.yaml")
    write_policy(tmp_path / "strict.yaml", id="strict", operations=["delete"])
    write_request(tmp_path, [{"id": "s1", "message": "s1: add", "write": {
        "path": "docs/a.md", "content": "a\n"}}])
    denied = doit(tmp_path, "run", "request=req.yaml", "policy=strict.yaml")
    assert denied.returncode == 3, denied.stderr
    doit(tmp_path, "run", "request=req.yaml", "policy=policy.yaml", check=0)
    gates = doit(tmp_path, "gates", "request=req.yaml", "policy=policy.yaml")
    assert gates.returncode == 0, gates.stdout[-2000:]
    report = json.loads((tmp_path / "out" / "r1" / "reports" / "gates.json").read_text())
    r1 = next(g for g in report["gates"] if g["id"] == "R1")
    assert r1["status"] == PASS and "under an earlier policy" in r1["reason"], r1
