"""Adapters for coding-agent CLIs: exact argv, claims from real-shaped output, failures,
and the fake CLIs in tests/fakes run for real in a git worktree for every mode."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import ToolSpec
from agentos_tasks.policy.schema import Provider
from agentos_tasks.tools.adapters import (
    ADAPTERS,
    CLAUDE_SETTINGS_FILE,
    Invocation,
    build_invocation,
    claims_failure,
    executable_for,
    masked_for,
    opencode_edit_patterns,
    parse_claims,
    parse_version,
    tool_sandbox_note,
    version_argv,
)
from agentos_tasks.tools.adapters import codex as codex_adapter
from agentos_tasks.tools.adapters import opencode as opencode_adapter
from agentos_tasks.tools.adapters.base import json_objects
from agentos_tasks.tools.adapters.codex import CATALOG_FILE as CODEX_CATALOG_FILE
from agentos_tasks.tools.adapters.codex import DISABLED_FEATURES as CODEX_DISABLED_FEATURES

FAKES = Path(__file__).parent / "fakes"
SAMPLES = FAKES / "samples"
REAL = ("claude", "codex", "opencode")


def _build(adapter: str, tmp_path: Path, *, prompt: str = "Fix the bug",
           paths: tuple[str, ...] = ("src/**", "docs/*.md"), allow_shell: bool = False,
           network: bool = False, model: str | None = None,
           worktree: Path | None = None) -> Invocation:
    tool = ToolSpec(adapter=adapter, prompt=prompt, paths=paths, model=model)
    return build_invocation(tool, worktree=worktree or tmp_path / "wt",
                            config_dir=tmp_path / "cfg", allowed_paths=paths,
                            allow_shell=allow_shell, network=network)


# ------------------------------------------------------------------ argv, exactly


def test_claude_argv_is_headless_hermetic_and_edit_only(tmp_path: Path) -> None:
    inv = _build("claude", tmp_path)
    cfg = tmp_path / "cfg"
    assert inv.argv == (
        "claude", "-p", "--output-format", "stream-json", "--verbose",
        "--permission-mode", "dontAsk",
        "--tools", "Read,Edit,Write,Glob,Grep",
        "--allowedTools", "Read", "Glob", "Grep", "Edit(src/**)", "Edit(docs/*.md)",
        "--disallowedTools", "Bash", "WebFetch", "WebSearch", "Task", "NotebookEdit",
        "--setting-sources", "user",
        "--settings", str(cfg / CLAUDE_SETTINGS_FILE),
        "--strict-mcp-config", "--disable-slash-commands", "--no-session-persistence",
        "--", "Fix the bug",
    )
    assert "--add-dir" not in inv.argv and "--dangerously-skip-permissions" not in inv.argv
    assert inv.env == {"CLAUDE_CONFIG_DIR": str(cfg), "HOME": str(cfg),
                       "DISABLE_AUTOUPDATER": "1",
                       "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    settings = json.loads(inv.files[CLAUDE_SETTINGS_FILE])
    assert settings == {"disableAllHooks": True, "enableAllProjectMcpServers": False,
                        "permissions": {"defaultMode": "dontAsk",
                                        "disableBypassPermissionsMode": "disable"}}


def test_claude_shell_only_when_policy_allows(tmp_path: Path) -> None:
    inv = _build("claude", tmp_path, allow_shell=True, model="sonnet")
    argv = list(inv.argv)
    assert argv[argv.index("--tools") + 1] == "Read,Edit,Write,Glob,Grep,Bash"
    allowed = argv[argv.index("--allowedTools") + 1:argv.index("--disallowedTools")]
    denied = argv[argv.index("--disallowedTools") + 1:argv.index("--setting-sources")]
    assert "Bash" in allowed and "Bash" not in denied
    assert argv[-4:] == ["--model", "sonnet", "--", "Fix the bug"]


def test_codex_argv_is_headless_hermetic_with_its_sandbox_off(tmp_path: Path) -> None:
    inv = _build("codex", tmp_path)
    disabled = [arg for feature in (*CODEX_DISABLED_FEATURES, "shell_tool", "unified_exec")
                for arg in ("--disable", feature)]
    assert inv.argv == (
        "codex", "exec", "--json", "--color", "never",
        "--sandbox", "danger-full-access",
        "--skip-git-repo-check", "--ephemeral", "--ignore-user-config", "--ignore-rules",
        "-C", str(tmp_path / "wt"),
        "-c", 'approval_policy="never"',
        "-c", 'web_search="disabled"',
        "-c", "analytics.enabled=false",
        *disabled,
        "--", "Fix the bug",
    )
    assert {"hooks", "plugins", "apps", "multi_agent"} <= set(CODEX_DISABLED_FEATURES)
    assert "--ask-for-approval" not in inv.argv  # not an `exec` option
    assert "--trust" not in inv.argv and "workspace-write" not in inv.argv
    assert inv.env == {"CODEX_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path / "cfg")}
    assert inv.files == {} and inv.secret_env == {}
    assert masked_for("codex") == (".codex", ".agents")
    note = tool_sandbox_note("codex")
    assert "danger-full-access" in note and "cannot nest" in note


def test_codex_shell_follows_policy_and_network_is_the_sandboxs(tmp_path: Path) -> None:
    shell_net = _build("codex", tmp_path, allow_shell=True, network=True, model="gpt-5")
    assert "shell_tool" not in shell_net.argv and "unified_exec" not in shell_net.argv
    assert shell_net.argv[-4:] == ("-m", "gpt-5", "--", "Fix the bug")
    no_net = _build("codex", tmp_path, allow_shell=True, network=False, model="gpt-5")
    assert no_net.argv == shell_net.argv  # the sandbox grants the network, not a flag
    assert not any("network_access" in arg for arg in shell_net.argv)


def _codex_provider(tmp_path: Path, *, allow_shell: bool = False,
                    tool_model: str | None = None, **fields: str | None) -> Invocation:
    values: dict[str, str | None] = {"base_url": "https://gw.example.com/v1",
                                     "api_key_env": "GW_KEY", "model": "gw-model"}
    values.update(fields)
    provider = Provider(**values)  # type: ignore[arg-type]
    tool = ToolSpec(adapter="codex", prompt="Fix the bug", paths=("src/**",),
                    model=tool_model)
    return build_invocation(tool, worktree=tmp_path / "wt", config_dir=tmp_path / "cfg",
                            allowed_paths=("src/**",), allow_shell=allow_shell,
                            network=True, provider=provider)


def test_codex_provider_is_a_model_providers_entry_and_a_catalog(tmp_path: Path) -> None:
    inv = _codex_provider(tmp_path)
    argv = list(inv.argv)
    configs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-c"]
    catalog = tmp_path / "cfg" / CODEX_CATALOG_FILE
    assert configs[-3:] == [
        'model_provider="agentos"',
        'model_providers.agentos={name="agentos", base_url="https://gw.example.com/v1", '
        'env_key="GW_KEY", wire_api="responses", supports_websockets=false}',
        f'model_catalog_json="{catalog}"']
    assert argv[-4:] == ["-m", "gw-model", "--", "Fix the bug"]
    assert inv.secret_env == {"GW_KEY": "GW_KEY"}  # env_key: the secret's own name
    models = json.loads(inv.files[CODEX_CATALOG_FILE])["models"]
    assert [m["slug"] for m in models] == ["gw-model"]
    assert models[0]["apply_patch_tool_type"] == "freeform"
    assert models[0]["shell_type"] == "disabled"
    shell = _codex_provider(tmp_path, allow_shell=True, tool_model="step-model")
    assert list(shell.argv)[-4:] == ["-m", "step-model", "--", "Fix the bug"]
    shell_models = json.loads(shell.files[CODEX_CATALOG_FILE])["models"]
    assert shell_models[0]["slug"] == "step-model"
    assert shell_models[0]["shell_type"] == "unified_exec"
    keyless = _codex_provider(tmp_path, api_key_env=None)
    assert not any("env_key" in arg for arg in keyless.argv) and keyless.secret_env == {}


@pytest.mark.parametrize(("fields", "message"), [
    ({"protocol": "openai-chat"}, "codex cannot use a 'openai-chat' provider"),
    ({"protocol": "anthropic"}, "only 'openai-responses'"),
    ({"base_url": "gw.example.com"}, "is not an http(s) URL"),
    ({"base_url": 'https://x/"} ; evil'}, "is not an http(s) URL"),
    ({"api_key_env": "GW KEY"}, "not an environment variable name"),
    ({"model": None}, "needs a model"),
])
def test_codex_provider_errors_say_what_to_fix(tmp_path: Path, fields: dict[str, str | None],
                                               message: str) -> None:
    with pytest.raises(AgentosError) as caught:
        _codex_provider(tmp_path, **fields)
    assert message in str(caught.value) + str(getattr(caught.value, "hint", ""))


def test_codex_provider_protocol_responses_is_accepted(tmp_path: Path) -> None:
    inv = _codex_provider(tmp_path, protocol="openai-responses")
    assert 'model_provider="agentos"' in inv.argv


def test_opencode_argv_and_permission_env(tmp_path: Path) -> None:
    inv = _build("opencode", tmp_path, model="anthropic/claude-sonnet-4")
    assert inv.argv == ("opencode", "run", "--format", "json", "--pure",
                        "--dir", str(tmp_path / "wt"),
                        "-m", "anthropic/claude-sonnet-4", "--", "Fix the bug")
    cfg = tmp_path / "cfg"
    assert inv.env["HOME"] == str(cfg)
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        assert inv.env[name].startswith(str(cfg) + "/")
    for flag in ("OPENCODE_DISABLE_PROJECT_CONFIG", "OPENCODE_DISABLE_AUTOUPDATE",
                 "OPENCODE_DISABLE_SHARE", "OPENCODE_DISABLE_LSP_DOWNLOAD",
                 "OPENCODE_DISABLE_CLAUDE_CODE"):
        assert inv.env[flag] == "1"
    permission = json.loads(inv.env["OPENCODE_PERMISSION"])
    assert next(iter(permission)) == "*" and permission["*"] == "deny"  # first: last wins
    assert permission["edit"] == {"*": "deny", "src/*": "allow", "docs/*.md": "allow"}
    assert permission["bash"] == "deny"
    actions = [v for value in permission.values()
               for v in (value.values() if isinstance(value, dict) else [value])]
    assert set(actions) == {"allow", "deny"}  # nothing may ask in a headless run
    config = json.loads(inv.env["OPENCODE_CONFIG_CONTENT"])
    assert config["autoupdate"] is False and config["share"] == "disabled"
    assert config["formatter"] is False and config["lsp"] is False
    shell = _build("opencode", tmp_path, allow_shell=True)
    assert json.loads(shell.env["OPENCODE_PERMISSION"])["bash"] == "allow"


@pytest.mark.parametrize(("globs", "patterns"), [
    (["src/**"], ["src/*"]),
    (["*.md"], ["*.md", "*/*.md"]),
    (["docs/"], ["docs/*", "*/docs/*"]),
    (["src/a.py"], ["src/a.py", "src/a.py/*"]),
    (["src/**/test_*.py"], ["src/*/test_*.py"]),
])
def test_opencode_edit_patterns(globs: list[str], patterns: list[str]) -> None:
    assert opencode_edit_patterns(globs) == patterns


def test_command_adapter_passes_prompt_and_pack_by_env(tmp_path: Path) -> None:
    tool = ToolSpec(adapter="command", prompt="do it", paths=("src/**",),
                    argv=("python3", "-m", "mytool", "--flag"))
    pack = tmp_path / "tool_task_pack.json"
    inv = build_invocation(tool, worktree=tmp_path, config_dir=tmp_path / "cfg",
                           allowed_paths=["src/**", "docs/**"], allow_shell=False,
                           network=False, task_pack_path=pack)
    assert inv.argv == ("python3", "-m", "mytool", "--flag")
    assert inv.env == {"AGENTOS_PROMPT": "do it", "AGENTOS_TASK_PACK": str(pack),
                       "AGENTOS_ALLOWED_PATHS": "src/**\ndocs/**"}
    assert executable_for(tool) == "python3"


@pytest.mark.parametrize(("spec", "needle"), [
    (ToolSpec("aider", "x", ("src/**",)), "unknown tool adapter 'aider'"),
    (ToolSpec("command", "x", ("src/**",)), "needs argv"),
    (ToolSpec("claude", "   ", ("src/**",)), "empty prompt"),
    (ToolSpec("claude", "x", ("src/(a)/**",)), "cannot express"),
    (ToolSpec("codex", "x", ("a,b",)), "cannot express"),
    (ToolSpec("opencode", "x", ("/etc/**",)), "relative to the worktree"),
    (ToolSpec("opencode", "x", ("../up/**",)), "relative to the worktree"),
    (ToolSpec("claude", "x", ("",)), "non-empty glob"),
])
def test_bad_tool_specs_are_agentos_errors(tmp_path: Path, spec: ToolSpec,
                                           needle: str) -> None:
    tool, paths = spec, spec.paths
    with pytest.raises(AgentosError, match=re.escape(needle)):
        build_invocation(tool, worktree=tmp_path, config_dir=tmp_path, allowed_paths=paths,
                         allow_shell=False, network=False)


def test_prompt_that_looks_like_a_flag_stays_a_prompt(tmp_path: Path) -> None:
    for adapter in REAL:
        inv = _build(adapter, tmp_path, prompt="--version please")
        assert inv.argv[-2:] == ("--", "--version please")


def test_version_argv_and_parse_version() -> None:
    assert version_argv("claude", "/opt/bin/claude") == ["/opt/bin/claude", "--version"]
    assert version_argv("command", "mytool") == ["mytool", "--version"]
    with pytest.raises(AgentosError):
        version_argv("nope", "x")
    assert parse_version(b"2.1.197 (Claude Code)\n") == "2.1.197 (Claude Code)"
    assert parse_version(b"WARNING: proceeding, even though...\ncodex-cli 0.169.0\n") \
        == "codex-cli 0.169.0"
    assert parse_version(b"\n\n") == "unknown"
    assert parse_version(b"\xff\xfe1.18.33\n").endswith("1.18.33")


# ------------------------------------------------------------------ claims


def _claims(adapter: str, sample: str) -> dict[str, object]:
    return parse_claims(adapter, (SAMPLES / sample).read_bytes())


def test_claude_success_claims() -> None:
    claims = _claims("claude", "claude_success.json")
    assert claims["session_id"] == "6f1c2b9e-4a57-4bd3-9d0e-2f3a8c1d7e55"
    assert claims["total_cost_usd"] == 0.04213 and claims["num_turns"] == 4
    assert claims["is_error"] is False and claims["permission_denials"] == []
    assert "parse_error" not in claims
    assert claims_failure("claude", claims) is None


def test_claude_real_not_logged_in_fails_although_subtype_success() -> None:
    claims = _claims("claude", "claude_real_not_logged_in.json")
    assert claims["subtype"] == "success" and claims["is_error"] is True
    reason = claims_failure("claude", claims)
    assert reason is not None and "is_error" in reason and "Not logged in" in reason


def test_claude_permission_denials_fail_the_step() -> None:
    claims = _claims("claude", "claude_denied.json")
    assert [d["tool_name"] for d in claims["permission_denials"]] == ["Edit", "Bash"]  # type: ignore[attr-defined]
    reason = claims_failure("claude", claims)
    assert reason is not None and "denied 2 tool call(s) (Bash, Edit)" in reason


def test_claude_error_subtype_fails() -> None:
    reason = claims_failure("claude", _claims("claude", "claude_max_turns.json"))
    assert reason is not None and "error_max_turns" in reason


def test_codex_success_claims() -> None:
    claims = _claims("codex", "codex_success.jsonl")
    assert claims["thread_id"] == "0199a213-81c0-7800-8aa1-bbab2a035a53"
    assert claims["usage"] == {"input_tokens": 24763, "cached_input_tokens": 24448,
                               "output_tokens": 122}
    assert claims["file_changes"] == [{"path": "/work/wt/src/util.py", "kind": "update",
                                       "status": "completed"}]
    assert claims["final_message"] == "Added slugify() to src/util.py."
    assert claims_failure("codex", claims) is None


def test_codex_turn_failed_fails() -> None:
    reason = claims_failure("codex", _claims("codex", "codex_failed.jsonl"))
    assert reason is not None and "turn failed" in reason and "401" in reason


def test_codex_real_offline_output_has_no_completed_turn() -> None:
    claims = _claims("codex", "codex_real_offline.jsonl")
    assert claims["thread_id"] and claims["turns_started"] == 1
    transient = claims["transient_errors"]
    assert isinstance(transient, list) and len(transient) == 5
    assert transient[-1].startswith("Falling back from WebSockets to HTTPS transport")
    assert claims["errors"] == [] and claims["item_errors"] == []
    reason = claims_failure("codex", claims)
    assert reason is not None and "did not complete a turn" in reason


def test_codex_transient_errors_then_completed_turn_pass() -> None:
    data = (SAMPLES / "codex_real_offline.jsonl").read_bytes() + \
        b'{"type":"turn.completed","usage":{"input_tokens":1,"cached_input_tokens":0,' \
        b'"output_tokens":1}}\n'
    assert claims_failure("codex", parse_claims("codex", data)) is None


def _codex_real(sample: str) -> dict[str, Any]:
    """Claims of a recorded codex 0.171.0 transcript (merged stdout+stderr), read with the
    merged output so codex's logged tool errors count."""
    data = (SAMPLES / sample).read_bytes()
    objects, _, _ = json_objects(data)
    return codex_adapter.read_claims(objects, data)


