"""The sandbox's side of the network: 127.0.0.1:PORT inside -> the proxy's unix socket.

Run inside the sandbox as `python -I -S bridge.py PORT SOCKET -- argv...` (proc.py gives
it to bwrap as data; stdlib only, no site, no package imports). The sandbox has its own
network namespace with nothing but loopback, so this listener is the only way out, and it
leads only to the allowlist proxy outside (agentos_tasks.net.serve), which decides every
connection and writes the ledger.

It binds the listener first, then forks and execs argv (looked up on PATH like execvp),
so the port is ready before the program starts; each accepted connection is copied both
ways to a new connection to SOCKET (one thread per direction, a half-close passed on as
shutdown(SHUT_WR)). When the program ends the listener ends with it and the bridge exits
with the program's status (128+N when a signal N killed it, as a shell reports it).
SIGTERM, SIGINT and SIGHUP are passed on to the program.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

_CHUNK = 1 << 16
_BACKLOG = 128
USAGE = "usage: bridge.py PORT SOCKET -- PROGRAM [ARGS...]\n"


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy source -> target until EOF, then half-close target (the peer sees EOF)."""
    try:
        while True:
            data = source.recv(_CHUNK)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _relay(client: socket.socket, socket_path: str) -> None:
    """One connection: both directions to a fresh connection to the proxy's socket."""
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(socket_path)
    except OSError as exc:
        sys.stderr.write(f"agentos bridge: cannot reach the network proxy at {socket_path}: "
                         f"{exc}\n")
        upstream.close()
        client.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    upstream.close()
    client.close()


def _serve(listener: socket.socket, socket_path: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # the listener was closed: the program ended
            return
        threading.Thread(target=_relay, args=(client, socket_path), daemon=True).start()


def _start(argv: list[str]) -> int:
    """Fork and exec the program (before any thread exists); its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - the step's argv, no shell
        except BaseException as exc:  # the child must never return into the bridge
            os.write(2, f"agentos bridge: cannot start {argv[0]}: {exc}\n".encode())
        os._exit(127)
    return pid


def _forward(child: int) -> None:
    def handler(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except OSError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--" or not args[0].isdigit():
        sys.stderr.write(USAGE)
        return 2
    port, socket_path, argv = int(args[0]), args[1], args[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(_BACKLOG)
    except OSError as exc:
        sys.stderr.write(f"agentos bridge: cannot listen on 127.0.0.1:{port}: {exc}\n")
        return 125
    child = _start(argv)
    _forward(child)
    threading.Thread(target=_serve, args=(listener, socket_path), daemon=True).start()
    while True:
        try:
            pid, status = os.waitpid(child, 0)
        except InterruptedError:
            continue
        if pid == child:
            break
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()
    return _exit_code(status)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # relay threads may sit in recv(): do not wait for them
