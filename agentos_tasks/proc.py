"""The one place that starts processes.

`run` starts trusted host programs (git) with an explicit, complete environment.
`run_confined` starts untrusted programs (run steps, coding-agent CLIs) inside the
sandbox chosen by `sandbox.py`. Nothing else in agentos_tasks or gates may import
subprocess; the static gate (gates/static.py) proves it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentos_tasks.errors import AgentosError


@dataclass(frozen=True)
class ProcResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration_s: float

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str],
    input: bytes | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> ProcResult:
    """Run a trusted host program; `env` is the whole environment (nothing inherited)."""
    started = time.monotonic()
    try:
        completed = subprocess.run(
            list(argv), cwd=cwd, env=dict(env), input=input, capture_output=True,
            timeout=timeout, check=False, start_new_session=True,
        )
    except FileNotFoundError:
        raise AgentosError(f"program not found: {argv[0]}",
                           hint="install it or put it on PATH") from None
    except subprocess.TimeoutExpired:
        raise AgentosError(f"{argv[0]} timed out after {timeout}s: {' '.join(argv)}") from None
    result = ProcResult(tuple(argv), completed.returncode, completed.stdout, completed.stderr,
                        time.monotonic() - started)
    if check and completed.returncode != 0:
        raise ProcError(result)
    return result


class ProcError(AgentosError):
    """A trusted program exited non-zero; carries its result for the caller to inspect."""

    def __init__(self, result: ProcResult) -> None:
        err = result.stderr.decode("utf-8", "replace").strip() or result.text.strip()
        super().__init__(f"{' '.join(result.argv[:4])} ... exited {result.returncode}: {err}")
        self.result = result


@dataclass(frozen=True)
class ConfinedSpec:
    """What an untrusted program may see and use (built by the executor from the policy)."""

    worktree: Path  # bound read-write; the program's cwd
    readonly_paths: tuple[Path, ...]  # e.g. the repository's git dir, the worktree's .git file
    env: Mapping[str, str]  # complete, already allowlisted environment
    network: bool
    isolation: str  # "required" | "best-effort"
    timeout_s: float
    output_limit: int  # bytes of merged stdout+stderr kept in the log
    max_file_bytes: int
    memory_bytes: int | None = None
    max_processes: int | None = None
    max_open_files: int | None = None


@dataclass(frozen=True)
class ConfinedResult:
    argv: tuple[str, ...]  # the program's argv as asked
    exit_code: int  # negative: killed by that signal
    timed_out: bool
    duration_s: float
    output_bytes: int  # bytes written to the log
    output_truncated: bool
    backend: str  # "bwrap" | "none"
    wrapper_argv: tuple[str, ...]  # the full argv actually started (sandbox included)


def run_confined(argv: Sequence[str], spec: ConfinedSpec, output_path: Path) -> ConfinedResult:
    """Run an untrusted program; merged output goes to `output_path`, cut at output_limit.

    Placeholder backend "none" until the sandbox lands: process group kill on timeout.
    """
    if spec.isolation == "required":
        raise AgentosError("isolation: required but no sandbox backend is available",
                           hint="use a policy with isolation: best-effort")
    started = time.monotonic()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    timed_out = False
    with open(output_path, "wb") as out:
        try:
            proc = subprocess.Popen(list(argv), cwd=spec.worktree, env=dict(spec.env),
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except (FileNotFoundError, PermissionError) as exc:
            out.write(f"agentos: cannot start {argv[0]}: {exc}\n".encode())
            return ConfinedResult(tuple(argv), 127, False, 0.0, out.tell(), False, "none",
                                  tuple(argv))
        try:
            code = proc.wait(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    size = output_path.stat().st_size
    truncated = size > spec.output_limit
    if truncated:
        with open(output_path, "r+b") as out:
            out.truncate(spec.output_limit)
        size = spec.output_limit
    return ConfinedResult(tuple(argv), code, timed_out, time.monotonic() - started, size,
                          truncated, "none", tuple(argv))
