"""`agentos tool verify` and the TL-A..TL-F gates: pass on a good tool run, fail on tampers.

One good run is built per session (a write step, then fake claude editing src/** under a
policy that requires review of tool steps, approved by the patch's sha256) and restored
in place before every test. The verifier always runs as a subprocess from another
directory, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    Built,
    assert_fail,
    assert_na,
    assert_pass,
    read_events,
    reseal,
    sha256,
)
from runutil import PROJECT, doit

FAKES = PROJECT / "tests" / "fakes"
TL = ("TL-A", "TL-B", "TL-C", "TL-D", "TL-E", "TL-F")

POLICY = {
    "version": 1, "id": "tool-review",
    "operations": ["write", "tool"],
    "paths": {"allow": ["docs/**", "src/**"], "deny": [".git/**", "**/.env"]},
    "tools": [{"adapter": "claude"}],
    "isolation": "required",
    "limits": {"step_seconds": 20, "output_bytes": 65536},
    "env": ["PATH", "LANG"],
    "require_approval": ["tool"],
}
REQUEST = {
    "version": 1, "id": "tool-run", "repo": "./repo", "init_repo": True, "branch": "main",
    "policy": "./policy.yaml",
    "steps": [
        {"id": "s1", "message": "s1: docs", "write": {"path": "docs/a.md", "content": "a\n"}},
        {"id": "t1", "message": "t1: claude edits src",
         "tool": {"adapter": "claude", "paths": ["src/**"],
                  "prompt": "Add the app. MODE=edit:path=src/app.py:content=print(1)"}},
    ],
}
APPROVAL = {"by": "reviewer@example.com", "at": "2026-11-25T12:00:00Z", "text": "looks right"}


def run_doit(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}"}
    return doit(root, *args, "outputs=outputs", env=env)


def build(root: Path, pristine: Path, policy: dict[str, Any],
          request: dict[str, Any]) -> Built:
    root.mkdir(parents=True)
    (root / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    (root / "request.yaml").write_text(yaml.safe_dump(request, sort_keys=False))
    return Built(root, root / "request.yaml", root / "outputs",
                 root / "outputs" / request["id"], root / "repo", pristine)


@pytest.fixture(scope="session")
def _tool_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("toolrun")
    built = build(tmp / "root", tmp / "pristine", POLICY, REQUEST)
    first = run_doit(built.root, "run", "request=request.yaml")
    assert first.returncode != 0 and "needs a reviewer approval" in first.stdout + first.stderr
    manifest = json.loads((built.run_dir / "steps" / "t1.json").read_text())
    answers = built.root / "answers.yaml"
    answers.write_text(yaml.safe_dump(
        {"approvals": {"t1": {**APPROVAL, "patch_sha256": manifest["patch_sha256"]}}}))
    second = run_doit(built.root, "run", "request=request.yaml", f"answers={answers}")
    assert second.returncode == 0, second.stdout + second.stderr
    built.snapshot()
    return built


@pytest.fixture
def tool_run(_tool_build: Built) -> Iterator[Built]:
    """An applied run whose tool step t1 (fake claude) was reviewed and approved."""
    yield _tool_build.restore()


def pack_path(built: Built, step: str = "t1") -> Path:
    return built.run_dir / "tools" / step / "tool_result_pack.json"


def verify(path: Path, cwd: Path) -> tuple[int, dict[str, tuple[str, str]], str]:
    """`agentos tool verify --result PATH` from `cwd`: (exit code, {gate: (status, reason)},
    stderr)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run([sys.executable, "-m", "agentos_tasks", "tool", "verify",
                           "--result", str(path)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    gates: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] in TL:
            gates[parts[1]] = (parts[0], parts[2])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.returncode, gates, proc.stderr


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def dump(path: Path, data: dict[str, Any]) -> None:
    """Canonical pack bytes, as the executor writes them (types and layout preserved)."""
    path.write_text(json.dumps(data, sort_keys=True, indent=2, ensure_ascii=True) + "\n")


def edit_pack(built: Built, change: Any, name: str = "tool_result_pack.json") -> None:
    path = built.run_dir / "tools" / "t1" / name
    data = load(path)
    change(data)
    dump(path, data)


def rerecord_pack_digest(built: Built) -> None:
    """The careful forger: put the forged pack's digest into the manifest and the tape's
    step_end, then recompute every digest and the whole hash chain."""
    digest = sha256(pack_path(built).read_bytes())
    manifest_path = built.run_dir / "steps" / "t1.json"
    manifest = load(manifest_path)
    manifest["tool_result_pack_sha256"] = digest
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    events = read_events(built.run_dir)
    for event in events:
        if event["event"] == "step_end" and event["step"] == "t1":
            event["tool_result_pack_sha256"] = digest
    reseal(built.run_dir, events)


def failing(gates: dict[str, tuple[str, str]]) -> set[str]:
    return {gate for gate, (status, _) in gates.items() if status == "FAIL"}


# ------------------------------------------------------------------ the good run


def test_verify_passes_on_the_good_pack_from_another_directory(tool_run: Built,
                                                                tmp_path: Path) -> None:
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 0
    assert {g: s for g, (s, _) in gates.items()} == dict.fromkeys(TL, "PASS")
    assert "reviewer@example.com" in gates["TL-F"][1]
    relative = os.path.relpath(pack_path(tool_run), tmp_path)  # relative paths work too
    assert verify(Path(relative), tmp_path)[0] == 0


def test_run_gates_pass_on_the_good_run(tool_run: Built) -> None:
    for gate_id in TL:
        assert_pass(tool_run.run_dir, gate_id)


def test_tool_gates_are_not_applicable_without_tool_steps(good_run: Built) -> None:
    for gate_id in TL:
        assert_na(good_run.run_dir, gate_id)


# ------------------------------------------------------------------ tampers, one per gate


def test_task_pack_field_removed_fails_tl_a(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d.pop("prompt"), name="tool_task_pack.json")
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-A"][0] == "FAIL" and "prompt" in gates["TL-A"][1]
    assert_fail(tool_run.run_dir, "TL-A", "prompt")


def test_task_pack_widened_paths_fail_tl_a(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d.update(allowed_paths=["**"]), name="tool_task_pack.json")
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-A"][0] == "FAIL" and "allowed_paths" in gates["TL-A"][1]


def test_file_outside_allowed_paths_fails_tl_b(tool_run: Built, tmp_path: Path) -> None:
    def move(data: dict[str, Any]) -> None:
        data["diff"]["files"][0]["path"] = "docs/sneaky.md"  # allowed by policy, not the tool

    edit_pack(tool_run, move)
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-B"][0] == "FAIL"
    assert "outside the tool's allowed paths" in gates["TL-B"][1]


def test_diff_files_emptied_without_rerecording_the_digest_fails(tool_run: Built,
                                                                  tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d["diff"].update(files=[]))
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-C"][0] == "FAIL" and "rewritten" in gates["TL-C"][1]
    assert_fail(tool_run.run_dir, "TL-C", "rewritten")


def test_diff_files_emptied_with_digest_rerecorded_on_the_tape_still_fails(
        tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d["diff"].update(files=[]))
    rerecord_pack_digest(tool_run)
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-C"][0] == "FAIL"
    assert "differ from the manifest" in gates["TL-C"][1]


def test_patch_altered_fails_tl_c(tool_run: Built, tmp_path: Path) -> None:
    patch = tool_run.run_dir / "patches" / "t1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+print(1)", b"+print(2)"))
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-C"][0] == "FAIL" and "t1.patch" in gates["TL-C"][1]


