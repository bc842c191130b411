"""Tool steps end to end: fake claude/codex/opencode CLIs on PATH, real bwrap, real git.

The fakes (tests/fakes/) take the real CLIs' argv and print their JSON; a MODE= directive
in the prompt picks the behaviour: edit (inside the paths), outside (anywhere), noop,
hang, gitdir (attack the git dir), ask (wants an approval), error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from runutil import PROJECT, doit, echo_listener, git, tape_events, write_policy, write_request

from agentos_tasks.tools import dispatch
from agentos_tasks.tools.packs import load_result_pack, load_task_pack

FAKES = PROJECT / "tests" / "fakes"
ADAPTERS = ("claude", "codex", "opencode")
TOOLS_POLICY = [{"adapter": "claude"}, {"adapter": "codex"}, {"adapter": "opencode"},
                {"adapter": "command"}]


def fake_path() -> dict[str, str]:
    return {"PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tool_run(tmp: Path, tool: dict[str, Any], *, step_seconds: int = 20,
             env: dict[str, str] | None = None, **policy: Any) -> Any:
    """One tool step `t1` in a fresh repo; returns doit's CompletedProcess."""
    limits = {"step_seconds": step_seconds, "max_file_bytes": 1 << 20,
              "max_changed_files": 50, "max_steps": 50, "output_bytes": 65536}
    write_policy(tmp / "policy.yaml", tools=policy.pop("tools", TOOLS_POLICY), limits=limits,
                 **policy)
    write_request(tmp, [{"id": "t1", "message": "t1: tool step", "tool": tool}])
    return doit(tmp, "run", "request=req.yaml", env=fake_path() if env is None else env)


def agent(adapter: str, mode: str, paths: tuple[str, ...] = ("src/**",)) -> dict[str, Any]:
    return {"adapter": adapter, "prompt": f"Please do it. MODE={mode}", "paths": list(paths)}


def run_dir(tmp: Path) -> Path:
    return tmp / "out" / "r1"


def pack(tmp: Path) -> dict[str, Any]:
    return load_result_pack(run_dir(tmp) / "tools" / "t1" / "tool_result_pack.json")


def failed_event(tmp: Path) -> dict[str, Any]:
    failed = [e for e in tape_events(run_dir(tmp)) if e["event"] == "step_failed"]
    assert failed, "no step_failed on the tape"
    return failed[-1]


def assert_nothing_landed(tmp: Path) -> None:
    repo = tmp / "repo"
    assert git(repo, "rev-list", "--count", "main") == "1"  # only the initial commit
    assert not (run_dir(tmp) / "steps" / "t1.json").exists()
    assert not (run_dir(tmp) / "patches" / "t1.patch").exists()
    assert git(repo, "status", "--porcelain") == ""


# ------------------------------------------------------------------ landing edits


