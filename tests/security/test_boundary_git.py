"""The boundary, git side: host git never executes what a repository's config names, a
step sees no other run's objects, and what lands is exactly what was tested.

Each test is an exploit first: against the executor before the run-private git dir
(issue 9, classes 1, 2, 3, 7, 8) it succeeded; the assertions state the secure outcome.
Real git, real bwrap, real `doit run`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runutil import DODO, doit, tape_events, write_request

from .conftest import requires_bwrap
from .test_adversarial import host_git, make_repo, marker_script, py

pytestmark = [pytest.mark.security, requires_bwrap]

WRITE_DOC = {"id": "s1", "write": {"path": "docs/a.md", "content": "a\n"}}


def _markers(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir()) if markers.exists() else []


# ------------------------------------------------------------------ 1: submodules a step populated


def test_host_git_never_recurses_into_a_submodule_a_step_populated(tmp_path: Path) -> None:
    """Class 1. The target's tree holds a gitlink `sub` (no .gitmodules). A run step makes
    `sub/` a repository whose own config names a clean filter that touches a host file;
    the executor's post-step `git status` recursed into it (is_submodule_modified runs a
    child git there) and the child ran the filter on the host."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    head = host_git(repo, "rev-parse", "HEAD")
    host_git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},sub")
    host_git(repo, "commit", "-q", "-m", "gitlink")
    (repo / "sub").mkdir(exist_ok=True)
    code = (
        "import os, subprocess\n"
        "env = dict(os.environ, GIT_CONFIG_NOSYSTEM='1', HOME='/tmp')\n"
        "def g(*a): subprocess.run(['git', '-C', 'sub', *a], check=True, env=env)\n"
        "os.makedirs('sub', exist_ok=True)\n"
        "g('init', '-q')\n"
        f"g('config', 'filter.x.clean', '{evil}')\n"
        f"g('config', 'filter.x.process', '{evil}')\n"
        "g('config', 'core.fsmonitor', '" + str(evil) + "')\n"
        "open('sub/.gitattributes', 'w').write('* filter=x\\n')\n"
        "open('sub/f.txt', 'w').write('x\\n')\n"
        "g('-c', 'user.name=a', '-c', 'user.email=a@x', '-c', 'filter.x.clean=cat',\n"
        "  'add', '-A')\n"
        "g('-c', 'user.name=a', '-c', 'user.email=a@x', 'commit', '-q', '-m', 'x')\n"
        "open('sub/f.txt', 'w').write('y\\n')\n"
        "open('docs.md', 'w').write('ok\\n')\n"
    )
    write_request(tmp_path, [{"id": "mk", "run": py(code)}], init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert _markers(markers) == [], f"host git ran the submodule's filter\n{proc.stderr}"
    # control: plain host git status does recurse and run it, so this test can fail
    subprocess.run(["git", "-C", str(tmp_path / "out" / "r1" / "worktree"), "status"],
                   capture_output=True, check=False)
    wt_sub = tmp_path / "out" / "r1" / "worktree" / "sub"
    if (wt_sub / ".git").exists():
        assert _markers(markers), "control: host git status would have run the filter"


# ------------------------------------------------------------------ 2: config that appears later


def _include_repo(tmp_path: Path, include: str, evil: Path) -> Path:
    filters = f'[filter "x"]\n\tclean = {evil}\n\tsmudge = {evil}\n\tprocess = {evil}\n'
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", ".gitattributes": "* filter=x\n",
                                         ".gitfilters": filters})
    with open(repo / ".git" / "config", "a") as config:
        config.write(include)
    return repo


