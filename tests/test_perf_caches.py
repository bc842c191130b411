"""Caches that keep per-step cost flat (issue 15): each must still give the true answer."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentos_tasks.git import Git

ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
       "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
       "PATH": "/usr/bin:/bin"}


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "r"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "a"]):
        subprocess.run(["git", *args], cwd=repo, env=ENV, check=True)
    return repo


def test_tree_of_asks_git_once_per_full_id_and_never_caches_a_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(tmp_path)
    git = Git(repo)
    head = git.rev_parse("HEAD")
    calls: list[tuple[str, ...]] = []
    real = Git.run

    def counting(self: Git, *args: str, **kw: object) -> object:
        calls.append(args)
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Git, "run", counting)
    tree = git.tree_of(head)
    assert git.tree_of(head) == tree
    assert len(calls) == 1
    # a name can move: asked every time, and it follows the branch
    assert git.tree_of("HEAD") == tree
    (repo / "f").write_text("x\n")
    subprocess.run(["git", "add", "f"], cwd=repo, env=ENV, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "b"], cwd=repo, env=ENV, check=True)
    assert git.tree_of("HEAD") != tree
    assert len(calls) == 3
    # commit_tree remembers the tree it was given for the commit it made
    msg = tmp_path / "msg"
    msg.write_text("c\n")
    new_tree = git.tree_of("HEAD")
    commit = git.commit_tree(new_tree, head, msg)
    before = len(calls)
    assert git.tree_of(commit) == new_tree
    assert len(calls) == before
    assert Git(repo).tree_of(commit) == new_tree  # what git itself says


def _package_copy(tmp_path: Path) -> list[Path]:
    import shutil

    import agentos_tasks

    src = Path(agentos_tasks.__file__ or "").resolve().parent
    dst = tmp_path / "copy" / "agentos_tasks"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return sorted(dst.rglob("*.py"))


def test_static_scan_cache_is_reused_only_for_identical_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentos_tasks.gates import cachekey, static

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cachekey, "_KEY", [])
    files = _package_copy(tmp_path)
    assert static.scan_package(files)[1] == []
    parsed: list[str] = []
    real = static.scan_source

    def counting(source: str, filename: str) -> list[str]:
        parsed.append(filename)
        return real(source, filename)

    monkeypatch.setattr(static, "scan_source", counting)
    monkeypatch.setattr(static, "_SCANNED", {})
    assert static.scan_package(files)[1] == []
    assert parsed == []  # the stored scan of this exact content, nothing parsed
    # one edited file: the whole package is scanned again and the gate sees it
    target = next(p for p in files if p.name == "report.py" and p.parent.name == "gates")
    target.write_text(target.read_text() + "\nimport subprocess\n")
    _, violations = static.scan_package(files)
    assert any("import subprocess" in v for v in violations)
    assert parsed
    # a cache entry rewritten without the key is not believed
    cache = tmp_path / "cache" / "agentos-tasks" / "static-scan.json"
    import json

    stored = json.loads(cache.read_text())
    assert len(stored["entries"]) == 2  # the clean copy's scan is kept beside the edited one
    for entry in stored["entries"].values():
        entry["violations"] = []
    cache.write_text(json.dumps(stored))
    monkeypatch.setattr(static, "_SCANNED", {})
    _, violations = static.scan_package(files)
    assert any("import subprocess" in v for v in violations)


def test_static_scan_cache_keeps_one_entry_per_installation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two worktrees on one host alternating: neither evicts the other's scan, and an
    entry moved under another package's digest is not believed."""
    import json

    from agentos_tasks.gates import cachekey, static

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cachekey, "_KEY", [])
    clean = _package_copy(tmp_path / "a")
    dirty = _package_copy(tmp_path / "b")
    target = next(p for p in dirty if p.name == "report.py" and p.parent.name == "gates")
    target.write_text(target.read_text() + "\nimport subprocess\n")
    assert static.scan_package(clean)[1] == []
    assert static.scan_package(dirty)[1]
    parsed: list[str] = []
    real = static.scan_source
    monkeypatch.setattr(static, "scan_source",
                        lambda source, name: parsed.append(name) or real(source, name))
    monkeypatch.setattr(static, "_SCANNED", {})
    assert static.scan_package(clean)[1] == []
    assert static.scan_package(dirty)[1]
    assert parsed == []  # both served from the cache
    cache = tmp_path / "cache" / "agentos-tasks" / "static-scan.json"
    stored = json.loads(cache.read_text())
    (clean_key, clean_entry), = [(k, v) for k, v in stored["entries"].items()
                                 if v["violations"] == []]
    dirty_key = next(k for k in stored["entries"] if k != clean_key)
    stored["entries"][dirty_key] = clean_entry  # the clean verdict under the dirty digest
    cache.write_text(json.dumps(stored))
    assert any("import subprocess" in v for v in static.scan_package(dirty)[1])
    assert parsed  # re-scanned, not believed


