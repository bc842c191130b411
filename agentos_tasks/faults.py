"""Crash points for tests: `AGENTOS_CRASH_AT=<name>` SIGKILLs the executor right there.

A crash between two durable writes is the case recovery code exists for, and the only
honest test of that code is a real kill at that point (not a hand-made imitation of the
state it leaves). Unset, `point` costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV_VAR = "AGENTOS_CRASH_AT"


def point(name: str) -> None:
    """Die here, as SIGKILL would kill us, when the environment names this point."""
    if os.environ.get(CRASH_ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
