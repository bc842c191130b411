"""DSSE signing of a run over an in-toto Statement v1, and offline verification.

The signed statement is the end product of a run: its subjects are the run's evidence
files (patches, tape, tape head, checksums, step manifests, execution result, gates
report, human report, recorded request/policy, tool packs) by sha256, and its predicate
is the run summary plus the gate results. A third party holding only the run directory
and the public key can re-check every digest, the signature, the tape chain and the
gates (`verify_signature`).

Formats (what `agentos keygen` writes, what `agentos verify` reads):
- private key `agentos.key`: PEM PKCS#8, unencrypted, mode 0600 (securesystemslib
  `CryptoSigner.private_bytes`; `openssl genpkey -algorithm ed25519` keys load too).
- public key `agentos.pub`: securesystemslib key JSON
  `{"keyid", "keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": <hex>}}`,
  loadable with `SSlibKey.from_dict`. A PEM SubjectPublicKeyInfo public key is accepted
  as well, for keys made with openssl.
- envelope `signature/envelope.dsse.json`: DSSE JSON as securesystemslib's
  `dsse.Envelope.to_dict()` writes it (payloadType, base64 payload, signatures with
  keyid and base64 sig); `signature/statement.json` is the decoded payload for humans.

PAE, envelope and statement layout all come from securesystemslib and
in-toto-attestation; nothing here re-implements them.

A run directory to sign or verify is read only through fsutil's bounded reader (no
symlink followed, a FIFO never waited on) and is refused as a whole when it holds
anything but directories and regular files (`plain_files_check`, `sign_run`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import STATEMENT_TYPE_URI, Statement
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, Key, SSlibKey  # type: ignore[attr-defined]

from agentos_tasks.errors import EXIT_GATES, EXIT_USAGE, AgentosError
from agentos_tasks.fsutil import (
    RefusedFile,
    atomic_write,
    check_received_tree,
    fsync_dir,
    is_regular,
    read_regular,
    sha256_regular,
)
from agentos_tasks.layout import REQUIRED_SUBJECTS, SUBJECT_GLOBS
from agentos_tasks.model import Status
from agentos_tasks.report import write_report
from agentos_tasks.tape import verify_chain
from agentos_tasks.termsafe import escape

PREDICATE_TYPE = "https://agentos-tasks.dev/attestation/run-report/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
ENVELOPE_RELPATH = "signature/envelope.dsse.json"
STATEMENT_RELPATH = "signature/statement.json"

GATE_STATUSES: tuple[str, ...] = tuple(status.value for status in Status)
_KEY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Check:
    """One verification finding: what was checked, whether it held, and why."""

    name: str
    ok: bool
    detail: str


# --------------------------------------------------------------------------- keys


def _write_key_file(path: Path, data: bytes, *, mode: int) -> None:
    """Atomic write whose temp file is 0600 from its first byte (mkstemp), then `mode`.

    fsutil.atomic_write creates its temp file with the umask's mode, which would leave a
    private key world-readable for a moment.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def keygen(out_dir: Path, *, name: str = "agentos", overwrite: bool = False) -> tuple[Path, Path]:
    """Create an ed25519 key pair `<name>.key` (PEM PKCS#8, 0600) and `<name>.pub` (JSON).

    Refuses to replace existing files: silently overwriting a signing key would orphan
    every signature made with it.
    """
    if not _KEY_NAME.fullmatch(name):
        raise AgentosError(f"invalid key name {name!r}", hint="use letters, digits, _ . -")
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub"
    existing = [path for path in (key_path, pub_path) if path.exists() or path.is_symlink()]
    if existing and not overwrite:
        raise AgentosError(
            f"refusing to overwrite existing key file(s): {', '.join(map(str, existing))}",
            where=str(existing[0]),
            hint="move them away, pick another --out directory, or pass --force",
            code=EXIT_USAGE,
        )
    signer = CryptoSigner.generate_ed25519()
    public_json = json.dumps(
        {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}, indent=2,
        sort_keys=True,
    )
    _write_key_file(key_path, signer.private_bytes, mode=0o600)
    _write_key_file(pub_path, (public_json + "\n").encode("ascii"), mode=0o644)
    return key_path, pub_path


def load_public_key(pub_path: Path) -> Key:
    """Load a public key written by `keygen` (securesystemslib JSON) or a PEM public key."""
    try:
        raw = pub_path.read_bytes()
    except OSError as exc:
        raise AgentosError(f"cannot read public key: {exc.strerror}", where=str(pub_path),
                           hint="pass the agentos.pub written by `agentos keygen`") from exc
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return SSlibKey.from_crypto(load_pem_public_key(raw))
        key_dict = json.loads(raw)
        if not isinstance(key_dict, dict):
            raise TypeError("not a JSON object")
        keyid = key_dict.pop("keyid")
        key = Key.from_dict(keyid, key_dict)
        if key.keytype == "ed25519":
            # from_dict does not look at the key bytes; a corrupt key must not pass as
            # "signature invalid" later, it is an unusable input.
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
        return key
    except (ValueError, KeyError, TypeError, sslib_exceptions.Error) as exc:
        raise AgentosError(
            f"not a usable public key ({type(exc).__name__}: {exc})",
            where=str(pub_path),
            hint="expected the securesystemslib key JSON written by `agentos keygen` "
                 "or a PEM public key",
        ) from exc