@pytest.mark.parametrize("include", [
    "[include]\n\tpath = /proc/self/cwd/.gitfilters\n",
    '[includeIf "gitdir:/"]\n\tpath = /proc/self/cwd/.gitfilters\n',
])
def test_config_include_of_a_tracked_file_executes_nothing(tmp_path: Path, include: str) -> None:
    """Class 2. The target's config includes `/proc/self/cwd/.gitfilters`, a tracked file
    defining a filter that `.gitattributes` applies to everything. The blank list was
    computed right after `worktree add --no-checkout`, before the file existed; after
    checkout every host `git add`/`commit`/`status` ran the filter."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    _include_repo(tmp_path, include, evil)
    for entry in markers.iterdir():
        entry.unlink()
    write_request(tmp_path, [WRITE_DOC, {"id": "r", "run": py("open('b.md','w').write('b')")}],
                  init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    doit(tmp_path, "gates", "request=req.yaml")
    assert _markers(markers) == [], f"a filter from an include ran on the host\n{proc.stderr}"
    # the choice: a config that includes files is refused up front, with one clear error
    assert proc.returncode != 0, proc.stderr[-600:]
    assert "uses include" in proc.stderr and "Traceback" not in proc.stderr
    assert host_git(tmp_path / "repo", "rev-list", "--count", "main") == "1"
    # control: plain git in the repository does run it
    (tmp_path / "repo" / "README.md").write_text("changed\n")
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "add", "README.md"],
                   capture_output=True, check=False,
                   env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull})
    assert _markers(markers), "control: plain git runs the included filter"


def test_config_include_that_a_step_writes_executes_nothing(tmp_path: Path) -> None:
    """Class 2, the file appears during the run: the config includes a path that does not
    exist when the run starts; step 1 writes it (a filter definition) and .gitattributes."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    with open(repo / ".git" / "config", "a") as config:
        config.write("[include]\n\tpath = /proc/self/cwd/docs/.cfg\n")
    steps = [
        {"id": "a", "write": {"path": "docs/.cfg",
                              "content": f'[filter "x"]\n\tclean = {evil}\n\tsmudge = {evil}\n'}},
        {"id": "b", "write": {"path": "docs/.gitattributes", "content": "* filter=x\n"}},
        {"id": "c", "write": {"path": "docs/c.md", "content": "c\n"}},
        {"id": "d", "run": py("open('docs/d.md','w').write('d')")},
    ]
    write_request(tmp_path, steps, init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    doit(tmp_path, "gates", "request=req.yaml")
    assert _markers(markers) == []
    assert proc.returncode != 0 and "uses include.path" in proc.stderr, proc.stderr[-600:]


# ------------------------------------------------------------------ 3: the operator's stdin


def test_config_include_of_dev_stdin_neither_hangs_nor_reads_the_operators_input(
        tmp_path: Path) -> None:
    """Class 3. `include.path = /dev/stdin`: host git inherited the operator's stdin, so
    an open terminal/pipe hung the run, and piped input was read as config (a filter).
    Now the run ends promptly with the include refusal, whatever stdin holds."""
    markers = tmp_path / "markers"
    evil = marker_script(markers)
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", ".gitattributes": "* filter=x\n"})
    with open(repo / ".git" / "config", "a") as config:
        config.write("[include]\n\tpath = /dev/stdin\n")
    write_request(tmp_path, [WRITE_DOC, {"id": "r", "run": py("open('b.md','w').write('b')")}],
                  init_repo=False)
    argv = [sys.executable, "-m", "doit", "-f", str(DODO), "run", "request=req.yaml",
            "outputs=out"]
    # a pipe that stays open and never sends anything: a git reading it blocks forever
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run(argv, cwd=tmp_path, stdin=read_end, capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung reading the operator's stdin through the config include")
    finally:
        os.close(read_end)
        os.close(write_end)
    assert proc.returncode != 0 and "uses include.path" in proc.stderr, proc.stderr[-600:]
    # piped input that is a filter definition must not become config
    feed = f'[filter "x"]\n\tclean = {evil}\n\tsmudge = {evil}\n'
    done = subprocess.run(argv, cwd=tmp_path, input=feed, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0, done.stderr[-800:]
    assert _markers(markers) == []


def test_every_host_process_gets_dev_null_as_stdin() -> None:
    """Class 3, for every host program (not only git): proc.run never hands over the
    operator's stdin; data goes through `input` (a pipe of ours) or files."""
    from agentos_tasks import proc

    read_end, write_end = os.pipe()
    saved = os.dup(0)
    try:
        os.dup2(read_end, 0)  # our own stdin is now a pipe that never ends
        result = proc.run(["sh", "-c", "cat; readlink /proc/self/fd/0"],
                          env={"PATH": os.environ["PATH"]}, timeout=20)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read_end)
        os.close(write_end)
    assert result.text.strip() == "/dev/null"
    fed = proc.run(["cat"], env={"PATH": os.environ["PATH"]}, input=b"ours", timeout=20)
    assert fed.stdout == b"ours"


def test_a_host_process_that_hangs_is_bounded_by_a_timeout() -> None:
    from agentos_tasks import proc
    from agentos_tasks.errors import AgentosError

    with pytest.raises(AgentosError, match="timed out"):
        proc.run(["sleep", "30"], env={"PATH": os.environ["PATH"]}, timeout=0.5)


# ------------------------------------------------------------------ 7: another run's objects


def test_a_step_cannot_read_another_runs_unapproved_objects(tmp_path: Path) -> None:
    """Class 7. Run A writes a secret-ish blob and fails before apply; run B (same target)
    searched every object of the one shared object store and landed A's blob."""
    make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    token = "UNAPPROVED-" + "7f3a9c"
    write_request(tmp_path, [
        {"id": "a1", "write": {"path": "docs/draft.md", "content": f"{token}\n"}},
        {"id": "a2", "run": ["false"]},
    ], init_repo=False, run_id="runa", name="a.yaml")
    doit(tmp_path, "run", "request=a.yaml")
    assert host_git(tmp_path / "repo", "rev-list", "--count", "main") == "1"
    hunt = (
        "import os, subprocess\n"
        "os.makedirs('docs', exist_ok=True)\n"
        "out = subprocess.run(['git', 'cat-file', '--batch-all-objects', '--batch'],\n"
        "                     capture_output=True).stdout\n"
        "hits = [l for l in out.split(b'\\n') if b'UNAPPROVED-' in l]\n"
        "open('docs/leak.md', 'wb').write(b'found:' + b'|'.join(hits) + b'\\n')\n"
    )
    write_request(tmp_path, [{"id": "b1", "run": py(hunt)}], init_repo=False, run_id="runb",
                  name="b.yaml")
    doit(tmp_path, "run", "request=b.yaml", check=0)
    leaked = host_git(tmp_path / "repo", "show", "main:docs/leak.md")
    assert leaked == "found:", f"run B read run A's unapproved blob: {leaked!r}"
    # control: run A's blob does exist (in run A's own object store)
    draft = tmp_path / "out" / "runa" / "worktree"
    assert subprocess.run(["git", "-C", str(draft), "cat-file", "--batch-all-objects",
                           "--batch"], capture_output=True, check=True).stdout.count(
        token.encode()) >= 1


# ------------------------------------------------------------------ 8: history through messages


def _diff_adding(path: str, body: str) -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n"
            f"+++ b/{path}\n@@ -0,0 +1 @@\n+{body}\n")


def _diff_deleting(path: str, body: str) -> str:
    return (f"diff --git a/{path} b/{path}\ndeleted file mode 100644\n--- a/{path}\n"
            f"+++ /dev/null\n@@ -1 +0,0 @@\n-{body}\n")


def test_messages_never_act_as_patches_history_stays_what_was_tested(tmp_path: Path) -> None:
    """Class 8. Step 1's message embeds a diff adding `.github/workflows/x.yml`, step 2's a
    diff deleting it: the final tree equals the tested one, so the old apply accepted and
    main's history held a commit adding a file the policy never judged."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    wf = ".github/workflows/x.yml"
    steps = [
        {"id": "s1", "write": {"path": "docs/a.md", "content": "a\n"},
         "message": "s1\n\n" + _diff_adding(wf, "evil")},
        {"id": "s2", "write": {"path": "docs/b.md", "content": "b\n"},
         "message": "s2\n\n" + _diff_deleting(wf, "evil")},
    ]
    write_request(tmp_path, steps, init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    history = host_git(repo, "log", "--all", "--format=", "--name-only")
    assert ".github" not in history, f"a commit on the branch touched {wf}"
    assert proc.returncode != 0 and "message" in proc.stderr.lower(), proc.stderr[-600:]


def test_in_body_headers_cannot_change_the_landed_author(tmp_path: Path) -> None:
    """Class 8, the same parser: mailinfo reads `From:`/`Subject:` lines at the top of a
    message body as headers, so a step message could re-attribute its commit."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    steps = [{"id": "s1", "write": {"path": "docs/a.md", "content": "a\n"},
              "message": "From: Mallory <m@evil>\n\nreal subject\n"}]
    write_request(tmp_path, steps, init_repo=False)
    doit(tmp_path, "run", "request=req.yaml")
    authors = host_git(repo, "log", "--format=%an <%ae>", "main")
    assert "Mallory" not in authors


