"""reports/gates.json, reports/gates.xml (JUnit), reports/report.md and the console table.

Reasons quote artifacts, so what is printed (the table) and what goes into the JUnit XML
is escaped with termsafe.escape, and the rich table gets Text, never parsed as markup.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from agentos_tasks.errors import EXIT_GATES, AgentosError
from agentos_tasks.fsutil import atomic_write, write_json
from agentos_tasks.gates.common import FAIL, NA, PASS
from agentos_tasks.gates.runner import collect
from agentos_tasks.model import Status
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from agentos_tasks.gates.common import GateResult


def summary(results: Sequence[GateResult]) -> dict[str, int]:
    return {s.value: sum(r.status == s for r in results) for s in Status}


def write_reports(run_dir: Path, results: Sequence[GateResult] | None = None, *,
                  show: bool = True, digests_of: Callable[[], object] | None = None) -> None:
    """reports/gates.json + gates.xml (JUnit) + report.md + a table; fail on any FAIL.
    `digests_of`: gate id -> input digest, as the report task's up-to-date check took it."""
    digests = digests_of() if digests_of is not None else None
    results = list(results) if results is not None else collect(
        run_dir, digests if isinstance(digests, dict) else None)
    reports = reports_dir(run_dir)
    run_id = run_dir.name
    payload = {"schema_version": 1, "run": run_id, "gates": [r.as_dict() for r in results],
               "summary": summary(results)}
    write_json(reports / "gates.json", payload)
    atomic_write(reports / "gates.xml", junit_xml(run_id, results).encode())
    if reports == run_dir / "reports":
        try:
            from agentos_tasks.report import write_report

            write_report(run_dir)
        except AgentosError:
            pass
    if show:
        print_table(results)
    if show and reports != run_dir / "reports":
        print(escape(f"run {run_id} is signed: its reports/ stay as signed; this check's "
                     f"results are in {reports}"))
    failed = [r.id for r in results if r.status == FAIL]
    if failed:
        raise AgentosError(f"{len(failed)} gate(s) failed: {', '.join(failed)}", code=EXIT_GATES,
                           hint=f"see {reports / 'gates.json'}")


STATUS_SHORT = {PASS: "PASS", FAIL: "FAIL", NA: "N/A"}


def summary_line(results: Sequence[GateResult]) -> str:
    """`9 PASS · 0 FAIL · 12 N/A`: the one line a CI log or a reviewer reads first."""
    counts = summary(results)
    return " · ".join(f"{counts[status]} {short}" for status, short in STATUS_SHORT.items())


def is_signed(run_dir: Path) -> bool:
    return (run_dir / "signature" / "envelope.dsse.json").exists()


def reports_dir(run_dir: Path) -> Path:
    """Where this invocation's gate results go: the run's reports/, or, once the run is
    signed (its reports/ are signed subjects, never rewritten), a new directory beside
    the run: `<run>.checks/<UTC time>/`."""
    if not is_signed(run_dir):
        return run_dir / "reports"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = run_dir.parent / f"{run_dir.name}.checks" / stamp
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{stamp}-{n}")
    return out


def junit_xml(run_id: str, results: Sequence[GateResult]) -> str:
    """JUnit XML valid against Jenkins xunit's junit-10.xsd (tests/data/junit-10.xsd).

    FAIL is a <failure/>. NOT_APPLICABLE is not a skip (the gate ran and found nothing to
    check): it is a property `<id>` = NOT_APPLICABLE on the suite and the reason in the
    case's <system-out>. `errors` is 0: a gate that crashed on its evidence is a FAIL."""
    counts = summary(results)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name={quoteattr("agentos-gates:" + escape(run_id))} '
             f'tests="{len(results)}" failures="{counts[FAIL]}" errors="0" skipped="0">',
             "  <properties>"]
    for r in results:
        lines.append(f"    <property name={quoteattr('gate.' + escape(r.id))} "
                     f"value={quoteattr(str(r.status))}/>")
    lines.append("  </properties>")
    for r in results:
        lines.append(f'  <testcase classname="gates" name={quoteattr(escape(r.id))}>')
        if r.status == FAIL:
            lines.append(f"    <failure type=\"FAIL\" message={quoteattr(escape(r.reason))}/>")
        lines.append(f"    <system-out>{xml_text(f'{r.status}: {escape(r.reason)}')}"
                     "</system-out>")
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"


def xml_text(text: str) -> str:
    from xml.sax.saxutils import escape as xml_escape

    return xml_escape(text)


def print_table(results: Sequence[GateResult]) -> None:
    """One table sized to the terminal (rich reads its width; 80 columns when stdout is
    not a terminal and COLUMNS is unset), then the summary line. NO_COLOR is honoured."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="gates", show_lines=False, expand=False)
    table.add_column("gate", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    style = {PASS: "green", FAIL: "bold red", NA: "dim"}
    for r in results:
        # reasons (and ids) quote artifacts: Text is never parsed as markup
        table.add_row(Text(escape(r.id)),
                      Text(STATUS_SHORT.get(r.status, escape(r.status)),
                           style=style.get(r.status, "")),
                      Text(escape(r.reason)))
    console = Console()
    console.print(table)
    console.print(Text(summary_line(results),
                       style="bold red" if summary(results)[FAIL] else "bold green"))
