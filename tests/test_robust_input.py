"""Sloppy and hostile input (issue 13): reformatting a request never re-runs a step or
seals a run, typos are named at their own line with a did-you-mean, hostile files get
one clean error each, and what can be checked before the first step is checked before
it, leaving no run directory behind."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from runutil import doit, git, tape_events, write_policy

from agentos_tasks.errors import EXIT_STATE, EXIT_USAGE, AgentosError
from agentos_tasks.request import load_request
from agentos_tasks.yamlsrc import MAX_BYTES, MAX_DEPTH, MAX_NODES

BASE = """\
version: 1
id: r1
repo: ./repo
init_repo: true
branch: main
policy: policy.yaml
steps:
  - id: a
    message: "a: add notes"
    write:
      path: notes.md
      content: "hello\\n"
  - id: b
    run: [sh, -c, "echo generated > gen.txt"]
  - id: c
    write: {path: docs/x.md, content: "x\\n"}
"""

# BASE with a comment on top, blank lines, other indentation, keys reordered at every
# level, flow where BASE is block and block where it is flow, other quoting
REFORMATTED = """\
# the same request, written by someone else


steps:
    -   write: {content: "hello\\n", path: notes.md}
        message: 'a: add notes'
        id: a

    -   id: b
        run:
            - sh
            - '-c'
            - echo generated > gen.txt

    - {id: c, write: {path: docs/x.md, content: "x\\n"}}
policy: policy.yaml
branch: main
init_repo: true
repo: ./repo   # relative to this file
id: r1
version: 1
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def starts(run_dir: Path) -> list[str]:
    return [e["step"] for e in tape_events(run_dir) if e["event"] == "step_start"]


def setup_run(tmp_path: Path, text: str = BASE) -> Path:
    write_policy(tmp_path / "policy.yaml")
    (tmp_path / "req.yaml").write_text(text)
    return tmp_path / "out" / "r1"


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


# --- reformatting ------------------------------------------------------------------

