"""Adversarial review: attacks a hostile user, repository or step would try, end to end.

Every test drives the real executor (`doit run` through tests/runutil.py) with inputs an
attacker controls: the request and its input files, the policy, the target repository's
contents and config, the files a `run:` or `tool:` step leaves behind, the environment.
Each asserts the SECURE outcome. Tests named in tests/security/adversarial_notes.md as
HOLE fail until the product is fixed; the others document a defence that holds.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from runutil import DODO, doit, tape_events, write_policy, write_request

from .conftest import requires_bwrap

pytestmark = [pytest.mark.security, requires_bwrap]

CLEAN_GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                 "GIT_AUTHOR_NAME": "o", "GIT_AUTHOR_EMAIL": "o@x",
                 "GIT_COMMITTER_NAME": "o", "GIT_COMMITTER_EMAIL": "o@x"}
WRITE_DOC = {"id": "s1", "write": {"path": "docs/a.md", "content": "a\n"}}


def host_git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=CLEAN_GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(repo: Path, files: dict[str, str | bytes]) -> Path:
    """A target repository with one commit holding `files` (clean working tree)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True,
                   env=CLEAN_GIT_ENV)
    for rel, content in files.items():
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    host_git(repo, "add", "-A")
    host_git(repo, "commit", "-q", "-m", "init")
    return repo


def marker_script(markers: Path) -> Path:
    """A host program that leaves a file in `markers` whenever anything runs it."""
    markers.mkdir(exist_ok=True)
    evil = markers.parent / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {markers}/ran-$$\ncat\n")
    evil.chmod(0o755)
    return evil


def doit_bounded(tmp: Path, *args: str, env: dict[str, str] | None = None,
                 seconds: float = 20) -> subprocess.CompletedProcess[str] | None:
    """Like runutil.doit, but a hang is killed (process group) and returned as None."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(DODO), *args,
                             "outputs=out"], cwd=tmp, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def py(code: str) -> list[str]:
    return ["python3", "-c", code]


# --------------------------------------------------------------------------- hostile repo config


def test_filter_driver_whose_name_contains_equals_executes_nothing(tmp_path: Path) -> None:
    """HOLE. git.Git blanks command keys with `-c filter.<name>.smudge=`, but `git -c`
    splits at the FIRST '=': for a driver named `a=b` that sets `filter.a` instead, so the
    repository's smudge/clean programs run on the host (worktree reset, git add)."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", ".gitattributes": "* filter=a=b\n"})
    for kind in ("smudge", "clean"):
        host_git(repo, "config", f"filter.a=b.{kind}", str(evil))
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    doit(tmp_path, "run", "request=req.yaml")
    assert sorted(p.name for p in markers.iterdir()) == [], "the repository's filter ran"
    # control: plain git does run this filter, so the assertion above can fail
    (repo / "README.md").unlink()
    host_git(repo, "checkout", "--", "README.md")
    assert list(markers.iterdir())


