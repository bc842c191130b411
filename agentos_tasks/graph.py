"""Request -> doit task dicts. `dodo.py` and `agentos exec` both build the graph here.

Tasks of one run: policy -> worktree -> step:<id> ... -> apply -> checksums -> result,
plus gates:<ID> (+ gates:report) and sign, which are never default and never depend on a
run task: `doit gates` re-checks evidence, it does not regenerate it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doit.exceptions import TaskFailed

from agentos_tasks.errors import EXIT_GATES, EXIT_STATE, AgentosError, internal_error
from agentos_tasks.fsutil import canonical_json, refuse_special, write_if_changed
from agentos_tasks.interrupts import (
    RAISED,
    RESUME_HINT,
    STOP_SIGNALS,
    Interrupted,
    InterruptedFailure,
    interrupted_line,
)
from agentos_tasks.runctx import RunContext, build_context
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

_stopping: list[int] = []


def _on_stop_signal(signum: int, _frame: Any) -> None:
    """First stop signal: unwind (the step's processes are killed on the way out). A
    second one while unwinding: die by it at once (the tape recovers either way)."""
    if _stopping:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stopping.append(signum)
    raise Interrupted(signum)


def _excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """An interruption outside any task (between tasks, in doit itself): one line."""
    if issubclass(kind, KeyboardInterrupt):
        name = signal.Signals(value.signum).name if isinstance(value, Interrupted) \
            else "SIGINT"
        sys.stderr.write(interrupted_line(name))
        sys.stderr.flush()
        _SIGNAL_EXIT.append(128 + signal.Signals[name].value)
        return
    sys.__excepthook__(kind, value, tb)


_SIGNAL_EXIT: list[int] = []


def _exit_by_signal_code() -> None:
    """Registered first, so it runs last of the atexit handlers: an invocation a stop
    signal ended between tasks exits 128+N (as inside a task), not Python's 1."""
    if _SIGNAL_EXIT:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(_SIGNAL_EXIT[0])


def install_interrupt_handlers() -> None:
    """Where an invocation starts (doit_config): SIGINT, SIGTERM and SIGHUP unwind the
    executor as one Interrupted exception, never a traceback."""
    if threading.current_thread() is not threading.main_thread():
        return
    _stopping.clear()  # a new invocation in this process (agentos exec, tests) starts afresh
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    if sys.excepthook is not _excepthook:
        atexit.register(_exit_by_signal_code)
    sys.excepthook = _excepthook


def _failed(err: AgentosError, failure: TaskFailed | None = None) -> TaskFailed:
    """The doit failure for `err`, carrying it (the reporter labels it by what happened,
    and a plain `doit` exits with its code)."""
    RAISED.append(err)
    failure = failure if failure is not None else TaskFailed(err.render())
    failure.agentos_error = err
    return failure


def guarded(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Wrap an action: a user-facing error becomes a clean doit failure, not a traceback."""

    def action() -> Any:
        try:
            fn(*args)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: stop, never a traceback
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            name = signal.Signals(signum).name
            return _failed(AgentosError(f"interrupted by {name}", hint=RESUME_HINT,
                                        code=128 + signum), InterruptedFailure(name))
        except AgentosError as err:
            return _failed(err)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                return _failed(internal_error(exc))
            return _failed(disk_full(exc))
        except Exception as exc:  # the last resort: one block and a log, no traceback
            return _failed(internal_error(exc))
        return None

    action.__name__ = fn.__name__
    action.__doc__ = fn.__doc__
    return action


def disk_full(exc: OSError) -> AgentosError:
    """The one error for a full disk (or quota): nothing is half-applied, since apply is a
    single ref update after every write; free space and run the same command again."""
    where = f" writing {exc.filename}" if exc.filename else ""
    return AgentosError(f"no space left on the device{where} ({exc.strerror})",
                        code=EXIT_STATE, hint="free space (df -h) and re-run the same "
                        "command: completed steps are reused, nothing was applied half")


class _DumpGuard:
    """doit writes its dep file at the end of every invocation, outside any task: on a
    full disk that write would end in doit's traceback. It is only a cache (manifests are
    the truth), so a failed write is removed and noted; the task that hit the full disk
    reports the error itself."""

    installed = False

    @classmethod
    def install(cls) -> None:
        if cls.installed:
            return
        from doit.dependency import JsonDB

        original = JsonDB.dump

        def dump(self: Any) -> None:
            try:
                original(self)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                with contextlib.suppress(OSError):
                    os.unlink(self.name)  # next time every task is checked again
                sys.stderr.write("note: doit's task cache was not saved: "
                                 + disk_full(exc).render() + "\n")

        JsonDB.dump = dump
        cls.installed = True


def drop_torn_dep_file(dep_file: Path) -> None:
    """doit writes its dep file in place at the end of an invocation; one killed while
    writing leaves JSON doit refuses to read ever after. It is only a cache (manifests,
    written last and atomically, are the truth), so a torn one is removed: every task is
    then checked again and completed steps are reused from their manifests."""
    try:
        json.loads(dep_file.read_bytes())
    except FileNotFoundError:
        return
    except ValueError:  # also UnicodeDecodeError
        dep_file.unlink()
        sys.stderr.write(escape(f"note: {dep_file} was torn by an interruption; removed "
                                "(completed steps are reused from their manifests)") + "\n")


def _show_gates(ctx: RunContext) -> None:
    """A cached `doit gates` (gates:report up to date) still prints every result: the
    stored ones, each verified by its MAC and input digest (runner.collect)."""
    from agentos_tasks.gates.report import print_table
    from agentos_tasks.gates.runner import collect

    print_table(collect(ctx.paths.root))


def doit_config(ctx: RunContext) -> dict[str, Any]:
    from agentos_tasks import console

    console.ACTIVE.append(ctx)
    install_interrupt_handlers()
    _DumpGuard.install()
    ctx.paths.state.mkdir(parents=True, exist_ok=True)
    # doit opens its dep file without asking: a FIFO there (a received run directory)
    # would block `doit gates` forever, a symlink would be followed
    refuse_special(ctx.paths.state / "doit-deps.json")
    drop_torn_dep_file(ctx.paths.state / "doit-deps.json")
    return {
        "dep_file": str(ctx.paths.state / "doit-deps.json"),
        "backend": "json",
        "default_tasks": ["result"] if ctx.request is not None else ["gates"],
        "reporter": console.reporter_for(ctx, partial(_show_gates, ctx)),
        "check_file_uptodate": "md5",
        "verbosity": 1,
    }


def tasks(ctx: RunContext) -> Iterator[dict[str, Any]]:
    """All doit tasks of one run."""
    from agentos_tasks import apply, evidence, start, steps

    if ctx.request is not None:
        req = ctx.request
        paths = ctx.paths
        inputs = sorted({str(f) for s in req.steps for f in s.input_files})
        policy_deps = [str(req.source), str(ctx.policy.source), *inputs]
        if ctx.answers_path is not None:
            policy_deps.append(str(ctx.answers_path))
        yield {
            "basename": "policy",
            "doc": "check the whole request against the policy before anything runs",
            "actions": [guarded(start.policy_task, ctx)],
            "file_dep": policy_deps,
            "targets": [str(paths.policy_record)],
        }
        yield {
            "basename": "worktree",
            "doc": "create the run's git worktree at the base commit",
            "actions": [guarded(start.worktree_task, ctx)],
            "task_dep": ["policy"],
            "uptodate": [lambda: start.worktree_uptodate(ctx)],
            "targets": [str(paths.base_record)],
            "clean": [(start.remove_worktree, [ctx])],
        }
        previous = str(paths.base_record)
        for step in req.steps:
            spec_file = paths.spec(step.id)
            write_if_changed(spec_file, canonical_json(evidence.step_spec(ctx, step)))
            manifest = str(paths.manifest(step.id))
            yield {
                "basename": f"step:{step.id}",
                "doc": escape(f"{step.op}: {step.message}"),  # `doit list` prints it
                "actions": [guarded(steps.run_step, ctx, step)],
                "file_dep": [str(spec_file), *map(str, step.input_files), previous],
                "targets": [manifest],
            }
            previous = manifest
        manifests = [str(paths.manifest(s.id)) for s in req.steps]
        yield {
            "basename": "apply",
            "doc": "git am every step's patch onto the target branch (once)",
            "actions": [guarded(apply.apply_task, ctx)],
            "file_dep": manifests,
            "targets": [str(paths.applied_record)],
        }
        yield {
            "basename": "checksums",
            "doc": "sha256 of the final tree's changed files and of every artifact",
            "actions": [guarded(evidence.checksums_task, ctx)],
            "file_dep": [str(paths.applied_record)],
            "targets": [str(paths.checksums), str(paths.sha256sums)],
        }
        yield {
            "basename": "result",
            "doc": "write execution_result.json and close the tape (run_end)",
            "actions": [guarded(evidence.result_task, ctx)],
            "file_dep": [str(paths.checksums)],
            "uptodate": [lambda: evidence.run_closed_as_applied(ctx)],
            "targets": [str(paths.execution_result)],
        }
        yield {
            "basename": "rollback",
            "doc": "undo an applied run (branch back to its pre-apply head, with proof)",
            "actions": [guarded(apply.rollback_task, ctx)],
            "uptodate": [False],
            "verbosity": 2,
        }
    yield from gate_tasks(ctx)


def gate_tasks(ctx: RunContext) -> Iterator[dict[str, Any]]:
    """One subtask per gate; up to date while its evidence digest is unchanged.

    No file_dep/task_dep on run tasks (doit would turn those into dependencies and
    regenerate evidence); an `uptodate` digest of the inputs instead.
    """
    from agentos_tasks.gates.attestations import check_host_key
    from agentos_tasks.gates.runner import REGISTRY, InputsUnchanged, gate_inputs_digest, run_gate

    run_dir = ctx.paths.root
    check_host_key(run_dir)  # doit gates runs where the run was executed
    names = []
    for gate in REGISTRY:
        names.append(f"gates:{gate.id}")
        inputs = InputsUnchanged(partial(gate_inputs_digest, gate, run_dir), str(run_dir))
        yield {
            "basename": "gates",
            "name": gate.id,
            "doc": gate.title,
            "actions": [guarded(run_gate, gate, run_dir, inputs.raw)],
            "uptodate": [inputs],
            "verbosity": 2,
        }
    all_inputs = InputsUnchanged(lambda: {g.id: gate_inputs_digest(g, run_dir) for g in REGISTRY},
                                 str(run_dir))
    yield {
        "basename": "gates",
        "name": "report",
        "doc": "write reports/gates.json, gates.xml, report.md; fail on any FAIL",
        "actions": [guarded(write_gate_reports, run_dir, all_inputs.raw)],
        "task_dep": names,
        # deleted reports are written again (up to date needs them to exist)
        "targets": [str(run_dir / "reports" / name) for name in
                    ("gates.json", "gates.xml", "report.md", "report.html")],
        "verbosity": 2,
        "uptodate": [all_inputs],
    }
    yield {
        "basename": "sign",
        "doc": "sign the run (DSSE over in-toto Statement v1); refuses unless all gates pass",
        "actions": [guarded(sign_action, ctx)],
        "task_dep": ["gates"],
        "uptodate": [False],
    }


def write_gate_reports(run_dir: Path, digests_of: Callable[[], object]) -> None:
    """gates:report: the reports, reusing the input digests its up-to-date check took."""
    from agentos_tasks.gates.report import write_reports

    write_reports(run_dir, digests_of=digests_of)


def sign_action(ctx: RunContext) -> None:
    from agentos_tasks.attest import sign_run

    if ctx.key_path is None:
        raise AgentosError("sign needs key=PATH", hint="agentos keygen, then "
                           "doit sign request=... key=agentos.key")
    # never trust a cached gate result: recompute every gate from the evidence now,
    # write the reports from exactly those results, then sign (refused on any FAIL)
    from agentos_tasks.attest.executor import (
        KEY_ENV_VAR,
        default_executor_key_path,
        existing_executor_key,
    )
    from agentos_tasks.gates.report import write_reports
    from agentos_tasks.gates.runner import run_all

    executor = existing_executor_key()
    if executor is None:
        raise AgentosError(f"no executor key at {default_executor_key_path()}: this host did "
                           "not execute the run, its step attestations cannot be pinned",
                           code=EXIT_GATES,
                           hint=f"sign on the host that ran it (${KEY_ENV_VAR} names the key "
                                "when it is not in the default place)")
    write_reports(ctx.paths.root, run_all(ctx.paths.root))
    envelope = sign_run(ctx.paths.root, ctx.key_path,
                        executor_keyid=executor.public_key.keyid)
    print(f"signed: {escape(envelope)}")


# The doit variables dodo.py and `agentos` read (README "Variables").
VARIABLES: tuple[str, ...] = ("request", "policy", "run", "outputs", "answers", "key")


def check_variable_names(names: Iterable[str]) -> None:
    """A misspelt `name=` is named with a did-you-mean, never silently ignored."""
    import difflib

    for name in names:
        if name not in VARIABLES:
            close = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=0.6)
            suggestion = f" (did you mean {close[0]}=?)" if close else ""
            raise AgentosError(f"unknown variable {name}={suggestion}",
                               hint="variables: " + ", ".join(f"{v}=" for v in VARIABLES))


def state_runs_dir(repo: Path) -> Path:
    """Where a run against `repo` keeps its evidence when no outputs= is given and
    ./outputs is not usable: $XDG_STATE_HOME/agentos-tasks/runs/<repo name>-<8 hex of
    its path> (~/.local/state when XDG_STATE_HOME is unset). Never inside the repo."""
    import hashlib

    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    tag = hashlib.sha256(str(repo.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return base / "agentos-tasks" / "runs" / f"{repo.resolve().name}-{tag[:8]}"


def default_outputs(request: str | None, cwd: Path) -> str | None:
    """outputs= when none is given: ./outputs (as always), unless that lies inside the
    request's target repository (`cd myrepo && doit -f .../dodo.py run request=...`):
    then the state directory (state_runs_dir). Evidence never lands in the tree it
    describes."""
    if not request:
        return None
    from agentos_tasks.request import load_request
    from agentos_tasks.runctx import resolve_cli_path

    repo = load_request(resolve_cli_path(request, cwd)).repo.resolve()
    here = (cwd / "outputs").resolve()
    if here == repo or repo in here.parents:
        return str(state_runs_dir(repo))
    return None


def context_from_vars(get_var: Callable[[str], str | None], cwd: Path,
                      given: Iterable[str] = ()) -> RunContext:
    """The run's context from doit variables; `given` names every variable on the
    command line (each must be one of VARIABLES)."""
    from agentos_tasks.start import adopt_recorded_request

    check_variable_names(given)
    outputs = get_var("outputs") or default_outputs(get_var("request"), cwd)
    ctx = build_context(request=get_var("request"), policy=get_var("policy"),
                        run=get_var("run"), outputs=outputs,
                        answers=get_var("answers"), key=get_var("key"), cwd=cwd)
    adopt_recorded_request(ctx)
    ctx.lock()
    return ctx


def _doit_variable_names() -> list[str]:
    """The `name=value` arguments doit parsed (DoitMain.process_args' rule over argv)."""
    from doit import doit_cmd

    parsed = getattr(doit_cmd, "_CMDLINE_VARS", None)
    if isinstance(parsed, dict):
        return [str(name) for name in parsed]
    return [a.split("=", 1)[0] for a in sys.argv[1:] if a[:1] != "-" and "=" in a]


def _dodo_option() -> str:
    """The `-f DODO` / `--file DODO` doit was given, to repeat it in next commands."""
    import doit

    start = Path(doit.get_initial_workdir() or Path.cwd())  # doit chdirs to the dodo's dir
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        given = argv[i + 1] if arg in ("-f", "--file") and i + 1 < len(argv) else \
            arg.split("=", 1)[1] if arg.startswith("--file=") else None
        if given is not None:
            dodo = (start / given).resolve()
            return "" if dodo == (start / "dodo.py").resolve() else str(dodo)
    return ""


def load_for_doit() -> tuple[dict[str, Any], Callable[[], Iterator[dict[str, Any]]]]:
    """For dodo.py: (DOIT_CONFIG, task creator). A user mistake exits with one clean block."""
    import doit
    from doit.doit_cmd import get_var

    from agentos_tasks import console

    cwd = Path(doit.get_initial_workdir() or Path.cwd())
    console.RunReporter.exit_with_code = True  # plain doit: documented exit codes
    console.INVOCATION.dodo = _dodo_option() or None
    try:
        ctx = context_from_vars(get_var, cwd, _doit_variable_names())
        config = doit_config(ctx)
        task_list = list(tasks(ctx))
    except AgentosError as err:
        sys.stderr.write(err.render() + "\n")
        raise SystemExit(err.code) from None
    except Exception as exc:  # the last resort: one block and a log, no traceback
        crash = internal_error(exc)
        sys.stderr.write(crash.render() + "\n")
        raise SystemExit(crash.code) from None

    def task_agentos() -> Iterator[dict[str, Any]]:
        yield from task_list

    return config, task_agentos
