"""Plain data shared by the request loader, policy, executor and gates.

No behaviour here: loaders build these, everyone else reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pathlib import Path

Op = Literal["write", "delete", "patch", "run", "tool"]
OPS: tuple[Op, ...] = ("write", "delete", "patch", "run", "tool")
# The coding-agent adapters a tool step may name: the request and policy schemas, the
# task/result packs and tools/adapters/ all use this one tuple.
ADAPTERS: tuple[str, ...] = ("claude", "codex", "opencode", "command")


@dataclass(frozen=True)
class ToolSpec:
    """`tool:` of a step: which adapter, what to ask, where it may write."""

    adapter: str  # claude | codex | opencode | command
    prompt: str
    paths: tuple[str, ...]  # gitignore globs the tool may change (within the policy)
    argv: tuple[str, ...] = ()  # for the `command` adapter
    model: str | None = None


@dataclass(frozen=True)
class Step:
    id: str
    index: int  # 0-based position in the request
    op: Op
    message: str
    # source line of the step in the request file: for error messages only, never part
    # of what the step means (evidence.step_spec / step_record leave it out)
    line: int = field(compare=False)
    path: str | None = None  # write / delete target, as written in the request
    content: bytes | None = None  # write: the bytes to write (content or content_file)
    content_file: Path | None = None  # absolute, resolved relative to the request file
    patch_file: Path | None = None  # absolute
    patch_paths: tuple[str, ...] = ()  # paths a patch touches (old and new names)
    argv: tuple[str, ...] = ()  # run
    expect_exit: int = 0
    tool: ToolSpec | None = None
    input_files: tuple[Path, ...] = ()  # files the step reads (content_file, patch)

    def declared_paths(self) -> tuple[str, ...]:
        """Paths the step says it will touch, for the pre-run policy check."""
        if self.op in ("write", "delete") and self.path is not None:
            return (self.path,)
        if self.op == "patch":
            return self.patch_paths
        return ()


@dataclass(frozen=True)
class Question:
    id: str
    text: str


@dataclass(frozen=True)
class Author:
    name: str = "agentos"
    email: str = "agentos@localhost"


@dataclass(frozen=True)
class Request:
    source: Path  # absolute path of the request file
    sha256: str  # digest of the run's request: the file's bytes (see presented_sha256)
    version: int
    id: str
    repo: Path  # absolute
    init_repo: bool
    base: str | None
    branch: str | None
    policy: Path | None  # absolute, None = default policy
    author: Author
    steps: tuple[Step, ...]
    questions: tuple[Question, ...] = ()
    lines: dict[str, int] = field(default_factory=dict, compare=False)  # top-level key -> line
    # Set when the file given now differs from the run's recorded request only in form
    # (comments, blank lines, indentation, key order, flow/block style): the digest of the
    # file given now. `sha256` is then the recorded request's, the one the run's evidence
    # names (start.adopt_recorded_request).
    presented_sha256: str | None = field(default=None, compare=False)


ChangeStatus = Literal["A", "M", "D", "R", "T"]


@dataclass(frozen=True)
class Change:
    """One entry of what a step really changed in its worktree, computed by the executor.

    `ignored` entries are files matched by .gitignore: they never land (git does not
    commit them) but they are still judged by the policy.
    """

    path: str  # worktree-relative, posix, normalised
    status: ChangeStatus
    old_path: str | None = None  # renames
    old_mode: str | None = None  # git modes: 100644 100755 120000 160000
    new_mode: str | None = None
    sha256: str | None = None  # of the new content (None for deletions)
    ignored: bool = False


class Status(StrEnum):
    """A gate's verdict. The values are what reports/gates.json, gates.xml, report.md and
    the signed statement carry, so they never change; members compare equal to them."""

    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    FAIL = "FAIL"
    NOT_APPLICABLE = "NOT_APPLICABLE"
