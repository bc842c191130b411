"""tool_task_pack.json / tool_result_pack.json: build, write, load, and refuse bad packs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import Change
from agentos_tasks.tools.packs import (
    build_result_pack,
    build_task_pack,
    dump_pack,
    load_result_pack,
    load_task_pack,
    pack_sha256,
    write_pack,
)

SHA_A = "a" * 64
SHA_B = "b" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LIMITS = {"step_seconds": 120, "max_file_bytes": 1048576, "max_changed_files": 200,
          "max_steps": 500, "output_bytes": 1048576}


def _task(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "run": "demo-run", "step": "step_05", "adapter": "codex",
        "prompt": "Add a slugify() helper — naïve ü → u", "base_commit": COMMIT,
        "allowed_paths": ["src/**", "tests/**"], "policy_sha256": SHA_A, "limits": LIMITS,
        "created": "2026-01-31T12:00:00Z",
    }
    args.update(overrides)
    return build_task_pack(**args)


def _result(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "run": "demo-run", "step": "step_05", "adapter": "codex",
        "tool_name": "codex", "tool_version": "codex-cli 0.169.0",
        "tool_path": "/usr/local/bin/codex",
        "argv": ["codex", "exec", "--json", "--", "Add a helper"],
        "exit_code": 0, "duration_s": 12.34567, "transcript_sha256": SHA_B,
        "claims": {"adapter": "codex", "thread_id": "0199a213", "turns_completed": 1},
        "diff_files": [
            Change(path="src/z.py", status="A", sha256=SHA_A),
            Change(path="src/a.py", status="R", old_path="src/old.py", sha256=SHA_B),
            {"path": "src/gone.py", "status": "D", "sha256": None},
        ],
        "patch_sha256": SHA_A, "decision": "allow", "rule_id": "paths.allow[0]",
        "task_pack_sha256": pack_sha256(_task()),
    }
    args.update(overrides)
    return build_result_pack(**args)


def test_task_pack_round_trip_and_canonical_bytes(tmp_path: Path) -> None:
    pack = _task()
    assert pack["schema_version"] == 1
    assert pack["limits"] == {"step_seconds": 120, "max_file_bytes": 1048576,
                              "max_changed_files": 200, "output_bytes": 1048576}
    path = tmp_path / "tools" / "step_05" / "tool_task_pack.json"
    digest = write_pack(path, pack)
    raw = path.read_bytes()
    assert digest == hashlib.sha256(raw).hexdigest() == pack_sha256(pack)
    assert raw.endswith(b"}\n") and raw.isascii()
    assert raw == (json.dumps(pack, sort_keys=True, indent=2) + "\n").encode()
    assert load_task_pack(path) == pack
    # Key order of the input does not change the bytes.
    assert dump_pack(dict(reversed(list(pack.items())))) == raw
    assert not list(path.parent.glob(".tool_task_pack.json.*"))  # no temp file left


def test_task_pack_created_defaults_to_utc_now() -> None:
    pack = _task(created=None, model="gpt-5", argv=None)
    assert pack["created"].endswith("Z") and pack["model"] == "gpt-5"


def test_result_pack_round_trip_sorted_diff(tmp_path: Path) -> None:
    pack = _result(timed_out=False, failure=None)
    assert [f["path"] for f in pack["diff"]["files"]] == ["src/a.py", "src/gone.py", "src/z.py"]
    assert pack["diff"]["files"][0] == {"path": "src/a.py", "status": "R",
                                        "sha256": SHA_B, "old_path": "src/old.py"}
    assert pack["duration_s"] == 12.346
    assert pack["tool"] == {"name": "codex", "version": "codex-cli 0.169.0",
                            "path": "/usr/local/bin/codex"}
    path = tmp_path / "tool_result_pack.json"
    write_pack(path, pack)
    assert load_result_pack(path) == pack


def test_result_pack_without_changes() -> None:
    pack = _result(diff_files=[], patch_sha256=None, decision="deny",
                   rule_id="paths.deny[0]", exit_code=-9, timed_out=True,
                   failure="timed out after 120s")
    assert pack["diff"] == {"files": [], "patch_sha256": None}
    assert pack["exit_code"] == -9 and pack["timed_out"] is True


@pytest.mark.parametrize(("builder", "overrides", "needle"), [
    (_task, {"adapter": "aider"}, "adapter"),
    (_task, {"base_commit": "HEAD"}, "base_commit"),
    (_task, {"policy_sha256": "A" * 64}, "policy_sha256"),
    (_task, {"allowed_paths": []}, "allowed_paths"),
    (_task, {"run": "../escape"}, "run"),
    (_task, {"created": "2026-01-31T12:00:00+02:00"}, "created"),
    (_task, {"limits": {"step_seconds": 1}}, "limits"),
    (_task, {"limits": {**LIMITS, "step_seconds": float("inf")}}, "step_seconds"),
    (_result, {"exit_code": True}, "exit_code"),
    (_result, {"decision": "maybe"}, "decision"),
    (_result, {"transcript_sha256": "short"}, "transcript_sha256"),
    (_result, {"argv": []}, "argv"),
    (_result, {"claims": {"cost": float("nan")}}, "claims"),
    (_result, {"diff_files": [{"path": "a", "status": "X", "sha256": None}]}, "status"),
    (_result, {"duration_s": -1.0}, "duration_s"),
])
def test_builders_refuse_bad_values(builder: Any, overrides: dict[str, Any],
                                    needle: str) -> None:
    with pytest.raises(AgentosError) as caught:
        builder(**overrides)
    assert needle in caught.value.message


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n")
    return path


def _without(pack: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in pack.items() if k != key}


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda p: _without(p, "prompt"), "missing required key 'prompt'"),
    (lambda p: {**p, "extra": 1}, "unknown key 'extra'"),
    (lambda p: {**p, "schema_version": 2}, "schema_version"),
    (lambda p: {**p, "limits": {**p["limits"], "output_bytes": "big"}}, "limits.output_bytes"),
    (lambda p: {**p, "allowed_paths": "src/**"}, "allowed_paths"),
])
def test_invalid_task_pack_names_file_line_and_key(tmp_path: Path, mutate: Any,
                                                    needle: str) -> None:
    path = _write_json(tmp_path / "tool_task_pack.json", mutate(_task()))
    with pytest.raises(AgentosError) as caught:
        load_task_pack(path)
    assert needle in caught.value.message
    assert caught.value.where is not None and caught.value.where.startswith(f"{path}:")


def test_invalid_result_pack_points_at_the_line(tmp_path: Path) -> None:
    pack = _result()
    pack["policy_check"]["decision"] = "ask"
    path = _write_json(tmp_path / "tool_result_pack.json", pack)
    with pytest.raises(AgentosError) as caught:
        load_result_pack(path)
    assert "policy_check.decision" in caught.value.message
    line = int(str(caught.value.where).rsplit(":", 1)[1])
    assert '"decision": "ask"' in path.read_text().splitlines()[line - 1]


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda p: _without(p, "diff"), "missing required key 'diff'"),
    (lambda p: {**p, "tool": {"name": "codex", "version": "1"}}, "tool.path"),
    (lambda p: {**p, "diff": {"files": [{"path": "a", "status": "M"}],
                              "patch_sha256": None}}, "sha256"),
    (lambda p: {**p, "task_pack_sha256": None}, "task_pack_sha256"),
])
def test_invalid_result_packs(tmp_path: Path, mutate: Any, needle: str) -> None:
    path = _write_json(tmp_path / "tool_result_pack.json", mutate(_result()))
    with pytest.raises(AgentosError) as caught:
        load_result_pack(path)
    assert needle in caught.value.message


def test_unreadable_packs(tmp_path: Path) -> None:
    with pytest.raises(AgentosError, match="not found"):
        load_task_pack(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "run": "x",\n  "step": \n}\n')
    with pytest.raises(AgentosError) as caught:
        load_task_pack(bad)
    assert "not valid JSON" in caught.value.message and caught.value.where == f"{bad}:4"
    bad.write_text("[1, 2]\n")
    with pytest.raises(AgentosError, match="JSON object"):
        load_result_pack(bad)
    bad.write_bytes(b'{"run": "\xff"}')
    with pytest.raises(AgentosError, match="not UTF-8"):
        load_result_pack(bad)


def test_pack_with_odd_unicode_still_loads(tmp_path: Path) -> None:
    pack = _task(prompt="emoji \U0001f600, NEL \x85, BOM \ufeff, bell \x07")
    path = tmp_path / "p.json"
    write_pack(path, pack)
    assert load_task_pack(path)["prompt"] == pack["prompt"]


def test_dump_pack_refuses_non_json() -> None:
    with pytest.raises(AgentosError, match="not plain JSON"):
        dump_pack({"x": object()})
    with pytest.raises(AgentosError, match="not plain JSON"):
        dump_pack({"x": float("nan")})
