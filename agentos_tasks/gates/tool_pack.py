"""TL-A and TL-E: what the tool was given and what ran.

TL-A: the task pack is complete and valid, and it is the one this step was given (run,
step, adapter, prompt, paths, base commit, policy digest, limits), and the result pack
answers exactly it. TL-E: tool name, version and argv are recorded; the argv is the one
the adapter builds for this step; the transcript matches its digest and the claims
re-parse from it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from agentos_tasks.fsutil import sha256_bytes
from agentos_tasks.gates.common import PASS, Fail, Verdict
from agentos_tasks.gates.tool_step import landed_or_failed
from agentos_tasks.policy import tool_network
from agentos_tasks.tools import adapters, packs
from agentos_tasks.tools.dispatch import requested_model

if TYPE_CHECKING:
    from agentos_tasks.gates.tool_step import ToolStep


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


# ------------------------------------------------------------------ TL-E


def expected_argv(ts: ToolStep) -> list[str]:
    """The argv the adapter builds for this step (worktree and config dir from the tape)."""
    from agentos_tasks.tools.dispatch import config_dir_for

    spec = ts.spec()
    if spec.adapter == "command":
        return list(spec.argv)
    worktree = ts.worktree_path()
    rule = ts.policy().tool_rule(spec.adapter)
    invocation = adapters.build_invocation(
        spec, worktree=worktree, config_dir=config_dir_for(worktree, ts.id),
        allowed_paths=list(spec.paths), allow_shell=False,
        network=tool_network(ts.policy(), spec.adapter) is not None,
        provider=rule.provider if rule is not None else None)
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
    model = requested_model(spec, ts.policy().tool_rule(spec.adapter))
    if adapters.parse_claims(spec.adapter, transcript, model=model) != pack["claims"]:
        raise Fail(f"{ts.id}: claims do not re-parse from {ts.transcript_rel}")
    state, event = landed_or_failed(ts)
    if state == "landed":
        if event is None:  # landed_or_failed gives a landed step its step_end
            raise Fail(f"step {ts.id} has no step_end on the tape")
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