def test_codex_real_success_transcript_passes_with_usage() -> None:
    claims = _codex_real("codex_real_success.jsonl")
    assert claims["file_changes"] == [{"path": "/WORK/wt/hello.txt", "kind": "update",
                                       "status": "completed"}]
    assert claims["final_message"] == "Updated hello.txt."
    assert claims["usage_summary"] == {"model": None, "input_tokens": 240,
                                       "output_tokens": 60, "cost_usd": None, "turns": 1}
    assert claims["tool_errors"] == [] and codex_adapter.failure(claims) is None
    data = (SAMPLES / "codex_real_success.jsonl").read_bytes()
    asked = codex_adapter.read_claims(json_objects(data)[0], data, model="agentos-test-model")
    assert asked["usage_summary"]["model"] == "agentos-test-model"  # as asked: codex names none


def test_codex_real_failed_write_fails_the_step() -> None:
    """Exit 0 and a completed turn, but the file_change failed: the step fails."""
    claims = _codex_real("codex_real_write_failed.jsonl")
    assert claims["turns_completed"] == 1
    assert claims["failed_file_changes"] == [{"path": "/WORK/wt/docs", "kind": "add",
                                              "status": "failed"}]
    reason = codex_adapter.failure(claims)
    assert reason == "codex reported 1 file change(s) failed: add /WORK/wt/docs"


