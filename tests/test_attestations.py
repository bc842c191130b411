"""Evidence signed as it happens (issue 12): the executor key signs each step's in-toto
link when its step_end is written and the tape head when an invocation ends; gate AT
recomputes every link from the evidence; `doit sign` refuses and `agentos verify` fails a
run whose attestations do not hold.

One good run per session (conftest `good_run`), restored in place for every case.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Built,
    assert_fail,
    assert_pass,
    read_events,
    read_json,
    rechain,
    reseal,
    sha256,
    write_json,
)
from runutil import doit, write_request
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from security.conftest import require_bwrap

from agentos_tasks.attest import Check, keygen, sign_run
from agentos_tasks.attest import render_checks as render
from agentos_tasks.attest import verification_passed as passed
from agentos_tasks.attest.executor import public_key_dict
from agentos_tasks.attest.keys import load_public_key, load_signer
from agentos_tasks.attest.verify import verify_run
from agentos_tasks.fsutil import sha256_bytes, sha256_file
from agentos_tasks.gates.report import write_reports
from agentos_tasks.gates.runner import run_all


def envelope_of(path: Path) -> tuple[Envelope, dict[str, Any]]:
    envelope = Envelope.from_dict(json.loads(path.read_bytes()))
    return envelope, json.loads(envelope.payload)


def test_every_step_end_has_a_link_signed_by_the_executor_key(good_run: Built,
                                                               executor_key: Path) -> None:
    run_dir = good_run.run_dir
    pub = load_public_key(run_dir / "attestations" / "executor.pub.json")
    from agentos_tasks.attest.keys import load_signer

    assert pub.keyid == load_signer(executor_key).public_key.keyid
    lines = (run_dir / "audit" / "run_tape.jsonl").read_bytes().splitlines()
    ends = [e for e in read_events(run_dir) if e["event"] == "step_end"]
    assert len(ends) == 7
    for end in ends:
        envelope, statement = envelope_of(
            run_dir / "attestations" / f"{end['step']}.{end['seq']}.link.dsse.json")
        envelope.verify([pub], 1)
        assert statement["predicateType"] == "https://in-toto.io/attestation/link/v0.3"
        byproducts = statement["predicate"]["byproducts"]
        assert byproducts["tape"] == {"seq": end["seq"],
                                      "line_sha256": sha256_bytes(lines[end["seq"]])}
        assert byproducts["ended_at"] == end["ts"]
        assert byproducts["manifest_sha256"] == sha256_file(
            run_dir / "steps" / f"{end['step']}.json")
        materials = statement["predicate"]["materials"]
        manifest = json.loads((run_dir / "steps" / f"{end['step']}.json").read_bytes())
        assert materials[0]["digest"] == {"gitCommit": manifest["parent"]}
    s7 = next(e for e in ends if e["step"] == "s7")
    _, statement = envelope_of(run_dir / "attestations" / f"s7.{s7['seq']}.link.dsse.json")
    assert statement["predicate"]["command"][1:] == ["-c", "open('gen.txt', 'w').write('g')"]
    assert statement["predicate"]["byproducts"]["log_sha256"] == sha256_file(
        run_dir / "logs" / "s7.out")
    envelope, head = envelope_of(run_dir / "attestations" / "tape_head.dsse.json")
    envelope.verify([pub], 1)
    assert head["predicate"]["count"] == len(lines)
    assert head["predicate"]["head"] == sha256_bytes(lines[-1])


def test_the_executor_key_is_private_and_outside_the_run(good_run: Built,
                                                         executor_key: Path) -> None:
    assert stat.S_IMODE(executor_key.stat().st_mode) == 0o600
    assert good_run.root not in executor_key.parents
    names = {p.name for p in good_run.run_dir.rglob("*") if p.is_file()}
    assert "executor.key" not in names


def test_a_run_step_cannot_read_the_executor_key(tmp_path: Path, executor_key: Path) -> None:
    """The sandbox binds neither the key nor its directory: the step's read fails."""
    require_bwrap()
    code = (f"import sys\ntry:\n    open({str(executor_key)!r}, 'rb').read()\n"
            "except OSError as exc:\n    print('denied', exc)\n    sys.exit(3)\n"
            "open('leak.txt', 'w').write('read it')\n")
    write_request(tmp_path, [{"id": "peek", "message": "peek: try the key",
                              "run": ["python3", "-c", code], "expect_exit": 3}])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    run_dir = tmp_path / "out" / "r1"
    assert "denied" in (run_dir / "logs" / "peek.out").read_text()
    manifest = json.loads((run_dir / "steps" / "peek.json").read_bytes())
    assert manifest["sandbox"]["backend"] == "bwrap"
    wrapper = manifest["sandbox"]["wrapper_argv"]
    binds = " ".join(wrapper[:len(wrapper) - 4])  # what comes before `-- python3 -c CODE`
    assert wrapper[-4] == "--" and str(executor_key.parent) not in binds
    assert not (tmp_path / "repo" / "leak.txt").exists()


