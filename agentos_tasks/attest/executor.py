"""Evidence signed as it happens: the executor's own key signs each step's in-toto link
when its step_end is written, and the tape head when an invocation ends.

The executor key is created on first use outside every run directory and every sandbox:
`$AGENTOS_EXECUTOR_KEY`, else `$XDG_CONFIG_HOME/agentos-tasks/executor.key` (default
`~/.config/...`), directory 0700, file 0600. It is not the report-signing key (`key=` of
`doit sign`): the signed statement pins the executor key id, the two may differ. bwrap
hides the home directory from a step (an empty tmpfs over it) and never binds the key; a
key inside the run directory or the target repository is refused.

What is written (run-relative, all subjects of the final signature):
- `attestations/executor.pub.json`: the executor's public key (securesystemslib JSON);
- `attestations/<step>.<seq>.link.dsse.json`: per step_end at tape line `seq`, a DSSE
  envelope over an in-toto Statement v1 with the link predicate
  (https://in-toto.io/attestation/link/v0.3, built with in-toto-attestation's `Link`):
  subjects = the products (changed files by sha256, the step's commit as `gitCommit`,
  the manifest), materials = parent commit and tree, command = argv, byproducts = exit
  code, manifest/patch/log/transcript/result-pack digests, start and end time (the
  step_start's and step_end's `ts`), and the tape line (seq + sha256 of the step_end
  line, which chains to everything before it);
- `attestations/tape_head.dsse.json`: the tape's count, head and the signing time, signed
  at each run_end and when an invocation that appended to the tape ends. A head left
  stale by a kill (the line written, its signature not) is signed again by the next
  invocation, only when the signed head is still a line of the tape (it only grew); a
  step_end left without its link by a kill (it is then the tape's last line) gets it then.

`gates/attestations.py` checks all of this (gate AT, hence `doit sign` and
`agentos verify`).
"""

from __future__ import annotations

import atexit
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf import json_format
from in_toto_attestation.predicates.link.v0 import link_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from agentos_tasks.attest.keys import _write_key_file, load_signer
from agentos_tasks.errors import EXIT_STATE, EXIT_USAGE, AgentosError
from agentos_tasks.fsutil import atomic_write, sha256_bytes, sha256_file
from agentos_tasks.tape import Tape, TapeState

if TYPE_CHECKING:
    from agentos_tasks.git import Git
    from agentos_tasks.layout import RunPaths
    from agentos_tasks.model import Request, Step


class RunView(Protocol):
    """What SigningTape needs of a run (runctx.RunContext; not imported: runctx makes the
    tape, so importing it here would be a cycle)."""

    run_id: str
    paths: RunPaths
    request: Request | None

    @property
    def steps(self) -> tuple[Step, ...]: ...

    @property
    def worktree_git(self) -> Git: ...

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
        scratch = resolved.with_name(f".{resolved.name}.{os.getpid()}.new")
        _write_key_file(scratch, signer.private_bytes, mode=0o600)
        try:
            os.link(scratch, resolved)  # never replaces a key another process just made
        except FileExistsError:
            pass
        finally:
            scratch.unlink(missing_ok=True)
    info = resolved.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise AgentosError(f"the executor key {resolved} is readable by others "
                           f"(mode {stat.S_IMODE(info.st_mode):o})", where=str(resolved),
                           code=EXIT_USAGE, hint=f"chmod 600 {resolved}")
    return load_signer(resolved)


def existing_executor_key() -> CryptoSigner | None:
    """The executor key at its default place, or None when there is none (never created
    here: `doit sign` compares with it, it does not make one)."""
    path = default_executor_key_path()
    if not path.is_file():
        return None
    return executor_signer(path)


def public_key_dict(signer: CryptoSigner) -> dict[str, Any]:
    """What attestations/executor.pub.json holds (securesystemslib key JSON + keyid)."""
    return {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}


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


def signed_payload(envelope_path: Path) -> dict[str, Any] | None:
    """The statement inside a DSSE envelope file, unverified; None when it does not parse."""
    try:
        envelope = Envelope.from_dict(json.loads(envelope_path.read_bytes()))
        statement = json.loads(envelope.payload)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return statement if isinstance(statement, dict) else None


def tape_lines(tape_path: Path) -> list[bytes]:
    try:
        data = tape_path.read_bytes()
    except FileNotFoundError:
        return []
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
    return data.splitlines()


def step_started_at(lines: list[bytes], step_id: str, end_seq: int) -> str | None:
    """The `ts` of the step_start that the step_end at `end_seq` closes (the last
    step_start of that step before it)."""
    for line in reversed(lines[:end_seq]):
        if b'"step_start"' not in line:
            continue
        event = json.loads(line)
        if event.get("event") == "step_start" and event.get("step") == step_id:
            return str(event.get("ts"))
    return None


def transcript_relpath(step_id: str) -> str:
    return f"tools/{step_id}/transcript.jsonl"


