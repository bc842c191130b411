"""EX-A, EX-C .. EX-H: the executor's claims, recomputed from artifacts, patches and git.

(EX-B lives in gates/static.py.) Every gate here reads the run directory through a
`GateContext`, so its evidence list names exactly what it looked at. None of them takes
the tape's word for something a file or git can show: paths are re-decided under the
recorded policy, commits are compared with the patch files by `git patch-id`, manifests
and patches are compared with the digests the tape recorded, and counts are recounted.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from agentos_tasks.answers import ANSWERS_SCHEMA
from agentos_tasks.errors import PolicyViolation
from agentos_tasks.git import Git
from agentos_tasks.policy import check_request, decide_path, needs_approval, normalize_path
from gates import Gate
from gates.context import GateContext, Missing
from gates.runtime import recorded_policy, request_from_record

PASS, FAIL, NA = "PASS", "FAIL", "NOT_APPLICABLE"
Verdict = tuple[str, str]
STEP_EVENTS = ("step_start", "step_end", "step_failed")
FINAL_STATUSES = ("applied", "failed", "denied", "blocked", "rolled_back")


# ------------------------------------------------------------------ shared helpers


class Fail(Exception):
    """A finding that decides the gate: FAIL with this one-line reason."""


def require_chain(ctx: GateContext) -> None:
    """A tape that does not verify cannot vouch for anything a gate reads from it."""
    if not ctx.chain.ok:
        raise Fail(f"tape does not verify: {ctx.chain.reason}")


def status_of(ctx: GateContext) -> str:
    status = ctx.result.get("status")
    if status not in FINAL_STATUSES:
        raise Fail(f"execution_result.json has unknown status {status!r}")
    return str(status)


def event_index(ctx: GateContext, names: tuple[str, ...]) -> list[int]:
    return [i for i, e in enumerate(ctx.events) if e.get("event") in names]


def last_step_end(ctx: GateContext) -> dict[str, dict[str, Any]]:
    """step id -> its last step_end (a re-executed step supersedes its earlier runs)."""
    ends: dict[str, dict[str, Any]] = {}
    for event in ctx.events_named("step_end"):
        ends[str(event.get("step"))] = event
    return ends


def executed_manifests(ctx: GateContext) -> list[tuple[str, dict[str, Any]]]:
    """(step id, manifest) for every step that must have one, in request order.

    A step must have a manifest when execution_result says it changed or stayed
    unchanged, when the tape ends it, or when a manifest file exists; any of those
    without the file is a FAIL (Missing), never a skip.
    """
    listed = {str(s.get("id")): s.get("status") for s in ctx.result.get("steps", [])
              if isinstance(s, dict)}
    ends = last_step_end(ctx)
    found = []
    for step_id in ctx.step_ids():
        expected = (listed.get(step_id) in ("changed", "unchanged") or step_id in ends
                    or ctx.exists(f"steps/{step_id}.json"))
        if expected:
            found.append((step_id, ctx.manifest(step_id)))
    return found


def changed_steps(ctx: GateContext) -> list[tuple[str, dict[str, Any]]]:
    return [(s, m) for s, m in executed_manifests(ctx) if m.get("status") == "changed"]


def patch_paths(ctx: GateContext, rels: list[str]) -> list[str]:
    """Paths (old and new) the patch files touch, as git itself parses them (one call)."""
    if not rels:
        return []
    data = b"".join(ctx.read_bytes(rel) for rel in rels)
    # at the target repo top: inside another checkout git apply would skip the paths
    out = ctx.git.run("apply", "--numstat", "-z", "-", input=data, check=False)
    if out.returncode != 0:
        if len(rels) > 1:  # name the culprit
            for rel in rels:
                patch_paths(ctx, [rel])
        raise Fail(f"{', '.join(rels)} does not parse as a patch: "
                   f"{out.stderr.decode('utf-8', 'replace').strip()[:120]}")
    fields = out.stdout.split(b"\0")
    paths: list[str] = []
    i = 0
    while i < len(fields) and fields[i]:
        name = fields[i].split(b"\t", 2)[2]
        if name:
            paths.append(name.decode("utf-8", "surrogateescape"))
            i += 1
        else:  # a rename: "added\tdeleted\t\0old\0new\0"
            paths += [fields[i + 1].decode("utf-8", "surrogateescape"),
                      fields[i + 2].decode("utf-8", "surrogateescape")]
            i += 3
    if not paths:
        raise Fail(f"{', '.join(rels)} holds no diff")
    return paths


def request_yaml_messages(ctx: GateContext) -> list[tuple[str, str]]:
    """(id, message) of every step as the recorded request file itself says."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
    data = yaml.load(ctx.read_bytes("audit/request.yaml"), Loader=loader)  # noqa: S506
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        raise Fail("audit/request.yaml has no steps list")
    return [(str(s["id"]), str(s.get("message", s["id"]))) for s in steps]


