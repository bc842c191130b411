"""EX-D: every patch file is the patch git regenerates from its step's commit, byte for
byte; the commits chain from base as the manifests say, with the files the manifests,
tape and execution_result list; and the branch holds one commit per changed step, in
request order, with the step's message, the tested tree and the request's author.
A constant number of git calls for the whole run (gitlog.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import (
    NA,
    PASS,
    RUN_INPUTS,
    Fail,
    Gate,
    Verdict,
    changed_steps,
    executed_manifests,
    last_step_end,
    require_chain,
    status_of,
    verdict,
)
from agentos_tasks.gates.gitlog import (
    FORMAT_PATCH_OPTIONS,
    blob_digests,
    branch_log,
    commits_after,
    log_with_raw_diffs,
)
from agentos_tasks.policy import normalize_path

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.gates.gitlog import LoggedCommit


def request_yaml_messages(ctx: GateContext) -> list[tuple[str, str]]:
    """(id, message) of every step as the recorded request file itself says."""
    steps = ctx.request_yaml()["steps"]
    return [(str(s["id"]), str(s.get("message", s["id"]))) for s in steps]


def file_key(entry: dict[str, Any]) -> tuple[Any, Any, Any]:
    return entry.get("path"), entry.get("status"), entry.get("sha256")


def request_author(ctx: GateContext) -> tuple[str, str]:
    author = ctx.request_record.get("author") or {}
    return str(author.get("name")), str(author.get("email"))


def manifest_chain(ctx: GateContext, base: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """(manifests in request order, last head): each step's parent is the previous step's
    head (the base for the first), a changed step's head is its commit, an unchanged
    step's head is its parent and it has no commit, patch or files."""
    ids = ctx.step_ids()
    manifests = executed_manifests(ctx)
    expected = base
    for position, (step_id, manifest) in enumerate(manifests):
        if ids[position] != step_id:
            raise Fail(f"step {step_id} has a manifest, step {ids[position]} before it none")
        if manifest.get("step") != step_id:
            raise Fail(f"steps/{step_id}.json is the manifest of {manifest.get('step')!r}")
        parent, commit, head = manifest.get("parent"), manifest.get("commit"), \
            manifest.get("head")
        if parent != expected:
            what = "the base" if position == 0 else f"step {ids[position - 1]}'s head"
            raise Fail(f"step {step_id}: parent {str(parent)[:12]} is not {what} "
                       f"{expected[:12]}")
        status = manifest.get("status")
        if status == "changed":
            if not isinstance(commit, str) or head != commit:
                raise Fail(f"step {step_id}: head {str(head)[:12]} is not its commit "
                           f"{str(commit)[:12]}")
        elif status == "unchanged":
            if commit is not None or head != parent or manifest.get("files") or \
                    manifest.get("patch") is not None:
                raise Fail(f"step {step_id}: unchanged, yet it records a commit, files, a "
                           "patch or a head other than its parent")
        else:
            raise Fail(f"step {step_id}: unknown status {status!r}")
        expected = str(head)
    return manifests, expected


def _listed(entries: Any) -> list[tuple[Any, Any, Any]]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise Fail("a files list is not a list of objects")
    return sorted(map(file_key, entries), key=repr)


def check_history(ctx: GateContext, base: str) -> tuple[int, dict[str, LoggedCommit]]:
    """The worktree commits are exactly what the manifests, tape, result and patch files
    say (fix for patch-id-only comparisons): one `git log --raw`, one `cat-file --batch`
    and one `format-patch` over base..last head, whatever the number of steps.

    Returns (number of changed steps, commit -> logged commit)."""
    manifests, final_head = manifest_chain(ctx, base)
    changed = [(s, m) for s, m in manifests if m.get("status") == "changed"]
    git = ctx.git
    logged = log_with_raw_diffs(git, base, final_head) if changed else []
    named = [str(m["commit"]) for _, m in changed]
    if [c.commit for c in logged] != named:
        raise Fail(f"{base[:12]}..{final_head[:12]} holds {len(logged)} commit(s), the "
                   f"manifests name {len(named)}: the commits are not the recorded ones")
    author = request_author(ctx)
    record_steps = {str(s.get("id")): s for s in ctx.request_record["steps"]}
    blobs = blob_digests(git, [c[4] for commit in logged for c in commit.changes
                               if c[0] != "D"] + unchanged_blob_names(manifests, record_steps))
    by_commit = {c.commit: c for c in logged}
    ends = last_step_end(ctx)
    in_result = {str(s.get("id")): s for s in ctx.result.get("steps", [])
                 if isinstance(s, dict)}
    for step_id, manifest in manifests:
        step = record_steps[step_id]
        if manifest.get("status") == "unchanged":
            check_unchanged_step(step_id, step, manifest, blobs)
            continue
        commit = by_commit[str(manifest["commit"])]
        truth = check_step_commit(step_id, step, manifest, commit, author=author,
                                  blobs=blobs)
        if _listed(ends.get(step_id, {}).get("files", [])) != truth:
            raise Fail(f"the tape's step_end of {step_id} lists other files than commit "
                       f"{commit.commit[:12]}")
        if _listed(in_result.get(step_id, {}).get("files", [])) != truth:
            raise Fail(f"execution_result's files of {step_id} differ from commit "
                       f"{commit.commit[:12]}")
    if changed:
        compare_patches(ctx, base, final_head, changed)
    return len(changed), by_commit


