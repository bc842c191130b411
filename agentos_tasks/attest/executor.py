"""Evidence signed as it happens: the executor's own key signs each step's in-toto link
when its step_end is written, and the tape head when an invocation ends.

The executor key is created on first use outside every run directory and every sandbox:
`$AGENTOS_EXECUTOR_KEY`, else `$XDG_CONFIG_HOME/agentos-tasks/executor.key` (default
`~/.config/...`), directory 0700, file 0600, or the `key=` a run is given. bwrap hides the
home directory from a step (an empty tmpfs over it) and never binds the key; a `key=`
inside the run directory or the target repository is refused.

What is written (run-relative, all subjects of the final signature):
- `attestations/executor.pub.json`: the executor's public key (securesystemslib JSON);
- `attestations/<step>.<seq>.link.dsse.json`: per step_end at tape line `seq`, a DSSE
  envelope over an in-toto Statement v1 with the link predicate
  (https://in-toto.io/attestation/link/v0.3, built with in-toto-attestation's `Link`):
  subjects = the products (changed files by sha256, the step's commit as `gitCommit`,
  the manifest), materials = parent commit and tree, command = argv, byproducts = exit
  code, manifest/patch/log/result-pack digests, start and end time, and the tape line
  (seq + sha256 of the step_end line, which chains to everything before it);
- `attestations/tape_head.dsse.json`: the tape's count, head and the signing time, signed
  at each run_end and when an invocation that appended to the tape ends.

`links.py` checks all of this (gate AT-A, `doit sign`, `agentos verify`).
"""

from __future__ import annotations

import atexit
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from in_toto_attestation.predicates.link.v0 import link_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from agentos_tasks.attest.keys import _write_key_file, load_signer
from agentos_tasks.errors import EXIT_STATE, EXIT_USAGE, AgentosError
from agentos_tasks.fsutil import atomic_write, sha256_file
from agentos_tasks.tape import Tape

if TYPE_CHECKING:
    from agentos_tasks.runctx import RunContext

PAYLOAD_TYPE = "application/vnd.in-toto+json"
LINK_PREDICATE_TYPE = "https://in-toto.io/attestation/link/v0.3"
TAPE_HEAD_PREDICATE_TYPE = "https://agentos-tasks.dev/attestation/tape-head/v1"
ATTEST_DIR = "attestations"
EXECUTOR_PUB_RELPATH = f"{ATTEST_DIR}/executor.pub.json"
TAPE_HEAD_SIG_RELPATH = f"{ATTEST_DIR}/tape_head.dsse.json"
KEY_ENV_VAR = "AGENTOS_EXECUTOR_KEY"
SIGNED_MARKER = "signature/envelope.dsse.json"


def link_relpath(step: str, seq: int) -> str:
    return f"{ATTEST_DIR}/{step}.{seq}.link.dsse.json"


