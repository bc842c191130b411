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
from agentos_tasks.net.httphead import (
    MAX_HEAD_BYTES,
    RequestError,
    RequestHead,
    authority,
    parse_head,
    upstream_head,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agentos_tasks.net.allowlist import Allowlist
    from agentos_tasks.net.ledger import LedgerWriter

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
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


class Counter:
    """Bytes moved in one direction (written by one relay thread, read after join)."""

    def __init__(self) -> None:
        self.count = 0


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
                head_raw, pending = _read_head(client, pending)
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
            upstream = _connect(decision.address, head.port, self.idle_timeout_s)
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
        try:
            if head.is_connect:
                client.sendall(ESTABLISHED)
                _tunnel(client, upstream, pending, up, down)
                keep_open, pending = False, b""
            else:
                keep_open, pending = _forward_http(client, upstream, head, pending, (up, down))
        finally:
            self.untrack(upstream)
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


# -- relaying ----------------------------------------------------------------------------


def _read_head(sock: socket.socket, pending: bytes) -> tuple[bytes | None, bytes]:
    """(one request head including its blank line, the bytes after it); (None, b"") when
    the client closed before sending anything. RequestError-shaped oversize heads are
    returned as they are so parse_head refuses them with a reason."""
    buffer = pending
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            return buffer[:MAX_HEAD_BYTES], b""
        data = sock.recv(CHUNK)
        if not data:
            return (buffer, b"") if buffer else (None, b"")
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    return buffer[:end], buffer[end:]


def _connect(address: str | None, port: int, idle_timeout_s: float) -> socket.socket:
    """A TCP connection to exactly this address (numeric: no resolution happens here)."""
    if address is None:  # decide() gives every allowed decision an address
        raise OSError("allowed decision without an address (a bug in the allowlist)")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    sock.settimeout(idle_timeout_s)
    return sock


def _pump(source: socket.socket, target: socket.socket, counter: Counter) -> None:
    """Copy until EOF or error, then half-close the target; counts bytes as it goes."""
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            target.sendall(data)
            counter.count += len(data)
    except OSError:  # reset or idle timeout: end both directions, so the other relay
        _shutdown(source, socket.SHUT_RDWR)  # thread's recv returns too
        _shutdown(target, socket.SHUT_RDWR)
    else:
        _shutdown(target, socket.SHUT_WR)


def _tunnel(client: socket.socket, upstream: socket.socket, pending: bytes,
            up: Counter, down: Counter) -> None:
    if pending:
        upstream.sendall(pending)
        up.count += len(pending)
    downstream = threading.Thread(target=_pump, args=(upstream, client, down), daemon=True)
    downstream.start()
    _pump(client, upstream, up)
    downstream.join()


def _forward_http(
    client: socket.socket, upstream: socket.socket, head: RequestHead, pending: bytes,
    counters: tuple[Counter, Counter],
) -> tuple[bool, bytes]:
    """Send one request upstream, relay its response; (keep the client, unread bytes)."""
    up, down = counters
    sniff = _ResponseSniffer()
    downstream = threading.Thread(
        target=_relay_response, args=(upstream, client, down, sniff), daemon=True
    )
    downstream.start()
    try:
        first = upstream_head(head)
        upstream.sendall(first)
        up.count += len(first)
        pending = _relay_body(client, upstream, head, pending, up)
    except (OSError, RequestError):
        _shutdown(upstream, socket.SHUT_RDWR)
        downstream.join()
        return False, b""
    downstream.join()
    return sniff.framed and not sniff.failed and not head.wants_close, pending


def _relay_body(client: socket.socket, upstream: socket.socket, head: RequestHead,
                pending: bytes, up: Counter) -> bytes:
    """Forward exactly the request's body (Content-Length or chunked); the rest stays."""
    reader = _Reader(client, pending)
    if head.body == "length":
        remaining = head.content_length
        while remaining:
            data = reader.take(min(remaining, CHUNK))
            upstream.sendall(data)
            up.count += len(data)
            remaining -= len(data)
    elif head.body == "chunked":
        while True:
            line = reader.line()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise RequestError(f"bad chunk size {size_text[:20]!r}") from None
            chunk = line + (reader.take_exact(size + 2) if size else b"")
            if size == 0:
                while True:  # trailers up to the blank line
                    trailer = reader.line()
                    chunk += trailer
                    if trailer == b"\r\n":
                        break
            upstream.sendall(chunk)
            up.count += len(chunk)
            if size == 0:
                break
    return reader.rest()


class _Reader:
    """Buffered reads from the client for body framing."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self.buffer = pending

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        if not data:
            raise RequestError("client closed the connection inside a request body")
        self.buffer += data

    def take(self, most: int) -> bytes:
        if not self.buffer:
            self._fill()
        data, self.buffer = self.buffer[:most], self.buffer[most:]
        return data

    def take_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > 4096:
                raise RequestError("chunk header line too long")
            self._fill()
        end = self.buffer.index(b"\r\n") + 2
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def rest(self) -> bytes:
        return self.buffer


class _ResponseSniffer:
    """Reads the upstream's final response head as it passes, to learn whether the
    response delimits itself (Content-Length / chunked) so the client connection may stay
    open for another request, or ends at EOF (then the client must see EOF too)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.done = False
        self.framed = False
        self.failed = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        while not self.done and b"\r\n\r\n" in self.buffer:
            end = self.buffer.index(b"\r\n\r\n") + 4
            head, self.buffer = self.buffer[:end], self.buffer[end:]
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ")
            if len(status) > 1 and status[1].startswith("1") and status[1] != "101":
                continue  # interim response (100 Continue): the final head follows
            names = {
                line.partition(":")[0].strip().lower(): line.partition(":")[2].strip().lower()
                for line in lines[1:]
            }
            self.framed = "content-length" in names or names.get(
                "transfer-encoding", ""
            ).endswith("chunked")
            self.done = True
        if len(self.buffer) > MAX_HEAD_BYTES:
            self.done = True


def _relay_response(upstream: socket.socket, client: socket.socket, down: Counter,
                    sniff: _ResponseSniffer) -> None:
    try:
        while True:
            data = upstream.recv(CHUNK)
            if not data:
                break
            sniff.feed(data)
            client.sendall(data)
            down.count += len(data)
    except OSError:
        sniff.failed = True
    if not sniff.done:
        sniff.failed = True


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
    _shutdown(sock, socket.SHUT_WR)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


__all__ = ["ProxyHandler", "authority", "system_resolve"]
