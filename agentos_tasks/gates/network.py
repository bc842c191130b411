"""NET: every connection a step tried is re-decided under the recorded policy.

A networked step's proxy (agentos_tasks.net, outside the sandbox) appends one entry per
attempt to `network/<step>.jsonl`. This gate reads every ledger, checks that it is the one
the step's manifest recorded (digest and count), that it belongs to a step the recorded
policy gives that network, and re-runs the allowlist decision on each entry (host, port,
the address the proxy chose): a ledger edited to say "allow" where the policy says no, a
rule id that is not the one that decides, a missing or extra ledger, all FAIL.
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
    executed_manifests,
    recorded_policy,
    request_from_record,
    require_chain,
    verdict,
)
from agentos_tasks.policy import step_network

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.model import Step
    from agentos_tasks.policy.schema import NetworkRule

LEDGER_DIR = "network"


def _ledger_files(ctx: GateContext) -> list[str]:
    base = ctx.run_dir / LEDGER_DIR
    if not base.is_dir():
        return []
    return sorted(f"{LEDGER_DIR}/{p.name}" for p in base.iterdir())


def _check_entries(step_id: str, rel: str, entries: list[dict[str, Any]],
                   rule: NetworkRule) -> tuple[int, int]:
    """Re-decide each entry; (allowed, denied) counts."""
    from agentos_tasks.net.allowlist import make_allowlist
    from agentos_tasks.net.ledger import redecide

    allowlist = make_allowlist(rule.allow, rule.resolve, rule.unrestricted, rule.rule_id)
    allowed = denied = 0
    for number, entry in enumerate(entries, 1):
        where = f"{rel}:{number}"
        if entry.get("step") != step_id:
            raise Fail(f"{where}: entry names step {entry.get('step')!r}, not {step_id}")
        if entry.get("seq") != number:
            raise Fail(f"{where}: seq {entry.get('seq')!r}, expected {number} (an entry was "
                       "removed, added or reordered)")
        again = redecide(entry, allowlist)
        decision = "allow" if again.allowed else "deny"
        if entry.get("decision") != decision or entry.get("rule") != again.rule:
            raise Fail(f"{where}: {entry.get('host')}:{entry.get('port')} recorded "
                       f"{entry.get('decision')} by {entry.get('rule')!r}; the recorded policy "
                       f"decides {decision} by {again.rule!r}")
        if again.allowed:
            allowed += 1
            if again.address is None or entry.get("address") != again.address:
                raise Fail(f"{where}: an allowed connection to {entry.get('address')!r}, the "
                           f"policy's decision connects to {again.address!r}")
        else:
            denied += 1
            if entry.get("bytes_down") or entry.get("bytes_up"):
                raise Fail(f"{where}: a denied connection records bytes exchanged with the "
                           "upstream")
    return allowed, denied


def _step_ledger(ctx: GateContext, step: Step, manifest: dict[str, Any] | None,
                 rule: NetworkRule | None, rel: str) -> tuple[int, int, bool]:
    """Check one step's ledger; (allowed, denied, found)."""
    from agentos_tasks.net.ledger import read_ledger

    recorded = ((manifest or {}).get("sandbox") or {}).get("ledger")
    exists = ctx.exists(rel)
    if rule is None:
        if exists or recorded:
            raise Fail(f"step {step.id} has a network ledger, but the recorded policy gives "
                       "it no network")
        return 0, 0, False
    if manifest is not None:
        if not isinstance(recorded, dict) or recorded.get("path") != rel:
            raise Fail(f"step {step.id} ran with network rule {rule.rule_id} but its manifest "
                       f"records no ledger at {rel}")
        if not exists:
            raise Fail(f"step {step.id}: {rel} is missing (its manifest records it)")
        if ctx.sha256(rel) != recorded.get("sha256"):
            raise Fail(f"step {step.id}: {rel} is not the ledger its manifest recorded "
                       "(digest differs)")
    elif not exists:
        return 0, 0, False  # a step that failed before its proxy started
    try:
        entries = read_ledger(ctx.note(rel))
    except ValueError as exc:
        raise Fail(f"{rel}: {exc}") from None
    if isinstance(recorded, dict) and recorded.get("entries") != len(entries):
        raise Fail(f"step {step.id}: {rel} holds {len(entries)} entries, its manifest "
                   f"recorded {recorded.get('entries')}")
    allowed, denied = _check_entries(step.id, rel, entries, rule)
    return allowed, denied, True


@verdict
def net_ledger(ctx: GateContext) -> Verdict:
    """Every ledger belongs to a step the recorded policy gives network, is the one its
    manifest recorded, and each of its entries is the policy's own decision."""
    require_chain(ctx)
    policy = recorded_policy(ctx)
    steps = {s.id: s for s in request_from_record(ctx.request_record).steps}
    manifests = dict(executed_manifests(ctx))
    files = _ledger_files(ctx)
    # each step's ledger and the proxy's own diagnostics (proc.py)
    expected = {f"{LEDGER_DIR}/{step_id}{suffix}" for step_id in steps
                for suffix in (".jsonl", ".proxy.log")}
    stray = [rel for rel in files if rel not in expected]
    if stray:
        raise Fail(f"{stray[0]} is not the ledger of any step of the request")
    granted = {s.id: step_network(policy, s) for s in steps.values()}
    if not any(granted.values()) and not files:
        return NA, "no step of the request has a network grant"
    totals = [0, 0]
    ledgers = 0
    for step_id, step in steps.items():
        rel = f"{LEDGER_DIR}/{step_id}.jsonl"
        allowed, denied, found = _step_ledger(ctx, step, manifests.get(step_id),
                                              granted[step_id], rel)
        totals[0] += allowed
        totals[1] += denied
        ledgers += found
    if not ledgers:
        return NA, "no networked step ran"
    return PASS, f"{ledgers} ledger(s): {totals[0] + totals[1]} connection(s) re-decided " \
                 f"under the recorded policy ({totals[0]} allowed, {totals[1]} denied)"


NET = Gate("NET", "network ledger re-decided under the recorded policy", net_ledger,
           (*RUN_INPUTS, "network/*"))