def branch_commits(git: Git, old: str, new: str) -> list[tuple[str, str]]:
    """(commit, full message) of old..new, oldest first, in one git call."""
    raw = git.run("log", "--reverse", "--topo-order", "--format=%H%x1f%B%x1e",
                  f"{old}..{new}").stdout.decode("utf-8", "surrogateescape")
    found = []
    for raw_record in raw.split("\x1e"):
        record = raw_record.lstrip("\n")
        if record:
            commit, _, message = record.partition("\x1f")
            found.append((commit, message))
    return found


def patch_ids_of_commits(git: Git, old: str, new: str) -> dict[str, str]:
    """commit -> `git patch-id --stable` of its diff, for old..new (two git calls)."""
    log = git.run("log", "-p", "--no-renames", "--full-index", "--binary", "--no-textconv",
                  "--no-ext-diff", "--no-color", "--format=commit %H", f"{old}..{new}").stdout
    return parse_patch_ids(git.run("patch-id", "--stable", input=log).stdout)


def parse_patch_ids(out: bytes) -> dict[str, str]:
    ids: dict[str, str] = {}
    for line in out.decode().splitlines():
        patch_id, _, commit = line.partition(" ")
        ids[commit.strip()] = patch_id
    return ids


def verdict(fn: Any) -> Any:
    """Turn `Fail` findings into a (FAIL, reason) verdict."""

    def check(ctx: GateContext) -> Verdict:
        try:
            return fn(ctx)  # type: ignore[no-any-return]
        except Fail as finding:
            return FAIL, str(finding)
        except PolicyViolation as exc:
            return FAIL, f"{exc.rule_id}: {exc.what}"

    check.__name__ = fn.__name__
    check.__doc__ = fn.__doc__
    return check


# ------------------------------------------------------------------ EX-A


@verdict
def ex_a_policy(ctx: GateContext) -> Verdict:
    """Every operation and path on the tape (and in manifests and patches) is allowed by
    audit/policy.yaml, re-decided here; the policy digest on the tape, in every manifest
    and in execution_result equals sha256(audit/policy.yaml)."""
    require_chain(ctx)
    policy = recorded_policy(ctx)
    digest = ctx.sha256("audit/policy.yaml")
    request = request_from_record(ctx.request_record)
    steps = {s.id: s for s in request.steps}
    decided = 0
    for event in ctx.events_named("step_start"):
        step = steps.get(str(event.get("step")))
        if step is None:
            raise Fail(f"tape starts step {event.get('step')!r}, which the request lacks")
        if event.get("op") != step.op:
            raise Fail(f"step {step.id}: tape says op {event.get('op')!r}, request {step.op!r}")
    if ctx.events_named("step_start"):
        # steps ran, so the whole request must pass the pre-run check again
        decision = check_request(policy, request)
        if not decision.allowed:
            raise Fail(f"step {decision.step} is denied by {decision.rule_id} under the "
                       f"recorded policy: {decision.reason}")
    manifests = executed_manifests(ctx)
    ends = last_step_end(ctx)
    # patches of steps without tool globs are parsed in one git call, then judged alike
    plain = [s for s, m in manifests if m.get("status") == "changed"
             and steps[s].op != "tool"]
    for path in dict.fromkeys(patch_paths(ctx, [f"patches/{s}.patch" for s in plain])):
        decision = decide_path(policy, path)
        if not decision.allowed:
            culprit = next((s for s in plain if path.encode() in
                            ctx.read_bytes(f"patches/{s}.patch")), "?")
            raise Fail(f"patches/{culprit}.patch changes {path}: denied by "
                       f"{decision.rule_id} under the recorded policy")
        decided += 1
    for step_id, manifest in manifests:
        step = steps[step_id]
        tool_paths = step.tool.paths if step.op == "tool" and step.tool is not None else None
        paths: list[str] = []
        for entry in manifest.get("files", []):
            paths += [p for p in (entry.get("path"), entry.get("old_path")) if p]
        paths += [str(f.get("path")) for f in ends.get(step_id, {}).get("files", [])]
        if manifest.get("status") == "changed" and step_id not in plain:
            paths += patch_paths(ctx, [f"patches/{step_id}.patch"])
        ignored = set(manifest.get("ignored", []))
        for path in dict.fromkeys(paths):
            decision = decide_path(policy, path, tool_paths=tool_paths)
            if not decision.allowed:
                raise Fail(f"step {step_id} changed {path}: denied by {decision.rule_id} "
                           f"under the recorded policy")
            decided += 1
        for path in sorted(ignored):
            decision = decide_path(policy, path, tool_paths=tool_paths, ignored=True)
            if not decision.allowed:
                raise Fail(f"step {step_id} left ignored {path}: denied by "
                           f"{decision.rule_id} under the recorded policy")
        recorded = (manifest.get("policy_check") or {}).get("policy_sha256")
        if recorded != digest:
            raise Fail(f"steps/{step_id}.json was checked under policy {str(recorded)[:12]}, "
                       f"audit/policy.yaml is {str(digest)[:12]}")
    loaded = ctx.events_named("policy_loaded")
    if not loaded:
        raise Fail("tape has no policy_loaded event")
    if loaded[-1].get("policy_sha256") != digest:
        raise Fail(f"policy_loaded records policy {str(loaded[-1].get('policy_sha256'))[:12]}, "
                   f"audit/policy.yaml is {str(digest)[:12]}")
    result_digest = (ctx.result.get("policy") or {}).get("sha256")
    if result_digest != digest:
        raise Fail(f"execution_result names policy {str(result_digest)[:12]}, "
                   f"audit/policy.yaml is {str(digest)[:12]}")
    started = len(ctx.events_named("step_start"))
    return PASS, f"{started} step run(s) and {decided} path decision(s) allowed by policy " \
                 f"{policy.id} ({str(digest)[:12]})"


