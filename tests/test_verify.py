"""verify_run: a signed real run verifies; every tamper after signing is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import Built, git, read_events, rechain, reseal

from agentos_tasks.attest import Check, keygen, sign_run
from agentos_tasks.attest import render_checks as render
from agentos_tasks.attest import verification_passed as passed
from agentos_tasks.attest.verify import identity_lines, run_identity, verify_run
from agentos_tasks.gates.context import _REPOS, use_repo
from agentos_tasks.gates.report import write_reports


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keygen(tmp_path_factory.mktemp("keys"))


def _sign(run: Built, keys: tuple[Path, Path]) -> None:
    write_reports(run.run_dir)
    sign_run(run.run_dir, keys[0])


def _failed(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok}


def test_a_signed_good_run_verifies(good_run: Built, keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    checks = verify_run(good_run.run_dir, keys[1])
    assert passed(checks), render(checks)
    names = {c.name for c in checks}
    assert {"signature", "gate R2", "gate EX-D", "gate A1"} <= names
    assert render(checks).endswith("verified: every check passed")


def test_a_rechained_tape_after_signing_is_caught(good_run: Built,
                                                  keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    events = read_events(good_run.run_dir)
    last_end = max(i for i, e in enumerate(events) if e["event"] == "step_end")
    rechain(good_run.run_dir, events[:last_end] + events[last_end + 1:])
    checks = verify_run(good_run.run_dir, keys[1])
    failed = _failed(checks)
    assert "audit/run_tape.jsonl" in failed["subjects: digests"]
    assert "tape chain" not in failed  # the forger's chain is consistent ...
    assert "gate EX-E" in failed and "gate R3" in failed  # ... the gates still see the gap
    assert "NOT verified" in render(checks)


def test_a_fully_resealed_patch_after_signing_is_caught(good_run: Built,
                                                        keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    patch = good_run.run_dir / "patches" / "s1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+alpha", b"+omega"))
    reseal(good_run.run_dir)
    failed = _failed(verify_run(good_run.run_dir, keys[1]))
    assert "patches/s1.patch" in failed["subjects: digests"]
    assert "patch ids" in failed["gate R2"]
    assert "gate EX-D" in failed


def test_an_unsigned_evidence_file_edited_after_signing_is_caught(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    record = good_run.run_dir / "audit" / "request.json"
    record.write_text(record.read_text().replace("s1: add docs", "s1: add DOCS"))
    failed = _failed(verify_run(good_run.run_dir, keys[1]))
    assert "audit/request.json does not match checksums.json" in failed["gate R3"]


def test_a_signed_run_keeps_verifying_when_the_branch_moves_on(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    git(good_run.repo, "commit", "-q", "--allow-empty", "-m", "later, by someone else")
    checks = verify_run(good_run.run_dir, keys[1])
    assert passed(checks), render(checks)
    r2 = next(c for c in checks if c.name == "gate R2")
    assert "branch moved on: 1 later commit(s)" in r2.detail


@pytest.mark.parametrize("move", ["rewind", "rewrite"])
def test_a_branch_that_lost_or_rewrote_the_runs_commits_fails(
        good_run: Built, keys: tuple[Path, Path], move: str) -> None:
    """Rewinding the branch never makes an old signature look current."""
    _sign(good_run, keys)
    if move == "rewind":
        git(good_run.repo, "reset", "-q", "--hard", "HEAD~1")
    else:
        git(good_run.repo, "commit", "-q", "--amend", "-m", "rewritten")
    failed = _failed(verify_run(good_run.run_dir, keys[1]))
    assert set(failed) >= {"gate R2", "gate EX-D"}, failed
    assert "subjects: digests" not in failed


def test_a_clone_elsewhere_verifies_with_repo(good_run: Built, keys: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    """The target cloned elsewhere (then moved on there) and the original gone:
    `--repo` checks the run against the clone."""
    _sign(good_run, keys)
    clone = tmp_path / "elsewhere.git"
    git(tmp_path, "clone", "-q", "--bare", str(good_run.repo), str(clone))
    moved = tmp_path / "moved-away"
    good_run.repo.rename(moved)
    try:
        assert not passed(verify_run(good_run.run_dir, keys[1]))
        use_repo(good_run.run_dir, clone)
        git(tmp_path, "clone", "-q", str(clone), str(tmp_path / "work"))
        git(tmp_path / "work", "commit", "-q", "--allow-empty", "-m", "later")
        git(tmp_path / "work", "push", "-q", "origin", "main")
        checks = verify_run(good_run.run_dir, keys[1])
        assert passed(checks), render(checks)
    finally:
        _REPOS.clear()
        moved.rename(good_run.repo)


def test_an_added_evidence_file_is_caught(good_run: Built, keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    (good_run.run_dir / "logs" / "extra.out").write_text("planted\n")
    failed = _failed(verify_run(good_run.run_dir, keys[1]))
    assert "logs/extra.out" in failed["coverage: evidence bound by the signature"]


def test_without_the_target_repository_repo_gates_fail_and_say_so(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    shutil.rmtree(good_run.repo)
    checks = verify_run(good_run.run_dir, keys[1])
    failed = _failed(checks)
    for gate_id in ("R2", "EX-D"):
        assert "absent here" in failed[f"gate {gate_id}"], failed
    assert "gate EX-E" not in failed and "signature" not in failed


def test_an_unsigned_run_does_not_verify(good_run: Built, keys: tuple[Path, Path]) -> None:
    checks = verify_run(good_run.run_dir, keys[1])
    assert not passed(checks)
    assert "signature/envelope.dsse.json is missing" in render(checks)


def test_a_signed_denied_run_verifies(denied_run: Built, keys: tuple[Path, Path]) -> None:
    """Fails until sign.SUBJECT_GLOBS covers audit/request.json: a denied run has no
    checksums.json, so nothing signed binds the request record the R1 gate re-decides."""
    _sign(denied_run, keys)
    checks = verify_run(denied_run.run_dir, keys[1])
    assert passed(checks), render(checks)


def test_a_denied_runs_request_record_edited_after_signing_is_caught(
        denied_run: Built, keys: tuple[Path, Path]) -> None:
    _sign(denied_run, keys)
    record = denied_run.run_dir / "audit" / "request.json"
    record.write_text(record.read_text().replace("docs/no.md", "src/no.md"))
    failed = _failed(verify_run(denied_run.run_dir, keys[1]))
    assert "gate R1" in failed


@pytest.mark.parametrize("planted", ["reports/x.md", "signature/extra.sig", "NOTES.md",
                                     "execution_result.json.orig", "audit/sub/deep.txt"])
def test_any_unlisted_file_anywhere_fails_coverage(good_run: Built, keys: tuple[Path, Path],
                                                   planted: str) -> None:
    _sign(good_run, keys)
    path = good_run.run_dir / planted
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("planted after signing\n")
    failed = _failed(verify_run(good_run.run_dir, keys[1]))
    assert planted in failed["coverage: evidence bound by the signature"], failed


def test_the_cache_and_worktree_are_excluded_by_design(good_run: Built,
                                                       keys: tuple[Path, Path]) -> None:
    _sign(good_run, keys)
    (good_run.run_dir / ".state" / "anything").write_text("cache\n")
    checks = verify_run(good_run.run_dir, keys[1])
    assert passed(checks), render(checks)


def test_expectations_name_the_run_and_its_commits(good_run: Built,
                                                   keys: tuple[Path, Path]) -> None:
    """Another honest run's directory copied in place of this one verifies as itself;
    --expect-run / --expect-commit say whether it is the run the verifier was told of."""
    _sign(good_run, keys)
    identity = run_identity(good_run.run_dir)
    assert identity["run"] == "good-run" and len(identity["commits"]) == 6
    post = identity["commits"][-1]
    ok = verify_run(good_run.run_dir, keys[1], expect_run="good-run",
                    expect_commits=(post[:12],))
    assert passed(ok), render(ok)
    failed = _failed(verify_run(good_run.run_dir, keys[1], expect_run="other-run",
                                expect_commits=("0" * 12, post[:4])))
    assert "signed run is 'good-run', expected 'other-run'" in failed["expected run"]
    assert "not one of the commits" in failed[f"expected commit {'0' * 12}"]
    assert f"expected commit {post[:4]}" in failed  # too short to name a commit
    lines = identity_lines(identity)
    assert lines[0] == "run: good-run" and lines[1].startswith("commits: 6 on main (")
    assert lines[2].startswith("signed at: 20") and lines[3].startswith("key id: ")


def test_registered_predicate_summaries_are_signed_and_checked(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    """in-toto test-result v0.1 (one test per gate) and SLSA VSA v1 beside the run report,
    same key, same subjects; a summary that lies, is re-signed by another key or is gone
    fails."""
    import base64
    import json

    from securesystemslib.dsse import Envelope

    from agentos_tasks.attest import keygen as make_keys
    from agentos_tasks.attest.keys import load_signer
    from agentos_tasks.attest.summaries import TEST_RESULT_RELPATH, VSA_RELPATH

    _sign(good_run, keys)
    run = good_run.run_dir
    report = json.loads(base64.b64decode(json.loads(
        (run / "signature/envelope.dsse.json").read_text())["payload"]))
    tests = json.loads(base64.b64decode(json.loads((run / TEST_RESULT_RELPATH).read_text())[
        "payload"]))
    assert tests["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    assert tests["subject"] == report["subject"]
    assert tests["predicate"]["result"] == "PASSED" and "R2" in tests["predicate"][
        "passedTests"] and tests["predicate"]["failedTests"] == []
    assert "A1" in tests["predicate"]["configuration"][0]["annotations"]["not_applicable"]
    vsa = json.loads(base64.b64decode(json.loads((run / VSA_RELPATH).read_text())["payload"]))
    assert vsa["predicateType"] == "https://slsa.dev/verification_summary/v1"
    assert vsa["predicate"]["verificationResult"] == "PASSED"
    assert vsa["predicate"]["inputAttestations"][0]["uri"] == "signature/envelope.dsse.json"

    def resign(statement: dict[str, object], key: Path) -> None:
        envelope = Envelope(json.dumps(statement).encode(), "application/vnd.in-toto+json",
                            {})
        envelope.sign(load_signer(key))
        (run / VSA_RELPATH).write_text(json.dumps(envelope.to_dict()))

    vsa["predicate"]["verificationResult"] = "FAILED"  # the signer lies about the verdict
    resign(vsa, keys[0])
    assert "verdict differs" in _failed(verify_run(run, keys[1]))[f"summary {VSA_RELPATH}"]
    other = make_keys(good_run.root / "other")
    vsa["predicate"]["verificationResult"] = "PASSED"
    resign(vsa, other[0])
    assert "does not verify" in _failed(verify_run(run, keys[1]))[f"summary {VSA_RELPATH}"]
    (run / TEST_RESULT_RELPATH).unlink()
    assert _failed(verify_run(run, keys[1]))[f"summary {TEST_RESULT_RELPATH}"] == "missing"
