"""One typed record per artifact kind the executor writes and the gates read back:
step manifests (steps/<id>.json), their file entries, execution_result.json, and the
`.state/` records that say where a run started and what it applied.

These are the shapes on disk (JSON objects), so they are TypedDicts: the writer builds
exactly these keys, a reader gets them back with `load_*` and still checks values it
does not trust (gates never take a record's word for what git or the files say).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class FileEntry(TypedDict):
    """One changed path as a manifest, the tape and a result pack record it."""

    path: str
    status: str  # A | M | D | T | R
    old_path: str | None
    old_mode: str | None
    new_mode: str | None
    sha256: str | None  # of the landed blob (a symlink: of its target text); None: deleted
    written_sha256: NotRequired[str]  # what the step wrote, when git attributes changed it


class PolicyCheck(TypedDict):
    decision: str  # allow | deny
    rule_id: str
    policy_sha256: str


class SandboxRecord(TypedDict):
    backend: str  # bwrap | none
    wrapper_argv: list[str]
    network: bool


class Manifest(TypedDict):
    """steps/<id>.json: written atomically, only when the step passed."""

    schema_version: int
    run: str
    step: str
    index: int
    op: str
    message: str
    status: str  # changed | unchanged
    parent: str
    commit: str | None
    head: str
    files: list[FileEntry]
    ignored: list[str]
    patch: str | None
    patch_sha256: str | None
    exit_code: int | None
    policy_check: PolicyCheck
    spec_sha256: str
    duration_s: float
    # run and tool steps
    log: NotRequired[str]
    log_sha256: NotRequired[str]
    output_bytes: NotRequired[int]
    output_truncated: NotRequired[bool]
    sandbox: NotRequired[SandboxRecord]
    timed_out: NotRequired[bool]
    tool: NotRequired[dict[str, Any]]
    tool_result_pack_sha256: NotRequired[str]


class StepSummary(TypedDict):
    """One step in execution_result.json."""

    id: str
    op: str
    status: str  # changed | unchanged | failed | pending
    commit: str | None
    patch: str | None
    patch_sha256: str | None
    files: list[dict[str, Any]]  # path, status, sha256 of each FileEntry
    exit_code: int | None


class ExecutionResult(TypedDict):
    """execution_result.json: rewritten whole at every end of an invocation."""

    schema_version: int
    run: str
    status: str  # applied | failed | denied | blocked | rolled_back
    request: dict[str, str]
    policy: dict[str, str]
    sandbox: dict[str, Any]
    repo: str
    branch: str | None
    base: str | None
    pre_apply_head: str | None
    post_apply_head: str | None
    commits_applied: list[str]
    steps: list[StepSummary]
    counts: dict[str, int]
    failure: dict[str, Any] | None


class BaseRecord(TypedDict):
    """.state/base.json: where the run's worktree started."""

    repo: str
    branch: str
    base: str
    git_common_dir: str


class AppliedRecord(TypedDict):
    """.state/applied.json: what apply landed; its presence seals the run."""

    branch: str
    pre_apply_head: str
    post_apply_head: str
    commits: list[str]
    tree: str
    request_sha256: str
    policy_sha256: str
    inputs: dict[str, str]