# ------------------------------------------------------------------ tamper cases (issue 12)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keygen(tmp_path_factory.mktemp("report-keys"))


def link_of(run_dir: Path, step: str) -> Path:
    end = [e for e in read_events(run_dir) if e["event"] == "step_end" and e["step"] == step]
    return run_dir / "attestations" / f"{step}.{end[-1]['seq']}.link.dsse.json"


def forge_412_passed(run_dir: Path) -> None:
    """The issue's forgery: s7's log claims `412 passed`; manifest, step_end, checksums,
    SHA256SUMS, execution_result, run_end, the chain and tape_head.json all follow."""
    log = run_dir / "logs" / "s7.out"
    log.write_text("============ 412 passed in 3.02s ============\n")
    manifest_path = run_dir / "steps" / "s7.json"
    manifest = read_json(manifest_path)
    manifest["log_sha256"] = sha256(log.read_bytes())
    manifest["output_bytes"] = log.stat().st_size
    write_json(manifest_path, manifest)
    reseal(run_dir)


def sign_despite_gates(run_dir: Path, key: Path) -> None:
    """A signer fooled (or an older agentos): an all-PASS gates.json without evidence, so
    sign_run signs whatever the run directory holds now. verify must still fail."""
    write_reports(run_dir, [r for r in run_all(run_dir) if r.id != "AT"])
    doc = read_json(run_dir / "reports" / "gates.json")
    for entry in doc["gates"]:
        entry["evidence"] = []
    write_json(run_dir / "reports" / "gates.json", doc)
    sign_run(run_dir, key)


def failed_checks(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok}


def resign_everything(run_dir: Path, signer: CryptoSigner) -> None:
    """A forger holding `signer`: executor.pub.json replaced by its key, every link
    rebuilt from the tape and files as they are now, the head signed again."""
    from agentos_tasks.attest.executor import public_key_dict, sign_statement

    write_json(run_dir / "attestations" / "executor.pub.json", public_key_dict(signer))
    lines = (run_dir / "audit" / "run_tape.jsonl").read_bytes().splitlines()
    events = read_events(run_dir)
    for end in (e for e in events if e["event"] == "step_end"):
        path = run_dir / "attestations" / f"{end['step']}.{end['seq']}.link.dsse.json"
        _, statement = envelope_of(path)
        predicate = statement["predicate"]
        log = run_dir / "logs" / f"{end['step']}.out"
        predicate["byproducts"].update(
            manifest_sha256=end["manifest_sha256"], patch_sha256=end["patch_sha256"],
            ended_at=end["ts"], log_sha256=sha256(log.read_bytes()) if log.is_file() else None,
            tape={"seq": end["seq"], "line_sha256": sha256(lines[end["seq"]])})
        subjects = [{"name": s["name"], "digest": s["digest"]} for s in statement["subject"]]
        subjects[0]["digest"] = {"sha256": end["manifest_sha256"]}
        path.write_text(json.dumps(sign_statement(signer, subjects, statement["predicateType"],
                                                  predicate, {"name": end["step"]})))
    head = {"run": events[0].get("run", "good-run"), "count": len(lines),
            "head": sha256(lines[-1]), "signed_at": "2026-12-02T00:00:00+00:00"}
    tape_sha = sha256((run_dir / "audit" / "run_tape.jsonl").read_bytes())
    (run_dir / "attestations" / "tape_head.dsse.json").write_text(json.dumps(sign_statement(
        signer, [{"name": "audit/run_tape.jsonl", "digest": {"sha256": tape_sha}}],
        "https://agentos-tasks.dev/attestation/tape-head/v1", head)))


def test_an_untampered_run_passes_gate_at(good_run: Built, denied_run: Built) -> None:
    assert_pass(good_run.run_dir, "AT")
    assert_pass(denied_run.run_dir, "AT")