# ------------------------------------------------------------------ EX-C


WRITABLE_BINDS = ("--bind", "--bind-try", "--dev-bind", "--dev-bind-try")


def inside_worktree(worktree: Path, raw: str) -> str:
    """Normalise a recorded path; raise Fail when it would land outside the worktree."""
    try:
        normal = normalize_path(raw)
    except PolicyViolation as exc:
        raise Fail(f"recorded path {raw!r} is outside the worktree ({exc.rule_id})") from None
    joined = PurePosixPath(worktree.as_posix()) / normal
    if worktree.as_posix() not in (str(joined), *map(str, joined.parents)):
        raise Fail(f"recorded path {raw!r} is outside the worktree {worktree}")
    return normal


def writable_binds(argv: list[str]) -> list[str]:
    found = []
    for i, token in enumerate(argv):
        if token == "--":  # noqa: S105 - end of bwrap options
            break
        if token in WRITABLE_BINDS and i + 2 < len(argv):
            found.append(argv[i + 2])
    return found


@verdict
def ex_c_untouched(ctx: GateContext) -> Verdict:
    """The target branch stays at base until apply, every step event precedes the one
    patches_applied, and every path a step wrote (manifests, tape, sandbox binds) lies
    inside the run's worktree."""
    require_chain(ctx)
    status = status_of(ctx)
    result = ctx.result
    events = ctx.events
    started = ctx.events_named("step_start")
    if not started and status in ("denied", "blocked"):
        return NA, f"run {status} before any step: nothing was written"
    created = ctx.events_named("worktree_created")
    if not created:
        raise Fail("steps ran but the tape has no worktree_created event")
    worktree = Path(str(created[-1].get("path")))
    if any(Path(str(e.get("path"))) != worktree for e in created):
        raise Fail("worktree_created events name different worktrees")
    base = result.get("base")
    if created[-1].get("base") != base:
        raise Fail(f"worktree_created base {str(created[-1].get('base'))[:12]} != "
                   f"execution_result base {str(base)[:12]}")
    checked = 0
    ends = last_step_end(ctx)
    for step_id, manifest in executed_manifests(ctx):
        for entry in manifest.get("files", []):
            for raw in (entry.get("path"), entry.get("old_path")):
                if raw is not None:
                    inside_worktree(worktree, str(raw))
                    checked += 1
        for entry in ends.get(step_id, {}).get("files", []):
            inside_worktree(worktree, str(entry.get("path")))
        argv = (manifest.get("sandbox") or {}).get("wrapper_argv") or []
        for bound in writable_binds([str(a) for a in argv]):
            if Path(bound) != worktree:
                raise Fail(f"step {step_id}'s sandbox bound {bound} writable, not only its "
                           f"worktree {worktree}")
    applied_at = event_index(ctx, ("patches_applied",))
    rollbacks = event_index(ctx, ("rollback",))
    for index, event in enumerate(events):
        # after an apply the run is sealed: only a rollback reopens it (steps, a new apply)
        if event.get("event") not in (*STEP_EVENTS, "patches_applied"):
            continue
        earlier = [a for a in applied_at if a < index]
        if earlier and not any(earlier[-1] < r < index for r in rollbacks):
            what = f"{event.get('event')} of {event.get('step')}" if event.get("step") \
                else str(event.get("event"))
            raise Fail(f"{what} comes after patches_applied with no rollback in between")
    if status != "applied":
        if applied_at and not any(r > applied_at[-1] for r in rollbacks):
            raise Fail(f"run {status}, yet the tape has patches_applied and no rollback after it")
        head = ctx.branch_head()
        if base is not None and head != base:
            raise Fail(f"run not applied, yet branch head {str(head)[:12]} != base "
                       f"{str(base)[:12]}")
        return PASS, f"not applied: branch still at base; {checked} recorded path(s) inside " \
                     "the worktree"
    if not applied_at:
        raise Fail("run applied, but the tape has no patches_applied")
    applied = events[applied_at[-1]]
    pre = result.get("pre_apply_head")
    if pre != base or applied.get("pre_apply_head") != pre:
        raise Fail(f"branch moved before apply: base {str(base)[:12]}, pre-apply head "
                   f"{str(pre)[:12]} (tape {str(applied.get('pre_apply_head'))[:12]})")
    commits = result.get("commits_applied") or []
    if commits:
        parent = ctx.git.try_rev_parse(f"{commits[0]}^")
        if parent != base:
            raise Fail(f"first applied commit {commits[0][:12]} sits on {str(parent)[:12]}, "
                       f"not on base {str(base)[:12]}")
    return PASS, f"branch at base {str(base)[:12]} until apply; every step event precedes " \
                 f"patches_applied; {checked} recorded path(s) inside the worktree"


