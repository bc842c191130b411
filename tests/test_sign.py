"""Signing and offline verification of a run directory.

The run directories here are synthetic but complete: every artifact the executor writes
(tape with a real hash chain, tape head, checksums, patches, manifests, execution result,
gates report, recorded request/policy, a tool pack), built by `make_run_dir`.
Each tamper case changes one thing after signing and asserts the named Check fails.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope

from agentos_tasks.attest import (
    ENVELOPE_RELPATH,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_RELPATH,
    Check,
    build_statement,
    check_tape_chain,
    keygen,
    load_public_key,
    load_signer,
    render_checks,
    sign_run,
    verification_passed,
    verify_signature,
)
from agentos_tasks.errors import EXIT_GATES, AgentosError
from agentos_tasks.tape import Tape

# --------------------------------------------------------------------------- fixtures


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    path.write_bytes(raw)
    return _sha(raw)


def _write_json(path: Path, obj: Any) -> str:
    return _write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_tape(run_dir: Path, events: list[dict[str, Any]]) -> None:
    """A real hash-chained tape and head, written by the executor's own Tape."""
    tape = Tape(run_dir)
    for event in events:
        tape.append(**event)


def make_run_dir(root: Path, *, run: str = "demo-six-files") -> Path:
    """A complete, all-gates-PASS run directory under `root/outputs/<run>`."""
    run_dir = root / "outputs" / run
    request_sha = _write(run_dir / "audit/request.yaml",
                         "version: 1\nid: demo-six-files\nsteps: []\n")
    policy_sha = _write(run_dir / "audit/policy.yaml", "version: 1\nid: sandbox-default\n")
    patch1 = _write(run_dir / "patches/step_01.patch",
                    "From abc Mon Sep 17 00:00:00 2001\nSubject: step_01\n\n+hello\n")
    patch2 = _write(run_dir / "patches/step_02.patch",
                    "From def Mon Sep 17 00:00:00 2001\nSubject: step_02\n\n+world\n")
    commits = ["1" * 40, "2" * 40]
    steps = [
        {"id": "step_01", "op": "write", "status": "changed", "commit": commits[0],
         "patch": "patches/step_01.patch", "patch_sha256": patch1, "exit_code": None,
         "files": [{"path": "docs/a.md", "status": "A", "sha256": "a" * 64}]},
        {"id": "step_02", "op": "tool", "status": "changed", "commit": commits[1],
         "patch": "patches/step_02.patch", "patch_sha256": patch2, "exit_code": 0,
         "files": [{"path": "src/b.py", "status": "M", "sha256": "b" * 64}]},
        {"id": "step_03", "op": "run", "status": "unchanged", "commit": None,
         "patch": None, "patch_sha256": None, "exit_code": 0, "files": []},
    ]
    for step in steps:
        _write_json(run_dir / f"steps/{step['id']}.json", step)
    _write_json(run_dir / "tools/step_02/tool_task_pack.json", {"step": "step_02"})
    _write_json(run_dir / "tools/step_02/tool_result_pack.json", {"step": "step_02"})
    write_tape(run_dir, [
        {"event": "run_start"},
        {"event": "worktree_created"},
        {"event": "step_start", "step": "step_01"},
        {"event": "step_end", "step": "step_01", "status": "changed"},
        {"event": "patches_applied"},
        {"event": "run_end"},
    ])
    result = {
        "schema_version": 1, "run": run, "status": "applied",
        "request": {"path": "/abs/requests/demo.yaml", "sha256": request_sha},
        "policy": {"path": "/abs/policies/sandbox_policy.yaml", "sha256": policy_sha,
                   "id": "sandbox-default", "isolation": "required"},
        "sandbox": {"backend": "bwrap"}, "repo": "/abs/outputs/demo-repo",
        "branch": "main", "base": "0" * 40, "pre_apply_head": "0" * 40,
        "post_apply_head": commits[1], "commits_applied": commits, "steps": steps,
        "counts": {"steps": 3, "changed": 2, "unchanged": 1, "commits_applied": 2},
    }
    result_sha = _write_json(run_dir / "execution_result.json", result)
    checksums = {"patches/step_01.patch": patch1, "patches/step_02.patch": patch2,
                 "execution_result.json": result_sha}
    _write_json(run_dir / "audit/checksums.json", checksums)
    _write(run_dir / "audit/SHA256SUMS",
           "".join(f"{digest}  {name}\n" for name, digest in sorted(checksums.items())))
    write_gates(run_dir, run, [
        ("R2", "PASS", "branch head equals post-apply head; 2 commits == 2 patches"),
        ("R3", "PASS", "tape chain verifies"),
        ("A1", "NOT_APPLICABLE", "request has no questions"),
    ])
    return run_dir


