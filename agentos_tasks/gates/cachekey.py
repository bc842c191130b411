"""The key that authenticates cached gate results, and the MACs made with it. Kept apart
from runner.py so that static.py's scan cache can use it without an import cycle."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

_KEY: list[bytes | None] = []


def cache_key() -> bytes | None:
    """The key that authenticates cached gate results, kept OUTSIDE the run directory
    (~/.cache/agentos-tasks/gate-cache.key, 0600): whoever can rewrite outputs/<run>,
    doit's DB included, still cannot make `doit gates` reuse a PASS. No usable home =
    no cache: every gate is recomputed."""
    if not _KEY:
        try:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            key_file = base / "agentos-tasks" / "gate-cache.key"
            key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(32))
            except FileExistsError:
                pass
            key = key_file.read_bytes()
            _KEY.append(key if len(key) == 32 else None)
        except OSError:
            _KEY.append(None)
    return _KEY[0]


def mac(*parts: str) -> str | None:
    key = cache_key()
    if key is None:
        return None
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()


def mac_ok(expected: object, *parts: str) -> bool:
    actual = mac(*parts)
    return actual is not None and isinstance(expected, str) and \
        hmac.compare_digest(actual, expected)
