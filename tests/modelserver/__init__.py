"""A scripted model server on loopback for driving the real coding-agent CLIs in tests.

`ModelServer(script)` answers the model APIs the CLIs speak, on 127.0.0.1 only:

- `POST /v1/messages` (+ `/v1/messages/count_tokens`): Anthropic Messages (claude),
  `tests.modelserver.anthropic`;
- `POST /v1/chat/completions`, `/chat/completions`: OpenAI Chat Completions (opencode's
  openai-compatible provider), `tests.modelserver.chat`;
- `POST /v1/responses`, `/responses`: OpenAI Responses (codex),
  `tests.modelserver.responses` (imported lazily);
- `GET /v1/models`, `/models`: a small model list.

The script is a list of protocol-neutral `Turn`s. Each protocol module decides which
requests are the agent's own turns (they carry `tools`): only those consume
`next_turn()`, in order; side requests (title generation, quota probes, token counts)
get the default text and consume nothing. Every request is recorded in `requests`
(`Received`: method, path, headers with lower-case names, parsed JSON body) so a test
can assert what the CLI sent, including its credentials.

A protocol module is `handle(server, path, headers, body: bytes) -> (status, headers,
chunks)`; chunks are written as they come (chunked transfer encoding) unless the
headers carry a Content-Length. SSE when the request says `"stream": true`.

`Turn.error` answers with an API error instead of a turn: "NNN message" picks the HTTP
status NNN (400..599), anything else is a 400 invalid_request_error. Clients retry 5xx
and 429 (claude up to 10 times with back-off), so a scripted failure that must fail at
once uses the 400 default.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import TracebackType

MODELS = ("agentos-test-model",)
_STATUS = re.compile(r"^(\d{3})\s+(.*)$", re.S)
_BODY_LIMIT = 64 * 1024 * 1024


@dataclass
class ToolCall:
    """One tool call the model makes; `call_id` is filled in by `next_turn` when empty."""

    name: str
    arguments: dict[str, Any]
    call_id: str = ""


@dataclass
class Turn:
    """One model response in a protocol-neutral form."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, int] = field(
        default_factory=lambda: {"input_tokens": 120, "output_tokens": 30})
    error: str | None = None  # answer with an API error instead ("NNN message" or a message)


@dataclass
class Received:
    """One request as the server got it."""

    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON, or the raw text when it is not JSON, or None when empty
    method: str = "POST"


def error_status(error: str) -> tuple[int, str]:
    """`Turn.error` -> (HTTP status, message): a leading "NNN " picks the status."""
    match = _STATUS.match(error)
    if match and 400 <= int(match.group(1)) <= 599:
        return int(match.group(1)), match.group(2)
    return 400, error


class ModelServer:
    """The scripted server: a context manager around a ThreadingHTTPServer on 127.0.0.1:0."""

    def __init__(self, script: list[Turn], *, default_text: str = "ok") -> None:
        self.script: list[Turn] = list(script)
        self.default_text = default_text
        self.requests: list[Received] = []
        self.turns_served = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> ModelServer:
        if self._httpd is not None:
            raise RuntimeError("ModelServer already started")
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        httpd.daemon_threads = True
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(target=httpd.serve_forever, name="modelserver",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    # ------------------------------------------------------------------ the script

    def next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}_{next(self._ids):06d}"

    def next_turn(self) -> Turn:
        """The next scripted turn (tool call ids filled in); the default text when done."""
        with self._lock:
            turn = self.script.pop(0) if self.script else Turn(text=self.default_text)
            self.turns_served += 1
            for call in turn.tool_calls:
                if not call.call_id:
                    call.call_id = f"call_{next(self._ids):06d}"
            return turn

    def side_turn(self) -> Turn:
        """What a side request (no tools: a title, a probe) gets."""
        return Turn(text=self.default_text)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self.script)

    def received(self, path: str) -> list[Received]:
        """The requests to `path` (exact), in order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)


def _route(path: str) -> Callable[..., tuple[int, dict[str, str], Iterable[bytes]]] | None:
    from tests.modelserver import anthropic, chat
    if path in anthropic.PATHS:
        return anthropic.handle
    if path in chat.PATHS:
        return chat.handle
    if path in ("/v1/responses", "/responses"):
        from tests.modelserver import responses
        return responses.handle
    return None


def json_response(status: int, body: Any) -> tuple[int, dict[str, str], list[bytes]]:
    data = json.dumps(body).encode()
    return status, {"Content-Type": "application/json"}, [data]


def _models() -> dict[str, Any]:
    data = [{"id": name, "object": "model", "type": "model", "display_name": name,
             "created": 1700000000, "created_at": "2025-01-01T00:00:00Z",
             "owned_by": "agentos"} for name in MODELS]
    return {"object": "list", "data": data, "has_more": False,
            "first_id": data[0]["id"], "last_id": data[-1]["id"]}


def _handler_class(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "agentos-modelserver/1"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # quiet: the requests are recorded instead

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            if length > _BODY_LIMIT:
                raise ValueError(f"request body of {length} bytes is too large")
            return self.rfile.read(length) if length else b""

        def _serve(self, method: str) -> None:
            raw = self._body() if method == "POST" else b""
            path = self.path.split("?", 1)[0]
            headers = {name.lower(): value for name, value in self.headers.items()}
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
            server._record(Received(path=path, headers=headers, body=body, method=method))
            if method == "GET" and path.rstrip("/") in ("/v1/models", "/models"):
                status, out_headers, chunks = json_response(200, _models())
            elif method != "POST":
                status, out_headers, chunks = json_response(
                    404, {"error": {"type": "not_found_error",
                                    "message": f"no {method} {path} here"}})
            else:
                handle = _route(path)
                if handle is None:
                    status, out_headers, chunks = json_response(
                        404, {"error": {"type": "not_found_error",
                                        "message": f"no such endpoint {path!r}"}})
                else:
                    status, out_headers, chunks = handle(server, path, headers, raw)
            self._write(status, out_headers, chunks)

        def _write(self, status: int, headers: Mapping[str, str],
                   chunks: Iterable[bytes]) -> None:
            self.send_response(status)
            names = {name.lower() for name in headers}
            for name, value in headers.items():
                self.send_header(name, value)
            if "content-length" in names:
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(chunk)
                self.wfile.flush()
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                if chunk:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            server._record(Received(path=self.path, headers={}, body=None, method="HEAD"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return _Handler


__all__ = ["MODELS", "ModelServer", "Received", "ToolCall", "Turn", "error_status",
           "json_response"]
