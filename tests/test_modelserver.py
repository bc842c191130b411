"""The scripted model server: both protocols, streaming and not, over real HTTP (urllib)
on loopback; the script is consumed by main requests only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.modelserver import ModelServer, ToolCall, Turn, error_status
from tests.modelserver import chat as chat_protocol


def _post(server: ModelServer, path: str, body: dict[str, Any],
          headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                     method="POST",
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _anthropic_events(data: bytes) -> list[dict[str, Any]]:
    events = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        payload = json.loads(lines["data"])
        assert lines["event"] == payload["type"]
        events.append(payload)
    return events


TOOLS = [{"name": "Write", "description": "write", "input_schema": {"type": "object"}}]
EDIT = ToolCall("Write", {"file_path": "/w/a.txt", "content": "hi\n"})


def test_anthropic_streaming_tool_call_then_text() -> None:
    script = [Turn(tool_calls=[EDIT], usage={"input_tokens": 7, "output_tokens": 3}),
              Turn(text="Done: wrote a.txt")]
    with ModelServer(script) as server:
        body = {"model": "m1", "stream": True, "tools": TOOLS, "max_tokens": 100,
                "messages": [{"role": "user", "content": "go"}]}
        status, kind, data = _post(server, "/v1/messages", body,
                                   {"x-api-key": "sk-test-1"})
        assert (status, kind) == (200, "text/event-stream")
        events = _anthropic_events(data)
        assert [e["type"] for e in events] == [
            "message_start", "ping", "content_block_start", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop"]
        start = events[2]["content_block"]
        assert start["type"] == "tool_use" and start["name"] == "Write"
        assert start["id"] == EDIT.call_id and EDIT.call_id.startswith("call_")
        partial = "".join(e["delta"]["partial_json"] for e in events
                          if e["type"] == "content_block_delta")
        assert json.loads(partial) == EDIT.arguments
        assert events[-2]["delta"]["stop_reason"] == "tool_use"
        assert events[-2]["usage"] == {"output_tokens": 3}
        assert events[0]["message"]["usage"]["input_tokens"] == 7
        _, _, data = _post(server, "/v1/messages", body)
        events = _anthropic_events(data)
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        assert text == "Done: wrote a.txt"
        assert events[-2]["delta"]["stop_reason"] == "end_turn"
        assert server.remaining == 0
        assert server.requests[0].headers["x-api-key"] == "sk-test-1"
        assert server.requests[0].body["model"] == "m1"


def test_anthropic_side_requests_do_not_consume_the_script() -> None:
    with ModelServer([Turn(text="main")], default_text="side") as server:
        status, _, data = _post(server, "/v1/messages", {
            "model": "haiku", "max_tokens": 1, "messages": [{"role": "user", "content": "q"}]})
        message = json.loads(data)
        assert status == 200 and message["content"] == [{"type": "text", "text": "side"}]
        assert message["stop_reason"] == "end_turn" and message["type"] == "message"
        status, _, data = _post(server, "/v1/messages/count_tokens",
                                {"model": "m", "messages": []})
        assert status == 200 and json.loads(data)["input_tokens"] >= 1
        assert server.remaining == 1
        _, _, data = _post(server, "/v1/messages", {"model": "m", "tools": TOOLS,
                                                    "messages": []})
        assert json.loads(data)["content"][0]["text"] == "main"
        _, _, data = _post(server, "/v1/messages", {"model": "m", "tools": TOOLS,
                                                    "messages": []})
        assert json.loads(data)["content"][0]["text"] == "side"  # script exhausted


@pytest.mark.parametrize(("error", "status", "kind"), [
    ("boom", 400, "invalid_request_error"), ("500 internal", 500, "api_error"),
    ("429 slow down", 429, "rate_limit_error")])
def test_anthropic_scripted_error(error: str, status: int, kind: str) -> None:
    with ModelServer([Turn(error=error)]) as server:
        got, _, data = _post(server, "/v1/messages", {"model": "m", "tools": TOOLS,
                                                      "stream": True, "messages": []})
        assert got == status
        assert json.loads(data) == {"type": "error", "error": {
            "type": kind, "message": error_status(error)[1]}}


def test_chat_streaming_tool_call_usage_and_done() -> None:
    script = [Turn(text="editing", tool_calls=[ToolCall("write", {"filePath": "/w/b",
                                                                  "content": "x" * 100})],
                   usage={"input_tokens": 11, "output_tokens": 5})]
    with ModelServer(script) as server:
        status, kind, data = _post(server, "/v1/chat/completions", {
            "model": "m2", "stream": True, "tools": [{"type": "function"}],
            "messages": [{"role": "user", "content": "go"}]},
            {"Authorization": "Bearer sk-chat"})
        assert (status, kind) == (200, "text/event-stream")
        payloads = chat_protocol.parse_sse(data)
        assert payloads[-1] == "[DONE]"
        chunks = payloads[:-1]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        assert deltas[0]["role"] == "assistant"
        assert "".join(d.get("content", "") for d in deltas) == "editing"
        calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
        assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "write"
        arguments = "".join(tc["function"]["arguments"] for tc in calls)
        assert json.loads(arguments) == {"filePath": "/w/b", "content": "x" * 100}
        assert len(calls) > 2  # the arguments arrive in pieces
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
            "prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        assert server.requests[0].headers["authorization"] == "Bearer sk-chat"


def test_chat_plain_json_and_side_requests() -> None:
    with ModelServer([Turn(text="answer")], default_text="A title") as server:
        _, _, data = _post(server, "/chat/completions", {"model": "m", "messages": []})
        side = json.loads(data)
        assert side["choices"][0]["message"] == {"role": "assistant", "content": "A title"}
        assert server.remaining == 1
        _, _, data = _post(server, "/v1/chat/completions", {
            "model": "m", "tools": [{"type": "function"}], "messages": []})
        main = json.loads(data)
        assert main["object"] == "chat.completion"
        assert main["choices"][0]["message"]["content"] == "answer"
        assert main["choices"][0]["finish_reason"] == "stop"
        assert main["usage"]["total_tokens"] == 150
        assert [r.path for r in server.requests] == ["/chat/completions",
                                                     "/v1/chat/completions"]


def test_chat_scripted_error_and_bad_requests() -> None:
    with ModelServer([Turn(error="503 overloaded")]) as server:
        status, _, data = _post(server, "/v1/chat/completions", {
            "model": "m", "tools": [{}], "stream": True, "messages": []})
        assert status == 503
        assert json.loads(data)["error"]["message"] == "overloaded"
        status, _, data = _post(server, "/v1/nothing", {})
        assert status == 404 and b"no such endpoint" in data
        request = urllib.request.Request(server.url + "/v1/messages", data=b"{nope",
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 400 and b"not JSON" in caught.value.read()


def test_models_list_and_request_log() -> None:
    with ModelServer([]) as server:
        with urllib.request.urlopen(server.url + "/v1/models?limit=5", timeout=10) as resp:
            models = json.loads(resp.read())
        assert [m["id"] for m in models["data"]] == ["agentos-test-model"]
        assert server.requests[0].method == "GET" and server.requests[0].path == "/v1/models"
        assert server.url.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/v1/models", timeout=2)