# ------------------------------------------------------------------ EX-D


@verdict
def ex_d_commits(ctx: GateContext) -> Verdict:
    """The branch holds one commit per changed step, in request order, each with the
    step's message (from audit/request.yaml) and the patch id of the step's patch file."""
    require_chain(ctx)
    status = status_of(ctx)
    result = ctx.result
    base = result.get("base")
    if status != "applied" and base is None:
        return NA, f"run {status} before a base was recorded: nothing to land"
    head = ctx.branch_head()
    if head is None:
        raise Fail(f"branch {ctx.branch()} does not exist in {ctx.repo_path()}")
    if status != "applied":
        if head != base:
            extra = ctx.git.commits_between(str(base), head)
            raise Fail(f"run {status}, yet the branch holds {len(extra)} commit(s) past base")
        return PASS, f"run {status}: no commit landed on {ctx.branch()}"
    pre = result.get("pre_apply_head")
    if not pre:
        raise Fail("applied run without pre_apply_head")
    messages = dict(request_yaml_messages(ctx))
    recorded = {s["id"]: s["message"] for s in ctx.request_record["steps"]}
    if messages != recorded:
        raise Fail("audit/request.yaml and audit/request.json disagree on step messages")
    changed = changed_steps(ctx)
    commits = branch_commits(ctx.git, pre, head)
    if len(commits) != len(changed):
        raise Fail(f"branch holds {len(commits)} commit(s) since {pre[:10]}, the run changed "
                   f"{len(changed)} step(s)")
    commit_ids = patch_ids_of_commits(ctx.git, pre, head)
    patch_text = b"".join(ctx.read_bytes(f"patches/{s}.patch") for s, _ in changed)
    file_ids = parse_patch_ids(ctx.git.run("patch-id", "--stable", input=patch_text).stdout)
    for (commit, message), (step_id, manifest) in zip(commits, changed, strict=True):
        want = messages[step_id]
        if message.strip("\n") != want.strip("\n"):
            raise Fail(f"commit {commit[:12]} message {message.strip()[:40]!r} != step "
                       f"{step_id} message {want[:40]!r}")
        expected = file_ids.get(str(manifest.get("commit")))
        if expected is None:
            raise Fail(f"patches/{step_id}.patch holds no diff of commit "
                       f"{str(manifest.get('commit'))[:12]}")
        if commit_ids.get(commit) != expected:
            raise Fail(f"commit {commit[:12]} (step {step_id}) differs from "
                       f"patches/{step_id}.patch (patch id)")
    if [c for c, _ in commits] != result.get("commits_applied"):
        raise Fail("branch commits differ from execution_result commits_applied")
    last_head = executed_manifests(ctx)[-1][1].get("head") if changed else pre
    tested = ctx.git.try_rev_parse(f"{last_head}^{{tree}}")
    if tested is not None and tested != ctx.git.tree_of(head):
        raise Fail(f"branch tree {ctx.git.tree_of(head)[:12]} != tested worktree tree "
                   f"{tested[:12]}")
    return PASS, f"{len(commits)} commit(s) == changed steps: same order, messages and " \
                 "patch ids"