@pytest.mark.parametrize("section", ["diff.x=y.textconv", "merge.x=y.driver"])
def test_other_command_drivers_with_equals_in_their_name_are_not_used(
        tmp_path: Path, section: str) -> None:
    """Defence holds today only because these drivers are never consulted (format-patch
    --no-textconv, am --no-3way); recorded so a future git call that consults them fails."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    attr = "diff=x=y" if section.startswith("diff") else "merge=x=y"
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", ".gitattributes": f"* {attr}\n"})
    host_git(repo, "config", section, str(evil))
    write_request(tmp_path, [WRITE_DOC, {"id": "s2", "write": {"path": "README.md",
                                                                 "content": "changed\n"}}],
                  init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    doit(tmp_path, "gates", "request=req.yaml")
    assert list(markers.iterdir()) == []


def test_conditional_include_for_linked_worktrees_executes_nothing(tmp_path: Path) -> None:
    """Blocked: an `includeIf "gitdir:**/worktrees/**"` that only applies inside a linked
    worktree, adding fsmonitor, a filter, core.worktree and hooksPath, changes nothing:
    the run is refused before any git call could read the included file."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep\n")
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", ".gitattributes": "* filter=w\n"})
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("post-checkout", "pre-commit", "post-commit", "post-applypatch"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {markers}/hook-{hook}\n")
        (hooks / hook).chmod(0o755)
    (repo / ".git" / "wt.cfg").write_text(
        f"[core]\n\tfsmonitor = {evil}\n\tworktree = {victim}\n\thooksPath = {hooks}\n"
        f"[filter \"w\"]\n\tsmudge = {evil}\n\tclean = {evil}\n\tprocess = {evil}\n"
        "\trequired = true\n")
    with open(repo / ".git" / "config", "a") as config:
        config.write('[includeIf "gitdir:**/worktrees/**"]\n\tpath = wt.cfg\n')
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    doit(tmp_path, "gates", "request=req.yaml")
    assert list(markers.iterdir()) == []
    assert [p.name for p in victim.iterdir()] == ["precious.txt"]
    # since the boundary work a config with includes is refused up front (clear error)
    assert proc.returncode != 0 and "uses includeif" in proc.stderr, proc.stderr[-600:]
    assert host_git(repo, "rev-list", "--count", "main") == "1"


# --------------------------------------------------------------------------- step ids as paths


@pytest.mark.parametrize("step_id", ["..", "."])
def test_tool_step_id_cannot_delete_evidence_outside_its_tool_dir(tmp_path: Path,
                                                                    step_id: str) -> None:
    """HOLE. Step ids match [A-Za-z0-9_.-]+, so `..` and `.` are accepted; a tool step's
    evidence dir is `tools/<id>` and dispatch.run_tool_step rmtree()s it before running:
    `tools/..` is the whole run directory (tape, audit, lock, worktree), `tools/.` every
    other tool step's packs."""
    keep = tmp_path / "out" / "r1" / "KEEP"
    keep.parent.mkdir(parents=True)
    keep.write_text("evidence from before\n")
    (keep.parent / "tools" / "t0").mkdir(parents=True)
    (keep.parent / "tools" / "t0" / "KEEP").write_text("another step's pack\n")
    tool = {"adapter": "command", "prompt": "p", "paths": ["docs/**"],
            "argv": py("open('docs/t.md', 'w').write('t')")}
    write_request(tmp_path, [WRITE_DOC, {"id": step_id, "tool": tool}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert keep.read_text() == "evidence from before\n"
    assert (keep.parent / "tools" / "t0" / "KEEP").is_file()
    tape = keep.parent / "audit" / "run_tape.jsonl"
    if proc.returncode == 0 or tape.exists():
        assert tape_events(keep.parent)[0]["event"] == "run_start"


# --------------------------------------------------------------------------- what steps leave behind


def _special_bits(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"{path.relative_to(root)} {oct(info.st_mode)}")
    return found


def test_setuid_file_made_by_a_step_does_not_survive_on_the_host(tmp_path: Path) -> None:
    """HOLE. The sandbox mounts the worktree nosuid, but the bit is on disk: a step can
    chmod 4755 a copy of a binary, owned by the (root) uid running agentos. check_changes
    never looks at the mode, git records only 755, so the step passes and a setuid-root
    file stays in outputs/<run>/worktree (tracked or gitignored) for any local user."""
    code = ("import os, shutil\n"
            "for p in ('tool', 'build/tool'):\n"
            "    os.makedirs(os.path.dirname(p) or '.', exist_ok=True)\n"
            "    shutil.copy('/bin/true', p)\n"
            "    os.chmod(p, 0o6755)\n"
            "print(oct(os.stat('tool').st_mode))\n")
    write_request(tmp_path, [{"id": "ign", "write": {"path": ".gitignore",
                                                      "content": "build/\n"}},
                             {"id": "suid", "run": py(code)}])
    doit(tmp_path, "run", "request=req.yaml")
    log = tmp_path / "out" / "r1" / "logs" / "suid.out"
    left = _special_bits(tmp_path)
    for entry in left:  # do not leave setuid copies in /tmp, whatever the outcome
        (tmp_path / entry.split(" ")[0]).chmod(0o755)
    assert log.exists() and "0o106755" in log.read_text(), "control: the step set the bits"
    assert left == []


def test_fifo_left_by_a_run_step_cannot_hang_the_host(tmp_path: Path) -> None:
    """HOLE. A gitignored FIFO made by a run step is allowed (only deny/ask judge ignored
    files) and survives into the next step (the worktree is not cleaned between passing
    steps); a `write` step to that path then blocks forever in the host executor
    (`target.read_bytes()` in execute_op): no step_seconds applies to host work."""
    write_request(tmp_path, [
        {"id": "ign", "write": {"path": ".gitignore", "content": "*.log\n"}},
        {"id": "fifo", "run": py("import os; os.makedirs('docs'); os.mkfifo('docs/x.log')")},
        {"id": "w", "write": {"path": "docs/x.log", "content": "hello\n"}},
    ])
    done = doit_bounded(tmp_path, "run", "request=req.yaml", seconds=6)
    assert done is not None, "the host executor hung on a FIFO a step left behind"


def test_each_step_starts_without_the_previous_steps_ignored_files(tmp_path: Path) -> None:
    """HOLE. README: 'Every step starts from a clean checkout of its parent commit, so a
    re-executed step sees exactly what it saw before.' prepare_worktree skips the reset and
    `git clean -ffdx` when the previous step passed, so gitignored files (caches, FIFOs,
    planted tools) leak into the next step; a re-run from that step would not see them."""
    write_request(tmp_path, [
        {"id": "ign", "write": {"path": ".gitignore", "content": "cache/\n"}},
        {"id": "plant", "run": py("import os; os.makedirs('cache'); "
                                  "open('cache/planted', 'w').write('x')")},
        {"id": "look", "run": py("import os, sys; sys.exit(7 if os.path.exists("
                                 "'cache/planted') else 0)")},
    ])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode == 0, proc.stderr[-800:]


def test_relative_path_entry_does_not_run_a_planted_git_on_the_host(tmp_path: Path) -> None:
    """HOLE. Host git is started by name with the user's PATH (git_env passes PATH) and
    cwd = the worktree. An empty or relative PATH entry (`PATH=:$PATH`, a common slip)
    makes Python's exec search the cwd: a run step plants an executable `git` in the
    worktree and the executor's next `git status` runs it on the host, unsandboxed."""
    markers = tmp_path / "markers"
    markers.mkdir()
    real_git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True,
                              text=True, check=True).stdout.strip()
    fake = f"#!/bin/sh\ntouch {markers}/host-ran-planted-git\nexec {real_git} \"$@\"\n"
    code = f"import os; open('git', 'w').write({fake!r}); os.chmod('git', 0o755)"
    write_request(tmp_path, [{"id": "ign", "write": {"path": ".gitignore", "content": "git\n"}},
                             {"id": "plant", "run": py(code)}, WRITE_DOC])
    doit(tmp_path, "run", "request=req.yaml", env={"PATH": ":" + os.environ["PATH"]})
    assert list(markers.iterdir()) == []


def test_shebang_in_the_repository_cannot_bind_a_private_host_directory(tmp_path: Path) -> None:
    """HOLE. For a program inside the worktree, sandbox.program.plan_program follows its shebang
    and binds the interpreter's directory (or install prefix) read-only. The shebang is
    written by the untrusted repository, so it picks ANY host directory holding an
    executable (~/.local/bin, ~/bin, a tool dir next to credentials) and reads what lies
    beside it, although that directory is on no PATH the policy allows."""
    private = tmp_path / "home" / ".local" / "bin"
    private.mkdir(parents=True)
    (private / ".token").write_text("TOKEN-4f2a9c\n")
    helper = private / "helper"
    helper.write_text(f"#!/bin/sh\ncat {private}/.token\n")
    helper.chmod(0o755)
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n",
                                         "check.sh": f"#!{helper}\n"})
    (repo / "check.sh").chmod(0o755)
    host_git(repo, "add", "check.sh")
    host_git(repo, "commit", "-q", "-m", "exec bit")
    write_policy(tmp_path / "policy.yaml", commands=[{"argv": ["./check.sh"]}])
    write_request(tmp_path, [{"id": "check", "run": ["./check.sh"], "expect_exit": 0}],
                  init_repo=False)
    doit(tmp_path, "run", "request=req.yaml")
    log = tmp_path / "out" / "r1" / "logs" / "check.out"
    assert log.exists(), "control: the step ran"
    assert "TOKEN-4f2a9c" not in log.read_text()


