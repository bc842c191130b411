"""The boundary, policy side: what a step leaves is judged for what it IS, not only for the
name it carries — symlinks by what they resolve to, files by their executable bit, names
by the characters in them — and a step cannot leave more than the limits allow.

Each test is an exploit first: against the executor before these rules (boundary issue,
classes 9, 11, 12) it succeeded or ended in a traceback; the assertions state the secure
outcome. Real git, real bwrap, real `doit run`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from runutil import doit, tape_events, write_policy, write_request

from agentos_tasks.errors import PolicyViolation

from .conftest import requires_bwrap
from .test_adversarial import host_git, make_repo, py

pytestmark = [pytest.mark.security, requires_bwrap]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = yaml.safe_load((ROOT / "policies" / "sandbox_policy.yaml").read_text())
WRITE_DOC = {"id": "s1", "write": {"path": "docs/a.md", "content": "a\n"}}


def link_patch(*links: tuple[str, str]) -> str:
    """A git diff that adds each (path, target) as a symlink (mode 120000)."""
    return "".join(
        f"diff --git a/{path} b/{path}\nnew file mode 120000\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n"
        for path, target in links)


def landed(tmp_path: Path) -> list[str]:
    """Paths on the target branch (the initial commit's README.md included)."""
    out = host_git(tmp_path / "repo", "ls-tree", "-r", "--name-only", "main")
    return out.splitlines()


def default_like_policy(tmp_path: Path, limits: dict[str, int] | None = None,
                        **paths: Any) -> Path:
    """The shipped default's path rules, with python3 allowed for run steps."""
    rules = {"allow": DEFAULT_POLICY["paths"]["allow"] + ["build/**", "scripts/**", "/.gitignore"],
             "deny": DEFAULT_POLICY["paths"]["deny"], "ask": DEFAULT_POLICY["paths"]["ask"],
             **paths}
    return write_policy(tmp_path / "policy.yaml", paths=rules,
                        limits={"step_seconds": 60, **(limits or {})})


def failed_with(proc: subprocess.CompletedProcess[str], rule: str) -> bool:
    return proc.returncode != 0 and f"policy violation: {rule}" in proc.stderr


# ------------------------------------------------------------------ 9: symlinks that alias

# (link, target, rule) under policies/sandbox_policy.yaml: deny[1] = **/.env,
# deny[2] = **/.env.*, deny[3] = secrets/**, ask[0] = .github/**
ALIASES = [
    ("docs/env.txt", "../.env", "paths.deny[1]"),                 # the example
    ("docs/ENV.txt", "../.ENV", "paths.deny[1]"),                 # deny ignores case
    ("docs/s", "../secrets", "paths.deny[3]"),                    # a directory of secrets
    ("docs/k", "../secrets/api.key", "paths.deny[3]"),
    ("docs/up", "./../docs/../.env.local", "paths.deny[2]"),      # '..' within the tree
    ("docs/wf", "../.github", "paths.ask[0]"),                    # ask, headless = deny
    ("docs/py", "../pyproject.toml", "paths.ask[1]"),
    ("docs/root", "..", "paths.symlink"),                         # the root aliases .git
    ("docs/abs", "/etc/passwd", "paths.symlink"),                 # absolute (held before)
    ("docs/out", "../../outside", "paths.symlink"),               # outside (held before)
]


@pytest.mark.parametrize(("link", "target", "rule"), ALIASES, ids=[a[1] for a in ALIASES])
def test_patch_link_that_aliases_a_denied_path_never_lands(
        tmp_path: Path, link: str, target: str, rule: str) -> None:
    """Class 9 (patch). Under the default policy only the link's own path was judged:
    `docs/env.txt -> ../.env` is a docs/** path and landed on the branch."""
    (tmp_path / "p.diff").write_text(link_patch((link, target)))
    write_request(tmp_path, [WRITE_DOC, {"id": "p", "patch": "p.diff"}], policy=None)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, rule), proc.stderr[-800:]
    assert link not in landed(tmp_path)


