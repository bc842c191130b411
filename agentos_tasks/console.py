"""What an invocation prints: progress while tasks run, then what happened.

doit calls a reporter (`RunReporter`, a ConsoleReporter) for every task; this module owns
everything it shows:

- progress: on a terminal a live rich line (step i/N, the current task, elapsed time);
  plain lines (`[3/6] step:step_03`) when stdout is not a terminal, NO_COLOR is set or
  TERM=dumb, so CI logs and pipes stay readable;
- failures: one block per failed task, labelled by what happened (`request invalid:`,
  `policy denied:`, `run sealed:`, `questions unanswered:`, `step failed:` ...), never by
  the doit task's name; a failed step also shows the last LOG_TAIL lines of its log;
- the summary: what landed (N commits on BRANCH, a..b), where the evidence is, and the
  next command to run (`gates`, `sign`).

Everything written passes through termsafe.escape: task names, messages and log lines
quote what a step, a tool or a run directory chose.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from doit.reporter import ConsoleReporter, JsonReporter

from agentos_tasks.errors import (
    EXIT_GATES,
    EXIT_INTERNAL,
    EXIT_POLICY,
    EXIT_STATE,
    EXIT_STEP,
    EXIT_USAGE,
    AgentosError,
)
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from agentos_tasks.runctx import RunContext

LOG_TAIL = 20  # lines of a failed step's log shown on the console


def plain_output(stream: IO[str]) -> bool:
    """Plain lines, no live display: not a terminal, NO_COLOR set (any value, per
    no-color.org) or TERM=dumb."""
    isatty = getattr(stream, "isatty", None)
    return (not (isatty and isatty()) or "NO_COLOR" in os.environ
            or os.environ.get("TERM") == "dumb")


def label(err: AgentosError) -> str:
    """What happened, in two or three words: the first thing a failure block says."""
    text = err.message.lower()
    if err.code >= 128:
        return "interrupted"
    if err.code == EXIT_POLICY or text.startswith("policy violation"):
        return "policy denied"
    if err.code == EXIT_STEP:
        return "step failed"
    if err.code == EXIT_GATES:
        return "gates failed"
    if err.code == EXIT_INTERNAL:
        return "internal error"
    if err.code == EXIT_STATE:
        for words, name in (("sealed", "run sealed"), ("question", "questions unanswered"),
                            ("approval", "approval needed"), ("in use", "run locked"),
                            ("no space", "disk full"), ("uncommitted", "target dirty"),
                            ("moved", "target moved")):
            if words in text:
                return name
        return "run state refuses"
    if err.code == EXIT_USAGE:
        return "request invalid"
    return "failed"


def log_tail(log: Path, lines: int = LOG_TAIL) -> list[str]:
    """The last `lines` lines of a step log, each escaped (a log holds whatever the
    step's command printed: colours, cursor moves, bidi overrides)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))  # a tail, not a 1 GB read
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    return [escape(line) for line in text[-lines:]]


@dataclass
class Landed:
    """What apply landed, from .state/applied.json."""

    branch: str
    commits: int
    base: str
    head: str

    @classmethod
    def read(cls, ctx: RunContext) -> Landed | None:
        record = ctx.applied()
        if not record:
            return None
        return cls(str(record["branch"]), len(record["commits"]),
                   str(record["pre_apply_head"]), str(record["post_apply_head"]))

    def line(self) -> str:
        if not self.commits:
            return f"landed: nothing (every step was unchanged); {self.branch} stays at " \
                   f"{self.head[:12]}"
        return (f"landed: {self.commits} commit(s) on {self.branch}, "
                f"{self.base[:12]}..{self.head[:12]}")


@dataclass
class Invocation:
    """How the user ran us, to print next commands they can paste."""

    style: str = "doit"  # "doit" or "agentos"
    dodo: str | None = None  # doit -f DODO, when not the cwd's dodo.py

    def gates(self, ctx: RunContext) -> str:
        if self.style == "agentos":
            return f"agentos gates --run {ctx.run_id} --outputs {ctx.paths.root.parent}"
        return f"{self._doit()} gates run={ctx.run_id} outputs={ctx.paths.root.parent}"

    def sign(self, ctx: RunContext) -> str:
        if self.style == "agentos":
            return (f"agentos sign --run {ctx.run_id} --outputs {ctx.paths.root.parent} "
                    "--key agentos.key")
        return (f"{self._doit()} sign run={ctx.run_id} outputs={ctx.paths.root.parent} "
                "key=agentos.key")

    def _doit(self) -> str:
        return f"doit -f {self.dodo}" if self.dodo else "doit"


INVOCATION = Invocation()
# the context of this process's invocation (graph.doit_config sets it): the JSON reporter
# is named on the command line (--reporter json), so doit builds it without our help
ACTIVE: list[RunContext] = []


@dataclass
class Progress:
    """Step i/N and the current task; a rich Live line on a terminal, else nothing live."""

    stream: IO[str]
    total_steps: int
    live: Any = None
    current: str = ""
    index: int = 0
    started: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        self.live = Live(self._render(), console=console, refresh_per_second=4,
                         transient=True, redirect_stdout=False, redirect_stderr=False,
                         get_renderable=self._render)
        self.live.start()

    def _render(self) -> Any:
        from rich.text import Text

        elapsed = time.monotonic() - self.started
        where = f"step {self.index}/{self.total_steps}  " if self.total_steps else ""
        return Text(f"{where}{escape(self.current)}  {elapsed:5.1f}s", style="bold")

    def update(self, task_name: str, index: int) -> None:
        self.current, self.index = task_name, index
        if self.live is not None:
            self.live.refresh()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class RunReporter(ConsoleReporter):  # type: ignore[misc]
    """doit's console reporter for our graph: progress, labelled failures, a summary.

    `ctx` is bound by `reporter_for` (doit instantiates the class itself)."""

    desc = "agentos: progress, labelled failures and a summary"
    ctx: RunContext | None = None
    show_gates: Callable[[], None] | None = None
    # under plain `doit` (not `agentos`, which maps codes itself): exit with the failed
    # task's documented code instead of doit's 1
    exit_with_code = False

    def __init__(self, outstream: IO[str], options: dict[str, Any]) -> None:
        super().__init__(outstream, options)
        self.plain = plain_output(outstream)
        self.step_names: list[str] = []
        self.progress: Progress | None = None
        self.ran: set[str] = set()
        self.skipped: set[str] = set()
        self.gate_report_cached = False

    def write(self, text: str) -> None:
        self.outstream.write(escape(text, multiline=True))

    def initialize(self, tasks: Any, selected_tasks: Any) -> None:
        self.step_names = [name for name in tasks if name.startswith("step:")]
        if not self.plain and self.step_names and any(
                not name.startswith(("gates", "sign")) for name in selected_tasks):
            self.progress = Progress(self.outstream, len(self.step_names))
            self.progress.start()

    def _position(self, name: str) -> str:
        if name in self.step_names:
            return f"[{self.step_names.index(name) + 1}/{len(self.step_names)}] "
        return ""

    def execute_task(self, task: Any) -> None:
        name = task.name
        self.ran.add(name)
        if name.startswith("gates:"):
            return  # the table says it once, at the end
        if self.progress is not None:
            index = self.step_names.index(name) + 1 if name in self.step_names else \
                self.progress.index
            self.progress.update(name, index)
            return
        if task.actions and name[0] != "_":
            self.write(f".  {self._position(name)}{name}\n")

    def skip_uptodate(self, task: Any) -> None:
        self.skipped.add(task.name)
        if task.name == "gates:report":
            self.gate_report_cached = True
            return
        if task.name.startswith("gates:") or self.progress is not None:
            return
        if task.name[0] != "_":
            self.write(f"-- {self._position(task.name)}{task.name} (up to date)\n")

    def add_failure(self, task: Any, fail: Any) -> None:
        if fail.report:
            self.failures.append({"task": task, "exception": fail})

    def cleanup_error(self, exception: Any) -> None:
        sys.stderr.write(escape(exception.get_msg(), multiline=True))

    def complete_run(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.gate_report_cached and self.show_gates is not None:
            self.show_gates()  # a cached `doit gates` still shows every result
        self._gates_reused()
        for result in self.failures:
            self._failure(result["task"], result["exception"])
        if self.runtime_errors:
            sys.stderr.write(escape("Execution aborted.\n" + "\n".join(self.runtime_errors)
                                    + "\n", multiline=True))
        if self.ctx is not None and not self.failures and not self.runtime_errors:
            self._summary(self.ctx)
        codes = [getattr(r["exception"], "agentos_error", None) for r in self.failures]
        errors = [e for e in codes if isinstance(e, AgentosError)]
        if self.exit_with_code and errors:
            self.outstream.flush()
            sys.stderr.flush()
            raise SystemExit(errors[0].code)

    def _gates_reused(self) -> None:
        """`gates: 2 evaluated, 20 reused (inputs unchanged)`: which results are cached."""
        gates = {n for n in self.ran | self.skipped
                 if n.startswith("gates:") and n != "gates:report"}
        if gates:
            self.write(f"gates: {len(gates & self.ran)} evaluated, "
                       f"{len(gates & self.skipped)} reused (inputs unchanged)\n")

    def _failure(self, task: Any, exc: Any) -> None:
        from agentos_tasks.interrupts import InterruptedFailure, interrupted_line

        if isinstance(exc, InterruptedFailure):
            sys.stderr.write(escape(interrupted_line(exc.signame, task.name),
                                    multiline=True))
            return
        err = getattr(exc, "agentos_error", None)
        msg = exc.get_msg() if hasattr(exc, "get_msg") else str(exc)
        head = f"{label(err)}:" if isinstance(err, AgentosError) else f"{task.name} failed:"
        lines = [head, msg.rstrip()]
        step_id = task.name.removeprefix("step:")
        if task.name.startswith("step:") and self.ctx is not None:
            tail = log_tail(self.ctx.paths.log(step_id))
            if tail:
                lines.append(f"  last {len(tail)} line(s) of logs/{escape(step_id)}.out:")
                lines += [f"  | {line}" for line in tail]
        sys.stderr.write(escape("\n".join(lines), multiline=True) + "\n")

    def _summary(self, ctx: RunContext) -> None:
        """After a run (not after `doit gates` or `sign` alone): what landed, where the
        evidence is, what to run next."""
        if not ({"result", "apply"} & (self.ran | self.skipped)):
            return
        landed = Landed.read(ctx)
        lines = ["", landed.line() if landed else "landed: nothing yet (the run did not "
                 "reach apply)",
                 f"evidence: {ctx.paths.root}",
                 f"report:   {ctx.paths.root / 'reports' / 'report.html'} "
                 "(written by gates)",
                 f"next:     {INVOCATION.gates(ctx)}",
                 f"then:     {INVOCATION.sign(ctx)}"]
        if (ctx.paths.root / "signature" / "envelope.dsse.json").exists():
            lines[-2:] = ["signed:   this run is signed; nothing in it is rewritten",
                          f"next:     agentos verify {ctx.paths.root} --key <its .pub>"]
        self.write("\n".join(lines) + "\n")


def reporter_for(ctx: RunContext, show_gates: Callable[[], None] | None = None
                 ) -> type[RunReporter]:
    """A RunReporter class bound to this invocation's context."""
    return type("RunReporter", (RunReporter,), {"ctx": ctx, "show_gates": show_gates})


class GateJsonReporter(JsonReporter):  # type: ignore[misc]
    """`--reporter json`, truthful per gate: a gates:<ID> task whose gate FAILed is
    `"result": "fail"` with the gate's reason, whatever doit thought of the action (it
    succeeded in evaluating the gate). Each gate task also carries `gate_status`."""

    desc = "JSON; a gate task's result is its gate's status"

    def add_success(self, task: Any) -> None:
        super().add_success(task)
        self._gate_truth(task)

    def skip_uptodate(self, task: Any) -> None:
        super().skip_uptodate(task)
        self._gate_truth(task)

    def _gate_truth(self, task: Any) -> None:
        from agentos_tasks.gates.runner import stored_result

        name: str = task.name
        # the entry point names this reporter `json` for every dodo.py in the environment:
        # without our run context (another project's graph) it is doit's JsonReporter
        if not ACTIVE or not name.startswith("gates:") or name == "gates:report":
            return
        result = stored_result(ACTIVE[-1].paths.root, name.removeprefix("gates:"))
        entry = self.t_results[name]
        if result is None:
            entry.result, entry.error = "fail", "no verified gate result"
            return
        entry.gate_status = result.status
        if result.status == "FAIL":
            entry.result, entry.error = "fail", result.reason

    def complete_run(self) -> None:
        original = {name: entry.to_dict for name, entry in self.t_results.items()}

        def with_status(name: str) -> Callable[[], dict[str, Any]]:
            def to_dict() -> dict[str, Any]:
                data: dict[str, Any] = original[name]()
                status = getattr(self.t_results[name], "gate_status", None)
                if status is not None:
                    data["gate_status"] = status
                return data
            return to_dict

        for name, entry in self.t_results.items():
            entry.to_dict = with_status(name)
        super().complete_run()
        if RunReporter.exit_with_code:  # plain doit: the documented code, as RunReporter
            from agentos_tasks.interrupts import RAISED

            if RAISED:
                self.outstream.flush()
                raise SystemExit(RAISED[0].code)

