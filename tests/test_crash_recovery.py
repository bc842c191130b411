"""Every interruption resumes to a signable run (issue 13).

A request with a write, a sandboxed run and a tool (command adapter) step is run once,
uninterrupted, for reference. Then, for EVERY event of that run's tape, a fresh copy of
the same (pre-run) root is run with AGENTOS_CRASH_AFTER_EVENT=N (the executor SIGKILLs
itself right after event N is durably written), and the same command again (at most
twice): the branch must hold the reference's tree and commit messages, the tape chain
must verify, and `doit gates` must report no FAIL. The same for SIGKILL, SIGINT (to the
process group, as a terminal's Ctrl-C) and SIGTERM while the run step's process sleeps,
plus: exit non-zero, no step process left, one line saying how to resume, no traceback.
EX-E accepts the recovery shape (step_start, step_interrupted, run_resumed) and nothing
looser.

Each copy lives at its own path and starts before any run, so no absolute path of one
run leaks into another.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_fail, assert_pass, read_events, rechain

from agentos_tasks.attest import ENVELOPE_RELPATH, keygen
from agentos_tasks.tape import verify_chain

PROJECT = Path(__file__).resolve().parent.parent
RUN_ID = "crash"
SLEEP_VAR = "CRASH_TEST_SLEEP"  # the run step sleeps this long once it wrote its file

POLICY = f"""\
version: 1
id: crash-policy
operations: [write, run, tool]
paths:
  allow: ["**"]
  deny: [".git/**"]
commands:
  - {{argv: [python3]}}
tools:
  - {{adapter: command, argv: [python3, -c], network: false}}
network: false
isolation: required
limits: {{step_seconds: 60, max_file_bytes: 1048576, max_changed_files: 20,
          output_bytes: 65536}}