def unchanged_blob_names(manifests: list[tuple[str, dict[str, Any]]],
                         record_steps: dict[str, dict[str, Any]]) -> list[str]:
    """`<parent>:<path>` of every unchanged write or delete step (what its parent holds)."""
    names = []
    for step_id, manifest in manifests:
        step = record_steps[step_id]
        if manifest.get("status") == "unchanged" and step.get("op") in ("write", "delete"):
            names.append(f"{manifest['parent']}:{normalize_path(str(step['path']))}")
    return names


def check_unchanged_step(step_id: str, step: dict[str, Any], manifest: dict[str, Any],
                         blobs: dict[str, str | None]) -> None:
    """An unchanged write found its content already at the parent; an unchanged delete
    found its path already gone."""
    if step.get("op") == "write":
        name = f"{manifest['parent']}:{normalize_path(str(step['path']))}"
        if blobs.get(name) != step.get("content_sha256"):
            raise Fail(f"step {step_id}: unchanged, yet {step['path']} at its parent "
                       "does not hold the requested content")
    if step.get("op") == "delete" and blobs.get(
            f"{manifest['parent']}:{normalize_path(str(step['path']))}") is not None:
        raise Fail(f"step {step_id}: unchanged, yet {step['path']} is still there")


def check_step_commit(step_id: str, step: dict[str, Any], manifest: dict[str, Any],
                      commit: LoggedCommit, *, author: tuple[str, str],
                      blobs: dict[str, str | None]) -> list[tuple[Any, Any, Any]]:
    """A changed step's commit sits on its parent, is by the request's author and changes
    exactly the manifest's files, with their modes; returns the commit's (path, status,
    sha256) list, the truth the tape and execution_result must match too."""
    if commit.parents != [manifest["parent"]]:
        raise Fail(f"step {step_id}: commit {commit.commit[:12]} has parent(s) "
                   f"{[p[:12] for p in commit.parents]}, the manifest says "
                   f"{str(manifest['parent'])[:12]}")
    if commit.author != author or commit.committer != author:
        raise Fail(f"step {step_id}: commit {commit.commit[:12]} is by {commit.author} / "
                   f"{commit.committer}, not the request's author {author}")
    truth = sorted(((path, status, None if status == "D" else blobs.get(oid))
                    for status, path, _, _, oid in commit.changes), key=repr)
    if _listed(manifest.get("files")) != truth:
        raise Fail(f"steps/{step_id}.json files differ from the diff of commit "
                   f"{commit.commit[:12]} ({[t[0] for t in truth][:4]})")
    check_commit_modes(step_id, step, manifest, commit)
    return truth


def check_commit_modes(step_id: str, step: dict[str, Any], manifest: dict[str, Any],
                       commit: LoggedCommit) -> None:
    """The modes a manifest records are the commit's; a write step's file lands 0644 when
    new and keeps its mode otherwise."""
    modes = {path: (old, new) for _, path, old, new, _ in commit.changes}
    if step.get("op") == "write":
        # the executor writes a new file 0644 and keeps an existing file's mode
        for status, path, old, new, _ in commit.changes:
            if new != ("100644" if status == "A" else old):
                raise Fail(f"write step {step_id}: commit {commit.commit[:12]} gives "
                           f"{path} mode {new} (was {old})")
    for entry in manifest["files"]:
        old, new = modes[entry["path"]]
        if entry.get("old_mode") not in (None, old) or entry.get("new_mode") not in \
                (None, new) or entry.get("old_path") is not None:
            raise Fail(f"steps/{step_id}.json: modes of {entry['path']} differ from "
                       f"commit {commit.commit[:12]}")

def compare_patches(ctx: GateContext, base: str, final_head: str,
                    changed: list[tuple[str, dict[str, Any]]]) -> None:
    """patches/<step>.patch == the patch git regenerates from the step's commit, byte for
    byte (whitespace included, which `git patch-id` ignores), for every changed step in
    one `format-patch --stdout` call: git writes one blank line between two patches."""
    out = ctx.git.run("format-patch", "--stdout", *FORMAT_PATCH_OPTIONS,
                      f"{base}..{final_head}", "--", check=False)
    if out.returncode != 0:
        raise Fail(f"git format-patch {base[:12]}..{final_head[:12]} failed: "
                   f"{out.stderr.decode('utf-8', 'replace').strip()[:120]}")
    regenerated = out.stdout
    pos = 0
    for number, (step_id, manifest) in enumerate(changed):
        data = ctx.read_bytes(f"patches/{step_id}.patch")
        if number:
            if regenerated[pos:pos + 1] != b"\n":
                raise Fail(f"patches/{step_id}.patch: format-patch output has no separator "
                           "before it")
            pos += 1
        if not data.startswith(f"From {manifest['commit']} ".encode()) or \
                regenerated[pos:pos + len(data)] != data:
            raise Fail(f"patches/{step_id}.patch is not the patch regenerated from commit "
                       f"{str(manifest['commit'])[:12]} (byte compare; a patch id alone "
                       "ignores whitespace)")
        pos += len(data)
    if pos != len(regenerated):
        raise Fail(f"format-patch of {base[:12]}..{final_head[:12]} holds more than the "
                   "patch files")


