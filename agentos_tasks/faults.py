"""Fault injection for tests: the executor SIGKILLs itself at a named point.

A crash between two durable writes is the case recovery code exists for, and the only
honest test of that code is a real kill at that point (not a hand-made imitation of the
state it leaves). Two knobs, both read from the environment:

- `AGENTOS_CRASH_AT=<name>`: die at `point(name)` (e.g. `apply.branch_moved`).
- `AGENTOS_CRASH_AFTER_EVENT=<seq>`: die right after tape event `seq` (0-based, as the
  tape's `seq` field) is durably written: its line fsync'd and tape_head.json replaced.
  `<seq>:line` dies between the two (the line is on disk, the head is not moved yet).
  `<seq>:torn` dies in the middle of writing event `seq`'s line: its first half is on
  disk, no newline; `<seq>:nonl` dies after the whole line but before its newline.

Unset, each costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from typing import BinaryIO

CRASH_ENV_VAR = "AGENTOS_CRASH_AT"
CRASH_AFTER_EVENT_ENV_VAR = "AGENTOS_CRASH_AFTER_EVENT"


def point(name: str) -> None:
    """Die here, as SIGKILL would kill us, when the environment names this point."""
    if os.environ.get(CRASH_ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def after_tape_event(seq: int, *, head_written: bool) -> None:
    """Die right after tape event `seq` when AGENTOS_CRASH_AFTER_EVENT names it: with
    `<seq>` once the head moved too, with `<seq>:line` before the head moved."""
    wanted = os.environ.get(CRASH_AFTER_EVENT_ENV_VAR)
    if wanted is None:
        return
    if wanted == (str(seq) if head_written else f"{seq}:line"):
        os.kill(os.getpid(), signal.SIGKILL)


def torn_write(seq: int, handle: BinaryIO, line: bytes) -> None:
    """Die while writing tape event `seq` when AGENTOS_CRASH_AFTER_EVENT names it with
    `:torn` (half the line reaches the disk) or `:nonl` (all of it but its newline)."""
    wanted = os.environ.get(CRASH_AFTER_EVENT_ENV_VAR)
    if wanted is None or wanted not in (f"{seq}:torn", f"{seq}:nonl"):
        return
    handle.write(line if wanted.endswith(":nonl") else line[:len(line) // 2])
    handle.flush()
    os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
