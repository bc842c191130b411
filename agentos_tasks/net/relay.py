"""Moving bytes for the proxy: reading a request head, connecting to a decided address,
tunnelling (CONNECT) and forwarding one plain HTTP request with its body framed exactly.

Blocking sockets, one thread per direction; each relay counts the bytes it moved for the
ledger. A relay that fails (reset, idle timeout) shuts both sockets down so the thread on
the other direction returns too.
"""

from __future__ import annotations

import re
import socket
import threading

from agentos_tasks.net.httphead import MAX_HEAD_BYTES, RequestError, RequestHead, upstream_head

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}\Z")


class Counter:
    """Bytes moved in one direction (written by one relay thread, read after join)."""

    def __init__(self) -> None:
        self.count = 0


def read_head(sock: socket.socket, pending: bytes) -> tuple[bytes | None, bytes]:
    """(one request head including its blank line, the bytes after it); (None, b"") when
    the client closed before sending anything. An unterminated head (the client closed, or
    more than MAX_HEAD_BYTES) is returned as it is: parse_head refuses it with a reason."""
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


def connect(address: str | None, port: int, idle_timeout_s: float) -> socket.socket:
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
        shutdown(source, socket.SHUT_RDWR)  # thread's recv returns too
        shutdown(target, socket.SHUT_RDWR)
    else:
        shutdown(target, socket.SHUT_WR)


def tunnel(client: socket.socket, upstream: socket.socket, pending: bytes,
            up: Counter, down: Counter) -> None:
    if pending:
        upstream.sendall(pending)
        up.count += len(pending)
    downstream = threading.Thread(target=_pump, args=(upstream, client, down), daemon=True)
    downstream.start()
    _pump(client, upstream, up)
    downstream.join()


def forward_http(
    client: socket.socket, upstream: socket.socket, head: RequestHead, pending: bytes,
    counters: tuple[Counter, Counter],
) -> tuple[bool, bytes, str]:
    """Send one request upstream, relay its response; (keep the client, unread bytes,
    what went wrong or "")."""
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
    except (OSError, RequestError) as exc:
        shutdown(upstream, socket.SHUT_RDWR)
        downstream.join()
        what = "request body refused" if isinstance(exc, RequestError) else "relay failed"
        return False, b"", f"{what}: {exc}"
    downstream.join()
    return sniff.framed and not sniff.failed and not head.wants_close, pending, ""


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
            size_text = line[:-2].split(b";", 1)[0]
            if not _CHUNK_SIZE.match(size_text):  # int(x, 16) would take 0x, +, _ too
                raise RequestError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
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


def shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass
