"""OpenAI Chat Completions (`POST /v1/chat/completions`, `/chat/completions`) for the
scripted model server: what OpenCode's `@ai-sdk/openai-compatible` provider speaks.

Shapes (https://platform.openai.com/docs/api-reference/chat): a non-streaming answer is
one `chat.completion` {id, object, created, model, choices[{index, message{role,
content, tool_calls[{id, type: function, function{name, arguments: JSON string}}]},
finish_reason: stop | tool_calls}], usage{prompt_tokens, completion_tokens,
total_tokens}}. A streaming one is `data:` lines of `chat.completion.chunk`: a role
chunk, delta.content pieces, per tool call a first delta.tool_calls[{index, id, type,
function{name, arguments: ""}}] then argument pieces, a finish_reason chunk, a usage
chunk (choices: []), and `data: [DONE]`.

A "main" request carries `tools` and consumes `server.next_turn()`; anything else
(opencode's title generation) gets `server.default_text`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from tests.modelserver import error_status, json_response

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from tests.modelserver import ModelServer, Turn

PATHS = ("/v1/chat/completions", "/chat/completions")


def handle(server: ModelServer, path: str, headers: Mapping[str, str],
           body: bytes) -> tuple[int, dict[str, str], Iterable[bytes]]:
    """Answer one Chat Completions request: (status, headers, body chunks)."""
    del path, headers
    try:
        request = json.loads(body or b"{}")
    except ValueError as exc:
        return error(400, f"request body is not JSON: {exc}")
    if not isinstance(request, dict):
        return error(400, "request body must be a JSON object")
    turn = server.next_turn() if request.get("tools") else server.side_turn()
    if turn.error is not None:
        status, message = error_status(turn.error)
        return error(status, message)
    completion = build_completion(server, request, turn)
    if request.get("stream"):
        return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, \
            list(sse_chunks(completion))
    return json_response(200, completion)


def error(status: int, message: str) -> tuple[int, dict[str, str], list[bytes]]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json_response(status, {"error": {"message": message, "type": kind,
                                            "param": None, "code": None}})


def build_completion(server: ModelServer, request: Mapping[str, Any],
                     turn: Turn) -> dict[str, Any]:
    """The complete `chat.completion` object for a turn."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": call.call_id or server.next_id("call"), "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
            for call in turn.tool_calls]
    prompt = int(turn.usage.get("input_tokens", 0))
    completion = int(turn.usage.get("output_tokens", 0))
    return {"id": server.next_id("chatcmpl"), "object": "chat.completion",
            "created": int(time.time()), "model": str(request.get("model", "")),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if turn.tool_calls else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def _data(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_chunks(completion: Mapping[str, Any]) -> Iterator[bytes]:
    """The streamed form of `completion`."""
    head = {key: completion[key] for key in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"

    def chunk(delta: Mapping[str, Any], finish: str | None = None) -> bytes:
        return _data({**head, "choices": [{"index": 0, "delta": dict(delta),
                                           "finish_reason": finish}]})

    choice = completion["choices"][0]
    message = choice["message"]
    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(message.get("content") or ""):
        if piece:
            yield chunk({"content": piece})
    for index, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                     "function": {"name": call["function"]["name"],
                                                  "arguments": ""}}]})
        for piece in _pieces(call["function"]["arguments"]):
            yield chunk({"tool_calls": [{"index": index,
                                         "function": {"arguments": piece}}]})
    yield chunk({}, choice["finish_reason"])
    yield _data({**head, "choices": [], "usage": completion["usage"]})
    yield b"data: [DONE]\n\n"


def _pieces(text: str, size: int = 48) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def parse_sse(data: bytes) -> list[Any]:
    """The `data:` payloads of a stream (for tests): JSON objects, and "[DONE]"."""
    out: list[Any] = []
    for raw in data.decode().split("\n\n"):
        block = raw.strip()
        if not block:
            continue
        if not block.startswith("data: "):
            raise ValueError(f"not an SSE data line: {block[:80]!r}")
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


__all__ = ["PATHS", "build_completion", "error", "handle", "parse_sse", "sse_chunks"]
