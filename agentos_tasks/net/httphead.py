"""Strict parsing of the one thing the proxy reads from a sandboxed client: an HTTP/1.x
request head (CONNECT authority-form or absolute-form http:// requests).

Strict because every leniency is a way to make the proxy and the upstream disagree about
where a request goes: no userinfo, no percent-encoding or NUL in hosts, no obs-fold, no
duplicate Host or Content-Length, no Transfer-Encoding other than a single `chunked`, a
Host header that names the same host and port as the request target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentos_tasks.net.allowlist import split_host_port

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
_METHOD = re.compile(r"[A-Z]{1,20}\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# hop-by-hop headers the proxy never forwards (RFC 9110 7.6.1), plus the proxy's own
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    }
)


class RequestError(ValueError):
    """The head cannot be served; `host` is the raw target text for the ledger."""

    def __init__(self, message: str, host: str = "", port: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str  # as sent
    version: str  # "HTTP/1.0" | "HTTP/1.1"
    host: str  # normalized
    port: int
    path: str  # origin-form for the upstream ("/" at least); "" for CONNECT
    headers: tuple[tuple[str, str], ...]  # in order, names as sent
    body: str  # "none" | "length" | "chunked"
    content_length: int

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    @property
    def wants_close(self) -> bool:
        """The client asked for the connection to end after this request's response."""
        tokens = {t.strip().lower() for v in self.header("connection") for t in v.split(",")}
        return "close" in tokens or (self.version == "HTTP/1.0" and "keep-alive" not in tokens)

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]


