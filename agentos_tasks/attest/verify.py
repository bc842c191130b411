"""`agentos verify RUN --key PUB`: re-check a signed run offline, signature and gates.

A third party holding the run directory and the public key gets one `Check` per
property: the DSSE signature and every signed digest (`sign.verify_signature`), that
every evidence file is bound by the signature directly or through the signed
checksums.json, and every gate recomputed here from the artifacts. Gates that need the
target repository read it when it is present; when it is absent they FAIL and say so,
because what they prove (the branch holds exactly the patches) cannot be shown without it.
A tampered file, a tape rewritten with a consistent chain and head, an added or dropped
commit: each turns at least one Check to FAIL.

The run directory comes from someone else, so it is read only through fsutil's bounded
reader, and first of all checked to hold nothing but directories and regular files: a
FIFO, socket, device or symlink anywhere in it (the worktree aside) is one failing Check
naming the entries, and nothing else is read (a FIFO would block verify for ever, a
symlink could point at /etc/shadow). `attest.checks.render_checks` escapes every name and
detail for the terminal (termsafe.escape): file names and gate reasons come from that
directory too.
"""

from __future__ import annotations

import base64
import json
import traceback
from pathlib import Path
from typing import Any

from agentos_tasks.attest.checks import (
    Check,
    plain_files_check,
    verify_signature,
)
from agentos_tasks.attest.keys import load_public_key
from agentos_tasks.attest.statement import (
    ENVELOPE_RELPATH,
    EXECUTOR_PUB_RELPATH,
    recorded_executor_key,
)
from agentos_tasks.attest.summaries import check_summaries
from agentos_tasks.errors import AgentosError
from agentos_tasks.fsutil import is_regular, read_regular
from agentos_tasks.gates.common import FAIL, Gate
from agentos_tasks.gates.context import GateContext, Missing
from agentos_tasks.gates.runner import REGISTRY
from agentos_tasks.layout import UNSIGNED_DIRS, UNSIGNED_FILES


def verify_run(run_dir: Path, pub_path: Path, *,
               executor_pub: Path | None = None, expect_run: str | None = None,
               expect_commits: tuple[str, ...] = ()) -> list[Check]:
    """Every finding about a signed run: signature checks, coverage, the executor key the
    statement pins, what the verifier expects (--expect-run/--expect-commit), then one per
    gate (gate AT: the step attestations under that key).

    Raises AgentosError only when a public key is unusable (from sign.load_public_key).
    A run directory holding anything but directories and regular files gives that one
    failing Check and nothing is read.
    """
    load_public_key(pub_path)  # an unusable key is an error before anything else
    expected = load_public_key(executor_pub).keyid if executor_pub is not None else None
    refused = plain_files_check(run_dir)
    if refused is not None:
        return [refused]
    checks = list(verify_signature(run_dir, pub_path))
    statement = signed_statement(run_dir)
    if statement is not None:
        checks += [Check(*found) for found in
                   check_summaries(run_dir, load_public_key(pub_path), statement)]
    checks.append(check_coverage(run_dir))
    checks.append(check_executor_pin(run_dir, expected))
    checks += expectation_checks(run_identity(run_dir), expect_run, list(expect_commits))
    checks += [gate_check(gate, run_dir) for gate in REGISTRY]
    return checks



# ------------------------------------------------------------------ coverage


