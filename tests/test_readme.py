"""The README's tour runs as written, and no document shows a command nobody runs.

Convention (checked here): a fenced block whose info string is `sh` is run, line by line,
in a fresh copy of the checkout's runnable parts (dodo.py, requests/, policies/), in the
order the file shows them; `# exit N` at the end of a line is the exit code checked
(default 0). A block whose info string is `sh illustrative` is not run (it names a command
that needs a real agent, a key, the network or a long time, or that CI itself runs). Any
other block that shows a command (a line starting with doit, agentos, pip, python, git or
npm) is a defect: it would drift unseen.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(.*)$")
COMMAND = re.compile(r"^\s*(?:\$ )?(doit|agentos|pip|python|git|npm|sha256sum|cd) ")
EXIT = re.compile(r"#\s*exit (\d+)\s*$")


def blocks(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, info string, lines) of every fenced block, and of every indented block as
    info string 'indented'."""
    found: list[tuple[int, str, list[str]]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match:
            start, info, body = i + 1, match.group(1).strip(), []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            found.append((start, info, body))
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()) \
                and not lines[i].lstrip().startswith(("-", "|")):
            start, body = i + 1, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            found.append((start, "indented", body))
            continue
        i += 1
    return found


def test_every_command_in_the_docs_is_run_or_marked_illustrative() -> None:
    unmarked = []
    for path in DOCS:
        for line, info, body in blocks(path):
            kind = info.split()[0] if info else ""
            if kind == "sh":
                continue
            if any(COMMAND.match(text) for text in body):
                unmarked.append(f"{path.relative_to(ROOT)}:{line} ({info or 'no info'})")
    assert not unmarked, ("blocks showing commands that are neither `sh` (run by this test) "
                          "nor `sh illustrative`: " + ", ".join(unmarked))


def test_the_illustrative_install_and_test_commands_are_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pip install -q -e '.[test]'" in ci and "python -m pytest -q" in ci
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[test]' && doit run request=requests/demo.yaml" in readme
    assert "\npython -m pytest -q\n" in readme


def runnable(path: Path) -> list[tuple[int, str, int]]:
    """(line, command, expected exit) of every line of the file's `sh` blocks."""
    commands = []
    for start, info, body in blocks(path):
        if info != "sh":
            continue
        for offset, text in enumerate(body):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            match = EXIT.search(text)
            commands.append((start + offset + 1, text, int(match.group(1)) if match else 0))
    return commands


def sandbox_copy(tmp: Path) -> Path:
    """What a user has after cloning: the dodo file, the requests and the policies."""
    work = tmp / "checkout"
    work.mkdir()
    shutil.copy(ROOT / "dodo.py", work / "dodo.py")
    shutil.copytree(ROOT / "requests", work / "requests")
    shutil.copytree(ROOT / "agentos_tasks" / "policies", work / "policies")
    return work


@pytest.mark.parametrize("doc", [p for p in DOCS if runnable(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_commands_run_as_written(tmp_path: Path, doc: Path) -> None:
    work = sandbox_copy(tmp_path)
    env = dict(os.environ, NO_COLOR="1", XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    for line, command, expected in runnable(doc):
        argv = shlex.split(command, comments=True)
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == expected, (
            f"{doc.relative_to(ROOT)}:{line}: `{command}` exited {proc.returncode}, the docs "
            f"say {expected}\n{out[-4000:]}")
        assert "Traceback" not in out, f"{doc.relative_to(ROOT)}:{line}\n{out[-4000:]}"
    if doc.name == "README.md":
        log = subprocess.run(["git", "-C", str(work / "outputs" / "adder-repo"), "log",
                              "--name-only", "--format=%s"], capture_output=True, text=True,
                             check=True).stdout
        # the fixed run landed its three steps; a run step's __pycache__ never lands
        assert "add: the adder" in log and "tests/test_add.py" in log
        assert "__pycache__" not in log, log
        # "your own repository": agentos run keeps the evidence in the state directory
        runs = tmp_path / "state" / "agentos-tasks" / "runs"
        assert list(runs.glob("demo-repo-*/first-request/audit/run_tape.jsonl"))
        assert not (work / "outputs" / "first-request").exists()
        assert not (work / "outputs" / "demo-repo" / "first-request").exists()
