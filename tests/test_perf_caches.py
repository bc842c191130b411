"""Caches that keep per-step cost flat (issue 15): each must still give the true answer."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
