"""Policy: loading (errors at file:line), glob semantics, every decision and its rule id."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest
import voluptuous_openapi

import agentos_tasks
from agentos_tasks.errors import EXIT_POLICY, AgentosError, PolicyViolation
from agentos_tasks.model import Author, Change, Request, Step, ToolSpec
from agentos_tasks.policy import (
    POLICY_SCHEMA,
    Decision,
    Policy,
    check_changes,
    check_request,
    decide_argv,
    decide_executable,
    decide_path,
    decide_tool,
    default_policy_path,
    load_policy,
    needs_approval,
    normalize_path,
    safe_target,
    step_env,
    step_network,
    tool_network,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICIES = REPO_ROOT / "policies"

BASE = """\
version: 1
id: test-policy
operations: [write, delete, patch, run, tool]
paths:
  allow: ["docs/**", "src/**", "tests/**", {id: top-md, glob: "/*.md"}]
  deny: [".git/**", "**/.env", "secrets/**"]
  ask: ["src/generated/**"]
commands: [{id: pytest, argv: [python, -m, pytest]}, {argv: [ruff, check]}]
tools: [{adapter: codex, network: {allow: ["api.openai.com:443"]}, review: true}, {adapter: command, argv: [fake-cli]}]
network: false
isolation: required
limits: {max_file_bytes: 100, max_changed_files: 3, max_steps: 4}
env: [PATH, LANG]
require_approval: [patch]
"""


def write_policy(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load_policy(write_policy(tmp_path, BASE))


def step(op: str, index: int = 0, **kw: object) -> Step:
    return Step(id=f"step_{index:02d}", index=index, op=op, message=op, line=index + 1,  # type: ignore[arg-type]
                **kw)  # type: ignore[arg-type]


def request(*steps: Step) -> Request:
    return Request(source=Path("/r.yaml"), sha256="0" * 64, version=1, id="req", repo=Path("/repo"),
                   init_repo=False, base=None, branch=None, policy=None, author=Author(),
                   steps=tuple(steps))


# --------------------------------------------------------------------------- loading

def test_load_fills_defaults_and_hashes_raw_bytes(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "version: 1\nid: minimal\n")
    loaded = load_policy(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.source == path.resolve()
    assert loaded.operations == () and loaded.allow == () and loaded.commands == ()
    assert loaded.isolation == "required" and loaded.network is None
    assert loaded.env == ("PATH", "LANG")
    assert loaded.limits.step_seconds == 120 and loaded.limits.max_steps == 500
    assert loaded.limits.memory_bytes == 4294967296 and loaded.limits.max_open_files == 1024
    # No rule means deny.
    assert decide_path(loaded, "docs/a.md").rule_id == "paths.default"
    assert check_request(loaded, request(step("write", path="docs/a.md", content=b"x"))) \
        .rule_id == "operations"


def test_load_json_policy(tmp_path: Path) -> None:
    data = {"version": 1, "id": "json-pol", "operations": ["write"],
            "paths": {"allow": ["docs/**"]}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data, indent=2))
    loaded = load_policy(path)
    assert decide_path(loaded, "docs/x.md").allowed


def test_load_error_json_unknown_key_has_line(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{\n  "version": 1,\n  "id": "j",\n  "netwrk": true\n}\n')
    with pytest.raises(AgentosError) as info:
        load_policy(path)
    assert info.value.where == f"{path}:4"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("version: 1\nid: p\npaths:\n  allow: [docs/**]\n  alow: [src/**]\n", 5,
         "unknown key 'alow'"),
        ("version: 1\nid: p\nisolation: maybe\n", 3, "isolation"),
        ("version: 1\nid: p\npaths:\n  deny:\n    - secrets/**\n    - 42\n", 6, "expected str"),
        ("version: 1\nid: p\npaths:\n  deny:\n    - {glob: [a]}\n", 5, "paths.deny.0.glob"),
        ("version: 1\nid: p\nnetwork: false\nnetwork: true\n", 4, "duplicate key 'network'"),
        ("version: 1\nid: p\npaths: {allow: [docs/**\n", 4, "invalid YAML"),
        ("version: 2\nid: p\n", 1, "only version 1"),
        ("version: 1\nid: p\nlimits:\n  max_steps: true\n", 4, "boolean"),
        ("version: 1\nid: p\nlimits:\n  step_seconds: 0\n", 4, "step_seconds"),
        ("version: 1\nid: p\noperations: [write, shell]\n", 3, "operations"),
        ("version: 1\nid: p\ncommands:\n  - argv: \"python -m pytest\"\n", 4, "argv"),
        ("version: 1\nid: p\ncommands:\n  - argv: []\n", 4, "at least one token"),
        ("version: 1\nid: p\ntools:\n  - {adapter: claud}\n", 4, "adapter"),
        ("version: 1\nid: p\nenv: [PATH, 'LD PRELOAD']\n", 3, "environment variable"),
        ("version: 1\nid: p\nmystery: 1\n", 3, "unknown key 'mystery'"),
    ],
    ids=["unknown-key", "bad-isolation", "glob-type", "glob-type-in-rule", "duplicate-key",
         "yaml-syntax", "version", "bool-limit", "zero-seconds", "unknown-op", "shell-string",
         "empty-argv", "unknown-adapter", "env-name", "top-unknown-key"],
)
def test_load_errors_name_file_and_line(tmp_path: Path, text: str, line: int,
                                        needle: str) -> None:
    path = write_policy(tmp_path, text)
    with pytest.raises(AgentosError) as info:
        load_policy(path)
    assert info.value.where == f"{path}:{line}", info.value.render()
    assert needle in info.value.message, info.value.render()


@pytest.mark.parametrize(
    ("glob", "needle"),
    [("!docs/**", "negated"), ("#docs", "comment"), ("../x/**", "'..'"), ("/", "nothing"),
     ("a\\", "invalid glob")],
)
def test_bad_globs_are_refused_at_their_line(tmp_path: Path, glob: str, needle: str) -> None:
    text = f"version: 1\nid: p\npaths:\n  allow:\n    - docs/**\n    - {json.dumps(glob)}\n"
    path = write_policy(tmp_path, text)
    with pytest.raises(AgentosError) as info:
        load_policy(path)
    assert info.value.where == f"{path}:6"
    assert needle in info.value.message


def test_rule_id_errors(tmp_path: Path) -> None:
    dup = write_policy(tmp_path, """\
        version: 1
        id: p
        paths:
          allow: [{id: same, glob: "docs/**"}]
          deny: [{id: same, glob: "x"}]
        commands:
          - {id: same, argv: [ruff]}
        """)
    with pytest.raises(AgentosError) as info:
        load_policy(dup)
    assert info.value.where == f"{dup}:5" and "duplicate rule id 'same'" in info.value.message
    assert f"{dup}:4" in info.value.message  # names the first one too

    reserved = write_policy(tmp_path, "version: 1\nid: p\npaths:\n  allow:\n"
                                      "    - {id: paths.default, glob: 'x'}\n", "r.yaml")
    with pytest.raises(AgentosError, match="reserved") as info:
        load_policy(reserved)
    assert info.value.where == f"{reserved}:5"


def test_tool_rule_errors(tmp_path: Path) -> None:
    twice = write_policy(tmp_path, "version: 1\nid: p\ntools:\n  - {adapter: codex}\n"
                                   "  - {adapter: codex, network: {allow: [\"api.openai.com:443\"]}}\n")
    with pytest.raises(AgentosError, match="listed twice") as info:
        load_policy(twice)
    assert info.value.where == f"{twice}:5"
    argv = write_policy(tmp_path, "version: 1\nid: p\ntools:\n  - adapter: claude\n"
                                  "    argv: [claude]\n", "a.yaml")
    with pytest.raises(AgentosError, match="only for the 'command' adapter") as info:
        load_policy(argv)
    assert info.value.where == f"{argv}:5"


def test_missing_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AgentosError, match="policy file not found"):
        load_policy(tmp_path / "nope.yaml")


def test_schema_is_exported_and_convertible() -> None:
    schema = voluptuous_openapi.convert(POLICY_SCHEMA)
    assert set(schema["properties"]) >= {"version", "id", "paths", "commands", "limits"}
    assert schema["properties"]["isolation"]["enum"] == ["required", "best-effort"]


# --------------------------------------------------------------------------- glob semantics

@pytest.mark.parametrize(
    ("glob", "path", "expected"),
    [
        ("docs/**", "docs/a.md", True),
        ("docs/**", "docs/.hidden", True),           # ** includes dotfiles
        ("docs/**", "docs/a/b/.c/d.txt", True),      # any depth
        ("docs/**", "docsx/a.md", False),
        ("docs/**", "x/docs/a.md", False),           # has a slash: anchored at the root
        ("**/.env", ".env", True),
        ("**/.env", "a/b/.env", True),
        ("**/.env", "a/.env/inner", True),           # matches a parent dir -> all below
        ("docs/*", "docs/sub/x.md", True),           # parent dir docs/sub matches
        ("docs/*.md", "docs/sub/x.txt", False),
        ("*.md", "a/b/c.md", True),                  # no slash: any level
        ("/*.md", "a/b.md", False),                  # leading slash: root only
        ("/*.md", "b.md", True),
        ("secrets", "secrets/x", True),
        ("secrets/", "secrets/x", True),             # dir-only pattern, file below it
        ("README*", "README.rst", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("**", ".github/workflows/x.yml", True),
    ],
)
def test_gitignore_glob_semantics(tmp_path: Path, glob: str, path: str, expected: bool) -> None:
    pol = load_policy(write_policy(tmp_path, f"version: 1\nid: p\npaths:\n"
                                             f"  allow: [{json.dumps(glob)}]\n"))
    assert decide_path(pol, path).allowed is expected


def test_deny_wins_over_allow_and_ask_denies(policy: Policy) -> None:
    assert decide_path(policy, "src/a.py") == Decision(
        True, "paths.allow[1]", "src/a.py matches allow glob 'src/**'", "src/a.py")
    assert decide_path(policy, "README.md").rule_id == "top-md"
    assert decide_path(policy, "src/.env").rule_id == "paths.deny[1]"
    assert not decide_path(policy, "src/.env").allowed
    asked = decide_path(policy, "src/generated/x.py")
    assert not asked.allowed and asked.rule_id == "paths.ask[0]"
    assert "approval" in asked.reason and "headless" in asked.reason
    assert decide_path(policy, "build/x").rule_id == "paths.default"
    assert not decide_path(policy, "build/x").allowed


def test_deny_and_ask_ignore_case_allow_does_not(policy: Policy) -> None:
    # Denies only get stronger: on a case-insensitive mount SECRETS/x is secrets/x.
    assert decide_path(policy, "SECRETS/x").rule_id == "paths.deny[2]"
    assert decide_path(policy, "src/.ENV").rule_id == "paths.deny[1]"
    assert decide_path(policy, "Src/a.py").rule_id == "paths.default"


@pytest.mark.parametrize("dodge", ["./secrets/x", "src/../secrets/x", "secrets//x",
                                   "secrets/./x", "docs/../secrets/x", "SECRETS/x"])
def test_secrets_deny_is_not_dodged(policy: Policy, dodge: str) -> None:
    decision = decide_path(policy, dodge)
    assert not decision.allowed and decision.rule_id == "paths.deny[2]"


# --------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize(
    ("raw", "rule_id"),
    [
        ("/etc/passwd", "paths.absolute"),
        ("//etc/passwd", "paths.absolute"),
        ("a/../../x", "paths.parent"),
        ("../x", "paths.parent"),
        ("./.git/config", "paths.git"),
        (".git", "paths.git"),
        ("src/.git/hooks/x", "paths.git"),
        ("src/.GIT/hooks/x", "paths.git"),
        (".git./config", "paths.git"),
        ("GIT~1/config", "paths.git"),
        ("..\\x", "paths.invalid"),
        ("", "paths.invalid"),
        ("a\0b", "paths.invalid"),
        ("a\nb", "paths.invalid"),
        (".", "paths.invalid"),
        ("a/..", "paths.invalid"),
    ],
)
def test_normalisation_attacks(policy: Policy, raw: str, rule_id: str) -> None:
    with pytest.raises(PolicyViolation) as info:
        normalize_path(raw)
    assert info.value.rule_id == rule_id
    assert info.value.code == EXIT_POLICY
    decision = decide_path(policy, raw)
    assert not decision.allowed and decision.rule_id == rule_id


def test_git_is_refused_even_when_policy_allows_everything(tmp_path: Path) -> None:
    pol = load_policy(write_policy(tmp_path, "version: 1\nid: p\npaths: {allow: ['**']}\n"))
    assert decide_path(pol, "x/.git/config").rule_id == "paths.git"
    assert decide_path(pol, ".gitignore").allowed  # only the exact component is special
    assert decide_path(pol, ".github/x").allowed


@pytest.mark.parametrize(("raw", "normal"), [("./a//b/./c", "a/b/c"), ("a/b/../c", "a/c"),
                                             ("docs/", "docs"), ("x..y/z", "x..y/z")])
def test_normalize_path_results(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


# --------------------------------------------------------------------------- commands, tools

def test_decide_argv_is_token_exact_prefix(policy: Policy) -> None:
    assert decide_argv(policy, ["python", "-m", "pytest", "-q"]).rule_id == "pytest"
    assert decide_argv(policy, ["ruff", "check", "src"]).rule_id == "commands[1]"
    for argv in (["python", "-m"], ["python", "-m", "pytestx"], ["python3", "-m", "pytest"],
                 ["/usr/bin/python", "-m", "pytest"], ["ruff"], ["python -m pytest"],
                 ["bash", "-c", "python -m pytest"], ["env", "python", "-m", "pytest"], []):
        decision = decide_argv(policy, argv)
        assert not decision.allowed and decision.rule_id == "commands.default", argv


def test_bash_c_is_not_allowed_by_python_prefix(tmp_path: Path) -> None:
    pol = load_policy(write_policy(tmp_path, "version: 1\nid: p\ncommands: [{argv: [python]}]\n"))
    assert decide_argv(pol, ["python", "-c", "print(1)"]).allowed
    assert not decide_argv(pol, ["bash", "-c", "python -c 'print(1)'"]).allowed
    assert not decide_argv(pol, ["sh", "-c", "python"]).allowed


def test_decide_tool(policy: Policy) -> None:
    codex = ToolSpec(adapter="codex", prompt="p", paths=("src/**",))
    assert decide_tool(policy, codex) == Decision(True, "tools[0]", "adapter 'codex' is listed",
                                                  "codex")
    claude = ToolSpec(adapter="claude", prompt="p", paths=("src/**",))
    assert decide_tool(policy, claude).rule_id == "tools.default"
    assert not decide_tool(policy, claude).allowed
    for glob, rule_id in (("/etc/**", "paths.absolute"), ("../**", "paths.parent"),
                          ("**/.git/**", "paths.git"), ("!src", "tool.paths")):
        decision = decide_tool(policy, ToolSpec(adapter="codex", prompt="p", paths=(glob,)))
        assert not decision.allowed and decision.rule_id == rule_id, glob
    command = ToolSpec(adapter="command", prompt="p", paths=("src/**",), argv=("fake-cli", "-x"))
    assert decide_tool(policy, command).rule_id == "tools[1]" and decide_tool(policy, command) \
        .allowed
    other = ToolSpec(adapter="command", prompt="p", paths=("src/**",), argv=("bash", "-c", "x"))
    assert not decide_tool(policy, other).allowed
    assert decide_tool(policy, other).rule_id == "tools[1]"
    no_argv = ToolSpec(adapter="command", prompt="p", paths=())
    assert not decide_tool(policy, no_argv).allowed


def test_network_env_and_approval(policy: Policy) -> None:
    codex_net = tool_network(policy, "codex")
    assert codex_net is not None and codex_net.allow == ("api.openai.com:443",)
    assert codex_net.rule_id == "tools[0].network"
    assert tool_network(policy, "command") is None
    assert tool_network(policy, "claude") is None  # not listed
    codex = ToolSpec(adapter="codex", prompt="p", paths=("src/**",))
    assert step_network(policy, step("tool", tool=codex)) == codex_net
    assert step_network(policy, step("run", argv=("ruff", "check"))) is None
    assert step_network(policy, step("write", path="docs/a.md")) is None
    host = {"PATH": "/usr/bin", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "s", "LANG": "C"}
    no_pyc = {"PYTHONDONTWRITEBYTECODE": "1"}  # __pycache__/ never lands with a step
    assert step_env(policy, host) == {**no_pyc, "PATH": "/usr/bin", "LANG": "C"}
    assert step_env(policy, {}) == no_pyc
    assert needs_approval(policy, step("patch", patch_paths=("src/a.py",)))
    assert needs_approval(policy, step("tool", tool=codex))  # review: true
    assert not needs_approval(policy, step("write", path="docs/a.md"))


# --------------------------------------------------------------------------- check_request

def test_check_request_allows_a_good_request(policy: Policy) -> None:
    req = request(
        step("write", 0, path="docs/a.md", content=b"hello"),
        step("delete", 1, path="src/old.py"),
        step("run", 2, argv=("python", "-m", "pytest", "-q")),
        step("tool", 3, tool=ToolSpec(adapter="codex", prompt="p", paths=("src/**",))),
    )
    decision = check_request(policy, req)
    assert decision.allowed and decision.rule_id == "allow" and decision.step is None
    assert decision.as_dict()["decision"] == "allow"


@pytest.mark.parametrize(
    ("bad", "rule_id"),
    [
        (step("write", 1, path="secrets/k", content=b"x"), "paths.deny[2]"),
        (step("write", 1, path="/etc/passwd", content=b"x"), "paths.absolute"),
        (step("write", 1, path="big/x", content=b"x"), "paths.default"),
        (step("write", 1, path="docs/big.md", content=b"x" * 101), "limits.max_file_bytes"),
        (step("delete", 1, path="src/../../x"), "paths.parent"),
        (step("patch", 1, patch_paths=("src/a.py", "src/.git/config")), "paths.git"),
        (step("run", 1, argv=("bash", "-c", "rm -rf /")), "commands.default"),
        (step("tool", 1, tool=ToolSpec(adapter="claude", prompt="p", paths=())),
         "tools.default"),
    ],
)
def test_check_request_first_deny_names_step(policy: Policy, bad: Step, rule_id: str) -> None:
    good = step("write", 0, path="docs/a.md", content=b"x")
    later_bad = step("run", 2, argv=("sh",))
    decision = check_request(policy, request(good, bad, later_bad))
    assert not decision.allowed
    assert decision.rule_id == rule_id and decision.step == "step_01", decision
    assert decision.as_dict() == {"decision": "deny", "allowed": False, "rule_id": rule_id,
                                  "reason": decision.reason, "subject": decision.subject,
                                  "step": "step_01"}


def test_check_request_operations_and_max_steps(tmp_path: Path) -> None:
    pol = load_policy(write_policy(tmp_path, "version: 1\nid: p\noperations: [write]\n"
                                             "paths: {allow: ['**']}\nlimits: {max_steps: 2}\n"))
    run = step("run", 1, argv=("python",))
    decision = check_request(pol, request(step("write", 0, path="a", content=b""), run))
    assert (decision.rule_id, decision.step) == ("operations", "step_01")
    three = [step("write", i, path=f"f{i}", content=b"") for i in range(3)]
    assert check_request(pol, request(*three)).rule_id == "limits.max_steps"
    assert check_request(pol, request(*three[:2])).allowed


# --------------------------------------------------------------------------- check_changes

@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    root = tmp_path / "wt"
    (root / "src").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / ".git").write_text("gitdir: /elsewhere\n")
    return root


def test_check_changes_allows_real_allowed_changes(policy: Policy, worktree: Path) -> None:
    (worktree / "src" / "a.py").write_text("print(1)\n")
    (worktree / "docs" / "b.md").write_text("# b\n")
    changes = [Change("src/a.py", "A", new_mode="100644"),
               Change("docs/b.md", "R", old_path="docs/old.md", new_mode="100755",
                      old_mode="100644"),
               Change("src/gone.py", "D", old_mode="100644")]
    decision = check_changes(policy, worktree, changes, step=step("run", 3))
    assert decision.allowed and decision.step == "step_03"


def test_check_changes_judges_rename_source(policy: Policy, worktree: Path) -> None:
    (worktree / "src" / "a.py").write_text("x")
    moved = Change("src/a.py", "R", old_path="secrets/a.py")
    decision = check_changes(policy, worktree, [moved], step=step("run"))
    assert (decision.allowed, decision.rule_id) == (False, "paths.deny[2]")


def test_ignored_files_judged_only_by_deny_ask_and_safety(policy: Policy,
                                                          worktree: Path) -> None:
    cache = worktree / ".pytest_cache" / "v"
    cache.mkdir(parents=True)
    (cache / "lastfailed").write_text("{}")
    (worktree / "src" / "__pycache__").mkdir()
    (worktree / "src" / "__pycache__" / "a.pyc").write_bytes(b"\0" * 500)  # > max_file_bytes
    ignored = [Change(".pytest_cache/v/lastfailed", "A", ignored=True),
               Change("src/__pycache__/a.pyc", "A", ignored=True)]
    assert check_changes(policy, worktree, ignored, step=step("run")).allowed
    (worktree / ".env").write_text("TOKEN=x")
    env = Change(".env", "A", ignored=True)
    decision = check_changes(policy, worktree, [*ignored, env], step=step("run"))
    assert (decision.allowed, decision.rule_id) == (False, "paths.deny[1]")
    # Not ignored, the cache file would be denied by default.
    unignored = [Change(".pytest_cache/v/lastfailed", "A")]
    assert check_changes(policy, worktree, unignored, step=step("run")).rule_id \
        == "paths.default"


def test_directory_entries_are_judged_file_by_file(policy: Policy, worktree: Path,
                                                  tmp_path: Path) -> None:
    cache = worktree / ".pytest_cache"
    (cache / "v").mkdir(parents=True)
    (cache / "v" / "lastfailed").write_text("{}")
    as_dir = [Change(".pytest_cache/", "A", ignored=True)]
    assert check_changes(policy, worktree, as_dir, step=step("run")).allowed
    (cache / "v" / ".env").write_text("TOKEN=x")
    decision = check_changes(policy, worktree, as_dir, step=step("run"))
    assert (decision.rule_id, decision.subject) == ("paths.deny[1]", ".pytest_cache/v/.env")
    (cache / "v" / ".env").unlink()
    (tmp_path / "outside").mkdir()
    (cache / "escape").symlink_to(tmp_path / "outside")
    assert check_changes(policy, worktree, as_dir, step=step("run")).rule_id == "paths.symlink"
    # An untracked (not ignored) directory: every file inside counts and is judged.
    new_dir = worktree / "src" / "pkg"
    new_dir.mkdir()
    for name in ("a.py", "b.py", "c.py", "d.py"):
        (new_dir / name).write_text("x")
    decision = check_changes(policy, worktree, [Change("src/pkg", "A")], step=step("run"))
    assert decision.rule_id == "limits.max_changed_files"


def test_symlinks(policy: Policy, worktree: Path, tmp_path: Path) -> None:
    def judge(name: str, target: str) -> Decision:
        link = worktree / "src" / name
        link.symlink_to(target)
        return check_changes(policy, worktree, [Change(f"src/{name}", "A", new_mode="120000")],
                             step=step("run"))

    (tmp_path / "outside").mkdir()
    (worktree / "docs" / "real.md").write_text("x")
    assert judge("passwd", "/etc/passwd").rule_id == "paths.symlink"
    absolute_inside = judge("abs", str(worktree / "docs" / "real.md"))
    assert absolute_inside.rule_id == "paths.symlink" and "absolute" in absolute_inside.reason
    assert judge("out", "../../outside").rule_id == "paths.symlink"
    assert judge("git", "../.git").rule_id == "paths.symlink"
    assert judge("gitcfg", "../.git/config").rule_id == "paths.symlink"
    inside = judge("inside", "../docs/real.md")
    assert inside.allowed, inside
    assert judge("dangling", "../docs/nothing.md").allowed  # dangling but inside
    # A relative link through an existing symlink that leaves the worktree.
    (worktree / "src" / "hop").symlink_to(tmp_path / "outside")
    assert judge("via", "hop/x").rule_id == "paths.symlink"


def test_symlink_not_recorded_as_such_is_still_caught(policy: Policy, worktree: Path) -> None:
    (worktree / "src" / "sneaky").symlink_to("/etc/passwd")
    decision = check_changes(policy, worktree, [Change("src/sneaky", "T", new_mode="100644")],
                             step=step("run"))
    assert decision.rule_id == "paths.symlink"


def test_change_below_a_symlinked_dir_is_refused(policy: Policy, worktree: Path,
                                                 tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("x")
    (worktree / "src" / "dir").symlink_to(tmp_path / "outside")
    decision = check_changes(policy, worktree, [Change("src/dir/f", "A")], step=step("run"))
    assert decision.rule_id == "paths.symlink"


def test_hardlinks_refused_even_when_ignored(policy: Policy, worktree: Path,
                                             tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    os.link(secret, worktree / "src" / "h.txt")
    for ignored in (False, True):
        decision = check_changes(policy, worktree, [Change("src/h.txt", "A", ignored=ignored)],
                                 step=step("run"))
        assert decision.rule_id == "paths.hardlink", ignored


def test_size_and_count_limits(policy: Policy, worktree: Path) -> None:
    (worktree / "src" / "big.bin").write_bytes(b"x" * 101)
    (worktree / "src" / "ok.bin").write_bytes(b"x" * 100)
    assert check_changes(policy, worktree, [Change("src/ok.bin", "A")], step=step("run")).allowed
    decision = check_changes(policy, worktree, [Change("src/big.bin", "A")], step=step("run"))
    assert decision.rule_id == "limits.max_file_bytes"
    many = [Change(f"src/f{i}", "A") for i in range(4)]
    assert check_changes(policy, worktree, many, step=step("run")).rule_id \
        == "limits.max_changed_files"
    three_plus_ignored = [*many[:3], Change("src/__pycache__/x.pyc", "A", ignored=True)]
    assert check_changes(policy, worktree, three_plus_ignored, step=step("run")).allowed


def test_gitlink_refused(policy: Policy, worktree: Path) -> None:
    (worktree / "src" / "vendored").mkdir()
    decision = check_changes(policy, worktree, [Change("src/vendored", "A", new_mode="160000")],
                             step=step("run"))
    assert decision.rule_id == "paths.git"


def test_tool_changes_must_stay_in_tool_paths(policy: Policy, worktree: Path) -> None:
    (worktree / "src" / "a.py").write_text("x")
    (worktree / "docs" / "a.md").write_text("x")
    tool_step = step("tool", 5, tool=ToolSpec(adapter="codex", prompt="p", paths=("src/**",)))
    inside = check_changes(policy, worktree, [Change("src/a.py", "M")], step=tool_step)
    assert inside.allowed
    outside = check_changes(policy, worktree, [Change("docs/a.md", "M")], step=tool_step)
    assert (outside.allowed, outside.rule_id, outside.step) == (False, "tool.paths", "step_05")
    # Policy deny still wins inside the tool's globs.
    wide = step("tool", 5, tool=ToolSpec(adapter="codex", prompt="p", paths=("**",)))
    (worktree / ".env").write_text("x")
    assert check_changes(policy, worktree, [Change(".env", "A")], step=wide).rule_id \
        == "paths.deny[1]"


def test_mode_change_to_executable_needs_an_executable_glob(policy: Policy, worktree: Path,
                                                           tmp_path: Path) -> None:
    """+x is a change the policy sees: without `paths.executable` no file may become 100755
    (this test used to assert the opposite: mode changes landed unjudged)."""
    script = worktree / "src" / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    change = Change("src/run.sh", "M", old_mode="100644", new_mode="100755")
    denied = check_changes(policy, worktree, [change], step=step("run"))
    assert (denied.allowed, denied.rule_id, denied.subject) == \
        (False, "paths.executable", "src/run.sh")
    with_globs = load_policy(write_policy(tmp_path, BASE.replace(
        '  ask: ["src/generated/**"]\n',
        '  ask: ["src/generated/**"]\n  executable: [{id: scripts, glob: "src/*.sh"}]\n'),
        "exec.yaml"))
    assert with_globs.executable[0].rule_id == "scripts"
    assert check_changes(with_globs, worktree, [change], step=step("run")).allowed
    assert decide_executable(with_globs, "src/run.sh").rule_id == "scripts"
    assert decide_executable(with_globs, "src/RUN.SH").rule_id == "paths.executable"  # exact case


# --------------------------------------------------------------------------- safe_target

def test_safe_target(worktree: Path, tmp_path: Path) -> None:
    assert safe_target(worktree, "./docs//new.md") == worktree / "docs" / "new.md"
    assert safe_target(worktree, "docs/deep/er/new.md") == worktree / "docs/deep/er/new.md"
    (tmp_path / "outside").mkdir()
    (worktree / "src" / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(PolicyViolation) as info:
        safe_target(worktree, "src/linked/evil.py")
    assert info.value.rule_id == "paths.symlink"
    (worktree / "docs" / "leaf").symlink_to("/etc/passwd")
    with pytest.raises(PolicyViolation) as info:
        safe_target(worktree, "docs/leaf")
    assert info.value.rule_id == "paths.symlink"
    for raw, rule_id in (("/etc/x", "paths.absolute"), ("../x", "paths.parent"),
                         (".git/config", "paths.git")):
        with pytest.raises(PolicyViolation) as info:
            safe_target(worktree, raw)
        assert info.value.rule_id == rule_id


# --------------------------------------------------------------------------- shipped policies

def test_default_policy_path_is_the_shipped_one() -> None:
    # shipped inside the package; the checkout's policies/ links to the same files
    assert default_policy_path() == (POLICIES / "sandbox_policy.yaml").resolve()
    assert default_policy_path().is_relative_to(Path(agentos_tasks.__file__).parent)
    assert default_policy_path().is_file()


def test_shipped_sandbox_policy_lets_the_demo_run() -> None:
    pol = load_policy(default_policy_path())
    assert (pol.id, pol.isolation, pol.network) == ("sandbox-default", "required", None)
    claude = pol.tool_rule("claude")
    assert claude is not None and claude.network is not None
    assert claude.network.allow == ("api.anthropic.com:443",)
    assert claude.secrets == ("ANTHROPIC_API_KEY",)
    demo = request(step("write", 0, path="docs/intro.md", content=b"# intro\n"),
                   step("write", 1, path="src/app.py", content=b"print(1)\n"),
                   step("write", 2, path="README.md", content=b"x"),
                   step("run", 3, argv=("python", "-m", "pytest", "-q")),
                   step("run", 4, argv=("ruff", "check", ".")),
                   step("tool", 5, tool=ToolSpec(adapter="codex", prompt="p",
                                                 paths=("src/**",))))
    assert check_request(pol, demo).allowed
    for path, rule_id in ((".env", "paths.deny[1]"), ("secrets/k", "paths.deny[3]"),
                          (".github/workflows/ci.yml", "paths.ask[0]"),
                          ("pyproject.toml", "paths.ask[1]"), ("Makefile", "paths.default"),
                          ("src/key.pem", "paths.deny[4]")):
        assert decide_path(pol, path).rule_id == rule_id, path
    assert not decide_argv(pol, ["bash", "-c", "true"]).allowed
    assert not decide_tool(pol, ToolSpec(adapter="command", prompt="", paths=(),
                                         argv=("sh",))).allowed


def test_shipped_allow_policy_is_permissive_but_not_reckless() -> None:
    pol = load_policy(POLICIES / "allow.yaml")
    assert decide_path(pol, "anything/at/all.txt").allowed
    assert decide_path(pol, ".github/workflows/x.yml").allowed
    for path in (".git/config", "a/.env", "secrets/x", "./secrets/x"):
        assert not decide_path(pol, path).allowed, path
    assert decide_argv(pol, ["python", "-c", "1"]).allowed
    assert decide_argv(pol, ["bash", "script.sh"]).allowed
    assert not decide_argv(pol, ["git", "status"]).allowed
    for adapter in ("claude", "codex", "opencode"):
        assert decide_tool(pol, ToolSpec(adapter=adapter, prompt="p", paths=("**",))).allowed
    assert decide_tool(pol, ToolSpec(adapter="command", prompt="p", paths=("**",),
                                     argv=("fake",))).allowed
    assert pol.isolation == "required" and pol.network is None


def test_shipped_deny_policy_denies_the_demo() -> None:
    pol = load_policy(POLICIES / "deny.yaml")
    demo = request(step("write", 0, path="docs/intro.md", content=b"# intro\n"),
                   step("write", 1, path="src/app.py", content=b"x"))
    decision = check_request(pol, demo)
    assert (decision.allowed, decision.rule_id, decision.step) == (False, "deny-all-writes",
                                                                   "step_00")
    assert check_request(pol, request(step("run", 0, argv=("python",)))).rule_id \
        == "commands.default"
    assert check_request(pol, request(step("tool", 0, tool=ToolSpec(
        adapter="codex", prompt="p", paths=())))).rule_id == "tools.default"


# --------------------------------------------------------------------------- boundary rules

def test_new_limits_have_defaults_and_are_validated(tmp_path: Path) -> None:
    limits = load_policy(write_policy(tmp_path, "version: 1\nid: p\n")).limits
    assert (limits.path_length, limits.path_depth, limits.files, limits.bytes) == \
        (4096, 256, 100_000, 1 << 30)
    custom = load_policy(write_policy(tmp_path, "version: 1\nid: p\nlimits: {files: 5, "
                                                "bytes: 10, path_length: 20}\n", "c.yaml"))
    assert (custom.limits.files, custom.limits.bytes, custom.limits.path_length) == (5, 10, 20)
    bad = write_policy(tmp_path, "version: 1\nid: p\nlimits:\n  files: 0\n", "b.yaml")
    with pytest.raises(AgentosError) as info:
        load_policy(bad)
    assert info.value.where == f"{bad}:4"


@pytest.mark.parametrize("rule_id", ["paths.name", "paths.executable", "paths.setuid",
                                     "paths.special", "limits.files", "limits.bytes",
                                     "limits.path_length", "limits.path_depth"])
def test_new_builtin_rule_ids_are_reserved(tmp_path: Path, rule_id: str) -> None:
    path = write_policy(tmp_path, f"version: 1\nid: p\npaths:\n  executable:\n"
                                  f"    - {{id: {rule_id}, glob: 'x'}}\n")
    with pytest.raises(AgentosError, match="reserved") as info:
        load_policy(path)
    assert info.value.where == f"{path}:5"


@pytest.mark.parametrize("char", ["\u202e", "\u202a", "\u2066", "\u2069", "\u200b",
                                  "\u200f", "\ufeff", "\u0085", "\u009b", "\u00ad",
                                  "\u2028", "\u2060", "\U000e0001", "\u3164"])
def test_invisible_and_c1_characters_in_names_are_refused(policy: Policy, char: str) -> None:
    with pytest.raises(PolicyViolation) as info:
        normalize_path(f"docs/a{char}b.md")
    assert info.value.rule_id == "paths.name"
    assert f"U+{ord(char):04X}" in info.value.what and char not in info.value.what
    decision = decide_path(policy, f"docs/{char}x.md", ignored=True)
    assert (decision.allowed, decision.rule_id) == (False, "paths.name")


def test_ordinary_unicode_names_stay_allowed(policy: Policy) -> None:
    for name in ("docs/caf\u00e9.md", "docs/\u65e5\u672c.md", "docs/\u0645\u0631\u062d\u0628\u0627.md",
                 "docs/\U0001f600.md", "docs/a b.md"):
        assert decide_path(policy, name).allowed, name
    with pytest.raises(PolicyViolation) as info:
        normalize_path("docs/a\x1bb")  # C0 stays paths.invalid, as before
    assert info.value.rule_id == "paths.invalid"


def test_symlink_targets_are_judged_by_deny_and_ask(policy: Policy, worktree: Path) -> None:
    """BASE denies .git/**, **/.env, secrets/**; asks src/generated/**."""
    def judge(name: str, target: str) -> Decision:
        (worktree / "docs" / name).symlink_to(target)
        return check_changes(policy, worktree, [Change(f"docs/{name}", "A")], step=step("run"))

    (worktree / "secrets").mkdir()
    (worktree / "src" / "generated").mkdir()
    cases = {"env": ("../.env", "paths.deny[1]"), "ENV": ("../SRC/.ENV", "paths.deny[1]"),
             "sec": ("../secrets", "paths.deny[2]"), "key": ("../secrets/k", "paths.deny[2]"),
             "dangling-dir": ("../secrets-not-yet/../secrets", "paths.deny[2]"),
             "gen": ("../src/generated", "src/generated/**"),
             "root": ("..", "paths.symlink"), "root2": ("../docs/..", "paths.symlink")}
    for name, (target, rule) in cases.items():
        decision = judge(name, target)
        assert not decision.allowed and (rule == decision.rule_id or rule in decision.reason), \
            (name, decision)
        assert decision.subject == f"docs/{name}"
    # a chain: each hop is judged where it ends
    (worktree / "src" / "cfg").symlink_to("../.env")
    assert judge("chain", "../src/cfg").rule_id == "paths.deny[1]"
    # a directory that holds an asked-for one aliases it; floating globs (**/.env) cover
    # the alias path just as well, so a plain directory exposes nothing new
    assert judge("srcdir", "../src").rule_id == "paths.ask[0]"  # src/generated/** below
    (worktree / "tests").mkdir()
    assert judge("testsdir", "../tests").allowed
    assert judge("file", "../src/main.py").allowed
    assert judge("self", ".").allowed  # docs/self -> docs: nothing denied lies below docs


