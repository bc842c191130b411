"""Decisions after a step: what really changed in the worktree, judged for what it is.

`check_changes` judges every path the executor found changed (tracked, untracked and
gitignored; a whole new directory is expanded to what is inside it) with
`decide.decide_path`, and then what the filesystem says about it: a symlink by what it
resolves to (deny and ask apply to the target too, `aliases` for links to directories),
hard links, nested repositories, a file that lands executable by ``paths.executable``,
sizes and counts by the limits. A change the host cannot even open is a decision, never
a traceback. The gates call it again over the recorded diff.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks.errors import PolicyViolation
from agentos_tasks.leftovers import walk
from agentos_tasks.model import Change
from agentos_tasks.policy.aliases import reaches_below
from agentos_tasks.policy.decide import Decision, decide_executable, decide_path
from agentos_tasks.policy.paths import is_git_component, normalize_path, refuse_symlinked_parents

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agentos_tasks.model import Step
    from agentos_tasks.policy.schema import Policy

# git modes
_SYMLINK_MODE = "120000"
_EXECUTABLE_MODE = "100755"
_GITLINK_MODE = "160000"


def check_changes(policy: Policy, worktree: Path, changes: Sequence[Change], *,
                  step: Step) -> Decision:
    """Post-step check over what REALLY changed in `worktree` (computed by the executor).

    Judges every path (and the old path of a rename) with `decide_path`, inside the tool's
    own globs for tool steps; refuses symlinks that are absolute or point outside the
    worktree, into .git or at its root, or resolve to what deny/ask rules cover (under
    that rule's id), hard-linked files, nested repositories (gitlinks), files landing
    executable outside ``paths.executable``, files above `limits.max_file_bytes`, more
    than `limits.max_changed_files` landing changes, and changes the host cannot open.
    """
    root = worktree.resolve()
    changes = _expand_directories(root, changes)
    landing = [change for change in changes if not change.ignored]
    if len(landing) > policy.limits.max_changed_files:
        return Decision(False, "limits.max_changed_files", f"{len(landing)} changed files "
                        f"exceed limits.max_changed_files={policy.limits.max_changed_files}",
                        step.id, step.id)
    tool_paths = step.tool.paths if step.op == "tool" and step.tool is not None else None
    for change in changes:
        try:
            decision = _check_change(policy, root, change, tool_paths, step.id)
        except OSError as exc:
            decision = _uninspectable(change.path, exc)
        if not decision.allowed:
            return dataclasses.replace(decision, step=step.id)
    return Decision(True, "allow", f"{len(landing)} changes ({len(changes) - len(landing)} "
                    "ignored) allowed", step.id, step.id)


def _expand_directories(root: Path, changes: Sequence[Change]) -> list[Change]:
    """Replace a change that is a whole directory (git lists an untracked or ignored
    directory as one entry unless told `-uall`) by one change per file or link inside it,
    so nothing inside escapes judgement."""
    expanded: list[Change] = []
    for change in changes:
        try:
            normal = normalize_path(change.path)
            refuse_symlinked_parents(root, normal, include_leaf=True)
            target = root / normal
            is_dir = target.is_dir()
        except (PolicyViolation, OSError):
            expanded.append(change)  # judged (and refused) as it is
            continue
        if change.status == "D" or change.new_mode == _GITLINK_MODE or not is_dir:
            expanded.append(change)
            continue
        try:
            inside = _entries_below(target)
        except OSError as exc:
            raise PolicyViolation("paths.invalid", f"cannot list {normal}: {exc}") from None
        expanded += [Change(f"{normal}/{rel}", "A", ignored=change.ignored) for rel in inside]
    return expanded


def _entries_below(directory: Path) -> list[str]:
    """Every non-directory below `directory` (files, links, other nodes), relative, sorted;
    fd-based and iterative (`leftovers.walk`): any depth, never through a symlink."""
    found: list[str] = []

    def visit(_fd: int, rel: str, _name: str, info: os.stat_result) -> bool:
        if stat.S_ISDIR(info.st_mode):
            return True
        found.append(rel)
        return False

    walk(directory, visit)
    return sorted(found)


def _uninspectable(path: str, exc: OSError) -> Decision:
    """A change the host cannot even lstat is refused, never a traceback."""
    if exc.errno == errno.ENAMETOOLONG:
        return Decision(False, "limits.path_length", f"{len(os.fsencode(path))}-byte path is "
                        "too long for the host to open (ENAMETOOLONG)", path[:200])
    return Decision(False, "paths.invalid", f"cannot inspect {path!a}: {exc.strerror}",
                    path[:200])


def _check_change(policy: Policy, root: Path, change: Change,
                  tool_paths: Sequence[str] | None, step_id: str) -> Decision:
    rule = "allow"
    for raw in (change.path, change.old_path):
        if raw is None:
            continue
        decision = decide_path(policy, raw, tool_paths=tool_paths, ignored=change.ignored,
                               step=step_id)
        if not decision.allowed:
            return decision
        if raw == change.path:
            rule = decision.rule_id  # the allow (or approved ask) rule that decided
    normal = normalize_path(change.path)  # decide_path accepted it
    if change.new_mode == _GITLINK_MODE:
        return Decision(False, "paths.git", f"{normal} is a nested git repository (gitlink)",
                        normal)
    if change.status == "D":
        return Decision(True, rule, f"{normal} deleted", normal)
    try:
        refuse_symlinked_parents(root, normal)
    except PolicyViolation as exc:
        return Decision(False, exc.rule_id, exc.what, normal)
    target = root / normal
    try:
        info = target.lstat()
    except FileNotFoundError:
        return Decision(True, rule, f"{normal} no longer exists", normal)
    if stat.S_ISLNK(info.st_mode) or change.new_mode == _SYMLINK_MODE:
        linked = _check_symlink(policy, root, normal)
        return dataclasses.replace(linked, rule_id=rule) if linked.allowed else linked
    if stat.S_ISREG(info.st_mode):
        if info.st_nlink > 1:
            return Decision(False, "paths.hardlink", f"{normal} has {info.st_nlink} hard links",
                            normal)
        if not change.ignored and info.st_size > policy.limits.max_file_bytes:
            return Decision(False, "limits.max_file_bytes", f"{normal} has {info.st_size} "
                            f"bytes > limits.max_file_bytes={policy.limits.max_file_bytes}",
                            normal)
        # git records the owner's x bit: 100755 lands when it is set (ignored files never land)
        if not change.ignored and info.st_mode & stat.S_IXUSR \
                and change.old_mode != _EXECUTABLE_MODE:
            decision = decide_executable(policy, normal)
            if not decision.allowed:
                return decision
    return Decision(True, rule, f"{normal} allowed", normal)


def _check_symlink(policy: Policy, root: Path, normal: str) -> Decision:
    """A symlink may only point, relatively, to somewhere inside the worktree but not .git
    or the root itself, and never to a path deny or ask rules cover (`_check_alias`)."""
    link = root / normal
    try:
        target = os.readlink(link)
    except OSError:
        return Decision(False, "paths.symlink", f"{normal} was recorded as a symlink but is "
                        "not one", normal)
    if target.startswith("/"):
        return Decision(False, "paths.symlink", f"{normal} -> {target}: absolute target",
                        normal)
    parent = normal.rsplit("/", 1)[0] if "/" in normal else ""
    parts = [part for part in parent.split("/") if part]
    for component in target.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                return Decision(False, "paths.symlink", f"{normal} -> {target}: points "
                                "outside the worktree", normal)
            parts.pop()
            continue
        if is_git_component(component):
            return Decision(False, "paths.symlink", f"{normal} -> {target}: points into .git",
                            normal)
        parts.append(component)
    # The lexical answer can be fooled by symlinks already in the tree; ask the filesystem.
    resolved = Path(os.path.realpath(link))
    if resolved != root and root not in resolved.parents:
        return Decision(False, "paths.symlink", f"{normal} -> {target}: resolves outside the "
                        f"worktree ({resolved})", normal)
    if any(is_git_component(part) for part in resolved.relative_to(root).parts):
        return Decision(False, "paths.symlink", f"{normal} -> {target}: resolves into .git",
                        normal)
    if resolved == root or not parts:
        return Decision(False, "paths.symlink", f"{normal} -> {target}: resolves to the "
                        "repository root, which would alias .git and every denied path", normal)
    # where it ends (through every link on the way) and what its text names, both judged
    holds_paths = resolved.is_dir() or not os.path.lexists(resolved)  # dangling: may become one
    for aliased in dict.fromkeys((resolved.relative_to(root).as_posix(), "/".join(parts))):
        decision = _check_alias(policy, f"{normal} -> {target}", aliased, holds_paths)
        if decision is not None:
            return Decision(False, decision.rule_id, decision.reason, normal)
    return Decision(True, "allow", f"{normal} -> {target} stays inside the worktree", normal)


def _check_alias(policy: Policy, link: str, aliased: str, holds_paths: bool) -> Decision | None:
    """The denial, if `aliased` (what a link resolves to) is a path deny or ask rules cover:
    itself, or — for a directory — something below it that only its name puts there."""
    segments = aliased.split("/")
    for kind, rules in (("deny", policy.deny), ("ask", policy.ask)):
        suffix = "" if kind == "deny" else ": needs approval, and a headless run denies it"
        for rule in rules:
            if rule.matches(aliased):
                return Decision(False, rule.rule_id, f"{link} resolves to {aliased}, which "
                                f"matches {kind} glob {rule.glob!r}{suffix}", aliased)
            if holds_paths and reaches_below(rule.glob, segments, ignore_case=True):
                return Decision(False, rule.rule_id, f"{link} aliases the directory {aliased}: "
                                f"paths below it match {kind} glob {rule.glob!r}{suffix}",
                                aliased)
    return None


__all__ = ["check_changes"]