env: [PATH, LANG, {SLEEP_VAR}]
"""

REQUEST = """\
version: 1
id: {run_id}
repo: ./repo
init_repo: true
branch: main
policy: policy.yaml
steps:
  - id: w
    message: "w: write a file"
    write: {{path: a.txt, content: "a\\n"}}
  - id: r
    message: "r: a sandboxed program writes b.txt"
    run: [python3, -c, "import os, time; open('b.txt', 'w').write('b\\\\n');
          time.sleep(float(os.environ.get('{sleep}', '0')))", {marker}]
  - id: t
    message: "t: a tool step (command adapter) writes c.txt"
    tool:
      adapter: command
      prompt: "write c.txt"
      paths: ["**"]
      argv: [python3, -c, "open('c.txt', 'w').write('c\\\\n')"]
"""


def make_root(root: Path, marker: str) -> Path:
    """A pre-run root: policy.yaml and request.yaml (the repo is created by the run)."""
    root.mkdir(parents=True)
    (root / "policy.yaml").write_text(POLICY)
    (root / "request.yaml").write_text(REQUEST.format(run_id=RUN_ID, sleep=SLEEP_VAR,
                                                      marker=marker))
    return root


def doit_argv(command: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), command,
            "request=request.yaml", "outputs=outputs", *extra]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "AGENTOS_")) and k != SLEEP_VAR}
    env.update(extra)
    return env


def doit(root: Path, command: str, *extra: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(doit_argv(command, *extra), cwd=root, env=env or clean_env(),
                          capture_output=True, text=True, timeout=120, check=False)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@dataclass(frozen=True)
class Landed:
    """What an uninterrupted run leaves on the branch."""

    tree: str
    messages: list[str]


def landed(root: Path) -> Landed:
    repo = root / "repo"
    return Landed(git(repo, "rev-parse", "main^{tree}"),
                  git(repo, "log", "--format=%s", "main").splitlines())


def run_dir(root: Path) -> Path:
    return root / "outputs" / RUN_ID


def signable(root: Path) -> str | None:
    """None when the run is signable: a valid chain and `doit gates` with no FAIL; else why."""
    chain = verify_chain(run_dir(root))
    if not chain.ok:
        return f"tape chain: {chain.reason}"
    gates = doit(root, "gates")
    report = run_dir(root) / "reports" / "gates.json"
    failed = [g["id"] for g in json.loads(report.read_text())["gates"]
              if g["status"] == "FAIL"] if report.is_file() else ["no reports/gates.json"]
    if gates.returncode != 0 or failed:
        return f"doit gates exit {gates.returncode}: {failed[:3]} {gates.stderr[-400:]}"
    return None


def resume(root: Path) -> tuple[int, str | None]:
    """The same command again, at most twice: (invocations it took, None or what failed)."""
    for attempt in (1, 2):
        result = doit(root, "run")
        if result.returncode == 0:
            return attempt, None
    return 2, f"re-run exit {result.returncode}:\n{result.stdout[-600:]}\n{result.stderr[-900:]}"


@dataclass(frozen=True)
class Reference:
    pristine: Path
    landed: Landed
    events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The pre-run root (copied for every case) and the uninterrupted run built from it."""
    base = tmp_path_factory.mktemp("crash")
    pristine = make_root(base / "pristine", "crash-loop-marker")
    root = base / "reference"
    shutil.copytree(pristine, root)
    result = doit(root, "run")
    assert result.returncode == 0, f"reference run: {result.stdout}\n{result.stderr}"
    assert signable(root) is None, signable(root)
    events = read_events(run_dir(root))
    assert [e["event"] for e in events if e["event"].startswith("step_")] == \
        ["step_start", "step_end"] * 3
    return Reference(pristine, landed(root), events)


def fresh(reference: Reference, where: Path) -> Path:
    shutil.copytree(reference.pristine, where)
    return where


def crash_case(reference: Reference, where: Path, crash: str) -> tuple[str, str | None]:
    """Kill after the tape event `crash` names, resume, judge: (label, None or why not)."""
    root = fresh(reference, where)
    first = doit(root, "run", env=clean_env(AGENTOS_CRASH_AFTER_EVENT=crash))
    seq = int(crash.split(":", maxsplit=1)[0])
    label = f"after event {crash} ({reference.events[seq]['event']})"
    if first.returncode != -signal.SIGKILL:
        return label, f"the crash run was not SIGKILLed (exit {first.returncode})"
    tape = (run_dir(root) / "audit" / "run_tape.jsonl").read_bytes()
    if crash.endswith((":torn", ":nonl")):  # seq whole lines, then event seq without "\n"
        if tape.endswith(b"\n") or tape.count(b"\n") != seq:
            return label, f"the tape does not end in a torn line {seq}: {tape[-80:]!r}"
    elif len(read_events(run_dir(root))) != seq + 1:
        return label, f"the tape has {len(read_events(run_dir(root)))} events, not {seq + 1}"
    attempts, failure = resume(root)
    if failure is not None:
        return label, failure
    if landed(root) != reference.landed:
        return label, f"branch differs: {landed(root)} != {reference.landed}"
    why = signable(root)
    return f"{label}, resumed in {attempts}", why


def _all_recover(reference: Reference, tmp_path: Path, cases: list[str], what: str) -> None:
    """Run every crash case (a few at a time) and assert each recovers to a signable run."""
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        outcomes = list(pool.map(
            lambda c: crash_case(reference, tmp_path / c.replace(":", "-"), c), cases))
    bad = [(label, why) for label, why in outcomes if why is not None]
    print(f"\n{len(outcomes) - len(bad)} of {len(outcomes)} {what} recover to a "
          "signable run")
    for label, why in outcomes:
        print(f"  {label}: {'ok' if why is None else why}")
    assert not bad, "\n".join(f"{label}: {why}" for label, why in bad)


def test_every_tape_event_crash_recovers_to_a_signable_run(reference: Reference,
                                                            tmp_path: Path) -> None:
    """SIGKILL right after each event of the reference tape (after its head moved), and
    between the line and the head for the step and apply events; all must recover."""
    cases = [str(seq) for seq in range(len(reference.events))]
    # the line on disk, the head not yet moved: a run step's start, the tool step's end,
    # the apply and the close
    events = reference.events
    cases += [f"{_index(events, 'step_start', 'r')}:line", f"{_index(events, 'step_end', 't')}:line",
              f"{_index(events, 'patches_applied')}:line", f"{_index(events, 'run_end')}:line"]
    _all_recover(reference, tmp_path, cases, "interruptions")


def test_a_torn_write_of_every_event_kind_recovers_to_a_signable_run(
        reference: Reference, tmp_path: Path) -> None:
    """Review finding: killed while writing a tape line (half of it on disk, or all but
    its newline), for the first event of every kind and the step_end of each step. A
    half line is cut and its event made again (a half step_end re-runs its step, never
    reuses a manifest the tape does not name); a whole line short of its newline parses
    and chains, so it is kept and completed."""
    events = reference.events
    firsts: dict[str, int] = {}
    for event in events:
        firsts.setdefault(event["event"], event["seq"])
    cases = [f"{seq}:torn" for seq in sorted(firsts.values())]
    cases += [f"{_index(events, 'step_end', step)}:torn" for step in ("r", "t")]
    cases += [f"{_index(events, 'step_end', 'w')}:nonl", f"{_index(events, 'run_end')}:nonl"]
    _all_recover(reference, tmp_path, cases, "torn writes")


def test_a_crash_during_recovery_recovers_too(reference: Reference, tmp_path: Path) -> None:
    """Review finding: killed after a step_start, then killed again after the
    step_interrupted of the recovery (before its run_resumed): the next invocation
    finishes the pair, and the run is signable."""
    start = _index(reference.events, "step_start", "r")
    root = fresh(reference, tmp_path / "double")
    first = doit(root, "run", env=clean_env(AGENTOS_CRASH_AFTER_EVENT=str(start)))
    assert first.returncode == -signal.SIGKILL
    second = doit(root, "run", env=clean_env(AGENTOS_CRASH_AFTER_EVENT=str(start + 1)))
    assert second.returncode == -signal.SIGKILL
    assert read_events(run_dir(root))[-1]["event"] == "step_interrupted"
    _, failure = resume(root)
    assert failure is None, failure
    assert landed(root) == reference.landed
    assert signable(root) is None, signable(root)
    names = [e["event"] for e in read_events(run_dir(root))]
    closed = names.index("step_interrupted")
    assert names[closed + 1] == "run_resumed", names


def test_crash_after_patches_applied_is_finished_not_sealed(reference: Reference,
                                                            tmp_path: Path) -> None:
    """Killed after `git am` landed and patches_applied is on the tape, before run_end: the
    next invocation writes checksums and the result and closes the tape, no refusal."""
    seq = next(e["seq"] for e in reference.events if e["event"] == "patches_applied")
    root = fresh(reference, tmp_path / "root")
    crashed = doit(root, "run", env=clean_env(AGENTOS_CRASH_AFTER_EVENT=str(seq)))
    assert crashed.returncode == -signal.SIGKILL
    rd = run_dir(root)
    assert (rd / ".state" / "applied.json").exists(), "the crash came after the applied record"
    assert not (rd / "execution_result.json").exists() or json.loads(
        (rd / "execution_result.json").read_text())["status"] != "applied"
    again = doit(root, "run")
    assert again.returncode == 0, again.stderr
    assert "sealed" not in again.stderr
    result = json.loads((rd / "execution_result.json").read_text())
    assert result["status"] == "applied"
    assert (rd / "audit" / "checksums.json").is_file()
    events = [e["event"] for e in read_events(rd)]
    assert events.count("patches_applied") == 1 and events[-1] == "run_end"
    assert signable(root) is None
    # and a third invocation adds nothing: the run stays closed as it is
    before = (rd / "audit" / "run_tape.jsonl").read_bytes()
    sums = (rd / "audit" / "checksums.json").read_bytes()
    assert doit(root, "run").returncode == 0
    assert (rd / "audit" / "run_tape.jsonl").read_bytes() == before
    assert (rd / "audit" / "checksums.json").read_bytes() == sums


def test_crash_between_applied_record_and_tape_records_the_apply_once(
        reference: Reference, tmp_path: Path) -> None:
    """AGENTOS_CRASH_AT=apply.recorded: the branch moved and the applied record exists,
    the tape does not say so yet. The re-run appends patches_applied once, then closes."""
    root = fresh(reference, tmp_path / "root")
    crashed = doit(root, "run", env=clean_env(AGENTOS_CRASH_AT="apply.recorded"))
    assert crashed.returncode == -signal.SIGKILL
    rd = run_dir(root)
    assert "patches_applied" not in [e["event"] for e in read_events(rd)]
    assert landed(root) == reference.landed  # the branch did move before the kill
    again = doit(root, "run")
    assert again.returncode == 0, again.stderr
    applied = [e for e in read_events(rd) if e["event"] == "patches_applied"]
    assert len(applied) == 1
    record = json.loads((rd / ".state" / "applied.json").read_text())
    assert applied[0]["post_apply_head"] == record["post_apply_head"]
    assert applied[0]["commits"] == record["commits"]
    assert signable(root) is None


def test_torn_doit_dep_file_is_dropped_and_the_closed_run_stays_as_it_is(
        reference: Reference, tmp_path: Path) -> None:
    """doit writes its dep file in place; a kill mid-write leaves JSON it would refuse
    forever. It is dropped with one note; the closed run is re-entered without a change."""
    root = fresh(reference, tmp_path / "root")
    assert doit(root, "run").returncode == 0
    rd = run_dir(root)
    deps = rd / ".state" / "doit-deps.json"
    data = deps.read_bytes()
    deps.write_bytes(data[:len(data) // 2])
    tape = (rd / "audit" / "run_tape.jsonl").read_bytes()
    again = doit(root, "run")
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert "was torn by an interruption; removed" in again.stderr
    assert "Traceback" not in again.stderr and "corrupted" not in again.stderr
    assert (rd / "audit" / "run_tape.jsonl").read_bytes() == tape
    json.loads(deps.read_bytes())  # doit wrote a whole one again
    assert signable(root) is None


# ------------------------------------------------------------------ signals mid-step


def marker_processes(marker: str) -> list[str]:
    """Processes whose argv holds `marker` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv:
            found.append(f"{entry}: {b' '.join(argv)[:160]!r}")
    return found


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_signal_while_run_step_process_runs(sig: str, tmp_path: Path) -> None:
    marker = f"crash-signal-{uuid.uuid4().hex}"
    root = make_root(tmp_path / "root", marker)
    proc = subprocess.Popen(doit_argv("run"), cwd=root, env=clean_env(**{SLEEP_VAR: "60"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: (run_dir(root) / "worktree" / "b.txt").exists()
                 and marker_processes(marker), 60, "the run step to write b.txt")
        signum = getattr(signal, sig)
        if sig == "SIGINT":
            os.killpg(proc.pid, signum)  # a terminal's Ctrl-C reaches the whole group
        else:
            os.kill(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    wait_for(lambda: not marker_processes(marker), 5, f"no process with {marker} left")
    if sig != "SIGKILL":
        assert proc.returncode == 128 + signum, stderr  # plain doit: the documented code
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines == [f"interrupted by {sig} during step:r: re-run the same command "
                         "to resume"], stderr
        assert "Traceback" not in stdout + stderr
    events = read_events(run_dir(root))
    assert events[-1]["event"] == "step_start" and events[-1]["step"] == "r"
    again = doit(root, "run")
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    shape = [(e["event"], e.get("step")) for e in read_events(run_dir(root))]
    start = len(events) - 1
    assert shape[start:start + 3] == [("step_start", "r"), ("step_interrupted", "r"),
                                      ("run_resumed", None)]
    if sig != "SIGKILL":  # doit saved what completed: the re-run starts at step r
        assert shape[start + 3] == ("step_start", "r")
    else:  # a killed doit saved nothing: policy and worktree again, w reused, r again
        assert shape[start + 3:].count(("step_start", "r")) == 1
        assert ("step_start", "w") not in shape[start + 3:]
    assert (root / "repo" / "b.txt").read_text() == "b\n"
    assert signable(root) is None
    key, _pub = keygen(tmp_path / "keys")
    signed = doit(root, "sign", f"key={key}")
    assert signed.returncode == 0, f"{signed.stdout}\n{signed.stderr}"
    assert (run_dir(root) / ENVELOPE_RELPATH).is_file()


def test_agentos_exec_run_interrupted_exits_130_with_one_line(tmp_path: Path) -> None:
    """`agentos exec run` goes through the same reporter: exit 130 on SIGINT, one line."""
    marker = f"crash-signal-{uuid.uuid4().hex}"
    root = make_root(tmp_path / "root", marker)
    argv = [sys.executable, "-m", "agentos_tasks", "exec", "run", "--request",
            "request.yaml", "--outputs", "outputs"]
    env = clean_env(**{SLEEP_VAR: "60", "PYTHONPATH": str(PROJECT)})  # this checkout's
    proc = subprocess.Popen(argv, cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: marker_processes(marker), 60, "the run step's process")
        os.kill(proc.pid, signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "interrupted by SIGINT during step:r: re-run the same command to resume"]
    wait_for(lambda: not marker_processes(marker), 5, f"no process with {marker} left")


# ------------------------------------------------------------------ EX-E's exact shape


@pytest.fixture(scope="module")
def _interrupted_build(reference: Reference,
                       tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run killed right after step_start of r, then resumed: (its root, a pristine copy)."""
    base = tmp_path_factory.mktemp("interrupted")
    root = fresh(reference, base / "root")
    seq = next(e["seq"] for e in reference.events
               if e["event"] == "step_start" and e["step"] == "r")
    assert doit(root, "run", env=clean_env(AGENTOS_CRASH_AFTER_EVENT=str(seq))).returncode \
        == -signal.SIGKILL
    assert doit(root, "run").returncode == 0
    shutil.copytree(run_dir(root), base / "pristine-run", symlinks=True)
    return root, base / "pristine-run"


@pytest.fixture
def interrupted_run(_interrupted_build: tuple[Path, Path]) -> Path:
    root, pristine = _interrupted_build
    shutil.rmtree(run_dir(root))
    shutil.copytree(pristine, run_dir(root), symlinks=True)
    return run_dir(root)


def _index(events: list[dict[str, Any]], name: str, step: str | None = None) -> int:
    return next(i for i, e in enumerate(events)
                if e["event"] == name and (step is None or e.get("step") == step))


def test_ex_e_passes_the_recovery_shape(interrupted_run: Path) -> None:
    events = read_events(interrupted_run)
    i = _index(events, "step_interrupted")
    assert [e["event"] for e in events[i - 1:i + 2]] == \
        ["step_start", "step_interrupted", "run_resumed"]
    assert events[i]["started_seq"] == events[i - 1]["seq"]
    result = assert_pass(interrupted_run, "EX-E")
    assert "closed once" in result.reason


def test_ex_e_fails_step_interrupted_without_run_resumed(interrupted_run: Path) -> None:
    events = read_events(interrupted_run)
    del events[_index(events, "run_resumed")]
    rechain(interrupted_run, events)
    assert_fail(interrupted_run, "EX-E", "not followed by run_resumed")


def test_ex_e_fails_step_interrupted_of_another_step(interrupted_run: Path) -> None:
    events = read_events(interrupted_run)
    events[_index(events, "step_interrupted")]["step"] = "w"
    rechain(interrupted_run, events)
    assert_fail(interrupted_run, "EX-E", "does not follow its step_start")


def test_ex_e_fails_step_interrupted_twice(interrupted_run: Path) -> None:
    events = read_events(interrupted_run)
    i = _index(events, "step_interrupted")
    events[i + 2:i + 2] = [dict(events[i]), dict(events[i + 1])]  # the pair once more
    rechain(interrupted_run, events)
    assert_fail(interrupted_run, "EX-E", "step_interrupted of r does not follow")


def test_ex_e_fails_step_interrupted_after_a_step_end(interrupted_run: Path) -> None:
    events = read_events(interrupted_run)
    end = _index(events, "step_end", "t")
    extra = {"event": "step_interrupted", "step": "t", "started_seq": end - 1,
             "reason": "forged"}
    events[end + 1:end + 1] = [extra, {"event": "run_resumed", "reason": "forged"}]
    rechain(interrupted_run, events)
    assert_fail(interrupted_run, "EX-E", "does not follow its step_start")


def test_ex_e_fails_a_wrong_started_seq(interrupted_run: Path) -> None:
    events = read_events(interrupted_run)
    events[_index(events, "step_interrupted")]["started_seq"] = 0
    rechain(interrupted_run, events)
    assert_fail(interrupted_run, "EX-E", "names step_start seq 0")


def test_ex_e_fails_a_step_start_left_open(interrupted_run: Path) -> None:
    """Without the recovery pair the interrupted step_start is simply unclosed."""
    events = read_events(interrupted_run)
    i = _index(events, "step_interrupted")
    del events[i:i + 2]
    rechain(interrupted_run, events)
    assert_fail(interrupted_run, "EX-E", "starts while r has no step_end")


SECOND_SIGNAL = """
import os, signal, sys, time
from agentos_tasks import graph, interrupts
graph.install_interrupt_handlers()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except interrupts.Interrupted as exc:
    print(exc.signum, flush=True)
os.kill(os.getpid(), signal.SIGTERM)  # a second stop signal while unwinding: die by it
time.sleep(5)
print("survived", flush=True)
"""


def test_first_stop_signal_unwinds_a_second_one_kills() -> None:
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], cwd=PROJECT,
                          env=clean_env(PYTHONPATH=str(PROJECT)), capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.stdout.split() == [str(int(signal.SIGTERM))], done.stderr
    assert done.returncode == -signal.SIGTERM
