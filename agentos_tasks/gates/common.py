"""What the gate modules share: a gate's definition and result, its verdict, and the
readers of a run's evidence that several gates use.

A `Gate` names its check: a pure function of a `GateContext` returning a `Verdict`,
(model.Status, one-line reason). Most checks are a sequence of named
checks that raise `Fail` for the finding that decides the gate; `@verdict` turns it (or
a PolicyViolation) into (FAIL, reason). The readers below take nothing on the tape's word
that a file or git can show, and a missing piece of evidence is a FAIL, never a skipped
check.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import PolicyViolation
from agentos_tasks.gates.context import Missing
from agentos_tasks.git import parse_numstat_z
from agentos_tasks.model import Author, Request, Status, Step, ToolSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.policy import Policy


# Verdicts are model.Status (the one definition); these short names are its members.
PASS, FAIL, NA = Status.PASS, Status.FAIL, Status.NOT_APPLICABLE
Verdict = tuple[Status, str]
FINAL_STATUSES = ("applied", "failed", "denied", "blocked", "rolled_back")
# What most gates read (run-relative globs; their content is the cache digest's input).
RUN_INPUTS: tuple[str, ...] = ("audit/*", "execution_result.json", "steps/*.json",
                               "patches/*.patch")


@dataclass
class GateResult:
    id: str
    title: str
    status: Status
    reason: str
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a stored result read back holds the string

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Gate:
    id: str
    title: str
    check: Callable[[GateContext], Verdict]
    inputs: tuple[str, ...]  # run-relative globs whose content the gate depends on
    uses_repo: bool = False
    uses_package: bool = False


class Fail(Exception):
    """A finding that decides the gate: FAIL with this one-line reason."""


def verdict(fn: Callable[[GateContext], Verdict]) -> Callable[[GateContext], Verdict]:
    """Turn `Fail` findings into a (FAIL, reason) verdict."""

    def check(ctx: GateContext) -> Verdict:
        try:
            return fn(ctx)
        except Fail as finding:
            return FAIL, str(finding)
        except PolicyViolation as exc:
            return FAIL, f"{exc.rule_id}: {exc.what}"

    check.__name__ = fn.__name__
    check.__doc__ = fn.__doc__
    return check


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


def tool_dirs(ctx: GateContext) -> list[str]:
    """Names under tools/ (every tool step leaves tools/<step>/, nothing else does)."""
    root = ctx.run_dir / "tools"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []



def wrapped_argv(wrapper: Any, argv: list[str]) -> bool:
    """True when a sandbox wrapper argv ends with `-- <argv>` (bwrap and the `none`
    reaper both end so: agentos_tasks.sandbox.bwrap.build_bwrap_argv, proc.run_confined)."""
    return isinstance(wrapper, list) and len(wrapper) > len(argv) and \
        wrapper[len(wrapper) - len(argv) - 1:] == ["--", *argv]


def request_from_record(record: dict[str, Any]) -> Request:
    """Rebuild the request (as far as the policy needs it) from audit/request.json."""
    steps = []
    for raw in record["steps"]:
        tool = raw.get("tool")
        steps.append(Step(
            id=raw["id"], index=raw["index"], op=raw["op"], message=raw["message"],
            line=0, path=raw.get("path"),  # the record says what a step means, not where
            patch_paths=tuple(raw.get("patch_paths", ())), argv=tuple(raw.get("argv", ())),
            expect_exit=raw.get("expect_exit", 0),
            tool=ToolSpec(tool["adapter"], tool["prompt"], tuple(tool["paths"]),
                          tuple(tool["argv"]), tool.get("model")) if tool else None,
        ))
    return Request(source=Path(record["source"]), sha256=record["sha256"], version=1,
                   id=record["id"], repo=Path(record["repo"]), init_repo=record["init_repo"],
                   base=record.get("base"), branch=record.get("branch"), policy=None,
                   author=Author(**record["author"]), steps=tuple(steps))


def recorded_policy(ctx: GateContext) -> Policy:
    """The policy the run was decided under (audit/policy.yaml), loaded as the executor
    loads it; Missing when it is absent."""
    from agentos_tasks.policy import load_policy

    ctx.note("audit/policy.yaml")
    path = ctx.run_dir / "audit" / "policy.yaml"
    if not path.is_file():
        raise Missing("audit/policy.yaml is missing")
    policy = load_policy(path)
    # with the path approvals of audit/answers.yaml, as the executor decided with them;
    # EX-G checks that file is the one the run recorded (paths_approved)
    from agentos_tasks.answers_file import approved_paths

    approved = approved_paths(ctx.answers_file())
    return dataclasses.replace(policy, approved_paths=approved) if approved else policy
