"""End-to-end runs through `doit` on real temporary git repositories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from runutil import doit, git, snapshot, tape_events, write_request

SIX = [{"id": f"step_0{i}", "message": f"step_0{i}: add file {i}",
        "write": {"path": f"docs/f{i}.md", "content": f"content {i}\n"}} for i in range(1, 7)]


def starts(run_dir: Path) -> list[str]:
    return [e["step"] for e in tape_events(run_dir) if e["event"] == "step_start"]


def test_six_writes_land_as_six_commits_and_rerun_is_a_noop(tmp_path: Path) -> None:
    # like the project itself: outputs/ and the demo repo live inside another checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("out/\nrepo/\n")
    write_request(tmp_path, SIX)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    repo, run_dir = tmp_path / "repo", tmp_path / "out" / "r1"
    subjects = git(repo, "log", "--format=%s", "main").splitlines()
    assert subjects == [f"step_0{i}: add file {i}" for i in range(6, 0, -1)] + ["initial commit"]
    for rel in ("audit/run_tape.jsonl", "audit/tape_head.json", "audit/checksums.json",
                "audit/SHA256SUMS", "execution_result.json",
                *(f"patches/step_0{i}.patch" for i in range(1, 7)),
                *(f"steps/step_0{i}.json" for i in range(1, 7))):
        assert (run_dir / rel).is_file(), rel
    result = json.loads((run_dir / "execution_result.json").read_text())
    assert result["status"] == "applied" and Path(result["repo"]).is_absolute()
    assert result["branch"] == "main" and len(result["commits_applied"]) == 6
    assert result["post_apply_head"] == git(repo, "rev-parse", "main")
    assert result["pre_apply_head"] == result["base"] == git(repo, "rev-parse", "main~6")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "audit/SHA256SUMS"],
                          cwd=run_dir).returncode == 0
    events = [e["event"] for e in tape_events(run_dir)]
    assert events[0] == "run_start" and events[-1] == "run_end"
    assert events.count("step_start") == events.count("step_end") == 6
    before = snapshot(run_dir) | {"HEAD": git(repo, "rev-parse", "main").encode()}
    proc = doit(tmp_path, "run", "request=req.yaml", check=0)
    assert "-- [1/6] step:step_01 (up to date)" in proc.stdout
    assert ".  " not in proc.stdout  # nothing executed
    after = snapshot(run_dir) | {"HEAD": git(repo, "rev-parse", "main").encode()}
    changed = {k for k in before.keys() | after.keys()
               if before.get(k) != after.get(k) and not k.startswith((".state/", "worktree/"))}
    assert not changed
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout + gates.stderr


def test_step_targets_then_edit_reexecutes_only_from_the_edit(tmp_path: Path) -> None:
    write_request(tmp_path, SIX)
    doit(tmp_path, "run", "request=req.yaml", "step:step_06", check=0)
    repo, run_dir = tmp_path / "repo", tmp_path / "out" / "r1"
    assert git(repo, "rev-list", "--count", "main") == "1"  # executed, not applied
    assert git(repo, "status", "--porcelain") == ""
    assert not (repo / "docs").exists()
    steps = [dict(s) for s in SIX]
    steps[3] = {**steps[3], "write": {"path": "docs/f4.md", "content": "edited 4\n"}}
    write_request(tmp_path, steps)
    doit(tmp_path, "run", "request=req.yaml", "step:step_06", check=0)
    assert starts(run_dir) == [f"step_0{i}" for i in range(1, 7)] + \
        ["step_04", "step_05", "step_06"]
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert git(repo, "rev-list", "--count", "main") == "7"
    assert git(repo, "show", "main:docs/f4.md") == "edited 4"


def test_sealed_run_refuses_a_changed_request_and_run_new_lands_only_the_edit(
        tmp_path: Path) -> None:
    write_request(tmp_path, SIX)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    repo = tmp_path / "repo"
    head = git(repo, "rev-parse", "main")
    tape_before = (tmp_path / "out/r1/audit/run_tape.jsonl").read_bytes()
    steps = [dict(s) for s in SIX]
    steps[1] = {**steps[1], "write": {"path": "docs/f2.md", "content": "edited 2\n"}}
    write_request(tmp_path, steps)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0
    assert "is sealed" in proc.stderr and "run=NEW" in proc.stderr
    assert git(repo, "rev-parse", "main") == head
    assert (tmp_path / "out/r1/audit/run_tape.jsonl").read_bytes() == tape_before
    doit(tmp_path, "run", "request=req.yaml", "run=NEW", check=0)
    manifests = {p.stem: json.loads(p.read_text())["status"]
                 for p in (tmp_path / "out/NEW/steps").glob("*.json")}
    assert manifests == {f"step_0{i}": ("changed" if i == 2 else "unchanged")
                         for i in range(1, 7)}
    assert git(repo, "rev-list", "--count", f"{head}..main") == "1"
    assert sorted(p.name for p in (tmp_path / "out/NEW/patches").iterdir()) == ["step_02.patch"]


def test_failed_step_stops_the_run_and_resume_starts_there(tmp_path: Path) -> None:
    def request(command: list[str]) -> None:
        write_request(tmp_path, [SIX[0], SIX[1], {"id": "check", "run": command}, SIX[2]])

    request(["sh", "-c", "echo checking; exit 3"])
    repo, run_dir = tmp_path / "repo", tmp_path / "out" / "r1"
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0
    assert "step check" in proc.stderr and "exited 3" in proc.stderr
    assert (run_dir / "logs/check.out").read_text() == "checking\n"
    assert git(repo, "rev-list", "--count", "main") == "1"
    events = tape_events(run_dir)
    assert [e["event"] for e in events][-2:] == ["step_failed", "run_end"]
    assert not (run_dir / "steps/check.json").exists()
    result = json.loads((run_dir / "execution_result.json").read_text())
    assert result["status"] == "failed" and result["failure"]["step"] == "check"
    request(["sh", "-c", "echo fixed"])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert starts(run_dir) == ["step_01", "step_02", "check", "check", "step_03"]
    assert git(repo, "rev-list", "--count", "main") == "4"
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout


def test_patch_that_does_not_apply_fails_the_step(tmp_path: Path) -> None:
    (tmp_path / "bad.diff").write_text("--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n"
                                       "-no such line\n+x\n")
    write_request(tmp_path, [SIX[0], {"id": "p", "patch": "bad.diff"}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and "patch does not apply" in proc.stderr
    assert f"{tmp_path / 'req.yaml'}" in proc.stderr
    assert git(tmp_path / "repo", "rev-list", "--count", "main") == "1"


def test_dirty_target_is_refused_and_nothing_applied(tmp_path: Path) -> None:
    write_request(tmp_path, SIX[:2])
    doit(tmp_path, "run", "request=req.yaml", "step:step_02", check=0)
    repo = tmp_path / "repo"
    (repo / "README.md").write_text("local edit\n")
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and "uncommitted changes" in proc.stderr
    assert git(repo, "rev-list", "--count", "main") == "1"
    assert (repo / "README.md").read_text() == "local edit\n"
    git(repo, "checkout", "--", "README.md")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert git(repo, "rev-list", "--count", "main") == "3"


def test_moved_branch_is_refused(tmp_path: Path) -> None:
    write_request(tmp_path, SIX[:1])
    doit(tmp_path, "run", "request=req.yaml", "step:step_01", check=0)
    repo = tmp_path / "repo"
    git(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty",
        "-m", "someone else")
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and "moved since this run started" in proc.stderr
    assert git(repo, "log", "-1", "--format=%s") == "someone else"


def test_target_untouched_until_apply(tmp_path: Path) -> None:
    write_request(tmp_path, SIX[:3])
    doit(tmp_path, "run", "request=req.yaml", "worktree", check=0)
    before = snapshot(tmp_path / "repo")
    doit(tmp_path, "run", "request=req.yaml", "step:step_03", check=0)
    after = snapshot(tmp_path / "repo")
    # only git's own worktree bookkeeping and new objects may differ; refs, index, files not
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert all(k.startswith((".git/objects/", ".git/worktrees/")) for k in changed), changed


def _hostile_repo(repo: Path, marker_dir: Path) -> None:
    """A repository whose hooks, fsmonitor, filters, pager and signing all run evil.sh."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    (repo / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (repo / "README.md").write_text("hostile\n")
    for args in (["add", "-A"], ["-c", "user.name=o", "-c", "user.email=o@x", "commit", "-q",
                                 "-m", "init"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    # only now turn the repository hostile
    hooks = repo / ".git" / "hooks"
    for hook in ("pre-commit", "post-commit", "post-checkout", "applypatch-msg",
                 "pre-applypatch", "post-applypatch", "commit-msg", "prepare-commit-msg",
                 "reference-transaction", "post-index-change", "post-rewrite"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker_dir}/hook-{hook}\n")
        (hooks / hook).chmod(0o755)
    evil = marker_dir / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {marker_dir}/ran-$$\ncat\n")
    evil.chmod(0o755)
    for key, value in (("core.fsmonitor", str(evil)), ("filter.evil.clean", str(evil)),
                       ("filter.evil.smudge", str(evil)), ("filter.evil.process", str(evil)),
                       ("filter.evil.required", "true"), ("diff.evil.textconv", str(evil)),
                       ("core.pager", str(evil)), ("commit.gpgSign", "true"),
                       ("gpg.program", str(evil)), ("core.editor", str(evil))):
        subprocess.run(["git", "-C", str(repo), "config", key, value], check=True, env=env)
    # a hostile repo that is also dirty in git's eyes would be refused; keep it clean
    (repo / "README.md").touch()


def test_hostile_repository_executes_nothing_and_the_run_succeeds(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    _hostile_repo(tmp_path / "repo", markers)
    patch = tmp_path / "p.diff"
    patch.write_text("--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-hostile\n+patched\n")
    write_request(tmp_path, [SIX[0], {"id": "p", "patch": "p.diff"}], init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert sorted(p.name for p in markers.iterdir()) == ["evil.sh"]
    assert git(tmp_path / "repo", "show", "main:README.md") == "patched"
    assert git(tmp_path / "repo", "rev-list", "--count", "main") == "3"
    # control: the same repository with plain git does run its hooks and filters
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "-c", "commit.gpgSign=false",
                    "commit", "-q", "--allow-empty", "-m", "control"],
                   env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}, check=False)
    ran = sorted(p.name for p in markers.iterdir())
    assert any(n.startswith("ran-") for n in ran), ran


def _upstream_series(tmp: Path) -> tuple[Path, list[Path], list[str]]:
    """A real git history with CRLF files, a binary file, a rename and a ~19k-line patch."""
    up = tmp / "upstream"
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "u",
           "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"}

    def g(*args: str) -> str:
        return subprocess.run(["git", "-C", str(up), *args], check=True, env=env,
                              capture_output=True, text=True).stdout.strip()

    subprocess.run(["git", "init", "-q", "-b", "main", str(up)], check=True, env=env)
    (up / "README.md").write_text("base\n")
    g("add", "-A")
    g("commit", "-q", "-m", "base")
    (up / "win.txt").write_bytes(b"line one\r\nline two\r\n")
    (up / "logo.bin").write_bytes(bytes(range(256)) * 8)
    g("add", "-A")
    g("commit", "-q", "-m", "crlf and binary")
    (up / "win.txt").write_bytes(b"line one\r\nline 2\r\nline three\r\n")
    (up / "logo.bin").write_bytes(bytes(reversed(range(256))) * 9)
    g("mv", "README.md", "README.txt")
    g("add", "-A")
    g("commit", "-q", "-m", "edit crlf, change binary, rename")
    (up / "big.hpp").write_bytes(b"".join(b"int value_%d = %d;\r\n" % (i, i * 7)
                                          for i in range(19000)))
    (up / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (up / "tool.sh").chmod(0o755)
    g("add", "-A")
    g("commit", "-q", "-m", "vendor a 19k-line CRLF header, add an executable")
    g("rm", "-q", "logo.bin")
    g("commit", "-q", "-m", "drop the binary")
    out = tmp / "series"
    g("format-patch", "-q", "--binary", "-k", "-o", str(out), "main~4..main")
    trees = [g("rev-parse", f"main~{i}^{{tree}}") for i in range(3, -1, -1)]
    return up, sorted(out.iterdir()), trees


def test_generated_series_with_crlf_binary_rename_and_large_patch_reproduces_trees(
        tmp_path: Path) -> None:
    up, patches, trees = _upstream_series(tmp_path)
    assert max(len(p.read_bytes().splitlines()) for p in patches) > 19000
    subprocess.run(["git", "clone", "-q", str(up), str(tmp_path / "repo")], check=True)
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "reset", "-q", "--hard", "main~4"],
                   check=True)
    steps = [{"id": f"p{i}", "message": f"upstream {i}", "patch": str(p)}
             for i, p in enumerate(patches, 1)]
    write_request(tmp_path, steps, init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    repo = tmp_path / "repo"
    for i, tree in enumerate(trees):
        assert git(repo, "rev-parse", f"main~{3 - i}^{{tree}}") == tree
    assert git(repo, "rev-parse", "main^{tree}") == git(up, "rev-parse", "main^{tree}")
    assert (repo / "big.hpp").read_bytes() == (up / "big.hpp").read_bytes()
    assert os.access(repo / "tool.sh", os.X_OK)


def test_doit_list_and_info(tmp_path: Path) -> None:
    write_request(tmp_path, SIX[:3])
    listing = doit(tmp_path, "list", "request=req.yaml", check=0).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    for name in ("policy", "worktree", "step:step_01", "step:step_03", "apply", "checksums",
                 "result", "gates", "sign"):
        assert name in names, listing
    info = doit(tmp_path, "info", "step:step_03", "request=req.yaml").stdout  # exit 1: not up to date
    assert "step_03.json" in info and "step_02.json" in info and "file_dep" in info


@pytest.mark.parametrize("cli", [True])
def test_agentos_exec_run_is_the_same_engine(tmp_path: Path, cli: bool) -> None:
    write_request(tmp_path, SIX[:2])
    proc = subprocess.run(["agentos", "exec", "run", "--request", "req.yaml", "--outputs",
                           "out"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert git(tmp_path / "repo", "rev-list", "--count", "main") == "3"
    again = subprocess.run(["agentos", "exec", "run", "--request", "req.yaml", "--outputs",
                            "out"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0 and "-- [2/2] step:step_02 (up to date)" in again.stdout


def test_crash_mid_run_resumes_without_redoing_completed_steps(tmp_path: Path) -> None:
    """SIGKILL doit while step 4 runs: doit's DB is lost, the manifests are the truth."""
    import signal
    import sys
    import time

    from runutil import DODO

    steps = [*SIX[:3], {"id": "slow", "run": ["sh", "-c", "sleep 30"]}, *SIX[3:5]]
    write_request(tmp_path, steps)
    run_dir = tmp_path / "out" / "r1"
    proc = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(DODO), "run",
                             "request=req.yaml", "outputs=out"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (run_dir / "audit/run_tape.jsonl").exists() and \
                    "slow" in starts(run_dir):
                break
            time.sleep(0.05)
        else:
            pytest.fail("step 'slow' never started")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (run_dir / "steps/step_03.json").exists()
    assert not (run_dir / "steps/slow.json").exists()
    # fix the slow step and resume: steps 1-3 are not executed again
    steps[3] = {"id": "slow", "run": ["true"]}
    write_request(tmp_path, steps)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert starts(run_dir) == ["step_01", "step_02", "step_03", "slow", "slow", "step_04",
                               "step_05"]
    assert git(tmp_path / "repo", "rev-list", "--count", "main") == "6"
    assert not any(e["event"] == "step_start" and e["step"] == "step_01"
                   for e in tape_events(run_dir)[4:])


def test_rollback_restores_the_branch_with_proof_and_run_reapplies(tmp_path: Path) -> None:
    write_request(tmp_path, SIX[:3])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    repo, run_dir = tmp_path / "repo", tmp_path / "out" / "r1"
    result = json.loads((run_dir / "execution_result.json").read_text())
    doit(tmp_path, "rollback", "request=req.yaml", check=0)
    assert git(repo, "rev-parse", "main") == result["pre_apply_head"]
    assert git(repo, "status", "--porcelain") == ""
    proof = json.loads((run_dir / "audit/rollback_proof.json").read_text())
    assert proof["match"] is True
    assert proof["before"]["head"] == result["post_apply_head"]
    assert proof["after"]["tree"] == git(repo, "rev-parse", f"{result['base']}^{{tree}}")
    events = tape_events(run_dir)
    assert [e["event"] for e in events][-2:] == ["rollback", "run_end"]
    assert events[-1]["status"] == "rolled_back"
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert "R2" in gates.stdout
    gate_results = {g["id"]: g["status"] for g in
                    json.loads((run_dir / "reports/gates.json").read_text())["gates"]}
    assert gate_results["R2"] == "PASS" and gate_results["R3"] == "PASS"
    if "EX-F" in gate_results:
        assert gate_results["EX-F"] == "PASS"
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert git(repo, "rev-list", "--count", "main") == "4"


def test_rollback_refuses_when_the_branch_moved_after_apply(tmp_path: Path) -> None:
    write_request(tmp_path, SIX[:2])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    repo = tmp_path / "repo"
    git(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty",
        "-m", "later work")
    proc = doit(tmp_path, "rollback", "request=req.yaml")
    assert proc.returncode != 0 and "would discard other commits" in proc.stderr
    assert git(repo, "log", "-1", "--format=%s") == "later work"


@pytest.mark.parametrize("crash_at", ["apply.checkout_moved", "apply.branch_moved"])
def test_interrupted_apply_is_recovered(tmp_path: Path, crash_at: str) -> None:
    """A SIGKILL while landing: after the target checkout moved but before the branch
    did, or after the branch moved but before the apply was recorded. The next run lands
    every commit exactly once and leaves the checkout clean at the new head."""
    write_request(tmp_path, SIX[:4])
    repo, run_dir = tmp_path / "repo", tmp_path / "out" / "r1"
    doit(tmp_path, "run", "request=req.yaml", "step:step_04", check=0)
    base = git(repo, "rev-parse", "main")
    crashed = doit(tmp_path, "run", "request=req.yaml", env={"AGENTOS_CRASH_AT": crash_at})
    assert crashed.returncode == -signal.SIGKILL
    moved = git(repo, "rev-parse", "main") != base
    assert moved == (crash_at == "apply.branch_moved")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert git(repo, "log", "--format=%s", f"{base}..main").splitlines() == \
        [s["message"] for s in reversed(SIX[:4])]
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "docs").is_dir()
    applied = [e for e in tape_events(run_dir) if e["event"] == "patches_applied"]
    assert len(applied) == 1 and applied[0]["pre_apply_head"] == base


def test_post_step_violation_fails_the_step_and_nothing_lands(tmp_path: Path) -> None:
    """The policy judges what a command really changed, not what it was asked to do."""
    write_request(tmp_path, [SIX[0], {"id": "sneaky", "run": [
        "sh", "-c", "echo ok > docs/fine.md; mkdir -p secrets; echo key > secrets/token"]}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0
    assert "policy violation: paths.deny[2]: step sneaky changed secrets/token" in proc.stderr
    run_dir = tmp_path / "out" / "r1"
    failed = [e for e in tape_events(run_dir) if e["event"] == "step_failed"]
    assert failed and failed[-1]["step"] == "sneaky" and failed[-1]["rule_id"] == "paths.deny[2]"
    assert git(tmp_path / "repo", "rev-list", "--count", "main") == "1"
    assert not (run_dir / "steps/sneaky.json").exists()


def test_write_through_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "docs").symlink_to(outside)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=u", "-c", "user.email=u@x",
                    "commit", "-q", "-m", "symlinked docs"], check=True)
    write_request(tmp_path, [SIX[0]], init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and "paths.symlink" in proc.stderr
    assert list(outside.iterdir()) == []


def test_writing_a_gitignored_path_is_a_clear_error(tmp_path: Path) -> None:
    write_request(tmp_path, [{"id": "ignore", "write": {"path": ".gitignore",
                                                         "content": "build/\n"}},
                             {"id": "b", "write": {"path": "build/out.txt", "content": "x"}}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0
    assert "step b: git refuses to stage" in proc.stderr and ".gitignore" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_rewriting_a_file_with_identical_content_is_unchanged(tmp_path: Path) -> None:
    write_request(tmp_path, [SIX[0], {"id": "same", "write": {
        "path": "docs/f1.md", "content": "content 1\n"}}, {"id": "rm", "delete": {
            "path": "docs/f1.md"}}])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    run_dir = tmp_path / "out" / "r1"
    statuses = [json.loads((run_dir / f"steps/{s}.json").read_text())["status"]
                for s in ("step_01", "same", "rm")]
    assert statuses == ["changed", "unchanged", "changed"]
    rm = json.loads((run_dir / "steps/rm.json").read_text())
    assert rm["files"] == [{"path": "docs/f1.md", "status": "D", "old_path": None,
                            "old_mode": "100644", "new_mode": None, "sha256": None}]
    assert git(tmp_path / "repo", "rev-list", "--count", "main") == "3"


def test_gitattributes_normalisation_is_recorded_as_what_lands(tmp_path: Path) -> None:
    """With `* text=auto eol=lf` a CRLF write lands as an LF blob: the evidence records the
    blob, and every gate passes on the honest run."""
    write_request(tmp_path, [
        {"id": "attrs", "write": {"path": ".gitattributes", "content": "* text=auto eol=lf\n"}},
        {"id": "crlf", "write": {"path": "docs/win.txt", "content": "a\r\nb\r\n"}},
        {"id": "cmd", "run": ["sh", "-c", "printf 'x\\r\\ny\\r\\n' > docs/cmd.txt"]},
    ])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    repo, run_dir = tmp_path / "repo", tmp_path / "out" / "r1"
    assert git(repo, "cat-file", "blob", "main~1:docs/win.txt") == "a\nb"
    manifest = json.loads((run_dir / "steps/crlf.json").read_text())
    import hashlib

    assert manifest["files"][0]["sha256"] == hashlib.sha256(b"a\nb\n").hexdigest()
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout[-3000:]