def _signed(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(envelope, statement) of the run report as signature/envelope.dsse.json carries
    them, unverified (verify_signature checks the signature and says why one does not
    parse); None when it does not parse as an envelope over a statement with a predicate
    object and a subject list."""
    try:
        envelope = json.loads(read_regular(run_dir / ENVELOPE_RELPATH))
        statement = json.loads(base64.b64decode(envelope["payload"]))
    except (OSError, ValueError, KeyError, TypeError, AgentosError):
        return None
    if not isinstance(envelope, dict) or not isinstance(statement, dict) or not isinstance(
            statement.get("predicate"), dict) or not isinstance(statement.get("subject"), list):
        return None
    return envelope, statement


def signed_statement(run_dir: Path) -> dict[str, Any] | None:
    """The run report's statement as the envelope carries it (None when it does not
    parse; verify_signature says why)."""
    signed = _signed(run_dir)
    return signed[1] if signed else None


def signed_subjects(run_dir: Path) -> dict[str, str]:
    """name -> sha256 of the statement's file subjects ({} when the envelope does not
    parse; verify_signature reports that, and whether the signature over it holds)."""
    statement = signed_statement(run_dir)
    subjects = statement["subject"] if statement else []
    return {str(s["name"]): str(s["digest"]["sha256"]) for s in subjects
            if isinstance(s, dict) and isinstance(s.get("digest"), dict)
            and "sha256" in s["digest"] and "name" in s}


def unsigned_by_design() -> list[str]:
    return [f"{d}/" for d in UNSIGNED_DIRS] + list(UNSIGNED_FILES)


def evidence_files(run_dir: Path) -> list[str]:
    """Every file anywhere in the run directory but the explicit exclusions: a file
    added after signing (reports/x.md, NOTES.md, signature/extra.sig, a .orig copy) is
    one the signature does not bind."""
    found: list[str] = []
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in UNSIGNED_DIRS or rel.as_posix() in UNSIGNED_FILES:
            continue
        if path.is_file() or path.is_symlink():
            found.append(rel.as_posix())
    return sorted(found)


def run_identity(run_dir: Path) -> dict[str, Any]:
    """What the signed statement vouches for, for the verify header: run id, landed
    commits and range, branch, signing time and the key id that signed it ({} when the
    envelope does not parse)."""
    signed = _signed(run_dir)
    if signed is None:
        return {}
    envelope, statement = signed
    predicate = statement["predicate"]
    signatures = envelope.get("signatures")
    keyids = [str(sig.get("keyid")) for sig in signatures if isinstance(sig, dict)] \
        if isinstance(signatures, list) else []
    return {"run": predicate.get("run"), "branch": predicate.get("branch"),
            "pre": predicate.get("pre_apply_head"), "post": predicate.get("post_apply_head"),
            "commits": list(predicate.get("commits_applied") or []),
            "signed_at": predicate.get("signed_at"), "keyids": keyids}


def identity_lines(identity: dict[str, Any]) -> list[str]:
    if not identity:
        return ["run: (no signed statement)"]
    commits = identity["commits"]
    span = f"{str(identity['pre'])[:12]}..{str(identity['post'])[:12]}" \
        if identity.get("pre") and identity.get("post") else "none"
    return [f"run: {identity['run']}",
            f"commits: {len(commits)} on {identity['branch']} ({span})" +
            "".join(f"\n  {c}" for c in commits),
            f"signed at: {identity.get('signed_at') or 'not recorded'}",
            f"key id: {', '.join(identity['keyids']) or 'none'}"]


def expectation_checks(identity: dict[str, Any], expect_run: str | None,
                       expect_commits: list[str]) -> list[Check]:
    """--expect-run / --expect-commit: this directory is the run the verifier was told
    about, not another honest run's directory copied in its place."""
    checks = []
    if expect_run is not None:
        got = identity.get("run")
        checks.append(Check("expected run", got == expect_run,
                            f"signed run is {got!r}" + ("" if got == expect_run
                                                         else f", expected {expect_run!r}")))
    for want in expect_commits:
        landed = [c for c in identity.get("commits", []) if c.startswith(want.lower())]
        checks.append(Check(f"expected commit {want}", len(want) >= 7 and len(landed) == 1,
                            f"landed by this run: {landed[0]}" if len(landed) == 1 and
                            len(want) >= 7 else "not one of the commits this run landed "
                            "(give at least 7 hex digits)"))
    return checks


