"""`python -m agentos_tasks.net.serve --socket PATH --config FILE.json --ledger FILE.jsonl`

The allowlist proxy for one sandboxed step, run on the host (outside the sandbox) by
proc.py. It listens on a unix socket (a bridge inside the sandbox's network namespace
forwards 127.0.0.1:3128 to it), prints exactly `ready` on stdout once it accepts
connections, serves each client in a thread of this one process (it starts no process),
appends one ledger line per request, and on SIGTERM/SIGINT stops accepting, ends live
connections (their entries are written), closes the ledger and exits 0.

Config (JSON object, these keys only):
  step (str), allow (list of entries), resolve ({name: address}), unrestricted (bool),
  rule_id (str), idle_timeout_s (number, optional; default 900).
Exit codes: 0 stopped by a signal, 2 bad arguments or config, 3 cannot listen.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.net.allowlist import Allowlist, make_allowlist
from agentos_tasks.net.ledger import LedgerWriter
from agentos_tasks.net.proxy import ProxyHandler

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

CONFIG_KEYS = {"step", "allow", "resolve", "unrestricted", "rule_id", "idle_timeout_s"}
REQUIRED_KEYS = {"step", "allow", "rule_id"}
MAX_UNIX_PATH = 107
JOIN_TIMEOUT_S = 5.0
MAX_CLIENTS = 512  # concurrent client connections (each holds a thread or three)
EXIT_USAGE = 2
EXIT_LISTEN = 3


class ConfigError(Exception):
    """A config file the proxy refuses; the message names the file and the key."""


def load_config(path: Path) -> tuple[str, Allowlist, float]:
    """(step, allowlist, idle timeout) from a config file; ConfigError says what is wrong."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a JSON object")
    unknown, missing = sorted(set(raw) - CONFIG_KEYS), sorted(REQUIRED_KEYS - set(raw))
    if unknown or missing:
        raise ConfigError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    step, allow, rule_id = raw["step"], raw["allow"], raw["rule_id"]
    resolve = raw.get("resolve", {})
    unrestricted = raw.get("unrestricted", False)
    idle = raw.get("idle_timeout_s", 900.0)
    if not isinstance(step, str) or not isinstance(rule_id, str) or not rule_id:
        raise ConfigError(f"{path}: 'step' and 'rule_id' must be strings (rule_id non-empty)")
    if not isinstance(allow, list) or not all(isinstance(e, str) for e in allow):
        raise ConfigError(f"{path}: 'allow' must be a list of strings")
    if not isinstance(resolve, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in resolve.items()
    ):
        raise ConfigError(f"{path}: 'resolve' must map names to address strings")
    if not isinstance(unrestricted, bool):
        raise ConfigError(f"{path}: 'unrestricted' must be true or false")
    if isinstance(idle, bool) or not isinstance(idle, int | float) or idle <= 0:
        raise ConfigError(f"{path}: 'idle_timeout_s' must be a positive number")
    try:
        allowlist = make_allowlist(allow, resolve, unrestricted, rule_id)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return step, allowlist, float(idle)


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at path, mode 0600; OSError when path exists or is too long
    (never unlinks what is there: it may be someone else's)."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise OSError(f"socket path {path} is longer than {MAX_UNIX_PATH} bytes")
    if path.exists() or path.is_symlink():
        raise OSError(f"socket path {path} already exists")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.fspath(path))
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


class Server:
    """The accept loop: a thread per client; stops when a signal wakes the selector."""

    def __init__(self, listener: socket.socket, handler: ProxyHandler) -> None:
        self.listener = listener
        self.handler = handler
        self.threads: list[threading.Thread] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stopping = False

    def request_stop(self, _signum: int = 0, _frame: FrameType | None = None) -> None:
        self.stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self) -> None:
        self.listener.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.listener and not self.stopping:
                        self._accept()
        self.shutdown()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.threads = [t for t in self.threads if t.is_alive()]
        if len(self.threads) >= MAX_CLIENTS:  # a flood of connections must not exhaust us
            sys.stderr.write(f"agentos proxy: {MAX_CLIENTS} connections open, one refused\n")
            client.close()
            return
        client.setblocking(True)
        thread = threading.Thread(target=self.handler.serve_client, args=(client,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def shutdown(self) -> None:
        self.listener.close()
        self.handler.abort_all()
        for thread in self.threads:
            thread.join(JOIN_TIMEOUT_S)
        self._wake_r.close()
        self._wake_w.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentos_tasks.net.serve")
    parser.add_argument("--socket", required=True, type=Path, help="unix socket to listen on")
    parser.add_argument("--config", required=True, type=Path, help="JSON config (see module doc)")
    parser.add_argument("--ledger", required=True, type=Path, help="JSON lines file to append to")
    args = parser.parse_args(argv)
    try:
        step, allowlist, idle = load_config(args.config)
    except ConfigError as exc:
        print(f"agentos proxy: bad config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ledger = LedgerWriter(args.ledger, step)
    except OSError as exc:
        print(f"agentos proxy: cannot open ledger {args.ledger}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        listener = listen_unix(args.socket)
    except OSError as exc:
        print(f"agentos proxy: cannot listen on {args.socket}: {exc}; "
              "hint: the parent passes a fresh path in a private directory", file=sys.stderr)
        ledger.close()
        return EXIT_LISTEN
    server = Server(listener, ProxyHandler(allowlist, ledger, idle_timeout_s=idle))
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    try:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        server.run()
    finally:
        ledger.close()
        try:
            args.socket.unlink()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