def test_link_chain_through_a_committed_link_is_judged_by_where_it_ends(
        tmp_path: Path) -> None:
    """Class 9 (chain). The repository already has `src/cfg -> ../.env`; a patch adds
    `docs/cfg -> ../src/cfg`: lexically it points at src/cfg (allowed), it resolves to .env."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    (repo / "src").mkdir()
    (repo / "src" / "cfg").symlink_to("../.env")
    host_git(repo, "add", "-A")
    host_git(repo, "commit", "-q", "-m", "committed link")
    (tmp_path / "p.diff").write_text(link_patch(("docs/cfg", "../src/cfg")))
    write_request(tmp_path, [{"id": "p", "patch": "p.diff"}], policy=None, init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "paths.deny[1]"), proc.stderr[-800:]
    assert "docs/cfg" not in landed(tmp_path)


def test_links_inside_allowed_paths_still_land(tmp_path: Path) -> None:
    """Control: links that resolve to allowed places (dangling, chained, to a directory)
    are not refused."""
    (tmp_path / "p.diff").write_text(link_patch(
        ("docs/main", "../src/main.py"), ("docs/lib", "../src"), ("docs/hop", "main"),
        ("src/docs", "../docs")))
    write_request(tmp_path, [WRITE_DOC, {"id": "p", "patch": "p.diff"}], policy=None)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert {"docs/main", "docs/lib", "docs/hop", "src/docs"} <= set(landed(tmp_path))


RUN_ALIASES = [
    ("docs/env.txt", "../.env", "**/.env"),
    ("docs/s", "../secrets", "secrets/**"),
    ("docs/chain1", "chain2", "**/.env"),            # chain2 -> ../.env, made first
    ("build/env", "../.env", "**/.env"),             # a gitignored link is judged too
    ("docs/gh", "../.github/workflows", ".github/**"),
    ("docs/top", "../docs/..", "paths.symlink"),
]


@pytest.mark.parametrize(("link", "target", "rule"), RUN_ALIASES,
                         ids=[a[0] for a in RUN_ALIASES])
def test_run_step_link_that_aliases_a_denied_path_fails_the_step(
        tmp_path: Path, link: str, target: str, rule: str) -> None:
    """Class 9 (run). A command makes the link; the post-step check judged its name only."""
    code = ("import os\nos.makedirs('docs', exist_ok=True); os.makedirs('build', exist_ok=True)\n"
            "os.symlink('../.env', 'docs/chain2') if 'chain' in " + repr(link) + " else None\n"
            f"os.symlink({target!r}, {link!r})\n")
    default_like_policy(tmp_path)
    write_request(tmp_path, [{"id": "ign", "write": {"path": ".gitignore",
                                                      "content": "build/\n"}},
                             {"id": "mk", "run": py(code)}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and rule in proc.stderr, proc.stderr[-800:]
    assert link not in landed(tmp_path)


# ------------------------------------------------------------------ 11: exec bits, names


def test_new_executable_outside_the_executable_globs_is_denied(tmp_path: Path) -> None:
    """Class 11 (exec). A run step drops `src/tool.sh` 0755: it landed as 100755, unjudged."""
    default_like_policy(tmp_path)
    code = ("import os; os.makedirs('src'); open('src/tool.sh', 'w').write('#!/bin/sh\\n'); "
            "os.chmod('src/tool.sh', 0o755)")
    write_request(tmp_path, [{"id": "x", "run": py(code)}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "paths.executable"), proc.stderr[-800:]
    assert "src/tool.sh" not in landed(tmp_path)


def test_patch_that_adds_an_executable_is_denied_and_one_inside_the_globs_lands(
        tmp_path: Path) -> None:
    """Class 11 (exec, patch). `new file mode 100755` outside paths.executable fails the
    step; inside it lands 100755."""
    def exe_patch(path: str) -> str:
        return (f"diff --git a/{path} b/{path}\nnew file mode 100755\n--- /dev/null\n"
                f"+++ b/{path}\n@@ -0,0 +1 @@\n+#!/bin/sh\n")

    (tmp_path / "bad.diff").write_text(exe_patch("src/run.sh"))
    (tmp_path / "good.diff").write_text(exe_patch("scripts/run.sh"))
    default_like_policy(tmp_path, executable=["scripts/**"])
    write_request(tmp_path, [{"id": "p", "patch": "bad.diff"}])
    assert failed_with(doit(tmp_path, "run", "request=req.yaml"), "paths.executable")
    assert "src/run.sh" not in landed(tmp_path)
    write_request(tmp_path, [{"id": "p", "patch": "good.diff"}], run_id="r2")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    tree = host_git(tmp_path / "repo", "ls-tree", "-r", "main")
    assert "100755 blob" in tree and "scripts/run.sh" in tree


def test_mode_change_to_executable_is_judged_and_ignored_or_kept_modes_are_not(
        tmp_path: Path) -> None:
    """Class 11 (exec, +x). A tracked 100644 file made 0755 is a mode change the policy must
    see; an already executable file edited in place and an ignored executable are fine."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", "src/run.sh": "#!/bin/sh\n",
                                         "src/keep.sh": "#!/bin/sh\n", ".gitignore": "build/\n"})
    (repo / "src" / "keep.sh").chmod(0o755)
    host_git(repo, "add", "-A")
    host_git(repo, "commit", "-q", "-m", "keep.sh executable")
    default_like_policy(tmp_path)
    write_request(tmp_path, [{"id": "x", "run": py("import os; os.chmod('src/run.sh', 0o755)")}],
                  init_repo=False)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "paths.executable"), proc.stderr[-800:]
    code = ("import os; open('src/keep.sh', 'a').write('echo hi\\n'); os.makedirs('build'); "
            "open('build/tool', 'w').write('x'); os.chmod('build/tool', 0o755)")
    write_request(tmp_path, [{"id": "x", "run": py(code)}], init_repo=False, run_id="r2")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert "100755 blob" in host_git(repo, "ls-tree", "main", "src/keep.sh")