def test_codex_real_rejected_patch_is_only_in_the_log_and_fails() -> None:
    """A patch that does not verify leaves no trace in the JSONL, only codex's stderr
    log line; with the merged output it fails the step."""
    data = (SAMPLES / "codex_real_patch_rejected.jsonl").read_bytes()
    objects, _, _ = json_objects(data)
    assert codex_adapter.failure(codex_adapter.read_claims(objects)) is None  # JSON alone
    claims = codex_adapter.read_claims(objects, data)
    assert claims["tool_errors"] == [
        "apply_patch verification failed: Failed to find expected lines in "
        "/WORK/wt/hello.txt:"]
    reason = codex_adapter.failure(claims)
    assert reason is not None and "1 tool error(s): apply_patch verification failed" in reason


def test_codex_real_api_error_retries_then_fails_the_turn() -> None:
    claims = _codex_real("codex_real_api_error.jsonl")
    assert len(claims["transient_errors"]) == 5 and claims["turns_completed"] == 0
    assert claims["errors"] and "401 Unauthorized" in claims["errors"][-1]
    reason = codex_adapter.failure(claims)
    assert reason is not None and reason.startswith("codex turn failed: unexpected status 401")


@pytest.mark.parametrize(("event", "expected"), [
    ({"type": "error", "message": "stream error: boom"}, "1 error event(s): stream error"),
    ({"type": "item.completed", "item": {"id": "i", "type": "error", "message": "warn"}},
     "1 error item(s): warn"),
    ({"type": "item.completed", "item": {"id": "i", "type": "mcp_tool_call", "server": "s",
                                         "tool": "t", "status": "failed",
                                         "error": {"message": "mcp down"}}},
     "1 tool call(s) failed: mcp down"),
    ({"type": "item.completed", "item": {"id": "i", "type": "file_change",
                                         "status": "failed"}}, "1 file change(s) failed"),
])
def test_codex_reported_errors_fail_even_after_a_completed_turn(event: dict[str, Any],
                                                               expected: str) -> None:
    completed = {"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 1}}
    claims = codex_adapter.read_claims([{"type": "turn.started"}, event, completed])
    reason = codex_adapter.failure(claims)
    assert reason is not None and expected in reason


def test_opencode_success_claims() -> None:
    claims = _claims("opencode", "opencode_success.jsonl")
    assert claims["session_id"] == "ses_4a1b2c3d4e5fAbCdEfGhIjKl"
    assert claims["steps"] == 1 and claims["cost"] == 0.0123
    assert claims["tokens"] == {"input": 5120, "output": 87, "reasoning": 0}
    assert claims["tool_calls"] == [{"tool": "edit", "status": "completed",
                                     "title": "src/util.py"}]
    assert claims_failure("opencode", claims) is None


def test_opencode_auto_rejected_permission_fails() -> None:
    claims = _claims("opencode", "opencode_rejected.txt")
    assert claims["permission_requests"] == ["external_directory (/etc/*)"]
    assert claims["other_lines"] == 1
    assert claims["permission_rejections"]
    reason = claims_failure("opencode", claims)
    assert reason is not None and "asked for permission" in reason


def test_opencode_real_error_event_fails() -> None:
    claims = _claims("opencode", "opencode_real_unknown_model.jsonl")
    assert claims["session_id"] == "ses_def63038dffeYZHxxF7r1wRHG4"
    reason = claims_failure("opencode", claims)
    assert reason is not None and "Unexpected server error" in reason


@pytest.mark.parametrize("adapter", REAL)
@pytest.mark.parametrize("garbage", [
    b"", b"\x00\xff\xfe garbage \x80\n", b"{not json at all\n", b"[1, 2, 3]\n",
    b'{"type": "result", "is_error": fal', b"Segmentation fault (core dumped)\n",
    b"{" * 100000,
])
def test_garbage_never_raises_and_fails_the_step(adapter: str, garbage: bytes) -> None:
    claims = parse_claims(adapter, garbage)
    assert claims["adapter"] == adapter
    assert "parse_error" in claims
    assert claims_failure(adapter, claims) is not None


@pytest.mark.parametrize(("adapter", "sample"), [
    ("claude", "claude_success.json"), ("codex", "codex_success.jsonl"),
    ("opencode", "opencode_success.jsonl"),
])
def test_output_cut_mid_line_is_reported(adapter: str, sample: str) -> None:
    data = (SAMPLES / sample).read_bytes().rstrip(b"\n")
    cut = data[: len(data) - 20]
    claims = parse_claims(adapter, cut)
    assert "last line (output cut?)" in str(claims.get("parse_error"))
    assert claims_failure(adapter, claims) is not None


def test_claude_result_must_say_is_error_false_explicitly() -> None:
    claims = parse_claims("claude", b'{"type":"result","subtype":"success","result":"ok"}\n')
    assert claims_failure("claude", claims) is not None


def test_command_adapter_claims_never_fail() -> None:
    claims = parse_claims("command", b"anything at all")
    assert claims == {"adapter": "command", "output_bytes": 15}
    assert claims_failure("command", claims) is None
    with pytest.raises(AgentosError):
        parse_claims("nope", b"")
    with pytest.raises(AgentosError):
        claims_failure("nope", {})


# ------------------------------------------------------------------ fake CLIs, for real


def _git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    """A real git worktree (its .git is a file pointing into the main repo's git dir)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("x = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    wt = tmp_path / "wt"
    _git(repo, "worktree", "add", "-q", "-b", "agentos", str(wt))
    assert (wt / ".git").is_file()
    return wt


def _run_fake(adapter: str, tmp_path: Path, wt: Path, prompt: str, *,
              timeout: float = 20) -> tuple[subprocess.CompletedProcess[bytes], Invocation]:
    tool = ToolSpec(adapter=adapter, prompt=prompt, paths=("src/**",))
    config_dir = tmp_path / "cfg"
    inv = build_invocation(tool, worktree=wt, config_dir=config_dir, allowed_paths=["src/**"],
                           allow_shell=False, network=False)
    config_dir.mkdir(exist_ok=True)
    for name, text in inv.files.items():
        (config_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (config_dir / name).write_text(text)
    env = {"PATH": f"{FAKES}:{os.environ['PATH']}", "LANG": "C.UTF-8", **inv.env}
    proc = subprocess.run(list(inv.argv), cwd=wt, env=env, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    return proc, inv


def _status(wt: Path) -> str:
    return _git(wt, "status", "--porcelain", "--untracked-files=all")


@pytest.mark.parametrize("adapter", REAL)
def test_fake_edit_writes_allowed_path_and_claims_success(adapter: str, tmp_path: Path,
                                                          worktree: Path) -> None:
    proc, _ = _run_fake(adapter, tmp_path, worktree, "Please MODE=edit:path=src/new.py now")
    assert proc.returncode == 0, proc.stderr
    assert (worktree / "src" / "new.py").read_text() == f"written by fake {adapter}\n"
    claims = parse_claims(adapter, proc.stdout + proc.stderr)
    assert "parse_error" not in claims
    assert claims_failure(adapter, claims) is None


@pytest.mark.parametrize("adapter", REAL)
def test_fake_outside_writes_anyway_and_still_claims_success(adapter: str, tmp_path: Path,
                                                             worktree: Path) -> None:
    proc, _ = _run_fake(adapter, tmp_path, worktree, "MODE=outside:path=secrets/key.txt")
    assert proc.returncode == 0, proc.stderr
    assert (worktree / "secrets" / "key.txt").exists()
    # The claims look clean: only the executor's own diff check can catch this.
    assert claims_failure(adapter, parse_claims(adapter, proc.stdout)) is None


@pytest.mark.parametrize("adapter", REAL)
def test_fake_noop_changes_nothing(adapter: str, tmp_path: Path, worktree: Path) -> None:
    proc, _ = _run_fake(adapter, tmp_path, worktree, "MODE=noop")
    assert proc.returncode == 0, proc.stderr
    assert _status(worktree) == ""
    assert claims_failure(adapter, parse_claims(adapter, proc.stdout)) is None


@pytest.mark.parametrize("adapter", REAL)
def test_fake_hang_hangs(adapter: str, tmp_path: Path, worktree: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        _run_fake(adapter, tmp_path, worktree, "MODE=hang", timeout=1.0)
    output = caught.value.stdout or b""
    if adapter == "codex":
        assert b"thread.started" in output


@pytest.mark.parametrize("adapter", REAL)
def test_fake_gitdir_attacks_the_git_dir(adapter: str, tmp_path: Path,
                                         worktree: Path) -> None:
    proc, _ = _run_fake(adapter, tmp_path, worktree, "MODE=gitdir")
    assert proc.returncode == 0, proc.stderr
    hook = tmp_path / "repo" / ".git" / "hooks" / "pre-commit"
    # Unsandboxed here, so the writes land: the sandbox's read-only git dir must stop them.
    assert hook.exists() and b"hooks/pre-commit" in proc.stderr
    assert "hooksPath" in (tmp_path / "repo" / ".git" / "config").read_text()
    assert claims_failure(adapter, parse_claims(adapter, proc.stdout)) is None


@pytest.mark.parametrize(("adapter", "exit_code"), [("claude", 0), ("codex", 0),
                                                    ("opencode", 0)])
def test_fake_ask_is_a_failure_not_a_hang(adapter: str, exit_code: int, tmp_path: Path,
                                          worktree: Path) -> None:
    proc, _ = _run_fake(adapter, tmp_path, worktree, "MODE=ask", timeout=10)
    assert proc.returncode == exit_code
    reason = claims_failure(adapter, parse_claims(adapter, proc.stdout + proc.stderr))
    assert reason is not None
    assert _status(worktree) == ""


@pytest.mark.parametrize("adapter", REAL)
def test_fake_error_exits_nonzero_and_claims_fail(adapter: str, tmp_path: Path,
                                                  worktree: Path) -> None:
    proc, _ = _run_fake(adapter, tmp_path, worktree, "MODE=error")
    assert proc.returncode != 0
    assert claims_failure(adapter, parse_claims(adapter, proc.stdout)) is not None


def test_fake_opencode_applies_our_permission_rules(tmp_path: Path, worktree: Path) -> None:
    proc, _ = _run_fake("opencode", tmp_path, worktree, "MODE=edit:path=docs/x.md")
    assert proc.returncode == 0
    assert not (worktree / "docs" / "x.md").exists()
    reason = claims_failure("opencode", parse_claims("opencode", proc.stdout))
    assert reason is not None and "specified a rule" in reason


def test_fake_claude_needs_the_settings_file(tmp_path: Path, worktree: Path) -> None:
    tool = ToolSpec(adapter="claude", prompt="MODE=noop", paths=("src/**",))
    inv = build_invocation(tool, worktree=worktree, config_dir=tmp_path / "missing",
                           allowed_paths=["src/**"], allow_shell=False, network=False)
    proc = subprocess.run(list(inv.argv), cwd=worktree, check=False, capture_output=True,
                          env={"PATH": f"{FAKES}:{os.environ['PATH']}", **inv.env})
    assert proc.returncode == 1 and b"Settings file not found" in proc.stderr


def test_fake_codex_needs_codex_home(tmp_path: Path, worktree: Path) -> None:
    tool = ToolSpec(adapter="codex", prompt="MODE=noop", paths=("src/**",))
    inv = build_invocation(tool, worktree=worktree, config_dir=tmp_path / "missing",
                           allowed_paths=["src/**"], allow_shell=False, network=False)
    proc = subprocess.run(list(inv.argv), cwd=worktree, check=False, capture_output=True,
                          env={"PATH": f"{FAKES}:{os.environ['PATH']}", **inv.env})
    assert proc.returncode == 1 and b"CODEX_HOME" in proc.stderr


@pytest.mark.parametrize(("mode", "expected"), [
    ("failedit", "file change(s) failed: add"),
    ("rejected", "tool error(s): apply_patch verification failed"),
])
def test_fake_codex_failed_edits_fail_the_step(tmp_path: Path, worktree: Path, mode: str,
                                               expected: str) -> None:
    proc, _ = _run_fake("codex", tmp_path, worktree, f"MODE={mode}:path=src/x.py")
    assert proc.returncode == 0  # like the real codex: exit 0, a completed turn
    assert _status(worktree) == ""
    output = proc.stdout + proc.stderr
    objects, _, _ = json_objects(output)
    reason = codex_adapter.failure(codex_adapter.read_claims(objects, output))
    assert reason is not None and expected in reason


def test_fake_codex_with_a_provider_needs_its_catalog(tmp_path: Path, worktree: Path) -> None:
    tool = ToolSpec(adapter="codex", prompt="MODE=edit:path=src/y.py", paths=("src/**",))
    provider = Provider(base_url="http://127.0.0.1:9/v1", api_key_env="K", model="m1")
    config = tmp_path / "cfg"
    config.mkdir()
    inv = build_invocation(tool, worktree=worktree, config_dir=config,
                           allowed_paths=["src/**"], allow_shell=False, network=True,
                           provider=provider)
    env = {"PATH": f"{FAKES}:{os.environ['PATH']}", **inv.env}
    missing = subprocess.run(list(inv.argv), cwd=worktree, check=False, capture_output=True,
                             env=env, stdin=subprocess.DEVNULL)
    assert missing.returncode == 1 and b"model_catalog_json" in missing.stderr
    for name, text in inv.files.items():
        (config / name).write_text(text)
    proc = subprocess.run(list(inv.argv), cwd=worktree, check=False, capture_output=True,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    claims = parse_claims("codex", proc.stdout + proc.stderr)
    assert claims["item_errors"] == []  # the model is in the catalog: no metadata warning
    assert claims_failure("codex", claims) is None
    assert (worktree / "src" / "y.py").exists()


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["claude", "-p", "--output-format", "json", "--bogus", "--", "hi"], 1,
     b"unknown option '--bogus'"),
    (["claude", "-p", "--permission-mode", "askAlways", "--", "hi"], 1, b"is invalid"),
    (["codex", "exec", "--json", "--ask-for-approval", "never", "--", "hi"], 2,
     b"unexpected argument '--ask-for-approval'"),
    (["codex", "exec", "--json", "-c", "approval=never", "--", "hi"], 2,
     b"unknown config key"),
    (["codex", "exec", "--json", "--disable", "shell", "--", "hi"], 1, b"unknown feature"),
    (["opencode", "run", "--format", "json", "--yes", "--", "hi"], 1, b"Unknown argument"),
    (["opencode", "run", "--format", "xml", "--", "hi"], 1, b"Invalid values"),
])
def test_fakes_reject_wrong_flags_like_the_real_clis(tmp_path: Path, argv: list[str],
                                                     code: int, message: bytes) -> None:
    proc = subprocess.run([str(FAKES / argv[0]), *argv[1:]], cwd=tmp_path, check=False,
                          capture_output=True, env={"PATH": os.environ["PATH"]})
    assert proc.returncode == code
    assert message in proc.stderr


@pytest.mark.parametrize(("adapter", "shape"), [
    ("claude", r"^\d+\.\d+\.\d+ \(Claude Code\)$"),
    ("codex", r"^codex-cli \d+\.\d+\.\d+$"),
    ("opencode", r"^\d+\.\d+\.\d+$"),
])
def test_fake_versions_have_the_real_shape(adapter: str, shape: str) -> None:
    argv = version_argv(adapter, str(FAKES / adapter))
    proc = subprocess.run(argv, check=True, capture_output=True)
    assert re.match(shape, parse_version(proc.stdout))


def test_fakes_are_dependency_free_python_scripts() -> None:
    for name in REAL:
        path = FAKES / name
        assert os.access(path, os.X_OK)
        assert path.read_text().startswith("#!/usr/bin/env python3\n")
        imports = re.findall(r"^(?:import (\w+)|from (\w+) import)", path.read_text(), re.M)
        modules = {name for pair in imports for name in pair if name}
        assert modules and modules <= set(sys.stdlib_module_names), modules


# ------------------------------------------------------------------ the real CLIs


_HELP = {
    "claude": [["--help"]],
    "codex": [["--help"], ["exec", "--help"]],
    "opencode": [["--help"], ["run", "--help"]],
}


@pytest.mark.realcli
@pytest.mark.parametrize("adapter", REAL)
def test_real_cli_flags(adapter: str, tmp_path: Path) -> None:
    """Every flag the adapter builds appears in the installed CLI's own help."""
    exe = _real_cli(adapter)  # the pinned one (npm ci), else PATH; fails under CI=true
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home),
           "XDG_CONFIG_HOME": str(home / "xdg"), "NO_COLOR": "1", "LANG": "C.UTF-8"}
    help_text = ""
    for args in _HELP[adapter]:
        proc = subprocess.run([exe, *args], env=env, capture_output=True, timeout=60,
                              check=False, stdin=subprocess.DEVNULL)
        help_text += proc.stdout.decode("utf-8", "replace") + "\n"
        help_text += proc.stderr.decode("utf-8", "replace") + "\n"
    used: set[str] = set()
    for shell in (False, True):
        inv = _build(adapter, tmp_path, allow_shell=shell, model="m")
        used |= {arg for arg in inv.argv[: inv.argv.index("--")] if arg.startswith("-")}
    missing = sorted(flag for flag in used
                     if not re.search(r"(^|[\s,])" + re.escape(flag) + r"($|[\s,=<\[])",
                                      help_text, re.M))
    assert not missing, f"{adapter} --help does not list {missing}"
    version = subprocess.run(version_argv(adapter, exe), env=env, capture_output=True,
                             timeout=60, check=False)
    shapes = {"claude": r"\d+\.\d+\.\d+ \(Claude Code\)", "codex": r"codex-cli \d+\.\d+",
              "opencode": r"\d+\.\d+\.\d+"}
    assert re.match(shapes[adapter], parse_version(version.stdout))
    if adapter == "codex":
        features = subprocess.run([exe, "features", "list"], env=env, capture_output=True,
                                  timeout=60, check=False).stdout.decode()
        inv = _build(adapter, tmp_path)
        argv = list(inv.argv)
        disabled = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--disable"]
        for feature in disabled:
            assert re.search(rf"^{feature}\s", features, re.M), f"no codex feature {feature}"