def check_coverage(run_dir: Path) -> Check:
    """Each evidence file is a signed subject, or listed in a signed checksums.json.

    The subject digests themselves are compared by verify_signature; here a file the
    signature does not reach at all (so it could be edited unnoticed) is a FAIL.
    """
    name = "coverage: evidence bound by the signature"
    subjects = signed_subjects(run_dir)
    if not subjects:
        return Check(name, False, "no signed statement to compare with")
    statement = signed_statement(run_dir) or {}
    declared = statement.get("predicate", {}).get("unsigned_by_design")
    if declared != unsigned_by_design():
        return Check(name, False, f"the statement declares {declared} unsigned by design, "
                     f"this verifier excludes {unsigned_by_design()}")
    listed: dict[str, Any] = {}
    sums_path = run_dir / "audit" / "checksums.json"
    if "audit/checksums.json" in subjects and is_regular(sums_path):
        try:
            listed = dict(json.loads(read_regular(sums_path)).get("artifacts", {}))
        except (OSError, ValueError, AttributeError, AgentosError):
            return Check(name, False, "audit/checksums.json does not parse")
    unbound = [rel for rel in evidence_files(run_dir) if rel not in subjects and rel not in listed]
    if unbound:
        return Check(name, False, f"{len(unbound)} evidence file(s) bound neither by a signed "
                     f"subject nor by the signed checksums.json: {', '.join(unbound[:5])}")
    return Check(name, True, f"{len(subjects)} signed subject(s) and {len(listed)} checksummed "
                 "artifact(s) cover every evidence file")


# ------------------------------------------------------------------ executor key

EXECUTOR_PIN_CHECK = "executor key pinned"


def check_executor_pin(run_dir: Path, expected_keyid: str | None) -> Check:
    """The signed statement names the executor key whose attestations gate AT checks: it
    must be the key in attestations/executor.pub.json (digest and id), and the one the
    verifier expects when given (`--executor-key`). A forger who replaced that file and
    re-signed every link with a key of its own passes gate AT; not this."""
    try:
        envelope = json.loads(read_regular(run_dir / ENVELOPE_RELPATH))
        pinned = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["executor"]
    except (OSError, ValueError, KeyError, TypeError, AgentosError):
        return Check(EXECUTOR_PIN_CHECK, False, "no signed statement to read the pin from")
    if not isinstance(pinned, dict) or not isinstance(pinned.get("keyid"), str):
        return Check(EXECUTOR_PIN_CHECK, False, "the signed statement pins no executor key: "
                     "the run was executed without one (or signed by an older agentos)")
    recorded = recorded_executor_key(run_dir)
    if recorded != pinned:
        return Check(EXECUTOR_PIN_CHECK, False,
                     f"{EXECUTOR_PUB_RELPATH} is not the executor key the statement pins "
                     f"({pinned['keyid'][:16]}): it was replaced")
    if expected_keyid is not None and expected_keyid != pinned["keyid"]:
        return Check(EXECUTOR_PIN_CHECK, False,
                     f"the steps were signed by executor key {pinned['keyid'][:16]}, "
                     f"expected {expected_keyid[:16]} (--executor-key)")
    how = "as expected (--executor-key)" if expected_keyid else \
        "(pass --executor-key to require it)"
    return Check(EXECUTOR_PIN_CHECK, True, f"step attestations by executor key "
                 f"{pinned['keyid']} {how}")


# ------------------------------------------------------------------ gates


def gate_check(gate: Gate, run_dir: Path) -> Check:
    """Evaluate one gate offline; a gate that needed an absent repository FAILs saying so."""
    ctx = GateContext(run_dir)
    try:
        status, reason = gate.check(ctx)
    except Missing as exc:
        status, reason = FAIL, str(exc)
    except Exception as exc:  # malformed evidence fails the check, it never crashes verify
        last = traceback.extract_tb(exc.__traceback__)[-1]
        status, reason = FAIL, f"cannot check: {type(exc).__name__}: {exc} " \
                               f"({Path(last.filename).name}:{last.lineno})"
    reason = reason.splitlines()[0] if reason else ""
    if "git" in vars(ctx):  # the gate opened the target repository
        repo = _repo_or_none(ctx)
        if repo is None or not repo.is_dir():
            return Check(f"gate {gate.id}", False,
                         f"FAIL: needs the target repository {repo}, which is absent here "
                         f"(gate said: {status}: {reason})")
    return Check(f"gate {gate.id}", status != FAIL, f"{status}: {reason}")


def _repo_or_none(ctx: GateContext) -> Path | None:
    try:
        return ctx.repo_path()
    except (Missing, KeyError, TypeError):
        return None


__all__ = ["Check", "check_coverage", "check_executor_pin", "gate_check",
           "identity_lines", "run_identity", "verify_run"]
