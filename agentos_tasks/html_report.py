"""The reviewer's page: `reports/report.html`, one self-contained file built from the evidence.

Like report.md it is a signed subject and is generated from the files of the run directory
alone (no git, no clock, no environment): the same evidence renders the same bytes. It has
no scripts at all, inline CSS only, and a Content-Security-Policy that forbids every load
(`default-src 'none'`), so opening it makes no network request, whatever the artifacts say.

The artifacts may be hostile (a step message, a file name, a tool's claim, a log line): every
value goes through `_text`, which makes control, bidi and invisible characters visible
(termsafe.escape) and then HTML-escapes it. Diffs are highlighted by pygments after the same
visible-escaping, so its own HTML escaping is the only markup they produce. Missing evidence
is printed as MISSING, never skipped.

The signature box: a report cannot contain the digest of the signature over itself, but it
can name who signs. `signing` (what sign_run is about to sign with) or, when absent, the
key id in signature/envelope.dsse.json is shown; the signing time comes from the statement's
predicate (`signed_at`) when it records one, else it is shown as not recorded.
"""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

from agentos_tasks.errors import AgentosError
from agentos_tasks.fsutil import atomic_write, read_regular, sha256_bytes, sha256_regular
from agentos_tasks.layout import KEY_ARTIFACTS
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from pathlib import Path

