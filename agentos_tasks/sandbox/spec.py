"""What a confined run is asked to do and what it reports: shared by proc, the executor
and the tool dispatcher, so none of them imports another for a record type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

# Sane defaults when the policy leaves a limit open (ConfinedSpec fields set to None).
DEFAULT_MEMORY_BYTES = 8 * 1024**3  # address space; V8 and Go reserve a lot of virtual memory
DEFAULT_MAX_PROCESSES = 256
DEFAULT_MAX_OPEN_FILES = 1024
DEFAULT_TMP_BYTES = 256 * 1024 * 1024  # private /tmp and /dev/shm are RAM: bound them


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
    memory_bytes: int | None = None  # RLIMIT_AS (and memory.max where a cgroup allows it)
    max_processes: int | None = None  # cgroup pids.max when available, else RLIMIT_NPROC
    max_open_files: int | None = None  # RLIMIT_NOFILE
    tmp_bytes: int | None = None  # size of the private /tmp and /dev/shm (RAM); default 256 MiB


@dataclass(frozen=True)
class ConfinedResult:
    argv: tuple[str, ...]  # the program's argv as asked
    exit_code: int  # negative: killed by that signal (see README: bwrap reports 128+N)
    timed_out: bool
    duration_s: float
    output_bytes: int  # bytes written to the log
    output_truncated: bool
    backend: str  # "bwrap" | "none"
    wrapper_argv: tuple[str, ...]  # the full argv actually started (sandbox included)
    notes: tuple[str, ...] = ()  # how limits were enforced, why a fallback was taken
