"""audit/request.json against audit/request.yaml: the normalised record every gate
re-decides from must say exactly what the recorded request file and inputs say.

`record_disagreement` rebuilds what the executor derives from the request file (the
top-level keys; each step's id, op, message, path, content digest, argv, tool spec,
recorded inputs and patch paths) and names the first field the record gets wrong.
GateContext.request_record refuses a record that disagrees, so it cannot be rewritten to
fit a policy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from agentos_tasks.fsutil import RefusedFile, is_regular, read_regular, sha256_bytes
from agentos_tasks.model import OPS


def _arg_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def record_disagreement(record: dict[str, Any], raw_yaml: bytes, inputs: Path) -> str | None:
    """First field where the normalised request record differs from the request file."""
    if sha256_bytes(raw_yaml) != record.get("sha256"):
        return "sha256 of request.yaml"
    doc = parse_request_yaml(raw_yaml)
    if doc is None:
        return "request.yaml does not parse"
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        return "request.yaml has no steps"
    problem = top_level_disagreement(record, doc)
    if problem is not None:
        return problem
    steps = record.get("steps")
    if not isinstance(steps, list) or len(steps) != len(doc["steps"]):
        return "number of steps"
    for index, (raw, rec) in enumerate(zip(doc["steps"], steps, strict=True)):
        problem = step_disagreement(index, raw, rec, inputs)
        if problem is not None:
            return problem
    return None


def top_level_disagreement(record: dict[str, Any], doc: dict[str, Any]) -> str | None:
    """The first top-level key (repo, id, branch, base, ...) the record gets wrong."""
    source_dir = Path(str(record.get("source", ""))).parent
    repo = str(doc.get("repo", ""))
    candidates = {str((source_dir / repo).resolve()), os.path.normpath(source_dir / repo)}
    if str(record.get("repo")) not in candidates:
        return "repo"
    author = doc.get("author") or {"name": "agentos", "email": "agentos@localhost"}
    top = {"id": doc.get("id"), "branch": doc.get("branch"), "base": doc.get("base"),
           "init_repo": bool(doc.get("init_repo", False)), "author": author,
           "questions": [{"id": q.get("id"), "text": q.get("text")}
                         for q in doc.get("questions") or [] if isinstance(q, dict)]}
    for key, value in top.items():
        if record.get(key) != value:
            return key
    return None


def expected_step(index: int, raw: dict[str, Any]) -> dict[str, Any]:
    """The fields the executor records for request step `raw` (no input files read)."""
    ops = [op for op in OPS if op in raw]
    expected: dict[str, Any] = {"id": raw.get("id"), "index": index,
                                "op": ops[0] if len(ops) == 1 else None,
                                "message": raw.get("message", raw.get("id"))}
    op = expected["op"]
    if op in ("write", "delete"):
        expected["path"] = (raw[op] or {}).get("path")
    if op == "write" and "content" in (raw["write"] or {}):
        expected["content_sha256"] = sha256_bytes(str(raw["write"]["content"]).encode())
    if op == "run":
        expected["argv"] = [_arg_text(a) for a in raw["run"] or []]
    if op in ("run", "tool"):
        expected["expect_exit"] = raw.get("expect_exit", 0)
    if op == "tool":
        tool = raw["tool"] or {}
        expected["tool"] = {"adapter": tool.get("adapter"), "prompt": tool.get("prompt"),
                            "paths": list(tool.get("paths") or []),
                            "argv": [_arg_text(a) for a in tool.get("argv") or []],
                            "model": tool.get("model")}
    return expected


def step_disagreement(index: int, raw: Any, rec: Any, inputs: Path) -> str | None:
    """The first field of step `index` the record gets wrong, its recorded inputs last."""
    if not isinstance(raw, dict) or not isinstance(rec, dict):
        return f"steps[{index}]"
    expected = expected_step(index, raw)
    for key, value in expected.items():
        if rec.get(key) != value:
            return f"steps[{index}].{key}"
    return input_disagreement(index, expected["op"], raw, rec, inputs)


def input_disagreement(index: int, op: str | None, raw: dict[str, Any], rec: dict[str, Any],
                       inputs: Path) -> str | None:
    """A write step's content_file and a patch step's patch must be in audit/inputs/ (and
    the patch must touch the recorded paths)."""
    from agentos_tasks.request import patch_paths

    if op == "write" and "content_file" in (raw["write"] or {}):
        if not is_regular(inputs / str(rec.get("content_sha256"))):
            return f"steps[{index}]: recorded input audit/inputs/{rec.get('content_sha256')}"
    if op == "patch":
        recorded = inputs / str(rec.get("patch_sha256"))
        try:
            patch_bytes = read_regular(recorded)
        except (OSError, RefusedFile):
            return f"steps[{index}]: recorded patch input is missing or differs"
        if sha256_bytes(patch_bytes) != rec.get("patch_sha256"):
            return f"steps[{index}]: recorded patch input is missing or differs"
        if list(patch_paths(patch_bytes)) != rec.get("patch_paths"):
            return f"steps[{index}].patch_paths"
    return None

_YAML_DOCS: dict[str, Any] = {}


def parse_request_yaml(raw: bytes) -> Any:
    """The recorded request file as plain data (libyaml when available), parsed once per
    content digest; None when it does not parse."""
    import yaml

    digest = hashlib.sha256(raw).hexdigest()
    if digest not in _YAML_DOCS:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            _YAML_DOCS[digest] = yaml.load(raw, Loader=loader)  # noqa: S506 - safe loader
        except yaml.YAMLError:
            _YAML_DOCS[digest] = None
    return _YAML_DOCS[digest]