HTML_RELPATH = "reports/report.html"
MISSING = "MISSING"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
LOG_TAIL_LINES = 40
DIFF_OPEN_LINES = 80  # longer diffs start collapsed
_MAX_DIFF_BYTES = 2 << 20
_MAX_LEDGER_ROWS = 200
_SHORT = 12

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;
background:#f4f5f7}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 12px}h2{font-size:18px;margin:28px 0 8px}
h3{font-size:15px;margin:0}
table{border-collapse:collapse;width:100%;background:#fff;margin:6px 0 10px}
th,td{border:1px solid #d9dce3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eceef2;font-weight:600}
code,pre,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
pre{background:#fff;border:1px solid #d9dce3;padding:8px;overflow-x:auto;margin:4px 0;
white-space:pre-wrap;word-break:break-all}
.summary{display:flex;flex-wrap:wrap;gap:12px;align-items:stretch}
.card{background:#fff;border:1px solid #d9dce3;border-radius:6px;padding:10px 14px}
.verdict{font-size:20px;font-weight:700;padding:10px 18px;border-radius:6px;color:#fff}
.v-PASS{background:#1a7f37}.v-FAIL{background:#cf222e}.v-MISSING{background:#6e7781}
.s-PASS,.s-changed,.s-allow{color:#1a7f37;font-weight:600}
.s-FAIL,.s-failed,.s-deny{color:#cf222e;font-weight:700}
.s-NOT_APPLICABLE,.s-unchanged,.s-pending{color:#6e7781}
.missing{color:#9a6700;font-weight:700}
.step{background:#fff;border:1px solid #d9dce3;border-radius:6px;margin:12px 0;padding:10px 14px}
.bar{background:#4c78a8;height:10px;min-width:2px}.barcell{width:100%;min-width:160px}
.badge{font-size:20px;font-weight:700;padding:10px 18px;border-radius:6px;color:#fff}
.r-applied{background:#1a7f37}.r-other{background:#bf3989}
details>summary{cursor:pointer;font-weight:600;margin:4px 0}
.kv td:first-child{width:190px;color:#444}
.small{color:#57606a;font-size:12px}
"""


@dataclass(frozen=True)
class Signing:
    """Who signs (the key id) and when (an ISO timestamp), as sign_run knows them before
    it builds the statement; None fields are read from signature/ instead."""

    keyid: str
    signed_at: str | None = None


# ------------------------------------------------------------------ reading evidence


class _Evidence:
    """The run directory as the page sees it: every read is bounded and never follows a
    link (fsutil.read_regular); what cannot be read is recorded as why."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.policy: Any = None
        self.policy_loaded = False

    def text(self, relpath: str, limit: int = _MAX_DIFF_BYTES) -> tuple[str | None, str]:
        """(text, "") or (None, MISSING / UNREADABLE (why)). A path built from a recorded
        step id that would leave the run directory is never opened."""
        parts = relpath.split("/")
        if relpath.startswith("/") or any(part in ("", ".", "..") for part in parts):
            return None, f"UNREADABLE ({relpath}: not a path inside the run directory)"
        try:
            data = read_regular(self.run_dir / relpath, limit=limit)
        except FileNotFoundError:
            return None, f"{MISSING} ({relpath})"
        except AgentosError as exc:
            return None, f"UNREADABLE ({relpath}: {exc.message})"
        except OSError as exc:
            return None, f"UNREADABLE ({relpath}: {exc.strerror})"
        return data.decode("utf-8", "replace"), ""

    def json(self, relpath: str) -> tuple[dict[str, Any], str]:
        """(object, "") or ({}, why there is none)."""
        text, problem = self.text(relpath)
        if text is None:
            return {}, problem
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            return {}, f"UNREADABLE ({relpath}: {exc})"
        if not isinstance(loaded, dict):
            return {}, f"UNREADABLE ({relpath}: not a JSON object)"
        return loaded, ""

    def digest(self, relpath: str) -> str:
        try:
            return sha256_regular(self.run_dir / relpath)
        except FileNotFoundError:
            return MISSING
        except AgentosError as exc:
            return f"UNREADABLE ({exc.message})"
        except OSError as exc:
            return f"UNREADABLE ({exc.strerror})"

    def tape(self) -> tuple[list[dict[str, Any]], str]:
        text, problem = self.text("audit/run_tape.jsonl", limit=64 << 20)
        if text is None:
            return [], problem
        events: list[dict[str, Any]] = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                event = json.loads(line)
            except ValueError:
                return events, f"UNREADABLE (audit/run_tape.jsonl line {number} is not JSON)"
            events.append(event if isinstance(event, dict) else {})
        return events, ""


def _get(data: object, *keys: str) -> Any:
    current = data
    for key in keys:
        if not isinstance(current, dict) or key not in current:
            return None
        current = current[key]
    return current


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------ escaping


def _text(value: object, *, multiline: bool = False) -> str:
    """One value for the page: MISSING when absent, control/bidi/invisible characters
    made visible, then HTML-escaped (quotes too, so it is safe in an attribute)."""
    if value is None or value == "":
        return f'<span class="missing">{MISSING}</span>'
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return html.escape(escape(text, multiline=multiline), quote=True)


def _short(value: object) -> str:
    """A digest or commit shortened to 12 characters (full value in the title)."""
    if not isinstance(value, str) or len(value) <= _SHORT:
        return _text(value)
    return f'<code title="{_text(value)}">{_text(value[:_SHORT])}</code>'


def _status(value: object) -> str:
    label = escape(str(value)) if value not in (None, "") else MISSING
    css = "".join(ch for ch in label if ch.isalnum() or ch == "_")
    return f'<span class="s-{css}">{html.escape(label, quote=True)}</span>'


def _problem(text: str) -> str:
    return f'<p class="missing">{_text(text)}</p>'


def _table(head: list[str], rows: list[list[str]], css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    out = [f"<table{cls}><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    return "\n".join([*out, "</table>"])


def _kv(rows: list[tuple[str, str]]) -> str:
    return _table(["field", "value"], [[name, value] for name, value in rows], "kv")


# ------------------------------------------------------------------ summary


def _gate_counts(gates_doc: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for gate in _list(gates_doc.get("gates")):
        status = str(_get(gate, "status"))
        counts[status] = counts.get(status, 0) + 1
    return counts


def _verdict(gates_doc: dict[str, Any], problem: str) -> str:
    """PASS only when a gate passed and none failed; FAIL on any FAIL; else MISSING."""
    if problem or not _list(gates_doc.get("gates")):
        return MISSING
    counts = _gate_counts(gates_doc)
    if counts.get("FAIL", 0):
        return "FAIL"
    return "PASS" if counts.get("PASS", 0) else MISSING


UNSIGNED = ("none when this page was rendered; once signed, signature/envelope.dsse.json "
            "binds this page and every artifact (agentos verify)")


def _signature_rows(ev: _Evidence, signing: Signing | None,
                    read_signature: bool) -> list[tuple[str, str]]:
    if signing is None and not read_signature:
        return [("signature", UNSIGNED)]
    envelope, env_problem = ev.json("signature/envelope.dsse.json")
    statement, _ = ev.json("signature/statement.json")
    if signing is None and env_problem.startswith(MISSING):
        return [("signature", UNSIGNED)]
    keyid: object = signing.keyid if signing else None
    if keyid is None:
        keyids = [_get(sig, "keyid") for sig in _list(envelope.get("signatures"))]
        keyid = ", ".join(str(k) for k in keyids if k) or None
    signed_at = (signing.signed_at if signing else None) or _get(statement, "predicate",
                                                                 "signed_at")
    rows = [("signer key id", _text(keyid)),
            ("signed at", _text(signed_at) if signed_at else
             "not recorded (the statement carries no signing time)")]
    if env_problem and not signing:
        rows.append(("signature", _text(env_problem)))
    return rows


def _section_summary(ev: _Evidence, result: dict[str, Any], result_problem: str,
                     gates_doc: dict[str, Any], gates_problem: str, *,
                     signing: Signing | None, read_signature: bool) -> str:
    verdict = _verdict(gates_doc, gates_problem)
    counts = _gate_counts(gates_doc)
    count_text = (" · ".join(f"{counts.get(s, 0)} {s}" for s in ("PASS", "FAIL",
                                                                  "NOT_APPLICABLE"))
                  if not gates_problem else _text(gates_problem))
    commits = _list(result.get("commits_applied"))
    first = commits[0] if commits else None
    landed = (f"{len(commits)} commit(s): {_short(result.get('pre_apply_head'))} .. "
              f"{_short(result.get('post_apply_head'))}" if commits
              else "nothing landed" + (f" (post-apply head {_short(result['post_apply_head'])})"
                                       if result.get("post_apply_head") else ""))
    rows = [
        ("repository", _text(result.get("repo"))),
        ("branch", _text(result.get("branch"))),
        ("base", _short(result.get("base"))),
        ("commit range landed", landed + (f"; first {_short(first)}" if first else "")),
        ("policy", f"{_text(_get(result, 'policy', 'id'))} "
                   f"(isolation {_text(_get(result, 'policy', 'isolation'))})"),
        ("sandbox backend", _text(_get(result, "sandbox", "backend"))),
        *_signature_rows(ev, signing, read_signature),
    ]
    failure = _dict(result.get("failure"))
    if failure:
        rule = failure.get("rule_id")
        reason = str(failure.get("reason") or "")
        prefix = "" if reason.startswith(f"step {failure.get('step')}") else \
            f"step {_text(failure.get('step'))}: "
        rows.insert(0, ("failure", prefix + _text(reason)
                        + (f" (rule {_text(rule)})" if rule else "")))
    status = result.get("status") if not result_problem else result_problem
    return "\n".join([
        '<section id="summary"><div class="summary">',
        f'<div class="verdict v-{verdict}" id="verdict">gates: {verdict}</div>',
        f'<div class="badge r-{"applied" if status == "applied" else "other"}" '
        f'id="run-status">run: {_text(status)}</div>',
        f'<div class="card"><div>gates: <b id="gate-counts">{count_text}</b></div>'
        f'<div>execution result: <b id="exec-status">{_text(status)}</b></div></div>',
        "</div>", _kv(rows), "</section>"])


# ------------------------------------------------------------------ steps


@dataclass
class _Step:
    id: str
    index: int
    op: object
    message: object
    spec: dict[str, Any]
    result: dict[str, Any]
    events: dict[str, dict[str, Any]]


def _steps(request: dict[str, Any], result: dict[str, Any],
           events: list[dict[str, Any]]) -> list[_Step]:
    """Steps in request order (audit/request.json), else as execution_result lists them."""
    by_result = {str(_get(s, "id")): _dict(s) for s in _list(result.get("steps"))}
    specs = [_dict(s) for s in _list(request.get("steps"))] or list(by_result.values())
    steps = []
    for index, spec in enumerate(specs):
        step_id = str(spec.get("id"))
        mine = {str(e.get("event")): e for e in events if e.get("step") == step_id}
        steps.append(_Step(step_id, index, spec.get("op"), spec.get("message"), spec,
                           by_result.get(step_id, {}), mine))
    return steps


def _duration(step: _Step, manifest: dict[str, Any]) -> float | None:
    recorded = manifest.get("duration_s")
    if isinstance(recorded, int | float) and not isinstance(recorded, bool):
        return float(recorded)
    start = _get(step.events.get("step_start"), "ts")
    end = _get(step.events.get("step_end") or step.events.get("step_failed"), "ts")
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def _step_status(step: _Step) -> object:
    if step.result.get("status"):
        return step.result.get("status")
    if "step_failed" in step.events:
        return "failed"
    if "step_end" in step.events:
        return _get(step.events["step_end"], "status")
    return None


def _seconds(seconds: float | None) -> str:
    if seconds is None:
        return _text(None)
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _section_timeline(steps: list[_Step], manifests: dict[str, dict[str, Any]]) -> str:
    durations = [_duration(s, manifests[s.id]) for s in steps]
    longest = max((d for d in durations if d is not None), default=0.0) or 1.0
    rows = []
    for step, seconds in zip(steps, durations, strict=True):
        width = max(1.0, 100 * seconds / longest) if seconds is not None else 0.0
        bar = (f'<div class="barcell"><div class="bar" style="width:{width:.1f}%"></div></div>'
               if seconds is not None else "")
        rows.append([str(step.index + 1), f'<a href="#step-{step.index}">{_text(step.id)}</a>',
                     _text(step.op), _status(_step_status(step)),
                     "not run" if seconds is None and _step_status(step) == "pending"
                     else _seconds(seconds), bar, _text(step.message)])
    if not rows:
        rows.append(["", "(no steps recorded)", "", "", "", "", ""])
    return "\n".join(['<section id="timeline"><h2>Timeline</h2>',
                      _table(["#", "step", "op", "status", "duration",
                              "relative", "message"], rows),
                      "</section>"])


def _recorded_policy(ev: _Evidence) -> Any:
    """The run's recorded policy (audit/policy.yaml), loaded by the policy loader once per
    page, or None when it is missing or does not load (the rows then show the step's own
    decision)."""
    if not ev.policy_loaded:
        from agentos_tasks.errors import AgentosError
        from agentos_tasks.policy import load_policy

        ev.policy_loaded = True
        try:
            ev.policy = load_policy(ev.run_dir / "audit" / "policy.yaml")
        except (AgentosError, OSError):
            ev.policy = None
    return ev.policy


def _path_rule(policy: Any, step: _Step, path: str, fallback: object) -> object:
    """The rule that decides `path` for this step under the recorded policy (recomputed,
    as gate EX-A does): the named allow rule, not only the step's overall verdict."""
    if policy is None:
        return fallback
    from agentos_tasks.policy import decide_path

    try:
        return decide_path(policy, path, step=step.id).rule_id
    except Exception:  # evidence that does not decide (a malformed path): as recorded
        return fallback


def _policy_rows(step: _Step, manifest: dict[str, Any], pack: dict[str, Any],
                 failure: dict[str, Any], policy: Any = None) -> str:
    """Every changed path with the decision and rule id that allowed (or denied) it."""
    check = _dict(manifest.get("policy_check")) or _dict(pack.get("policy_check"))
    files = _list(manifest.get("files")) or _list(_get(pack, "diff", "files"))
    tape_paths = {str(_get(f, "path")) for f in _list(_get(step.events.get("step_end"),
                                                           "files"))}
    rows = [[_text(_get(f, "path")), _text(_get(f, "status")), _status(check.get("decision")),
             _text(_path_rule(policy, step, str(_get(f, "path")), check.get("rule_id"))),
             "yes" if str(_get(f, "path")) in tape_paths else _text(None)]
            for f in files]
    if failure.get("step") == step.id and failure.get("rule_id"):
        rows.append([_text(_get(step.spec, "path")), "", _status("deny"),
                     _text(failure.get("rule_id")), "step_failed"])
    head = ["path", "change", "decision", "rule id", "on the tape (step_end)"]
    if not rows:
        note = ("no path changed" if _step_status(step) in ("unchanged", "failed", "pending")
                else f"{MISSING} (no manifest files for this step)")
        return f"<p>Policy decisions: {_text(note)}</p>"
    return "<h4>Policy decision per path</h4>\n" + _table(head, rows)


def _sanitize_block(text: str) -> str:
    """Lines of a diff or log with control/bidi characters made visible (tabs kept)."""
    return escape(text, multiline=True)


@functools.cache
def _diff_highlighter() -> tuple[DiffLexer, HtmlFormatter[str]]:
    """One lexer and formatter for every diff (building them per diff cost 0.06 s per
    200-step report); both keep no state between `highlight` calls."""
    return DiffLexer(), HtmlFormatter(noclasses=True, nobackground=True, style="default")


def _diff_html(ev: _Evidence, step: _Step, status: object) -> str:
    relpath = f"patches/{step.id}.patch"
    text, problem = ev.text(relpath)
    if text is None:
        if status in ("unchanged", "failed", "pending") and problem.startswith(MISSING):
            return f"<p>Diff: none ({_text(status)})</p>"
        return f"<p>Diff: {_text(problem)}</p>"
    lines = text.count("\n")
    body = highlight(_sanitize_block(text), *_diff_highlighter())
    opened = " open" if lines <= DIFF_OPEN_LINES else ""
    return (f'<details class="diff"{opened}><summary>diff: {_text(relpath)} ({lines} lines, '
            f"sha256 {_short(ev.digest(relpath))})</summary>\n{body}</details>")


def _log_html(ev: _Evidence, step: _Step) -> str:
    relpath = f"logs/{step.id}.out"
    text, problem = ev.text(relpath)
    if text is None:
        return f"<p>Log: {_text(problem)}</p>"
    lines = text.splitlines()
    tail = lines[-LOG_TAIL_LINES:]
    cut = (f"last {len(tail)} of {len(lines)} lines" if len(lines) > len(tail)
           else f"{len(lines)} lines")
    return (f"<details open><summary>log: {_text(relpath)} ({cut})</summary>"
            f'<pre class="log">{_text(chr(10).join(tail), multiline=True)}</pre></details>')


def _command_html(step: _Step, manifest: dict[str, Any], failure: dict[str, Any]) -> str:
    argv = _list(step.spec.get("argv"))
    exit_code = manifest.get("exit_code", step.result.get("exit_code"))
    if exit_code is None and failure.get("step") == step.id:
        exit_text = f"not recorded; the step failed: {_text(failure.get('reason'))}"
    else:
        exit_text = _text(exit_code)
    expected = step.spec.get("expect_exit")
    return _kv([("command", f"<code>{_text(json.dumps(argv))}</code>" if argv
                 else _text(None)),
                ("exit code", exit_text),
                ("expected exit", _text(expected))])


def _ledger_html(ev: _Evidence, step_id: str, manifest: dict[str, Any]) -> str:
    relpath = f"network/{step_id}.jsonl"
    grant = _get(manifest, "sandbox", "network")
    text, problem = ev.text(relpath)
    if text is None and grant is None:
        return "<p>Network: none granted (no ledger).</p>"
    grant_text = (f"rule {_text(_get(grant, 'rule_id'))}: "
                  + ("UNRESTRICTED" if _get(grant, "unrestricted") is True else
                     _text(", ".join(str(a) for a in _list(_get(grant, "allow")))
                           or "nothing"))) if isinstance(grant, dict) else _text(None)
    out = [f"<h4>Network ledger</h4><p>grant: {grant_text}</p>"]
    if text is None:
        return "\n".join([*out, _problem(problem)])
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = _dict(json.loads(line))
        except ValueError:
            rows.append(["", _text(f"UNREADABLE (line {number} is not JSON)"), "", "", "",
                         "", ""])
            break
        rows.append([_text(row.get("seq")), f"{_text(row.get('host'))}:{_text(row.get('port'))}",
                     _text(row.get("address")), _status(row.get("decision")),
                     _text(row.get("rule")),
                     f"{_text(row.get('bytes_up'))} / {_text(row.get('bytes_down'))}",
                     _text(row.get("duration_ms"))])
    if len(rows) > _MAX_LEDGER_ROWS:
        rows = [*rows[:_MAX_LEDGER_ROWS], ["", f"... {len(rows) - _MAX_LEDGER_ROWS} more in "
                                               f"{_text(relpath)}", "", "", "", "", ""]]
    if not rows:
        rows.append(["", "(no connection attempted)", "", "", "", "", ""])
    return "\n".join([*out, _table(["#", "host:port", "address", "decision", "rule",
                                    "bytes up / down", "ms"], rows)])


def _tool_html(ev: _Evidence, step: _Step, manifest: dict[str, Any]) -> str:
    base = f"tools/{step.id}"
    task, task_problem = ev.json(f"{base}/tool_task_pack.json")
    pack, pack_problem = ev.json(f"{base}/tool_result_pack.json")
    tool = _dict(pack.get("tool"))
    claims = _dict(pack.get("claims"))
    usage = _dict(claims.get("usage_summary"))
    prompt = task.get("prompt") or _get(step.spec, "tool", "prompt") or step.spec.get("prompt")
    rows = [
        ("adapter", _text(pack.get("adapter") or task.get("adapter"))),
        ("tool", f"{_text(tool.get('name'))} {_text(tool.get('version'))}"),
        ("allowed paths", _text(", ".join(str(p) for p in _list(task.get("allowed_paths")))
                                or None)),
        ("exit code", _text(pack.get("exit_code"))),
        ("timed out", _text(pack.get("timed_out"))),
        ("executor failure", _text(pack.get("failure")) if pack.get("failure") else "none"),
        ("claimed result", _text(claims.get("result"))),
        ("model", _text(usage.get("model"))),
        ("tokens in / out", f"{_text(usage.get('input_tokens'))} / "
                            f"{_text(usage.get('output_tokens'))}"),
        ("cost USD", _text(usage.get("cost_usd"))),
        ("turns", _text(usage.get("turns"))),
    ]
    problems = [p for p in (task_problem, pack_problem) if p]
    return "\n".join([
        "<h4>Tool (claims are the tool's own report, not trusted)</h4>",
        *(_problem(p) for p in problems),
        f'<details open><summary>prompt</summary><pre class="prompt">'
        f"{_text(prompt, multiline=True)}</pre></details>",
        _kv(rows), _ledger_html(ev, step.id, manifest)])


def _section_step(ev: _Evidence, step: _Step, failure: dict[str, Any]) -> str:
    manifest, manifest_problem = ev.json(f"steps/{step.id}.json")
    pack, _ = ev.json(f"tools/{step.id}/tool_result_pack.json")
    status = _step_status(step)
    header = (f'<h3>{step.index + 1}. {_text(step.id)} · {_text(step.op)} · '
              f"{_status(status)}</h3>"
              f'<p class="small">{_text(step.message)}</p>')
    commit = manifest.get("commit") or step.result.get("commit")
    no_commit = status in ("unchanged", "failed", "pending")
    info = [("worktree commit", _short(commit) if commit or not no_commit
             else f"none ({_text(status)})"),
            ("manifest", _text(manifest_problem) if manifest_problem
             else f"steps/{_text(step.id)}.json")]
    if step.op in ("write", "delete", "patch"):
        info.insert(0, ("path", _text(step.spec.get("path"))))
    parts = [header, _kv(info), _policy_rows(step, manifest, pack, failure,
                                             _recorded_policy(ev))]
    if step.op == "run":
        parts.append(_command_html(step, manifest, failure))
    if step.op == "tool":
        parts.append(_tool_html(ev, step, manifest))
    elif step.op == "run":
        parts.append(_ledger_html(ev, step.id, manifest))
    if step.op in ("run", "tool") or (ev.run_dir / f"logs/{step.id}.out").exists():
        parts.append(_log_html(ev, step))
    parts.append(_diff_html(ev, step, status))
    return f'<section class="step" id="step-{step.index}">\n' + "\n".join(parts) + "\n</section>"


# ------------------------------------------------------------------ gates, digests


def _section_gates(gates_doc: dict[str, Any], problem: str) -> str:
    if problem:
        return f'<section id="gates"><h2>Gates</h2>{_problem(problem)}</section>'
    rows = [[_text(_get(g, "id")), _status(_get(g, "status")), _text(_get(g, "title")),
             _text(_get(g, "reason"))] for g in _list(gates_doc.get("gates"))]
    if not rows:
        rows.append([_text(None), "", "", "reports/gates.json lists no gates"])
    return "\n".join(['<section id="gates"><h2>Gates</h2>',
                      _table(["id", "status", "what it checks", "reason"], rows),
                      "</section>"])


def _section_digests(ev: _Evidence) -> str:
    relpaths = list(KEY_ARTIFACTS)
    for sub, pattern in (("patches", "*.patch"), ("steps", "*.json"), ("logs", "*"),
                         ("network", "*")):
        relpaths += sorted(p.relative_to(ev.run_dir).as_posix()
                           for p in (ev.run_dir / sub).glob(pattern))
    head, head_problem = ev.json("audit/tape_head.json")
    rows = [[f"<code>{_text(rel)}</code>", f"<code>{_text(ev.digest(rel))}</code>"]
            for rel in relpaths]
    tape_head = (_text(head_problem) if head_problem else
                 f"count {_text(head.get('count'))}, head <code>{_text(head.get('head'))}</code>")
    return "\n".join([
        '<section id="digests"><h2>Digests</h2>',
        f"<details><summary>sha256 of {len(rows)} artifacts; tape head</summary>",
        f"<p>Tape head: {tape_head}</p>", _table(["artifact", "sha256"], rows),
        "</details></section>"])


# ------------------------------------------------------------------ the page


def _signed_page_digest(ev: _Evidence) -> str | None:
    """The sha256 signature/statement.json records for this page, if any."""
    statement, _ = ev.json("signature/statement.json")
    for subject in _list(statement.get("subject")):
        if _get(subject, "name") == HTML_RELPATH:
            digest = _get(subject, "digest", "sha256")
            return digest if isinstance(digest, str) else None
    return None


def render_html(run_dir: Path, *, signing: Signing | None = None) -> str:
    """The page for a run, from the files in `run_dir` alone (deterministic).

    `signing` is what sign_run is about to sign with: the page it signs then names the
    signer, and once signature/ exists the evidence renders the very same bytes. Without
    it the signer is read from signature/; when the statement shows that the signed page
    was rendered without a signer (an older sign_run), that rendering is kept, so
    re-rendering a signed run never invalidates its signature.
    """
    if signing is not None:
        return _render(run_dir, signing=signing, read_signature=False)
    page = _render(run_dir, signing=None, read_signature=True)
    signed = _signed_page_digest(_Evidence(run_dir))
    if signed is None or sha256_bytes(page.encode("utf-8")) == signed:
        return page
    unsigned_view = _render(run_dir, signing=None, read_signature=False)
    return unsigned_view if sha256_bytes(unsigned_view.encode("utf-8")) == signed else page


def _render(run_dir: Path, *, signing: Signing | None, read_signature: bool) -> str:
    ev = _Evidence(run_dir)
    result, result_problem = ev.json("execution_result.json")
    gates_doc, gates_problem = ev.json("reports/gates.json")
    request, _ = ev.json("audit/request.json")
    events, tape_problem = ev.tape()
    run_name = result.get("run") or gates_doc.get("run") or run_dir.name
    steps = _steps(request, result, events)
    manifests = {s.id: ev.json(f"steps/{s.id}.json")[0] for s in steps}
    failure = _dict(result.get("failure"))
    body = [
        f"<h1>agentos run report: {_text(run_name)}</h1>",
        _problem(result_problem) if result_problem else "",
        _problem(f"tape: {tape_problem}") if tape_problem else "",
        _section_summary(ev, result, result_problem, gates_doc, gates_problem,
                         signing=signing, read_signature=read_signature),
        _section_timeline(steps, manifests),
        '<section id="steps"><h2>Steps</h2>',
        *(_section_step(ev, step, failure) for step in steps),
        "</section>",
        _section_gates(gates_doc, gates_problem),
        _section_digests(ev),
        '<p class="small">Generated from the run\'s evidence only; signature/ binds this '
        "file and every artifact by sha256 (<code>agentos verify</code>).</p>",
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>agentos report: {_text(run_name)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        *(part for part in body if part),
        "</main></body></html>", ""])


def write_html_report(run_dir: Path, *, signing: Signing | None = None) -> Path:
    """Render and write `reports/report.html` atomically; returns its path."""
    path = run_dir / HTML_RELPATH
    atomic_write(path, render_html(run_dir, signing=signing).encode("utf-8"))
    return path