def test_reaches_below_distinguishes_anchored_from_floating_globs() -> None:
    from agentos_tasks.policy.aliases import reaches_below

    def below(glob: str, directory: str) -> bool:
        return reaches_below(glob, directory.split("/"), ignore_case=True)

    assert below("secrets/**", "secrets") and below("secrets/*.key", "secrets")
    assert below("/.github/", ".github") and below("config", "a/config")
    assert below("a/**/b", "a/x/y") and below("**", "anything")
    assert not below("**/.env", "src") and not below("**/*.pem", "src/certs")
    assert not below("secrets/**", "src") and not below("a/**/b", "x/a")


def test_declared_paths_over_the_length_or_depth_limits_are_denied_up_front(
        tmp_path: Path) -> None:
    tight = load_policy(write_policy(tmp_path, BASE.replace(
        "limits: {max_file_bytes: 100,", "limits: {path_length: 30, path_depth: 3, "
                                         "max_file_bytes: 100,")))
    long_write = step("write", path="docs/" + "x" * 30, content=b"x")
    assert check_request(tight, request(long_write)).rule_id == "limits.path_length"
    deep_write = step("write", path="docs/a/b/c.md", content=b"x")
    assert check_request(tight, request(deep_write)).rule_id == "limits.path_depth"
    assert check_request(tight, request(step("write", path="docs/a/b.md", content=b"x"))).allowed