def default_executor_key_path() -> Path:
    """Where the executor key lives when no key= is given (never inside a run)."""
    override = os.environ.get(KEY_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser().resolve() / "agentos-tasks" / "executor.key"


def executor_signer(key_path: Path, *, forbidden: tuple[Path, ...] = ()) -> CryptoSigner:
    """Load the executor key, creating it (dir 0700, file 0600) on first use.

    Refused: a key inside any of `forbidden` (the run directory, the target repository:
    what a step can see), a key file others may read.
    """
    resolved = key_path.expanduser().resolve()
    for given_root in forbidden:
        root = given_root.resolve()
        if resolved == root or root in resolved.parents:
            raise AgentosError(f"the executor key {resolved} lies inside {root}",
                               where=str(resolved), code=EXIT_USAGE,
                               hint="keep signing keys outside the run directory and the "
                                    "target repository: a step could read them there")
    if not resolved.exists():
        resolved.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        signer = CryptoSigner.generate_ed25519()
        _write_key_file(resolved, signer.private_bytes, mode=0o600)
        return signer
    info = resolved.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise AgentosError(f"the executor key {resolved} is readable by others "
                           f"(mode {stat.S_IMODE(info.st_mode):o})", where=str(resolved),
                           code=EXIT_USAGE, hint=f"chmod 600 {resolved}")
    return load_signer(resolved)


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def sign_statement(signer: CryptoSigner, subjects: list[dict[str, Any]], predicate_type: str,
                   predicate: dict[str, Any], pb_predicate: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """A DSSE envelope (as a dict) over an in-toto Statement v1, validated by
    in-toto-attestation; the predicate is signed as plain JSON (protobuf's Struct would
    turn every integer into a double)."""
    descriptors = [ResourceDescriptor(name=s["name"], digest=s["digest"]).pb for s in subjects]
    statement = Statement(descriptors, predicate_type, pb_predicate or predicate)
    statement.validate()
    statement_dict: dict[str, Any] = json_format.MessageToDict(statement.pb)
    statement_dict["predicate"] = predicate
    payload = json.dumps(statement_dict, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    result: dict[str, Any] = envelope.to_dict()
    return result


def _link_validated(predicate: dict[str, Any]) -> dict[str, Any]:
    """The predicate must parse as in-toto-attestation's Link (v0.3 fields only)."""
    message = json_format.ParseDict(predicate, link_pb2.Link())
    return dict(json_format.MessageToDict(message))


def _digest_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None


class SigningTape(Tape):
    """The run's tape, signing as it goes: a link for each step_end, the head at run_end
    and when the invocation ends. Refuses to append to a signed run (nothing in a signed
    run directory is rewritten)."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx.paths.root)
        self.ctx = ctx
        self._signer: CryptoSigner | None = None
        self._starts: dict[str, str] = {}
        self._dirty = False
        self._sealed_head: tuple[int, str] | None = None

    # ------------------------------------------------------------ key

    def signer(self) -> CryptoSigner:
        if self._signer is None:
            ctx = self.ctx
            forbidden: list[Path] = [ctx.paths.root]
            if ctx.request is not None:
                forbidden.append(ctx.request.repo)
            signer = executor_signer(ctx.key_path or default_executor_key_path(),
                                     forbidden=tuple(forbidden))
            self._record_public_key(signer)
            self._signer = signer
        return self._signer

    def _record_public_key(self, signer: CryptoSigner) -> None:
        pub_path = self.ctx.paths.root / EXECUTOR_PUB_RELPATH
        public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
        if pub_path.exists():
            try:
                recorded = json.loads(pub_path.read_bytes()).get("keyid")
            except (OSError, ValueError, AttributeError):
                recorded = None
            if recorded != public["keyid"]:
                raise AgentosError(
                    f"run {self.ctx.run_id} was executed with executor key {recorded}; "
                    f"this invocation holds {public['keyid']}", where=str(pub_path),
                    code=EXIT_STATE,
                    hint="continue a run with the key it started with (key=), or start a "
                         "new run with run=NEW")
            return
        pub_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(pub_path, (json.dumps(public, indent=2, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------ tape hook

    def _write(self, event: str, step: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        if (self.ctx.paths.root / SIGNED_MARKER).exists():
            raise AgentosError(
                f"run {self.ctx.run_id} is signed: its tape and evidence are never "
                f"rewritten (refused: {event})", where=str(self.ctx.paths.root),
                code=EXIT_STATE,
                hint="verify it with `agentos verify`; start new work with run=NEW")
        signer = self.signer()  # before the line: a refused key leaves the tape untouched
        record = super()._write(event, step, payload)
        if not self._dirty:
            self._dirty = True
            atexit.register(self.seal_invocation)
        line_digest = self.state().head
        if event == "step_start" and step is not None:
            self._starts[step] = str(record.get("ts"))
        elif event == "step_end" and step is not None:
            self._sign_link(signer, step, record, line_digest)
        elif event == "run_end":
            self.sign_head()
        return record

    def _sign_link(self, signer: CryptoSigner, step_id: str, record: dict[str, Any],
                   line_digest: str) -> None:
        ctx = self.ctx
        paths = ctx.paths
        step = next((s for s in ctx.steps if s.id == step_id), None)
        manifest: dict[str, Any] = json.loads(paths.manifest(step_id).read_bytes())
        command: list[str]
        if step is not None and step.op == "run":
            command = list(step.argv)
        elif step is not None and step.tool is not None:
            command = [f"agentos:tool:{step.tool.adapter}", *step.tool.argv]
        else:
            command = [f"agentos:{manifest.get('op')}", *([step.path] if step and step.path
                                                          else [])]
        parent = str(manifest["parent"])
        materials = [{"name": "parent", "digest": {"gitCommit": parent}},
                     {"name": "parent^{tree}",
                      "digest": {"gitTree": ctx.worktree_git.tree_of(parent)}}]
        seq = int(record["seq"])
        byproducts: dict[str, Any] = {
            "status": record.get("status"), "exit_code": record.get("exit_code"),
            "manifest_sha256": record.get("manifest_sha256"),
            "patch_sha256": record.get("patch_sha256"),
            "log_sha256": _digest_or_none(paths.log(step_id)),
            "tool_result_pack_sha256": record.get("tool_result_pack_sha256"),
            "started_at": self._starts.get(step_id), "ended_at": record.get("ts"),
            "tape": {"seq": seq, "line_sha256": line_digest},
        }
        predicate = {"name": step_id, "command": command, "materials": materials,
                     "byproducts": byproducts,
                     "environment": {"run": ctx.run_id,
                                     "sandbox": (manifest.get("sandbox") or {}).get("backend")}}
        pb_predicate = _link_validated({**predicate, "byproducts": {
            k: v for k, v in byproducts.items() if k != "tape"}})
        subjects: list[dict[str, Any]] = [
            {"name": f"steps/{step_id}.json", "digest": {"sha256": record["manifest_sha256"]}}]
        if record.get("commit"):
            subjects.append({"name": f"commit:{step_id}",
                             "digest": {"gitCommit": record["commit"]}})
        subjects += [{"name": f["path"], "digest": {"sha256": f["sha256"]}}
                     for f in record.get("files", []) if f.get("sha256")]
        envelope = sign_statement(signer, subjects, LINK_PREDICATE_TYPE, predicate,
                                  pb_predicate)
        atomic_write(paths.root / link_relpath(step_id, seq),
                     (json.dumps(envelope, indent=2) + "\n").encode())

    def sign_head(self) -> None:
        """Sign the tape's current count and head (with the time) once per head."""
        state = self.state()
        if self._sealed_head == (state.count, state.head) or state.count == 0:
            return
        tape_sha = sha256_file(self.path)
        predicate = {"run": self.ctx.run_id, "count": state.count, "head": state.head,
                     "signed_at": now_utc()}
        envelope = sign_statement(self.signer(), [
            {"name": "audit/run_tape.jsonl", "digest": {"sha256": tape_sha}}],
            TAPE_HEAD_PREDICATE_TYPE, predicate)
        atomic_write(self.ctx.paths.root / TAPE_HEAD_SIG_RELPATH,
                     (json.dumps(envelope, indent=2) + "\n").encode(), durable=True)
        self._sealed_head = (state.count, state.head)

    def seal_invocation(self) -> None:
        """At the end of an invocation that appended to the tape: sign its head. Never
        raises (it runs from atexit; a missing run directory has nothing to seal)."""
        try:
            if self._dirty and self.path.exists():
                self.sign_head()
        except (OSError, AgentosError):
            pass