def test_one_commit_process_makes_the_step_commit_plumbing_made(tmp_path: Path) -> None:
    """commit_index (write-tree + commit-tree + update-ref in one `git commit`) makes the
    very commit the plumbing made: same tree, parent, author, message kept verbatim
    (a `#` line survives, no hook runs). commit_changes reads tree and changes in one
    diff-tree and refuses a commit whose parent is not the one the step was given."""
    from agentos_tasks.errors import AgentosError
    from agentos_tasks.git import Git, init_private_repo
    from agentos_tasks.model import Author

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, env=ENV, check=True)
    (repo / "README.md").write_text("hi\n")
    hooks = repo / ".git" / "hooks"
    marker = tmp_path / "hook-ran"
    (hooks / "pre-commit").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (hooks / "pre-commit").chmod(0o755)
    subprocess.run(["git", "add", "README.md"], cwd=repo, env=ENV, check=True)
    subprocess.run(["git", "commit", "-q", "--no-verify", "-m", "a"], cwd=repo, env=ENV,
                   check=True)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=ENV, check=True,
                          capture_output=True, text=True).stdout.strip()
    private, work = tmp_path / "p.git", tmp_path / "wt"
    init_private_repo(private, fmt_config=repo / ".git" / "config",
                      alternates=[repo / ".git" / "objects"], head=base)
    work.mkdir()
    git = Git(work, Author("Agent", "agent@example.invalid"), private_dir=private,
              work_tree=work)
    git.run("reset", "--hard", "-q", base)
    (work / "docs").mkdir()
    (work / "docs" / "a.md").write_text("a\n")
    git.run("add", "-A", "--", "docs/a.md")
    message = tmp_path / "msg"
    message.write_text("step one\n\n# not a comment\n")
    date = "@1700000000 +0000"
    plumbing = git.commit_tree(git.out("write-tree"), base, message, date=date)
    made = git.commit_index(base, message, date=date)
    assert made == plumbing
    assert (private / "HEAD").read_text().strip() == made
    assert not marker.exists()
    tree, changes = git.commit_changes(made, base)
    assert tree == git.tree_of(plumbing)
    assert changes == [("000000", "100644", "docs/a.md")]
    with pytest.raises(AgentosError, match="not " + made):
        git.commit_changes(made, made)  # its parent is base, not itself
    # the answers come from one diff-tree kept running; a dead one is replaced by the
    # one-shot call, same answer
    running = git._diff_tree
    assert running is not None
    running.close()
    assert running.ask(made.encode()) is None
    git._diff_tree = running
    assert git.commit_changes(made, base) == (tree, changes)
    assert git._diff_tree is None
    assert git.commit_changes(made, base) == (tree, changes)  # and a new one is started
    assert git._diff_tree is not None and git._diff_tree is not running
    empty = git.commit_index(made, message, date=date)  # nothing staged: an empty commit
    assert git.commit_changes(empty, made)[1] == []


def test_the_judged_paths_check_refuses_what_the_policy_never_saw() -> None:
    """check_tree_is_judged: a committed path that is not a judged change, or any gitlink,
    is refused; judged paths (a rename's old path included) pass."""
    from agentos_tasks.errors import PolicyViolation
    from agentos_tasks.model import Change
    from agentos_tasks.steps import check_tree_is_judged

    class FakeStep:
        id = "s1"

    step: Any = FakeStep()
    landing = [Change(path="docs/new.md", status="R", old_path="docs/old.md")]
    check_tree_is_judged(step, [("100644", "000000", "docs/old.md"),
                                ("000000", "100644", "docs/new.md")], landing)
    with pytest.raises(PolicyViolation, match="never saw") as unjudged:
        check_tree_is_judged(step, [("000000", "100644", "docs/new.md"),
                                    ("000000", "100755", ".github/x.sh")], landing)
    assert unjudged.value.rule_id == "paths.unjudged"
    with pytest.raises(PolicyViolation, match="gitlink") as gitlink:
        check_tree_is_judged(step, [("000000", "160000", "docs/new.md")], landing)
    assert gitlink.value.rule_id == "paths.git"


def test_a_coprocess_answer_ends_only_at_its_own_random_marker(tmp_path: Path) -> None:
    """HostCoprocess: an answer that holds another process's marker text is not cut
    there; a program that exits or never answers gives None (bounded by the timeout)."""
    import sys

    from agentos_tasks import proc

    echo = proc.HostCoprocess([sys.executable, "-c", (
        "import sys\n"
        "for line in sys.stdin:\n"
        "    sys.stdout.write('sync-agentos-' + '0' * 32 + '\\n' + line)\n"
        "    sys.stdout.flush()\n")], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    fake = b"sync-agentos-" + b"0" * 32 + b"\n"
    assert echo.ask(b"hello") == fake + b"hello\n" + fake  # then its own marker, echoed
    assert echo.ask(b"two\nlines") is None  # one request per line, never two
    echo.close()
    assert echo.ask(b"after close") is None
    gone = proc.HostCoprocess(["true"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert gone.ask(b"x") is None
    silent = proc.HostCoprocess(["sleep", "30"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert silent.ask(b"x", timeout=0.3) is None
