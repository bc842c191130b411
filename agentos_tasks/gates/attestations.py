"""AT: the evidence is what the executor signed as it happened (issue 12).

The executor key (attest.executor) signed, when each step ended, an in-toto link over the
step's record, and at the end of each invocation the tape head. This gate recomputes all
of it from the run directory, trusting nothing the files say about themselves:

- `attestations/executor.pub.json` is a usable public key (which key it must be is the
  signed statement's business: it pins the key id, `agentos verify --executor-key`);
- every step_end on the tape has `attestations/<step>.<seq>.link.dsse.json`, whose DSSE
  signature verifies under that key, whose payload is an in-toto Statement with the link
  v0.3 predicate, and whose contents equal what is recomputed now: the tape line (sha256
  of the step_end line, which chains to every event before it, timestamps included), its
  ts and its step_start's ts, status, exit code, manifest/patch/result-pack digests, the
  subjects (manifest, commit, changed files), the parent commit; for each step's last
  step_end also the files as they are: manifest, patch, log, transcript, result pack;
- no link names a step_end the tape does not have;
- `attestations/tape_head.dsse.json` verifies and covers the tape as it is (count, head,
  and the sha256 of the whole file).

A run without any attestation was executed without the executor key: FAIL, never N/A.
The parent's tree (a material) needs git and is not recomputed here; the parent commit is.
"""

from __future__ import annotations

import copy
import json
import os
from typing import TYPE_CHECKING, Any

from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope
from securesystemslib.signer import Key  # type: ignore[attr-defined]

from agentos_tasks.attest.executor import (
    ATTEST_DIR,
    EXECUTOR_PUB_RELPATH,
    LINK_PREDICATE_TYPE,
    PAYLOAD_TYPE,
    TAPE_HEAD_PREDICATE_TYPE,
    TAPE_HEAD_SIG_RELPATH,
    link_relpath,
    transcript_relpath,
)
from agentos_tasks.gates.common import PASS, Fail, Gate, Verdict, verdict

if TYPE_CHECKING:
    from pathlib import Path

    from agentos_tasks.gates.context import GateContext

AT_INPUTS: tuple[str, ...] = ("attestations/*", "audit/*", "execution_result.json",
                              "steps/*.json", "patches/*.patch", "logs/*", "tools/*")


def executor_key(ctx: GateContext) -> Key:
    if not ctx.exists(EXECUTOR_PUB_RELPATH):
        if not (ctx.run_dir / ATTEST_DIR).is_dir():
            raise Fail("no attestations/: the run was executed without the executor key, "
                       "nothing was signed as it happened (its evidence could have been "
                       "rewritten since)")
        raise Fail(f"{EXECUTOR_PUB_RELPATH} is missing")
    try:
        raw = dict(ctx.json(EXECUTOR_PUB_RELPATH))
        return Key.from_dict(str(raw.pop("keyid")), raw)
    except (KeyError, TypeError, ValueError, sslib_exceptions.Error) as exc:
        raise Fail(f"{EXECUTOR_PUB_RELPATH} is not a public key ({exc})") from None