def authority(host: str, port: int) -> str:
    """host:port as written in a request, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_head(raw: bytes) -> RequestHead:
    """Parse a complete head (up to and including the blank line); RequestError says why
    it is refused."""
    if len(raw) > MAX_HEAD_BYTES:
        raise RequestError(f"request head longer than {MAX_HEAD_BYTES} bytes", _raw_target(raw))
    if b"\x00" in raw:
        raise RequestError("NUL byte in the request head", _raw_target(raw))
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError("non-ASCII bytes in the request head", _raw_target(raw)) from None
    lines = text.split("\r\n")
    if lines[-2:] != ["", ""]:
        raise RequestError(
            f"request head incomplete or longer than {MAX_HEAD_BYTES} bytes", _raw_target(raw)
        )
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise RequestError(f"malformed request line {lines[0][:200]!r}", _raw_target(raw))
    method, target, version = parts
    if not _METHOD.match(method) or version not in ("HTTP/1.0", "HTTP/1.1"):
        raise RequestError(f"unsupported request line {lines[0][:200]!r}", target)
    headers = _parse_headers(lines[1:-2], target)
    if method == "CONNECT":
        host, port = _connect_target(target)
        path = ""
    else:
        host, port, path = _absolute_target(target)
    _check_host_header(headers, host, port, target, required=method != "CONNECT")
    body, length = _body_framing(headers, target)
    return RequestHead(method, target, version, host, port, path, headers, body, length)


def upstream_head(head: RequestHead) -> bytes:
    """The head to send upstream for a plain HTTP request: origin-form target, the Host
    header as decided, no hop-by-hop headers, and `Connection: close` so the upstream
    connection carries exactly this request."""
    connection_tokens = {
        token.strip().lower() for value in head.header("connection") for token in value.split(",")
    }
    lines = [f"{head.method} {head.path} {head.version}", f"Host: {_host_value(head)}"]
    for name, value in head.headers:
        lowered = name.lower()
        if lowered == "host" or lowered in HOP_BY_HOP or lowered in connection_tokens:
            continue
        lines.append(f"{name}: {value}")
    if head.body == "chunked":
        lines.append("Transfer-Encoding: chunked")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _host_value(head: RequestHead) -> str:
    name = f"[{head.host}]" if ":" in head.host else head.host
    return name if head.port == 80 else f"{name}:{head.port}"


def _parse_headers(lines: list[str], target: str) -> tuple[tuple[str, str], ...]:
    if len(lines) > MAX_HEADERS:
        raise RequestError(f"more than {MAX_HEADERS} header lines", target)
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            raise RequestError("folded header line (obs-fold) refused", target)
        name, sep, value = line.partition(":")
        if not sep or not _HEADER_NAME.match(name):
            raise RequestError(f"malformed header line {line[:100]!r}", target)
        value = value.strip(" \t")
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            raise RequestError(f"control character in header {name!r}", target)
        headers.append((name, value))
    return tuple(headers)


def _refuse_raw_bytes(target: str) -> None:
    """A request target is one token: no whitespace, no control character (a bare LF or
    CR in it would reach the upstream as a header of the client's choosing)."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        raise RequestError("whitespace or a control character in the request target", target)


def _connect_target(target: str) -> tuple[str, int]:
    _refuse_raw_bytes(target)
    try:
        host, port = split_host_port(target)
    except ValueError as exc:
        raise RequestError(f"CONNECT target refused: {exc}", target) from None
    if port is None:
        raise RequestError(f"CONNECT target {target!r} has no port", target)
    return host, port


def _absolute_target(target: str) -> tuple[str, int, str]:
    _refuse_raw_bytes(target)
    if target.startswith("/") or target == "*":
        raise RequestError(
            f"origin-form request {target[:100]!r}: this is a forward proxy; "
            "send the absolute URI (http://host/path)",
            target,
        )
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise RequestError(
            f"request target {target[:100]!r} is not an http:// URI; "
            "hint: https goes through CONNECT",
            target,
        )
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority_text, path = rest[:cut], rest[cut:]
    if "@" in authority_text:
        raise RequestError("userinfo (user@host) in the request target refused", authority_text)
    try:
        host, port = split_host_port(authority_text)
    except ValueError as exc:
        raise RequestError(f"request target refused: {exc}", authority_text) from None
    if "#" in path:
        path = path[: path.index("#")]
    if not path.startswith("/"):
        path = "/" + path
    return host, 80 if port is None else port, path


def _check_host_header(
    headers: tuple[tuple[str, str], ...], host: str, port: int, target: str, required: bool
) -> None:
    values = [value for name, value in headers if name.lower() == "host"]
    if len(values) > 1:
        raise RequestError("more than one Host header", target, port)
    if not values:
        if required:
            raise RequestError("no Host header", target, port)
        return
    try:
        header_host, header_port = split_host_port(values[0])
    except ValueError as exc:
        raise RequestError(f"Host header refused: {exc}", values[0], port) from None
    if header_port is None:  # CONNECT's Host may omit the port; http:// means 80
        header_port = port if not required else 80
    if header_host != host or header_port != port:
        raise RequestError(
            f"Host header {values[0][:100]!r} differs from the request target "
            f"{authority(host, port)}",
            host,
            port,
        )


def _body_framing(headers: tuple[tuple[str, str], ...], target: str) -> tuple[str, int]:
    encodings = [value for name, value in headers if name.lower() == "transfer-encoding"]
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    if encodings and lengths:
        raise RequestError("both Transfer-Encoding and Content-Length (smuggling)", target)
    if encodings:
        if len(encodings) != 1 or encodings[0].lower() != "chunked":
            raise RequestError(
                f"Transfer-Encoding {', '.join(encodings)!r}: only 'chunked' is relayed", target
            )
        return "chunked", 0
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 15:
            raise RequestError(f"bad Content-Length {lengths!r}", target)
        return ("length", int(lengths[0])) if int(lengths[0]) else ("none", 0)
    return "none", 0


def _raw_target(raw: bytes) -> str:
    """The request target as sent, for the ledger of a head that failed to parse."""
    first = raw.split(b"\r\n", 1)[0].split(b" ")
    text = first[1] if len(first) > 1 else first[0]
    return text[:300].decode("utf-8", "backslashreplace")

