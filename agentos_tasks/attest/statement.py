"""The signed statement: an in-toto Statement v1 whose subjects are the run's evidence files
by sha256 and whose predicate is the run summary plus the gate results, wrapped in a DSSE
envelope (securesystemslib) by `sign_run`. Nothing here re-implements PAE or the layouts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope

from agentos_tasks.attest.keys import load_signer
from agentos_tasks.errors import EXIT_GATES, EXIT_STATE, AgentosError
from agentos_tasks.fsutil import (
    atomic_write,
    check_received_tree,
    is_regular,
    read_regular,
    sha256_regular,
)
from agentos_tasks.html_report import Signing
from agentos_tasks.layout import SUBJECT_GLOBS, UNSIGNED_DIRS, UNSIGNED_FILES
from agentos_tasks.model import Status
from agentos_tasks.report import write_report

PREDICATE_TYPE = "https://agentos-tasks.dev/attestation/run-report/v1"


PAYLOAD_TYPE = "application/vnd.in-toto+json"


ENVELOPE_RELPATH = "signature/envelope.dsse.json"


STATEMENT_RELPATH = "signature/statement.json"


GATE_STATUSES: tuple[str, ...] = tuple(status.value for status in Status)


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


def subject_paths(run_dir: Path) -> list[str]:
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


EXECUTOR_PUB_RELPATH = "attestations/executor.pub.json"  # attest.executor writes it


def recorded_executor_key(run_dir: Path) -> dict[str, Any] | None:
    """{keyid, sha256} of the executor key the run's attestations name, None without."""
    path = run_dir / EXECUTOR_PUB_RELPATH
    if not is_regular(path):
        return None
    raw = read_regular(path)
    try:
        keyid = json.loads(raw).get("keyid")
    except (ValueError, AttributeError):
        keyid = None
    return {"keyid": keyid if isinstance(keyid, str) else None,
            "sha256": sha256_regular(path)}


def _predicate(result: dict[str, Any], gates_doc: dict[str, Any],
               executor: dict[str, Any] | None) -> dict[str, Any]:
    """Run summary + gate results, copied from execution_result.json and gates.json, and
    the executor key the step attestations are signed with (its id pinned here: the
    report key vouches that this executor key, and no other, signed the steps)."""
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
        "executor": executor,
        "gates": gates,
        "gates_summary": {
            status: sum(1 for gate in gates if gate["status"] == status)
            for status in GATE_STATUSES
        },
    }


COMMIT_SUBJECT_PREFIX = "git:commits_applied/"


def _repository_identity(result: dict[str, Any]) -> dict[str, Any]:
    """The target by what any clone shares, not by where it lay: its root commit(s) on
    the base's first-parent history, the branch, and the range that landed. The absolute
    path is kept as where it ran, for humans."""
    from agentos_tasks.git import Git

    identity: dict[str, Any] = {"recorded_path": result.get("repo"),
                                "branch": result.get("branch"),
                                "range": [result.get("pre_apply_head"),
                                          result.get("post_apply_head")],
                                "root_commits": []}
    base, repo = result.get("base"), result.get("repo")
    if isinstance(base, str) and isinstance(repo, str):
        try:
            roots = Git(Path(repo)).out("rev-list", "--max-parents=0", base)
            identity["root_commits"] = sorted(roots.split())
        except (AgentosError, OSError):
            pass  # no repository here: the identity then rests on the commits
    return identity


def build_statement(run_dir: Path, *, signed_at: str | None = None) -> dict[str, Any]:
    """The in-toto Statement v1 for a run, as a JSON-ready dict.

    Built and validated with in-toto-attestation's `Statement`/`ResourceDescriptor`.
    The predicate is put back as plain JSON afterwards because protobuf's Struct stores
    every number as a double (a count of 3 would be signed as 3.0).
    """
    result = _read_json_object(run_dir / "execution_result.json", "execution_result.json")
    gates_doc = _read_json_object(run_dir / "reports/gates.json", "reports/gates.json")
    subjects = []
    for relpath in subject_paths(run_dir):
        path = run_dir / relpath
        if not is_regular(path):
            raise AgentosError(f"artifact {relpath} is not a regular file", where=str(path),
                               hint="evidence must be plain files inside the run directory",
                               code=EXIT_GATES)
        subjects.append(ResourceDescriptor(name=relpath,
                                           digest={"sha256": sha256_regular(path)}).pb)
    commits = result.get("commits_applied") or []
    for index, commit in enumerate(commits if isinstance(commits, list) else []):
        # the landed commits themselves: content-addressed, portable to any clone
        subjects.append(ResourceDescriptor(name=f"{COMMIT_SUBJECT_PREFIX}{index}",
                                           digest={"gitCommit": str(commit)}).pb)
    predicate = _predicate(result, gates_doc, recorded_executor_key(run_dir))
    predicate["signed_at"] = signed_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    predicate["repository"] = _repository_identity(result)
    predicate["unsigned_by_design"] = [f"{d}/" for d in UNSIGNED_DIRS] + list(UNSIGNED_FILES)
    statement = Statement(subjects, PREDICATE_TYPE, predicate)
    try:
        statement.validate()
    except ValueError as exc:
        raise AgentosError(f"cannot build the statement: {exc}", where=str(run_dir),
                           code=EXIT_GATES) from exc
    statement_dict: dict[str, Any] = json_format.MessageToDict(statement.pb)
    statement_dict["predicate"] = predicate
    return statement_dict


def sign_run(run_dir: Path, key_path: Path, *, executor_keyid: str | None = None) -> Path:
    """Sign a run whose gates all passed; returns `signature/envelope.dsse.json`.

    Refuses (exit code EXIT_GATES) without execution_result.json, the tape or a gates
    report, or when any gate FAILs; with `executor_keyid` (`doit sign`: this host's
    executor key), also when the run's attestations name another executor key.
    Regenerates reports/report.md first so the signed human report always matches the
    signed artifacts.
    """
    check_received_tree(run_dir)  # RefusedFile (EXIT_GATES) naming a FIFO, symlink, ...
    if (run_dir / ENVELOPE_RELPATH).exists():
        raise AgentosError(f"run {run_dir.name} is already signed ({ENVELOPE_RELPATH}); a "
                           "signed run is never rewritten", code=EXIT_STATE,
                           hint=f"check it with agentos verify {run_dir} --key <pub>")
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
    if executor_keyid is not None:
        recorded = recorded_executor_key(run_dir)
        if recorded is None or recorded["keyid"] != executor_keyid:
            named = recorded["keyid"] if recorded else None
            raise AgentosError(
                f"refusing to sign: the run's attestations name executor key {named}, this "
                f"host's executor key is {executor_keyid}", where=str(
                    run_dir / EXECUTOR_PUB_RELPATH), code=EXIT_GATES,
                hint="sign on the host (and with the $AGENTOS_EXECUTOR_KEY) that executed "
                     "the run; a replaced executor key means forged attestations")
    signer = load_signer(key_path)

    # the page names its signer (it cannot hold its own signature)
    signed_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_report(run_dir, signing=Signing(keyid=signer.public_key.keyid, signed_at=signed_at))
    statement = build_statement(run_dir, signed_at=signed_at)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)

    atomic_write(run_dir / STATEMENT_RELPATH,
                       (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode())
    envelope_path = run_dir / ENVELOPE_RELPATH
    atomic_write(envelope_path,
                       (json.dumps(envelope.to_dict(), indent=2) + "\n").encode())
    from agentos_tasks.attest.summaries import write_summaries

    write_summaries(run_dir, signer, statement, envelope_path)
    return envelope_path