def test_patch_altered_and_resealed_still_fails_tl_c(tool_run: Built, tmp_path: Path) -> None:
    """Every digest that names the patch recomputed: only the commit can tell."""
    patch = tool_run.run_dir / "patches" / "t1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+print(1)", b"+print(2)"))
    new_sha = sha256(patch.read_bytes())
    edit_pack(tool_run, lambda d: d["diff"].update(patch_sha256=new_sha))
    rerecord_pack_digest(tool_run)
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-C"][0] == "FAIL"
    assert "regenerated from commit" in gates["TL-C"][1]


def test_policy_check_flipped_fails_tl_d(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d.update(policy_check={"decision": "deny",
                                                         "rule_id": "tool.paths"}))
    rerecord_pack_digest(tool_run)
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-D"][0] == "FAIL"
    assert "tool.paths" in gates["TL-D"][1]
    assert_fail(tool_run.run_dir, "TL-D")


def test_policy_check_rule_swapped_fails_tl_d(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d["policy_check"].update(rule_id="src"))
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-D"][0] == "FAIL"


def test_tool_version_removed_fails_tl_e(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d["tool"].pop("version"))
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-E"][0] == "FAIL" and "version" in gates["TL-E"][1]


def test_tool_version_forged_fails_tl_e(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d["tool"].update(version="9.9.9 (Claude Code)"))
    rerecord_pack_digest(tool_run)
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-E"][0] == "FAIL" and "version" in gates["TL-E"][1]


