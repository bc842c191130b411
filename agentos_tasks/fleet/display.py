"""What a fleet shows while it runs: a live table on a terminal (request, node, state,
steps, commits, gates), one plain line per change otherwise (CI logs, NO_COLOR)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from agentos_tasks.console import plain_output
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from agentos_tasks.fleet.queue import Entry


def line(entry: Entry) -> str:
    parts = [f"fleet: {entry.run or entry.request_id}", entry.state]
    if entry.node:
        parts.append(f"node={entry.node}")
    if entry.steps:
        parts.append(f"steps={entry.steps}")
    if entry.commits:
        parts.append(f"commits={len(entry.commits)}")
    if entry.gates:
        parts.append(f"gates={entry.gates}")
    if entry.reason and entry.state != "landed":
        parts.append(f"({entry.reason})")
    return escape(" ".join(parts))


class Display:
    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.plain = plain_output(self.stream)
        self.live: Any = None
        self.started = time.monotonic()

    def __call__(self, entries: list[Entry], changed: Entry) -> None:
        if self.plain:
            print(line(changed), file=self.stream, flush=True)
            return
        from rich.live import Live

        if self.live is None:
            self.live = Live(self.table(entries), refresh_per_second=4, transient=False)
            self.live.start()
        self.live.update(self.table(entries))

    def table(self, entries: list[Entry]) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"fleet ({time.monotonic() - self.started:.0f}s)", expand=False)
        for name in ("request", "node", "state", "attempt", "steps", "commits", "gates"):
            table.add_column(name)
        for e in entries:
            table.add_row(*(Text(escape(str(v))) for v in (
                e.request_id, e.node or "-", e.state, e.attempt, e.steps or "-",
                len(e.commits) or "-", e.gates or "-")))
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