class SigningTape(Tape):
    """The run's tape, signing as it goes: a link for each step_end, the head at run_end
    and when the invocation ends. Refuses to append to a signed run (nothing in a signed
    run directory is rewritten)."""

    def __init__(self, ctx: RunView) -> None:
        super().__init__(ctx.paths.root)
        self.ctx = ctx
        self._signer: CryptoSigner | None = None
        self._seal_registered = False
        self._loaded = False
        # step -> (seq, ts) of the last step_start this object appended: the step_end
        # that closes it needs its time without re-reading the whole tape each step
        self._step_starts: dict[str, tuple[int, str]] = {}

    # ------------------------------------------------------------ key

    def signer(self) -> CryptoSigner:
        if self._signer is None:
            ctx = self.ctx
            forbidden: list[Path] = [ctx.paths.root]
            if ctx.request is not None:
                forbidden.append(ctx.request.repo)
            signer = executor_signer(default_executor_key_path(),
                                     forbidden=tuple(forbidden))
            self._record_public_key(signer)
            self._signer = signer
        return self._signer

    def _record_public_key(self, signer: CryptoSigner) -> None:
        pub_path = self.ctx.paths.root / EXECUTOR_PUB_RELPATH
        public = public_key_dict(signer)
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
                    hint=f"continue a run with the key it started with (${KEY_ENV_VAR}), "
                         "or start a new run with run=NEW")
            return
        pub_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(pub_path, (json.dumps(public, indent=2, sort_keys=True) + "\n").encode())

    @property
    def _signed_run(self) -> bool:
        return (self.ctx.paths.root / SIGNED_MARKER).exists()

    # ------------------------------------------------------------ tape hooks

    def state(self) -> TapeState:
        state = super().state()
        if not self._loaded:
            self._loaded = True
            self._after_load()
        return state

    def _after_load(self) -> None:
        """A run this executor signs (its public key is there), not yet signed by the
        report key: finish what a killed invocation left unsigned (the link of a step_end
        that is the tape's last line), and sign the head when this invocation ends."""
        if self._signed_run or not (self.ctx.paths.root / EXECUTOR_PUB_RELPATH).is_file():
            return
        self._register_seal()
        lines = tape_lines(self.path)
        if not lines:
            return
        last = json.loads(lines[-1])
        if last.get("event") == "step_end" and last.get("step") is not None and not (
                self.ctx.paths.root / link_relpath(str(last["step"]), int(last["seq"]))
        ).exists() and self.ctx.paths.manifest(str(last["step"])).is_file():
            self._sign_link(self.signer(), str(last["step"]), dict(last),
                            self.state().head)

    def _register_seal(self) -> None:
        if not self._seal_registered:
            self._seal_registered = True
            atexit.register(self.seal_invocation)

    def _write(self, event: str, step: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        if self._signed_run:
            raise AgentosError(
                f"run {self.ctx.run_id} is signed: its tape and evidence are never "
                f"rewritten (refused: {event})", where=str(self.ctx.paths.root),
                code=EXIT_STATE,
                hint="verify it with `agentos verify`; start new work with run=NEW")
        signer = self.signer()  # before the line: a refused key leaves the tape untouched
        record = super()._write(event, step, payload)
        if event == "step_start" and step is not None:
            self._step_starts[step] = (int(record["seq"]), str(record.get("ts")))
        self._register_seal()
        line_digest = self.state().head
        if event == "step_end" and step is not None:
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
            "transcript_sha256": _digest_or_none(paths.root / transcript_relpath(step_id)),
            "tool_result_pack_sha256": record.get("tool_result_pack_sha256"),
            "started_at": self._started_at(step_id, seq),
            "ended_at": record.get("ts"),
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

    def _started_at(self, step_id: str, end_seq: int) -> str | None:
        known = self._step_starts.get(step_id)
        if known is not None and known[0] < end_seq:
            return known[1]  # appended by this object: no later step_start can precede
        return step_started_at(tape_lines(self.path), step_id, end_seq)

    def _signed_head(self, signer: CryptoSigner) -> tuple[int, str] | None:
        """(count, head) the current head envelope vouches for, None when there is none.
        Raises when it is there but not this executor's valid signature."""
        path = self.ctx.paths.root / TAPE_HEAD_SIG_RELPATH
        if not path.exists():
            return None
        try:
            envelope = Envelope.from_dict(json.loads(path.read_bytes()))
            envelope.verify([signer.public_key], 1)
            predicate = json.loads(envelope.payload)["predicate"]
            return int(predicate["count"]), str(predicate["head"])
        except (OSError, ValueError, KeyError, TypeError, sslib_exceptions.Error) as exc:
            raise AgentosError(
                f"{TAPE_HEAD_SIG_RELPATH} is not this executor's signature ({exc})",
                where=str(path), code=EXIT_STATE,
                hint="the run's evidence was changed outside agentos; start a new run with "
                     "run=NEW") from None

    def sign_head(self) -> None:
        """Sign the tape's current count and head (with the time), unless the envelope
        already covers exactly that. The head signed before must still be a line of the
        tape (the tape only grew since): a rewritten tape is never signed over."""
        state = self.state()
        if state.count == 0:
            return
        signer = self.signer()
        prior = self._signed_head(signer)
        if prior == (state.count, state.head):
            return
        if prior is not None:
            lines = tape_lines(self.path)
            count, head = prior
            if not (0 < count <= len(lines)) or sha256_bytes(lines[count - 1]) != head:
                raise AgentosError(
                    f"the tape no longer holds the head signed at line {count}: it was "
                    "rewritten outside agentos; its head is not signed again",
                    where=str(self.path), code=EXIT_STATE,
                    hint="start a new run with run=NEW")
        tape_sha = sha256_file(self.path)
        predicate = {"run": self.ctx.run_id, "count": state.count, "head": state.head,
                     "signed_at": now_utc()}
        envelope = sign_statement(signer, [
            {"name": "audit/run_tape.jsonl", "digest": {"sha256": tape_sha}}],
            TAPE_HEAD_PREDICATE_TYPE, predicate)
        atomic_write(self.ctx.paths.root / TAPE_HEAD_SIG_RELPATH,
                     (json.dumps(envelope, indent=2) + "\n").encode(), durable=True)

    def seal_invocation(self) -> None:
        """At the end of an invocation: sign the head when it is not yet. Never raises
        (it runs from atexit; a missing run directory has nothing to seal, a refusal
        leaves the stale head for gate AT to report)."""
        try:
            if self.path.exists() and not self._signed_run:
                self.sign_head()
        except (OSError, AgentosError):
            pass