def test_both_forms_load_to_the_same_request() -> None:
    """The premise of the tests below: REFORMATTED means exactly what BASE means."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.yaml", Path(tmp) / "b.yaml"
        a.write_text(BASE)
        b.write_text(REFORMATTED)
        ra, rb = load_request(a), load_request(b)
    assert ra.steps == rb.steps and ra.repo == rb.repo and ra.author == rb.author
    assert [s.line for s in ra.steps] != [s.line for s in rb.steps]  # lines differ
    assert ra.sha256 != rb.sha256


def test_reformatted_request_after_apply_changes_nothing_and_gates_pass(
        tmp_path: Path) -> None:
    run_dir = setup_run(tmp_path)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    repo = tmp_path / "repo"
    head = git(repo, "rev-parse", "main")
    assert git(repo, "rev-list", "--count", "main") == "4"
    tape = (run_dir / "audit/run_tape.jsonl").read_bytes()
    recorded = (run_dir / "audit/request.yaml").read_bytes()

    (tmp_path / "req.yaml").write_text(REFORMATTED)  # edited in place
    proc = doit(tmp_path, "run", "request=req.yaml", check=0)
    assert "sealed" not in proc.stderr
    (tmp_path / "copy.yaml").write_text(REFORMATTED.replace("# the same", "# a copy"))
    doit(tmp_path, "run", "request=copy.yaml", check=0)  # a copy beside it, same run id

    assert (run_dir / "audit/run_tape.jsonl").read_bytes() == tape  # not one event more
    assert (run_dir / "audit/request.yaml").read_bytes() == recorded == BASE.encode()
    assert git(repo, "rev-parse", "main") == head
    gates = doit(tmp_path, "gates", "request=copy.yaml")
    assert gates.returncode == 0, gates.stdout + gates.stderr


def test_reformatted_request_mid_run_resumes_without_reexecuting(tmp_path: Path) -> None:
    run_dir = setup_run(tmp_path)
    doit(tmp_path, "run", "request=req.yaml", "step:a", check=0)
    assert starts(run_dir) == ["a"]
    (tmp_path / "req.yaml").write_text(REFORMATTED)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert starts(run_dir) == ["a", "b", "c"]  # a ran once
    events = [e["event"] for e in tape_events(run_dir)]
    assert events.count("policy_loaded") == 1 and events.count("run_start") == 1
    # the run names the request it recorded first, everywhere
    result = json.loads((run_dir / "execution_result.json").read_text())
    assert result["request"]["sha256"] == sha256(BASE.encode())
    assert json.loads((run_dir / "audit/request.json").read_text())["sha256"] == \
        sha256(BASE.encode())
    assert git(tmp_path / "repo", "show", "main:gen.txt") == "generated"
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout + gates.stderr


def test_a_real_change_still_reexecutes_before_apply_and_is_refused_after(
        tmp_path: Path) -> None:
    run_dir = setup_run(tmp_path)
    doit(tmp_path, "run", "request=req.yaml", "step:b", check=0)
    changed = REFORMATTED.replace('content: "hello\\n"', 'content: "hello again\\n"')
    (tmp_path / "req.yaml").write_text(changed)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert starts(run_dir) == ["a", "b", "a", "b", "c"]  # from the change on
    assert git(tmp_path / "repo", "show", "main:notes.md") == "hello again"
    assert json.loads((run_dir / "audit/request.json").read_text())["sha256"] == \
        sha256(changed.encode())  # a real change is recorded as the run's request
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout + gates.stderr

    tape = (run_dir / "audit/run_tape.jsonl").read_bytes()
    (tmp_path / "req.yaml").write_text(BASE.replace("echo generated", "echo other"))
    proc = agentos(tmp_path, "exec", "run", "--request", "req.yaml", "--outputs", "out")
    assert proc.returncode == EXIT_STATE, proc.stderr
    assert "is sealed" in proc.stderr and "run=NEW" in proc.stderr
    assert (run_dir / "audit/run_tape.jsonl").read_bytes() == tape
    no_traceback(proc)


def test_step_spec_has_no_line(tmp_path: Path) -> None:
    run_dir = setup_run(tmp_path)
    doit(tmp_path, "run", "request=req.yaml", "step:a", check=0)
    from agentos_tasks.layout import RunPaths

    spec = json.loads(RunPaths(run_dir).spec("a").read_text())
    assert "line" not in spec["step"] and spec["step"]["content_sha256"] == \
        sha256(b"hello\n")
    recorded = json.loads((run_dir / "audit/request.json").read_text())
    assert all("line" not in s for s in recorded["steps"])


# --- typos -------------------------------------------------------------------------

HEAD = "version: 1\nid: r1\nrepo: ./repo\ninit_repo: true\npolicy: policy.yaml\nsteps:\n"


@pytest.mark.parametrize(("text", "line", "needle"), [
    (HEAD + "  - id: a\n    wrte: {path: x, content: y}\n", 8,
     "unknown key 'wrte' (did you mean 'write'?)"),
    ("version: 1\nid: r1\nrepo: ./repo\nstpes:\n  - id: a\n    delete: {path: x}\n", 4,
     "unknown key 'stpes' (did you mean 'steps'?)"),
    (HEAD + "  - id: a\n    write:\n      path: x\n      contnet: y\n", 10,
     "unknown key 'contnet' (did you mean 'content'?)"),
    (HEAD + "  - id: a\n    tool:\n      adaptr: command\n      prompt: p\n", 9,
     "unknown key 'adaptr' (did you mean 'adapter'?)"),
    (HEAD + "  - id: a\n    mesage: hi\n    delete: {path: x}\n", 8,
     "unknown key 'mesage' (did you mean 'message'?)"),
    ("version: 1\nid: r1\nrepo: ./repo\npolcy: p.yaml\nsteps:\n  - {id: a, delete: {path: x}}\n",
     4, "unknown key 'polcy' (did you mean 'policy'?)"),
    (HEAD + "  - id: a\n    delete: {path: x}\n    zzzzzz: 1\n", 9, "unknown key 'zzzzzz'"),
])
def test_unknown_key_is_named_at_its_line_with_a_did_you_mean(
        tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = tmp_path / "req.yaml"
    path.write_text(text)
    with pytest.raises(AgentosError) as info:
        load_request(path)
    err = info.value
    assert needle in err.message, err.render()
    assert err.where == f"{path}:{line}", err.render()
    assert err.code == EXIT_USAGE
    assert err.hint is not None and "known keys here" in err.hint
    if "zzzzzz" in needle:
        assert "did you mean" not in err.message  # nothing close: no guess


def test_misspelt_doit_variable_is_named(tmp_path: Path) -> None:
    setup_run(tmp_path)
    proc = doit(tmp_path, "run", "requst=req.yaml")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "unknown variable requst= (did you mean request=?)" in proc.stderr
    assert "variables: request=" in proc.stderr
    no_traceback(proc)
    assert not (tmp_path / "out").exists()
    proc = doit(tmp_path, "run", "request=req.yaml", "polcy=policy.yaml")
    assert proc.returncode == EXIT_USAGE and "did you mean policy=?" in proc.stderr


def test_policy_typo_is_named_too(tmp_path: Path) -> None:
    """The policy loads through the same loader: its typos get the same treatment."""
    from agentos_tasks.policy import load_policy

    text = (tmp_path / "p.yaml")
    write_policy(text)
    lines = text.read_text().splitlines()
    index = next(i for i, ln in enumerate(lines) if ln.startswith("operations:"))
    lines[index] = lines[index].replace("operations:", "operatons:")
    text.write_text("\n".join(lines) + "\n")
    with pytest.raises(AgentosError) as info:
        load_policy(text)
    assert "unknown key 'operatons' (did you mean 'operations'?)" in info.value.message
    assert info.value.where == f"{text}:{index + 1}"


# --- hostile files -----------------------------------------------------------------

def _alias_bomb() -> bytes:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return ("\n".join(lines) + "\n").encode()


HOSTILE: dict[str, tuple[bytes, str, int | None]] = {
    # name: (file bytes, needle, line or None when there is no line to name)
    "not-utf8": (b"version: 1\nid: caf\xe9\n", "is not UTF-8: byte 0xe9", 2),
    "empty": (b"", "request file is empty", 1),
    "only-comments": (b"# nothing here\n\n", "request file is empty", 1),
    "top-level-list": (b"- version: 1\n- id: r1\n", "must be a mapping", 1),
    "top-level-scalar": (b"hello\n", "must be a mapping", 1),
    "too-large": (b"version: 1\nid: r1\nnote: " + b"x" * (MAX_BYTES + 1) + b"\n",
                  "larger than 4 MiB", 1),
    "alias-bomb": (_alias_bomb(), "YAML aliases (*a0) are not allowed", 2),
    "deep-nesting": (b"a: " + b"[" * 20000 + b"]" * 20000 + b"\n",
                     f"nested too deeply ({MAX_DEPTH} levels at most)", 1),
    "unclosed-deep": (b"[" * 200000, "nested too deeply", 1),
    "many-nodes": (b"a: [" + b",".join([b"1"] * (MAX_NODES + 10)) + b"]\n",
                   f"more than {MAX_NODES} YAML nodes", 1),
    "nul-byte": (b"version: 1\nid: \x00\n", "control characters are not allowed", 2),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_request_file_is_one_error_within_a_second(tmp_path: Path, name: str) -> None:
    data, needle, line = HOSTILE[name]
    path = tmp_path / "req.yaml"
    path.write_bytes(data)
    began = time.monotonic()
    with pytest.raises(AgentosError) as info:
        load_request(path)
    assert time.monotonic() - began < 1.0
    err = info.value
    assert needle in err.message, err.render()
    assert err.where == f"{path.resolve()}:{line}"
    assert err.code == EXIT_USAGE


@pytest.mark.parametrize("name", ["not-utf8", "empty", "top-level-list", "too-large",
                                  "alias-bomb", "deep-nesting"])
def test_hostile_request_file_exits_2_without_traceback_or_run_dir(
        tmp_path: Path, name: str) -> None:
    data, needle, line = HOSTILE[name]
    (tmp_path / "req.yaml").write_bytes(data)
    began = time.monotonic()
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert time.monotonic() - began < 10  # the interpreter and doit start within this
    assert proc.returncode == EXIT_USAGE, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"req.yaml:{line}:" in errors[0] and needle in errors[0]
    no_traceback(proc)
    assert not (tmp_path / "out").exists()


def test_request_that_is_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "req.yaml")
    with pytest.raises(AgentosError) as info:
        load_request(tmp_path / "req.yaml")
    assert "not a regular file" in info.value.message


# --- checked before the first step ---------------------------------------------------

def make_target(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("target\n")
    git(path, "add", "README.md")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return path


REQ = ("version: 1\nid: r1\nrepo: ./repo\npolicy: policy.yaml\n{extra}steps:\n"
       "  - id: a\n    write: {{path: a.md, content: a}}\n"
       "  - id: b\n    write: {{path: b.md, content: b}}\n")


def agentos(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    return subprocess.run([sys.executable, "-m", "agentos_tasks", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})


def refused_before_start(tmp_path: Path, code: int, *needles: str) -> None:
    """Refused by `doit run` (a failed task: non-zero) and by `agentos exec run` (the
    documented code), each with one error naming the problem, and no run directory."""
    for proc, expected in ((doit(tmp_path, "run", "request=req.yaml"), None),
                           (agentos(tmp_path, "exec", "run", "--request", "req.yaml",
                                    "--outputs", "out"), code)):
        assert proc.returncode != 0, proc.stdout + proc.stderr
        if expected is not None:
            assert proc.returncode == expected, proc.stdout + proc.stderr
        for needle in needles:
            assert needle in proc.stderr, proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if "error:" in ln]) == 1, proc.stderr
        no_traceback(proc)
        assert not (tmp_path / "out").exists(), sorted(str(p) for p in
                                                       (tmp_path / "out").rglob("*"))


def test_missing_repo_is_refused_before_anything_and_leaves_no_run_dir(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    (tmp_path / "req.yaml").write_text(REQ.format(extra=""))
    refused_before_start(tmp_path, EXIT_USAGE, "target repository", "does not exist",
                         "req.yaml:3:")
    (tmp_path / "repo").mkdir()
    refused_before_start(tmp_path, EXIT_USAGE, "is not the top of a git repository")


def test_missing_branch_and_bad_base_are_refused_before_anything(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    make_target(tmp_path / "repo")
    (tmp_path / "req.yaml").write_text(REQ.format(extra="branch: nope\n"))
    refused_before_start(tmp_path, EXIT_USAGE, "branch 'nope' does not exist", "req.yaml:5:")
    (tmp_path / "req.yaml").write_text(REQ.format(extra="base: v9\n"))
    refused_before_start(tmp_path, EXIT_USAGE, "base 'v9' does not name a commit",
                         "req.yaml:5:")


def test_dirty_target_is_refused_before_the_first_step(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    repo = make_target(tmp_path / "repo")
    (tmp_path / "req.yaml").write_text(REQ.format(extra=""))
    (repo / "README.md").write_text("local edit\n")
    refused_before_start(tmp_path, EXIT_STATE, "uncommitted changes", "README.md")
    (repo / "README.md").write_text("target\n")
    (repo / "new.txt").write_text("untracked\n")
    refused_before_start(tmp_path, EXIT_STATE, "uncommitted changes", "new.txt")
    (repo / "new.txt").unlink()
    (repo / "agentos.key").write_text("private\n")  # `agentos keygen` run inside the repo
    refused_before_start(tmp_path, EXIT_STATE, "agentos.key", "never commit a signing key")
    (repo / "agentos.key").unlink()
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert git(repo, "rev-list", "--count", "main") == "3"


def test_dirty_target_mid_run_stops_before_the_next_step(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    repo = make_target(tmp_path / "repo")
    (tmp_path / "req.yaml").write_text(REQ.format(extra=""))
    run_dir = tmp_path / "out" / "r1"
    doit(tmp_path, "run", "request=req.yaml", "step:a", check=0)
    (repo / "README.md").write_text("local edit\n")
    proc = agentos(tmp_path, "exec", "run", "--request", "req.yaml", "--outputs", "out")
    assert proc.returncode == EXIT_STATE and "uncommitted changes" in proc.stderr
    no_traceback(proc)
    assert starts(run_dir) == ["a"]  # b never started
    assert "apply_failed" not in [e["event"] for e in tape_events(run_dir)]
    git(repo, "checkout", "--", "README.md")
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert starts(run_dir) == ["a", "b"]
    assert git(repo, "rev-list", "--count", "main") == "3"


def test_run_dir_inside_the_target_is_refused_and_not_created(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    repo = make_target(tmp_path / "repo")
    (tmp_path / "req.yaml").write_text(REQ.format(extra=""))
    proc = doit(tmp_path, "run", "request=req.yaml", "outputs=repo/out")
    assert proc.returncode == EXIT_USAGE and "inside the target repository" in proc.stderr
    no_traceback(proc)
    assert not (repo / "out").exists()


def test_listing_a_new_run_leaves_no_run_dir(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    make_target(tmp_path / "repo")
    (tmp_path / "req.yaml").write_text(REQ.format(extra=""))
    proc = doit(tmp_path, "list", "request=req.yaml", check=0)
    assert "step:a" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_an_interruption_outside_any_task_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the graph is still being built (no task is running): one line, 130."""
    import signal

    from agentos_tasks import cli, interrupts

    def interrupted(_ns: object) -> int:
        raise interrupts.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(cli, "cmd_gates", interrupted)
    assert cli.main(["gates", "--run", "x"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "interrupted by SIGTERM: re-run the same command to resume\n"

    def ctrl_c(_ns: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_gates", ctrl_c)
    assert cli.main(["gates", "--run", "x"]) == 130
    assert capsys.readouterr().err.startswith("interrupted by SIGINT: ")


def test_a_changed_content_file_after_a_partial_run_is_decided_again(tmp_path: Path) -> None:
    """Review finding: only a content_file's bytes changed after `step:` ran part of the
    request; the pre-run decision and audit/request.json were kept, and EX-A failed for
    good. The new bytes are decided and recorded, and every gate passes."""
    from tests.runutil import doit as run_doit
    from tests.runutil import write_policy, write_request

    write_policy(tmp_path / "policy.yaml")
    (tmp_path / "b.txt").write_text("BEE1\n")
    write_request(tmp_path, [
        {"id": "s1", "message": "s1: a", "write": {"path": "a.txt", "content": "a\n"}},
        {"id": "s2", "message": "s2: b", "write": {"path": "docs/b.md", "content_file": "b.txt"}},
    ])
    run_doit(tmp_path, "run", "request=req.yaml", "step:s2", check=0)
    (tmp_path / "b.txt").write_text("BEE2\n")
    run_doit(tmp_path, "run", "request=req.yaml", check=0)
    assert (tmp_path / "repo" / "docs" / "b.md").read_text() == "BEE2\n"
    gates = run_doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout[-3000:]


def test_a_refused_invocation_never_removes_the_run_another_one_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: B created the run dir, lost the lock to A, and its release removed
    the dir (and A's lock file) under A; a third invocation then got a lock of its own."""
    import threading

    from agentos_tasks.errors import AgentosError as Refused
    from agentos_tasks.runctx import build_context
    from tests.runutil import write_policy, write_request

    write_policy(tmp_path / "policy.yaml")
    write_request(tmp_path, [{"id": "s1", "message": "s1", "write": {"path": "a", "content": "a"}}])
    kw: dict[str, Any] = {"request": "req.yaml", "run": "race", "cwd": tmp_path,
                          "outputs": str(tmp_path / "out")}
    first, second, third = (build_context(**kw) for _ in range(3))
    real_chmod, go, paused = os.chmod, threading.Event(), threading.Event()

    def chmod(path: Any, mode: int) -> None:  # B stops between its mkdir and its flock
        if threading.current_thread().name == "B":
            paused.set()
            go.wait()
        real_chmod(path, mode)

    monkeypatch.setattr(os, "chmod", chmod)
    refused: list[Exception] = []

    def run_b() -> None:
        try:
            second.lock()
        except Refused as exc:
            refused.append(exc)
            second.release()  # what atexit does

    thread = threading.Thread(target=run_b, name="B")
    thread.start()
    paused.wait()
    first.lock()
    go.set()
    thread.join()
    assert refused and "in use by another agentos process" in refused[0].message
    assert (first.paths.state / "lock").exists()
    with pytest.raises(Refused, match="in use by another agentos process"):
        third.lock()
    first.release()


@pytest.mark.parametrize(("value", "needle"), [
    ("9" * 5000, "invalid YAML value"),  # past Python's int-string limit
    ("9" * 400, "at most 604800"),  # would overflow a float timeout
    (".inf", "at most 604800"),  # no timeout at all
])
def test_absurd_numbers_in_a_policy_are_one_clear_error(tmp_path: Path, value: str,
                                                        needle: str) -> None:
    """Review finding: these reached the internal-error path (or meant no timeout)."""
    from agentos_tasks.policy.schema import load_policy

    path = tmp_path / "p.yaml"
    path.write_text(f"version: 1\nid: p\nlimits: {{step_seconds: {value}}}\n")
    with pytest.raises(AgentosError) as caught:
        load_policy(path)
    assert needle in caught.value.message and "p.yaml" in str(caught.value.where)


def test_doit_gates_writes_deleted_reports_again(good_run: Any) -> None:
    """Review finding: after `rm -rf reports/` a cached `doit gates` printed only `--`
    lines and wrote nothing."""
    import shutil

    first = good_run.gates()
    assert first.returncode == 0, first.stdout[-2000:]
    shutil.rmtree(good_run.run_dir / "reports")
    again = good_run.gates()
    assert again.returncode == 0, again.stdout[-2000:]
    for name in ("gates.json", "gates.xml", "report.md", "report.html"):
        assert (good_run.run_dir / "reports" / name).is_file(), name


@pytest.mark.parametrize(("text", "message", "line"), [
    ("version: 1\nid: m\nrepo: ./repo\nbase: &b\n  message: x\nsteps:\n"
     "  - id: s1\n    <<: *b\n    write: {path: a.txt, content: a}\n",
     "YAML merge keys (<<: *b) are not supported", 8),
    # an inline mapping merged in: YAML 1.2 tools (the schema's editors) read a key '<<'
    ("version: 1\n<<: {id: merged}\nrepo: ./repo\nsteps:\n"
     "  - id: s1\n    message: m\n    write: {path: a.txt, content: a}\n",
     "YAML merge keys (<<) are not supported", 2)])
def test_a_yaml_merge_key_is_named_as_one(tmp_path: Path, text: str, message: str,
                                          line: int) -> None:
    path = tmp_path / "req.yaml"
    path.write_text(text)
    with pytest.raises(AgentosError) as info:
        load_request(path)
    assert info.value.message == message
    assert info.value.where == f"{path}:{line}" and info.value.code == EXIT_USAGE


@pytest.mark.parametrize(("line", "written", "kind"), [
    ("id: yes", "yes", "the bool True"), ("id: 1.0", "1.0", "the float 1.0"),
    ("id: on  # the run", "on", "the bool True"), ("id: 0123", "0123", "the int 83"),
    ("id: null", "null", "nothing (null)")])
def test_a_value_yaml_reads_as_not_text_gets_a_quote_hint(
        tmp_path: Path, line: str, written: str, kind: str) -> None:
    path = tmp_path / "req.yaml"
    path.write_text(f"version: 1\n{line}\nrepo: ./repo\nsteps:\n"
                    "  - id: s1\n    message: m\n    write: {path: a.txt, content: a}\n")
    with pytest.raises(AgentosError) as info:
        load_request(path)
    assert info.value.where == f"{path}:2", info.value.render()
    assert info.value.hint == (f"YAML reads the unquoted {written} as {kind}; quote it to "
                               f"keep it text: id: \"{written}\""), info.value.render()


def test_errors_name_the_file_as_given_not_where_its_symlink_points(tmp_path: Path) -> None:
    real = tmp_path / "package" / "policies"
    real.mkdir(parents=True)
    (real / "p.yaml").write_text("version: 1\nfoo: 1\n")
    (tmp_path / "policies").symlink_to(real)
    setup_run(tmp_path)
    proc = doit(tmp_path, "run", "request=req.yaml", "policy=policies/p.yaml")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert f"error: {tmp_path}/policies/p.yaml:2: policy: foo: unknown key" in proc.stderr
    no_traceback(proc)


EARLY_SIGNAL = """
import os, signal, time
from agentos_tasks.interrupts import install_early_handlers
install_early_handlers()
os.kill(os.getpid(), signal.SIGINT)
import json, ssl, asyncio  # a stop signal while modules import, as dodo.py's graph does
time.sleep(5)
"""


def test_a_stop_signal_before_the_graph_is_loaded_is_one_line() -> None:
    """doit imports dodo.py, which imports the whole graph: Ctrl-C in that window was a
    traceback from whatever module was importing. dodo.py installs the early handlers
    before its first import."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", EARLY_SIGNAL], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted by SIGINT: re-run the same command to resume\n"
    dodo = (Path(__file__).resolve().parents[1] / "dodo.py").read_text()
    assert dodo.index("install_early_handlers()") < dodo.index("from agentos_tasks.graph import")


BETWEEN_TASKS = """
import os, signal, time
from agentos_tasks import graph
graph.install_interrupt_handlers()
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGTERM)  # outside any task: doit lets it propagate
time.sleep(5)
"""


def test_a_stop_signal_between_tasks_exits_128_plus_n_with_one_line() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", BETWEEN_TASKS], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 128 + 15, proc.stderr
    assert proc.stdout == "ready\n"
    assert proc.stderr == "interrupted by SIGTERM: re-run the same command to resume\n"
