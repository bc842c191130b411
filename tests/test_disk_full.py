"""A full disk under outputs/ (a small tmpfs mounted for the test): one clear error, no
traceback, nothing applied; after space is freed the same command completes the run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runutil import doit, git, tape_events, write_policy, write_request


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the disk-full test mounts a tmpfs: it needs root")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "out"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("where", ["policy", "step"])
def test_a_full_disk_is_one_clear_error_and_the_rerun_completes(
        tmp_path: Path, small_disk: Path, where: str) -> None:
    write_policy(tmp_path / "policy.yaml")
    (tmp_path / "big.txt").write_bytes(b"x" * 3_000_000)
    steps = [{"id": "w1", "message": "w1: small", "write": {"path": "a.txt", "content": "a\n"}},
             {"id": "w2", "message": "w2: big", "write": {"path": "big.txt",
                                                         "content_file": "big.txt"}}]
    write_request(tmp_path, steps)
    # leave room for the run's own files but not for the big one (twice: input + worktree)
    free = 2_000_000 if where == "policy" else 5_000_000
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (32 * 1024 * 1024 - free))
    proc = doit(tmp_path, "run", "request=req.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "no space left on the device" in out and "re-run the same command" in out, out
    assert "Traceback" not in out and "internal error" not in out, out
    failed = [e for e in tape_events(small_disk / "r1") if e["event"] == "step_failed"] \
        if (small_disk / "r1" / "audit" / "run_tape.jsonl").exists() else []
    for event in failed:  # when the tape could take it, it says what happened
        assert "no space left on the device" in event["reason"], event
    repo = tmp_path / "repo"
    if repo.exists():  # nothing landed
        assert "big.txt" not in git(repo, "ls-tree", "-r", "--name-only", "HEAD")
    filler.unlink()
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (repo / "big.txt").stat().st_size == 3_000_000
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout[-3000:]


@pytest.mark.parametrize("full", ["outputs", "target", "checkout"])
def test_a_full_disk_during_apply_lands_nothing_and_the_rerun_lands(
        tmp_path: Path, small_disk: Path, full: str) -> None:
    """Every step passed; the disk fills before `git am` (the run was killed just before
    apply, then the disk filled). The apply is one clear error, the branch and the target
    are untouched, no `git am` state is left behind, and the re-run after space is freed
    lands the run with every gate passing. `full` is the file system that fills: the one
    with the evidence (where `git am` runs) or the target repository's; `checkout`: the
    target's, where the objects fit (they compress) but the checked-out files do not, so
    the checkout fills half-way: those files are removed again."""
    write_policy(tmp_path / "policy.yaml")
    outputs = "outputs=out" if full == "outputs" else f"outputs={tmp_path / 'evidence'}"
    repo = tmp_path / "repo" if full == "outputs" else small_disk / "repo"
    (tmp_path / "big.bin").write_bytes(b"compressible\n" * 250_000 if full == "checkout"
                                       else os.urandom(3_000_000))  # incompressible
    steps = [{"id": "w1", "message": "w1: small", "write": {"path": "a.txt", "content": "a\n"}},
             {"id": "w2", "message": "w2: big", "write": {"path": "big.bin",
                                                         "content_file": "big.bin"}}]
    write_request(tmp_path, steps, repo=str(repo))
    killed = doit(tmp_path, "run", "request=req.yaml", outputs,
                  env={"AGENTOS_CRASH_AT": "apply.begin"})
    assert killed.returncode != 0, killed.stdout + killed.stderr
    before = git(repo, "rev-parse", "HEAD")
    stat = os.statvfs(small_disk)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 1_500_000))
    proc = doit(tmp_path, "run", "request=req.yaml", outputs)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "no space left on the device" in out and "re-run the same command" in out, out
    assert "Traceback" not in out and "internal error" not in out and "git am failed" not in out
    assert git(repo, "rev-parse", "HEAD") == before
    assert git(repo, "--no-optional-locks", "status", "--porcelain") == ""
    assert not list(tmp_path.rglob("rebase-apply")), "git am state left behind"
    filler.unlink()
    proc = doit(tmp_path, "run", "request=req.yaml", outputs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (repo / "big.bin").read_bytes() == (tmp_path / "big.bin").read_bytes()
    assert len(git(repo, "rev-list", f"{before}..HEAD").split()) == 2
    gates = doit(tmp_path, "gates", "request=req.yaml", outputs)
    assert gates.returncode == 0, gates.stdout[-3000:]