# ------------------------------------------------------------------ EX-E


@verdict
def ex_e_steps(ctx: GateContext) -> Verdict:
    """Each step_start has exactly one step_end/step_failed after it, seq is contiguous,
    every manifest is vouched for by its step_end (manifest and patch digests), and a
    finished run's tape ends with run_end."""
    require_chain(ctx)
    events = ctx.events
    for index, event in enumerate(events):
        if event.get("seq") != index:
            raise Fail(f"line {index + 1}: seq {event.get('seq')!r}, expected {index}")
    open_step: str | None = None
    for event in events:
        name = event.get("event")
        if name == "step_start":
            if open_step is not None:
                raise Fail(f"step {event.get('step')} starts while {open_step} has no "
                           "step_end/step_failed")
            open_step = str(event.get("step"))
        elif name in ("step_end", "step_failed"):
            if event.get("step") != open_step:
                raise Fail(f"{name} of {event.get('step')} without a matching step_start "
                           f"(open: {open_step})")
            open_step = None
        elif name in ("patches_applied", "run_end", "questions_blocked") and open_step:
            raise Fail(f"{name} while step {open_step} has no step_end/step_failed")
    if open_step is not None:
        raise Fail(f"step {open_step} has a step_start but no step_end/step_failed")
    ends = last_step_end(ctx)
    count = 0
    for step_id, manifest in executed_manifests(ctx):
        end = ends.get(step_id)
        if end is None:
            raise Fail(f"steps/{step_id}.json exists but the tape has no step_end for it")
        if not end.get("manifest_sha256"):
            raise Fail(f"step_end of {step_id} records no manifest_sha256")
        if end["manifest_sha256"] != ctx.sha256(f"steps/{step_id}.json"):
            raise Fail(f"steps/{step_id}.json differs from the manifest_sha256 on its step_end")
        if end.get("status") != manifest.get("status"):
            raise Fail(f"step {step_id}: step_end says {end.get('status')}, manifest "
                       f"{manifest.get('status')}")
        if manifest.get("status") == "changed":
            if not end.get("patch_sha256") or not end.get("commit"):
                raise Fail(f"step_end of changed step {step_id} lacks patch_sha256 or commit")
            if end["patch_sha256"] != ctx.sha256(f"patches/{step_id}.patch"):
                raise Fail(f"patches/{step_id}.patch is missing or differs from the "
                           "patch_sha256 on its step_end")
        count += 1
    status = status_of(ctx)
    if status == "applied":
        listed = [s.get("id") for s in ctx.result.get("steps", [])]
        missing = [s for s in ctx.step_ids() if s not in ends]
        if missing or listed != ctx.step_ids():
            raise Fail(f"applied run, yet step(s) {missing[:3]} have no step_end")
    if events[-1].get("event") != "run_end" or events[-1].get("status") != status:
        raise Fail(f"execution_result says {status}, the tape ends with "
                   f"{events[-1].get('event')}/{events[-1].get('status')}")
    return PASS, f"{len(ctx.events_named('step_start'))} step_start(s) each closed once; " \
                 f"seq 0..{len(events) - 1} contiguous; {count} manifest(s) match their " \
                 "step_end digests"


# ------------------------------------------------------------------ EX-F


