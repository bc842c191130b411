"""Landing (agentos_tasks/landing.py) end to end: where the branch is checked out, where it
is not, a bare target, and what the target's own ignore list means for "clean"."""

from __future__ import annotations

import subprocess
from pathlib import Path

from runutil import doit, git, write_request
from security.test_adversarial import CLEAN_GIT_ENV, host_git, make_repo

STEPS = [{"id": f"s{i}", "write": {"path": f"docs/{i}.md", "content": f"{i}\n"}}
         for i in range(2)]


def test_a_file_ignored_by_the_targets_info_exclude_does_not_block_apply(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("local.env\n")
    (repo / "local.env").write_text("mine\n")
    write_request(tmp_path, STEPS, init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert git(repo, "rev-list", "--count", "main") == "3"
    assert (repo / "docs" / "1.md").read_text() == "1\n"
    assert (repo / "local.env").read_text() == "mine\n"
    assert git(repo, "status", "--porcelain") == ""


def test_an_untracked_file_in_the_target_checkout_refuses_apply_and_changes_nothing(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / "stray.txt").write_text("wip\n")
    write_request(tmp_path, STEPS, init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and "uncommitted changes" in proc.stderr
    assert git(repo, "rev-list", "--count", "main") == "1"
    assert not (repo / "docs").exists() and (repo / "stray.txt").read_text() == "wip\n"


def test_a_bare_target_gets_the_commits_and_its_objects(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "src", {"README.md": "hi\n"})
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True,
                   env=CLEAN_GIT_ENV)
    # a request on a bare repository: the run's worktree is the only checkout
    write_request(tmp_path, STEPS, init_repo=False, repo="./bare.git")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    doit(tmp_path, "gates", "request=req.yaml", check=0)
    assert host_git(bare, "rev-list", "--count", "main") == "3"
    assert host_git(bare, "fsck", "--no-dangling") == ""


def test_a_branch_that_is_not_checked_out_moves_and_the_checkout_stays(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    host_git(repo, "branch", "feature")
    write_request(tmp_path, STEPS, init_repo=False, branch="feature")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert git(repo, "rev-list", "--count", "feature") == "3"
    assert git(repo, "rev-list", "--count", "main") == "1"
    assert not (repo / "docs").exists() and git(repo, "status", "--porcelain") == ""
    # the landed objects are in the target itself, not only in the run's private git dir
    assert host_git(repo, "fsck", "--no-dangling", "--connectivity-only") == ""
    assert host_git(repo, "cat-file", "-t", "feature:docs/1.md") == "blob"


def test_a_branch_checked_out_in_a_linked_worktree_follows(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    linked = tmp_path / "linked"
    host_git(repo, "worktree", "add", "-q", "-b", "feature", str(linked))
    write_request(tmp_path, STEPS, init_repo=False, branch="feature")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert (linked / "docs" / "0.md").read_text() == "0\n"
    assert git(linked, "status", "--porcelain") == ""
    assert not (repo / "docs").exists()


def test_rollback_moves_the_checkout_back_through_the_private_view(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    write_request(tmp_path, STEPS, init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    doit(tmp_path, "rollback", "request=req.yaml", check=0)
    assert git(repo, "rev-list", "--count", "main") == "1"
    assert not (repo / "docs").exists() and git(repo, "status", "--porcelain") == ""
