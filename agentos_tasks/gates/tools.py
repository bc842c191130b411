"""TL-A .. TL-F: what a coding-agent tool was asked, what it did, and what landed.

Every tool step leaves `tools/<step>/tool_task_pack.json` (written before the tool ran),
`tools/<step>/tool_result_pack.json` (after) and the transcript. Nothing in a pack is
taken on its word: each gate recomputes its claim from the recorded request and policy,
the tape, the step manifest, the patch file and the commit in git.

- TL-A task pack complete and valid, and it is the one this step was given: same run,
  step, adapter, prompt, paths, base commit, policy digest and limits as recorded
  elsewhere; the result pack answers exactly it (task_pack_sha256).
- TL-B the tool changed nothing outside its allowed paths (tool globs within the policy)
  nor outside the worktree (no absolute, `..`, `.git` paths, no escaping symlink, no
  gitlink in the commit).
- TL-C diff and commit present and equal to the patch: the pack's digest is the one the
  tape's step_end and the manifest recorded (a pack rewritten afterwards, even with
  well-typed fields, fails here), its diff equals the manifest, the commit's regenerated
  patch equals the patch file byte for byte, and the recorded sha256 of every file equals
  its content in the commit.
- TL-D the recorded policy decision equals a fresh decision of the recorded policy over
  the recorded diff.
- TL-E tool name, version and argv recorded; the argv is the one the adapter builds for
  this step; the transcript matches its digest and the claims re-parse from it.
- TL-F a reviewer approval binding the patch's sha256 exists when the policy requires
  review of this step.

`check_tool_step` evaluates one step (used by `agentos tool verify` through
agentos_tasks.tools.pack_check with `strict=True`: a step that did not land fails TL-C);
the gates run it over every tool step the run started (a failed step passes TL-B/TL-C
only when nothing of it landed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentos_tasks.errors import AgentosError, PolicyViolation
from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.git import parse_numstat_z
from agentos_tasks.model import Step, ToolSpec
from agentos_tasks.policy import (
    decide_path,
    needs_approval,
    normalize_path,
    tool_network,
)
from agentos_tasks.tools import adapters, packs
from gates import Gate
from gates.context import GateContext, Missing
from gates.executor_gates import Fail
from gates.runtime import recorded_policy, request_from_record

PASS, FAIL, NA = "PASS", "FAIL", "NOT_APPLICABLE"
Verdict = tuple[str, str]
TOOL_GATE_IDS: tuple[str, ...] = ("TL-A", "TL-B", "TL-C", "TL-D", "TL-E", "TL-F")
TOOL_GATE_TITLES: dict[str, str] = {
    "TL-A": "tool task pack complete, valid and the one the step was given",
    "TL-B": "the tool changed nothing outside its allowed paths nor the worktree",
    "TL-C": "diff and commit present and equal to the patch; pack digest on the tape",
    "TL-D": "recorded policy decision equals a fresh decision on the diff",
    "TL-E": "tool name, version and argv recorded (argv rebuilt, transcript digest)",
    "TL-F": "reviewer sign-off binding the patch present when the policy requires it",
}
# Denials check_changes can only make with the worktree at hand (file sizes, links, the
# git dir): a recorded deny by one of these is accepted when nothing of the step landed.
WORKTREE_ONLY_RULES: frozenset[str] = frozenset({
    "paths.symlink", "paths.hardlink", "limits.max_file_bytes", "paths.git",
})
_SYMLINK_MODE = "120000"
_GITLINK_MODE = "160000"


# ------------------------------------------------------------------ one step's evidence


class ToolStep:
    """The recorded facts of one tool step, read lazily through the gate context."""

    def __init__(self, ctx: GateContext, step_id: str, pack_rel: str | None = None) -> None:
        self.ctx = ctx
        self.id = step_id
        self.pack_rel = pack_rel or f"tools/{step_id}/{packs.RESULT_PACK_NAME}"
        self.task_rel = f"tools/{step_id}/{packs.TASK_PACK_NAME}"
        self.transcript_rel = f"tools/{step_id}/transcript.jsonl"
        self.manifest_rel = f"steps/{step_id}.json"
        self.patch_rel = f"patches/{step_id}.patch"
        self._pack: dict[str, Any] | None = None
        self._task: dict[str, Any] | None = None

    # -- request / policy
    def step(self) -> Step:
        for step in request_from_record(self.ctx.request_record).steps:
            if step.id == self.id:
                if step.op != "tool" or step.tool is None:
                    raise Fail(f"step {self.id} is a {step.op} step, not a tool step")
                return step
        raise Fail(f"the recorded request has no step {self.id!r}")

    def spec(self) -> ToolSpec:
        tool = self.step().tool
        assert tool is not None  # step() checked
        return tool

    def policy(self) -> Any:
        return recorded_policy(self.ctx)

    # -- packs
    def pack(self) -> dict[str, Any]:
        if self._pack is None:
            self._pack = _load(self.ctx, self.pack_rel, packs.load_result_pack,
                               "tool result pack")
            if self._pack["step"] != self.id or self._pack["run"] != self.ctx.run_dir.name:
                raise Fail(f"{self.pack_rel} is for run {self._pack['run']!r} step "
                           f"{self._pack['step']!r}, not {self.ctx.run_dir.name!r} {self.id!r}")
        return self._pack

    def task(self) -> dict[str, Any]:
        if self._task is None:
            self._task = _load(self.ctx, self.task_rel, packs.load_task_pack, "tool task pack")
        return self._task

    def allowed_paths(self) -> list[str]:
        """The task pack's allowed paths when it is valid, else the request's globs."""
        try:
            return list(self.task()["allowed_paths"])
        except Fail:
            return list(self.spec().paths)

    # -- tape / manifest
    def outcome(self) -> tuple[str, dict[str, Any] | None]:
        """("landed", step_end) | ("failed", step_failed) | ("pending", None) for the last
        execution of this step on the tape."""
        events = self.ctx.events
        starts = [i for i, e in enumerate(events)
                  if e.get("event") == "step_start" and e.get("step") == self.id]
        if not starts:
            return "pending", None
        for event in events[starts[-1] + 1:]:
            if event.get("step") != self.id:
                continue
            if event.get("event") == "step_end":
                return "landed", event
            if event.get("event") == "step_failed":
                return "failed", event
        return "pending", None

    def start_event(self) -> dict[str, Any]:
        starts = [e for e in self.ctx.events_named("step_start") if e.get("step") == self.id]
        if not starts:
            raise Fail(f"the tape has no step_start for {self.id}")
        return starts[-1]

    def worktree_path(self) -> Path:
        """The worktree the step ran in: the last worktree_created before its start."""
        start_seq = self.start_event().get("seq", -1)
        created = [e for e in self.ctx.events_named("worktree_created")
                   if isinstance(e.get("seq"), int) and e["seq"] < start_seq]
        if not created:
            raise Fail(f"no worktree_created on the tape before step {self.id} started")
        return Path(str(created[-1].get("path")))

    def manifest(self) -> dict[str, Any]:
        return self.ctx.manifest(self.id)


def _load(ctx: GateContext, rel: str, loader: Callable[[Path], dict[str, Any]],
          what: str) -> dict[str, Any]:
    path = ctx.note(rel)
    if not path.is_file():
        raise Fail(f"{rel} is missing")
    try:
        return loader(path)
    except AgentosError as err:
        raise Fail(f"{what} {rel} is invalid: {err.message}") from None


def _file_key(entry: Any) -> tuple[Any, ...]:
    if not isinstance(entry, dict):
        return ("?", repr(entry))
    return (entry.get("path"), entry.get("status"), entry.get("sha256"), entry.get("old_path"))


def committed_patch_paths(ctx: GateContext, rel: str) -> list[str]:
    """Paths (old and new) a patch file touches, as `git apply --numstat` parses them.

    Run at the top of the target repository: from a subdirectory of some work tree (the
    run dir under a project checkout) git would silently skip paths outside it.
    """
    data = ctx.read_bytes(rel)
    out = ctx.git.run("apply", "--numstat", "-z", "-", input=data, check=False)
    if out.returncode != 0:
        raise Fail(f"{rel} does not parse as a patch: "
                   f"{out.stderr.decode('utf-8', 'replace').strip()[:120]}")
    paths = parse_numstat_z(out.stdout)
    if not paths:
        raise Fail(f"{rel} holds no diff")
    return paths


def _landed_or_failed(ts: ToolStep) -> tuple[str, dict[str, Any] | None]:
    state, event = ts.outcome()
    if state == "pending":
        raise Fail(f"step {ts.id} has no step_end or step_failed on the tape after its start")
    return state, event


def _nothing_landed(ts: ToolStep) -> None:
    """A failed step must have left no manifest and no patch behind."""
    if ts.ctx.exists(ts.manifest_rel):
        raise Fail(f"step {ts.id} failed, yet {ts.manifest_rel} exists")
    if ts.ctx.exists(ts.patch_rel):
        raise Fail(f"step {ts.id} failed, yet {ts.patch_rel} exists")


# ------------------------------------------------------------------ TL-A


def tl_a(ts: ToolStep, strict: bool) -> Verdict:
    task = ts.task()
    spec = ts.spec()
    expected: dict[str, Any] = {
        "run": ts.ctx.run_dir.name, "step": ts.id, "adapter": spec.adapter,
        "prompt": spec.prompt, "allowed_paths": list(spec.paths),
    }
    for key, value in expected.items():
        if task.get(key) != value:
            raise Fail(f"task pack {key} is {task.get(key)!r}, the recorded request says "
                       f"{value!r}")
    if task.get("model") != spec.model:
        raise Fail(f"task pack model is {task.get('model')!r}, the request says {spec.model!r}")
    if spec.adapter == "command" and task.get("argv") != list(spec.argv):
        raise Fail(f"task pack argv {task.get('argv')!r} differs from the request's "
                   f"{list(spec.argv)!r}")
    policy_digest = ts.ctx.sha256("audit/policy.yaml")
    if task["policy_sha256"] != policy_digest:
        raise Fail(f"task pack policy_sha256 {task['policy_sha256'][:12]} is not "
                   f"sha256(audit/policy.yaml) {str(policy_digest)[:12]}")
    limits = ts.policy().limits
    for key in packs.LIMIT_KEYS:
        if task["limits"][key] != getattr(limits, key):
            raise Fail(f"task pack limits.{key}={task['limits'][key]} differs from the "
                       f"recorded policy's {getattr(limits, key)}")
    parent = ts.start_event().get("parent")
    if task["base_commit"] != parent:
        raise Fail(f"task pack base_commit {task['base_commit'][:12]} is not the step's "
                   f"parent {str(parent)[:12]} on the tape")
    task_digest = ts.ctx.sha256(ts.task_rel)
    if ts.pack()["task_pack_sha256"] != task_digest:
        raise Fail(f"the result pack answers task pack {ts.pack()['task_pack_sha256'][:12]}, "
                   f"{ts.task_rel} is {str(task_digest)[:12]}")
    return PASS, f"{ts.id}: task pack valid; run, step, adapter, prompt, paths, base commit, " \
                 "policy digest and limits match; the result pack answers it"


# ------------------------------------------------------------------ TL-B


def _outside(ts: ToolStep, policy: Any, allowed: list[str], path: str) -> str | None:
    """Why `path` lies outside what the tool may change, or None."""
    try:
        normalize_path(path)
    except PolicyViolation as exc:
        return f"{path!r} is outside the worktree ({exc.rule_id}: {exc.what})"
    decision = decide_path(policy, path, tool_paths=allowed)
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
    pack = ts.pack()
    policy = ts.policy()
    allowed = ts.allowed_paths()
    state, _event = _landed_or_failed(ts)
    paths: list[str] = []
    for entry in pack["diff"]["files"]:
        paths += [p for p in (entry.get("path"), entry.get("old_path")) if p]
    problems = [why for why in (_outside(ts, policy, allowed, p) for p in paths) if why]
    if state == "failed":
        _nothing_landed(ts)
        if problems:
            if strict:
                raise Fail(f"{ts.id}: {problems[0]} (the executor refused the step; nothing "
                           "landed)")
            return PASS, f"{ts.id}: the tool wrote outside its paths ({problems[0]}); the " \
                         "executor refused the step and nothing landed"
        return PASS, f"{ts.id}: failed step; its {len(paths)} changed path(s) stayed inside " \
                     "the allowed paths and nothing landed"
    if problems:
        raise Fail(f"{ts.id}: {problems[0]}")
    manifest = ts.manifest()
    files = manifest.get("files", [])
    for entry in files:
        for raw in (entry.get("path"), entry.get("old_path")):
            why = _outside(ts, policy, allowed, raw) if raw else None
            if why:
                raise Fail(f"{ts.id}: manifest: {why}")
    if manifest.get("status") == "changed":
        for raw in committed_patch_paths(ts.ctx, ts.patch_rel):
            why = _outside(ts, policy, allowed, raw)
            if why:
                raise Fail(f"{ts.id}: {ts.patch_rel}: {why}")
        commit = str(manifest.get("commit"))
        for entry in files:
            mode = entry.get("new_mode")
            if mode == _GITLINK_MODE:
                raise Fail(f"{ts.id}: {entry.get('path')} is a nested repository (gitlink)")
            if mode == _SYMLINK_MODE:
                target = ts.ctx.git.run("cat-file", "blob", f"{commit}:{entry['path']}",
                                        check=False)
                if target.returncode != 0:
                    raise Fail(f"{ts.id}: symlink {entry['path']} is not in commit "
                               f"{commit[:12]}")
                why = _symlink_escape(str(entry["path"]),
                                      target.stdout.decode("utf-8", "surrogateescape"))
                if why:
                    raise Fail(f"{ts.id}: {why}")
    backend = (manifest.get("sandbox") or {}).get("backend", "?")
    note = "" if backend == "bwrap" else f" (sandbox backend {backend}: writes outside the " \
                                         "worktree were not confined)"
    return PASS, f"{ts.id}: {len(paths)} changed path(s), all inside {allowed} and the " \
                 f"worktree{note}"


# ------------------------------------------------------------------ TL-C


def tl_c(ts: ToolStep, strict: bool) -> Verdict:
    pack = ts.pack()
    state, event = _landed_or_failed(ts)
    if state == "failed":
        reason = (event or {}).get("reason", "?")
        if strict:
            raise Fail(f"step {ts.id} did not land (step_failed: {reason}); no commit")
        _nothing_landed(ts)
        if pack["diff"]["patch_sha256"] is not None:
            raise Fail(f"{ts.id}: failed step, yet its result pack names a patch")
        return PASS, f"{ts.id}: step failed ({str(reason)[:80]}); no manifest, no patch, " \
                     "nothing landed"
    assert event is not None
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
    return PASS, f"{ts.id}: pack digest on the tape; {len(recorded)} file(s) == manifest == " \
                 f"commit {commit[:12]}; regenerated patch == {ts.patch_rel}"


# ------------------------------------------------------------------ TL-D


def fresh_decision(policy: Any, files: list[dict[str, Any]], allowed: list[str],
                   modes: dict[str, str | None]) -> tuple[str, str, str]:
    """(allow|deny, rule_id, reason) of the recorded policy over a recorded diff: the
    check_changes rules that need no worktree (count, paths within the tool globs, .git,
    gitlinks)."""
    limit = policy.limits.max_changed_files
    if len(files) > limit:
        return "deny", "limits.max_changed_files", f"{len(files)} files > {limit}"
    for entry in files:
        for raw in (entry.get("path"), entry.get("old_path")):
            if raw is None:
                continue
            decision = decide_path(policy, str(raw), tool_paths=allowed)
            if not decision.allowed:
                return "deny", decision.rule_id, decision.reason
        if modes.get(str(entry.get("path"))) == _GITLINK_MODE:
            return "deny", "paths.git", f"{entry.get('path')} is a gitlink"
    return "allow", "allow", f"{len(files)} change(s) allowed"


def tl_d(ts: ToolStep, strict: bool) -> Verdict:
    pack = ts.pack()
    policy = ts.policy()
    state, _event = _landed_or_failed(ts)
    modes: dict[str, str | None] = {}
    if state == "landed":
        manifest = ts.manifest()
        modes = {str(f.get("path")): f.get("new_mode") for f in manifest.get("files", [])}
        check = manifest.get("policy_check") or {}
        if check.get("policy_sha256") != ts.ctx.sha256("audit/policy.yaml"):
            raise Fail(f"{ts.manifest_rel} was judged under another policy digest")
        if (check.get("decision"), check.get("rule_id")) != (
                pack["policy_check"]["decision"], pack["policy_check"]["rule_id"]):
            raise Fail(f"{ts.id}: result pack policy_check {pack['policy_check']} differs from "
                       f"the manifest's {check.get('decision')}/{check.get('rule_id')}")
    decision, rule_id, reason = fresh_decision(policy, pack["diff"]["files"],
                                               ts.allowed_paths(), modes)
    recorded = (pack["policy_check"]["decision"], pack["policy_check"]["rule_id"])
    if recorded == (decision, rule_id):
        return PASS, f"{ts.id}: recorded {decision}/{rule_id} == fresh decision ({reason})"
    if (state == "failed" and recorded[0] == "deny" and decision == "allow"
            and recorded[1] in WORKTREE_ONLY_RULES):
        return PASS, f"{ts.id}: recorded deny/{recorded[1]} (a worktree-only rule; nothing " \
                     "landed)"
    raise Fail(f"{ts.id}: recorded policy_check {recorded[0]}/{recorded[1]}, a fresh decision "
               f"on the diff says {decision}/{rule_id} ({reason})")


# ------------------------------------------------------------------ TL-E


def expected_argv(ts: ToolStep) -> list[str]:
    """The argv the adapter builds for this step (worktree and config dir from the tape)."""
    from agentos_tasks.tools.dispatch import config_dir_for

    spec = ts.spec()
    if spec.adapter == "command":
        return list(spec.argv)
    worktree = ts.worktree_path()
    invocation = adapters.build_invocation(
        spec, worktree=worktree, config_dir=config_dir_for(worktree, ts.id),
        allowed_paths=list(spec.paths), allow_shell=False,
        network=tool_network(ts.policy(), spec.adapter))
    return list(invocation.argv)


def tl_e(ts: ToolStep, strict: bool) -> Verdict:
    pack = ts.pack()
    spec = ts.spec()
    tool = pack["tool"]
    if pack["adapter"] != spec.adapter:
        raise Fail(f"{ts.id}: result pack adapter {pack['adapter']!r}, request "
                   f"{spec.adapter!r}")
    executable = adapters.executable_for(spec)
    name = spec.adapter if spec.adapter != "command" else os.path.basename(executable)
    if tool["name"] != name:
        raise Fail(f"{ts.id}: tool.name {tool['name']!r}, expected {name!r}")
    version = str(tool["version"]).strip()
    if not version or version == "unknown":
        raise Fail(f"{ts.id}: tool.version not recorded (the CLI did not answer --version)")
    version_rel = f"tools/{ts.id}/version.out"
    answered = adapters.parse_version(ts.ctx.read_bytes(version_rel))
    if answered != version:
        raise Fail(f"{ts.id}: tool.version {version!r} is not what {version_rel} holds "
                   f"({answered!r})")
    if not os.path.isabs(tool["path"]):
        raise Fail(f"{ts.id}: tool.path {tool['path']!r} is not an absolute path")
    argv = expected_argv(ts)
    if pack["argv"] != argv:
        diff = next((i for i, (a, b) in enumerate(zip(pack["argv"], argv, strict=False))
                     if a != b), min(len(argv), len(pack["argv"])))
        raise Fail(f"{ts.id}: recorded argv differs from the adapter's at [{diff}]: "
                   f"{pack['argv'][diff:diff + 1]} != {argv[diff:diff + 1]}")
    transcript = ts.ctx.read_bytes(ts.transcript_rel)
    if sha256_bytes(transcript) != pack["transcript_sha256"]:
        raise Fail(f"{ts.transcript_rel} does not match the recorded transcript_sha256")
    if adapters.parse_claims(spec.adapter, transcript) != pack["claims"]:
        raise Fail(f"{ts.id}: claims do not re-parse from {ts.transcript_rel}")
    state, event = _landed_or_failed(ts)
    if state == "landed":
        assert event is not None
        manifest = ts.manifest()
        recorded = manifest.get("tool") or {}
        for key in ("name", "version", "path", "argv", "transcript_sha256",
                    "task_pack_sha256"):
            value = tool.get(key) if key in ("name", "version", "path") else pack.get(key)
            if recorded.get(key) != value:
                raise Fail(f"{ts.id}: result pack {key} differs from the manifest's")
        if not pack["exit_code"] == manifest.get("exit_code") == event.get("exit_code"):
            raise Fail(f"{ts.id}: exit code {pack['exit_code']} differs from the manifest "
                       "or the tape")
    return PASS, f"{ts.id}: {tool['name']} {version} at {tool['path']}; argv ({len(argv)} " \
                 "args) rebuilt; transcript digest and claims match"


# ------------------------------------------------------------------ TL-F


def tl_f(ts: ToolStep, strict: bool) -> Verdict:
    policy = ts.policy()
    if not needs_approval(policy, ts.step()):
        return NA, f"{ts.id}: the recorded policy requires no review of this step"
    state, _event = _landed_or_failed(ts)
    if state != "landed":
        return NA, f"{ts.id}: needs review, but the step did not land (nothing to approve)"
    manifest = ts.manifest()
    if manifest.get("status") != "changed":
        return NA, f"{ts.id}: needs review, but the tool changed nothing (no patch)"
    actual = ts.ctx.sha256(ts.patch_rel)
    if actual is None:
        raise Fail(f"{ts.patch_rel} is missing")
    data = ts.ctx.answers_file()
    if data is None:
        raise Fail(f"{ts.id} needs a reviewer sign-off; audit/answers.yaml is missing")
    approval = data.get("approvals", {}).get(ts.id)
    if approval is None:
        raise Fail(f"{ts.id} needs a reviewer sign-off; none recorded in audit/answers.yaml")
    if approval["patch_sha256"] != actual:
        raise Fail(f"{ts.id}: sign-off by {approval['by']} binds patch "
                   f"{approval['patch_sha256'][:12]}, {ts.patch_rel} is {actual[:12]}")
    return PASS, f"{ts.id}: signed off by {approval['by']} at {approval['at']}, binding " \
                 f"{actual[:12]}"


CHECKS: dict[str, Callable[[ToolStep, bool], Verdict]] = {
    "TL-A": tl_a, "TL-B": tl_b, "TL-C": tl_c, "TL-D": tl_d, "TL-E": tl_e, "TL-F": tl_f,
}


def check_tool_step(ctx: GateContext, gate_id: str, step_id: str, *,
                    pack_rel: str | None = None, strict: bool = False) -> Verdict:
    """One TL gate over one tool step; findings become FAIL, never an exception."""
    try:
        if not ctx.chain.ok:
            return FAIL, f"tape does not verify: {ctx.chain.reason}"
        return CHECKS[gate_id](ToolStep(ctx, step_id, pack_rel), strict)
    except Fail as finding:
        return FAIL, str(finding)
    except Missing as exc:
        return FAIL, str(exc)
    except PolicyViolation as exc:
        return FAIL, f"{exc.rule_id}: {exc.what}"
    except AgentosError as err:
        return FAIL, err.message
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return FAIL, f"malformed evidence for {step_id}: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ over a run


def started_tool_steps(ctx: GateContext) -> tuple[list[str], int]:
    """(tool steps the tape started, tool steps in the request)."""
    tools = [str(s["id"]) for s in ctx.request_record["steps"] if s.get("op") == "tool"]
    started = {str(e.get("step")) for e in ctx.events_named("step_start")}
    return [s for s in tools if s in started], len(tools)


def request_yaml_tool_steps(ctx: GateContext) -> list[str]:
    """Ids of the tool steps as the recorded request file itself (audit/request.yaml)
    declares them (a step is a tool step when it has a `tool:` key)."""
    return [str(s.get("id")) for s in ctx.request_yaml()["steps"]
            if isinstance(s, dict) and "tool" in s]


def tool_traces(ctx: GateContext) -> tuple[list[str], list[str]]:
    """(entries under tools/, steps whose manifest carries a tool record)."""
    root = ctx.run_dir / "tools"
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    marked = []
    for path in sorted((ctx.run_dir / "steps").glob("*.json")):
        data = ctx.read_bytes(f"steps/{path.name}")
        if b'"tool' not in data:  # cheap pre-filter: both keys start so
            continue
        manifest = ctx.json(f"steps/{path.name}")
        if isinstance(manifest, dict) and ("tool" in manifest
                                           or "tool_result_pack_sha256" in manifest):
            marked.append(str(manifest.get("step", path.stem)))
    return entries, marked


def tool_scope(ctx: GateContext) -> tuple[list[str], Verdict | None]:
    """(tool steps the tape started, a verdict when there is nothing to check per step).

    NOT_APPLICABLE only when nothing about tools exists: no tool step in request.yaml or
    request.json, nothing under tools/, no manifest with a tool record; or when the
    declared tool steps provably never started (no step_start, no tools/<step>/, no
    manifest). Any trace of a tool that the records do not account for is a FAIL.
    """
    steps, declared = started_tool_steps(ctx)
    recorded = [str(s["id"]) for s in ctx.request_record["steps"] if s.get("op") == "tool"]
    declared_yaml = request_yaml_tool_steps(ctx)
    entries, marked = tool_traces(ctx)
    if not (declared or declared_yaml or entries or marked):
        return steps, (NA, "the run has no tool steps (request.yaml, request.json, tools/ "
                           "and manifests agree)")
    if declared_yaml != recorded:
        raise Fail(f"audit/request.yaml declares tool step(s) {declared_yaml}, "
                   f"audit/request.json {recorded}")
    for name in entries:
        if name not in recorded:
            raise Fail(f"tools/{name}/ exists, but {name!r} is not a tool step of the request")
        if name not in steps:
            raise Fail(f"tools/{name}/ exists, but the tape never started step {name}")
    for name in marked:
        if name not in steps:
            raise Fail(f"steps/{name}.json carries a tool record, but {name!r} is not a "
                       "tool step the tape started")
    if not steps:
        return steps, (NA, f"none of the {declared} tool step(s) ran: no step_start, no "
                           "tools/ entry, no tool manifest")
    return steps, None


def _run_gate(gate_id: str) -> Callable[[GateContext], Verdict]:
    def check(ctx: GateContext) -> Verdict:
        if not ctx.chain.ok:
            return FAIL, f"tape does not verify: {ctx.chain.reason}"
        try:
            steps, settled = tool_scope(ctx)
        except Fail as finding:
            return FAIL, str(finding)
        if settled is not None:
            return settled
        verdicts = [(s, check_tool_step(ctx, gate_id, s)) for s in steps]
        failed = [(s, v) for s, v in verdicts if v[0] == FAIL]
        if failed:
            return FAIL, failed[0][1][1]
        passed = [(s, v) for s, v in verdicts if v[0] == PASS]
        if not passed:
            return NA, verdicts[0][1][1]
        if len(verdicts) == 1:
            return PASS, verdicts[0][1][1]
        return PASS, f"{len(passed)} tool step(s) pass ({', '.join(s for s, _ in passed)})" + \
            (f"; {len(verdicts) - len(passed)} not applicable" if len(passed) < len(verdicts)
             else "")

    check.__name__ = f"tool_gate_{gate_id.replace('-', '_').lower()}"
    return check


INPUTS: tuple[str, ...] = ("tools/*", "steps/*.json", "patches/*.patch", "audit/*")
GATES: list[Gate] = [
    Gate(gate_id, TOOL_GATE_TITLES[gate_id], _run_gate(gate_id), INPUTS,
         uses_repo=gate_id in ("TL-B", "TL-C"))
    for gate_id in TOOL_GATE_IDS
]
