"""Offline verification of a signed run: every finding is a Check (what, whether it held,
why): envelope, signature, statement copy, subject digests, unlisted and required
subjects, the tape chain, the gates predicate. A run directory holding anything but
directories and regular files is refused as a whole (`plain_files_check`)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import STATEMENT_TYPE_URI, Statement
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope

from agentos_tasks.attest.keys import load_public_key
from agentos_tasks.attest.statement import (
    COMMIT_SUBJECT_PREFIX,
    ENVELOPE_RELPATH,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_RELPATH,
    subject_paths,
)
from agentos_tasks.fsutil import (
    RefusedFile,
    check_received_tree,
    read_regular,
    sha256_regular,
)
from agentos_tasks.layout import REQUIRED_SUBJECTS
from agentos_tasks.model import Status
from agentos_tasks.tape import verify_chain
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from securesystemslib.signer import Key  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Check:
    """One verification finding: what was checked, whether it held, and why."""

    name: str
    ok: bool
    detail: str


def _safe_relpath(name: object) -> str | None:
    """A subject name usable as a run-relative path, or None (absolute, `..`, signature/)."""
    if not isinstance(name, str) or not name or "\\" in name:
        return None
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or pure.parts[0] == "signature":
        return None
    return pure.as_posix()


def _check_subject_digests(run_dir: Path, subjects: list[Any]) -> tuple[Check, set[str]]:
    problems: list[str] = []
    names: set[str] = set()
    for subject in subjects:
        subject_dict = subject if isinstance(subject, dict) else {}
        relpath = _safe_relpath(subject_dict.get("name"))
        digest = subject_dict.get("digest", {})
        expected = digest.get("sha256") if isinstance(digest, dict) else None
        if relpath is None:
            problems.append(f"unsafe subject name {subject_dict.get('name')!r}")
            continue
        if relpath in names:
            problems.append(f"{relpath}: listed twice")
        names.add(relpath)
        path = run_dir / relpath
        if not isinstance(expected, str):
            problems.append(f"{relpath}: no sha256 digest")
            continue
        try:
            if sha256_regular(path) != expected:
                problems.append(f"{relpath}: sha256 differs from the signed digest")
        except FileNotFoundError:
            problems.append(f"{relpath}: missing")
        except RefusedFile:
            problems.append(f"{relpath}: not a regular file")
        except OSError as exc:
            problems.append(f"{relpath}: unreadable ({exc.strerror})")
    ok = not problems
    detail = (f"{len(names)} subject file(s) present with the signed sha256" if ok
              else "; ".join(problems))
    return Check("subjects: digests", ok, detail), names


def _commit_subject(subject: Any) -> bool:
    return isinstance(subject, dict) and str(subject.get("name", "")).startswith(
        COMMIT_SUBJECT_PREFIX) and isinstance(subject.get("digest"), dict) \
        and "gitCommit" in subject["digest"]


def _check_commit_subjects(run_dir: Path, commits: list[dict[str, Any]],
                           predicate: Any) -> Check:
    """The signed gitCommit subjects, in order, are the run's landed commits: the same
    list the signed predicate and the signed execution_result.json name. (That the
    target's branch still holds them unbroken is gates R2 and EX-D's to show.)"""
    name = "subjects: landed commits"
    signed = [str(c["digest"]["gitCommit"]) for c in commits]
    names = [str(c.get("name")) for c in commits]
    if names != [f"{COMMIT_SUBJECT_PREFIX}{i}" for i in range(len(commits))]:
        return Check(name, False, "gitCommit subjects are not numbered 0..n-1 in order")
    claimed = predicate.get("commits_applied") if isinstance(predicate, dict) else None
    try:
        recorded = json.loads(read_regular(run_dir / "execution_result.json")).get(
            "commits_applied")
    except (OSError, ValueError, AttributeError, RefusedFile):
        recorded = None
    if signed != (claimed or []) or signed != (recorded or []):
        return Check(name, False, f"gitCommit subjects {[c[:12] for c in signed]} differ "
                     "from the commits_applied the predicate or execution_result.json name")
    return Check(name, True, f"{len(signed)} landed commit(s) signed by their git ids")


def _check_unlisted(run_dir: Path, names: set[str]) -> Check:
    extra = [relpath for relpath in subject_paths(run_dir) if relpath not in names]
    if extra:
        return Check("subjects: nothing added", False,
                     "not covered by the signature (added after signing?): " +
                     ", ".join(extra))
    return Check("subjects: nothing added", True,
                 "no patch, manifest or other evidence file outside the signed subjects")


def _check_required(names: set[str]) -> Check:
    missing = [relpath for relpath in REQUIRED_SUBJECTS if relpath not in names]
    if missing:
        return Check("subjects: required", False,
                     "statement does not cover: " + ", ".join(missing))
    return Check("subjects: required", True,
                 "execution result, tape and gates report are signed subjects")


def check_tape_chain(run_dir: Path) -> Check:
    """Re-verify the tape's hash chain and its head with the tape module's own verifier.

    The subject digests already pin the tape's bytes; this also proves the signed tape
    was internally consistent (contiguous seq, every prev, head == tape_head.json).
    """
    report = verify_chain(run_dir)
    return Check("tape chain", report.ok, report.reason)


def _check_gates_predicate(predicate: dict[str, Any]) -> Check:
    gates = predicate.get("gates")
    if not isinstance(gates, list) or not gates:
        return Check("gates", False, "signed predicate lists no gates")
    failing = [
        str(gate.get("id")) if isinstance(gate, dict) else repr(gate)
        for gate in gates
        if (gate.get("status") if isinstance(gate, dict) else None) not in (
            Status.PASS, Status.NOT_APPLICABLE)
    ]
    summary = predicate.get("gates_summary")
    summary_fail = summary.get(Status.FAIL) if isinstance(summary, dict) else None
    if failing or summary_fail != 0:
        return Check("gates", False,
                     f"signed gate results not all PASS/NOT_APPLICABLE: {', '.join(failing)}"
                     f" (summary FAIL={summary_fail})")
    passed = sum(1 for gate in gates if gate.get("status") == Status.PASS)
    return Check("gates", True, f"{passed} PASS, {len(gates) - passed} NOT_APPLICABLE, 0 FAIL")


def _parse_envelope(envelope_path: Path) -> tuple[Envelope | None, Check]:
    name = "envelope"
    try:
        raw = read_regular(envelope_path)
    except FileNotFoundError:
        return None, Check(name, False, f"{ENVELOPE_RELPATH} is missing (run not signed?)")
    except (OSError, RefusedFile) as exc:
        return None, Check(name, False, f"{ENVELOPE_RELPATH} is unreadable: "
                           f"{exc.message if isinstance(exc, RefusedFile) else exc.strerror}")
    try:
        envelope_dict = json.loads(raw)
        if not isinstance(envelope_dict, dict):
            raise TypeError("not a JSON object")
        # from_dict rewrites the signature dicts in place; keep the caller's data intact.
        envelope = Envelope.from_dict(copy.deepcopy(envelope_dict))
    except (OSError, ValueError, KeyError, TypeError, sslib_exceptions.Error) as exc:
        return None, Check(name, False,
                           f"{ENVELOPE_RELPATH} is not a DSSE envelope: "
                           f"{type(exc).__name__}: {exc}")
    return envelope, Check(name, True, f"{ENVELOPE_RELPATH} parses as a DSSE envelope")


def _check_signature(envelope: Envelope, key: Key) -> Check:
    try:
        envelope.verify([key], 1)
    except (sslib_exceptions.VerificationError, ValueError) as exc:
        signed_by = ", ".join(envelope.signatures) or "nobody"
        return Check("signature", False,
                     f"no valid signature by key {key.keyid} ({exc}); signed by: {signed_by}")
    return Check("signature", True, f"valid {key.scheme} signature by key {key.keyid}")


def _parse_statement(payload: bytes) -> tuple[dict[str, Any] | None, Check]:
    name = "statement"
    try:
        statement_dict = json.loads(payload)
        if not isinstance(statement_dict, dict):
            raise TypeError("payload is not a JSON object")
        proto = json_format.ParseDict(statement_dict, statement_pb2.Statement())
        Statement.copy_from_pb(proto).validate()
    except (ValueError, TypeError, json_format.ParseError) as exc:
        return None, Check(name, False, f"payload is not an in-toto Statement v1: {exc}")
    if statement_dict.get("predicateType") != PREDICATE_TYPE:
        return None, Check(name, False,
                           f"predicateType {statement_dict.get('predicateType')!r}, "
                           f"expected {PREDICATE_TYPE}")
    if not isinstance(statement_dict.get("predicate"), dict):
        return None, Check(name, False, "predicate is not an object")
    return statement_dict, Check(
        name, True,
        f"{STATEMENT_TYPE_URI} with predicateType {PREDICATE_TYPE}, "
        f"{len(statement_dict.get('subject', []))} subject(s)")


def _check_statement_copy(run_dir: Path, statement: dict[str, Any]) -> Check:
    """signature/statement.json is what humans read: it must be the signed payload."""
    name = "statement copy"
    copy_path = run_dir / STATEMENT_RELPATH
    try:
        on_disk = json.loads(read_regular(copy_path))
    except FileNotFoundError:
        return Check(name, True, f"{STATEMENT_RELPATH} absent (optional, for humans)")
    except (OSError, ValueError, RefusedFile) as exc:
        return Check(name, False, f"{STATEMENT_RELPATH} unreadable: {exc}")
    if on_disk != statement:
        return Check(name, False, f"{STATEMENT_RELPATH} differs from the signed payload")
    return Check(name, True, f"{STATEMENT_RELPATH} equals the signed payload")


def verify_signature(run_dir: Path, pub_path: Path) -> list[Check]:
    """Re-check a signed run offline; one Check per property, tampering gives ok=False.

    Raises AgentosError only when the public key itself is unusable; everything about
    the run directory (missing envelope, bad signature, changed or added files) is a
    failing Check, so the caller can print all findings at once.
    """
    key = load_public_key(pub_path)
    refused = plain_files_check(run_dir)
    if refused is not None:
        return [refused]
    checks: list[Check] = []
    envelope, envelope_check = _parse_envelope(run_dir / ENVELOPE_RELPATH)
    checks.append(envelope_check)
    if envelope is None:
        return checks
    checks.append(_check_signature(envelope, key))
    checks.append(Check(
        "payload type", envelope.payload_type == PAYLOAD_TYPE,
        f"payloadType {envelope.payload_type!r}" +
        ("" if envelope.payload_type == PAYLOAD_TYPE else f", expected {PAYLOAD_TYPE!r}")))
    statement, statement_check = _parse_statement(envelope.payload)
    checks.append(statement_check)
    if statement is None:
        return checks
    subjects = statement.get("subject", [])
    commits = [s for s in subjects if _commit_subject(s)]
    digest_check, names = _check_subject_digests(
        run_dir, [s for s in subjects if not _commit_subject(s)])
    checks += [
        digest_check,
        _check_commit_subjects(run_dir, commits, statement["predicate"]),
        _check_required(names),
        _check_unlisted(run_dir, names),
        check_tape_chain(run_dir),
        _check_gates_predicate(statement["predicate"]),
        _check_statement_copy(run_dir, statement),
    ]
    return checks


PLAIN_FILES_CHECK = "run directory: plain files only"


def plain_files_check(run_dir: Path) -> Check | None:
    """A failing Check naming every entry of `run_dir` that is neither a directory nor a
    regular file (FIFO, socket, device, symlink; the worktree aside), None when there is
    none. Callers then read nothing else: a FIFO would block, a symlink could point at
    /etc/shadow or at a FIFO elsewhere."""
    try:
        check_received_tree(run_dir)
    except RefusedFile as exc:
        return Check(PLAIN_FILES_CHECK, False, exc.message)
    return None


def verification_passed(checks: list[Check]) -> bool:
    """True when there is at least one check and every check holds."""
    return bool(checks) and all(check.ok for check in checks)


def render_checks(checks: list[Check]) -> str:
    """Plain text for `agentos verify`: one `ok|FAIL  name: detail` line per check and a
    verdict line, so a CI log shows every finding, not just the first. Names and details
    are escaped for the terminal (termsafe.escape)."""
    lines = [f"{'ok  ' if check.ok else 'FAIL'}  {escape(check.name)}: {escape(check.detail)}"
             for check in checks]
    failed = sum(1 for check in checks if not check.ok)
    lines.append("verified: every check passed" if verification_passed(checks)
                 else f"NOT verified: {failed} check(s) failed")
    return "\n".join(lines)
