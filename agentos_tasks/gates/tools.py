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

The checks live in tool_pack.py (TL-A, TL-E), tool_diff.py (TL-B, TL-C) and
tool_policy.py (TL-D, TL-F), over a `ToolStep` (tool_step.py). `check_tool_step`
evaluates one step (used by `agentos tool verify` through
agentos_tasks.tools.pack_check with `strict=True`: a step that did not land fails TL-C);
the gates run it over every tool step the run started (a failed step passes TL-B/TL-C
only when nothing of it landed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentos_tasks.errors import AgentosError, PolicyViolation
from agentos_tasks.gates.common import FAIL, NA, PASS, Fail, Gate, Verdict, tool_dirs
from agentos_tasks.gates.context import Missing
from agentos_tasks.gates.tool_diff import tl_b, tl_c
from agentos_tasks.gates.tool_pack import tl_a, tl_e
from agentos_tasks.gates.tool_policy import tl_d, tl_f
from agentos_tasks.gates.tool_step import ToolStep

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentos_tasks.gates.context import GateContext


TOOL_GATE_IDS: tuple[str, ...] = ("TL-A", "TL-B", "TL-C", "TL-D", "TL-E", "TL-F")
TOOL_GATE_TITLES: dict[str, str] = {
    "TL-A": "tool task pack complete, valid and the one the step was given",
    "TL-B": "the tool changed nothing outside its allowed paths nor the worktree",
    "TL-C": "diff and commit present and equal to the patch; pack digest on the tape",
    "TL-D": "recorded policy decision equals a fresh decision on the diff",
    "TL-E": "tool name, version and argv recorded (argv rebuilt, transcript digest)",
    "TL-F": "reviewer sign-off binding the patch present when the policy requires it",
}
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
    entries = tool_dirs(ctx)
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


def _tool_gate(gate_id: str) -> Gate:
    return Gate(gate_id, TOOL_GATE_TITLES[gate_id], _run_gate(gate_id), INPUTS,
                uses_repo=gate_id in ("TL-B", "TL-C"))


TL_A = _tool_gate("TL-A")
TL_B = _tool_gate("TL-B")
TL_C = _tool_gate("TL-C")
TL_D = _tool_gate("TL-D")
TL_E = _tool_gate("TL-E")
TL_F = _tool_gate("TL-F")
