"""`agentos`: the plain CLI over the same doit graph (DoitMain + a TaskLoader2).

    agentos run REQUEST.yaml [--policy P] [--run NAME] [--outputs DIR] [--answers F]
    agentos exec run --request R [--policy P] [--run NAME] [--outputs DIR] [--answers F]
                     [--step ID]          # only execute up to that step, no apply
    agentos gates (--request R | --run NAME) [--outputs DIR] [--repo CLONE]
    agentos sign (--request R | --run NAME) [--outputs DIR] --key agentos.key
    agentos fleet REQUEST... [--engine local|ray] [--address A] [--jobs N] [--key K]
    agentos keygen [--out DIR] [--force]
    agentos verify outputs/<run> --key agentos.pub [--repo CLONE] [--expect-run ID]
                   [--expect-commit SHA]
    agentos tool verify --result outputs/<run>/tools/<step>/tool_result_pack.json
    agentos schema request|policy

Exit codes: 0 ok; 1 a task failed (doit); 2 bad input; 3 policy violation; 4 step
failed; 5 gates/verification failed (also: a received run directory holds a FIFO,
socket, device or symlink); 6 run state refuses (sealed, dirty target, lock).

Everything printed passes through termsafe.escape (`out`, AgentosError.render, the doit
reporter): text a step, tool or run directory chose never reaches the terminal raw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import EXIT_GATES, AgentosError, internal_error
from agentos_tasks.model import Status
from agentos_tasks.termsafe import escape

if TYPE_CHECKING:
    from collections.abc import Sequence


def out(text: str) -> None:
    """Print a block on stdout, escaped for the terminal (its lines kept)."""
    print(escape(text, multiline=True))


def _doit(args: list[str], cwd: Path, repo: str | None = None) -> int:
    """Run doit's `args` over our graph. The context is built first, so a bad request or
    policy is one clean AgentosError here, not a doit traceback."""
    from doit import loader
    from doit.cmd_base import TaskLoader2
    from doit.doit_cmd import DoitMain

    from agentos_tasks import graph
    from agentos_tasks.fsutil import refuse_special

    values = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    ctx = graph.context_from_vars(values.get, cwd, values)
    if repo:  # gates read git there, not at the recorded path (a clone elsewhere)
        from agentos_tasks.gates.context import use_repo

        use_repo(ctx.paths.root, _existing_repo(repo, cwd))
    # doit opens its dep file itself: a FIFO there (a received run) would block for ever
    refuse_special(ctx.paths.state / "doit-deps.json")

    class AgentosLoader(TaskLoader2):  # type: ignore[misc]
        def load_doit_config(self) -> dict[str, Any]:
            self.ctx = ctx
            return graph.doit_config(self.ctx)

        def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Any]:
            task_list = list(graph.tasks(self.ctx))

            def task_agentos() -> Any:
                yield from task_list

            return list(loader.load_tasks({"task_agentos": task_agentos},
                                          self.cmd_names, allow_delayed=cmd.execute_tasks,
                                          args=pos_args, config=self.config,
                                          task_opts=self.task_opts))

    from agentos_tasks import console, interrupts

    console.INVOCATION.style = "agentos"
    interrupts.RAISED.clear()
    try:
        # `--reporter json` is ours: a gate task's result is its gate's status
        reporters = {"REPORTER": {"json": "agentos_tasks.console:GateJsonReporter"}}
        code = int(DoitMain(AgentosLoader(), extra_config=reporters).run(args))
    finally:
        ctx.release()  # a run refused before it started leaves no directory
    if code and interrupts.RAISED:
        return interrupts.RAISED[0].code
    return code


def _vars(ns: argparse.Namespace) -> list[str]:
    out = []
    for name in ("request", "policy", "run", "outputs", "answers", "key"):
        value = getattr(ns, name, None)
        if value:
            out.append(f"{name}={value}")
    return out


def cmd_exec_run(ns: argparse.Namespace) -> int:
    targets = [f"step:{ns.step}"] if ns.step else []
    return _doit(["run", *_vars(ns), *targets], Path.cwd())


def _existing_repo(raw: str, cwd: Path) -> Path:
    path = Path(raw) if Path(raw).is_absolute() else cwd / raw
    if not path.is_dir():
        raise AgentosError(f"--repo {raw}: no such directory",
                           hint="name a clone of the run's target repository")
    return path


def cmd_run(ns: argparse.Namespace) -> int:
    """`agentos run REQUEST.yaml`: from any directory. Paths inside the request resolve
    against the request file's directory; the evidence goes to --outputs, else to the
    state directory (graph.state_runs_dir), never into the target repository."""
    from agentos_tasks import graph
    from agentos_tasks.request import load_request
    from agentos_tasks.runctx import resolve_cli_path

    cwd = Path.cwd()
    if not ns.outputs:
        repo = load_request(resolve_cli_path(ns.request, cwd)).repo
        ns.outputs = str(graph.state_runs_dir(repo))
    targets = [f"step:{ns.step}"] if ns.step else []
    return _doit(["run", *_vars(ns), *targets], cwd)


def cmd_gates(ns: argparse.Namespace) -> int:
    reporter = ["--reporter", "json"] if ns.json else []
    return _doit(["run", *reporter, *_vars(ns), "gates"], Path.cwd(), repo=ns.repo)


def cmd_sign(ns: argparse.Namespace) -> int:
    """`agentos sign`: the doit `sign` task (gates first; refuses on any FAIL)."""
    return _doit(["run", *_vars(ns), "sign"], Path.cwd())


def cmd_fleet(ns: argparse.Namespace) -> int:
    """`agentos fleet REQUEST...`: every request executed on a worker (local thread or
    Ray task) against a fresh clone of its target; results land here, one at a time."""
    from agentos_tasks.fleet.display import Display
    from agentos_tasks.fleet.engines import make_engine
    from agentos_tasks.fleet.queue import Fleet, plan, summary_lines

    cwd = Path.cwd()
    entries = plan([Path(r) if Path(r).is_absolute() else cwd / r for r in ns.requests])
    outputs = Path(ns.outputs) if ns.outputs else cwd / "outputs"
    outputs = outputs if outputs.is_absolute() else cwd / outputs
    for entry in entries:
        if outputs.resolve() == entry.repo or entry.repo in outputs.resolve().parents:
            raise AgentosError(f"--outputs {outputs} lies inside the target {entry.repo}",
                               hint="give --outputs a directory outside every target")
    if ns.jobs < 1 or ns.max_reruns < 0:
        raise AgentosError("--jobs must be >= 1 and --max-reruns >= 0")
    key = Path(ns.key) if ns.key else None
    if key is not None and not key.is_file():
        raise AgentosError(f"--key {ns.key}: no such file", hint="agentos keygen")
    engine = make_engine(ns.engine, jobs=ns.jobs, address=ns.address)
    display = Display()
    fleet = Fleet(entries, engine, outputs, max_reruns=ns.max_reruns, key=key, show=display)
    try:
        code = fleet.run()
    finally:
        display.close()
        engine.close()
    out("\n".join(summary_lines(fleet)))
    return code


def cmd_keygen(ns: argparse.Namespace) -> int:
    from agentos_tasks.attest import keygen

    private, public = keygen(Path(ns.out), overwrite=ns.force)
    out(f"private key: {escape(private)} (mode 0600, keep it secret)\n"
        f"public key:  {escape(public)} (and {escape(public.with_suffix('.pub.pem'))}: PEM, "
        "for openssl and the Go DSSE verifier)")
    return 0


def cmd_verify(ns: argparse.Namespace) -> int:
    from agentos_tasks.attest import render_checks
    from agentos_tasks.attest.verify import verify_run

    run_dir = Path(ns.run_dir)
    if not run_dir.is_dir():
        raise AgentosError(f"no run directory {run_dir}", hint="agentos verify outputs/<run> "
                           "--key agentos.pub")
    if ns.repo:
        from agentos_tasks.gates.context import use_repo

        use_repo(run_dir, _existing_repo(ns.repo, Path.cwd()))
    from agentos_tasks.attest.verify import identity_lines, run_identity

    checks = verify_run(run_dir, Path(ns.key),
                        executor_pub=Path(ns.executor_key) if ns.executor_key else None,
                        expect_run=ns.expect_run, expect_commits=tuple(ns.expect_commit or ()))
    out("\n".join(identity_lines(run_identity(run_dir))))
    out(render_checks(checks))
    return 0 if all(c.ok for c in checks) else EXIT_GATES


def cmd_tool_verify(ns: argparse.Namespace) -> int:
    from dataclasses import replace

    from agentos_tasks.fsutil import check_received_tree, refuse_special
    from agentos_tasks.tools.pack_check import locate, render, verify_result_pack

    pack = Path(ns.result)
    refuse_special(pack)  # a FIFO would block the read, a symlink could point anywhere
    run_dir, _, _ = locate(pack)
    check_received_tree(run_dir)  # the gates read the run's other files too
    results = verify_result_pack(pack)
    out(render([replace(r, id=escape(r.id), reason=escape(r.reason)) for r in results]))
    return 0 if all(r.status != Status.FAIL for r in results) else EXIT_GATES


def cmd_schema(ns: argparse.Namespace) -> int:
    from agentos_tasks.schemas import json_schema

    print(json.dumps(json_schema(ns.kind), indent=2, sort_keys=True))  # ASCII-only JSON
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentos", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    exec_p = sub.add_parser("exec", help="execute a request")
    exec_sub = exec_p.add_subparsers(dest="exec_command", required=True)
    run_p = exec_sub.add_parser("run", help="run a request (same as doit run request=...)")
    run_p.add_argument("--request", required=True)
    for opt in ("--policy", "--run", "--outputs", "--answers"):
        run_p.add_argument(opt)
    run_p.add_argument("--step", help="execute steps up to this one only; do not apply")
    run_p.set_defaults(func=cmd_exec_run)

    own_p = sub.add_parser("run", help="run REQUEST.yaml against its repository (from any "
                           "directory; evidence under $XDG_STATE_HOME/agentos-tasks/runs)")
    own_p.add_argument("request", help="the request file")
    for opt in ("--policy", "--run", "--outputs", "--answers"):
        own_p.add_argument(opt)
    own_p.add_argument("--step", help="execute steps up to this one only; do not apply")
    own_p.set_defaults(func=cmd_run)

    gates_p = sub.add_parser("gates", help="run every gate over a run's evidence")
    gates_p.add_argument("--request")
    gates_p.add_argument("--run")
    gates_p.add_argument("--outputs")
    gates_p.add_argument("--json", action="store_true",
                         help="doit's JSON report; each gate task's result is its status")
    gates_p.add_argument("--repo", help="read git from this clone of the target repository "
                         "instead of the path the run recorded")
    gates_p.set_defaults(func=cmd_gates)

    sign_p = sub.add_parser("sign", help="sign a run whose gates pass (DSSE envelope)")
    sign_p.add_argument("--request")
    sign_p.add_argument("--run")
    sign_p.add_argument("--outputs")
    sign_p.add_argument("--key", required=True, help="the private key (agentos keygen)")
    sign_p.set_defaults(func=cmd_sign)

    fleet_p = sub.add_parser("fleet", help="run many requests at once (local or Ray); "
                             "land each on its target, one at a time")
    fleet_p.add_argument("requests", nargs="+", help="request files")
    fleet_p.add_argument("--engine", choices=("local", "ray"), default="local")
    fleet_p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    fleet_p.add_argument("--jobs", type=int, default=2, help="requests at once (local engine)")
    fleet_p.add_argument("--outputs", help="evidence directory (default ./outputs)")
    fleet_p.add_argument("--max-reruns", type=int, default=5,
                         help="re-runs from a moved base before a request is reported")
    fleet_p.add_argument("--key", help="sign every landed run with this key")
    fleet_p.set_defaults(func=cmd_fleet)

    key_p = sub.add_parser("keygen", help="write agentos.key (0600) and agentos.pub")
    key_p.add_argument("--out", default=".")
    key_p.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    key_p.set_defaults(func=cmd_keygen)

    ver_p = sub.add_parser("verify", help="re-check a signed run offline")
    ver_p.add_argument("run_dir")
    ver_p.add_argument("--key", required=True)
    ver_p.add_argument("--repo", help="a clone of the target repository (default: the path "
                       "the run recorded)")
    ver_p.add_argument("--executor-key", default=None, metavar="PUB",
                       help="the executor's public key the step attestations must be "
                            "signed with (attestations/executor.pub.json of a trusted run)")
    ver_p.add_argument("--expect-run", help="fail unless the signed run has this id")
    ver_p.add_argument("--expect-commit", action="append", metavar="SHA",
                       help="fail unless this run landed this commit (repeatable)")
    ver_p.set_defaults(func=cmd_verify)

    tool_p = sub.add_parser("tool", help="tool outsourcing commands")
    tool_sub = tool_p.add_subparsers(dest="tool_command", required=True)
    tv = tool_sub.add_parser("verify", help="check a tool result pack (TL-A..TL-F)")
    tv.add_argument("--result", required=True)
    tv.set_defaults(func=cmd_tool_verify)

    schema_p = sub.add_parser("schema", help="print the JSON Schema of a request or policy")
    schema_p.add_argument("kind", choices=["request", "policy"])
    schema_p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns))
    except AgentosError as err:
        sys.stderr.write(err.render() + "\n")
        return err.code
    except KeyboardInterrupt as exc:  # outside any task (graph.guarded handles those)
        import signal

        from agentos_tasks.interrupts import Interrupted, interrupted_line

        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        sys.stderr.write(interrupted_line(signal.Signals(signum).name))
        return 128 + signum
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last resort: one block and a log, no traceback
        crash = internal_error(exc)
        sys.stderr.write(crash.render() + "\n")
        return crash.code


if __name__ == "__main__":
    sys.exit(main())
