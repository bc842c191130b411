"""`agentos tool verify --result PATH`: the six TL gates over one tool result pack.

The pack must sit where the executor wrote it, `outputs/<run>/tools/<step>/`, because
its claims are checked against the rest of that run: the task pack next to it, the
manifest `steps/<step>.json`, `patches/<step>.patch`, `audit/policy.yaml`,
`audit/request.json`, `audit/answers.yaml`, the tape, and the commit in the target
repository. The checks are those of agentos_tasks/gates/tools.py, in strict mode: a step that
failed (nothing landed) FAILs TL-C here, since there is no commit to vouch for.

Works from any directory; a forged or malformed pack is a FAIL with a reason, an
unreadable path is one AgentosError, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import Status

if TYPE_CHECKING:  # gates imports this package's modules; load it only when verifying
    from agentos_tasks.gates.common import GateResult

STATUS_WIDTH = 15


def locate(path: Path) -> tuple[Path, str, str]:
    """(run dir, step id, run-relative pack path) of a result pack at
    `<run>/tools/<step>/<file>`; AgentosError when it is not one."""
    absolute = Path(path).expanduser().absolute()
    if not absolute.exists():
        raise AgentosError(f"no such result pack: {path}",
                           hint="agentos tool verify --result "
                                "outputs/<run>/tools/<step>/tool_result_pack.json")
    if not absolute.is_file():
        raise AgentosError(f"{path} is not a file",
                           hint="give the tool_result_pack.json inside the step's tools/ dir")
    try:
        absolute.read_bytes()
    except OSError as exc:
        raise AgentosError(f"cannot read {path}: {exc}") from None
    resolved = absolute.resolve()
    if len(resolved.parents) < 3 or resolved.parents[1].name != "tools":
        raise AgentosError(f"{path} is not inside a run directory",
                           hint="result packs live at outputs/<run>/tools/<step>/"
                                "tool_result_pack.json; verify it in place")
    run_dir = resolved.parents[2]
    if not (run_dir / "audit").is_dir():
        raise AgentosError(f"{run_dir} is not a run directory (no audit/)",
                           hint="verify the pack inside the run that produced it")
    step_id = resolved.parent.name
    return run_dir, step_id, resolved.relative_to(run_dir).as_posix()


def verify_result_pack(path: Path) -> list[GateResult]:
    """TL-A .. TL-F for the one tool step whose result pack is `path`."""
    from agentos_tasks.gates.common import GateResult
    from agentos_tasks.gates.context import GateContext
    from agentos_tasks.gates.tools import TOOL_GATE_IDS, TOOL_GATE_TITLES, check_tool_step

    run_dir, step_id, pack_rel = locate(path)
    results: list[GateResult] = []
    for gate_id in TOOL_GATE_IDS:
        ctx = GateContext(run_dir)
        status, reason = check_tool_step(ctx, gate_id, step_id, pack_rel=pack_rel,
                                         strict=True)
        results.append(GateResult(gate_id, TOOL_GATE_TITLES[gate_id], status,
                                  reason.splitlines()[0] if reason else "",
                                  ctx.evidence_list()))
    return results


def render(results: list[GateResult]) -> str:
    """One line per gate (status, id, reason) and a verdict line."""
    lines = [f"{r.status:<{STATUS_WIDTH}} {r.id}  {r.reason}" for r in results]
    failed = [r.id for r in results if r.status == Status.FAIL]
    if failed:
        lines.append(f"FAIL: {len(failed)} of {len(results)} tool gate(s) failed: "
                     f"{', '.join(failed)}")
    else:
        lines.append(f"OK: no tool gate failed ({sum(r.status == Status.PASS for r in results)} "
                     "passed)")
    return "\n".join(lines)
