"""The allowlist proxy end to end: `python -m agentos_tasks.net.serve` on a unix socket in
tmp_path, loopback upstreams (an HTTP server, an echo server, an "evil" server that must
never see a connection), raw sockets speaking HTTP to the proxy. Every case checks the
ledger entry it produced (decision and rule). One proxy process serves the module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentos_tasks.net.allowlist import make_allowlist
from agentos_tasks.net.ledger import read_ledger, redecide

RULE = "tools[0].network"
TIMEOUT = 5.0


class Upstream:
    """A loopback TCP server; `mode` "http" answers one request per connection (the proxy
    sends Connection: close), "echo" echoes, "evil" only records that it was reached."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []  # bytes received, per connection
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def connections(self) -> int:
        with self.lock:
            return len(self.received)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.received.append(b"")
                index = len(self.received) - 1
            threading.Thread(target=self._handle, args=(conn, index), daemon=True).start()

    def _record(self, index: int, data: bytes) -> None:
        with self.lock:
            self.received[index] += data

    def _handle(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(TIMEOUT)
        with conn:
            if self.mode == "echo":
                while data := conn.recv(65536):
                    self._record(index, data)
                    conn.sendall(data)
                return
            if self.mode == "evil":
                while data := conn.recv(65536):
                    self._record(index, data)
                return
            raw = b""
            while b"\r\n\r\n" not in raw:
                data = conn.recv(65536)
                if not data:
                    return
                raw += data
            head, _, body = raw.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += conn.recv(65536)
            if b"transfer-encoding: chunked" in head.lower():
                while not (body.startswith(b"0\r\n") or b"\r\n0\r\n" in body) or not body.endswith(b"\r\n\r\n"):
                    data = conn.recv(65536)
                    if not data:
                        self._record(index, raw if not body else head + b"\r\n\r\n" + body)
                        return
                    body += data
            self._record(index, raw if not body else head + b"\r\n\r\n" + body)
            path = head.split(b" ")[1]
            reply = b"upstream saw " + path + b" body=" + body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(reply) + reply)


