"""Anthropic Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) for the
scripted model server.

The shapes are the documented ones (https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/api/messages-streaming): a non-streaming answer is one
`message` object {id, type, role, model, content[text|tool_use], stop_reason,
stop_sequence, usage}; a streaming one is the SSE sequence message_start,
content_block_start / content_block_delta (text_delta, or input_json_delta for a
tool_use block) / content_block_stop per block, message_delta {stop_reason: tool_use |
end_turn, usage.output_tokens}, message_stop. Errors are {type: "error", error: {type,
message}}.

A "main" request carries `tools` (claude sends its tool set with every agent turn) and
consumes `server.next_turn()`; anything else (claude's quota probe, title or topic
requests) gets `server.default_text`. count_tokens answers a rough count and consumes
nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.modelserver import error_status, json_response

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from tests.modelserver import ModelServer, Turn

PATHS = ("/v1/messages", "/v1/messages/count_tokens")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 529: "overloaded_error"}


def handle(server: ModelServer, path: str, headers: Mapping[str, str],
           body: bytes) -> tuple[int, dict[str, str], Iterable[bytes]]:
    """Answer one Messages API request: (status, headers, body chunks)."""
    del headers
    try:
        request = json.loads(body or b"{}")
    except ValueError as exc:
        return error(400, f"request body is not JSON: {exc}")
    if not isinstance(request, dict):
        return error(400, "request body must be a JSON object")
    if path == "/v1/messages/count_tokens":
        return json_response(200, {"input_tokens": max(1, len(body) // 4)})
    turn = server.next_turn() if request.get("tools") else server.side_turn()
    if turn.error is not None:
        status, message = error_status(turn.error)
        return error(status, message)
    message = build_message(server, request, turn)
    if request.get("stream"):
        return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                     "request-id": message["id"].replace("msg", "req")}, \
            list(sse_events(message))
    return json_response(200, message)


def error(status: int, message: str) -> tuple[int, dict[str, str], list[bytes]]:
    kind = _ERROR_TYPES.get(status, "api_error")
    return json_response(status, {"type": "error", "error": {"type": kind, "message": message}})


def build_message(server: ModelServer, request: Mapping[str, Any],
                  turn: Turn) -> dict[str, Any]:
    """The complete `message` object for a turn."""
    content: list[dict[str, Any]] = []
    if turn.text or not turn.tool_calls:
        content.append({"type": "text", "text": turn.text})
    for call in turn.tool_calls:
        content.append({"type": "tool_use", "id": call.call_id or server.next_id("toolu"),
                        "name": call.name, "input": call.arguments})
    usage = {"input_tokens": int(turn.usage.get("input_tokens", 0)),
             "output_tokens": int(turn.usage.get("output_tokens", 0)),
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    return {"id": server.next_id("msg"), "type": "message", "role": "assistant",
            "model": str(request.get("model", "")), "content": content,
            "stop_reason": "tool_use" if turn.tool_calls else "end_turn",
            "stop_sequence": None, "usage": usage}


def _event(kind: str, payload: Mapping[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def sse_events(message: Mapping[str, Any]) -> Iterator[bytes]:
    """The streamed form of `message`."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**usage, "output_tokens": 1}}
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield _event("content_block_start", {"index": index,
                                                 "content_block": {"type": "text", "text": ""}})
            for piece in _pieces(block["text"]):
                yield _event("content_block_delta", {
                    "index": index, "delta": {"type": "text_delta", "text": piece}})
        else:
            shell = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            yield _event("content_block_start", {"index": index, "content_block": shell})
            for piece in _pieces(json.dumps(block["input"])):
                yield _event("content_block_delta", {
                    "index": index, "delta": {"type": "input_json_delta",
                                              "partial_json": piece}})
        yield _event("content_block_stop", {"index": index})
    yield _event("message_delta", {
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]}})
    yield _event("message_stop", {})


def _pieces(text: str, size: int = 48) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


__all__ = ["PATHS", "build_message", "error", "handle", "sse_events"]
