"""OpenAI Responses API (`POST /v1/responses`) for the scripted model server.

What codex reads (codex-rs/codex-api/src/sse/responses.rs, `process_sse`): SSE events
with a JSON `data:` whose `type` is one of response.created (needs a `response` object),
response.output_item.added / .done (`item`: a ResponseItem: `message` with
`output_text` content, `function_call` {name, arguments (a JSON *string*), call_id},
`custom_tool_call` {name, input, call_id}), response.output_text.delta (`delta`),
response.failed (`response.error` {code, message}) and response.completed (`response.id`
required; `usage` {input_tokens, output_tokens, total_tokens} all required when usage is
present). A stream that closes without response.completed is an error for codex.

A "main" request carries `tools` and consumes `server.next_turn()`; anything else (a
title or summary request) gets `server.side_turn()` (the default text). A tool call goes out as the kind the
request declared for that name: a `custom` tool (codex's freeform apply_patch, whose
grammar input is the patch text) as `custom_tool_call` with `input` =
`arguments["input"]`, a `function` tool as `function_call` with the JSON arguments.
`Turn.error` answers with an HTTP error instead (`error_status`: "NNN message" picks the
status, anything else is a 400 `invalid_request_error`). Codex 0.171 retries even a 401
five times ("Reconnecting... N/5") before its turn fails, so a script that must fail
gives six error turns.

`stream: false` gets the same response as one JSON object.
"""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING, Any

from tests.modelserver import error_status, json_response

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from tests.modelserver import ModelServer, ToolCall, Turn

PATHS = ("/v1/responses", "/responses")


def handle(server: ModelServer, path: str, headers: Mapping[str, str],
           body: bytes) -> tuple[int, dict[str, str], Iterable[bytes]]:
    """Answer one Responses API request: (status, headers, body chunks)."""
    del headers  # the core records them; nothing here depends on them
    try:
        request = json.loads(body or b"{}")
    except ValueError as exc:
        return _error(400, f"request body is not JSON: {exc}", "invalid_json")
    if not isinstance(request, dict):
        return _error(400, "request body must be a JSON object", "invalid_request")
    if path.rstrip("/") not in PATHS:
        return _error(404, f"no such endpoint {path!r}: use POST /v1/responses", "not_found")
    turn = server.next_turn() if request.get("tools") else server.side_turn()
    if turn.error is not None:
        status, message = error_status(turn.error)
        return _error(status, message, "scripted_error")
    response = build_response(request, turn, server.next_id)
    if request.get("stream", False):
        return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, \
            list(sse_events(response))
    return json_response(200, response)


def _error(status: int, message: str, code: str) -> tuple[int, dict[str, str], list[bytes]]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json_response(status, {"error": {"message": message, "type": kind,
                                            "param": None, "code": code}})


def _tool_kinds(request: Mapping[str, Any]) -> dict[str, str]:
    """Tool name -> "custom" | "function" as the request declared it."""
    kinds: dict[str, str] = {}
    for tool in request.get("tools") or ():
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            kinds[tool["name"]] = str(tool.get("type", "function"))
    return kinds


def tool_item(call: ToolCall, kinds: Mapping[str, str],
              next_id: Callable[[str], str]) -> dict[str, Any]:
    """The output item for one scripted tool call, shaped as the request declared it."""
    call_id = call.call_id or next_id("call")
    if kinds.get(call.name) == "custom":
        value = call.arguments.get("input", "")
        return {"type": "custom_tool_call", "id": next_id("ctc"), "status": "completed",
                "call_id": call_id, "name": call.name,
                "input": value if isinstance(value, str) else json.dumps(value)}
    return {"type": "function_call", "id": next_id("fc"), "status": "completed",
            "call_id": call_id, "name": call.name,
            "arguments": json.dumps(call.arguments)}