@pytest.mark.parametrize("glob", ["*" * 5000 + "a", "a" + "*" * 400 + "b",
                                  "/".join(["**"] * 200) + "/x", "a***b***c"])
def test_redundant_stars_are_collapsed_and_decide_fast(tmp_path: Path, glob: str) -> None:
    """Review finding (ReDoS): runs of '*' compiled to repeated [^/]* made matching
    exponential. They are collapsed (same meaning) or the glob is refused at load; either
    way a long hostile path is decided within a second."""
    import time

    from agentos_tasks.policy.paths import MAX_GLOB_CHARS

    text = f"version: 1\nid: p\npaths:\n  allow:\n    - {json.dumps(glob)}\n"
    started = time.monotonic()
    if len(glob) > MAX_GLOB_CHARS:
        with pytest.raises(AgentosError, match="characters long"):
            load_policy(write_policy(tmp_path, text))
    else:
        rule = load_policy(write_policy(tmp_path, text)).allow[0]
        assert rule.matches("/".join(["a" * 250] * 16) + "/ab") in (True, False)
        assert rule.glob == glob  # messages show the glob as written
        assert rule.regex.pattern.count("[^/]*") <= 3  # the compiled form is collapsed
    assert time.monotonic() - started < 1.0


def test_too_many_wildcards_are_refused_and_would_have_been_slow(tmp_path: Path) -> None:
    """'*a*a*a*b' (4 wildcards) took seconds on a 4,000-character path: refused with a
    clear error at its line; 3 wildcards load."""
    text = "version: 1\nid: p\npaths:\n  allow:\n    - docs/**\n    - '*a*a*a*b'\n"
    with pytest.raises(AgentosError) as info:
        load_policy(write_policy(tmp_path, text))
    assert "4 wildcards (at most 3" in info.value.message
    assert ":6" in str(info.value.where)
    ok = "version: 1\nid: p\npaths:\n  allow: ['src/**/test_*.py', '**/*.min.*']\n"
    assert len(load_policy(write_policy(tmp_path, ok)).allow) == 2
