"""Decisions before anything runs: may this path, argv, tool or whole request go ahead?

Each answer is a `Decision` naming the rule that made it. Deny beats ask beats allow; a
path no allow rule matches is denied (``paths.default``), and `ask` denies in a headless
run. Also here: what a step gets from the policy (network, the environment, whether a
reviewer must approve it). Pure: no process, no clock, no filesystem.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import PolicyViolation
from agentos_tasks.policy.paths import compile_glob, normalize_path

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from agentos_tasks.model import Request, Step, ToolSpec
    from agentos_tasks.policy.schema import CommandRule, NetworkRule, PathRule, Policy


@dataclass(frozen=True)
class Decision:
    """One allow/deny verdict and the rule that made it."""

    allowed: bool
    rule_id: str
    reason: str
    subject: str = ""  # the path, argv or adapter that was judged
    step: str | None = None  # step id, when the decision is about one step
    # denied by an ask rule alone: an answers file's path_approvals can allow it
    approvable: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the tape, tool result packs and reports."""
        return {"decision": "allow" if self.allowed else "deny", "allowed": self.allowed,
                "rule_id": self.rule_id, "reason": self.reason, "subject": self.subject,
                "step": self.step}


# --------------------------------------------------------------------------- paths

def _first_match(rules: Sequence[PathRule], path: str) -> PathRule | None:
    return next((rule for rule in rules if rule.matches(path)), None)


def decide_path(policy: Policy, path: str, *, tool_paths: Sequence[str] | None = None,
                ignored: bool = False, step: str | None = None) -> Decision:
    """May `path` be changed? Order: safety, deny, ask, (ignored stops here), tool paths, allow.

    `tool_paths` are the globs of a tool step (`ToolSpec.paths`): a tool may only change
    paths inside them *and* inside the policy. `ignored` marks a gitignored file a command
    created: it never lands, so only deny/ask and the safety rules judge it. An ask match
    is allowed (under the ask rule's id) only for the `step` an answers file approved it
    for (`policy.approved_paths`: this step, this exact path, this rule); else it denies.
    """
    try:
        normal = normalize_path(path)
    except PolicyViolation as exc:
        # a name refused for its characters is recorded and shown escaped, never raw
        shown = ascii(path)[1:-1] if exc.rule_id in ("paths.name", "paths.invalid") \
            and isinstance(path, str) else str(path)
        return Decision(False, exc.rule_id, exc.what, subject=shown)
    deny = _first_match(policy.deny, normal)
    if deny is not None:
        return Decision(False, deny.rule_id, f"{normal} matches deny glob {deny.glob!r}", normal)
    ask = _first_match(policy.ask, normal)
    if ask is not None and (step, normal, ask.rule_id) not in policy.approved_paths:
        return Decision(False, ask.rule_id, f"{normal} matches ask glob {ask.glob!r}: needs "
                        "approval, and a headless run denies it", normal, approvable=True)
    if ignored:
        return Decision(True, "paths.ignored", f"{normal} is gitignored (never lands) and no "
                        "deny or ask rule matches", normal)
    if tool_paths is not None and not _tool_paths_match(tool_paths, normal):
        return Decision(False, "tool.paths", f"{normal} is outside the tool's paths "
                        f"{list(tool_paths)}", normal)
    if ask is not None:
        return Decision(True, ask.rule_id, f"{normal} matches ask glob {ask.glob!r}: approved "
                        f"for step {step} by the answers file", normal)
    allow = _first_match(policy.allow, normal)
    if allow is not None:
        return Decision(True, allow.rule_id, f"{normal} matches allow glob {allow.glob!r}",
                        normal)
    return Decision(False, "paths.default", f"{normal} matches no allow glob", normal)


def decide_executable(policy: Policy, path: str) -> Decision:
    """May `path` land executable (git mode 100755, as a new file or by a mode change)?

    Only where a ``paths.executable`` glob matches (exact case, like allow); no glob, no
    executable: ``paths.executable``. A file that already was 100755 keeps its mode freely.
    """
    normal = normalize_path(path)
    rule = _first_match(policy.executable, normal)
    if rule is not None:
        return Decision(True, rule.rule_id, f"{normal} may be executable: matches "
                        f"paths.executable glob {rule.glob!r}", normal)
    return Decision(False, "paths.executable", f"{normal} would land executable (100755) but "
                    "matches no paths.executable glob", normal)