class Proxy:
    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.socket_path = tmp / "proxy.sock"
        self.ledger_path = tmp / "ledger.jsonl"
        self.config_path = tmp / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentos_tasks.net.serve", "--socket", str(self.socket_path),
             "--config", str(self.config_path), "--ledger", str(self.ledger_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line == b"ready\n", (line, self.process.stderr.read() if self.process.stderr else b"")

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT)
        client.connect(str(self.socket_path))
        return client

    def entries(self) -> list[dict[str, Any]]:
        if not self.ledger_path.exists():
            return []
        return read_ledger(self.ledger_path)

    def wait_entries(self, before: int, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            entries = self.entries()
            if len(entries) >= before + count:
                return entries[before:]
            time.sleep(0.01)
        raise AssertionError(f"no ledger entry after {TIMEOUT}s: {self.entries()[before:]}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(TIMEOUT)
        return code


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    http, echo, evil = Upstream("http"), Upstream("echo"), Upstream("evil")
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    tmp = tmp_path_factory.mktemp("net")
    config = {
        "step": "edit",
        "allow": [
            f"allowed.test:{http.port}",  # 0
            f"echo.test:{echo.port}",  # 1
            f"localhost:{http.port}",  # 2: allowed by name, but it resolves to loopback
            f"bücher.test:{http.port}",  # 3
            f"other.test:{http.port}",  # 4
            f"closed.test:{closed_port}",  # 5
        ],
        "resolve": {
            "allowed.test": "127.0.0.1",
            "echo.test": "127.0.0.1",
            "evil.test": "127.0.0.1",  # pinned, never allowed
            "bücher.test": "127.0.0.1",
            "other.test": "127.0.0.1",
            "closed.test": "127.0.0.1",
        },
        "unrestricted": False,
        "rule_id": RULE,
    }
    proxy = Proxy(tmp, config)
    ns = type("Net", (), {})()
    ns.proxy, ns.http, ns.echo, ns.evil, ns.config = proxy, http, echo, evil, config
    ns.closed_port = closed_port
    yield ns
    if proxy.process.poll() is None:
        proxy.stop()


def read_response(sock: socket.socket) -> bytes:
    """Exactly one response with a Content-Length (the proxy's own and the test
    upstream's); never reads past it, so pipelined responses stay apart."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            return head
        head += byte
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = b""
    while len(body) < length:
        data = sock.recv(length - len(body))
        if not data:
            break
        body += data
    return head + body


def refused(net: Any, request: bytes, rule: str) -> dict[str, Any]:
    """Send request, expect a 403 naming rule and one deny entry with that rule; the evil
    upstream is never reached."""
    before, evil_before = len(net.proxy.entries()), net.evil.connections
    with net.proxy.connect() as client:
        client.sendall(request)
        response = read_response(client)
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n"), response
    assert rule.encode() in response.split(b"\r\n\r\n", 1)[1]
    [entry] = net.proxy.wait_entries(before)
    assert (entry["decision"], entry["rule"]) == ("deny", rule), entry
    assert (entry["bytes_up"], entry["bytes_down"]) == (0, 0)
    assert net.evil.connections == evil_before
    return entry


def tunnel(net: Any, target: str, payload: bytes) -> tuple[bytes, dict[str, Any]]:
    """CONNECT target, send payload, read the echo, close; (echoed bytes, ledger entry)."""
    before = len(net.proxy.entries())
    with net.proxy.connect() as client:
        client.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        established = b""
        while b"\r\n\r\n" not in established:
            established += client.recv(1)
        assert established == b"HTTP/1.1 200 Connection established\r\n\r\n"
        client.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            data = client.recv(65536)
            if not data:
                break
            echoed += data
    [entry] = net.proxy.wait_entries(before)
    return echoed, entry


# -- allowed traffic -------------------------------------------------------------------


def test_plain_http_is_forwarded_with_exact_byte_counts(net: Any) -> None:
    before, seen = len(net.proxy.entries()), net.http.connections
    body = b"x" * 1000
    request = (
        f"POST http://allowed.test:{net.http.port}/upload?q=1 HTTP/1.1\r\n"
        f"Host: allowed.test:{net.http.port}\r\nProxy-Authorization: Basic c2VjcmV0\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with net.proxy.connect() as client:
        client.sendall(request)
        response = read_response(client)
        assert client.recv(1) == b""  # the client asked for close
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(b"upstream saw /upload?q=1 body=" + body)
    [entry] = net.proxy.wait_entries(before)
    received = net.http.received[seen]
    assert received.startswith(b"POST /upload?q=1 HTTP/1.1\r\nHost: allowed.test:%d\r\n" % net.http.port)
    assert b"Proxy-Authorization" not in received and b"Connection: close\r\n" in received
    assert entry["decision"] == "allow" and entry["rule"] == f"{RULE}.allow[0]"
    assert (entry["kind"], entry["host"], entry["port"], entry["address"]) == ("http", "allowed.test", net.http.port, "127.0.0.1")
    assert entry["bytes_up"] == len(received)
    assert entry["bytes_down"] == len(response)
    assert entry["duration_ms"] > 0 and entry["step"] == "edit"


def test_connect_tunnels_opaque_bytes_with_exact_byte_counts(net: Any) -> None:
    payload = bytes(range(256)) * 40
    echoed, entry = tunnel(net, f"echo.test:{net.echo.port}", payload)
    assert echoed == payload
    assert (entry["kind"], entry["decision"], entry["rule"]) == ("connect", "allow", f"{RULE}.allow[1]")
    assert (entry["bytes_up"], entry["bytes_down"]) == (len(payload), len(payload))


def test_case_and_one_trailing_dot_name_the_same_host(net: Any) -> None:
    target = f"ECHO.Test.:{net.echo.port}"
    echoed, entry = tunnel(net, target, b"ping")
    assert echoed == b"ping"
    assert (entry["host"], entry["decision"], entry["rule"]) == ("echo.test", "allow", f"{RULE}.allow[1]")


def test_an_idn_is_matched_by_its_punycode(net: Any) -> None:
    before = len(net.proxy.entries())
    host = f"xn--bcher-kva.test:{net.http.port}"
    with net.proxy.connect() as client:
        client.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert read_response(client).startswith(b"HTTP/1.1 200 OK")
    [entry] = net.proxy.wait_entries(before)
    assert (entry["host"], entry["rule"]) == ("xn--bcher-kva.test", f"{RULE}.allow[3]")
    # raw UTF-8 in a request head is refused: clients send the A-label
    refused(net, f"CONNECT bücher.test:{net.http.port} HTTP/1.1\r\n\r\n".encode(), "net.syntax")


def test_each_request_on_a_kept_alive_connection_is_decided_again(net: Any) -> None:
    """Pipelined: an allowed request, another allowed host, then a refused one. Each
    allowed request gets its own upstream connection; the refused one reaches nothing."""
    before, seen = len(net.proxy.entries()), net.http.connections
    port = net.http.port
    requests = (
        f"GET http://allowed.test:{port}/one HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
        f"GET http://other.test:{port}/two HTTP/1.1\r\nHost: other.test:{port}\r\n\r\n"
        f"GET http://evil.test:{net.evil.port}/three HTTP/1.1\r\nHost: evil.test:{net.evil.port}\r\n\r\n"
    ).encode()
    with net.proxy.connect() as client:
        client.sendall(requests)
        first, second, third = read_response(client), read_response(client), read_response(client)
    assert first.endswith(b"upstream saw /one body=") and second.endswith(b"upstream saw /two body=")
    assert third.startswith(b"HTTP/1.1 403") and b"net.host" in third
    entries = net.proxy.wait_entries(before, 3)
    assert [(e["host"], e["decision"], e["rule"]) for e in entries] == [
        ("allowed.test", "allow", f"{RULE}.allow[0]"),
        ("other.test", "allow", f"{RULE}.allow[4]"),
        ("evil.test", "deny", "net.host"),
    ]
    assert net.http.connections == seen + 2
    assert net.evil.connections == 0


# -- bypass attempts -------------------------------------------------------------------


def test_nul_and_percent_encoding_in_a_host_are_refused(net: Any) -> None:
    port = net.echo.port
    entry = refused(net, f"CONNECT echo.test\x00.evil.test:{port} HTTP/1.1\r\n\r\n".encode(), "net.syntax")
    assert "NUL" in entry["reason"]
    entry = refused(net, f"CONNECT echo.test%00.evil.test:{port} HTTP/1.1\r\n\r\n".encode(), "net.syntax")
    assert "'%'" in entry["reason"] and entry["host"] == f"echo.test%00.evil.test:{port}"
    refused(net, f"GET http://allowed%2etest:{net.http.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(), "net.syntax")


def test_userinfo_in_the_target_is_refused(net: Any) -> None:
    port, evil = net.http.port, net.evil.port
    entry = refused(net, f"GET http://allowed.test:{port}@evil.test:{evil}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n".encode(), "net.syntax")
    assert "userinfo" in entry["reason"]
    refused(net, f"CONNECT allowed.test@evil.test:{evil} HTTP/1.1\r\n\r\n".encode(), "net.syntax")


def test_the_host_header_must_name_the_target(net: Any) -> None:
    port, evil = net.echo.port, net.evil.port
    entry = refused(net, f"CONNECT evil.test:{evil} HTTP/1.1\r\nHost: echo.test:{port}\r\n\r\n".encode(), "net.syntax")
    assert "differs" in entry["reason"] and entry["host"] == "evil.test"
    refused(net, f"CONNECT echo.test:{port} HTTP/1.1\r\nHost: evil.test:{evil}\r\n\r\n".encode(), "net.syntax")
    refused(net, f"GET http://allowed.test:{net.http.port}/ HTTP/1.1\r\nHost: evil.test:{evil}\r\n\r\n".encode(), "net.syntax")
    refused(net, f"GET http://allowed.test:{net.http.port}/ HTTP/1.1\r\n\r\n".encode(), "net.syntax")
    two = f"Host: allowed.test:{net.http.port}\r\n"
    refused(net, f"GET http://allowed.test:{net.http.port}/ HTTP/1.1\r\n{two}{two}\r\n".encode(), "net.syntax")


def test_origin_form_and_other_schemes_are_refused(net: Any) -> None:
    entry = refused(net, f"GET / HTTP/1.1\r\nHost: allowed.test:{net.http.port}\r\n\r\n".encode(), "net.syntax")
    assert "origin-form" in entry["reason"]
    refused(net, f"GET ftp://allowed.test:{net.http.port}/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n".encode(), "net.syntax")


def test_an_ip_literal_of_an_allowed_name_is_refused(net: Any) -> None:
    entry = refused(net, f"CONNECT 127.0.0.1:{net.echo.port} HTTP/1.1\r\n\r\n".encode(), "net.host")
    assert entry["host"] == "127.0.0.1"
    refused(net, f"CONNECT 2130706433:{net.echo.port} HTTP/1.1\r\n\r\n".encode(), "net.syntax")
    refused(net, f"CONNECT 127.1:{net.echo.port} HTTP/1.1\r\n\r\n".encode(), "net.syntax")


def test_an_unlisted_port_of_an_allowed_name_is_refused(net: Any) -> None:
    entry = refused(net, f"CONNECT echo.test:{net.evil.port} HTTP/1.1\r\n\r\n".encode(), "net.port")
    assert str(net.echo.port) in entry["reason"]
    refused(net, b"CONNECT echo.test:99999 HTTP/1.1\r\n\r\n", "net.syntax")


@pytest.mark.parametrize(("literal", "canonical"), [("[::1]", "::1"), ("[::ffff:127.0.0.1]", "::ffff:7f00:1"), ("[0:0:0:0:0:0:0:1]", "::1")])
def test_ipv6_literals_are_refused(net: Any, literal: str, canonical: str) -> None:
    entry = refused(net, f"CONNECT {literal}:{net.echo.port} HTTP/1.1\r\n\r\n".encode(), "net.host")
    assert entry["host"] == canonical


def test_a_name_resolving_to_loopback_without_a_pin_is_refused(net: Any) -> None:
    """DNS rebinding: the proxy resolves allowed names itself and refuses local addresses
    the policy did not name."""
    port = net.http.port
    before = len(net.http.received)
    entry = refused(net, f"GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode(), "net.address")
    assert "loopback" in entry["reason"] and entry["address"] in ("127.0.0.1", "::1")
    assert len(net.http.received) == before


def test_a_connect_inside_an_allowed_tunnel_reaches_only_that_upstream(net: Any) -> None:
    inner = f"CONNECT evil.test:{net.evil.port} HTTP/1.1\r\nHost: evil.test:{net.evil.port}\r\n\r\n".encode()
    echoed, entry = tunnel(net, f"echo.test:{net.echo.port}", inner)
    assert echoed == inner  # the echo server got it as opaque bytes
    assert (entry["decision"], entry["rule"], entry["bytes_up"]) == ("allow", f"{RULE}.allow[1]", len(inner))
    assert net.evil.connections == 0


def test_smuggling_shapes_are_refused(net: Any) -> None:
    port = net.http.port
    start = f"POST http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\n"
    refused(net, (start + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").encode(), "net.syntax")
    refused(net, (start + "Transfer-Encoding: gzip\r\n\r\n").encode(), "net.syntax")
    refused(net, (start + "Content-Length: 3\r\nContent-Length: 4\r\n\r\n").encode(), "net.syntax")
    refused(net, (start + "X-A: 1\r\n folded\r\n\r\n").encode(), "net.syntax")


def test_a_bare_lf_or_whitespace_in_the_target_cannot_inject_headers(net: Any) -> None:
    """Review finding: `GET http://allowed/x<LF>Host:<TAB>internal HTTP/1.1` used to reach
    the upstream with a header of the client's choosing; the target is one token."""
    port = net.http.port
    tail = f"HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: close\r\n\r\n"
    for target in (f"http://allowed.test:{port}/x\nHost:\tinternal.corp",
                   f"http://allowed.test:{port}/x\rX-Injected:\tyes",
                   f"http://allowed.test:{port}/a\x00b", f"http://allowed.test:{port}/a\x7fb"):
        before = len(net.http.received)
        refused(net, f"GET {target} {tail}".encode(), "net.syntax")
        assert len(net.http.received) == before
    refused(net, f"CONNECT allowed.test:{port}\nX: y HTTP/1.1\r\n\r\n".encode(), "net.syntax")


def test_an_unreachable_upstream_is_a_502_and_recorded(net: Any) -> None:
    before = len(net.proxy.entries())
    with net.proxy.connect() as client:
        client.sendall(f"CONNECT closed.test:{net.closed_port} HTTP/1.1\r\n\r\n".encode())
        response = read_response(client)
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway") and b"unreachable" in response
    [entry] = net.proxy.wait_entries(before)
    assert (entry["decision"], entry["rule"]) == ("allow", f"{RULE}.allow[5]")
    assert "unreachable" in entry["reason"]


def test_the_ledger_is_strict_and_every_allowed_entry_redecides_the_same(net: Any) -> None:
    entries = net.proxy.entries()
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    allowlist = make_allowlist(net.config["allow"], net.config["resolve"], False, RULE)
    allowed = [e for e in entries if e["decision"] == "allow"]
    assert len(allowed) >= 8
    for entry in allowed:
        again = redecide(entry, allowlist)
        assert (again.allowed, again.rule, again.address) == (True, entry["rule"], entry["address"])
    for entry in entries:
        if entry["decision"] == "deny":
            assert not redecide(entry, allowlist).allowed, entry
    # a tampered address no longer redecides to allow
    forged = dict(allowed[0], host="localhost", port=net.http.port, address="127.0.0.1")
    assert redecide(forged, allowlist).rule == "net.address"


def test_read_ledger_names_the_bad_line(tmp_path: Path, net: Any) -> None:
    good = net.proxy.ledger_path.read_text().splitlines()[0]
    bad = tmp_path / "ledger.jsonl"
    second = dict(json.loads(good), seq=2, bytes_up=-1)
    bad.write_text(good + "\n" + json.dumps(second) + "\n")
    with pytest.raises(ValueError, match=r"ledger.jsonl:2: negative"):
        read_ledger(bad)
    bad.write_text(good + "\n{\"v\": 1}\n")
    with pytest.raises(ValueError, match=r"ledger.jsonl:2: fields differ"):
        read_ledger(bad)
    bad.write_text(good + "\n" + json.dumps(dict(json.loads(good), seq=3)) + "\n")
    with pytest.raises(ValueError, match=r"ledger.jsonl:2: seq 3 where 2"):
        read_ledger(bad)
    bad.write_text(good)
    with pytest.raises(ValueError, match="partial last line"):
        read_ledger(bad)
    bad.write_text(good + "\n")
    assert read_ledger(bad) == [json.loads(good)]


# -- process contract ------------------------------------------------------------------


def test_sigterm_ends_live_tunnels_records_them_and_exits_0(tmp_path: Path) -> None:
    echo = Upstream("echo")
    proxy = Proxy(tmp_path, {"step": "s", "allow": [f"e.test:{echo.port}"], "resolve": {"e.test": "127.0.0.1"}, "rule_id": "network"})
    client = proxy.connect()
    client.sendall(f"CONNECT e.test:{echo.port} HTTP/1.1\r\n\r\nhello".encode())
    received = b""
    while not received.endswith(b"hello"):
        received += client.recv(65536)
    # while serving: threads of its own, no child process
    tasks = os.listdir(f"/proc/{proxy.process.pid}/task")
    children = [Path(f"/proc/{proxy.process.pid}/task/{t}/children").read_text().split() for t in tasks]
    assert len(tasks) >= 3 and all(c == [] for c in children)
    assert proxy.stop() == 0
    [entry] = read_ledger(proxy.ledger_path)
    assert (entry["decision"], entry["rule"], entry["bytes_up"], entry["bytes_down"]) == ("allow", "network.allow[0]", 5, 5)
    assert not proxy.socket_path.exists()
    client.close()


def test_a_bad_config_exits_2_naming_the_entry(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"step": "s", "allow": ["ok.test", "bad host"], "rule_id": "tools[2].network"}))
    done = subprocess.run(
        [sys.executable, "-m", "agentos_tasks.net.serve", "--socket", str(tmp_path / "s"), "--config", str(config), "--ledger", str(tmp_path / "l")],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "tools[2].network.allow[1]" in done.stderr and "bad host" in done.stderr


def test_an_existing_socket_path_is_never_replaced(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"step": "s", "allow": [], "rule_id": "network"}))
    taken = tmp_path / "s"
    taken.write_text("someone else's")
    done = subprocess.run(
        [sys.executable, "-m", "agentos_tasks.net.serve", "--socket", str(taken), "--config", str(config), "--ledger", str(tmp_path / "l")],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 3 and "already exists" in done.stderr
    assert taken.read_text() == "someone else's"
    assert os.path.exists(taken)


# -- a real client through a loopback TCP bridge (what the sandbox's bridge does) --------


@pytest.fixture(scope="module")
def tcp_bridge(net: Any) -> Any:
    """127.0.0.1:PORT -> the proxy's unix socket, one thread per direction."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = net.proxy.connect()
            upstream.settimeout(None)
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is needed for the real-client proxy tests (CI=true: no skipping)")
        pytest.skip("curl not installed")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["curl", "-sS", "--max-time", "5", *args], capture_output=True, text=True, env=env, timeout=10)


def test_curl_through_the_proxy_plain_and_tunnelled(net: Any, tcp_bridge: str) -> None:
    before = len(net.proxy.entries())
    url = f"http://allowed.test:{net.http.port}/via-curl"
    plain = curl("-x", tcp_bridge, url)
    assert plain.returncode == 0 and plain.stdout == "upstream saw /via-curl body=", plain.stderr
    tunnelled = curl("-p", "-x", tcp_bridge, url)  # CONNECT, then HTTP inside the tunnel
    assert tunnelled.returncode == 0 and tunnelled.stdout == "upstream saw /via-curl body=", tunnelled.stderr
    denied = curl("-x", tcp_bridge, f"http://evil.test:{net.evil.port}/")
    assert denied.returncode == 0 and denied.stdout.startswith("agentos proxy: net.host: evil.test")
    denied_tunnel = curl("-p", "-x", tcp_bridge, f"http://localhost:{net.http.port}/")
    assert denied_tunnel.returncode != 0 and "403" in denied_tunnel.stderr
    entries = net.proxy.wait_entries(before, 4)
    assert [(e["kind"], e["decision"], e["rule"]) for e in entries] == [
        ("http", "allow", f"{RULE}.allow[0]"),
        ("connect", "allow", f"{RULE}.allow[0]"),
        ("http", "deny", "net.host"),
        ("connect", "deny", "net.address"),
    ]
    assert net.evil.connections == 0


def test_a_chunked_body_is_relayed_exactly_and_bad_chunk_sizes_refused(net: Any) -> None:
    before, seen = len(net.proxy.entries()), net.http.connections
    port = net.http.port
    head = f"POST http://allowed.test:{port}/c HTTP/1.1\r\nHost: allowed.test:{port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    body = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
    with net.proxy.connect() as client:
        client.sendall(head.encode() + body)
        assert read_response(client).endswith(b"upstream saw /c body=" + body)
    [entry] = net.proxy.wait_entries(before)
    assert net.http.received[seen].endswith(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
    assert entry["bytes_up"] == len(net.http.received[seen])
    for size in (b"0x5", b"+5", b"5_0", b" 5"):
        before = len(net.proxy.entries())
        with net.proxy.connect() as client:
            client.sendall(head.encode() + size + b"\r\nhello\r\n0\r\n\r\n")
            assert read_response(client) == b""  # the upstream never got a whole request
        [entry] = net.proxy.wait_entries(before)
        assert entry["decision"] == "allow"  # the head was allowed; its body was not
        assert "request body refused: bad chunk size" in entry["reason"]
        assert entry["bytes_up"] < len(head) + 20


def test_an_oversized_or_unterminated_head_is_refused(net: Any) -> None:
    port = net.http.port
    big = f"GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nX-Pad: {'a' * 70000}\r\n\r\n"
    entry = refused(net, big.encode(), "net.syntax")
    assert "longer than" in entry["reason"]
    before = len(net.proxy.entries())
    with net.proxy.connect() as client:
        client.sendall(f"CONNECT echo.test:{net.echo.port} HTTP/1.1\r\n".encode())
        client.shutdown(socket.SHUT_WR)
        assert read_response(client).startswith(b"HTTP/1.1 403")
    [entry] = net.proxy.wait_entries(before)
    assert (entry["kind"], entry["rule"]) == ("connect", "net.syntax") and "incomplete" in entry["reason"]


def test_concurrent_connections_each_get_one_whole_ledger_line(net: Any) -> None:
    before = len(net.proxy.entries())
    results: list[bytes] = []

    def one(index: int) -> None:
        payload = b"%03d" % index * 100
        echoed = b""
        with net.proxy.connect() as client:
            client.sendall(f"CONNECT echo.test:{net.echo.port} HTTP/1.1\r\n\r\n".encode() + payload)
            while len(echoed) < len(b"HTTP/1.1 200 Connection established\r\n\r\n") + len(payload):
                data = client.recv(65536)
                if not data:
                    break
                echoed += data
        results.append(echoed.split(b"\r\n\r\n", 1)[1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(results) == sorted(b"%03d" % i * 100 for i in range(40))
    entries = net.proxy.wait_entries(before, 40)  # read_ledger: whole lines, seq in order
    assert len(entries) == 40
    assert all((e["decision"], e["bytes_up"], e["bytes_down"]) == ("allow", 300, 300) for e in entries)
