"""EX-A, EX-C .. EX-H: the executor's claims, recomputed from artifacts, patches and git.

(EX-B lives in gates/static.py.) Every gate here reads the run directory through a
`GateContext`, so its evidence list names exactly what it looked at. None of them takes
the tape's word for something a file or git can show: paths are re-decided under the
recorded policy; what a write/delete/patch/run step may have done is fixed by its request
step and checked (EX-A); every patch file is the patch git regenerates from its commit,
byte for byte, and every manifest's file list is the commit's diff (EX-D, a constant
number of git calls for the whole run); the branch commits have the trees of the tested
commits; sandbox records are judged against the recorded policy (EX-C); manifests and
patches are compared with the digests the tape recorded, and counts are recounted.
A missing piece of evidence is a FAIL, never a skipped check.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agentos_tasks.errors import PolicyViolation
from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.git import Git, parse_numstat_z
from agentos_tasks.model import Step
from agentos_tasks.policy import (
    check_request,
    decide_path,
    needs_approval,
    normalize_path,
    step_network,
)
from gates import Gate
from gates.context import GateContext
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


_MANIFESTS: weakref.WeakKeyDictionary[GateContext, list[tuple[str, dict[str, Any]]]] = \
    weakref.WeakKeyDictionary()


def executed_manifests(ctx: GateContext) -> list[tuple[str, dict[str, Any]]]:
    """(step id, manifest) for every step that must have one, in request order.

    A step must have a manifest when execution_result says it changed or stayed
    unchanged, when the tape ends it, or when a manifest file exists; any of those
    without the file is a FAIL (Missing), never a skip. Read once per gate evaluation.
    """
    if ctx not in _MANIFESTS:
        _MANIFESTS[ctx] = _read_manifests(ctx)
    return list(_MANIFESTS[ctx])


def _read_manifests(ctx: GateContext) -> list[tuple[str, dict[str, Any]]]:
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
    paths = parse_numstat_z(out.stdout)
    if not paths:
        raise Fail(f"{', '.join(rels)} holds no diff")
    return paths


def request_yaml_messages(ctx: GateContext) -> list[tuple[str, str]]:
    """(id, message) of every step as the recorded request file itself says."""
    steps = ctx.request_yaml()["steps"]
    return [(str(s["id"]), str(s.get("message", s["id"]))) for s in steps]


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


def file_key(entry: dict[str, Any]) -> tuple[Any, Any, Any]:
    return entry.get("path"), entry.get("status"), entry.get("sha256")


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


PROGRAM_KEYS = ("sandbox", "log", "log_sha256", "output_bytes", "output_truncated",
                "timed_out")
TOOL_KEYS = ("tool", "tool_result_pack_sha256")


def tool_dirs(ctx: GateContext) -> list[str]:
    """Names under tools/ (every tool step leaves tools/<step>/, nothing else does)."""
    root = ctx.run_dir / "tools"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def wrapped_argv(wrapper: Any, argv: list[str]) -> bool:
    """True when a sandbox wrapper argv ends with `-- <argv>` (bwrap and the `none`
    reaper both end so: agentos_tasks.sandbox.bwrap.build_bwrap_argv, proc.run_confined)."""
    return isinstance(wrapper, list) and len(wrapper) > len(argv) and \
        wrapper[len(wrapper) - len(argv) - 1:] == ["--", *argv]


def check_step_record(step: Step, record: dict[str, Any], manifest: dict[str, Any],
                      has_attributes: Callable[[str], bool] | None = None) -> None:
    """What a manifest may say is fixed by its request step: op, message and index; a
    write lands exactly its path with the requested content; a delete only deletes its
    path; a patch stays within its recorded paths; a run step ran exactly its argv and
    exited as expected; only run/tool steps record a program, only tool steps a tool."""
    where = f"steps/{step.id}.json"
    for key, want in (("op", step.op), ("index", step.index), ("message", step.message)):
        if manifest.get(key) != want:
            raise Fail(f"{where}: {key} {manifest.get(key)!r}, the request says {want!r}")
    files = manifest.get("files") or []
    changed = manifest.get("status") == "changed"
    if step.op == "write":
        assert step.path is not None
        want_files = [(normalize_path(step.path), record.get("content_sha256"))]
        written = [(f.get("path"), f.get("written_sha256", f.get("sha256"))) for f in files]
        normalised = [f for f in files if f.get("written_sha256") not in (None, f.get("sha256"))]
        if normalised and (has_attributes is None
                           or not has_attributes(str(manifest.get("commit")))):
            raise Fail(f"write step {step.id} landed other bytes than it wrote, and the tree "
                       "has no .gitattributes that could explain it")
        if (changed and written != want_files) or \
                any(f.get("status") not in ("A", "M") for f in files):
            raise Fail(f"write step {step.id} must land exactly {step.path} with content "
                       f"{str(record.get('content_sha256'))[:12]}; its manifest lists "
                       f"{[(f.get('path'), str(f.get('sha256'))[:12]) for f in files][:3]}")
    if step.op == "delete":
        assert step.path is not None
        if changed and [(f.get("path"), f.get("status")) for f in files] != \
                [(normalize_path(step.path), "D")]:
            raise Fail(f"delete step {step.id} may only delete {step.path}; its manifest "
                       f"lists {[(f.get('path'), f.get('status')) for f in files][:3]}")
    if step.op == "patch":
        allowed = {normalize_path(p) for p in step.patch_paths}
        for entry in files:
            for raw in (entry.get("path"), entry.get("old_path")):
                if raw is not None and raw not in allowed:
                    raise Fail(f"patch step {step.id} changed {raw}, which its patch does "
                               f"not touch ({sorted(allowed)[:3]})")
    if step.op in ("run", "tool"):
        if not isinstance(manifest.get("sandbox"), dict):
            raise Fail(f"{where}: {step.op} step without a sandbox record")
        if manifest.get("exit_code") != step.expect_exit:
            raise Fail(f"{where}: exit code {manifest.get('exit_code')!r}, the request "
                       f"expects {step.expect_exit}")
    else:
        extra = [k for k in (*PROGRAM_KEYS, *TOOL_KEYS) if k in manifest]
        if extra or manifest.get("exit_code") is not None:
            raise Fail(f"{where}: a {step.op} step runs no program, yet its manifest "
                       f"records {extra or ['exit_code']}")
    if step.op == "run":
        if not wrapped_argv(manifest["sandbox"].get("wrapper_argv"), list(step.argv)):
            raise Fail(f"{where}: the sandbox ran something other than the request's argv "
                       f"{list(step.argv)[:3]}")
        if any(k in manifest for k in TOOL_KEYS):
            raise Fail(f"{where}: a run step with a tool record")
    if step.op == "tool":
        tool = manifest.get("tool")
        if not isinstance(tool, dict) or not manifest.get("tool_result_pack_sha256"):
            raise Fail(f"{where}: a tool step without its tool record")
        if not wrapped_argv(manifest["sandbox"].get("wrapper_argv"),
                            [str(a) for a in tool.get("argv") or []]):
            raise Fail(f"{where}: the sandbox ran something other than the tool's argv")




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
    plain_paths = list(dict.fromkeys(patch_paths(ctx, [f"patches/{s}.patch" for s in plain])))
    for path in plain_paths:
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
    # what each step did is fixed by its request step (EX-D ties manifests to the commits)
    records = {str(r.get("id")): r for r in ctx.request_record["steps"]}
    def has_attributes(commit: str) -> bool:
        names = ctx.git.run("ls-tree", "-r", "--name-only", "-z", "--", commit,
                            check=False).stdout.split(b"\0")
        return any(n == b".gitattributes" or n.endswith(b"/.gitattributes") for n in names)

    for step_id, manifest in manifests:
        check_step_record(steps[step_id], records[step_id], manifest, has_attributes)
    listed = {str(p) for s, m in manifests if s in plain for f in m.get("files", [])
              for p in (f.get("path"), f.get("old_path")) if p}
    for path in plain_paths:
        if path not in listed:
            culprit = next((s for s in plain if path.encode() in
                            ctx.read_bytes(f"patches/{s}.patch")), "?")
            raise Fail(f"patches/{culprit}.patch changes {path}, which no manifest lists")
    tools = {s.id for s in request.steps if s.op == "tool"}
    strays = [name for name in tool_dirs(ctx) if name not in tools]
    if strays:
        raise Fail(f"tools/{strays[0]}/ exists, but {strays[0]!r} is not a tool step of the "
                   "request")
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


def sandbox_argv(step: Step, manifest: dict[str, Any]) -> list[str]:
    """The argv the step's sandbox had to run: the request's (run) or the tool's."""
    if step.op == "run":
        return list(step.argv)
    return [str(a) for a in (manifest.get("tool") or {}).get("argv") or []]