BAD_NAMES = [
    ("rlo", "docs/\u202egnp.md"),          # RIGHT-TO-LEFT OVERRIDE
    ("lri", "docs/a\u2066b.md"),           # LEFT-TO-RIGHT ISOLATE
    ("zwsp", "docs/a\u200b.md"),           # ZERO WIDTH SPACE
    ("zwj", "docs/a\u200db.md"),
    ("bom", "docs/\ufeffa.md"),            # BYTE ORDER MARK
    ("nel", "docs/a\u0085b.md"),           # C1 NEXT LINE
    ("csi", "docs/a\u009b31mb.md"),        # C1 CONTROL SEQUENCE INTRODUCER
    ("lsep", "docs/a\u2028b.md"),          # LINE SEPARATOR
    ("tag", "docs/a\U000e0041.md"),        # TAG LATIN CAPITAL A (invisible)
    ("dir", "docs/\u202e/x.md"),           # in a directory component
    ("ignored", "build/\u202ex.md"),       # gitignored files are judged by name too
]


@pytest.mark.parametrize(("kind", "name"), BAD_NAMES, ids=[n[0] for n in BAD_NAMES])
def test_control_and_invisible_characters_in_names_fail_the_step(
        tmp_path: Path, kind: str, name: str) -> None:
    """Class 11 (names). A file named with a bidi override, a zero-width or a C1 control
    character landed: it shows as a different name in every review tool and terminal."""
    default_like_policy(tmp_path)
    code = (f"import os; p = {name!r}; os.makedirs(os.path.dirname(p), exist_ok=True); "
            "open(p, 'w').write('x')")
    write_request(tmp_path, [{"id": "ign", "write": {"path": ".gitignore",
                                                      "content": "build/\n"}},
                             {"id": "mk", "run": py(code)}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "paths.name"), proc.stderr[-800:]
    assert name not in landed(tmp_path)
    bad = next(c for c in name if not c.isascii())
    assert bad not in proc.stderr, "the name is shown escaped, never raw"


def test_write_to_a_name_with_a_bidi_override_is_denied_before_anything_runs(
        tmp_path: Path) -> None:
    write_request(tmp_path, [WRITE_DOC, {"id": "w", "write": {"path": "docs/\u202etxt.exe",
                                                               "content": "x"}}], policy=None)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "paths.name"), proc.stderr[-800:]
    assert not any(e["event"] == "step_start" for e in tape_events(tmp_path / "out" / "r1"))
    # the message names the character, it does not print it raw
    assert "\u202e" not in proc.stderr and "U+202E" in proc.stderr