def write_gates(run_dir: Path, run: str, gates: list[tuple[str, str, str]],
                *, evidence: list[dict[str, Any]] | None = None) -> None:
    """reports/gates.json in the executor's format, with a consistent summary."""
    tape_sha = _sha((run_dir / "audit/run_tape.jsonl").read_bytes())
    gate_list = [
        {"id": gate_id, "title": f"gate {gate_id}", "status": status, "reason": reason,
         "evidence": evidence if evidence is not None else
         [{"path": "audit/run_tape.jsonl", "sha256": tape_sha}]}
        for gate_id, status, reason in gates
    ]
    summary = {name: sum(1 for g in gate_list if g["status"] == name)
               for name in ("PASS", "FAIL", "NOT_APPLICABLE")}
    _write_json(run_dir / "reports/gates.json",
                {"schema_version": 1, "run": run, "gates": gate_list, "summary": summary})


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keygen(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keygen(tmp_path_factory.mktemp("otherkeys"), name="other")


@pytest.fixture
def signed_run(tmp_path: Path, keypair: tuple[Path, Path]) -> Path:
    run_dir = make_run_dir(tmp_path)
    sign_run(run_dir, keypair[0])
    return run_dir


def failing(checks: list[Check]) -> set[str]:
    return {check.name for check in checks if not check.ok}


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_private_key_0600_and_loadable_public_key(tmp_path: Path) -> None:
    key_path, pub_path = keygen(tmp_path / "keys")
    assert key_path.name == "agentos.key" and pub_path.name == "agentos.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = json.loads(pub_path.read_text())
    assert pub["keytype"] == "ed25519" and pub["scheme"] == "ed25519"
    assert load_public_key(pub_path).keyid == pub["keyid"]


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key_path, pub_path = keygen(tmp_path)
    before = (key_path.read_bytes(), pub_path.read_bytes())
    with pytest.raises(AgentosError) as excinfo:
        keygen(tmp_path)
    assert "refusing to overwrite" in excinfo.value.message
    assert excinfo.value.hint
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before


def test_keygen_refuses_when_only_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "agentos.pub").write_text("keep me")
    with pytest.raises(AgentosError):
        keygen(tmp_path)
    assert not (tmp_path / "agentos.key").exists()
    assert (tmp_path / "agentos.pub").read_text() == "keep me"


def test_keygen_overwrite_replaces_the_pair(tmp_path: Path) -> None:
    key_path, pub_path = keygen(tmp_path)
    old_pub = pub_path.read_bytes()
    keygen(tmp_path, overwrite=True)
    assert pub_path.read_bytes() != old_pub
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- round trip


def test_sign_then_verify_round_trip(signed_run: Path, keypair: tuple[Path, Path]) -> None:
    checks = verify_signature(signed_run, keypair[1])
    assert failing(checks) == set(), checks
    assert verification_passed(checks)
    assert render_checks(checks).endswith("verified: every check passed")
    assert {check.name for check in checks} >= {
        "envelope", "signature", "payload type", "statement", "subjects: digests",
        "subjects: required", "subjects: nothing added", "tape chain", "gates",
        "statement copy"}