def test_fake_claude_edit_of_an_allowed_path_lands_with_packs_and_claims(tmp_path: Path) -> None:
    proc = tool_run(tmp_path, agent("claude", "edit:path=src/app.py:content=hello"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    repo, rd = tmp_path / "repo", run_dir(tmp_path)
    assert git(repo, "show", "main:src/app.py") == "hello"
    assert git(repo, "log", "-1", "--format=%s", "main") == "t1: tool step"
    result = pack(tmp_path)
    task = load_task_pack(rd / "tools" / "t1" / "tool_task_pack.json")
    manifest = json.loads((rd / "steps" / "t1.json").read_text())
    end = [e for e in tape_events(rd) if e["event"] == "step_end"][-1]
    pack_sha = sha256(rd / "tools" / "t1" / "tool_result_pack.json")
    # the pack's digest is what the manifest and the tape recorded
    assert manifest["tool_result_pack_sha256"] == end["tool_result_pack_sha256"] == pack_sha
    assert task["base_commit"] == manifest["parent"] == git(repo, "rev-parse", "main~1")
    assert task["allowed_paths"] == ["src/**"] and task["adapter"] == "claude"
    assert result["task_pack_sha256"] == sha256(rd / "tools" / "t1" / "tool_task_pack.json")
    assert result["tool"]["name"] == "claude"
    assert result["tool"]["version"] == "2.1.332 (Claude Code)"
    assert result["tool"]["path"] == str(FAKES / "claude")
    assert result["argv"][:3] == ["claude", "-p", "--output-format"]
    assert result["argv"][-1] == "Please do it. MODE=edit:path=src/app.py:content=hello"
    assert result["claims"]["session_id"] and result["claims"]["subtype"] == "success"
    assert result["claims"]["total_cost_usd"] == 0.0123
    assert result["exit_code"] == 0 and result["timed_out"] is False
    assert result["policy_check"] == {"decision": "allow", "rule_id": "allow"}
    assert [f["path"] for f in result["diff"]["files"]] == ["src/app.py"]
    assert result["diff"]["files"][0]["sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    assert result["diff"]["patch_sha256"] == sha256(rd / "patches" / "t1.patch")
    transcript = rd / "tools" / "t1" / "transcript.jsonl"
    assert result["transcript_sha256"] == sha256(transcript) == manifest["log_sha256"]
    assert (rd / "logs" / "t1.out").read_bytes() == transcript.read_bytes()
    assert manifest["tool"]["version"] == result["tool"]["version"]
    assert manifest["sandbox"]["backend"] == "bwrap"
    assert manifest["sandbox"]["network"] is None  # the policy's tools entry has no network
    assert "--unshare-all" in manifest["sandbox"]["wrapper_argv"]
    assert "--share-net" not in manifest["sandbox"]["wrapper_argv"]
    # the CLI's settings file is evidence; whatever the CLI wrote to its home is not
    config = rd / "tools" / "t1" / "config"
    assert sorted(p.name for p in config.iterdir()) == ["agentos-claude-settings.json"]
    gates = doit(tmp_path, "gates", "request=req.yaml")
    report = json.loads((rd / "reports" / "gates.json").read_text())
    tl = {g["id"]: g["status"] for g in report["gates"] if g["id"].startswith("TL-")}
    assert tl == {"TL-A": "PASS", "TL-B": "PASS", "TL-C": "PASS", "TL-D": "PASS",
                  "TL-E": "PASS", "TL-F": "NOT_APPLICABLE"}, gates.stdout


@pytest.mark.parametrize("adapter", ["codex", "opencode"])
def test_fake_codex_and_opencode_edits_land(tmp_path: Path, adapter: str) -> None:
    proc = tool_run(tmp_path, agent(adapter, f"edit:path=src/{adapter}.txt:content=ok"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git(tmp_path / "repo", "show", f"main:src/{adapter}.txt") == "ok"
    result = pack(tmp_path)
    assert result["tool"]["name"] == adapter and result["tool"]["version"] != "unknown"
    assert [f["path"] for f in result["diff"]["files"]] == [f"src/{adapter}.txt"]
    if adapter == "codex":
        assert result["claims"]["thread_id"] and result["claims"]["turns_completed"] == 1
        assert result["argv"][:3] == ["codex", "exec", "--json"]
    else:
        assert result["claims"]["session_id"] and result["claims"]["steps"] == 1
        assert result["argv"][:4] == ["opencode", "run", "--format", "json"]


# ------------------------------------------------------------------ hostile tools


def test_claude_writing_outside_its_paths_lands_nothing(tmp_path: Path) -> None:
    proc = tool_run(tmp_path, agent("claude", "outside:path=other/evil.txt"))
    assert proc.returncode != 0
    assert "tool.paths" in proc.stdout + proc.stderr
    assert_nothing_landed(tmp_path)
    assert failed_event(tmp_path)["rule_id"] == "tool.paths"
    result = pack(tmp_path)  # the evidence of the refusal exists
    assert result["claims"]["subtype"] == "success"  # the tool claimed success ...
    assert result["policy_check"] == {"decision": "deny", "rule_id": "tool.paths"}
    assert [f["path"] for f in result["diff"]["files"]] == ["other/evil.txt"]  # ... we saw this
    assert result["diff"]["patch_sha256"] is None and "tool.paths" in result["failure"]


def test_claude_writing_a_denied_path_inside_its_globs_lands_nothing(tmp_path: Path) -> None:
    proc = tool_run(tmp_path, agent("claude", "edit:path=src/.env", paths=("src/**",)))
    assert proc.returncode != 0
    assert_nothing_landed(tmp_path)
    assert failed_event(tmp_path)["rule_id"].startswith("paths.deny")


def test_claude_writing_outside_the_worktree_reaches_nothing_on_the_host(
        tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    proc = tool_run(tmp_path, agent("claude", f"outside:path={target}"))
    assert not target.exists()
    assert not (tmp_path / "out" / "escaped.txt").exists()
    # the write went to the sandbox's private tmpfs (or failed): nothing to commit
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((run_dir(tmp_path) / "steps" / "t1.json").read_text())
    assert manifest["status"] == "unchanged" and manifest["files"] == []


def test_claude_claiming_success_but_changing_nothing_is_unchanged(tmp_path: Path) -> None:
    proc = tool_run(tmp_path, agent("claude", "noop"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((run_dir(tmp_path) / "steps" / "t1.json").read_text())
    assert manifest["status"] == "unchanged" and manifest["commit"] is None
    assert not (run_dir(tmp_path) / "patches" / "t1.patch").exists()
    assert git(tmp_path / "repo", "rev-list", "--count", "main") == "1"
    result = pack(tmp_path)
    assert result["diff"] == {"files": [], "patch_sha256": None}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hanging_tool_is_killed_at_step_seconds(tmp_path: Path, adapter: str) -> None:
    started = time.monotonic()
    proc = tool_run(tmp_path, agent(adapter, "hang"), step_seconds=2)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "timed out after 2s" in proc.stdout + proc.stderr
    assert elapsed < 15
    assert_nothing_landed(tmp_path)
    result = pack(tmp_path)
    assert result["timed_out"] is True and result["exit_code"] < 0
    assert "timed out" in result["failure"]


def test_tool_attacking_the_git_dir_changes_nothing_there(tmp_path: Path) -> None:
    proc = tool_run(tmp_path, agent("claude", "gitdir"))
    repo = tmp_path / "repo"
    transcript = (run_dir(tmp_path) / "tools" / "t1" / "transcript.jsonl").read_text()
    assert "Read-only file system" in transcript  # it tried, the sandbox refused
    assert "hooksPath" not in (repo / ".git" / "config").read_text()
    assert "hooksPath" not in (run_dir(tmp_path) / ".state" / "repo.git" / "config").read_text()
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert not (repo / ".git" / "worktrees" / "worktree" / "config").exists()
    assert proc.returncode == 0  # nothing changed: an unchanged step
    assert git(repo, "rev-list", "--count", "main") == "1"


def test_unsandboxed_tool_attacking_the_git_dir_fails_and_is_undone(tmp_path: Path) -> None:
    """Backend none (isolation: best-effort): the writes succeed, the dispatcher sees them,
    puts the files back and fails the step (paths.git)."""
    env = {**fake_path(), "AGENTOS_SANDBOX": "none"}
    proc = tool_run(tmp_path, agent("claude", "gitdir"), env=env, isolation="best-effort")
    repo = tmp_path / "repo"
    private = run_dir(tmp_path) / ".state" / "repo.git"  # the worktree's own git dir
    transcript = (run_dir(tmp_path) / "tools" / "t1" / "transcript.jsonl").read_text()
    assert f"fake: wrote {private}/config" in transcript  # the attack really happened
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert failed_event(tmp_path)["rule_id"] == "paths.git"
    assert "hooksPath" not in (repo / ".git" / "config").read_text()
    assert "fsmonitor" not in (private / "config").read_text()  # put back
    assert not (repo / ".git" / "worktrees" / "worktree" / "config").exists()
    assert_nothing_landed(tmp_path)
    assert pack(tmp_path)["policy_check"] == {"decision": "deny", "rule_id": "paths.git"}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_tool_waiting_for_an_approval_fails_instead_of_hanging(tmp_path: Path,
                                                               adapter: str) -> None:
    started = time.monotonic()
    proc = tool_run(tmp_path, agent(adapter, "ask"), step_seconds=20)
    assert time.monotonic() - started < 15
    assert proc.returncode != 0, proc.stdout + proc.stderr
    reason = failed_event(tmp_path)["reason"]
    assert any(word in reason for word in ("denied", "asked", "permission")), reason
    assert_nothing_landed(tmp_path)
    assert pack(tmp_path)["failure"] == reason


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_tool_reporting_an_error_fails_the_step(tmp_path: Path, adapter: str) -> None:
    proc = tool_run(tmp_path, agent(adapter, "error"))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "exited 1" in failed_event(tmp_path)["reason"]
    assert_nothing_landed(tmp_path)


def test_missing_cli_is_a_clear_step_failure(tmp_path: Path) -> None:
    proc = tool_run(tmp_path, agent("claude", "edit"), env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert "executable 'claude' not found on the step's PATH" in proc.stdout + proc.stderr
    assert_nothing_landed(tmp_path)


# ------------------------------------------------------------------ network


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on the host's loopback that accepts connections."""
    with echo_listener() as port:
        yield port


CONNECT = """\
import os, socket, sys
port = int(sys.argv[1])
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    direct = "connected"
except OSError:
    direct = "refused"
via = "no-proxy"
proxy = os.environ.get("HTTPS_PROXY", "")
if proxy:
    host, _, pport = proxy.removeprefix("http://").rstrip("/").rpartition(":")
    with socket.create_connection((host, int(pport)), timeout=5) as conn:
        conn.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n".encode())
        via = conn.recv(64).split(b" ")[1].decode()
os.makedirs("src", exist_ok=True)
open("src/net.txt", "w").write(direct + " " + via + "\\n")
"""


@pytest.mark.parametrize("network", [False, True])
def test_tool_network_only_when_the_policy_tools_entry_allows_it(
        tmp_path: Path, listener: int, network: bool) -> None:
    """Never the host's network: a direct connect to a host-loopback listener is refused
    either way; with a grant that names the listener's literal address, the tool reaches
    it through the allowlist proxy (CONNECT 200), and the ledger records it."""
    tool = {"adapter": "command", "prompt": "connect", "paths": ["src/**"],
            "argv": ["python3", "-c", CONNECT, str(listener)]}
    grant = {"allow": [f"127.0.0.1:{listener}"]}
    tools = [{"adapter": "command", "network": grant}] if network else [{"adapter": "command"}]
    proc = tool_run(tmp_path, tool, tools=tools)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    content = git(tmp_path / "repo", "show", "main:src/net.txt")
    assert content == ("refused 200" if network else "refused no-proxy")
    manifest = json.loads((run_dir(tmp_path) / "steps" / "t1.json").read_text())
    ledger = run_dir(tmp_path) / "network" / "t1.jsonl"
    if not network:
        assert manifest["sandbox"]["network"] is None and not ledger.exists()
        return
    assert manifest["sandbox"]["network"] == {"rule_id": "tools[0].network",
                                              "allow": grant["allow"], "resolve": {},
                                              "unrestricted": False}
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(e["host"], e["port"], e["decision"], e["rule"]) for e in entries] == \
        [("127.0.0.1", listener, "allow", "tools[0].network.allow[0]")]
    assert manifest["sandbox"]["ledger"]["sha256"] == sha256(ledger)
    assert manifest["sandbox"]["ledger"]["entries"] == 1


def test_command_adapter_gets_prompt_paths_and_task_pack(tmp_path: Path) -> None:
    code = ("import os, json; t = json.load(open(os.environ['AGENTOS_TASK_PACK']));"
            "os.makedirs('src', exist_ok=True);"
            "open('src/seen.txt', 'w').write(os.environ['AGENTOS_PROMPT'] + '|' +"
            " os.environ['AGENTOS_ALLOWED_PATHS'] + '|' + t['step'])")
    proc = tool_run(tmp_path, {"adapter": "command", "prompt": "hi there", "paths": ["src/**"],
                               "argv": ["python3", "-c", code]})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git(tmp_path / "repo", "show", "main:src/seen.txt") == "hi there|src/**|t1"
    result = pack(tmp_path)
    assert result["tool"]["name"] == "python3" and result["tool"]["version"].startswith("Python")
    assert result["claims"] == {"adapter": "command", "output_bytes": 0}


# ------------------------------------------------------------------ the git-dir watch


def watch_ctx(tmp: Path) -> tuple[Any, Path, Path]:
    """A repository with a linked worktree and the two things dispatch reads of a run
    context (the worktree path, the base record); returns (ctx, common dir, worktree)."""
    repo = tmp / "repo"
    git_env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x",
               "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"}
    for argv in (["init", "-q", "-b", "main", str(repo)],
                 ["-C", str(repo), "commit", "-q", "--allow-empty", "-m", "init"],
                 ["-C", str(repo), "worktree", "add", "-q", "--detach", str(tmp / "wt")]):
        subprocess.run(["git", *argv], env=git_env, check=True)
    ctx = SimpleNamespace(paths=SimpleNamespace(worktree=tmp / "wt"),
                          base=lambda: {"git_common_dir": str(repo / ".git")})
    return ctx, repo / ".git", tmp / "wt"


def in_thread(action: Any, seconds: float = 5.0) -> list[Any]:
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(action()), daemon=True)
    thread.start()
    thread.join(seconds)
    return done


def test_git_dir_watch_never_opens_fifos_sockets_or_links(tmp_path: Path) -> None:
    ctx, common, _wt = watch_ctx(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("SECRET-G\n")
    hooks = common / "hooks"
    os.mkfifo(hooks / "pre-commit")
    os.mkfifo(common / "info" / "exclude-fifo")
    (hooks / "post-commit").symlink_to(secret)
    (hooks / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(hooks / "sock"))
    try:
        done = in_thread(lambda: dispatch.snapshot_git_dirs(ctx))
    finally:
        server.close()
        for fifo in (hooks / "pre-commit", common / "info" / "exclude-fifo"):
            if not done:  # unblock a reader so the thread ends
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert done, "the snapshot hung on a FIFO"
    entries = done[0].entries
    assert entries[hooks / "pre-commit"].kind == "fifo"
    assert entries[hooks / "sock"].kind == "socket"
    assert entries[hooks / "post-commit"] == dispatch.GitEntryState(
        "symlink", entries[hooks / "post-commit"].mode, os.fsencode(secret))
    assert b"SECRET-G" not in repr(entries).encode()
    assert not any(p.is_relative_to(tmp_path / "secret") or p.parent == tmp_path
                   for p in entries)  # the linked dir was not walked
    assert entries[common / "config"] is not None and entries[common / "config"].data


def test_git_dir_restore_puts_back_and_never_writes_through_a_link(tmp_path: Path) -> None:
    ctx, common, wt = watch_ctx(tmp_path)
    hooks = common / "hooks"
    (hooks / "pre-push").write_text("#!/bin/sh\nexit 0\n")
    (hooks / "pre-push").chmod(0o755)
    os.mkfifo(hooks / "fifo")
    config_before = (common / "config").read_bytes()
    before = dispatch.snapshot_git_dirs(ctx)
    # what an unsandboxed tool might do
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(hooks)
    hooks.symlink_to(outside, target_is_directory=True)
    (common / "config").write_text("[core]\n\thooksPath = /tmp/evil\n")
    (common / "info" / "new").write_text("x")
    (wt / ".git").write_text(f"gitdir: {tmp_path}\n")  # steer the watch to other files
    (tmp_path / "HEAD").write_text("not a git file\n")
    changed = dispatch.restore_git_dirs(ctx, before)
    assert str(common / "config") in changed and str(hooks) in changed
    assert (common / "config").read_bytes() == config_before
    assert hooks.is_dir() and not hooks.is_symlink()
    assert (hooks / "pre-push").read_text() == "#!/bin/sh\nexit 0\n"
    assert (hooks / "pre-push").stat().st_mode & 0o777 == 0o755
    assert stat.S_ISFIFO((hooks / "fifo").lstat().st_mode)
    assert list(outside.iterdir()) == []  # nothing written through the planted link
    assert not (common / "info" / "new").exists()
    assert (tmp_path / "HEAD").read_text() == "not a git file\n"  # outside the watched dirs
    assert dispatch.restore_git_dirs(ctx, before) == []  # all of it is as it was


def test_a_symlinked_repository_tool_config_is_a_clear_refusal(tmp_path: Path) -> None:
    """Review finding: `.opencode -> evil/` (a plugin dir behind a link) crashed the step
    as an internal error; it is refused, naming the entry, and nothing runs."""
    repo = tmp_path / "repo"
    (repo / "evil" / "plugin").mkdir(parents=True)
    (repo / "evil" / "plugin" / "x.js").write_text("require('fs').writeFileSync('ran','x')\n")
    (repo / ".opencode").symlink_to("evil")
    git(repo.parent, "init", "-q", "-b", "main", str(repo))
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "-m", "init")
    proc = tool_run(tmp_path, {**agent("opencode", "edit:path=src/a.txt:content=x"),
                               "model": "m"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "internal error" not in out and "Traceback" not in out, out
    assert ".opencode" in out and "plain file or directory" in out, out
    assert not (tmp_path / "out" / "r1" / "worktree" / "ran").exists()