# ------------------------------------------------------------------ 12: what a step leaves


def deep_code(component: str, total: int) -> str:
    """Python for a run step: a nested path of about `total` bytes under build/."""
    levels = total // (len(component) + 1)
    return ("import os\nos.makedirs('build', exist_ok=True); os.chdir('build')\n"
            f"for _ in range({levels}):\n    os.mkdir({component!r}); os.chdir({component!r})\n"
            "open('leaf', 'w').write('x')\n")


@pytest.mark.parametrize(("component", "rule"), [("x" * 49, "limits.path_length"),
                                               ("d", "limits.path_depth")],
                         ids=["wide", "narrow-10k-levels"])
def test_deep_nested_path_fails_cleanly_and_the_next_run_resumes(
        tmp_path: Path, component: str, rule: str) -> None:
    """Class 12 (path length). A 20 kB nested path: the first invocation ended in a
    traceback (ENAMETOOLONG, or RecursionError for 10,000 one-letter levels, in the
    special-file walk), every later one in `git clean` before writing anything, until
    `doit clean`. Within 4,096 bytes a 2,000-level tree still cost every later `git clean`
    a minute (it slows with the cube of the depth): limits.path_depth (256) bounds that."""
    default_like_policy(tmp_path)
    steps: list[dict[str, Any]] = [
        {"id": "ign", "write": {"path": ".gitignore", "content": "build/\n"}},
        {"id": "deep", "run": py(deep_code(component, 20_000))}, WRITE_DOC]
    write_request(tmp_path, steps)
    for _ in range(2):  # the failure repeats cleanly: no traceback, never stuck in cleanup
        started = time.monotonic()
        proc = doit(tmp_path, "run", "request=req.yaml")
        out = proc.stdout + proc.stderr
        assert failed_with(proc, rule), out[-1500:]
        assert time.monotonic() - started < 20, "the reset before the step stays fast"
        assert "Traceback" not in out and "git clean" not in out, out[-1500:]
        assert len(out) < 4000, "the error names the path, it does not print 20 kB of it"
    steps[1] = {"id": "deep", "run": py("print('fixed')")}
    write_request(tmp_path, steps)
    doit(tmp_path, "run", "request=req.yaml", check=0)  # resumes at `deep`, no doit clean
    assert "docs/a.md" in landed(tmp_path)
    starts = [e["step"] for e in tape_events(tmp_path / "out" / "r1")
              if e["event"] == "step_start"]
    assert starts.count("ign") == 1, starts


def exact_path_code(total: int) -> str:
    """Python for a run step: one file whose worktree-relative path is `total` bytes."""
    return ("import os\nos.makedirs('build', exist_ok=True); os.chdir('build')\n"
            f"n = {total} - len('build/')\n"
            "while n > 101:\n    os.mkdir('y' * 99); os.chdir('y' * 99); n -= 100\n"
            "open('z' * n, 'w').write('x')\n")


def test_path_the_host_cannot_open_fails_cleanly_and_a_long_legal_one_passes(
        tmp_path: Path) -> None:
    """Class 12 (edge). A 4,096-byte relative path is within limits.path_length=4096, but
    the worktree's own path makes it longer than PATH_MAX: the host-side check died with
    ENAMETOOLONG (a traceback). The survey counts the worktree's prefix too."""
    default_like_policy(tmp_path)
    steps: list[dict[str, Any]] = [
        {"id": "ign", "write": {"path": ".gitignore", "content": "build/\n"}},
        {"id": "long", "run": py(exact_path_code(4096))}]
    write_request(tmp_path, steps)
    proc = doit(tmp_path, "run", "request=req.yaml")
    out = proc.stdout + proc.stderr
    assert failed_with(proc, "limits.path_length") and "Traceback" not in out, out[-1500:]
    assert "PATH_MAX" in out
    steps[1] = {"id": "long", "run": py(exact_path_code(2000))}
    write_request(tmp_path, steps)
    doit(tmp_path, "run", "request=req.yaml", check=0)