@verdict
def ex_f_rollback(ctx: GateContext) -> Verdict:
    """A rollback on the tape has a proof (and vice versa) whose trees are recomputed from
    git: the branch was put back at target_head with target_tree, and still is unless a
    later apply succeeded from exactly there."""
    require_chain(ctx)
    rollbacks = event_index(ctx, ("rollback",))
    has_proof = ctx.exists("audit/rollback_proof.json")
    if not rollbacks and not has_proof:
        return NA, "no rollback on the tape and no rollback_proof.json"
    if not rollbacks:
        raise Fail("audit/rollback_proof.json exists but the tape has no rollback event")
    if not has_proof:
        raise Fail("tape has a rollback event but audit/rollback_proof.json is missing")
    proof = ctx.json("audit/rollback_proof.json")
    if not isinstance(proof, dict):
        raise Fail("rollback_proof.json is not an object")
    event = ctx.events[rollbacks[-1]]
    if event.get("proof_sha256") != ctx.sha256("audit/rollback_proof.json"):
        raise Fail("rollback_proof.json differs from the proof_sha256 on the rollback event")
    before, after = proof.get("before"), proof.get("after")
    target_head, target_tree = proof.get("target_head"), proof.get("target_tree")
    if not (isinstance(before, dict) and isinstance(after, dict)
            and before.get("tree") and after.get("tree") and target_head and target_tree):
        raise Fail("rollback_proof.json lacks before/after tree digests or its target")
    if proof.get("match") is not True or event.get("match") is not True:
        raise Fail("rollback_proof says the branch was not restored (match is not true)")
    if after != {"head": target_head, "tree": target_tree}:
        raise Fail(f"after-rollback state {after} != target {target_head}/{target_tree}")
    if event.get("restored") != target_head or event.get("branch") != proof.get("branch"):
        raise Fail("rollback event and proof name different targets")
    git = ctx.git
    if git.try_rev_parse(f"{target_head}^{{tree}}") != target_tree:
        raise Fail(f"target_tree {str(target_tree)[:12]} is not the tree of "
                   f"{str(target_head)[:12]} in the repository")
    actual_before = git.try_rev_parse(f"{before.get('head')}^{{tree}}")
    if actual_before is not None and actual_before != before.get("tree"):
        raise Fail("before.tree is not the tree of before.head in the repository")
    head = git.try_rev_parse(f"refs/heads/{proof.get('branch')}")
    later = [i for i in event_index(ctx, ("patches_applied",)) if i > rollbacks[-1]]
    if later:
        if ctx.result.get("pre_apply_head") != target_head:
            raise Fail("a later apply did not start from the rolled-back head")
        return PASS, f"rolled back to {target_head[:12]} (tree {target_tree[:12]}), later " \
                     "applied from there"
    if head != target_head:
        raise Fail(f"branch head {str(head)[:12]} != rolled-back head {target_head[:12]}")
    return PASS, f"branch restored to {target_head[:12]}; tree {target_tree[:12]} before " \
                 "apply == after rollback"


# ------------------------------------------------------------------ EX-G


@verdict
def ex_g_approvals(ctx: GateContext) -> Verdict:
    """Every changed step the recorded policy sends to review has an approval in
    audit/answers.yaml that binds the patch file's actual sha256."""
    require_chain(ctx)
    policy = recorded_policy(ctx)
    request = request_from_record(ctx.request_record)
    manifests = dict(executed_manifests(ctx))
    needed = [s for s in request.steps if needs_approval(policy, s)
              and manifests.get(s.id, {}).get("status") == "changed"]
    if not needed:
        return NA, "no changed step needs an approval under the recorded policy"
    try:
        data = ANSWERS_SCHEMA(yaml.safe_load(ctx.read_bytes("audit/answers.yaml")) or {})
    except Missing:
        raise Fail(f"{len(needed)} step(s) need approval, audit/answers.yaml is missing") \
            from None
    except Exception as exc:
        raise Fail(f"audit/answers.yaml is not a valid answers file: {exc}") from None
    approvals = data.get("approvals", {})
    for step in needed:
        approval = approvals.get(step.id)
        if approval is None:
            raise Fail(f"step {step.id} ({step.op}) needs an approval; none recorded")
        actual = ctx.sha256(f"patches/{step.id}.patch")
        if actual is None:
            raise Fail(f"patches/{step.id}.patch is missing")
        if approval["patch_sha256"] != actual:
            raise Fail(f"approval of {step.id} by {approval['by']} binds patch "
                       f"{approval['patch_sha256'][:12]}, the patch file is {actual[:12]}")
        if manifests[step.id].get("patch_sha256") != actual:
            raise Fail(f"patches/{step.id}.patch differs from its manifest")
    return PASS, f"{len(needed)} step(s) approved, each binding its patch file's sha256"


