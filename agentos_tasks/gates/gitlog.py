"""Git history as EX-D reads it, in a constant number of git calls for the whole run:
`git log` records with their raw diffs or full messages, blob digests from one
`cat-file --batch`, and the format-patch options that regenerate the patch files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.gates.common import Fail

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.git import Git


# Exactly the options of agentos_tasks.git.Git.commit_patch (which exports each step's
# patch), so `format-patch --stdout base..head` reproduces the patch files byte for byte.
# tests/test_gates_executor.py checks that the two stay in step.
FORMAT_PATCH_OPTIONS: tuple[str, ...] = (
    "--binary", "--full-index", "-k", "--no-signature", "--no-numbered", "--no-thread",
    "--no-attach", "--no-renames", "--no-textconv", "--no-ext-diff", "--no-color",
    "--encoding=UTF-8")
_NULL_MODE = "000000"


@dataclass
class LoggedCommit:
    """One commit as `git log` shows it: identity, tree, and (worktree range) its diff."""

    commit: str
    parents: list[str]
    tree: str
    author: tuple[str, str]
    committer: tuple[str, str]
    message: str = ""
    # (status, path, old mode, new mode, new blob) per changed path, --no-renames
    changes: list[tuple[str, str, str | None, str | None, str]] = field(default_factory=list)


def _mode(raw: str) -> str | None:
    return None if raw == _NULL_MODE else raw


def log_with_raw_diffs(git: Git, old: str, new: str) -> list[LoggedCommit]:
    """Every commit of old..new, oldest first, with `--raw --no-renames` diffs: one call."""
    out = git.run("log", "--reverse", "--topo-order", "--no-renames", "--raw", "-z",
                  "--no-abbrev", "--format=%x1e%H%x1f%P%x1f%T%x1f%an%x1f%ae%x1f%cn%x1f%ce",
                  f"{old}..{new}", "--", check=False)
    if out.returncode != 0:
        raise Fail(f"git cannot list {old[:12]}..{new[:12]} in {git.cwd}: "
                   f"{out.stderr.decode('utf-8', 'replace').strip()[:120]}")
    tokens = out.stdout.split(b"\0")
    commits: list[LoggedCommit] = []
    i = 0
    while i < len(tokens):
        token = tokens[i].lstrip(b"\n")
        i += 1
        if not token:
            continue
        if token.startswith(b"\x1e"):
            fields = token[1:].decode("utf-8", "surrogateescape").split("\x1f")
            if len(fields) != 7:
                raise Fail(f"unparseable git log record {token[:60]!r}")
            commit, parents, tree, an, ae, cn, ce = fields
            commits.append(LoggedCommit(commit, parents.split(), tree, (an, ae), (cn, ce)))
        elif token.startswith(b":") and commits and i < len(tokens):
            meta = token[1:].decode().split(" ")
            path = tokens[i].decode("utf-8", "surrogateescape")
            i += 1
            commits[-1].changes.append((meta[4][:1], path, _mode(meta[0]), _mode(meta[1]),
                                        meta[3]))
        else:
            raise Fail(f"unparseable git log output near {token[:60]!r}")
    return commits


def branch_log(git: Git, old: str, new: str) -> list[LoggedCommit]:
    """Commits of old..new with their full messages, oldest first, in one git call."""
    out = git.run("log", "-z", "--reverse", "--topo-order",
                  "--format=%H%x1f%P%x1f%T%x1f%an%x1f%ae%x1f%cn%x1f%ce%x1f%B",
                  f"{old}..{new}", "--", check=False)
    if out.returncode != 0:
        raise Fail(f"git cannot list {old[:12]}..{new[:12]} in {git.cwd}: "
                   f"{out.stderr.decode('utf-8', 'replace').strip()[:120]}")
    found = []
    for record in out.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if not record:
            continue
        fields = record.split("\x1f", 7)
        if len(fields) != 8:
            raise Fail(f"unparseable git log record {record[:60]!r}")
        commit, parents, tree, an, ae, cn, ce, message = fields
        found.append(LoggedCommit(commit, parents.split(), tree, (an, ae), (cn, ce), message))
    return found


def blob_digests(git: Git, names: list[str]) -> dict[str, str | None]:
    """sha256 of each object's content (`<oid>` or `<rev>:<path>`; None when missing or
    not a blob), all in one `cat-file --batch` call."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    out = git.run("cat-file", "--batch", input="".join(f"{n}\n" for n in wanted).encode(
        "utf-8", "surrogateescape")).stdout
    digests: dict[str, str | None] = {}
    pos = 0
    for name in wanted:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if header[-1] in (b"missing", b"ambiguous") or len(header) != 3:
            digests[name] = None
            continue
        size = int(header[2])
        digests[name] = sha256_bytes(out[pos:pos + size]) if header[1] == b"blob" else None
        pos += size + 1
    return digests


def commits_after(ctx: GateContext, post: str, head: str | None) -> int:
    """How many commits the branch holds after the run's post-apply head. A signed run
    keeps verifying when the branch moves on: its commits must stay on the branch's
    first-parent history, unbroken (commits are content-addressed, so the range and its
    trees are then exactly what landed); a branch that lost, rewound or rewrote them
    FAILs."""
    if head is None:
        raise Fail(f"branch {ctx.branch()} does not exist in {ctx.repo_path()}")
    if head == post:
        return 0
    if ctx.git.run("merge-base", "--is-ancestor", post, head, check=False).returncode != 0:
        raise Fail(f"branch head {head[:12]} does not contain the run's post-apply head "
                   f"{post[:12]}: the branch lost, rewound or rewrote the run's commits")
    later = ctx.git.run("rev-list", "--first-parent", "--parents", f"{post}..{head}").text
    lines = [line.split() for line in later.splitlines() if line.strip()]
    if not lines or len(lines[-1]) < 2 or lines[-1][1] != post:
        raise Fail(f"the run's post-apply head {post[:12]} is not on the first-parent "
                   f"history of branch head {head[:12]} (merged in from a side branch)")
    return len(lines)


def branch_position(ctx: GateContext, post: str, head: str | None) -> str:
    later = commits_after(ctx, post, head)
    if not later:
        return "branch at post-apply head"
    return f"branch moved on: {later} later commit(s) after post-apply head {post[:12]} " \
           f"(now {str(head)[:12]}), the run's commits intact"