def test_every_adapter_is_covered() -> None:
    assert ADAPTERS == ("claude", "codex", "opencode", "command")


# ------------------------------------------------------------------ real claude / opencode
# The pinned CLIs (package.json, `npm ci`) driven by the scripted model server on loopback,
# on the host (the sandboxed runs are the executor's tests). Never skipped under CI=true.

PROJECT = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-agentos-test-key-0123456789"
TEST_MODEL = "agentos-test-model"


def _real_cli(adapter: str) -> str:
    pinned = PROJECT / "node_modules" / ".bin" / adapter
    found = str(pinned) if pinned.is_file() else shutil.which(adapter)
    if found is None:
        message = (f"the real {adapter} CLI is not installed: run `npm ci` in {PROJECT} "
                   "(package-lock.json pins it)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run_real(adapter: str, tmp_path: Path, wt: Path, script: list[Any], *,
              paths: tuple[str, ...] = ("src/**",), protocol: str | None = None,
              host: str = "127.0.0.1", extra_env: dict[str, str] | None = None,
              ) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any], Any]:
    from tests.modelserver import ModelServer
    exe = _real_cli(adapter)
    config_dir = tmp_path / "cfg"
    config_dir.mkdir(parents=True)
    with ModelServer(script, default_text="A title") as server:
        root = f"http://{host}:{server.port}"
        base_url = root if adapter == "claude" else root + "/v1"
        provider = Provider(base_url=base_url, api_key_env="AGENTOS_TEST_SECRET",
                            model=TEST_MODEL, protocol=protocol)
        tool = ToolSpec(adapter=adapter, prompt="Make the change.", paths=paths)
        inv = build_invocation(tool, worktree=wt, config_dir=config_dir,
                               allowed_paths=list(paths), allow_shell=False, network=True,
                               provider=provider)
        for name, text in inv.files.items():
            (config_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (config_dir / name).write_text(text)
        assert set(inv.secret_env.values()) == {"AGENTOS_TEST_SECRET"}
        assert TEST_KEY not in json.dumps([inv.argv, inv.env, inv.files])
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **inv.env,
               **dict.fromkeys(inv.secret_env, TEST_KEY), **(extra_env or {})}
        proc = subprocess.run([exe, *inv.argv[1:]], cwd=wt, env=env, capture_output=True,
                              timeout=240, stdin=subprocess.DEVNULL, check=False)
        claims = parse_claims(adapter, proc.stdout + proc.stderr)
    return proc, claims, server


