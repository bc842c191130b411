"""What a confined run is asked to do and what it reports: shared by proc, the executor
and the tool dispatcher, so none of them imports another for a record type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

# Sane defaults when the policy leaves a limit open (ConfinedSpec fields set to None).
DEFAULT_MEMORY_BYTES = 8 * 1024**3  # the run cgroup's memory limit (RLIMIT_AS only as fallback)
DEFAULT_MAX_PROCESSES = 256
DEFAULT_MAX_OPEN_FILES = 1024
DEFAULT_TMP_BYTES = 256 * 1024 * 1024  # private /tmp and /dev/shm are RAM: bound them


@dataclass(frozen=True)
class NetworkGrant:
    """What network a confined program gets (the policy's `network:` for its step).

    mode "none": a network namespace with only loopback, nothing listening (the default).
    mode "proxy": the same empty namespace plus, on 127.0.0.1:PROXY_PORT inside, a bridge
    to the allowlist proxy that runs outside the sandbox (agentos_tasks.net); the program
    gets HTTP(S)_PROXY/ALL_PROXY, and the proxy decides every connection by `allow`
    (entries as written in the policy: host, host:port, *.suffix, IP literals),
    `resolve` (names pinned to addresses, like curl --resolve) and `unrestricted` (any
    public host: the explicit, flagged `network: unrestricted`). Every attempt is
    appended to `ledger` (JSON lines, written by the proxy only). Never the host's
    network namespace, loopback or abstract sockets.
    """

    mode: str = "none"  # "none" | "proxy"
    allow: tuple[str, ...] = ()
    resolve: tuple[tuple[str, str], ...] = ()  # (name, address)
    unrestricted: bool = False
    rule_id: str = ""  # the policy rule that grants it: "network", "tools[0]", "commands[2]"
    step: str = ""  # recorded in each ledger entry
    ledger: Path | None = None  # host file the proxy appends to


NO_NETWORK = NetworkGrant()
PROXY_PORT = 3128  # the bridge's port on the sandbox's own loopback


@dataclass(frozen=True)
class ConfinedSpec:
    """What an untrusted program may see and use (built by the executor from the policy)."""

    worktree: Path  # bound read-write; the program's cwd
    readonly_paths: tuple[Path, ...]  # e.g. the repository's git dir, the worktree's .git file
    env: Mapping[str, str]  # complete, already allowlisted environment
    network: NetworkGrant
    isolation: str  # "required" | "best-effort"
    timeout_s: float
    output_limit: int  # bytes of merged stdout+stderr kept in the log
    max_file_bytes: int | None  # RLIMIT_FSIZE; None for tool steps (their own state files
    # in the private home must not hit it: the worktree's files are judged afterwards)
    memory_bytes: int | None = None  # memory.max of the run's cgroup; RLIMIT_AS only without
    secret_env: tuple[str, ...] = ()  # names in `env` whose values are secrets: passed to
    # the program through the environment only, never in any argv, never recorded
    masked: tuple[Path, ...] = ()  # worktree entries hidden inside (empty, read-only):
    # a tool's repository-level config dirs (.opencode/, .claude/, .codex/)
    max_processes: int | None = None  # cgroup pids.max when available, else RLIMIT_NPROC
    max_open_files: int | None = None  # RLIMIT_NOFILE
    tmp_bytes: int | None = None  # size of the private /tmp and /dev/shm (RAM); default 256 MiB


@dataclass(frozen=True)
class ConfinedResult:
    argv: tuple[str, ...]  # the program's argv as asked
    exit_code: int  # negative: killed by that signal (see docs/sandbox.md: bwrap reports 128+N)
    timed_out: bool
    duration_s: float
    output_bytes: int  # bytes written to the log
    output_truncated: bool
    backend: str  # "bwrap" | "none"
    wrapper_argv: tuple[str, ...]  # the full argv actually started (sandbox included)
    notes: tuple[str, ...] = ()  # how limits were enforced, why a fallback was taken
