"""EX-E: the tape's step events are well formed and vouch for the manifests: every
step_start is closed by exactly one step_end or step_failed (or, when its invocation was
killed or interrupted, by step_interrupted and run_resumed on the very next two lines),
`seq` is contiguous, each manifest and patch matches the digests on its step_end, a
finished run ends with run_end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import (
    PASS,
    RUN_INPUTS,
    Fail,
    Gate,
    Verdict,
    executed_manifests,
    last_step_end,
    require_chain,
    status_of,
    verdict,
)

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext


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
    check_steps_closed(events)
    ends = last_step_end(ctx)
    count = check_manifests_vouched(ctx, ends)
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


def check_steps_closed(events: list[dict[str, Any]]) -> None:
    """Steps never overlap: each step_start is closed by its step_end or step_failed
    before the next step starts or the run applies, blocks or ends. A step whose
    invocation died is closed in exactly one shape: its step_start, then step_interrupted
    of the same step, then run_resumed, on consecutive lines (the tape's recovery)."""
    open_step: str | None = None
    for index, event in enumerate(events):
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
        elif name == "step_interrupted":
            check_interrupted(events, index)
            open_step = None
        elif name in ("patches_applied", "run_end", "questions_blocked") and open_step:
            raise Fail(f"{name} while step {open_step} has no step_end/step_failed")
    if open_step is not None:
        raise Fail(f"step {open_step} has a step_start but no step_end/step_failed")


def check_interrupted(events: list[dict[str, Any]], index: int) -> None:
    """events[index] is a step_interrupted: the line before is the step_start of the same
    step (seq as recorded in started_seq), the line after is run_resumed."""
    event = events[index]
    step = event.get("step")
    before = events[index - 1] if index > 0 else {}
    if before.get("event") != "step_start" or before.get("step") != step:
        raise Fail(f"line {index + 1}: step_interrupted of {step} does not follow its "
                   f"step_start (the line before is {before.get('event')} of "
                   f"{before.get('step')})")
    if event.get("started_seq") != before.get("seq"):
        raise Fail(f"line {index + 1}: step_interrupted of {step} names step_start seq "
                   f"{event.get('started_seq')!r}, the line before is seq {before.get('seq')!r}")
    after = events[index + 1] if index + 1 < len(events) else {}
    if after.get("event") != "run_resumed":
        raise Fail(f"line {index + 1}: step_interrupted of {step} is not followed by "
                   f"run_resumed (next: {after.get('event')})")


def check_manifests_vouched(ctx: GateContext, ends: dict[str, dict[str, Any]]) -> int:
    """Every manifest (and a changed step's patch file) has the digest its last step_end
    records, and the same status; returns the number of manifests."""
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
    return count

EX_E = Gate("EX-E", "every step_start closed once; seq contiguous; checksums recorded",
            ex_e_steps, RUN_INPUTS)