def _edit_script(wt: Path, adapter: str, *, old: str = "x = 1") -> list[Any]:
    from tests.modelserver import ToolCall, Turn
    target = str(wt / "src" / "app.py")
    if adapter == "claude":
        call = ToolCall("Edit", {"file_path": target, "old_string": old,
                                 "new_string": "x = 2"})
    else:
        call = ToolCall("edit", {"filePath": target, "oldString": old, "newString": "x = 2"})
    return [Turn(tool_calls=[call], usage={"input_tokens": 100, "output_tokens": 20}),
            Turn(text="Changed src/app.py.", usage={"input_tokens": 150, "output_tokens": 10})]


def _write_readme_script(wt: Path, adapter: str) -> list[Any]:
    from tests.modelserver import ToolCall, Turn
    name, args = (("Write", {"file_path": str(wt / "README.md"), "content": "pwned\n"})
                  if adapter == "claude" else
                  ("write", {"filePath": str(wt / "README.md"), "content": "pwned\n"}))
    return [Turn(tool_calls=[ToolCall(name, args)]), Turn(text="I could not write it.")]


@pytest.mark.realcli
@pytest.mark.parametrize("adapter", ["claude", "opencode"])
def test_real_cli_edits_through_the_scripted_provider(adapter: str, tmp_path: Path,
                                                      worktree: Path) -> None:
    script = _edit_script(worktree, adapter)
    proc, claims, server = _run_real(adapter, tmp_path, worktree, script)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (worktree / "src" / "app.py").read_text() == "x = 2\n"
    assert claims_failure(adapter, claims) is None, claims
    assert server.remaining == 0
    main = [r for r in server.requests if isinstance(r.body, dict) and r.body.get("tools")]
    assert len(main) == 2 and all(r.body["model"] == TEST_MODEL for r in main)
    if adapter == "claude":
        assert {r.path for r in server.requests} == {"/v1/messages"}
        assert all(r.headers.get("x-api-key") == TEST_KEY for r in server.requests)
        summary = claims["usage_summary"]
        cost = summary.pop("cost_usd")  # claude's own price estimate for an unknown model
        assert isinstance(cost, float) and cost > 0
        assert summary == {"model": TEST_MODEL, "input_tokens": 250, "output_tokens": 30,
                           "turns": 2}
        assert claims["tool_calls"][0]["tool"] == "Edit"
    else:
        assert {r.path for r in server.requests} == {"/v1/chat/completions"}
        assert all(r.headers.get("authorization") == f"Bearer {TEST_KEY}"
                   for r in server.requests)
        assert len(server.requests) == 3  # the title request carries no tools
        assert claims["usage_summary"] == {"model": None, "input_tokens": 250,
                                           "output_tokens": 30, "cost_usd": 0.0, "turns": 2}
        assert [c["tool"] for c in claims["tool_calls"]] == ["edit"]
        cfg = tmp_path / "cfg"
        assert not (cfg / ".npm").exists()  # the background plugin install never ran
        assert sorted(p.name for p in (cfg / "xdg/config/opencode/node_modules").iterdir()) \
            == [".agentos-no-install"]


