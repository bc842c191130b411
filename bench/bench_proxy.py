"""Added latency of the allowlist proxy per connection: connect + one small HTTP request and
response, through `python -m agentos_tasks.net.serve` (unix socket, pinned name, absolute
URI) against directly to the same loopback server. N interleaved samples of each.

Usage: python bench/bench_proxy.py [N]   (default N=200)
Prints medians and p90 in ms; no assertion on time (machines differ). Also prints the
CONNECT tunnel case (connect + CONNECT + one request inside the tunnel).
"""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def serve_http(listener: socket.socket) -> None:
    """A loopback server answering every request head with a 2-byte body, then closing."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def answer(conn: socket.socket) -> None:
    with conn:
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = conn.recv(65536)
            if not data:
                return
            raw += data
        conn.sendall(REPLY)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def direct(port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
        reply = read_all(sock)
    elapsed = (time.perf_counter() - started) * 1000
    if not reply.endswith(b"ok"):
        raise RuntimeError(f"direct request failed: {reply[:200]!r}")
    return elapsed


def proxied(socket_path: str, port: int) -> float:
    started = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(
            f"GET http://bench.test:{port}/x HTTP/1.1\r\nHost: bench.test:{port}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        reply = read_all(sock)
    elapsed = (time.perf_counter() - started) * 1000
    if not reply.endswith(b"ok"):
        raise RuntimeError(f"proxied request failed: {reply[:200]!r}")
    return elapsed


def tunnelled(socket_path: str, port: int) -> float:
    started = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(f"CONNECT bench.test:{port} HTTP/1.1\r\n\r\n".encode())
        established = b""
        while b"\r\n\r\n" not in established:
            established += sock.recv(1)
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
        reply = read_all(sock)
    elapsed = (time.perf_counter() - started) * 1000
    if not reply.endswith(b"ok"):
        raise RuntimeError(f"tunnelled request failed: {reply[:200]!r}")
    return elapsed


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return f"{name:<22} median {statistics.median(samples):7.3f} ms   p90 {p90:7.3f} ms"


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    port = listener.getsockname()[1]
    threading.Thread(target=serve_http, args=(listener,), daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "config.json")
        config.write_text(json.dumps({
            "step": "bench", "allow": [f"bench.test:{port}"],
            "resolve": {"bench.test": "127.0.0.1"}, "rule_id": "network",
        }))
        socket_path = str(Path(tmp, "proxy.sock"))
        proxy = subprocess.Popen(
            [sys.executable, "-m", "agentos_tasks.net.serve", "--socket", socket_path,
             "--config", str(config), "--ledger", str(Path(tmp, "ledger.jsonl"))],
            stdout=subprocess.PIPE,
        )
        try:
            if proxy.stdout is None or proxy.stdout.readline() != b"ready\n":
                print("the proxy did not start", file=sys.stderr)
                return 1
            for _ in range(10):  # warm up both paths
                direct(port)
                proxied(socket_path, port)
            base, through, tunnel = [], [], []
            for _ in range(n):
                base.append(direct(port))
                through.append(proxied(socket_path, port))
                tunnel.append(tunnelled(socket_path, port))
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(10)
        entries = len(Path(tmp, "ledger.jsonl").read_text().splitlines())
    print(f"N={n} interleaved, loopback server, ledger entries written: {entries}")
    print(summary("direct", base))
    print(summary("via proxy (http)", through))
    print(summary("via proxy (CONNECT)", tunnel))
    added = statistics.median(through) - statistics.median(base)
    added_tunnel = statistics.median(tunnel) - statistics.median(base)
    print(f"added per connection: http {added:.3f} ms, CONNECT {added_tunnel:.3f} ms (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
