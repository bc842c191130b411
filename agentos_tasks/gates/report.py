"""reports/gates.json, reports/gates.xml (JUnit), reports/report.md and the console table.

Reasons quote artifacts, so what is printed (the table) and what goes into the JUnit XML
is escaped with termsafe.escape, and the rich table gets Text, never parsed as markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from agentos_tasks.errors import EXIT_GATES, AgentosError
from agentos_tasks.fsutil import atomic_write, write_json
from agentos_tasks.gates.common import FAIL, NA, PASS
from agentos_tasks.gates.runner import collect
from agentos_tasks.model import Status
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from agentos_tasks.gates.common import GateResult


def summary(results: Sequence[GateResult]) -> dict[str, int]:
    return {s.value: sum(r.status == s for r in results) for s in Status}


def write_reports(run_dir: Path, results: Sequence[GateResult] | None = None) -> None:
    """reports/gates.json + gates.xml (JUnit) + report.md + a table; fail on any FAIL."""
    results = list(results) if results is not None else collect(run_dir)
    reports = run_dir / "reports"
    run_id = run_dir.name
    payload = {"schema_version": 1, "run": run_id, "gates": [r.as_dict() for r in results],
               "summary": summary(results)}
    write_json(reports / "gates.json", payload)
    atomic_write(reports / "gates.xml", junit_xml(run_id, results).encode())
    try:
        from agentos_tasks.report import write_report

        write_report(run_dir)
    except AgentosError:
        pass
    print_table(results)
    failed = [r.id for r in results if r.status == FAIL]
    if failed:
        raise AgentosError(f"{len(failed)} gate(s) failed: {', '.join(failed)}", code=EXIT_GATES,
                           hint=f"see {reports / 'gates.json'}")


def junit_xml(run_id: str, results: Sequence[GateResult]) -> str:
    counts = summary(results)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name={quoteattr("agentos-gates:" + escape(run_id))} '
             f'tests="{len(results)}" '
             f'failures="{counts[FAIL]}" skipped="{counts[NA]}">']
    for r in results:
        lines.append(f'  <testcase classname="gates" name={quoteattr(escape(r.id))}>')
        if r.status == FAIL:
            lines.append(f"    <failure message={quoteattr(escape(r.reason))}/>")
        elif r.status == NA:
            lines.append(f"    <skipped message={quoteattr(escape(r.reason))}/>")
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"


def print_table(results: Sequence[GateResult]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="gates", show_lines=False)
    table.add_column("gate")
    table.add_column("status")
    table.add_column("reason", overflow="fold")
    style = {PASS: "green", FAIL: "bold red", NA: "dim"}
    for r in results:
        # reasons (and ids) quote artifacts: Text is never parsed as markup
        table.add_row(Text(escape(r.id)), Text(escape(r.status), style=style.get(r.status, "")),
                      Text(escape(r.reason)))
    Console(width=140).print(table)