def signed_statement(ctx: GateContext, rel: str, key: Key, predicate_type: str
                     ) -> dict[str, Any]:
    """The statement of envelope `rel`, once its signature verifies under `key`."""
    if not ctx.exists(rel):
        raise Fail(f"{rel} is missing: not signed by the executor as it happened")
    try:
        envelope = Envelope.from_dict(copy.deepcopy(ctx.json(rel)))
    except (KeyError, TypeError, ValueError, AttributeError, sslib_exceptions.Error) as exc:
        raise Fail(f"{rel} is not a DSSE envelope ({exc})") from None
    try:
        envelope.verify([key], 1)
    except (sslib_exceptions.VerificationError, ValueError):
        signers = ", ".join(envelope.signatures) or "nobody"
        raise Fail(f"{rel}: no valid signature by the executor key {key.keyid[:16]} "
                   f"(signed by {signers[:40]})") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise Fail(f"{rel}: payloadType {envelope.payload_type!r}")
    try:
        statement = json.loads(envelope.payload)
    except ValueError:
        raise Fail(f"{rel}: the signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("predicateType") != predicate_type \
            or not isinstance(statement.get("predicate"), dict):
        raise Fail(f"{rel}: not an in-toto Statement with predicateType {predicate_type}")
    return statement


def line_digests(ctx: GateContext) -> list[str]:
    """sha256 of each tape line, from the verified chain (each `prev` is the digest of
    the line before; the last one is the head)."""
    events = ctx.events
    return [str(e["prev"]) for e in events[1:]] + [ctx.chain.head]


def expected_command(ctx: GateContext, step_id: str) -> list[str] | None:
    """The command the request gives the step (None for write/delete/patch: only their
    op is compared)."""
    for step in ctx.request_record["steps"]:
        if step.get("id") != step_id:
            continue
        if step.get("op") == "run":
            return [str(a) for a in step.get("argv", [])]
        tool = step.get("tool")
        if step.get("op") == "tool" and isinstance(tool, dict):
            return [f"agentos:tool:{tool.get('adapter')}", *map(str, tool.get("argv", []))]
        return None
    raise Fail(f"step {step_id} is on the tape but not in audit/request.json")


def _differs(rel: str, what: str, signed: object, actual: object) -> Fail:
    return Fail(f"{rel}: {what} differs from what the executor signed "
                f"(signed {str(signed)[:32]}, the tape now says {str(actual)[:32]})")


def check_link(ctx: GateContext, key: Key, end: dict[str, Any], start: dict[str, Any] | None, *,
               line_sha: str, current: bool) -> None:
    step_id, seq = str(end.get("step")), int(end["seq"])
    rel = link_relpath(step_id, seq)
    statement = signed_statement(ctx, rel, key, LINK_PREDICATE_TYPE)
    predicate = statement["predicate"]
    byproducts = predicate.get("byproducts")
    if not isinstance(byproducts, dict):
        raise Fail(f"{rel}: the link has no byproducts")
    if current:
        check_files(ctx, rel, step_id, end, byproducts)
    expected = {"status": end.get("status"), "exit_code": end.get("exit_code"),
                "manifest_sha256": end.get("manifest_sha256"),
                "patch_sha256": end.get("patch_sha256"),
                "tool_result_pack_sha256": end.get("tool_result_pack_sha256"),
                "ended_at": end.get("ts"), "started_at": start.get("ts") if start else None}
    for name, value in expected.items():
        if byproducts.get(name) != value:
            raise _differs(rel, name, byproducts.get(name), value)
    if predicate.get("name") != step_id:
        raise _differs(rel, "step name", predicate.get("name"), step_id)
    parent = start.get("parent") if start else None
    materials = predicate.get("materials")
    signed_parent = materials[0].get("digest", {}).get("gitCommit") \
        if isinstance(materials, list) and materials and isinstance(materials[0], dict) \
        else None
    if signed_parent != parent:
        raise _differs(rel, "parent commit (material)", signed_parent, parent)
    subjects = [{"name": f"steps/{step_id}.json",
                 "digest": {"sha256": end.get("manifest_sha256")}}]
    if end.get("commit"):
        subjects.append({"name": f"commit:{step_id}", "digest": {"gitCommit": end["commit"]}})
    subjects += [{"name": f["path"], "digest": {"sha256": f["sha256"]}}
                 for f in end.get("files", []) if isinstance(f, dict) and f.get("sha256")]
    if statement.get("subject") != subjects:
        raise Fail(f"{rel}: its subjects (manifest, commit, changed files with digests) "
                   "differ from the tape's step_end")
    command = predicate.get("command")
    wanted = expected_command(ctx, step_id)
    if wanted is not None and command != wanted:
        raise _differs(rel, "command", command, wanted)
    if byproducts.get("tape") != {"seq": seq, "line_sha256": line_sha}:
        raise Fail(f"{rel}: the tape line of this step_end (seq {seq}) is not the one the "
                   "executor signed: the tape was rewritten (an event, a timestamp or the "
                   "chain before it changed)")


def check_files(ctx: GateContext, rel: str, step_id: str, end: dict[str, Any],
                byproducts: dict[str, Any]) -> None:
    """A step's files as they are now are the ones signed when it ended (only for its
    last run: a re-executed step's files are those of the later run)."""
    files = {"log_sha256": f"logs/{step_id}.out",
             "transcript_sha256": transcript_relpath(step_id)}
    if end.get("status") == "changed":
        files["patch_sha256"] = f"patches/{step_id}.patch"
    if byproducts.get("tool_result_pack_sha256") is not None:
        files["tool_result_pack_sha256"] = f"tools/{step_id}/tool_result_pack.json"
    files["manifest_sha256"] = f"steps/{step_id}.json"
    for name, file_rel in files.items():
        if byproducts.get(name) is None and not os.path.lexists(ctx.run_dir / file_rel):
            continue  # none then, none now (a write step has no log)
        actual = ctx.sha256(file_rel)
        if byproducts.get(name) != actual:
            raise Fail(f"{file_rel} is not the file the executor signed when step {step_id} "
                       f"ended ({rel}: {name} {str(byproducts.get(name))[:12]}, now "
                       f"{str(actual)[:12] if actual else 'missing'})")


def check_head(ctx: GateContext, key: Key) -> None:
    statement = signed_statement(ctx, TAPE_HEAD_SIG_RELPATH, key, TAPE_HEAD_PREDICATE_TYPE)
    predicate = statement["predicate"]
    chain = ctx.chain
    if (predicate.get("count"), predicate.get("head")) != (chain.count, chain.head):
        raise Fail(f"{TAPE_HEAD_SIG_RELPATH} signs a tape of {predicate.get('count')} events "
                   f"/ {str(predicate.get('head'))[:12]}, the tape has {chain.count} / "
                   f"{chain.head[:12]}: events were added, removed or rewritten after the "
                   "executor signed its head")
    tape_sha = ctx.sha256("audit/run_tape.jsonl")
    if statement.get("subject") != [{"name": "audit/run_tape.jsonl",
                                     "digest": {"sha256": tape_sha}}]:
        raise Fail(f"{TAPE_HEAD_SIG_RELPATH} does not cover audit/run_tape.jsonl as it is")


_ON_THIS_HOST: set[Path] = set()


def check_host_key(run_dir: Path) -> None:
    """`doit gates` where the run was executed: the attestations must be signed by this
    host's executor key (as `doit sign` requires), so attestations re-signed with another
    key fail here already, not only at signing. `agentos verify` and a fleet's driver,
    which check runs executed elsewhere, pin the key through the signed statement and
    --executor-key instead."""
    _ON_THIS_HOST.add(run_dir.resolve())


def _host_key_matches(ctx: GateContext, key: Key) -> str:
    if ctx.run_dir.resolve() not in _ON_THIS_HOST:
        return ""
    from agentos_tasks.attest.executor import existing_executor_key

    host = existing_executor_key()
    if host is None:
        return "; this host has no executor key to compare with"
    if host.public_key.keyid != key.keyid:
        raise Fail(f"the attestations are signed by executor key {key.keyid[:16]}, this "
                   f"host's executor key is {host.public_key.keyid[:16]}: re-signed by "
                   "someone else, or executed on another host (check it there, or with "
                   "agentos verify --executor-key)")
    return "; this host's executor key"


@verdict
def at_attestations(ctx: GateContext) -> Verdict:
    """Every step_end's signed link and the signed tape head match the evidence."""
    key = executor_key(ctx)
    host_note = _host_key_matches(ctx, key)
    chain = ctx.chain
    if not chain.ok:
        raise Fail(f"tape: {chain.reason}")
    digests = line_digests(ctx)
    last: dict[tuple[str, str], int] = {}  # (event, step) -> seq of its last one
    for event in ctx.events:
        if event.get("event") in ("step_start", "step_end"):
            last[(str(event["event"]), str(event.get("step")))] = int(event["seq"])
    starts: dict[str, dict[str, Any]] = {}
    linked: set[str] = set()
    for event in ctx.events:
        name, step_id = event.get("event"), str(event.get("step"))
        if name == "step_start":
            starts[step_id] = event
        elif name == "step_end":
            seq = int(event["seq"])
            # its step's files are this run's unless the step started again later
            current = last[("step_end", step_id)] == seq \
                and last[("step_start", step_id)] < seq if ("step_start", step_id) in last \
                else last[("step_end", step_id)] == seq
            check_link(ctx, key, event, starts.get(step_id), line_sha=digests[seq],
                       current=current)
            linked.add(link_relpath(step_id, seq))
    directory = ctx.run_dir / ATTEST_DIR
    extra = sorted(f"{ATTEST_DIR}/{p.name}" for p in directory.glob("*.link.dsse.json")
                   if f"{ATTEST_DIR}/{p.name}" not in linked)
    if extra:
        raise Fail(f"link(s) for step_end events the tape does not have: {', '.join(extra)}")
    check_head(ctx, key)
    return PASS, (f"{len(linked)} step link(s) and the tape head ({chain.count} events) "
                  f"signed by executor key {key.keyid[:16]}{host_note} match the evidence")


AT = Gate("AT", "signed as it happened: step links and tape head verify under the executor "
          "key and match the evidence", at_attestations, AT_INPUTS)
