"""The filtering forward proxy's connection handling: one thread per client connection.

Per client connection: read one request head, parse it strictly (httphead), decide it
(allowlist.decide; names are resolved here, by the proxy, only once an entry allows them),
connect to exactly the decided address, then either tunnel (CONNECT: opaque bytes both
ways, so a CONNECT inside the tunnel reaches only the decided upstream) or forward one
plain HTTP request over a fresh upstream connection that carries only it
(`Connection: close` upstream). A further request on the same client connection is
parsed and decided again from scratch and gets its own upstream connection, so a host
switch on a kept-alive connection can never reach the first upstream. Every request gets
one ledger entry: denials at once, allowed ones when their upstream connection ends.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

from agentos_tasks.net.allowlist import RULE_ADDRESS, RULE_SYNTAX, NetDecision, decide
from agentos_tasks.net.httphead import RequestError, parse_head
from agentos_tasks.net.relay import Counter, connect, forward_http, read_head, shutdown, tunnel

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agentos_tasks.net.allowlist import Allowlist
    from agentos_tasks.net.ledger import LedgerWriter

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the host's resolver gives for host (TCP), in its order, deduplicated;
    [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


class ProxyHandler:
    """Serves client connections for one allowlist and one ledger (shared by threads)."""

    def __init__(
        self,
        allowlist: Allowlist,
        ledger: LedgerWriter,
        resolve: Callable[[str, int], Sequence[str]] = system_resolve,
        idle_timeout_s: float = 900.0,
    ) -> None:
        self.allowlist = allowlist
        self.ledger = ledger
        self.resolve = resolve
        self.idle_timeout_s = idle_timeout_s
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._live.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._live.discard(sock)
        sock.close()

    def abort_all(self) -> None:
        """Shut every live socket down so the relays end and write their ledger entries."""
        with self._lock:
            live = list(self._live)
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve_client(self, client: socket.socket) -> None:
        """Handle one accepted client connection to its end; never raises."""
        self.track(client)
        client.settimeout(self.idle_timeout_s)
        try:
            pending = b""
            while True:
                head_raw, pending = read_head(client, pending)
                if head_raw is None:
                    return
                keep_open, pending = self._serve_request(client, head_raw, pending)
                if not keep_open:
                    return
        except OSError:
            return
        finally:
            self.untrack(client)

    # -- one request -----------------------------------------------------------------

    def _serve_request(
        self, client: socket.socket, head_raw: bytes, pending: bytes
    ) -> tuple[bool, bytes]:
        """Decide and serve one request; (keep the client connection, unread bytes)."""
        started = time.monotonic()
        kind = "connect" if head_raw.startswith(b"CONNECT ") else "http"
        try:
            head = parse_head(head_raw)
        except RequestError as exc:
            decision = NetDecision(False, RULE_SYNTAX, str(exc), None)
            self.ledger.write(kind, exc.host, exc.port, decision)
            _send_quietly(client, _refusal(403, "Forbidden", decision))
            return False, b""
        decision = self.decide(head.host, head.port)
        if not decision.allowed:
            self.ledger.write(kind, head.host, head.port, decision)
            _send_quietly(client, _refusal(403, "Forbidden", decision))
            return False, b""
        try:
            upstream = connect(decision.address, head.port, self.idle_timeout_s)
        except OSError as exc:
            failed = NetDecision(
                True, decision.rule, f"{decision.reason}; upstream unreachable: {exc}",
                decision.address,
            )
            self.ledger.write(kind, head.host, head.port, failed,
                              duration_ms=_ms_since(started))
            _send_quietly(client, _refusal(502, "Bad Gateway", failed))
            return False, b""
        self.track(upstream)
        up, down = Counter(), Counter()
        keep_open, problem = False, ""
        try:
            if head.is_connect:
                client.sendall(ESTABLISHED)
                tunnel(client, upstream, pending, up, down)
                pending = b""
            else:
                keep_open, pending, problem = forward_http(
                    client, upstream, head, pending, (up, down)
                )
        finally:
            self.untrack(upstream)
            if problem:
                decision = NetDecision(True, decision.rule, f"{decision.reason}; {problem}",
                                       decision.address)
            self.ledger.write(kind, head.host, head.port, decision, up.count, down.count,
                              _ms_since(started))
        return keep_open, pending

    def decide(self, host: str, port: int) -> NetDecision:
        """The allowlist's decision, resolving the name only once an entry allows it (a
        refused name is never looked up: no DNS queries as a side channel)."""
        decision = decide(self.allowlist, host, port, ())
        if decision.allowed or decision.rule != RULE_ADDRESS or decision.address is not None:
            return decision
        return decide(self.allowlist, host, port, self.resolve(host, port))


def _refusal(code: int, phrase: str, decision: NetDecision) -> bytes:
    body = _printable(f"agentos proxy: {decision.rule}: {decision.reason}") + "\n"
    return (
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode("ascii")


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:2000]


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send a final response and half-close, so the client reads it before the close."""
    try:
        sock.sendall(data)
    except OSError:
        pass
    shutdown(sock, socket.SHUT_WR)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0