# ------------------------------------------------------------------ EX-H


REQUIRED_RESULT_FIELDS = ("schema_version", "run", "status", "request", "policy", "sandbox",
                          "repo", "branch", "base", "pre_apply_head", "post_apply_head",
                          "commits_applied", "steps", "counts")
COUNT_KEYS = ("changed", "unchanged", "failed", "pending")


@verdict
def ex_h_result(ctx: GateContext) -> Verdict:
    """execution_result.json has every required field, an absolute repo path, counts that
    recount from its steps list, and (applied) one commit per changed step."""
    result = ctx.result
    missing = [k for k in REQUIRED_RESULT_FIELDS if k not in result]
    if missing:
        raise Fail(f"execution_result.json lacks {', '.join(missing)}")
    status = status_of(ctx)
    if not Path(str(result["repo"])).is_absolute():
        raise Fail(f"repo {result['repo']!r} is not an absolute path")
    if result["run"] != ctx.run_dir.name and result["run"] != ctx.request_record.get("id"):
        raise Fail(f"run {result['run']!r} is neither the run directory nor the request id")
    if (result.get("request") or {}).get("sha256") != ctx.request_record.get("sha256"):
        raise Fail("execution_result request sha256 differs from audit/request.json")
    steps = result["steps"]
    counts = result["counts"]
    if not isinstance(steps, list) or not isinstance(counts, dict):
        raise Fail("steps is not a list or counts is not an object")
    ids = [s.get("id") for s in steps]
    if ids != ctx.step_ids():
        raise Fail(f"steps list {ids[:4]} differs from the request's steps")
    recount = {k: sum(s.get("status") == k for s in steps) for k in COUNT_KEYS}
    recount["steps"] = len(steps)
    recount["commits_applied"] = len(result["commits_applied"] or [])
    for key, value in recount.items():
        if counts.get(key) != value:
            raise Fail(f"counts.{key} is {counts.get(key)!r}, the lists give {value}")
    for entry in steps:
        if entry.get("status") in ("changed", "unchanged"):
            manifest = ctx.manifest(str(entry["id"]))
            for key in ("status", "commit", "patch_sha256"):
                if manifest.get(key) != entry.get(key):
                    raise Fail(f"step {entry['id']}: {key} differs from its manifest")
    if status == "applied":
        if recount["failed"] or recount["pending"]:
            raise Fail("applied run with failed or pending steps")
        if recount["commits_applied"] != recount["changed"]:
            raise Fail(f"{recount['commits_applied']} commits applied for "
                       f"{recount['changed']} changed steps")
        if not result["pre_apply_head"] or not result["post_apply_head"]:
            raise Fail("applied run without pre/post-apply heads")
    elif recount["commits_applied"]:
        raise Fail(f"run {status}, yet commits_applied lists {recount['commits_applied']}")
    return PASS, f"every required field present; counts recount ({recount['steps']} steps, " \
                 f"{recount['changed']} changed, {recount['commits_applied']} commits)"


def _gates() -> list[Gate]:
    artifacts = ("audit/*", "execution_result.json", "steps/*.json", "patches/*.patch")
    return [
        Gate("EX-A", "every operation and path is allowed by the recorded policy", ex_a_policy,
             artifacts),
        Gate("EX-C", "target branch untouched until apply; steps wrote only in the worktree",
             ex_c_untouched, artifacts, uses_repo=True),
        Gate("EX-D", "commits on the branch == changed steps (order, messages, patch ids)",
             ex_d_commits, artifacts, uses_repo=True),
        Gate("EX-E", "every step_start closed once; seq contiguous; checksums recorded",
             ex_e_steps, artifacts),
        Gate("EX-F", "rollback proof recomputed from git", ex_f_rollback, artifacts,
             uses_repo=True),
        Gate("EX-G", "steps needing approval have one binding their patch", ex_g_approvals,
             artifacts),
        Gate("EX-H", "execution_result.json complete and consistent", ex_h_result, artifacts),
    ]


GATES = _gates()