def test_write_to_a_path_over_the_limit_is_denied_before_anything_runs(tmp_path: Path) -> None:
    long_path = "docs/" + "/".join(["w" * 99] * 42) + "/a.md"
    write_request(tmp_path, [WRITE_DOC, {"id": "w", "write": {"path": long_path,
                                                               "content": "x"}}], policy=None)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "limits.path_length"), proc.stderr[-800:]
    assert not any(e["event"] == "step_start" for e in tape_events(tmp_path / "out" / "r1"))


def test_deep_tree_within_the_path_limit_is_judged_without_a_traceback(tmp_path: Path) -> None:
    """Class 12 (depth). 1,500 levels stay under limits.path_length, but git lists a nested
    repository as one directory entry and the check expanded it with a recursive os.walk:
    RecursionError, a traceback instead of the nested-repository refusal."""
    default_like_policy(tmp_path, limits={"path_depth": 5000})
    code = ("import os, subprocess\nsubprocess.run(['git', 'init', '-q', 'src/sub'], check=True)\n"
            "os.chdir('src/sub')\nfor _ in range(1500):\n    os.mkdir('d'); os.chdir('d')\n"
            "open('leaf', 'w').write('x')\n")
    write_request(tmp_path, [{"id": "deep", "run": py(code)}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    out = proc.stdout + proc.stderr
    assert failed_with(proc, "paths.git") and "Traceback" not in out, out[-1500:]
    from agentos_tasks.leftovers import remove_tree

    remove_tree(tmp_path / "out" / "r1" / "worktree")  # pytest's own rmtree would recurse


def test_many_leftover_files_hit_the_files_limit_and_the_rerun_works(tmp_path: Path) -> None:
    """Class 12 (count). 200,000 ignored files had no limit: the manifest listed every one
    and the host spent 2-3x the step's time on them. Here limits.files = 500."""
    write_policy(tmp_path / "policy.yaml", limits={"step_seconds": 60, "files": 500})
    steps: list[dict[str, Any]] = [
        {"id": "ign", "write": {"path": ".gitignore", "content": "cache/\n"}},
        {"id": "many", "run": py("import os; os.makedirs('cache')\n"
                                 "for i in range(3000): open(f'cache/{i}', 'w').close()")}]
    write_request(tmp_path, steps)
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "limits.files"), proc.stderr[-800:]
    assert not (tmp_path / "out" / "r1" / "steps" / "many.json").exists()
    steps[1] = {"id": "many", "run": py("import os; os.makedirs('cache')\n"
                                        "for i in range(300): open(f'cache/{i}', 'w').close()")}
    write_request(tmp_path, steps)
    doit(tmp_path, "run", "request=req.yaml", check=0)


def test_leftover_bytes_hit_the_bytes_limit(tmp_path: Path) -> None:
    """Class 12 (bytes). Ignored files of max_file_bytes each, as many as wanted: no total."""
    write_policy(tmp_path / "policy.yaml", limits={"step_seconds": 60, "bytes": 200_000})
    write_request(tmp_path, [
        {"id": "ign", "write": {"path": ".gitignore", "content": "cache/\n"}},
        {"id": "big", "run": py("import os; os.makedirs('cache')\n"
                                "for i in range(5): open(f'cache/{i}', 'wb').write(b'x' * 60000)")}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert failed_with(proc, "limits.bytes"), proc.stderr[-800:]


def test_setuid_and_fifo_leftovers_are_still_defused(tmp_path: Path) -> None:
    """The survey replaced the special-file walk: setuid bits are stripped and FIFOs removed,
    and the step fails naming the rule."""
    code = ("import os, shutil; os.makedirs('build'); shutil.copy('/bin/true', 'build/t'); "
            "os.chmod('build/t', 0o4755); os.mkfifo('build/f')")
    write_request(tmp_path, [{"id": "ign", "write": {"path": ".gitignore", "content": "build/\n"}},
                             {"id": "s", "run": py(code)}])
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode != 0 and ("paths.setuid" in proc.stderr
                                     or "paths.special" in proc.stderr), proc.stderr[-800:]
    build = tmp_path / "out" / "r1" / "worktree" / "build"
    assert not (build / "f").exists() or not stat.S_ISFIFO((build / "f").lstat().st_mode)
    if (build / "t").exists():
        assert not (build / "t").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)


# ------------------------------------------------------------------ 12: the survey itself


def test_survey_stops_counting_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded: with limits.files = 100 the walk looks at about 100 entries of 5000."""
    from agentos_tasks import leftovers
    from agentos_tasks.policy import load_policy

    wt = tmp_path / "wt"
    (wt / "many").mkdir(parents=True)
    for i in range(5000):
        (wt / "many" / str(i)).touch()
    policy_path = write_policy(tmp_path / "p.yaml", limits={"files": 100})
    limits = load_policy(policy_path).limits
    seen = 0
    real_scandir = os.scandir

    class Counting:
        def __init__(self, fd: int) -> None:
            self.inner = real_scandir(fd)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def __iter__(self) -> Counting:
            return self

        def __next__(self) -> os.DirEntry[str]:
            nonlocal seen
            seen += 1
            return next(self.inner)

    monkeypatch.setattr(leftovers.os, "scandir", Counting)
    with pytest.raises(PolicyViolation) as info:
        leftovers.survey(wt, limits, leftovers.Baseline(0, 0))
    assert info.value.rule_id == "limits.files"
    assert seen <= 110, seen


def test_robust_clean_removes_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    """`git clean` fails on it; the fallback removes it without recursion or a path string."""
    from agentos_tasks import leftovers

    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(6000):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("x")
    finally:
        os.close(fd)
    leftovers.remove_tree(top)
    assert not top.exists()
    assert sys.getrecursionlimit() < 6000  # so a recursive remover would have failed


def test_clean_worktree_falls_back_when_git_clean_gives_up(tmp_path: Path) -> None:
    """The reset between steps: `git clean` cannot remove an untracked tree deeper than
    PATH_MAX; clean_worktree removes it (and only what the index does not track)."""
    from agentos_tasks import leftovers
    from agentos_tasks.git import Git

    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n", "src/keep.py": "x\n"})
    fd = os.open(repo / "src", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(2500):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    (repo / "junk.txt").write_text("x")
    control = subprocess.run(["git", "-C", str(repo), "clean", "-ffdxq"], capture_output=True)
    assert control.returncode != 0, "control: git clean gives up on this tree"
    leftovers.clean_worktree(Git(repo), repo)
    assert sorted(p.name for p in (repo / "src").iterdir()) == ["keep.py"]
    assert not (repo / "junk.txt").exists() and (repo / "README.md").exists()


def test_survey_counts_beyond_the_parent_tree_and_asks_git_only_when_needed(
        tmp_path: Path) -> None:
    """A repository bigger than the limits still runs: what its parent commit holds is
    not counted against the step; the baseline is computed only past the bare limits."""
    from agentos_tasks import leftovers
    from agentos_tasks.policy import load_policy

    wt = tmp_path / "wt"
    (wt / "src").mkdir(parents=True)
    for i in range(600):
        (wt / "src" / str(i)).write_bytes(b"x" * 10)
    limits = load_policy(write_policy(tmp_path / "p.yaml", limits={"files": 500,
                                                                   "bytes": 5000})).limits
    calls: list[int] = []

    def parent_holds() -> leftovers.Baseline:
        calls.append(1)
        return leftovers.Baseline(601, 6000)

    found = leftovers.survey(wt, limits, parent_holds)
    assert (found.entries, found.bytes, len(calls)) == (601, 6000, 1)
    small = load_policy(write_policy(tmp_path / "q.yaml", limits={"files": 1000})).limits
    leftovers.survey(wt, small, parent_holds)
    assert len(calls) == 1, "under the bare limits no baseline is computed"