def test_envelope_is_dsse_over_an_in_toto_statement(signed_run: Path,
                                                    keypair: tuple[Path, Path]) -> None:
    envelope_dict = json.loads((signed_run / ENVELOPE_RELPATH).read_text())
    assert envelope_dict["payloadType"] == PAYLOAD_TYPE
    assert len(envelope_dict["signatures"]) == 1
    assert set(envelope_dict["signatures"][0]) == {"keyid", "sig"}
    # Verify independently with securesystemslib: the envelope is standard DSSE.
    envelope = Envelope.from_dict(copy.deepcopy(envelope_dict))
    envelope.verify([load_public_key(keypair[1])], 1)

    statement = json.loads(base64.b64decode(envelope_dict["payload"]))
    Statement.copy_from_pb(json_format.ParseDict(statement, statement_pb2.Statement())
                           ).validate()
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    assert json.loads((signed_run / STATEMENT_RELPATH).read_text()) == statement

    files = [s for s in statement["subject"] if "sha256" in s["digest"]]
    commits = [s for s in statement["subject"] if "gitCommit" in s["digest"]]
    assert len(files) + len(commits) == len(statement["subject"])
    # the landed commits are subjects by their git ids (portable to any clone)
    assert [(c["name"], c["digest"]) for c in commits] == [
        ("git:commits_applied/0", {"gitCommit": "1" * 40}),
        ("git:commits_applied/1", {"gitCommit": "2" * 40})]
    names = {subject["name"]: subject["digest"]["sha256"] for subject in files}
    assert set(names) == {
        "patches/step_01.patch", "patches/step_02.patch", "audit/run_tape.jsonl",
        "audit/tape_head.json", "audit/checksums.json", "audit/SHA256SUMS",
        "execution_result.json", "reports/gates.json", "reports/report.md",
        "reports/report.html", "audit/request.yaml", "audit/policy.yaml", "steps/step_01.json",
        "steps/step_02.json", "steps/step_03.json", "tools/step_02/tool_task_pack.json",
        "tools/step_02/tool_result_pack.json"}
    for name, digest in names.items():
        assert digest == _sha((signed_run / name).read_bytes()), name


def test_predicate_carries_run_summary_and_gates(signed_run: Path) -> None:
    predicate = json.loads((signed_run / STATEMENT_RELPATH).read_text())["predicate"]
    assert predicate["run"] == "demo-six-files"
    assert predicate["status"] == "applied"
    assert predicate["branch"] == "main"
    assert predicate["post_apply_head"] == "2" * 40
    assert predicate["commits_applied"] == ["1" * 40, "2" * 40]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", predicate["signed_at"])
    assert predicate["repository"]["branch"] == "main"
    assert predicate["repository"]["range"] == [predicate["pre_apply_head"], "2" * 40]
    assert predicate["policy"]["id"] == "sandbox-default"
    assert predicate["policy"]["isolation"] == "required"
    assert [gate["id"] for gate in predicate["gates"]] == ["R2", "R3", "A1"]
    assert predicate["gates"][0] == {
        "id": "R2", "status": "PASS",
        "reason": "branch head equals post-apply head; 2 commits == 2 patches"}
    # integers stay integers (protobuf Struct would have made them 2.0)
    summary = predicate["gates_summary"]
    assert summary == {"PASS": 2, "FAIL": 0, "NOT_APPLICABLE": 1}
    assert all(type(value) is int for value in summary.values())