def check_sandboxes(ctx: GateContext, manifests: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Every program step's sandbox record agrees with the recorded policy: under
    `isolation: required` backend bwrap, its network flag equals the policy's grant
    (policy.network for run steps, tool_network for tool steps) and a bwrap argv without
    that grant unshares the network; execution_result's sandbox backends are the
    manifests'. Returns the steps that ran unsandboxed (backend none, best-effort)."""
    policy = recorded_policy(ctx)
    steps = {s.id: s for s in request_from_record(ctx.request_record).steps}
    required = policy.isolation == "required"
    backends: set[str] = set()
    unsandboxed: list[str] = []
    for step_id, manifest in manifests:
        step = steps[step_id]
        sandbox = manifest.get("sandbox")
        if step.op not in ("run", "tool"):
            if sandbox is not None:
                raise Fail(f"{step.op} step {step_id} records a sandbox; it runs no program")
            continue
        if not isinstance(sandbox, dict):
            raise Fail(f"{step.op} step {step_id} has no sandbox record")
        backend = sandbox.get("backend")
        grant = step_network(policy, step)
        if sandbox.get("network") is not grant:
            raise Fail(f"step {step_id}: sandbox network {sandbox.get('network')!r}, the "
                       f"recorded policy grants {grant}")
        wrapper = sandbox.get("wrapper_argv")
        inner = sandbox_argv(step, manifest)
        if not isinstance(wrapper, list) or not wrapped_argv(wrapper, inner):
            raise Fail(f"step {step_id}: the sandbox argv does not end with -- and the "
                       "step's argv")
        options = [str(a) for a in wrapper[:len(wrapper) - len(inner) - 1]]
        if backend == "bwrap":
            if not options or Path(options[0]).name != "bwrap":
                raise Fail(f"step {step_id}: backend bwrap, yet its argv starts with "
                           f"{options[:1]}")
            unshared = "--share-net" not in options and (
                "--unshare-all" in options or "--unshare-net" in options)
            if unshared == grant:
                raise Fail(f"step {step_id}: its bwrap argv "
                           f"{'unshares' if unshared else 'keeps'} the network, the recorded "
                           f"policy grants network {grant}")
        elif backend == "none":
            if required:
                raise Fail(f"step {step_id} ran with sandbox backend none under isolation: "
                           "required")
            unsandboxed.append(step_id)
        else:
            raise Fail(f"step {step_id}: unknown sandbox backend {backend!r}")
        backends.add(str(backend))
    claimed = ctx.result.get("sandbox") or {}
    listed = sorted(backends)
    if claimed.get("backends") != listed or \
            claimed.get("backend") != ("+".join(listed) if listed else "unused"):
        raise Fail(f"execution_result sandbox {claimed.get('backend')!r} "
                   f"{claimed.get('backends')!r}, the manifests say {listed}")
    if (ctx.result.get("policy") or {}).get("isolation") != policy.isolation:
        raise Fail(f"execution_result names isolation "
                   f"{(ctx.result.get('policy') or {}).get('isolation')!r}, the recorded "
                   f"policy {policy.isolation!r}")
    return unsandboxed


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
    if started and base is None:
        raise Fail("steps ran, yet execution_result records no base")
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
    unsandboxed = check_sandboxes(ctx, executed_manifests(ctx))
    flagged = f"; unsandboxed steps: {', '.join(unsandboxed)} (backend none, isolation " \
              "best-effort)" if unsandboxed else ""
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
                     f"the worktree{flagged}"
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
                 f"patches_applied; {checked} recorded path(s) inside the worktree{flagged}"


# ------------------------------------------------------------------ EX-D


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
    unchanged_names = []
    record_steps = {str(s.get("id")): s for s in ctx.request_record["steps"]}
    for step_id, manifest in manifests:
        step = record_steps[step_id]
        if manifest.get("status") == "unchanged" and step.get("op") in ("write", "delete"):
            unchanged_names.append(f"{manifest['parent']}:{normalize_path(str(step['path']))}")
    blobs = blob_digests(git, [c[4] for commit in logged for c in commit.changes
                               if c[0] != "D"] + unchanged_names)
    by_commit = {c.commit: c for c in logged}
    ends = last_step_end(ctx)
    in_result = {str(s.get("id")): s for s in ctx.result.get("steps", [])
                 if isinstance(s, dict)}
    for step_id, manifest in manifests:
        step = record_steps[step_id]
        if manifest.get("status") == "unchanged":
            if step.get("op") == "write":
                name = f"{manifest['parent']}:{normalize_path(str(step['path']))}"
                if blobs.get(name) != step.get("content_sha256"):
                    raise Fail(f"step {step_id}: unchanged, yet {step['path']} at its parent "
                               "does not hold the requested content")
            if step.get("op") == "delete" and blobs.get(
                    f"{manifest['parent']}:{normalize_path(str(step['path']))}") is not None:
                raise Fail(f"step {step_id}: unchanged, yet {step['path']} is still there")
            continue
        commit = by_commit[str(manifest["commit"])]
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
        if _listed(ends.get(step_id, {}).get("files", [])) != truth:
            raise Fail(f"the tape's step_end of {step_id} lists other files than commit "
                       f"{commit.commit[:12]}")
        if _listed(in_result.get(step_id, {}).get("files", [])) != truth:
            raise Fail(f"execution_result's files of {step_id} differ from commit "
                       f"{commit.commit[:12]}")
    if changed:
        compare_patches(ctx, base, final_head, changed)
    return len(changed), by_commit


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
    if [c.commit for c in commits] != result.get("commits_applied"):
        raise Fail("branch commits differ from execution_result commits_applied")
    return PASS, f"{len(commits)} commit(s) == changed steps: same order, messages, trees " \
                 "and author; every patch file == its commit byte for byte"


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
    status = status_of(ctx)
    rollbacks = event_index(ctx, ("rollback",))
    has_proof = ctx.exists("audit/rollback_proof.json")
    if not rollbacks and not has_proof:
        # a status of rolled_back without any rollback is EX-H's finding (status vs tape)
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
    if actual_before is None:
        raise Fail(f"before.head {str(before.get('head'))[:12]} is not a commit in the "
                   "repository")
    if actual_before != before.get("tree"):
        raise Fail("before.tree is not the tree of before.head in the repository")
    head = git.try_rev_parse(f"refs/heads/{proof.get('branch')}")
    later = [i for i in event_index(ctx, ("patches_applied",)) if i > rollbacks[-1]]
    if later:
        if status == "rolled_back":
            raise Fail("execution_result says rolled_back, yet patches were applied after "
                       "the last rollback")
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
    data = ctx.answers_file()
    if data is None:
        raise Fail(f"{len(needed)} step(s) need approval, audit/answers.yaml is missing")
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
    if Path(str(result["repo"])) != Path(str(ctx.request_record.get("repo"))):
        raise Fail(f"execution_result names repo {result['repo']}, the recorded request "
                   f"{ctx.request_record.get('repo')}")
    branches = {str(e.get("branch")) for e in ctx.events
                if e.get("event") in ("worktree_created", "patches_applied")}
    branches |= {str(b) for b in (result["branch"], ctx.request_record.get("branch"))
                 if b is not None}
    if len(branches) > 1:
        raise Fail(f"execution_result, the request and the tape name different branches: "
                   f"{sorted(branches)}")
    if status == "failed":
        if not isinstance(result.get("failure"), dict):
            raise Fail("run failed, yet execution_result records no failure")
        if not ctx.events_named("step_failed") and not ctx.events_named("apply_failed"):
            raise Fail("run failed, yet the tape has no step_failed or apply_failed")
    if status == "rolled_back" and not ctx.events_named("rollback"):
        raise Fail("run rolled_back, yet the tape has no rollback event")
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
        Gate("EX-A", "every operation and path is allowed by the recorded policy; each step "
             "did what its request step fixes", ex_a_policy, (*artifacts, "tools/*")),
        Gate("EX-C", "target branch untouched until apply; steps wrote only in the worktree; "
             "sandbox records agree with the policy", ex_c_untouched, artifacts, uses_repo=True),
        Gate("EX-D", "patch files == their commits byte for byte; branch commits == changed "
             "steps (order, messages, trees, author)", ex_d_commits, artifacts, uses_repo=True),
        Gate("EX-E", "every step_start closed once; seq contiguous; checksums recorded",
             ex_e_steps, artifacts),
        Gate("EX-F", "rollback proof recomputed from git", ex_f_rollback, artifacts,
             uses_repo=True),
        Gate("EX-G", "steps needing approval have one binding their patch", ex_g_approvals,
             artifacts),
        Gate("EX-H", "execution_result.json complete and consistent", ex_h_result, artifacts),
    ]


GATES = _gates()