def _tool_paths_match(tool_paths: Sequence[str], path: str) -> bool:
    for glob in tool_paths:
        try:
            regex = compile_glob(glob)
        except ValueError:
            continue  # decide_tool refuses such a step before it runs
        if regex.search(path) is not None:
            return True
    return False


# --------------------------------------------------------------------------- commands, tools

def decide_argv(policy: Policy, argv: Sequence[str]) -> Decision:
    """A run step's argv is allowed iff some `commands[]` argv is a token-exact prefix of it.

    There is no shell: ``bash -c "..."`` is the argv ``[bash, -c, ...]`` and needs its own
    rule; ``/usr/bin/python`` is not ``python``.
    """
    tokens = tuple(argv)
    shown = shlex.join(tokens)
    if not tokens:
        return Decision(False, "commands.default", "empty argv", shown)
    rule = command_rule(policy, tokens)
    if rule is not None:
        return Decision(True, rule.rule_id, f"argv starts with {list(rule.argv)}", shown)
    return Decision(False, "commands.default", f"no commands rule is a prefix of {shown}", shown)


def decide_tool(policy: Policy, tool: ToolSpec) -> Decision:
    """A tool step is allowed iff its adapter is listed and its path globs stay in the repo."""
    rule = policy.tool_rule(tool.adapter)
    if rule is None:
        return Decision(False, "tools.default", f"adapter {tool.adapter!r} is not listed in "
                        "tools", tool.adapter)
    for glob in tool.paths:
        try:
            normalize_path(glob)
            compile_glob(glob)
        except PolicyViolation as exc:
            return Decision(False, exc.rule_id, f"tool path glob: {exc.what}", glob)
        except ValueError as exc:
            return Decision(False, "tool.paths", str(exc), glob)
        wider = _wider_than_policy(policy, glob)
        if wider is not None:
            return wider
    if tool.adapter == "command":
        shown = shlex.join(tool.argv)
        if not tool.argv:
            return Decision(False, rule.rule_id, "the command adapter needs an argv", shown)
        if rule.argv is not None and tool.argv[: len(rule.argv)] != rule.argv:
            return Decision(False, rule.rule_id, f"argv does not start with {list(rule.argv)}",
                            shown)
    return Decision(True, rule.rule_id, f"adapter {tool.adapter!r} is listed", tool.adapter)


_PROBE = "agentos-probe"


def glob_probe(glob: str) -> str:
    """A path `glob` matches, with every wildcard filled by a name no rule is likely to
    single out: what a tool given that glob could write."""
    probe = re.sub(r"\[[^\]]*\]", "x", glob.strip().lstrip("/"))
    probe = re.sub(r"\*+", _PROBE, probe).replace("?", "x")
    return probe + _PROBE if probe.endswith("/") or not probe else probe


def _wider_than_policy(policy: Policy, glob: str) -> Decision | None:
    """A denial when a tool path glob reaches paths the policy does not allow (judged on
    `glob_probe`), before anything runs; else None."""
    probe = glob_probe(glob)
    decision = decide_path(policy, probe)
    if decision.allowed:
        return None
    return Decision(False, "tool.paths", f"tool path {glob!r} is wider than the policy: it "
                    f"would let the tool write {probe!r}, which the policy denies "
                    f"({decision.rule_id}: {decision.reason})", glob)


def tool_network(policy: Policy, adapter: str) -> NetworkRule | None:
    """The network grant of `adapter`'s tools rule (None: no network, or not listed)."""
    rule = policy.tool_rule(adapter)
    return rule.network if rule is not None else None


def command_rule(policy: Policy, argv: Sequence[str]) -> CommandRule | None:
    """The first `commands[]` rule whose argv is a token-exact prefix of `argv`."""
    tokens = tuple(argv)
    return next((rule for rule in policy.commands if tokens[: len(rule.argv)] == rule.argv),
                None)


