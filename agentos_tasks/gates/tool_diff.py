"""TL-B and TL-C: what the tool changed, and what landed.

TL-B: every changed path lies inside the tool's `paths:`, the policy and the worktree (no
absolute, `..` or `.git` path, no escaping symlink, no gitlink in the commit). TL-C: the
result pack's digest is the one the tape's step_end and the manifest recorded, its diff
equals the manifest, the commit's regenerated patch equals the patch file byte for byte,
and every recorded sha256 is its file's content in the commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import PolicyViolation
from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.gates.common import PASS, Fail, Verdict, patch_paths
from agentos_tasks.gates.tool_step import (
    GITLINK_MODE,
    SYMLINK_MODE,
    landed_or_failed,
    nothing_landed,
)
from agentos_tasks.policy import decide_path, normalize_path

if TYPE_CHECKING:
    from agentos_tasks.gates.tool_step import ToolStep
    from agentos_tasks.policy import Policy


# ------------------------------------------------------------------ TL-B


def _outside(ts: ToolStep, policy: Policy, allowed: list[str], path: str) -> str | None:
    """Why `path` lies outside what the tool may change, or None."""
    try:
        normalize_path(path)
    except PolicyViolation as exc:
        return f"{path!r} is outside the worktree ({exc.rule_id}: {exc.what})"
    decision = decide_path(policy, path, tool_paths=allowed, step=ts.id)
    if not decision.allowed:
        return f"{path} is outside the tool's allowed paths ({decision.rule_id}: " \
               f"{decision.reason})"
    return None


def _symlink_escape(link: str, target: str) -> str | None:
    """Lexical check of a committed symlink: relative, inside the worktree, not into .git."""
    if target.startswith("/"):
        return f"{link} -> {target}: absolute target"
    parts = [p for p in link.split("/")[:-1] if p]
    for component in target.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                return f"{link} -> {target}: points outside the worktree"
            parts.pop()
            continue
        if component.lower().rstrip(". ") == ".git":
            return f"{link} -> {target}: points into .git"
        parts.append(component)
    return None


def tl_b(ts: ToolStep, strict: bool) -> Verdict:
    """Every path the tool changed (result pack, manifest, patch file) lies inside its
    allowed paths and the worktree; a committed gitlink or escaping symlink fails. A
    failed step passes when nothing of it landed (strict: only if it stayed inside)."""
    pack = ts.pack()
    policy = ts.policy()
    allowed = ts.allowed_paths()
    state, _event = landed_or_failed(ts)
    paths: list[str] = []
    for entry in pack["diff"]["files"]:
        paths += [p for p in (entry.get("path"), entry.get("old_path")) if p]
    problems = [why for why in (_outside(ts, policy, allowed, p) for p in paths) if why]
    if state == "failed":
        return failed_step_paths(ts, strict, paths, problems)
    if problems:
        raise Fail(f"{ts.id}: {problems[0]}")
    manifest = ts.manifest()
    check_landed_paths(ts, policy, allowed, manifest)
    backend = (manifest.get("sandbox") or {}).get("backend", "?")
    note = "" if backend == "bwrap" else f" (sandbox backend {backend}: writes outside the " \
                                         "worktree were not confined)"
    return PASS, f"{ts.id}: {len(paths)} changed path(s), all inside {allowed} and the " \
                 f"worktree{note}"


def failed_step_paths(ts: ToolStep, strict: bool, paths: list[str],
                      problems: list[str]) -> Verdict:
    """TL-B of a failed step: nothing landed; a write outside the paths is what the
    executor refused (strict, for `agentos tool verify`, fails it)."""
    nothing_landed(ts)
    if problems:
        if strict:
            raise Fail(f"{ts.id}: {problems[0]} (the executor refused the step; nothing "
                       "landed)")
        return PASS, f"{ts.id}: the tool wrote outside its paths ({problems[0]}); the " \
                     "executor refused the step and nothing landed"
    return PASS, f"{ts.id}: failed step; its {len(paths)} changed path(s) stayed inside " \
                 "the allowed paths and nothing landed"


def check_landed_paths(ts: ToolStep, policy: Policy, allowed: list[str],
                       manifest: dict[str, Any]) -> None:
    """The manifest's paths and (changed) the patch file's lie inside the allowed paths;
    the commit holds no gitlink and no symlink that leaves the worktree."""
    files = manifest.get("files", [])
    for entry in files:
        for raw in (entry.get("path"), entry.get("old_path")):
            why = _outside(ts, policy, allowed, raw) if raw else None
            if why:
                raise Fail(f"{ts.id}: manifest: {why}")
    if manifest.get("status") != "changed":
        return
    for raw in patch_paths(ts.ctx, [ts.patch_rel]):
        why = _outside(ts, policy, allowed, raw)
        if why:
            raise Fail(f"{ts.id}: {ts.patch_rel}: {why}")
    commit = str(manifest.get("commit"))
    for entry in files:
        mode = entry.get("new_mode")
        if mode == GITLINK_MODE:
            raise Fail(f"{ts.id}: {entry.get('path')} is a nested repository (gitlink)")
        if mode == SYMLINK_MODE:
            target = ts.ctx.git.run("cat-file", "blob", f"{commit}:{entry['path']}",
                                    check=False)
            if target.returncode != 0:
                raise Fail(f"{ts.id}: symlink {entry['path']} is not in commit "
                           f"{commit[:12]}")
            why = _symlink_escape(str(entry["path"]),
                                  target.stdout.decode("utf-8", "surrogateescape"))
            if why:
                raise Fail(f"{ts.id}: {why}")

# ------------------------------------------------------------------ TL-C


def _file_key(entry: Any) -> tuple[Any, ...]:
    if not isinstance(entry, dict):
        return ("?", repr(entry))
    return (entry.get("path"), entry.get("status"), entry.get("sha256"), entry.get("old_path"))


def tl_c(ts: ToolStep, strict: bool) -> Verdict:
    """The result pack is the one the tape's step_end and the manifest bound, its diff is
    the manifest's and the tape's, and a changed step's commit regenerates the patch file
    and holds the recorded content. A failed step passes when nothing landed (strict:
    never, there is no commit to vouch for)."""
    pack = ts.pack()
    state, event = landed_or_failed(ts)
    if state == "failed":
        return failed_step_landing(ts, pack, event, strict)
    if event is None:  # landed_or_failed gives a landed step its step_end
        raise Fail(f"step {ts.id} has no step_end on the tape")
    manifest, recorded = check_pack_bound(ts, pack, event)
    patch_sha = pack["diff"]["patch_sha256"]
    if patch_sha != manifest.get("patch_sha256") or patch_sha != event.get("patch_sha256"):
        raise Fail(f"{ts.id}: result pack patch_sha256 {str(patch_sha)[:12]} differs from "
                   "the manifest or the tape")
    if manifest.get("status") == "unchanged":
        if recorded or patch_sha is not None or manifest.get("commit") is not None:
            raise Fail(f"{ts.id}: unchanged step with files, a patch or a commit")
        if ts.ctx.exists(ts.patch_rel):
            raise Fail(f"{ts.id}: unchanged step, yet {ts.patch_rel} exists")
        return PASS, f"{ts.id}: the tool changed nothing; no commit, no patch (as recorded)"
    if not recorded:
        raise Fail(f"{ts.id}: changed step with an empty diff")
    commit = check_landed_commit(ts, pack, manifest, event)
    return PASS, f"{ts.id}: pack digest on the tape; {len(recorded)} file(s) == manifest == " \
                 f"commit {commit[:12]}; regenerated patch == {ts.patch_rel}"


def failed_step_landing(ts: ToolStep, pack: dict[str, Any], event: dict[str, Any] | None,
                        strict: bool) -> Verdict:
    """TL-C of a failed step: no manifest, no patch, and the pack names no patch."""
    reason = (event or {}).get("reason", "?")
    if strict:
        raise Fail(f"step {ts.id} did not land (step_failed: {reason}); no commit")
    nothing_landed(ts)
    if pack["diff"]["patch_sha256"] is not None:
        raise Fail(f"{ts.id}: failed step, yet its result pack names a patch")
    return PASS, f"{ts.id}: step failed ({str(reason)[:80]}); no manifest, no patch, " \
                 "nothing landed"


def check_pack_bound(ts: ToolStep, pack: dict[str, Any],
                     event: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """The step_end binds the pack and the manifest by digest, the manifest names the
    pack, and the pack's diff.files are the manifest's and the step_end's. Returns
    (manifest, the pack's file keys)."""
    pack_digest = ts.ctx.sha256(ts.pack_rel)
    if event.get("tool_result_pack_sha256") != pack_digest:
        raise Fail(f"{ts.pack_rel} sha256 {str(pack_digest)[:12]} differs from the tape's "
                   f"step_end tool_result_pack_sha256 "
                   f"{str(event.get('tool_result_pack_sha256'))[:12]}: the pack was rewritten")
    manifest = ts.manifest()
    if ts.ctx.sha256(ts.manifest_rel) != event.get("manifest_sha256"):
        raise Fail(f"{ts.manifest_rel} differs from the tape's manifest_sha256")
    if manifest.get("tool_result_pack_sha256") != pack_digest:
        raise Fail(f"{ts.manifest_rel} records another result pack digest")
    recorded = sorted(map(_file_key, pack["diff"]["files"]), key=repr)
    executed = sorted(map(_file_key, manifest.get("files", [])), key=repr)
    if recorded != executed:
        raise Fail(f"{ts.id}: result pack diff.files ({len(recorded)}) differ from the "
                   f"manifest's files ({len(executed)})")
    on_tape = sorted(((f.get("path"), f.get("status"), f.get("sha256"))
                      for f in event.get("files", [])), key=repr)
    if on_tape != sorted(((k[0], k[1], k[2]) for k in recorded), key=repr):
        raise Fail(f"{ts.id}: result pack diff.files differ from the tape's step_end files")
    return manifest, recorded


def check_landed_commit(ts: ToolStep, pack: dict[str, Any], manifest: dict[str, Any],
                        event: dict[str, Any]) -> str:
    """The patch file is the recorded one; the manifest's commit is the tape's, sits on
    the recorded parent, regenerates the patch file and holds every recorded sha256.
    Returns the commit."""
    patch_sha = pack["diff"]["patch_sha256"]
    actual_patch = ts.ctx.sha256(ts.patch_rel)
    if actual_patch is None:
        raise Fail(f"{ts.patch_rel} is missing")
    if actual_patch != patch_sha:
        raise Fail(f"{ts.patch_rel} sha256 {actual_patch[:12]} is not the recorded "
                   f"{str(patch_sha)[:12]}")
    commit = manifest.get("commit")
    if not isinstance(commit, str) or event.get("commit") != commit:
        raise Fail(f"{ts.id}: manifest commit {commit!r} differs from the tape's")
    git = ts.ctx.git
    if git.try_rev_parse(f"{commit}^{{commit}}") is None:
        raise Fail(f"{ts.id}: commit {commit[:12]} is not in {ts.ctx.repo_path()}")
    if git.try_rev_parse(f"{commit}^") != manifest.get("parent"):
        raise Fail(f"{ts.id}: commit {commit[:12]}'s parent is not the recorded parent")
    if sha256_bytes(git.commit_patch(commit)) != actual_patch:
        raise Fail(f"{ts.id}: the patch regenerated from commit {commit[:12]} differs from "
                   f"{ts.patch_rel}")
    from agentos_tasks.evidence import tree_digests

    wanted = sorted({str(f["path"]) for f in pack["diff"]["files"]})
    actual = tree_digests(git, commit, wanted)
    for entry in pack["diff"]["files"]:
        expected = None if entry["status"] == "D" else entry.get("sha256")
        if actual.get(entry["path"]) != expected:
            raise Fail(f"{ts.id}: {entry['path']} in commit {commit[:12]} does not have the "
                       f"recorded sha256 {str(expected)[:12]}")
    return commit