@pytest.mark.realcli
@pytest.mark.parametrize("adapter", ["claude", "opencode"])
def test_real_cli_failed_edit_fails_the_step(adapter: str, tmp_path: Path,
                                             worktree: Path) -> None:
    script = _edit_script(worktree, adapter, old="NOT IN THE FILE")
    proc, claims, _ = _run_real(adapter, tmp_path, worktree, script)
    assert proc.returncode == 0  # the CLI itself calls it a success
    assert (worktree / "src" / "app.py").read_text() == "x = 1\n"
    reason = claims_failure(adapter, claims)
    assert reason is not None and "1 file edit(s) fail" in reason, claims


@pytest.mark.realcli
@pytest.mark.parametrize("adapter", ["claude", "opencode"])
def test_real_cli_write_outside_the_globs_is_denied(adapter: str, tmp_path: Path,
                                                    worktree: Path) -> None:
    proc, claims, _ = _run_real(adapter, tmp_path, worktree,
                                _write_readme_script(worktree, adapter))
    assert proc.returncode == 0
    assert not (worktree / "README.md").exists()
    reason = claims_failure(adapter, claims)
    assert reason is not None and ("denied" in reason or "refused permission" in reason)


@pytest.mark.realcli
@pytest.mark.parametrize("adapter", ["claude", "opencode"])
def test_real_cli_api_error_fails_the_step(adapter: str, tmp_path: Path,
                                           worktree: Path) -> None:
    from tests.modelserver import Turn
    script = [Turn(error="400 scripted refusal")] * 8  # claude re-sends a 400 with fewer betas
    proc, claims, _ = _run_real(adapter, tmp_path, worktree, script)
    assert proc.returncode == 1
    reason = claims_failure(adapter, claims)
    assert reason is not None and "scripted refusal" in reason, claims