def step_network(policy: Policy, step: Step) -> NetworkRule | None:
    """Network for one step: a tool per its rule; a run step per the top-level `network:`,
    narrowed by its command rule's own `network:`; other operations never."""
    if step.op == "tool" and step.tool is not None:
        return tool_network(policy, step.tool.adapter)
    if step.op != "run":
        return None
    rule = command_rule(policy, step.argv)
    if rule is not None and rule.network_given:
        return rule.network
    return policy.network


def needs_approval(policy: Policy, step: Step) -> bool:
    """True when a reviewer approval must be recorded before this step's patch is applied."""
    if step.op in policy.require_approval:
        return True
    if step.op == "tool" and step.tool is not None:
        rule = policy.tool_rule(step.tool.adapter)
        return rule is not None and rule.review
    return False


def step_env(policy: Policy, host_env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment a step gets: the allowlisted names present on the host, and
    PYTHONDONTWRITEBYTECODE=1 so that Python's bytecode caches (`__pycache__/`), which
    every `python -m pytest` check would leave, never become part of a step's change.

    PATH loses empty and relative entries: inside the sandbox they resolve against the
    worktree, where a repository file named `python3` would win over the real one.
    """
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    env.update({name: host_env[name] for name in policy.env if name in host_env})
    if "PATH" in env:
        entries = [e for e in env["PATH"].split(os.pathsep) if e and os.path.isabs(e)]
        env["PATH"] = os.pathsep.join(dict.fromkeys(entries))
    return env


# --------------------------------------------------------------------------- request

def check_request(policy: Policy, request: Request) -> Decision:
    """Pre-run check of the WHOLE request; the first denial wins and names its step."""
    if len(request.steps) > policy.limits.max_steps:
        return Decision(False, "limits.max_steps", f"{len(request.steps)} steps exceed "
                        f"limits.max_steps={policy.limits.max_steps}", request.id)
    for step in request.steps:
        decision = _check_step(policy, step)
        if not decision.allowed:
            return dataclasses.replace(decision, step=step.id)
    return Decision(True, "allow", f"{len(request.steps)} steps allowed by policy {policy.id!r}",
                    request.id)


def _check_step(policy: Policy, step: Step) -> Decision:
    if step.op not in policy.operations:
        return Decision(False, "operations", f"operation {step.op!r} is not in operations "
                        f"{list(policy.operations)}", step.op)
    for path in step.declared_paths():
        decision = decide_path(policy, path, step=step.id)
        if not decision.allowed:
            return decision
        if len(os.fsencode(path)) > policy.limits.path_length:
            return Decision(False, "limits.path_length", f"a path of {len(os.fsencode(path))} "
                            f"bytes exceeds limits.path_length={policy.limits.path_length}",
                            decision.subject)
        levels = decision.subject.count("/") + 1
        if levels > policy.limits.path_depth:
            return Decision(False, "limits.path_depth", f"a path of {levels} levels exceeds "
                            f"limits.path_depth={policy.limits.path_depth}",
                            decision.subject[:200])
    if step.op == "write" and step.content is not None \
            and len(step.content) > policy.limits.max_file_bytes:
        return Decision(False, "limits.max_file_bytes", f"{len(step.content)} bytes exceed "
                        f"limits.max_file_bytes={policy.limits.max_file_bytes}",
                        step.path or "")
    if step.op == "run":
        decision = decide_argv(policy, step.argv)
        if not decision.allowed:
            return decision
    if step.op == "tool":
        if step.tool is None:
            return Decision(False, "tools.default", "tool step without a tool", step.id)
        decision = decide_tool(policy, step.tool)
        if not decision.allowed:
            return decision
    return Decision(True, "allow", f"step {step.id} allowed", step.id)


__all__ = [
    "Decision", "check_request", "decide_argv", "decide_executable", "decide_path",
    "decide_tool", "needs_approval", "step_env", "step_network", "tool_network",
]
