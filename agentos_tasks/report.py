"""The signable human report: `reports/report.md`.

A reviewer reads this file instead of the JSON artifacts, and it is one of the signed
subjects, so it must say only what the artifacts say. It is therefore generated from the
files in the run directory and nothing else: no git calls, no clock, no environment. The
same artifacts always render the same bytes, which is what lets `sign_run` regenerate it
right before signing. Anything missing or unreadable is printed as MISSING / UNREADABLE —
a gap in the evidence must be visible, never silently skipped.

The artifacts may come from someone else: they are read with fsutil's bounded reader (a
FIFO or symlink is UNREADABLE, never waited on or followed), and every value the report
quotes is escaped: control, bidi and invisible characters become visible escapes
(termsafe.escape) and markdown/HTML that would render as a link, an image or a tag is
neutralised, so the report shows what the artifacts say and nothing hidden.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.fsutil import atomic_write, is_regular, read_regular, sha256_regular
from agentos_tasks.html_report import Signing, write_html_report
from agentos_tasks.layout import KEY_ARTIFACTS
from agentos_tasks.model import Status
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from pathlib import Path

REPORT_RELPATH = "reports/report.md"
MISSING = "MISSING"

_MAX_FILES_IN_CELL = 5


class _Json:
    """A JSON artifact as the report sees it: its data, or why there is none."""

    def __init__(self, run_dir: Path, relpath: str) -> None:
        self.relpath = relpath
        self.data: dict[str, Any] = {}
        self.problem: str | None = None
        path = run_dir / relpath
        try:
            loaded = json.loads(read_regular(path))
        except FileNotFoundError:
            self.problem = f"{MISSING} ({relpath})"
            return
        except AgentosError as exc:  # a FIFO, symlink, device, or too large
            self.problem = f"UNREADABLE ({relpath}: {_cell(exc.message)})"
            return
        except (OSError, ValueError) as exc:
            self.problem = f"UNREADABLE ({relpath}: {_cell(str(exc))})"
            return
        if not isinstance(loaded, dict):
            self.problem = f"UNREADABLE ({relpath}: not a JSON object)"
            return
        self.data = loaded


_MARKDOWN = str.maketrans({"|": "\\|", "[": "\\[", "]": "\\]", "`": "\\`",
                           "<": "&lt;", ">": "&gt;", "\r": " ", "\n": " "})


def _cell(value: object) -> str:
    """One markdown table cell: MISSING for absent values; pipes and newlines neutralised,
    link/image brackets, backticks and HTML tags shown literally, and every other control,
    bidi or invisible character escaped visibly (termsafe.escape)."""
    if value is None or value == "":
        return MISSING
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return escape(text.replace("\\", "\\\\").translate(_MARKDOWN))


_HEX = frozenset("0123456789abcdef")
SHORT = 12


def _short(value: object) -> str:
    """A commit sha or sha256 cut to 12 characters (the full values are in the digest
    table at the end); anything else as a cell."""
    if isinstance(value, str) and len(value) in (40, 64) and set(value) <= _HEX:
        return value[:SHORT]
    return _cell(value)


def _digest_or(path: Path, absent: str) -> str:
    """sha256 of the regular file `path`; `absent` when it is missing, UNREADABLE (with
    why) when it is a FIFO, a symlink or otherwise unreadable."""
    try:
        return sha256_regular(path)
    except FileNotFoundError:
        return absent
    except AgentosError as exc:
        return f"UNREADABLE ({_cell(exc.message)})"
    except OSError as exc:
        return f"UNREADABLE ({_cell(exc.strerror)})"


def _field(data: dict[str, Any], *keys: str) -> object:
    """`data[k1][k2]...` or None when any level is absent or not an object."""
    current: object = data
    for key in keys:
        if not isinstance(current, dict) or key not in current:
            return None
        current = current[key]
    return current


def _copy_digest_note(run_dir: Path, relpath: str, recorded: object) -> str:
    """Digest of the recorded copy under audit/, and whether it matches the recorded digest."""
    copy_path = run_dir / relpath
    actual = _digest_or(copy_path, MISSING)
    if not is_regular(copy_path) or actual.startswith("UNREADABLE"):
        return f"{relpath}: {actual}"
    if recorded is None:
        return f"{relpath}: {actual}"
    verdict = "matches" if actual == recorded else "DIFFERS from the recorded digest"
    return f"{relpath}: {_short(actual)} ({verdict})"


def _files_cell(files: object) -> str:
    """`n: path (status), ...`, cut after a few paths so the table stays readable."""
    if not isinstance(files, list):
        return MISSING
    if not files:
        return "0"
    names = []
    for entry in files[:_MAX_FILES_IN_CELL]:
        path = _field(entry, "path") if isinstance(entry, dict) else None
        status = _field(entry, "status") if isinstance(entry, dict) else None
        names.append(f"{path if path is not None else MISSING} ({status or '?'})")
    more = len(files) - _MAX_FILES_IN_CELL
    suffix = f", ... (+{more} more)" if more > 0 else ""
    return _cell(f"{len(files)}: " + ", ".join(names) + suffix)


def _section_request(run_dir: Path, result: _Json) -> list[str]:
    data = result.data
    lines = ["## Request and policy", "", "| field | value |", "|---|---|"]
    rows: list[tuple[str, object]] = [
        ("request path", _field(data, "request", "path")),
        ("request sha256", _field(data, "request", "sha256")),
        ("request copy", _copy_digest_note(run_dir, "audit/request.yaml",
                                           _field(data, "request", "sha256"))),
        ("policy id", _field(data, "policy", "id")),
        ("policy path", _field(data, "policy", "path")),
        ("policy sha256", _field(data, "policy", "sha256")),
        ("policy copy", _copy_digest_note(run_dir, "audit/policy.yaml",
                                          _field(data, "policy", "sha256"))),
        ("isolation", _field(data, "policy", "isolation")),
        ("sandbox backend", _field(data, "sandbox", "backend")),
    ]
    lines += [f"| {name} | {_short(value)} |" for name, value in rows]
    return [*lines, ""]


def _head_value(data: dict[str, Any], key: str) -> object:
    """A recorded head: its sha, "none" when recorded as null (denied or unapplied run),
    None (shown as MISSING) when the field is absent."""
    if key not in data:
        return None
    return data[key] if data[key] is not None else "none"


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _step_message(run_dir: Path, step_id: object) -> object:
    """The commit message a step's manifest recorded (its id when there is none)."""
    if not isinstance(step_id, str) or not step_id or "/" in step_id or step_id[0] == ".":
        return step_id
    return _field(_Json(run_dir, f"steps/{step_id}.json").data, "message") or step_id


