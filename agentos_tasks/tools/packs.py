"""tool_task_pack.json and tool_result_pack.json: what a tool was asked, what it did.

The task pack is written before the tool runs (run, step, adapter, prompt, base commit,
allowed paths, policy digest, limits). The result pack is written after: the tool's name,
version and argv, exit code, duration, the transcript digest, the tool's own claims, the
diff *the executor computed from the worktree* (never the tool's claim), the executor's
policy decision over that diff, and the digest of the task pack it answers.

Both are canonical JSON (`dump_pack`: sorted keys, indent 2, ASCII, trailing newline), so
their sha256 is stable and a gate can recompute it. Loading validates with the same
voluptuous schemas the builders use; a bad pack is an AgentosError naming file:line and key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import voluptuous as vol

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import ADAPTERS, Change
from agentos_tasks.yamlsrc import MarkedDoc, load_with_marks, validate

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SCHEMA_VERSION = 1
TASK_PACK_NAME = "tool_task_pack.json"
RESULT_PACK_NAME = "tool_result_pack.json"
LIMIT_KEYS: tuple[str, ...] = ("step_seconds", "max_file_bytes", "max_changed_files",
                               "output_bytes")

_SHA256 = vol.Match(r"^[0-9a-f]{64}$", msg="expected a lowercase hex sha256")
_COMMIT = vol.Match(r"^[0-9a-f]{40}([0-9a-f]{24})?$", msg="expected a full hex commit id")
_ID = vol.Match(r"^[A-Za-z0-9_.-]+$", msg="expected an id [A-Za-z0-9_.-]+")
_TEXT = vol.All(str, vol.Length(min=1))


def _utc_timestamp(value: Any) -> str:
    """ISO 8601 with an explicit UTC offset: packs are compared across machines."""
    if not isinstance(value, str):
        raise vol.Invalid("expected an ISO 8601 UTC timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise vol.Invalid("expected an ISO 8601 UTC timestamp") from None
    offset = parsed.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise vol.Invalid("timestamp must be UTC (end with Z or +00:00)")
    return value


def _finite_nonnegative(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise vol.Invalid("expected a number")
    if not math.isfinite(value) or value < 0:
        raise vol.Invalid("expected a finite number >= 0")
    return value


def _json_value(value: Any) -> Any:
    """Claims are the tool's free-form JSON; only require that they are plain JSON."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise vol.Invalid(f"not plain JSON: {exc}") from None
    return value


def _strict_int(value: Any) -> int:
    """An integer that is not a bool (JSON true must not pass for exit code 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise vol.Invalid("expected an integer")
    return value


_NONNEG_INT = vol.All(_strict_int, vol.Range(min=0, msg="expected an integer >= 0"))

TASK_PACK_SCHEMA = vol.Schema({
    vol.Required("schema_version"): vol.All(_strict_int, vol.In([SCHEMA_VERSION])),
    vol.Required("run"): vol.All(str, _ID),
    vol.Required("step"): vol.All(str, _ID),
    vol.Required("adapter"): vol.In(ADAPTERS),
    vol.Required("prompt"): str,
    vol.Required("base_commit"): vol.All(str, _COMMIT),
    vol.Required("allowed_paths"): vol.All([_TEXT], vol.Length(min=1)),
    vol.Required("policy_sha256"): vol.All(str, _SHA256),
    vol.Required("limits"): {
        vol.Required("step_seconds"): _finite_nonnegative,
        vol.Required("max_file_bytes"): _NONNEG_INT,
        vol.Required("max_changed_files"): _NONNEG_INT,
        vol.Required("output_bytes"): _NONNEG_INT,
    },
    vol.Required("created"): _utc_timestamp,
    vol.Optional("model"): vol.Any(None, _TEXT),
    vol.Optional("argv"): [str],  # the command adapter's argv, as requested
})

_DIFF_FILE = vol.Schema({
    vol.Required("path"): _TEXT,
    vol.Required("status"): vol.In(["A", "M", "D", "R", "T"]),
    vol.Required("sha256"): vol.Any(None, vol.All(str, _SHA256)),
    vol.Optional("old_path"): vol.Any(None, _TEXT),
})

RESULT_PACK_SCHEMA = vol.Schema({
    vol.Required("schema_version"): vol.All(_strict_int, vol.In([SCHEMA_VERSION])),
    vol.Required("run"): vol.All(str, _ID),
    vol.Required("step"): vol.All(str, _ID),
    vol.Required("adapter"): vol.In(ADAPTERS),
    vol.Required("tool"): {
        vol.Required("name"): _TEXT,
        vol.Required("version"): _TEXT,
        vol.Required("path"): _TEXT,
    },
    vol.Required("argv"): vol.All([str], vol.Length(min=1)),
    vol.Required("exit_code"): _strict_int,
    vol.Required("duration_s"): _finite_nonnegative,
    vol.Required("transcript_sha256"): vol.All(str, _SHA256),
    vol.Required("claims"): vol.All(dict, _json_value),
    vol.Required("diff"): {
        vol.Required("files"): [_DIFF_FILE],
        vol.Required("patch_sha256"): vol.Any(None, vol.All(str, _SHA256)),
    },
    vol.Required("policy_check"): {
        vol.Required("decision"): vol.In(["allow", "deny"]),
        vol.Required("rule_id"): _TEXT,
    },
    vol.Required("task_pack_sha256"): vol.All(str, _SHA256),
    vol.Optional("timed_out"): bool,
    vol.Optional("failure"): vol.Any(None, str),  # why the executor failed the step
})


def dump_pack(obj: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a pack: sorted keys, indent 2, ASCII only, trailing newline."""
    try:
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AgentosError(f"pack is not plain JSON: {exc}") from None
    return (text + "\n").encode("ascii")


