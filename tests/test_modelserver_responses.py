"""The scripted model server's OpenAI Responses API (tests/modelserver/responses.py):
over HTTP with urllib, then driven by the real codex CLI (npm, pinned in package.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agentos_tasks.model import ToolSpec
from agentos_tasks.policy.schema import Provider
from agentos_tasks.tools.adapters import codex as codex_adapter
from agentos_tasks.tools.adapters.base import json_objects
from tests.modelserver import ModelServer, ToolCall, Turn
from tests.modelserver.responses import parse_sse

PROJECT = Path(__file__).resolve().parent.parent
PATCH = "*** Begin Patch\n*** Update File: hello.txt\n@@\n-hello\n+hello, world\n*** End Patch\n"
TOOLS = [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
         {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}]


def post(url: str, body: Any, path: str = "/v1/responses") -> tuple[int, str, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def stream(server: ModelServer, **extra: Any) -> list[dict[str, Any]]:
    status, kind, body = post(server.url, {"model": "m", "stream": True, "tools": TOOLS,
                                           "input": [], **extra})
    assert (status, kind) == (200, "text/event-stream")
    return parse_sse(body)


def test_text_turn_streams_the_events_codex_reads() -> None:
    with ModelServer([Turn(text="Hello there, " * 10, usage={"input_tokens": 7,
                                                              "output_tokens": 5})]) as ms:
        events = stream(ms)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds[1:3] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-3:-1] == ["response.output_text.done", "response.output_item.done"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Hello there, " * 10
    assert len([k for k in kinds if k == "response.output_text.delta"]) > 1  # in pieces
    done = events[-2]["item"]
    assert done["type"] == "message" and done["role"] == "assistant"
    assert done["content"] == [{"type": "output_text", "text": deltas, "annotations": []}]
    completed = events[-1]["response"]
    assert completed["id"].startswith("resp_") and completed["status"] == "completed"
    assert completed["usage"]["input_tokens"] == 7
    assert completed["usage"]["output_tokens"] == 5
    assert completed["usage"]["total_tokens"] == 12
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_function_call_streams_json_arguments() -> None:
    arguments = {"cmd": "ls -la " + "x" * 100, "yield_time_ms": 1000}
    with ModelServer([Turn(tool_calls=[ToolCall("exec_command", arguments)])]) as ms:
        events = stream(ms)
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    pieces = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert json.loads("".join(pieces)) == arguments
    done = next(e["item"] for e in events if e["type"] == "response.output_item.done")
    assert done["name"] == "exec_command" and json.loads(done["arguments"]) == arguments
    assert done["call_id"].startswith("call_")
    assert done["call_id"] == added["item"]["call_id"]


def test_custom_tool_gets_its_freeform_input() -> None:
    """apply_patch declared as a custom (freeform) tool: the patch text is the input."""
    script = [Turn(tool_calls=[ToolCall("apply_patch", {"input": PATCH}, call_id="c1")])]
    with ModelServer(script) as ms:
        events = stream(ms)
    done = next(e["item"] for e in events if e["type"] == "response.output_item.done")
    assert done == {"type": "custom_tool_call", "id": done["id"], "status": "completed",
                    "call_id": "c1", "name": "apply_patch", "input": PATCH}
    pieces = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert "".join(pieces) == PATCH


def test_side_requests_get_the_default_text_and_keep_the_script() -> None:
    with ModelServer([Turn(text="main turn")], default_text="side") as ms:
        status, _, body = post(ms.url, {"model": "m", "stream": True, "input": []},
                               path="/responses")
        side = parse_sse(body)
        assert status == 200 and ms.remaining == 1
        main = stream(ms)
        assert ms.remaining == 0 and ms.turns_served == 1
    assert side[-2]["item"]["content"][0]["text"] == "side"
    assert main[-2]["item"]["content"][0]["text"] == "main turn"
    assert [r.path for r in ms.requests] == ["/responses", "/v1/responses"]


def test_non_streaming_request_gets_one_json_response() -> None:
    with ModelServer([Turn(text="plain", tool_calls=[ToolCall("exec_command", {"a": 1})])]) as ms:
        status, kind, body = post(ms.url, {"model": "m", "tools": TOOLS, "input": []})
    response = json.loads(body)
    assert (status, kind) == (200, "application/json")
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["model"] == "m" and response["usage"]["total_tokens"] == 150


@pytest.mark.parametrize(("error", "status"), [("401 invalid api key", 401),
                                               ("bad request", 400),
                                               ("503 overloaded", 503)])
def test_error_turn_is_an_http_error(error: str, status: int) -> None:
    with ModelServer([Turn(error=error)]) as ms:
        got, kind, body = post(ms.url, {"model": "m", "stream": True, "tools": TOOLS})
    assert (got, kind) == (status, "application/json")
    message = json.loads(body)["error"]["message"]
    assert message == error.split(" ", 1)[1] if error[0].isdigit() else message == error


def test_invalid_request_bodies_are_refused() -> None:
    with ModelServer([Turn(text="unused")]) as ms:
        status, _, body = post(ms.url, b"{not json")
        assert status == 400 and "not JSON" in json.loads(body)["error"]["message"]
        status, _, body = post(ms.url, b"[1, 2]")
        assert status == 400 and "JSON object" in json.loads(body)["error"]["message"]
        assert ms.remaining == 1


# ------------------------------------------------------------------ the real codex

def codex_executable() -> str:
    """The pinned codex (npm ci into the checkout), else one on PATH. Never skipped in CI."""
    local = PROJECT / "node_modules" / ".bin" / "codex"
    found = str(local) if local.exists() else shutil.which("codex")
    if found is None:
        message = "codex is not installed: run `npm ci` in the checkout (package.json)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_codex(tmp_path: Path, script: list[Turn]) -> tuple[int, bytes, ModelServer, Path]:
    """The adapter's invocation of real codex, on the host, against the scripted server."""
    worktree, config = tmp_path / "wt", tmp_path / "cfg"
    config.mkdir()
    subprocess.run(["git", "init", "-q", str(worktree)], check=True)
    (worktree / "hello.txt").write_text("hello\n")
    with ModelServer(script) as ms:
        provider = Provider(base_url=ms.url + "/v1", api_key_env="AGENTOS_TEST_KEY",
                            model="agentos-test-model")
        tool = ToolSpec("codex", "Change hello to hello, world in hello.txt", ("*.txt",))
        inv = codex_adapter.invocation(tool, worktree, config, False, True,
                                       provider=provider)
        for name, text in inv.files.items():
            (config / name).write_text(text)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "AGENTOS_TEST_KEY": "sk-agentos-canary-1234", **inv.env}
        proc = subprocess.run([codex_executable(), *inv.argv[1:]], env=env, cwd=worktree,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
    return proc.returncode, proc.stdout, ms, worktree


def claims_of(output: bytes) -> dict[str, Any]:
    objects, _, _ = json_objects(output)
    return codex_adapter.read_claims(objects, output)


def test_real_codex_edits_through_apply_patch(tmp_path: Path) -> None:
    code, output, ms, worktree = run_codex(tmp_path, [
        Turn(tool_calls=[ToolCall("apply_patch", {"input": PATCH})]),
        Turn(text="Updated hello.txt.")])
    assert code == 0, output.decode()
    assert (worktree / "hello.txt").read_text() == "hello, world\n"
    claims = claims_of(output)
    assert codex_adapter.failure(claims) is None, output.decode()
    assert claims["file_changes"] == [{"path": str(worktree / "hello.txt"), "kind": "update",
                                       "status": "completed"}]
    assert claims["usage_summary"] == {"model": None, "input_tokens": 240,
                                       "output_tokens": 60, "cost_usd": None, "turns": 1}
    main = [r for r in ms.requests if r.path == "/v1/responses"]
    assert len(main) == 2 and ms.remaining == 0
    first = main[0]
    assert first.headers["authorization"] == "Bearer sk-agentos-canary-1234"
    assert first.body["model"] == "agentos-test-model" and first.body["stream"] is True
    tools = {(t.get("type"), t.get("name")) for t in first.body["tools"]}
    assert ("custom", "apply_patch") in tools
    assert not {name for _, name in tools} & {"exec_command", "shell", "web_search"}
    outputs = [item for item in main[1].body["input"]
               if item.get("type") == "custom_tool_call_output"]
    assert len(outputs) == 1 and "Success" in json.dumps(outputs[0])
    assert b"sk-agentos-canary-1234" not in output


def test_real_codex_rejected_patch_fails_the_step(tmp_path: Path) -> None:
    bad = PATCH.replace("-hello\n", "-no such line\n")
    code, output, _, worktree = run_codex(tmp_path, [
        Turn(tool_calls=[ToolCall("apply_patch", {"input": bad})]),
        Turn(text="The patch did not apply.")])
    assert code == 0  # codex itself calls the run a success
    assert (worktree / "hello.txt").read_text() == "hello\n"
    reason = codex_adapter.failure(claims_of(output))
    assert reason is not None and "apply_patch verification failed" in reason


def test_real_codex_api_error_fails_the_turn(tmp_path: Path) -> None:
    code, output, ms, _ = run_codex(tmp_path, [Turn(error="401 invalid api key")] * 6)
    assert code == 1 and ms.remaining == 0
    claims = claims_of(output)
    assert len(claims["transient_errors"]) == 5
    reason = codex_adapter.failure(claims)
    assert reason is not None and "turn failed" in reason and "401" in reason
