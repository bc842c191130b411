"""The run's verdict in the field's registered predicate types, beside our own report.

`doit sign` writes, with the same key and over the same subjects as the run report
(signature/envelope.dsse.json, predicate type run-report/v1, which carries what no
registered type has: the run summary and each gate's reason):

- signature/test-result.dsse.json: in-toto test-result v0.1, one test per gate
  (passedTests / failedTests; NOT_APPLICABLE gates are neither, so they are listed in
  the configuration descriptor's annotations, never as passed or skipped);
- signature/vsa.dsse.json: SLSA Verification Summary v1: agentos as the verifier, the
  recorded policy as the policy, the run report envelope as the input attestation,
  verificationResult PASSED (sign refuses any FAIL).

`agentos verify` checks both: signature by the same key, subjects equal to the run
report's, and results that agree with its gates predicate.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import TYPE_CHECKING, Any

from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope

from agentos_tasks import __version__
from agentos_tasks.fsutil import RefusedFile, atomic_write, read_regular, sha256_regular

if TYPE_CHECKING:
    from pathlib import Path

    from securesystemslib.signer import CryptoSigner, Key  # type: ignore[attr-defined]

TEST_RESULT_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
VSA_TYPE = "https://slsa.dev/verification_summary/v1"
TEST_RESULT_RELPATH = "signature/test-result.dsse.json"
VSA_RELPATH = "signature/vsa.dsse.json"
VERIFIER_ID = "https://agentos-tasks.dev/verifier/agentos-gates"


def _gates(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in statement["predicate"].get("gates", []) if isinstance(g, dict)]


def test_result_predicate(statement: dict[str, Any]) -> dict[str, Any]:
    gates = _gates(statement)
    failed = [g["id"] for g in gates if g["status"] == "FAIL"]
    na = [g["id"] for g in gates if g["status"] == "NOT_APPLICABLE"]
    return {"result": "FAILED" if failed else "PASSED",
            "configuration": [{"name": "agentos-tasks gates", "uri": VERIFIER_ID,
                               "annotations": {"agentos_version": __version__,
                                               "not_applicable": na}}],
            "passedTests": [g["id"] for g in gates if g["status"] == "PASS"],
            "warnedTests": [], "failedTests": failed}


def resource_uri(predicate: dict[str, Any]) -> str:
    """What was verified, portable to any clone: the repository by its root commit, the
    branch and the commit the run landed up to."""
    repo = predicate.get("repository") or {}
    roots = repo.get("root_commits") or ["unknown-root"]
    return f"git+agentos:{roots[0]}/{repo.get('branch') or predicate.get('branch')}" \
           f"@{predicate.get('post_apply_head')}"


def vsa_predicate(statement: dict[str, Any], report_envelope: Path) -> dict[str, Any]:
    predicate = statement["predicate"]
    policy = predicate.get("policy") or {}
    failed = any(g["status"] == "FAIL" for g in _gates(statement))
    return {"verifier": {"id": VERIFIER_ID, "version": {"agentos-tasks": __version__}},
            "timeVerified": predicate.get("signed_at"),
            "resourceUri": resource_uri(predicate),
            "policy": {"uri": f"agentos-policy:{policy.get('id')}",
                       "digest": {"sha256": str(policy.get("sha256"))}},
            "inputAttestations": [{"uri": "signature/envelope.dsse.json",
                                   "digest": {"sha256": sha256_regular(report_envelope)}}],
            "verificationResult": "FAILED" if failed else "PASSED",
            "verifiedLevels": ["AGENTOS_GATES_ALL_PASS"] if not failed else []}


def _sign(signer: CryptoSigner, subjects: list[Any], predicate_type: str,
          predicate: dict[str, Any]) -> bytes:
    """The envelope file's bytes: attest.executor.sign_statement (validated in-toto
    Statement v1, predicate as plain JSON), as the step links are signed."""
    from agentos_tasks.attest.executor import sign_statement

    envelope = sign_statement(signer, subjects, predicate_type, predicate)
    return (json.dumps(envelope, indent=2) + "\n").encode()


def write_summaries(run_dir: Path, signer: CryptoSigner, statement: dict[str, Any],
                    report_envelope: Path) -> None:
    subjects = statement["subject"]
    atomic_write(run_dir / TEST_RESULT_RELPATH,
                 _sign(signer, subjects, TEST_RESULT_TYPE, test_result_predicate(statement)))
    atomic_write(run_dir / VSA_RELPATH,
                 _sign(signer, subjects, VSA_TYPE, vsa_predicate(statement, report_envelope)))


def check_summaries(run_dir: Path, key: Key,
                    statement: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Each summary envelope: signed by the report's key, over the report's subjects,
    with the predicate type and the verdict the signed report's gates imply."""
    envelope_path = run_dir / "signature/envelope.dsse.json"
    wanted = {TEST_RESULT_RELPATH: (TEST_RESULT_TYPE, test_result_predicate(statement)),
              VSA_RELPATH: (VSA_TYPE, vsa_predicate(statement, envelope_path))}
    checks: list[tuple[str, bool, str]] = []
    for relpath, (ptype, expected) in wanted.items():
        name = f"summary {relpath}"
        try:
            raw = json.loads(read_regular(run_dir / relpath))
            envelope = Envelope.from_dict(copy.deepcopy(raw))
            envelope.verify([key], 1)
            inner = json.loads(base64.b64decode(raw["payload"]))
        except FileNotFoundError:
            checks.append((name, False, "missing"))
            continue
        except (OSError, ValueError, KeyError, TypeError, RefusedFile,
                sslib_exceptions.Error) as exc:
            checks.append((name, False, f"does not verify: {type(exc).__name__}: {exc}"))
            continue
        if inner.get("predicateType") != ptype or inner.get("subject") != statement["subject"]:
            checks.append((name, False, "predicate type or subjects differ from the "
                                             "run report's"))
        elif inner.get("predicate") != expected:
            checks.append((name, False, "its verdict differs from the signed run "
                                             "report's gates"))
        else:
            checks.append((name, True, f"{ptype}, signed by {key.keyid[:12]}, same "
                                            "subjects, same verdict"))
    return checks