@verdict
def ex_d_commits(ctx: GateContext) -> Verdict:
    """Every changed step's patch file is the patch of its worktree commit byte for byte;
    the commits chain from base as the manifests say, by the request's author, with the
    files the manifests, tape and result list; the branch holds one commit per changed
    step, in request order, each with the step's message (from audit/request.yaml), the
    tree of the step's commit and the request's author."""
    require_chain(ctx)
    status = status_of(ctx)
    result = ctx.result
    base = result.get("base")
    if base is None:
        if status == "applied" or executed_manifests(ctx):
            raise Fail("steps ran, but execution_result records no base")
        return NA, f"run {status} before a base was recorded: nothing to land"
    count, worktree_commits = check_history(ctx, str(base))
    head = ctx.branch_head()
    if head is None:
        raise Fail(f"branch {ctx.branch()} does not exist in {ctx.repo_path()}")
    if status != "applied":
        if head != base:
            extra = ctx.git.commits_between(str(base), head)
            raise Fail(f"run {status}, yet the branch holds {len(extra)} commit(s) past base")
        return PASS, f"run {status}: no commit landed on {ctx.branch()}; {count} patch " \
                     "file(s) == their commits byte for byte"
    pre = result.get("pre_apply_head")
    if not pre:
        raise Fail("applied run without pre_apply_head")
    if pre != base:
        raise Fail(f"pre_apply_head {str(pre)[:12]} is not the base {str(base)[:12]}")
    post = result.get("post_apply_head")
    if not isinstance(post, str):
        raise Fail("applied run without post_apply_head")
    try:
        later = commits_after(ctx, post, head)  # later commits on the branch are not the run's
    except Fail:
        check_branch_commits(ctx, pre, str(head), worktree_commits)  # names what differs
        raise
    landed = check_branch_commits(ctx, pre, post, worktree_commits)
    if later:
        return PASS, f"{landed} commit(s) == changed steps: same order, messages, trees " \
                     f"and author; every patch file == its commit byte for byte; {later} " \
                     "later commit(s) on the branch are not this run's"
    return PASS, f"{landed} commit(s) == changed steps: same order, messages, trees " \
                 "and author; every patch file == its commit byte for byte"


def check_branch_commits(ctx: GateContext, pre: str, head: str,
                         worktree_commits: dict[str, LoggedCommit]) -> int:
    """pre..head holds one commit per changed step, in request order, each on the previous
    one, with the step's message (audit/request.yaml's, which request.json must repeat),
    the tested commit's tree and the request's author; they are commits_applied.
    Returns the number of commits."""
    messages = dict(request_yaml_messages(ctx))
    recorded = {s["id"]: s["message"] for s in ctx.request_record["steps"]}
    if messages != recorded:
        raise Fail("audit/request.yaml and audit/request.json disagree on step messages")
    changed = changed_steps(ctx)
    commits = branch_log(ctx.git, pre, head)
    if len(commits) != len(changed):
        raise Fail(f"branch holds {len(commits)} commit(s) since {pre[:10]}, the run changed "
                   f"{len(changed)} step(s)")
    author = request_author(ctx)
    parent = pre
    for commit, (step_id, manifest) in zip(commits, changed, strict=True):
        want = messages[step_id]
        if commit.message.strip("\n") != want.strip("\n"):
            raise Fail(f"commit {commit.commit[:12]} message {commit.message.strip()[:40]!r} "
                       f"!= step {step_id} message {want[:40]!r}")
        if commit.parents != [parent]:
            raise Fail(f"commit {commit.commit[:12]} (step {step_id}) does not sit on "
                       f"{parent[:12]}")
        tested = worktree_commits[str(manifest["commit"])]
        if commit.tree != tested.tree:
            raise Fail(f"commit {commit.commit[:12]} (step {step_id}) has tree "
                       f"{commit.tree[:12]}, the step's commit {tested.commit[:12]} "
                       f"{tested.tree[:12]}")
        if commit.author != author or commit.committer != author:
            raise Fail(f"commit {commit.commit[:12]} (step {step_id}) is by {commit.author} "
                       f"/ {commit.committer}, not the request's author {author}")
        parent = commit.commit
    if [c.commit for c in commits] != ctx.result.get("commits_applied"):
        raise Fail("branch commits differ from execution_result commits_applied")
    return len(commits)

EX_D = Gate("EX-D", "patch files == their commits byte for byte; branch commits == changed "
            "steps (order, messages, trees, author)", ex_d_commits, RUN_INPUTS,
            uses_repo=True)
