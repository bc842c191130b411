"""What an invocation remembers about how it stopped: the errors its task actions raised
(the exit code comes from the first) and the one line an interrupted run prints. Shared
by graph.py (which raises them) and console.py (which shows them)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from doit.exceptions import TaskFailed

if TYPE_CHECKING:
    from agentos_tasks.errors import AgentosError

# AgentosErrors raised by actions in this process, so `agentos` can exit with their code.
RAISED: list[AgentosError] = []

RESUME_HINT = "re-run the same command to resume"
# the signals that stop an invocation cleanly: the step's processes are killed, the
# tape keeps the open step_start (closed as step_interrupted when the run resumes)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal reached the executor (SIGINT, SIGTERM, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class InterruptedFailure(TaskFailed):  # type: ignore[misc]
    """The failure doit records for the task a stop signal interrupted."""

    def __init__(self, signame: str) -> None:
        super().__init__(f"interrupted by {signame}")
        self.signame = signame


def interrupted_line(signame: str, where: str | None = None) -> str:
    """The one line an interrupted invocation prints."""
    during = f" during {where}" if where else ""
    return f"interrupted by {signame}{during}: {RESUME_HINT}\n"


def install_early_handlers() -> None:
    """Until the graph installs its own handlers (graph.install_interrupt_handlers), a
    stop signal ends the process with the one line and 128+N, never a traceback from
    whatever module was being imported. dodo.py calls this before its first import."""
    import os
    import sys

    def stop(signum: int, _frame: object) -> None:
        sys.stderr.write(interrupted_line(signal.Signals(signum).name))
        sys.stderr.flush()
        os._exit(128 + signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