def load_signer(key_path: Path) -> CryptoSigner:
    """Load a PEM PKCS#8 private key as a securesystemslib signer."""
    try:
        raw = key_path.read_bytes()
    except OSError as exc:
        raise AgentosError(f"cannot read signing key: {exc.strerror}", where=str(key_path),
                           hint="create one with `agentos keygen`") from exc
    try:
        return CryptoSigner(load_pem_private_key(raw, password=None))
    except (ValueError, TypeError, sslib_exceptions.Error) as exc:
        raise AgentosError(
            f"not a usable private key ({type(exc).__name__}: {exc})",
            where=str(key_path),
            hint="expected an unencrypted PEM PKCS#8 key such as `agentos keygen` writes",
        ) from exc


# --------------------------------------------------------------------------- statement


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """Parse a JSON object artifact or explain, as a signing refusal, why it cannot be."""
    try:
        data = json.loads(read_regular(path))
    except FileNotFoundError:
        raise AgentosError(f"{what} is missing", where=str(path),
                           hint="run `doit run` and `doit gates` for this request first",
                           code=EXIT_GATES) from None
    except (OSError, ValueError) as exc:
        raise AgentosError(f"{what} is not valid JSON: {exc}", where=str(path),
                           hint="re-run `doit gates`", code=EXIT_GATES) from exc
    if not isinstance(data, dict):
        raise AgentosError(f"{what} is not a JSON object", where=str(path),
                           hint="re-run `doit gates`", code=EXIT_GATES)
    return data


def _subject_paths(run_dir: Path) -> list[str]:
    """Run-relative POSIX paths of every existing file matching SUBJECT_GLOBS, sorted."""
    found: set[str] = set()
    for pattern in SUBJECT_GLOBS:
        for path in run_dir.glob(pattern):
            if path.is_file() or path.is_symlink():
                found.add(path.relative_to(run_dir).as_posix())
    return sorted(found)


def _gate_summary(gates: list[dict[str, Any]]) -> dict[str, int]:
    summary = dict.fromkeys(GATE_STATUSES, 0)
    for gate in gates:
        summary[gate["status"]] += 1
    return summary


def _check_gates_report(gates_doc: dict[str, Any], gates_path: Path) -> list[dict[str, Any]]:
    """The gate list of reports/gates.json, refusing anything a signature must not cover."""
    gates = gates_doc.get("gates")
    if not isinstance(gates, list) or not gates:
        raise AgentosError("reports/gates.json lists no gates; nothing was checked",
                           where=str(gates_path), hint="run `doit gates` first",
                           code=EXIT_GATES)
    for index, gate in enumerate(gates):
        if (not isinstance(gate, dict) or not isinstance(gate.get("id"), str)
                or gate.get("status") not in GATE_STATUSES):
            raise AgentosError(
                f"gate #{index} has no id or an unknown status "
                f"(expected one of {', '.join(GATE_STATUSES)})",
                where=str(gates_path), hint="re-run `doit gates`", code=EXIT_GATES)
    failing = [gate for gate in gates if gate["status"] == Status.FAIL]
    if failing:
        names = "; ".join(f"{gate['id']}: {gate.get('reason', '')}" for gate in failing)
        raise AgentosError(
            f"refusing to sign: {len(failing)} gate(s) FAIL: {names}",
            where=str(gates_path),
            hint="fix the run (or the tampered artifact) and re-run `doit gates`",
            code=EXIT_GATES,
        )
    if not any(gate["status"] == Status.PASS for gate in gates):
        raise AgentosError("refusing to sign: no gate PASSed (all NOT_APPLICABLE)",
                           where=str(gates_path), hint="re-run `doit gates`",
                           code=EXIT_GATES)
    recorded = gates_doc.get("summary")
    recomputed = _gate_summary(gates)
    if isinstance(recorded, dict) and {
        status: recorded.get(status, 0) for status in GATE_STATUSES
    } != recomputed:
        raise AgentosError(
            f"reports/gates.json summary {recorded} disagrees with its gate list "
            f"{recomputed}", where=str(gates_path), hint="re-run `doit gates`",
            code=EXIT_GATES)
    return gates


def _check_gate_evidence_fresh(run_dir: Path, gates: list[dict[str, Any]],
                               gates_path: Path) -> None:
    """Refuse when a run file a gate looked at changed since: its PASS would be stale.

    Only evidence that names an existing file inside the run directory is compared; other
    evidence (repository paths, git refs) is the gates' business.
    """
    root = run_dir.resolve()
    for gate in gates:
        evidence = gate.get("evidence")
        for item in evidence if isinstance(evidence, list) else []:
            if not isinstance(item, dict):
                continue
            rel, recorded = item.get("path"), item.get("sha256")
            if not isinstance(rel, str) or not isinstance(recorded, str):
                continue
            candidate = (run_dir / rel).resolve()
            if not candidate.is_relative_to(root) or not is_regular(candidate):
                continue
            if sha256_regular(candidate) != recorded:
                raise AgentosError(
                    f"reports/gates.json is stale: {rel} changed after gate {gate['id']} "
                    "checked it",
                    where=str(gates_path), hint="re-run `doit gates`", code=EXIT_GATES)