def build_response(request: Mapping[str, Any], turn: Turn,
                   next_id: Callable[[str], str]) -> dict[str, Any]:
    """The complete `response` object (status completed) for a turn."""
    output: list[dict[str, Any]] = []
    if turn.text:
        output.append({"type": "message", "id": next_id("msg"), "status": "completed",
                       "role": "assistant",
                       "content": [{"type": "output_text", "text": turn.text,
                                    "annotations": []}]})
    kinds = _tool_kinds(request)
    output += [tool_item(call, kinds, next_id) for call in turn.tool_calls]
    usage = {"input_tokens": int(turn.usage.get("input_tokens", 0)),
             "output_tokens": int(turn.usage.get("output_tokens", 0))}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    usage["input_tokens_details"] = {"cached_tokens": int(turn.usage.get("cached_tokens", 0))}
    usage["output_tokens_details"] = {"reasoning_tokens": 0}
    return {"id": next_id("resp"), "object": "response", "status": "completed",
            "model": str(request.get("model", "")), "output": output, "usage": usage}


def _event(kind: str, **fields: Any) -> bytes:
    data = json.dumps({"type": kind, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def sse_events(response: Mapping[str, Any]) -> Iterator[bytes]:
    """The streamed form of `response`: created, per item added/deltas/done, completed."""
    seq = itertools.count()
    shell = {**response, "status": "in_progress", "output": [], "usage": None}
    yield _event("response.created", response=shell, sequence_number=next(seq))
    for index, item in enumerate(response["output"]):
        yield from _item_events(index, item, seq)
    yield _event("response.completed", response=dict(response), sequence_number=next(seq))


def _item_events(index: int, item: Mapping[str, Any],
                 seq: itertools.count[int]) -> Iterator[bytes]:
    kind = item["type"]
    if kind == "message":
        text = item["content"][0]["text"]
        added = {**item, "status": "in_progress", "content": []}
        yield _event("response.output_item.added", output_index=index, item=added,
                     sequence_number=next(seq))
        yield _event("response.content_part.added", item_id=item["id"], output_index=index,
                     content_index=0, part={"type": "output_text", "text": "",
                                            "annotations": []},
                     sequence_number=next(seq))
        for piece in _pieces(text):
            yield _event("response.output_text.delta", item_id=item["id"],
                         output_index=index, content_index=0, delta=piece,
                         sequence_number=next(seq))
        yield _event("response.output_text.done", item_id=item["id"], output_index=index,
                     content_index=0, text=text, sequence_number=next(seq))
    elif kind == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
        yield _event("response.output_item.added", output_index=index, item=added,
                     sequence_number=next(seq))
        for piece in _pieces(item["arguments"]):
            yield _event("response.function_call_arguments.delta", item_id=item["id"],
                         output_index=index, delta=piece, sequence_number=next(seq))
        yield _event("response.function_call_arguments.done", item_id=item["id"],
                     output_index=index, arguments=item["arguments"],
                     sequence_number=next(seq))
    else:  # custom_tool_call
        added = {**item, "status": "in_progress", "input": ""}
        yield _event("response.output_item.added", output_index=index, item=added,
                     sequence_number=next(seq))
        for piece in _pieces(item["input"]):
            yield _event("response.custom_tool_call_input.delta", item_id=item["id"],
                         output_index=index, delta=piece, sequence_number=next(seq))
    yield _event("response.output_item.done", output_index=index, item=dict(item),
                 sequence_number=next(seq))


def _pieces(text: str, size: int = 64) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def parse_sse(data: bytes) -> list[dict[str, Any]]:
    """The JSON `data:` of each SSE event in `data` (for tests), with `event:` checked
    against the payload's type."""
    events: list[dict[str, Any]] = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        payload = json.loads(fields["data"])
        if fields.get("event") != payload.get("type"):
            raise ValueError(f"event line {fields.get('event')!r} does not match "
                             f"data type {payload.get('type')!r}")
        events.append(payload)
    return events


__all__ = ["PATHS", "build_response", "handle", "parse_sse", "sse_events",
           "tool_item"]