@pytest.mark.realcli
@pytest.mark.parametrize("protocol", ["anthropic", "openai-responses"])
def test_real_opencode_speaks_every_provider_protocol(protocol: str, tmp_path: Path,
                                                      worktree: Path) -> None:
    script = _edit_script(worktree, "opencode")
    proc, claims, server = _run_real("opencode", tmp_path, worktree, script,
                                     protocol=protocol)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (worktree / "src" / "app.py").read_text() == "x = 2\n"
    assert claims_failure("opencode", claims) is None
    expected = "/v1/messages" if protocol == "anthropic" else "/v1/responses"
    assert {r.path for r in server.requests} == {expected} and server.remaining == 0


# ------------------------------------------------------------------ claude / opencode providers


CLAUDE_PROVIDER = Provider(base_url="https://gateway.example:8443/", api_key_env="ANTH_KEY",
                           model="claude-sonnet-4-5")


def test_claude_provider_sets_base_url_secret_and_model(tmp_path: Path) -> None:
    tool = ToolSpec(adapter="claude", prompt="Fix it", paths=("src/**",))
    inv = build_invocation(tool, worktree=tmp_path / "wt", config_dir=tmp_path / "cfg",
                           allowed_paths=["src/**"], allow_shell=False, network=True,
                           provider=CLAUDE_PROVIDER)
    assert inv.env["ANTHROPIC_BASE_URL"] == "https://gateway.example:8443"
    assert inv.secret_env == {"ANTHROPIC_API_KEY": "ANTH_KEY"}
    assert "ANTHROPIC_API_KEY" not in inv.env
    assert inv.argv[-4:] == ("--model", "claude-sonnet-4-5", "--", "Fix it")
    stepped = build_invocation(ToolSpec(adapter="claude", prompt="Fix it", paths=("src/**",),
                                        model="opus"),
                               worktree=tmp_path, config_dir=tmp_path, allowed_paths=["src/**"],
                               allow_shell=False, network=True, provider=CLAUDE_PROVIDER)
    assert stepped.argv[-4:-2] == ("--model", "opus")  # the step's model wins
    keyless = build_invocation(tool, worktree=tmp_path, config_dir=tmp_path,
                               allowed_paths=["src/**"], allow_shell=False, network=True,
                               provider=Provider(base_url="http://gw.test"))
    assert keyless.secret_env == {} and "--model" not in keyless.argv
    assert _build("claude", tmp_path).secret_env == {}


@pytest.mark.parametrize(("adapter", "provider", "needle"), [
    ("claude", Provider(base_url="http://gw", protocol="openai-chat"), "only the Anthropic"),
    ("claude", Provider(base_url="gw.example:80"), "not an http(s) URL"),
    ("opencode", Provider(base_url="http://gw/v1"), "needs a plain model id"),
    ("opencode", Provider(base_url="http://gw/v1", model="a/b"), "needs a plain model id"),
    ("opencode", Provider(base_url="http://gw/v1", model="m", protocol="grpc"),
     "unknown provider protocol 'grpc'"),
    ("opencode", Provider(base_url="ftp://gw", model="m"), "not an http(s) URL"),
])
def test_bad_providers_are_agentos_errors(adapter: str, provider: Provider, needle: str,
                                          tmp_path: Path) -> None:
    tool = ToolSpec(adapter=adapter, prompt="x", paths=("src/**",))
    with pytest.raises(AgentosError, match=re.escape(needle)):
        build_invocation(tool, worktree=tmp_path, config_dir=tmp_path,
                         allowed_paths=["src/**"], allow_shell=False, network=True,
                         provider=provider)


@pytest.mark.parametrize(("protocol", "sdk", "base_url"), [
    (None, "@ai-sdk/openai-compatible", "http://model.agentos.test:9/v1"),
    ("openai-chat", "@ai-sdk/openai-compatible", "http://model.agentos.test:9/v1"),
    ("openai-responses", "@ai-sdk/openai", "http://model.agentos.test:9/v1"),
    ("anthropic", "@ai-sdk/anthropic", "http://model.agentos.test:9/v1"),
])
def test_opencode_provider_config(protocol: str | None, sdk: str, base_url: str,
                                  tmp_path: Path) -> None:
    given = "http://model.agentos.test:9" + ("" if protocol == "anthropic" else "/v1/")
    provider = Provider(base_url=given, api_key_env="GW_KEY", model="gpt-x",
                        protocol=protocol)
    tool = ToolSpec(adapter="opencode", prompt="Fix it", paths=("src/**",))
    inv = build_invocation(tool, worktree=tmp_path / "wt", config_dir=tmp_path / "cfg",
                           allowed_paths=["src/**"], allow_shell=False, network=True,
                           provider=provider)
    config = json.loads(inv.env["OPENCODE_CONFIG_CONTENT"])
    assert config["provider"] == {"agentos": {
        "npm": sdk, "name": "agentos provider",
        "options": {"baseURL": base_url, "apiKey": "{env:AGENTOS_PROVIDER_API_KEY}"},
        "models": {"gpt-x": {"name": "gpt-x", "tool_call": True}}}}
    assert config["model"] == config["small_model"] == "agentos/gpt-x"
    assert inv.argv[-4:] == ("-m", "agentos/gpt-x", "--", "Fix it")
    assert inv.secret_env == {"AGENTOS_PROVIDER_API_KEY": "GW_KEY"}
    assert "GW_KEY" not in inv.env["OPENCODE_CONFIG_CONTENT"]
    for flag in ("OPENCODE_DISABLE_MODELS_FETCH", "OPENCODE_DISABLE_DEFAULT_PLUGINS",
                 "OPENCODE_DISABLE_EXTERNAL_SKILLS"):
        assert inv.env[flag] == "1"
    step_model = ToolSpec(adapter="opencode", prompt="Fix it", paths=("src/**",),
                          model="agentos/other")
    other = build_invocation(step_model, worktree=tmp_path, config_dir=tmp_path,
                             allowed_paths=["src/**"], allow_shell=False, network=True,
                             provider=provider)
    assert json.loads(other.env["OPENCODE_CONFIG_CONTENT"])["model"] == "agentos/other"


def test_opencode_config_dir_is_seeded_so_nothing_is_installed(tmp_path: Path) -> None:
    inv = _build("opencode", tmp_path)
    base = "xdg/config/opencode/"
    assert sorted(inv.files) == [base + "node_modules/.agentos-no-install",
                                 base + "package-lock.json", base + "package.json"]
    package = json.loads(inv.files[base + "package.json"])
    lock = json.loads(inv.files[base + "package-lock.json"])
    # npm.ts Npm.install: no reify when node_modules/ exists and the lock's root lists
    # every dependency of package.json (plus @opencode-ai/plugin, the one it adds).
    assert set(package["dependencies"]) == {"@opencode-ai/plugin"}
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    assert inv.env["XDG_CONFIG_HOME"] == str(tmp_path / "cfg" / "xdg" / "config")


def test_claude_and_opencode_mask_their_repository_config() -> None:
    assert masked_for("claude") == (".claude", ".mcp.json")
    assert masked_for("opencode") == (".opencode", "opencode.json", "opencode.jsonc")


# ------------------------------------------------------------------ recorded claude / opencode runs