def pack_sha256(obj: Mapping[str, Any]) -> str:
    """sha256 of the canonical bytes: what a result pack's task_pack_sha256 refers to."""
    return hashlib.sha256(dump_pack(obj)).hexdigest()


def write_pack(path: Path, obj: Mapping[str, Any]) -> str:
    """Write the canonical bytes atomically (temp file, fsync, rename); return the sha256."""
    data = dump_pack(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _checked(obj: dict[str, Any], schema: vol.Schema, what: str) -> dict[str, Any]:
    """Builder-side validation: a bad argument is a clear AgentosError, not a bad file."""
    doc = MarkedDoc(source=Path(f"<{what}>"), data=obj)
    result: dict[str, Any] = validate(doc, schema, what)
    dump_pack(result)
    return result


def utc_now() -> str:
    """Seconds-precision UTC timestamp, e.g. 2026-01-31T12:00:00Z."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_task_pack(
    *,
    run: str,
    step: str,
    adapter: str,
    prompt: str,
    base_commit: str,
    allowed_paths: Sequence[str],
    policy_sha256: str,
    limits: Mapping[str, Any],
    created: str | None = None,
    model: str | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The task pack for one tool step; `limits` may be the policy's whole limits map."""
    missing = [key for key in LIMIT_KEYS if key not in limits]
    if missing:
        raise AgentosError(f"tool task pack: limits lack {', '.join(missing)}",
                           hint="pass the policy's limits")
    pack: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": run,
        "step": step,
        "adapter": adapter,
        "prompt": prompt,
        "base_commit": base_commit,
        "allowed_paths": list(allowed_paths),
        "policy_sha256": policy_sha256,
        "limits": {key: limits[key] for key in LIMIT_KEYS},
        "created": created or utc_now(),
    }
    if model is not None:
        pack["model"] = model
    if argv is not None:
        pack["argv"] = list(argv)
    return _checked(pack, TASK_PACK_SCHEMA, "tool task pack")


def diff_entry(change: Change | Mapping[str, Any]) -> dict[str, Any]:
    """One `diff.files` entry from a model.Change (or an equivalent mapping)."""
    if isinstance(change, Change):
        entry: dict[str, Any] = {"path": change.path, "status": change.status,
                                 "sha256": change.sha256}
        if change.old_path is not None:
            entry["old_path"] = change.old_path
        return entry
    entry = {"path": change.get("path"), "status": change.get("status"),
             "sha256": change.get("sha256")}
    if change.get("old_path") is not None:
        entry["old_path"] = change["old_path"]
    return entry


def build_result_pack(
    *,
    run: str,
    step: str,
    adapter: str,
    tool_name: str,
    tool_version: str,
    tool_path: str,
    argv: Sequence[str],
    exit_code: int,
    duration_s: float,
    transcript_sha256: str,
    claims: Mapping[str, Any],
    diff_files: Sequence[Change | Mapping[str, Any]],
    patch_sha256: str | None,
    decision: str,
    rule_id: str,
    task_pack_sha256: str,
    timed_out: bool = False,
    failure: str | None = None,
) -> dict[str, Any]:
    """The result pack for one tool step; diff files are sorted by path for stability."""
    files = sorted((diff_entry(change) for change in diff_files),
                   key=lambda entry: str(entry.get("path")))
    pack: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": run,
        "step": step,
        "adapter": adapter,
        "tool": {"name": tool_name, "version": tool_version, "path": tool_path},
        "argv": list(argv),
        "exit_code": exit_code,
        "duration_s": round(float(duration_s), 3),
        "transcript_sha256": transcript_sha256,
        "claims": dict(claims),
        "diff": {"files": files, "patch_sha256": patch_sha256},
        "policy_check": {"decision": decision, "rule_id": rule_id},
        "task_pack_sha256": task_pack_sha256,
        "timed_out": timed_out,
        "failure": failure,
    }
    return _checked(pack, RESULT_PACK_SCHEMA, "tool result pack")


def _load(path: Path, schema: vol.Schema, what: str) -> dict[str, Any]:
    """Strict JSON for the data; YAML marks only to name the line of a bad key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AgentosError(f"{what} not found: {path}",
                           hint="was the tool step run? packs live in outputs/<run>/tools/<step>/"
                           ) from None
    except OSError as exc:
        raise AgentosError(f"cannot read {what} {path}: {exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AgentosError(f"{what} is not UTF-8: {exc}", where=f"{path}:1") from None
    except ValueError as exc:
        line = getattr(exc, "lineno", 1)
        raise AgentosError(f"{what} is not valid JSON: {exc}", where=f"{path}:{line}",
                           hint="packs are written by the executor; do not edit them") from None
    if not isinstance(data, dict):
        raise AgentosError(f"{what} must be a JSON object", where=f"{path}:1")
    doc = MarkedDoc(source=path, data=data)
    try:
        doc.lines = load_with_marks(path, what).lines
    except AgentosError:
        pass  # valid JSON that YAML cannot mark (rare escapes): errors name line 1
    result: dict[str, Any] = validate(doc, schema, what)
    return result


def load_task_pack(path: Path) -> dict[str, Any]:
    """Read and validate a tool_task_pack.json; AgentosError (file:line, key) if invalid."""
    return _load(path, TASK_PACK_SCHEMA, "tool task pack")


def load_result_pack(path: Path) -> dict[str, Any]:
    """Read and validate a tool_result_pack.json; AgentosError (file:line, key) if invalid."""
    return _load(path, RESULT_PACK_SCHEMA, "tool result pack")