def test_input_file_symlinked_by_the_repository_to_a_host_secret_is_refused(
        tmp_path: Path) -> None:
    """HOLE (decision, see adversarial_notes.md). An explicit absolute content_file is the
    operator's choice; but a content_file inside the untrusted target repository that the
    repository made a symlink to ~/.ssh/id_rsa is read on the host and lands in the repo,
    the patches and the signed report, bypassing the sandbox that hides $HOME."""
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- SECRET-77\n")
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / "templates").mkdir()
    (repo / "templates" / "header.txt").symlink_to(secret)
    host_git(repo, "add", "-A")
    host_git(repo, "commit", "-q", "-m", "templates")
    write_request(tmp_path, [{"id": "h", "write": {
        "path": "docs/header.txt", "content_file": "repo/templates/header.txt"}}],
                  init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0
    assert "SECRET-77" not in host_git(repo, "log", "-p", "main")
    for artifact in (tmp_path / "out").rglob("*.patch"):
        assert b"SECRET-77" not in artifact.read_bytes()


# --------------------------------------------------------------------------- patches (defences)

SYMLINK_THEN_WRITE = """\
diff --git a/m b/m
new file mode 120000
--- /dev/null
+++ b/m
@@ -0,0 +1 @@
+../../../outside
\\ No newline at end of file
diff --git a/m/pwn b/m/pwn
new file mode 100644
--- /dev/null
+++ b/m/pwn
@@ -0,0 +1 @@
+pwned
"""
LINK_TO_SECRETS = """\
diff --git a/docs/s b/docs/s
new file mode 120000
--- /dev/null
+++ b/docs/s
@@ -0,0 +1 @@
+../secrets
\\ No newline at end of file
"""
WRITE_THROUGH_LINK = """\
diff --git a/docs/s/token b/docs/s/token
new file mode 100644
--- /dev/null
+++ b/docs/s/token
@@ -0,0 +1 @@
+stolen
"""


def test_patch_cannot_write_through_a_symlink_it_creates(tmp_path: Path) -> None:
    """Blocked (git apply: 'beyond a symbolic link'): one patch adds `m -> ../../../outside`
    and `m/pwn`; nothing is written outside the worktree and nothing lands."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "p.diff").write_text(SYMLINK_THEN_WRITE)
    write_request(tmp_path, [{"id": "p", "patch": "p.diff"}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0
    assert list(outside.iterdir()) == []
    assert not any(p.name == "pwn" for p in tmp_path.rglob("pwn"))


def test_deny_cannot_be_dodged_through_a_committed_symlink(tmp_path: Path) -> None:
    """Blocked: step 1 lands `docs/s -> ../secrets` (a relative link inside the tree is
    allowed); a later patch or run step writing `docs/s/token` never lands secrets/."""
    (tmp_path / "link.diff").write_text(LINK_TO_SECRETS)
    (tmp_path / "through.diff").write_text(WRITE_THROUGH_LINK)
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", "secrets/keep": "k\n"})
    for second in ({"id": "through", "patch": "through.diff"},
                   {"id": "through", "run": py("open('docs/s/token', 'w').write('x')")}):
        write_request(tmp_path, [{"id": "link", "patch": "link.diff"}, second],
                      init_repo=False, run_id=f"r-{'patch' if 'patch' in second else 'run'}")
        proc = doit(tmp_path, "run", "request=req.yaml")
        assert proc.returncode != 0
        assert "secrets/token" not in host_git(repo, "ls-tree", "-r", "--name-only", "main")
        assert sorted(p.name for p in (repo / "secrets").iterdir()) == ["keep"]


@pytest.mark.parametrize(("diff", "rule"), [
    ("diff --git a/.GIT/hooks/post-commit b/.GIT/hooks/post-commit\nnew file mode 100755\n"
     "--- /dev/null\n+++ b/.GIT/hooks/post-commit\n@@ -0,0 +1 @@\n+touch /tmp/x\n", "paths.git"),
    ("diff --git a/sub/.git/config b/sub/.git/config\nnew file mode 100644\n--- /dev/null\n"
     "+++ b/sub/.git/config\n@@ -0,0 +1 @@\n+[core]\n", "paths.git"),
    ("diff --git a/README.md b/../escape.md\nsimilarity index 100%\nrename from README.md\n"
     "rename to ../escape.md\n", "paths.parent"),
    ("diff --git a/git~1/config b/git~1/config\nnew file mode 100644\n--- /dev/null\n"
     "+++ b/git~1/config\n@@ -0,0 +1 @@\n+[core]\n", "paths.git"),
])
def test_patch_into_git_dirs_or_out_of_the_tree_is_denied_before_running(
        tmp_path: Path, diff: str, rule: str) -> None:
    (tmp_path / "p.diff").write_text(diff)
    write_request(tmp_path, [WRITE_DOC, {"id": "p", "patch": "p.diff"}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and f"policy violation: {rule}" in proc.stderr, proc.stderr
    assert not (tmp_path / "escape.md").exists()
    assert not any(e["event"] == "step_start" for e in tape_events(tmp_path / "out" / "r1"))


def test_gitlink_in_a_patch_never_lands(tmp_path: Path) -> None:
    """Blocked: a `new file mode 160000` (gitlink) entry never reaches the branch."""
    (tmp_path / "p.diff").write_text(
        "diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000..1111111\n"
        "--- /dev/null\n+++ b/sub\n@@ -0,0 +1 @@\n"
        "+Subproject commit 1111111111111111111111111111111111111111\n")
    write_request(tmp_path, [WRITE_DOC, {"id": "p", "patch": "p.diff"}])
    doit(tmp_path, "run", "request=req.yaml")
    tree = host_git(tmp_path / "repo", "ls-tree", "-r", "main")
    assert "160000" not in tree and "\tsub" not in tree


# --------------------------------------------------------------------------- run steps (defences)


@pytest.mark.parametrize(("code", "rule"), [
    ("import os; os.makedirs('build'); open('build/.env', 'w').write('K=1')", "**/.env"),
    ("import os; os.makedirs('docs'); open('docs/a\\nb.md', 'w').write('x')", "paths.invalid"),
    ("import os; os.makedirs('docs'); os.symlink('../.git', 'docs/g')", "paths.symlink"),
    ("import os; os.makedirs('docs'); open('docs/a', 'w').write('x'); "
     "os.link('docs/a', 'docs/b')", "paths.hardlink"),
    ("import os, subprocess; subprocess.run(['git', 'init', '-q', 'sub'], check=True); "
     "open('sub/f', 'w').write('x')", "paths.git"),
])
def test_what_a_run_step_leaves_is_judged_ignored_files_included(
        tmp_path: Path, code: str, rule: str) -> None:
    """Blocked: an ignored .env, a newline in a file name, a link into .git, a hard link
    and a nested repository each fail the step; nothing lands."""
    write_request(tmp_path, [{"id": "ign", "write": {"path": ".gitignore",
                                                      "content": "build/\n"}},
                             {"id": "bad", "run": py(code)}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and rule in proc.stderr, proc.stderr
    assert host_git(tmp_path / "repo", "rev-list", "--count", "main") == "1"


# --------------------------------------------------------------------------- environment, layout


def test_callers_git_environment_does_not_reach_host_git(tmp_path: Path) -> None:
    """Blocked: GIT_DIR / GIT_WORK_TREE / GIT_INDEX_FILE / GIT_CONFIG_* in the user's
    environment neither redirect host git to a decoy repository nor inject config."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    decoy = make_repo(tmp_path / "decoy", {"README.md": "decoy\n"})
    before = host_git(decoy, "rev-parse", "HEAD")
    write_request(tmp_path, [WRITE_DOC])
    env = {"GIT_DIR": str(decoy / ".git"), "GIT_WORK_TREE": str(decoy),
           "GIT_INDEX_FILE": str(tmp_path / "idx"), "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "core.pager", "GIT_CONFIG_VALUE_0": str(evil),
           "GIT_CONFIG_PARAMETERS": f"'alias.status'='!{evil}'",
           "GIT_EXEC_PATH": str(markers), "GIT_SSH_COMMAND": str(evil),
           "GIT_EXTERNAL_DIFF": str(evil)}
    doit(tmp_path, "run", "request=req.yaml", env=env, check=0)
    assert host_git(decoy, "rev-parse", "HEAD") == before
    assert list(markers.iterdir()) == []
    assert host_git(tmp_path / "repo", "show", "main:docs/a.md") == "a"


def test_outputs_or_repo_symlinked_into_each_other_is_refused(tmp_path: Path) -> None:
    """Blocked: outputs= through a symlink into the target repo, and a repo: that is a
    symlink to the outputs dir, are both seen through (run dir inside the repository)."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (tmp_path / "outlink").symlink_to(repo / "sub", target_is_directory=True)
    write_request(tmp_path, [WRITE_DOC], init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml", "outputs=outlink")
    assert proc.returncode != 0 and "inside the target repository" in proc.stderr
    (tmp_path / "out").mkdir()
    host_git(tmp_path, "init", "-q", "-b", "main", "out")
    (tmp_path / "repolink").symlink_to(tmp_path / "out")
    write_request(tmp_path, [WRITE_DOC], repo="./repolink", init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and "inside the target repository" in proc.stderr


# --------------------------------------------------------------------------- more hostile repos


def test_fifo_in_the_repositorys_hooks_dir_cannot_hang_a_tool_step(tmp_path: Path) -> None:
    """HOLE. dispatch.snapshot_git_dirs reads every file under the git dir's hooks/ and
    info/ (git itself never runs them here: hooksPath=/dev/null) with read_bytes(); a FIFO
    planted there by the repository blocks the host executor forever before the tool runs."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    os.mkfifo(repo / ".git" / "hooks" / "pre-commit")
    tool = {"adapter": "command", "prompt": "p", "paths": ["docs/**"],
            "argv": py("import os; os.makedirs('docs'); open('docs/t.md', 'w').write('t')")}
    write_request(tmp_path, [{"id": "t", "tool": tool}], init_repo=False)
    done = doit_bounded(tmp_path, "run", "request=req.yaml", seconds=6)
    assert done is not None, "the host executor hung reading a FIFO in .git/hooks"


def test_credentials_in_the_repositorys_git_config_are_not_readable_by_a_step(
        tmp_path: Path) -> None:
    """HOLE. The repository's whole git dir is bound read-only into the sandbox, config
    included. actions/checkout stores the CI token there (http.<url>.extraheader), remotes
    often carry https://user:token@ URLs: a step (or a tool with network) reads them, while
    $HOME, /etc/shadow and the environment are hidden."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    host_git(repo, "config", "http.https://github.com/.extraheader",
             "AUTHORIZATION: basic Q0ktVE9LRU4tOTk=")
    host_git(repo, "remote", "add", "origin", "https://bot:CI-TOKEN-99@github.com/o/r.git")
    code = ("import pathlib\n"
            "gitdir = pathlib.Path(open('.git').read().split(': ', 1)[1].strip())\n"
            "pointer = gitdir / 'commondir'\n"
            "common = (gitdir / pointer.read_text().strip()).resolve() if pointer.exists() \\\n"
            "    else gitdir\n"
            "print(open(common / 'config').read())\n"
            "# the target's objects are an alternate: its config sits right beside them\n"
            "for alt in (common / 'objects/info/alternates').read_text().split():\n"
            "    try:\n"
            "        print(open(pathlib.Path(alt).parent / 'config').read())\n"
            "    except OSError as exc:\n"
            "        print('no target config:', exc)\n")
    write_request(tmp_path, [{"id": "peek", "run": py(code)}], init_repo=False)
    doit(tmp_path, "run", "request=req.yaml")
    log = (tmp_path / "out" / "r1" / "logs" / "peek.out").read_text()
    assert "[core]" in log, "control: the step ran and read the config"
    assert "CI-TOKEN-99" not in log and "Q0ktVE9LRU4tOTk=" not in log


def test_commit_message_with_an_embedded_diff_cannot_smuggle_a_change(tmp_path: Path) -> None:
    """Blocked: `git am` (mailinfo) treats a diff inside the commit message as part of the
    patch, so a step message can carry a change the policy never judged; the applied tree
    differs from the tested one and the apply is rolled back (rollback_proof.json)."""
    smuggled = ("ok\n\ndiff --git a/secrets/token b/secrets/token\nnew file mode 100644\n"
                "--- /dev/null\n+++ b/secrets/token\n@@ -0,0 +1 @@\n+smuggled\n")
    write_request(tmp_path, [{**WRITE_DOC, "message": smuggled}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    # since the boundary work such a message is refused when the request loads
    assert proc.returncode != 0 and "message refused" in proc.stderr, proc.stderr[-600:]
    assert not (tmp_path / "repo").exists() or "secrets/token" not in host_git(
        tmp_path / "repo", "ls-tree", "-r", "--name-only", "main")
    assert not (tmp_path / "repo" / "secrets").exists()


@pytest.mark.parametrize("run_name", ["..", "../x", ".hidden", "a/b"])
def test_run_name_cannot_leave_the_outputs_dir(tmp_path: Path, run_name: str) -> None:
    write_request(tmp_path, [WRITE_DOC])
    proc = doit(tmp_path, "run", "request=req.yaml", f"run={run_name}")
    assert proc.returncode != 0 and "invalid run name" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.yaml", "req.yaml"]


def test_non_utf8_file_name_from_a_step_fails_cleanly(tmp_path: Path) -> None:
    """HOLE (robustness). A run step creates `docs/\\xff.md`; git reports it, the path is
    decoded with surrogateescape, the commit is made, and canonical_json(ensure_ascii=False)
    .encode() raises UnicodeEncodeError: a bare traceback instead of a clear refusal."""
    code = "import os; os.makedirs('docs'); open(b'docs/\\xff.md', 'w').write('x')"
    write_request(tmp_path, [{"id": "u", "run": py(code)}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-600:]
    assert host_git(tmp_path / "repo", "rev-list", "--count", "main") == "1"