def _predicate(result: dict[str, Any], gates_doc: dict[str, Any]) -> dict[str, Any]:
    """Run summary + gate results, copied from execution_result.json and gates.json."""
    gates = [
        {"id": gate["id"], "status": gate["status"], "reason": gate.get("reason", "")}
        for gate in gates_doc.get("gates", [])
        if isinstance(gate, dict) and "id" in gate and "status" in gate
    ]
    recorded_policy = result.get("policy")
    policy: dict[str, Any] = recorded_policy if isinstance(recorded_policy, dict) else {}
    return {
        "run": result.get("run"),
        "status": result.get("status"),
        "request": result.get("request"),
        "repo": result.get("repo"),
        "branch": result.get("branch"),
        "base": result.get("base"),
        "pre_apply_head": result.get("pre_apply_head"),
        "post_apply_head": result.get("post_apply_head"),
        "commits_applied": result.get("commits_applied", []),
        "policy": {key: policy.get(key) for key in ("id", "path", "sha256", "isolation")},
        "sandbox": result.get("sandbox"),
        "gates": gates,
        "gates_summary": {
            status: sum(1 for gate in gates if gate["status"] == status)
            for status in GATE_STATUSES
        },
    }


def build_statement(run_dir: Path) -> dict[str, Any]:
    """The in-toto Statement v1 for a run, as a JSON-ready dict.

    Built and validated with in-toto-attestation's `Statement`/`ResourceDescriptor`.
    The predicate is put back as plain JSON afterwards because protobuf's Struct stores
    every number as a double (a count of 3 would be signed as 3.0).
    """
    result = _read_json_object(run_dir / "execution_result.json", "execution_result.json")
    gates_doc = _read_json_object(run_dir / "reports/gates.json", "reports/gates.json")
    subjects = []
    for relpath in _subject_paths(run_dir):
        path = run_dir / relpath
        if not is_regular(path):
            raise AgentosError(f"artifact {relpath} is not a regular file", where=str(path),
                               hint="evidence must be plain files inside the run directory",
                               code=EXIT_GATES)
        subjects.append(ResourceDescriptor(name=relpath,
                                           digest={"sha256": sha256_regular(path)}).pb)
    predicate = _predicate(result, gates_doc)
    statement = Statement(subjects, PREDICATE_TYPE, predicate)
    try:
        statement.validate()
    except ValueError as exc:
        raise AgentosError(f"cannot build the statement: {exc}", where=str(run_dir),
                           code=EXIT_GATES) from exc
    statement_dict: dict[str, Any] = json_format.MessageToDict(statement.pb)
    statement_dict["predicate"] = predicate
    return statement_dict


def sign_run(run_dir: Path, key_path: Path) -> Path:
    """Sign a run whose gates all passed; returns `signature/envelope.dsse.json`.

    Refuses (exit code EXIT_GATES) without execution_result.json, the tape or a gates
    report, or when any gate FAILs. Regenerates reports/report.md first so the signed
    human report always matches the signed artifacts.
    """
    check_received_tree(run_dir)  # RefusedFile (EXIT_GATES) naming a FIFO, symlink, ...
    for relpath in ("execution_result.json", "audit/run_tape.jsonl"):
        if not is_regular(run_dir / relpath):
            raise AgentosError(f"refusing to sign: {relpath} is missing",
                               where=str(run_dir / relpath),
                               hint="run `doit run` and `doit gates` first", code=EXIT_GATES)
    gates_path = run_dir / "reports/gates.json"
    gates_doc = _read_json_object(gates_path, "reports/gates.json")
    gates = _check_gates_report(gates_doc, gates_path)
    _check_gate_evidence_fresh(run_dir, gates, gates_path)
    result = _read_json_object(run_dir / "execution_result.json", "execution_result.json")
    if gates_doc.get("run") is not None and gates_doc.get("run") != result.get("run"):
        raise AgentosError(
            f"reports/gates.json is for run {gates_doc.get('run')!r}, "
            f"execution_result.json for {result.get('run')!r}",
            where=str(gates_path), hint="re-run `doit gates`", code=EXIT_GATES)
    signer = load_signer(key_path)

    write_report(run_dir)
    statement = build_statement(run_dir)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)

    atomic_write(run_dir / STATEMENT_RELPATH,
                       (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode())
    envelope_path = run_dir / ENVELOPE_RELPATH
    atomic_write(envelope_path,
                       (json.dumps(envelope.to_dict(), indent=2) + "\n").encode())
    return envelope_path


# --------------------------------------------------------------------------- verify


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


def _check_unlisted(run_dir: Path, names: set[str]) -> Check:
    extra = [relpath for relpath in _subject_paths(run_dir) if relpath not in names]
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
    digest_check, names = _check_subject_digests(run_dir, subjects)
    checks += [
        digest_check,
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