def test_build_statement_is_deterministic(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    assert build_statement(run_dir) == build_statement(run_dir)


def test_signing_writes_the_report_it_signs(signed_run: Path) -> None:
    report = (signed_run / "reports/report.md").read_text()
    assert "## Steps" in report and "## Gates" in report


def test_verify_works_on_a_copied_run_directory(signed_run: Path, tmp_path: Path,
                                                keypair: tuple[Path, Path]) -> None:
    elsewhere = tmp_path / "elsewhere" / "run"
    shutil.copytree(signed_run, elsewhere)
    assert verification_passed(verify_signature(elsewhere, keypair[1]))


def test_openssl_style_pem_keys_work(tmp_path: Path) -> None:
    private_key = Ed25519PrivateKey.generate()
    key_path = tmp_path / "k.pem"
    pub_path = tmp_path / "k.pub.pem"
    key_path.write_bytes(private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                   NoEncryption()))
    pub_path.write_bytes(private_key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    run_dir = make_run_dir(tmp_path)
    sign_run(run_dir, key_path)
    checks = verify_signature(run_dir, pub_path)
    assert failing(checks) == set(), checks


# --------------------------------------------------------------------------- refusals


def _refusal(run_dir: Path, key_path: Path) -> AgentosError:
    with pytest.raises(AgentosError) as excinfo:
        sign_run(run_dir, key_path)
    assert excinfo.value.code == EXIT_GATES
    assert not (run_dir / ENVELOPE_RELPATH).exists()
    return excinfo.value


def test_refuses_without_gates_report(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    (run_dir / "reports/gates.json").unlink()
    assert "reports/gates.json is missing" in _refusal(run_dir, keypair[0]).message


def test_refuses_when_a_gate_fails_and_names_it(tmp_path: Path,
                                                keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    write_gates(run_dir, "demo-six-files", [
        ("R2", "PASS", "ok"), ("R3", "FAIL", "tape line 4: prev mismatch"),
        ("EX-D", "FAIL", "3 commits, 2 patches")])
    message = _refusal(run_dir, keypair[0]).message
    assert "R3: tape line 4: prev mismatch" in message
    assert "EX-D" in message and "2 gate(s) FAIL" in message


def test_refuses_empty_gate_list(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    write_gates(run_dir, "demo-six-files", [])
    assert "no gates" in _refusal(run_dir, keypair[0]).message


def test_refuses_unparseable_gates_report(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    (run_dir / "reports/gates.json").write_text('{"gates": [')
    assert "not valid JSON" in _refusal(run_dir, keypair[0]).message


def test_refuses_unknown_gate_status(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    write_gates(run_dir, "demo-six-files", [("R2", "PASS", "ok"), ("R3", "SKIPPED", "?")])
    assert "unknown status" in _refusal(run_dir, keypair[0]).message


def test_refuses_when_nothing_passed(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    write_gates(run_dir, "demo-six-files", [("A1", "NOT_APPLICABLE", "no questions")])
    assert "no gate PASSed" in _refusal(run_dir, keypair[0]).message


def test_refuses_summary_that_hides_a_failure(tmp_path: Path,
                                              keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    gates_path = run_dir / "reports/gates.json"
    doc = json.loads(gates_path.read_text())
    doc["summary"] = {"PASS": 5, "FAIL": 0, "NOT_APPLICABLE": 0}
    gates_path.write_text(json.dumps(doc))
    assert "disagrees" in _refusal(run_dir, keypair[0]).message


def test_refuses_stale_gates_report(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    with (run_dir / "audit/run_tape.jsonl").open("ab") as tape:
        tape.write(b'{"seq": 99}\n')
    message = _refusal(run_dir, keypair[0]).message
    assert "stale" in message and "audit/run_tape.jsonl" in message


def test_refuses_gates_report_of_another_run(tmp_path: Path,
                                             keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    write_gates(run_dir, "some-other-run", [("R2", "PASS", "ok")])
    assert "some-other-run" in _refusal(run_dir, keypair[0]).message


@pytest.mark.parametrize("relpath", ["execution_result.json", "audit/run_tape.jsonl"])
def test_refuses_without_core_artifacts(tmp_path: Path, keypair: tuple[Path, Path],
                                        relpath: str) -> None:
    run_dir = make_run_dir(tmp_path)
    (run_dir / relpath).unlink()
    assert relpath in _refusal(run_dir, keypair[0]).message


def test_missing_signing_key_is_a_usage_error(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    with pytest.raises(AgentosError) as excinfo:
        sign_run(run_dir, tmp_path / "nope.key")
    assert excinfo.value.code != EXIT_GATES
    assert not (run_dir / ENVELOPE_RELPATH).exists()


def test_public_key_as_signing_key_is_refused(tmp_path: Path,
                                              keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    with pytest.raises(AgentosError) as excinfo:
        sign_run(run_dir, keypair[1])
    assert "private key" in excinfo.value.message


# --------------------------------------------------------------------------- tampering


def _edit_tape_line(run_dir: Path) -> None:
    tape = run_dir / "audit/run_tape.jsonl"
    tape.write_bytes(tape.read_bytes().replace(b'"step_end"', b'"step_failed"', 1))


def _edit_patch(run_dir: Path) -> None:
    patch = run_dir / "patches/step_01.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+hello", b"+evil!"))


def _add_patch(run_dir: Path) -> None:
    (run_dir / "patches/step_99.patch").write_text("Subject: sneaked in\n")


def _add_step_manifest(run_dir: Path) -> None:
    (run_dir / "steps/step_99.json").write_text("{}")


def _delete_subject(run_dir: Path) -> None:
    (run_dir / "steps/step_02.json").unlink()


def _replace_gates(run_dir: Path) -> None:
    write_gates(run_dir, "demo-six-files", [("R2", "PASS", "trust me")])


def _modify_payload(run_dir: Path) -> None:
    envelope_path = run_dir / ENVELOPE_RELPATH
    envelope = json.loads(envelope_path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    for subject in statement["subject"]:
        if subject["name"] == "patches/step_01.patch":
            subject["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    envelope_path.write_text(json.dumps(envelope))


def _flip_signature_byte(run_dir: Path) -> None:
    envelope_path = run_dir / ENVELOPE_RELPATH
    envelope = json.loads(envelope_path.read_text())
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    envelope_path.write_text(json.dumps(envelope))


def _change_payload_type(run_dir: Path) -> None:
    envelope_path = run_dir / ENVELOPE_RELPATH
    envelope = json.loads(envelope_path.read_text())
    envelope["payloadType"] = "application/json"
    envelope_path.write_text(json.dumps(envelope))


def _edit_statement_copy(run_dir: Path) -> None:
    statement_path = run_dir / STATEMENT_RELPATH
    statement = json.loads(statement_path.read_text())
    statement["predicate"]["status"] = "applied-and-reviewed"
    statement_path.write_text(json.dumps(statement))


def _delete_envelope(run_dir: Path) -> None:
    (run_dir / ENVELOPE_RELPATH).unlink()


def _garble_envelope(run_dir: Path) -> None:
    (run_dir / ENVELOPE_RELPATH).write_text('{"payload": "!!"}')


TAMPERS: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "edit a tape line": (_edit_tape_line, {"subjects: digests", "tape chain"}),
    "edit a patch": (_edit_patch, {"subjects: digests"}),
    "add an extra patch": (_add_patch, {"subjects: nothing added"}),
    "add a step manifest": (_add_step_manifest, {"subjects: nothing added"}),
    "delete a subject": (_delete_subject, {"subjects: digests"}),
    "replace gates.json": (_replace_gates, {"subjects: digests"}),
    "modify the envelope payload": (_modify_payload,
                                    {"signature", "subjects: digests", "statement copy"}),
    "flip a signature byte": (_flip_signature_byte, {"signature"}),
    "change the payload type": (_change_payload_type, {"signature", "payload type"}),
    "edit the human statement copy": (_edit_statement_copy, {"statement copy"}),
    "delete the envelope": (_delete_envelope, {"envelope"}),
    "garble the envelope": (_garble_envelope, {"envelope"}),
}


@pytest.mark.parametrize("tamper_name", sorted(TAMPERS))
def test_tampering_after_signing_fails_verification(
    signed_run: Path, keypair: tuple[Path, Path], tamper_name: str
) -> None:
    tamper, expected_failures = TAMPERS[tamper_name]
    assert verification_passed(verify_signature(signed_run, keypair[1]))
    tamper(signed_run)
    checks = verify_signature(signed_run, keypair[1])
    assert not verification_passed(checks)
    assert failing(checks) == expected_failures, checks


def test_signed_with_another_key(tmp_path: Path, keypair: tuple[Path, Path],
                                 other_keypair: tuple[Path, Path]) -> None:
    run_dir = make_run_dir(tmp_path)
    sign_run(run_dir, other_keypair[0])
    checks = verify_signature(run_dir, keypair[1])
    assert failing(checks) == {"signature"}
    text = render_checks(checks)
    assert "FAIL  signature:" in text and text.endswith("NOT verified: 1 check(s) failed")
    detail = next(check.detail for check in checks if check.name == "signature")
    assert load_public_key(other_keypair[1]).keyid in detail


def test_verified_with_another_key(signed_run: Path, other_keypair: tuple[Path, Path]) -> None:
    assert failing(verify_signature(signed_run, other_keypair[1])) == {"signature"}


def test_resigned_with_attacker_key_and_forged_keyid_fails(
    signed_run: Path, keypair: tuple[Path, Path], other_keypair: tuple[Path, Path]
) -> None:
    """An attacker re-signs a tampered run and claims the real key's keyid."""
    _edit_patch(signed_run)
    write_gates(signed_run, "demo-six-files", [("R2", "PASS", "ok")])
    (signed_run / ENVELOPE_RELPATH).unlink()  # sign_run never re-signs a signed run
    sign_run(signed_run, other_keypair[0])
    envelope_path = signed_run / ENVELOPE_RELPATH
    envelope = json.loads(envelope_path.read_text())
    envelope["signatures"][0]["keyid"] = load_public_key(keypair[1]).keyid
    envelope_path.write_text(json.dumps(envelope))
    assert "signature" in failing(verify_signature(signed_run, keypair[1]))


def _resign(run_dir: Path, statement: dict[str, Any], key_path: Path) -> None:
    """Sign an edited statement with the genuine key (a signer who lies)."""
    envelope = Envelope(json.dumps(statement).encode(), PAYLOAD_TYPE, {})
    envelope.sign(load_signer(key_path))
    (run_dir / ENVELOPE_RELPATH).write_text(json.dumps(envelope.to_dict()))
    (run_dir / STATEMENT_RELPATH).write_text(json.dumps(statement))


def test_signed_statement_with_failing_gate_fails_gates_check(
    signed_run: Path, keypair: tuple[Path, Path]
) -> None:
    """Even a validly signed statement is rejected when its gates say FAIL."""
    statement = json.loads((signed_run / STATEMENT_RELPATH).read_text())
    statement["predicate"]["gates"][1]["status"] = "FAIL"
    statement["predicate"]["gates_summary"] = {"PASS": 1, "FAIL": 1, "NOT_APPLICABLE": 1}
    _resign(signed_run, statement, keypair[0])
    checks = verify_signature(signed_run, keypair[1])
    assert failing(checks) == {"gates"}
    assert "R3" in next(check.detail for check in checks if check.name == "gates")


def test_unsafe_subject_name_fails(signed_run: Path, keypair: tuple[Path, Path]) -> None:
    statement = json.loads((signed_run / STATEMENT_RELPATH).read_text())
    statement["subject"].append({"name": "../../etc/hostname", "digest": {"sha256": "0" * 64}})
    _resign(signed_run, statement, keypair[0])
    checks = verify_signature(signed_run, keypair[1])
    assert failing(checks) == {"subjects: digests"}
    assert "unsafe subject name" in next(c.detail for c in checks if not c.ok)


# --------------------------------------------------------------------------- inputs


def test_missing_public_key_raises(signed_run: Path, tmp_path: Path) -> None:
    with pytest.raises(AgentosError) as excinfo:
        verify_signature(signed_run, tmp_path / "missing.pub")
    assert excinfo.value.where == str(tmp_path / "missing.pub")


def test_garbage_public_key_raises(signed_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text('{"keyid": "x", "keytype": "rot13"}')
    with pytest.raises(AgentosError) as excinfo:
        verify_signature(signed_run, bad)
    assert "not a usable public key" in excinfo.value.message


def test_corrupt_public_key_bytes_raise(signed_run: Path, keypair: tuple[Path, Path],
                                        tmp_path: Path) -> None:
    pub = json.loads(keypair[1].read_text())
    pub["keyval"]["public"] = "zz" + pub["keyval"]["public"][2:]
    bad = tmp_path / "corrupt.pub"
    bad.write_text(json.dumps(pub))
    with pytest.raises(AgentosError):
        verify_signature(signed_run, bad)


def test_keygen_rejects_a_path_as_name(tmp_path: Path) -> None:
    with pytest.raises(AgentosError):
        keygen(tmp_path, name="../escape")
    assert not (tmp_path.parent / "escape.key").exists()


# --------------------------------------------------------------------------- tape chain


def test_tape_chain_detects_a_dropped_line_even_with_a_fixed_head(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    assert check_tape_chain(run_dir).ok
    tape = run_dir / "audit/run_tape.jsonl"
    lines = tape.read_bytes().splitlines(keepends=True)
    del lines[2]
    tape.write_bytes(b"".join(lines))
    _write_json(run_dir / "audit/tape_head.json",
                {"count": len(lines), "head": _sha(lines[-1].rstrip(b"\n"))})
    result = check_tape_chain(run_dir)
    assert not result.ok and "seq" in result.detail


def test_tape_chain_detects_truncation(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    tape = run_dir / "audit/run_tape.jsonl"
    tape.write_bytes(b"".join(tape.read_bytes().splitlines(keepends=True)[:-1]))
    result = check_tape_chain(run_dir)
    assert not result.ok and "tape_head.json" in result.detail


@pytest.mark.parametrize("lie", ["swap", "drop", "rename"])
def test_commit_subjects_must_be_the_landed_commits(signed_run: Path,
                                                    keypair: tuple[Path, Path],
                                                    lie: str) -> None:
    """A signer who names other commits (or fewer, or out of order) than the run landed."""
    statement = json.loads((signed_run / STATEMENT_RELPATH).read_text())
    commits = [s for s in statement["subject"] if "gitCommit" in s["digest"]]
    if lie == "swap":
        commits[0]["digest"]["gitCommit"] = "3" * 40
    elif lie == "drop":
        statement["subject"].remove(commits[-1])
    else:
        commits[0]["name"] = "git:commits_applied/7"
    _resign(signed_run, statement, keypair[0])
    checks = verify_signature(signed_run, keypair[1])
    assert "subjects: landed commits" in failing(checks), [c.name for c in checks]


# --------------------------------------------------------------------------- interop


def test_the_envelope_verifies_with_openssl_over_the_pae_and_go_derives_its_keyid(
        tmp_path: Path) -> None:
    """Independently of securesystemslib: openssl checks the ed25519 signature over DSSE's
    PAE with agentos.pub.pem; and the key id is the one go-securesystemslib derives for
    that PEM key (signerverifier.LoadKey -> calculateKeyID), so the Go DSSE reference
    verifier does not skip the signature for a key id mismatch."""
    import subprocess

    from agentos_tasks.attest.keys import keygen, load_signer

    private, public = keygen(tmp_path)
    pem = tmp_path / "agentos.pub.pem"
    assert pem.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    payload = b'{"_type":"https://in-toto.io/Statement/v1"}'
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(load_signer(private))
    signature = next(iter(envelope.signatures.values()))
    pae = b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload),
                                   payload)
    (tmp_path / "pae").write_bytes(pae)
    (tmp_path / "sig").write_bytes(bytes.fromhex(signature.signature))

    def openssl_verify(data: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pem),
                               "-rawin", "-in", str(tmp_path / data), "-sigfile",
                               str(tmp_path / "sig")], capture_output=True, text=True)

    ok = openssl_verify("pae")
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stderr
    (tmp_path / "bad").write_bytes(pae.replace(b"Statement", b"Statemenu"))
    assert openssl_verify("bad").returncode != 0
    # Go: keyval.public is the raw key in hex, keyid_hash_algorithms [sha256, sha512]
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pem), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    go_key = {"keyid_hash_algorithms": ["sha256", "sha512"], "keytype": "ed25519",
              "keyval": {"public": der[-32:].hex()}, "scheme": "ed25519"}
    go_keyid = _sha(json.dumps(go_key, sort_keys=True, separators=(",", ":")).encode())
    assert signature.keyid == go_keyid
    assert load_public_key(pem).keyid == load_public_key(public).keyid == go_keyid
    envelope.verify([load_public_key(pem)], 1)  # and securesystemslib with the PEM form