def test_every_landed_commit_carries_its_step_commits_tree(tmp_path: Path) -> None:
    """Class 8, positive side: on a good run each landed commit's tree is the tree of its
    step commit, commit by commit (recorded in patches_applied)."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    steps = [{"id": f"s{i}", "write": {"path": f"docs/{i}.md", "content": f"{i}\n"}}
             for i in range(3)]
    write_request(tmp_path, steps, init_repo=False)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    applied = next(e for e in tape_events(tmp_path / "out" / "r1")
                   if e["event"] == "patches_applied")
    landed = applied["commits"]
    assert len(landed) == 3
    for index, commit in enumerate(landed):
        manifest = (tmp_path / "out" / "r1" / "steps" / f"s{index}.json").read_text()
        step_commit = json.loads(manifest)["commit"]
        assert host_git(repo, "rev-parse", f"{commit}^{{tree}}") == \
            host_git(repo, "rev-parse", f"{step_commit}^{{tree}}")
        # more than the tree: the branch holds the tested commits themselves
        assert commit == step_commit



def test_landing_refuses_a_commit_that_am_made_differently_from_its_step(
        tmp_path: Path) -> None:
    """Class 8, the backstop behind the request check: whatever a patch file's message
    holds, am's commit must equal the step commit in tree, author and message; the
    comparison runs before the branch could move."""
    from agentos_tasks.errors import AgentosError
    from agentos_tasks.git import Git, init_private_repo
    from agentos_tasks.landing import am_in_private

    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    base = host_git(repo, "rev-parse", "HEAD")
    private, work = tmp_path / "p.git", tmp_path / "wt"
    init_private_repo(private, fmt_config=repo / ".git" / "config",
                      alternates=[repo / ".git" / "objects"], head=base)
    work.mkdir()
    git = Git(work, private_dir=private, work_tree=work)
    git.run("reset", "--hard", "-q", base)
    (work / "a.md").write_text("a\n")
    git.run("add", "a.md")
    message = tmp_path / "msg"
    message.write_text("s1\n")
    step = git.commit_tree(git.out("write-tree"), base, message, date="@1700000000 +0000")
    good = git.commit_patch(step)
    assert am_in_private(git, base, [_write(tmp_path / "good.patch", good)], [step],
                         ["s1"]) == step  # same tree, author, message: identical commit
    smuggled = good.replace(b"\n---\n", b"\n\n" + _diff_adding(".github/x.yml", "e").encode()
                            + b"\n---\n", 1)
    with pytest.raises(AgentosError, match="differs from its tested step commit"):
        am_in_private(git, base, [_write(tmp_path / "bad.patch", smuggled)], [step], ["s1"])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_commit_identity_with_shell_or_control_syntax_is_refused(tmp_path: Path) -> None:
    """The request's author lands in commits and in the target's reflog: no `$(...)`,
    backticks, `<>` or control characters (review: a reflog line is text someone may
    one day evaluate)."""
    for name in ("x $(id) y", "a`id`", "a <b>", "line\nbreak"):
        write_request(tmp_path, [WRITE_DOC], author={"name": name, "email": "a@x"})
        proc = doit(tmp_path, "run", "request=req.yaml")
        assert proc.returncode != 0 and "author.name" in proc.stderr, (name, proc.stderr)
        assert not (tmp_path / "repo").exists()