def test_claude_real_stream_write_passes_with_usage() -> None:
    claims = _claims("claude", "claude_real_stream_write.jsonl")
    assert claims_failure("claude", claims) is None
    assert claims["tool_calls"] == [{"tool": "Write", "id": "call_000001"}]
    assert claims["tool_errors"] == [] and claims["model"] == "agentos-test-model"
    assert claims["usage_summary"] == {"model": "agentos-test-model", "input_tokens": 240,
                                       "output_tokens": 60, "cost_usd": 0.00216, "turns": 2}
    assert claims["other_lines"] == 0 and "parse_error" not in claims


def test_claude_real_stream_failed_edit_fails_although_success() -> None:
    claims = _claims("claude", "claude_real_stream_failed_edit.jsonl")
    assert claims["subtype"] == "success" and claims["is_error"] is False
    assert claims["failed_file_tools"] == [{
        "tool": "Edit", "error": "<tool_use_error>String to replace not found in file.\n"
                                 "String: NOT THERE</tool_use_error>"}]
    reason = claims_failure("claude", claims)
    assert reason is not None and reason.startswith("claude had 1 file edit(s) fail: Edit: ")


def test_claude_real_stream_denial_fails() -> None:
    claims = _claims("claude", "claude_real_stream_denied.jsonl")
    assert [d["tool_name"] for d in claims["permission_denials"]] == ["Write"]  # type: ignore[attr-defined]
    reason = claims_failure("claude", claims)
    assert reason is not None and "denied 1 tool call(s) (Write)" in reason


def test_claude_real_stream_api_error_fails() -> None:
    claims = _claims("claude", "claude_real_stream_api_error.jsonl")
    assert claims["api_error_status"] == 400 and claims["terminal_reason"] == "api_error"
    reason = claims_failure("claude", claims)
    assert reason == ("claude reported is_error (subtype 'success', API status 400): "
                      "API Error: 400 scripted failure: bad request")
    assert claims["usage_summary"]["input_tokens"] == 0  # type: ignore[index]


def test_opencode_real_edit_passes_with_usage() -> None:
    data = (SAMPLES / "opencode_real_edit.jsonl").read_bytes()
    claims = opencode_adapter.read_claims(json_objects(data)[0], data, model="agentos/m")
    assert opencode_adapter.failure({**claims, "json_objects": 6}) is None
    assert claims["usage_summary"] == {"model": "agentos/m", "input_tokens": 240,
                                       "output_tokens": 60, "cost_usd": 0.0, "turns": 2}
    assert [c["tool"] for c in claims["tool_calls"]] == ["edit"]


@pytest.mark.parametrize(("sample", "expected"), [
    ("opencode_real_failed_edit.jsonl",
     "opencode had 1 file edit(s) fail: edit: Could not find oldString in the file."),
    ("opencode_real_denied.jsonl",
     "opencode was refused permission for write: The user has specified a rule"),
    ("opencode_real_api_error.jsonl",
     "opencode reported an error: scripted failure: bad request"),
    ("opencode_real_no_connection.jsonl",
     "opencode reported an error: Cannot connect to API"),
    ("opencode_real_fsize_1mib.jsonl",
     "opencode reported an error: Failed to execute statement"),
])
def test_opencode_real_failures_fail_the_step(sample: str, expected: str) -> None:
    claims = _claims("opencode", sample)
    reason = claims_failure("opencode", claims)
    assert reason is not None and reason.startswith(expected), reason


def test_opencode_non_edit_tool_error_is_recorded_not_a_failure() -> None:
    data = (SAMPLES / "opencode_real_edit.jsonl").read_bytes()
    read_error = {"type": "tool_use", "part": {"type": "tool", "tool": "read", "state": {
        "status": "error", "error": "File not found: /w/nope.py"}}}
    objects = [*json_objects(data)[0], read_error]
    claims = opencode_adapter.read_claims(objects, data)
    assert claims["tool_errors"][-1] == {"tool": "read", "error": "File not found: /w/nope.py"}
    assert claims["failed_file_tools"] == []
    assert opencode_adapter.failure({**claims, "json_objects": len(objects)}) is None


@pytest.mark.parametrize("adapter", ["claude", "opencode"])
def test_fake_failed_edit_fails_the_step_like_the_real_cli(adapter: str, tmp_path: Path,
                                                           worktree: Path) -> None:
    proc, _ = _run_fake(adapter, tmp_path, worktree, "MODE=failedit:path=src/app.py")
    assert proc.returncode == 0
    assert (worktree / "src" / "app.py").read_text() == "x = 1\n"
    reason = claims_failure(adapter, parse_claims(adapter, proc.stdout + proc.stderr))
    assert reason is not None and "1 file edit(s) fail" in reason


class _ForwardProxy:
    """A logging forward proxy on loopback: absolute-URI requests for `host` go to the
    scripted server on 127.0.0.1 at the same port; anything else (CONNECT, other hosts)
    gets 403. Enough to see whether a CLI routes its API calls through HTTP(S)_PROXY."""

    def __init__(self, host: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit
        self.seen: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

            def _refuse(self) -> None:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_CONNECT(self) -> None:
                outer.seen.append(("CONNECT", self.path))
                self._refuse()

            def do_POST(self) -> None:
                outer.seen.append((self.command, self.path))
                target = urlsplit(self.path)
                if target.hostname != host or target.port is None:
                    self._refuse()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "proxy-connection")}
                path = target.path + (f"?{target.query}" if target.query else "")
                upstream.request(self.command, path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection",
                                            "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        return {name: self.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                            "https_proxy")}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.realcli
@pytest.mark.parametrize("adapter", ["claude", "opencode"])
def test_real_cli_sends_a_non_loopback_base_url_through_http_proxy(
        adapter: str, tmp_path: Path, worktree: Path) -> None:
    """How the executor can route a CLI: an http:// base URL with a name that resolves
    nowhere, reached only through HTTP_PROXY (absolute-URI requests, no CONNECT)."""
    host = "model.agentos.test"
    proxy = _ForwardProxy(host)
    try:
        proc, claims, server = _run_real(adapter, tmp_path, worktree,
                                         _edit_script(worktree, adapter), host=host,
                                         extra_env=proxy.env())
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert claims_failure(adapter, claims) is None
    assert (worktree / "src" / "app.py").read_text() == "x = 2\n"
    assert proxy.seen and len(proxy.seen) == len(server.requests)
    assert all(method == "POST" and target.startswith(f"http://{host}:{server.port}/v1/")
               for method, target in proxy.seen), proxy.seen


@pytest.mark.realcli
@pytest.mark.parametrize("adapter", ["claude", "opencode"])
def test_real_cli_proxies_loopback_too_unless_no_proxy(adapter: str, tmp_path: Path,
                                                       worktree: Path) -> None:
    """Neither CLI exempts loopback from HTTP_PROXY by itself; NO_PROXY does."""
    proxy = _ForwardProxy("model.agentos.test")  # refuses 127.0.0.1
    try:
        proc, claims, server = _run_real(adapter, tmp_path, worktree,
                                         _edit_script(worktree, adapter),
                                         extra_env=proxy.env())
    finally:
        proxy.close()
    assert proxy.seen and proxy.seen[0][1].startswith("http://127.0.0.1:")
    assert server.requests == [] and claims_failure(adapter, claims) is not None
    # The proxy is closed now: only a direct connection can succeed.
    proc, claims, server = _run_real(adapter, tmp_path / "again", worktree,
                                     _edit_script(worktree, adapter),
                                     extra_env={**proxy.env(), "NO_PROXY": "127.0.0.1",
                                                "no_proxy": "127.0.0.1"})
    assert proc.returncode == 0 and claims_failure(adapter, claims) is None
    assert server.remaining == 0