def test_argv_altered_fails_tl_e(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d["argv"].remove("--strict-mcp-config"))
    rerecord_pack_digest(tool_run)
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-E"][0] == "FAIL" and "argv" in gates["TL-E"][1]


def test_transcript_altered_fails_tl_e(tool_run: Built, tmp_path: Path) -> None:
    transcript = tool_run.run_dir / "tools" / "t1" / "transcript.jsonl"
    transcript.write_bytes(transcript.read_bytes().replace(b'"num_turns": 3',
                                                           b'"num_turns": 1'))
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-E"][0] == "FAIL" and "transcript" in gates["TL-E"][1]


def test_review_required_without_approval_fails_tl_f(tool_run: Built, tmp_path: Path) -> None:
    (tool_run.run_dir / "audit" / "answers.yaml").write_text("answers: {}\n")
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-F"][0] == "FAIL" and "sign-off" in gates["TL-F"][1]
    assert_fail(tool_run.run_dir, "TL-F", "sign-off")


def test_approval_of_another_patch_fails_tl_f(tool_run: Built, tmp_path: Path) -> None:
    answers = tool_run.run_dir / "audit" / "answers.yaml"
    answers.write_text(yaml.safe_dump(
        {"approvals": {"t1": {**APPROVAL, "patch_sha256": "0" * 64}}}))
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and gates["TL-F"][0] == "FAIL" and "binds patch" in gates["TL-F"][1]


# ------------------------------------------------------------------ bad input


def test_garbage_pack_is_a_fail_not_a_traceback(tool_run: Built, tmp_path: Path) -> None:
    pack_path(tool_run).write_text("{not json")
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and failing(gates) >= {"TL-B", "TL-C", "TL-D", "TL-E"}


def test_pack_of_wrong_types_is_a_fail(tool_run: Built, tmp_path: Path) -> None:
    edit_pack(tool_run, lambda d: d.update(exit_code="0", diff={"files": "all"}))
    code, gates, _ = verify(pack_path(tool_run), tmp_path)
    assert code == 5 and "TL-C" in failing(gates)


def test_missing_or_misplaced_pack_is_one_clear_error(tool_run: Built, tmp_path: Path) -> None:
    code, gates, err = verify(tmp_path / "nope.json", tmp_path)
    assert code == 2 and not gates and "no such result pack" in err
    copy = tmp_path / "tool_result_pack.json"
    copy.write_bytes(pack_path(tool_run).read_bytes())
    code, gates, err = verify(copy, tmp_path)
    assert code == 2 and not gates and "not inside a run directory" in err