def test_the_412_passed_forgery_fails_at_is_refused_by_sign_and_fails_verify(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    run_dir = good_run.run_dir
    forge_412_passed(run_dir)
    assert_fail(run_dir, "AT", "logs/s7.out", "s7")
    signed = good_run.gates("sign", f"key={keys[0]}")
    assert signed.returncode != 0 and "AT" in signed.stdout + signed.stderr, signed.stdout
    assert not (run_dir / "signature" / "envelope.dsse.json").exists()
    sign_despite_gates(run_dir, keys[0])
    verified = subprocess.run([sys.executable, "-m", "agentos_tasks", "verify", str(run_dir),
                               "--key", str(keys[1])], capture_output=True, text=True,
                              check=False)
    assert verified.returncode == 5, verified.stdout + verified.stderr
    assert "FAIL  gate AT" in verified.stdout, verified.stdout


@pytest.mark.parametrize("how", ["1999", "reversed", "not a time"])
def test_tape_timestamps_rewritten_and_rechained_fail_at(good_run: Built, how: str) -> None:
    run_dir = good_run.run_dir
    events = read_events(run_dir)
    stamps = [e["ts"] for e in events]
    for event, stamp in zip(events, stamps[::-1], strict=True):
        if how == "1999":
            event["ts"] = "1999" + event["ts"][4:]
        elif how == "reversed":
            event["ts"] = stamp
        elif event["event"] == "step_start" and event["step"] == "s2":
            event["ts"] = "not a time"
    rechain(run_dir, events)
    assert_fail(run_dir, "AT", "tape")


def test_a_deleted_link_envelope_fails_at(good_run: Built) -> None:
    link = link_of(good_run.run_dir, "s3")
    link.unlink()
    assert_fail(good_run.run_dir, "AT", link.name, "missing")


def test_a_link_resigned_with_another_key_fails_at(good_run: Built) -> None:
    link = link_of(good_run.run_dir, "s7")
    envelope = Envelope.from_dict(json.loads(link.read_bytes()))
    envelope.signatures.clear()
    envelope.sign(CryptoSigner.generate_ed25519())
    link.write_text(json.dumps(envelope.to_dict()))
    assert_fail(good_run.run_dir, "AT", "no valid signature by the executor key")


def test_a_forgery_resigned_with_an_attacker_executor_key_is_caught_by_the_pinned_key(
        good_run: Built, keys: tuple[Path, Path], executor_key: Path,
        tmp_path: Path) -> None:
    """The forger also replaces attestations/executor.pub.json and re-signs every link
    and the head with a key of its own: internally consistent, so gate AT passes. Caught
    by the key pin: `doit sign` refuses (the run's executor key is not this host's), and
    a statement signed anyway pins the forger's key id, which `agentos verify
    --executor-key` rejects."""
    run_dir = good_run.run_dir
    forge_412_passed(run_dir)
    resign_everything(run_dir, CryptoSigner.generate_ed25519())
    assert_pass(run_dir, "AT")  # another host's verifier: consistent in itself
    # `doit gates` where the run was executed compares with this host's executor key
    gates = good_run.gates()
    assert gates.returncode != 0, gates.stdout
    report = json.loads((run_dir / "reports" / "gates.json").read_text())
    at = next(g for g in report["gates"] if g["id"] == "AT")
    assert at["status"] == "FAIL" and "this host's executor key is" in at["reason"], at
    signed = good_run.gates("sign", f"key={keys[0]}")
    assert signed.returncode != 0, signed.stdout
    assert "executor key" in signed.stdout + signed.stderr, signed.stdout + signed.stderr
    sign_despite_gates(run_dir, keys[0])
    real_pub = tmp_path / "executor.pub.json"
    write_json(real_pub, public_key_dict(load_signer(executor_key)))
    failed = failed_checks(verify_run(run_dir, keys[1], executor_pub=real_pub))
    assert "executor key pinned" in failed, failed


def test_attestations_replaced_after_signing_fail_verify(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    run_dir = good_run.run_dir
    write_reports(run_dir)
    sign_run(run_dir, keys[0], executor_keyid=None)
    resign_everything(run_dir, CryptoSigner.generate_ed25519())
    failed = failed_checks(verify_run(run_dir, keys[1]))
    assert "attestations/executor.pub.json" in failed["subjects: digests"], failed
    assert "executor key pinned" in failed, failed


def test_a_run_executed_without_the_executor_key_is_flagged(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    """What a run made without the key (an executor that did not sign) looks like: the
    same evidence, no attestations/. FAIL, not N/A; `doit sign` refuses it."""
    shutil.rmtree(good_run.run_dir / "attestations")
    assert_fail(good_run.run_dir, "AT", "executed without the executor key")
    signed = good_run.gates("sign", f"key={keys[0]}")
    assert signed.returncode == 5 and "AT" in signed.stderr, signed.stdout + signed.stderr
    assert not (good_run.run_dir / "signature").exists()
    at = next(g for g in read_json(good_run.run_dir / "reports" / "gates.json")["gates"]
              if g["id"] == "AT")
    assert "executed without the executor key" in at["reason"], at


def test_the_signed_statement_pins_the_executor_key(good_run: Built, keys: tuple[Path, Path],
                                                    executor_key: Path,
                                                    tmp_path: Path) -> None:
    run_dir = good_run.run_dir
    signed = good_run.gates("sign", f"key={keys[0]}")
    assert signed.returncode == 0, signed.stdout + signed.stderr
    statement = read_json(run_dir / "signature" / "statement.json")
    keyid = load_signer(executor_key).public_key.keyid
    assert statement["predicate"]["executor"]["keyid"] == keyid
    real_pub = tmp_path / "executor.pub.json"
    write_json(real_pub, public_key_dict(load_signer(executor_key)))
    checks = verify_run(run_dir, keys[1], executor_pub=real_pub)
    assert passed(checks), render(checks)
    other = tmp_path / "other.pub.json"
    write_json(other, public_key_dict(CryptoSigner.generate_ed25519()))
    failed = failed_checks(verify_run(run_dir, keys[1], executor_pub=other))
    assert set(failed) == {"executor key pinned"}, failed