def _section_repo(run_dir: Path, result: _Json) -> list[str]:
    data = result.data
    lines = ["## Repository", "", "| field | value |", "|---|---|"]
    commits = _field(data, "commits_applied")
    rows: list[tuple[str, object]] = [
        ("repo", _field(data, "repo")),
        ("branch", _field(data, "branch")),
        ("base", _field(data, "base")),
        ("pre-apply head", _head_value(data, "pre_apply_head")),
        ("post-apply head", _head_value(data, "post_apply_head")),
        ("commits applied", len(commits) if isinstance(commits, list) else None),
    ]
    lines += [f"| {name} | {_short(value)} |" for name, value in rows]
    lines.append("")
    if isinstance(commits, list) and commits:
        # each changed step's commit lands in order: name it by the step's message
        messages = [_step_message(run_dir, _field(step, "id"))
                    for step in _as_list(_field(data, "steps"))
                    if isinstance(step, dict) and _field(step, "status") == "changed"]
        lines += ["Commits applied, in order:", ""]
        lines += [f"{index}. {_short(sha)}"
                  + (f" {_cell(messages[index - 1])}" if index <= len(messages) else "")
                  for index, sha in enumerate(commits, start=1)]
        lines.append("")
    return lines


def _section_steps(result: _Json) -> list[str]:
    lines = ["## Steps", ""]
    steps = _field(result.data, "steps")
    if result.problem:
        return [*lines, f"Steps: {result.problem}", ""]
    if not isinstance(steps, list):
        return [*lines, f"Steps: {MISSING} (execution_result.json has no steps list)", ""]
    lines += [
        "| id | op | status | files changed | worktree commit | landed as | patch sha256 "
        "| exit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # git am re-creates each changed step's commit on the branch, in order
    applied = _field(result.data, "commits_applied")
    landed = iter(applied if isinstance(applied, list) else [])
    for step in steps:
        step_data = step if isinstance(step, dict) else {}
        status = _field(step_data, "status")
        # An unchanged step has no commit/patch by design; say so instead of MISSING.
        no_output = "none" if status in ("unchanged", "pending", "failed") else None
        commit = _field(step_data, "commit") or no_output
        patch_sha = _field(step_data, "patch_sha256") or no_output
        exit_code = _field(step_data, "exit_code")
        landed_as = next(landed, "not applied") if status == "changed" else "-"
        lines.append(
            f"| {_cell(_field(step_data, 'id'))} | {_cell(_field(step_data, 'op'))} "
            f"| {_cell(status)} | {_files_cell(_field(step_data, 'files'))} "
            f"| {_short(commit)} | {_short(landed_as)} | {_short(patch_sha)} "
            f"| {'-' if exit_code is None else _cell(exit_code)} |"
        )
    if not steps:
        lines.append("| (no steps) | | | | | | | |")
    return [*lines, ""]


_MAX_LEDGER_ROWS = 200


def _ledger_rows(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The entries of one ledger, or why it cannot be shown."""
    try:
        text = read_regular(path).decode("utf-8", "replace")
    except AgentosError as exc:
        return [], f"UNREADABLE ({_cell(exc.message)})"
    except OSError as exc:
        return [], f"UNREADABLE ({_cell(str(exc))})"
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return rows, f"UNREADABLE (line {number} is not JSON)"
        rows.append(entry if isinstance(entry, dict) else {})
    return rows, None


def _grant_lines(run_dir: Path) -> list[str]:
    """Each networked step's grant as its manifest recorded it; unrestricted flagged."""
    lines: list[str] = []
    for manifest_path in sorted((run_dir / "steps").glob("*.json")):
        manifest = _Json(run_dir, manifest_path.relative_to(run_dir).as_posix())
        sandbox = _field(manifest.data, "sandbox")
        grant = sandbox.get("network") if isinstance(sandbox, dict) else None
        if not isinstance(grant, dict):
            continue
        raw_allow = grant.get("allow")
        allow: list[Any] = raw_allow if isinstance(raw_allow, list) else []
        what = ("**UNRESTRICTED** (any public host; loopback, private and metadata "
                "addresses still refused)" if grant.get("unrestricted") is True
                else ", ".join(_cell(a) for a in allow) or "nothing (every attempt refused)")
        lines.append(f"- {_cell(manifest_path.stem)}: rule {_cell(grant.get('rule_id'))}: "
                     f"{what}")
    return [*lines, ""] if lines else []


def _section_network(run_dir: Path) -> list[str]:
    """Every connection a networked step tried, as its proxy recorded it (network/)."""
    ledgers = sorted((run_dir / "network").glob("*.jsonl"))
    if not ledgers:
        return ["## Network", "", "No step had network: no ledger.", ""]
    lines = ["## Network", "", "Grants (what each networked step could reach):", "",
             *_grant_lines(run_dir),
             "Every connection attempt, decided by the allowlist proxy "
             "outside the sandbox (gate NET re-decides each under the recorded policy).", "",
             "| step | # | host:port | address | decision | rule | bytes up/down | ms |",
             "|---|---|---|---|---|---|---|---|"]
    for ledger in ledgers:
        rows, problem = _ledger_rows(ledger)
        step = ledger.name.removesuffix(".jsonl")
        if problem:
            lines.append(f"| {_cell(step)} | | {problem} | | | | | |")
        if not rows and not problem:
            lines.append(f"| {_cell(step)} | | (no connection attempted) | | | | | |")
        for row in rows[:_MAX_LEDGER_ROWS]:
            lines.append(
                f"| {_cell(step)} | {_cell(row.get('seq'))} "
                f"| {_cell(row.get('host'))}:{_cell(row.get('port'))} "
                f"| {_cell(row.get('address'))} | {_cell(row.get('decision'))} "
                f"| {_cell(row.get('rule'))} "
                f"| {_cell(row.get('bytes_up'))}/{_cell(row.get('bytes_down'))} "
                f"| {_cell(row.get('duration_ms'))} |")
        if len(rows) > _MAX_LEDGER_ROWS:
            lines.append(f"| {_cell(step)} | | ... {len(rows) - _MAX_LEDGER_ROWS} more in "
                         f"network/{_cell(ledger.name)} | | | | | |")
    return [*lines, ""]


def _section_tools(run_dir: Path) -> list[str]:
    """What each tool step's CLI reported about its own run (claimed, not trusted)."""
    packs = sorted((run_dir / "tools").glob("*/tool_result_pack.json"))
    if not packs:
        return []
    lines = ["## Tool usage (as the tools report it)", "",
             "| step | tool | version | model | tokens in/out | cost USD | turns |",
             "|---|---|---|---|---|---|---|"]
    for pack_path in packs:
        pack = _Json(run_dir, pack_path.relative_to(run_dir).as_posix())
        step = pack_path.parent.name
        if pack.problem:
            lines.append(f"| {_cell(step)} | {pack.problem} | | | | | |")
            continue
        tool = _field(pack.data, "tool")
        tool = tool if isinstance(tool, dict) else {}
        claims = _field(pack.data, "claims")
        usage = claims.get("usage_summary") if isinstance(claims, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        lines.append(
            f"| {_cell(step)} | {_cell(tool.get('name'))} | {_cell(tool.get('version'))} "
            f"| {_cell(usage.get('model'))} "
            f"| {_cell(usage.get('input_tokens'))}/{_cell(usage.get('output_tokens'))} "
            f"| {_cell(usage.get('cost_usd'))} | {_cell(usage.get('turns'))} |")
    return [*lines, ""]


def _section_gates(gates: _Json) -> list[str]:
    lines = ["## Gates", ""]
    if gates.problem:
        return [*lines, f"Gates: {gates.problem}", ""]
    gate_list = _field(gates.data, "gates")
    if not isinstance(gate_list, list):
        return [*lines, f"Gates: {MISSING} (reports/gates.json has no gates list)", ""]
    lines += ["| id | status | reason |", "|---|---|---|"]
    counts: dict[str, int] = {}
    for gate in gate_list:
        gate_data = gate if isinstance(gate, dict) else {}
        status = _field(gate_data, "status")
        counts[str(status)] = counts.get(str(status), 0) + 1
        lines.append(
            f"| {_cell(_field(gate_data, 'id'))} | {_cell(status)} "
            f"| {_cell(_field(gate_data, 'reason'))} |"
        )
    if not gate_list:
        lines.append("| (no gates) | | |")
    lines.append("")
    summary = ", ".join(f"{name} {counts.get(name, 0)}" for name in Status)
    others = sorted(set(counts) - set(Status))
    if others:
        summary += ", " + ", ".join(f"{name} {counts[name]}" for name in others)
    lines += [f"Gate summary (counted from the table): {summary}", ""]
    return lines


def _section_digests(run_dir: Path, result: _Json) -> list[str]:
    lines = ["## Full digests (for verification)", "",
             f"Everything above shows commits and digests by their first {SHORT} characters; "
             "these are the full values.", "",
             "| recorded value | full |", "|---|---|"]
    data = result.data
    commits = _field(data, "commits_applied")
    values: list[tuple[str, object]] = [
        ("request sha256", _field(data, "request", "sha256")),
        ("policy sha256", _field(data, "policy", "sha256")),
        ("base", _field(data, "base")),
        ("pre-apply head", _head_value(data, "pre_apply_head")),
        ("post-apply head", _head_value(data, "post_apply_head")),
        *((f"commit {index}", sha) for index, sha in
          enumerate(commits if isinstance(commits, list) else [], start=1)),
    ]
    lines += [f"| {name} (full) | {_cell(value)} |" for name, value in values]
    lines += ["", "| artifact | sha256 |", "|---|---|"]
    for relpath in KEY_ARTIFACTS:
        path = run_dir / relpath
        lines.append(f"| {relpath} | {_digest_or(path, MISSING)} |")
    lines.append("")
    head = _Json(run_dir, "audit/tape_head.json")
    if head.problem:
        lines.append(f"Tape head: {head.problem}")
    else:
        lines.append(
            f"Tape head: count {_cell(_field(head.data, 'count'))}, "
            f"head {_cell(_field(head.data, 'head'))}"
        )
    patches = sorted((run_dir / "patches").glob("*.patch"))
    lines += ["", f"Patches: {len(patches)}", ""]
    lines += [f"- patches/{_cell(patch.name)}: {_digest_or(patch, MISSING)}"
              for patch in patches]
    return [*lines, ""] if patches else lines


def _status_line(gates: _Json, result: _Json) -> str:
    """Status from the gates (FAIL on any FAIL, PASS when one passed and none failed),
    with the executor's own status next to it."""
    executed = f"execution result: **{_cell(_field(result.data, 'status'))}**"
    gate_list = _field(gates.data, "gates")
    if gates.problem or not isinstance(gate_list, list) or not gate_list:
        return f"Status: **{MISSING}** (gates: {gates.problem or 'no gates listed'}) · {executed}"
    statuses = [_field(g, "status") if isinstance(g, dict) else None for g in gate_list]
    failing = [_cell(_field(g, "id")) for g, st in zip(gate_list, statuses, strict=True)
               if st == Status.FAIL]
    counts = ", ".join(f"{statuses.count(s.value)} {s.value}" for s in Status)
    verdict = "FAIL" if failing else ("PASS" if Status.PASS in statuses else MISSING)
    failed = f"; failing: {', '.join(failing)}" if failing else ""
    return f"Status: **{verdict}** (gates: {counts}{failed}) · {executed}"


def render_report(run_dir: Path) -> str:
    """Markdown report of a run, built only from the files in `run_dir`.

    Deterministic (no clock, no host state) so re-rendering the same artifacts gives the
    same bytes; missing files and fields are shown as MISSING.
    """
    result = _Json(run_dir, "execution_result.json")
    gates = _Json(run_dir, "reports/gates.json")
    run_name = _field(result.data, "run") or _field(gates.data, "run") or run_dir.name
    lines = [f"# agentos run report: {_cell(run_name)}", ""]
    if result.problem:
        lines += [f"Execution result: {result.problem}", ""]
    lines += [_status_line(gates, result), "",
              "The page to look at (diffs, logs, per-path policy decisions, tool claims): "
              "reports/report.html.", ""]
    counts = _field(result.data, "counts")
    if isinstance(counts, dict):
        lines += [
            "Counts: " + ", ".join(f"{_cell(key)} {_cell(counts[key])}"
                                   for key in sorted(counts)),
            "",
        ]
    lines += _section_request(run_dir, result)
    lines += _section_repo(run_dir, result)
    lines += _section_steps(result)
    lines += _section_tools(run_dir)
    lines += _section_network(run_dir)
    lines += _section_gates(gates)
    lines += _section_digests(run_dir, result)
    lines += [
        "This report is generated from the run's artifacts only; the signed statement in",
        "signature/ binds it and every artifact above by sha256 (`agentos verify`).",
        "",
    ]
    return "\n".join(lines)


def write_report(run_dir: Path, *, signing: Signing | None = None) -> Path:
    """Render and write `reports/report.md` and the reviewer's page `reports/report.html`
    (html_report) atomically; returns the markdown's path. Both are signed subjects and are
    regenerated at the same moments (gates, sign). `signing` names the key sign_run is about
    to sign with, so the page it signs already says who signed it."""
    report_path = run_dir / REPORT_RELPATH
    atomic_write(report_path, render_report(run_dir).encode("utf-8"))
    write_html_report(run_dir, signing=signing)
    return report_path