# ------------------------------------------------------------------ a refused tool step


@pytest.fixture(scope="session")
def _refused_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("refused")
    request = json.loads(json.dumps(REQUEST))
    request["id"] = "refused-run"
    request["steps"][1]["tool"]["prompt"] = "MODE=outside:path=docs/evil.md"
    built = build(tmp / "root", tmp / "pristine", {**POLICY, "require_approval": []}, request)
    proc = run_doit(built.root, "run", "request=request.yaml")
    assert proc.returncode != 0 and "tool.paths" in proc.stdout + proc.stderr
    built.snapshot()
    return built


def test_refused_step_gates_pass_nothing_landed_but_verify_fails(
        _refused_build: Built, tmp_path: Path) -> None:
    built = _refused_build.restore()
    for gate_id in ("TL-A", "TL-B", "TL-C", "TL-D", "TL-E"):
        assert_pass(built.run_dir, gate_id)  # the run's claims hold: refused, nothing landed
    code, gates, _ = verify(pack_path(built), tmp_path)
    assert code == 5
    assert gates["TL-B"][0] == "FAIL" and "docs/evil.md" in gates["TL-B"][1]
    assert gates["TL-C"][0] == "FAIL" and "did not land" in gates["TL-C"][1]
    assert gates["TL-D"][0] == "PASS"  # the recorded deny is the policy's decision


def test_refused_step_that_landed_a_patch_fails_the_gates(_refused_build: Built) -> None:
    built = _refused_build.restore()
    (built.run_dir / "patches" / "t1.patch").write_text("forged\n")
    assert_fail(built.run_dir, "TL-C", "t1.patch exists")


# ------------------------------------------------------------------ NOT_APPLICABLE only with nothing to check


def test_a_stray_tools_entry_makes_the_tool_gates_fail_not_na(good_run: Built) -> None:
    (good_run.run_dir / "tools" / "s7").mkdir(parents=True)
    (good_run.run_dir / "tools" / "s7" / "transcript.jsonl").write_text("{}\n")
    for gate_id in TL:
        assert_fail(good_run.run_dir, gate_id, "tools/s7/", "not a tool step")


def test_a_tool_step_relabelled_in_both_request_records_still_fails(tool_run: Built) -> None:
    """The forger rewrites request.yaml AND request.json consistently (t1 becomes a write
    step): tools/t1/ and the manifest's tool record still show the agent."""
    audit = tool_run.run_dir / "audit"
    request = yaml.safe_load((audit / "request.yaml").read_text())
    content = "print(1)\n"
    del request["steps"][1]["tool"]
    request["steps"][1]["write"] = {"path": "src/app.py", "content": content}
    (audit / "request.yaml").write_text(yaml.safe_dump(request, sort_keys=False))
    record = load(audit / "request.json")
    step = record["steps"][1]
    del step["tool"], step["expect_exit"]
    step.update(op="write", path="src/app.py", content_sha256=sha256(content.encode()))
    record["sha256"] = sha256((audit / "request.yaml").read_bytes())
    (audit / "request.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    events = read_events(tool_run.run_dir)
    for event in events:
        if event["event"] == "step_start" and event["step"] == "t1":
            event["op"] = "write"
    reseal(tool_run.run_dir, events)
    assert_fail(tool_run.run_dir, "TL-A", "tools/t1/", "not a tool step")
    assert_fail(tool_run.run_dir, "EX-A", "steps/t1.json", "op 'tool'")


def test_a_tool_sandbox_claiming_network_fails_ex_c(tool_run: Built) -> None:
    path = tool_run.run_dir / "steps" / "t1.json"
    manifest = load(path)
    manifest["sandbox"]["network"] = {"rule_id": "tools[0].network", "allow": ["x.test:443"],
                                      "resolve": {}, "unrestricted": True}
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    reseal(tool_run.run_dir)
    assert_fail(tool_run.run_dir, "EX-C", "t1", "grants None")
