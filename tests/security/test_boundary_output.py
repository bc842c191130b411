"""Boundary: what a step, a tool or a received run directory chose, at the terminal.

Class 10 -- agent text reaches the terminal raw. A `run:` step's argv and output, a tool's
error text, a file name a step created, a gate reason built from a tampered artifact, a
file name planted in a received run directory: each is printed by the CLI (error block,
doit reporter, gate table, `agentos verify`, `agentos tool verify`). None may reach the
terminal as raw ESC / C1 / bidi / invisible characters, nor be read as rich markup; each
must be shown escaped (`\\x1b`, `\\u202e`) so a reviewer sees something odd was there.
The tests capture the CLI's stdout and stderr BYTES.

Class 13 -- reading a received run directory never blocks. An artifact replaced by a FIFO,
by a symlink to a FIFO, or by a symlink to /etc/passwd: `agentos verify`, `agentos gates`,
`doit gates` and `agentos tool verify` must exit non-zero promptly (each runs as a
subprocess with a timeout, so a hang fails the test instead of blocking the suite) and
name the file.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import pytest
from conftest import Built
from runutil import DODO, write_policy, write_request

from .conftest import requires_bwrap

pytestmark = [pytest.mark.security]

# What a hostile step / tool / run directory prints or names: rich markup first (the
# reason line is cut at the first line break), OSC 52 (clipboard), a bidi override, a C1
# CSI, an isolate, a zero-width space, then line erase, cursor up and a fake verdict.
PAYLOAD = ("[link=https://e.x]L[/link][bold red]R[/bold red]"
           "\x1b]52;c;ZXZpbA==\x07\u202eevil\x9b31m\u2066\u200b\ufeff"
           "\x1b[2K\r\x1b[1Aall good")
# the same for a file name: no "/", but a newline to forge a line of its own
NAME = "n\x1b]52;c;ZXZpbA==\x07\u202eevil\x9b31m\x1b[2K\r\nok  signature: forged [bold red]X"

ESCAPED_FORMS = (r"\x1b]52;c;ZXZpbA==\x07", r"\u202e", r"\x9b")
_FORBIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}
TIMEOUT = 20


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.pop("AGENTOS_SANDBOX", None)
    env.pop("FORCE_COLOR", None)
    env["COLUMNS"] = "400"  # the gates table keeps each reason on one line: asserts read it
    return env


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """`python -m agentos_tasks ARGS` (or `doit` when args[0] == "doit"), bytes captured.

    A timeout fails the test (the command blocked) instead of hanging the suite."""
    argv = ([sys.executable, "-m", "doit", "-f", str(DODO), *args[1:]] if args[0] == "doit"
            else [sys.executable, "-m", "agentos_tasks", *args])
    try:
        return subprocess.run(argv, cwd=cwd, env=env or _env(), capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} blocked for more than {timeout}s "
                    f"(stdout {exc.stdout!r}, stderr {exc.stderr!r})", pytrace=False)


def raw_controls(data: bytes) -> list[str]:
    text = data.decode("utf-8", "surrogateescape")
    return sorted({f"U+{ord(c):04X}" for c in text
                   if c not in "\n\t" and unicodedata.category(c) in _FORBIDDEN})


def assert_terminal_safe(proc: subprocess.CompletedProcess[bytes],
                         *shown: str) -> str:
    """No raw ESC, C1, bidi or invisible character on stdout or stderr; every string of
    `shown` (the escaped forms) visible. Returns stdout + stderr as text."""
    for name, data in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        bad = raw_controls(data)
        assert b"\x1b" not in data and not bad, \
            f"raw control/format characters {bad} on {name}:\n{data!r}"
    text = (proc.stdout + proc.stderr).decode("utf-8", "surrogateescape")
    for form in shown:
        assert form in text, f"{form!r} is not shown:\n{text}"
    return text


def keys_for(tmp: Path) -> tuple[Path, Path]:
    from agentos_tasks.attest import keygen

    return keygen(tmp / "keys")


def sign(run: Built, key: Path) -> None:
    from agentos_tasks.attest import sign_run
    from agentos_tasks.gates.report import write_reports

    write_reports(run.run_dir)
    sign_run(run.run_dir, key)


def tamper_repo_field(run: Built, value: str) -> None:
    """execution_result.json names another repo: several gates FAIL quoting the value."""
    path = run.run_dir / "execution_result.json"
    data = json.loads(path.read_text())
    data["repo"] = value
    path.write_text(json.dumps(data))


# =================================================================== class 10: escaping


def test_escape_shows_every_dangerous_character_and_keeps_text() -> None:
    from agentos_tasks.termsafe import escape, is_clean, markup

    dangerous = ["\x00", "\x07", "\x08", "\x1b", "\r", "\x7f", "\x85", "\x9b", "\x9d",
                 "\u061c", "\u00ad", "\u200b", "\u200e", "\u200f", "\u2028", "\u2029",
                 "\u202a", "\u202e", "\u2066", "\u2069", "\ufeff", "\udc80", "\U000e0041"]
    for char in dangerous:
        out = escape(f"a{char}b")
        assert char not in out and out.startswith("a\\") and out.endswith("b"), repr(out)
    assert escape("\x1b[2K") == "\\x1b[2K"
    assert escape("\u202e") == "\\u202e"
    assert escape("\U000e0041") == "\\U000e0041"
    assert escape("a\nb\tc\rd") == "a\\nb\\tc\\rd"  # single-line field
    assert escape("a\nb\tc\rd", multiline=True) == "a\nb\tc\\rd"  # a block keeps lines
    assert escape("naïve 中文 ✓ 🙂 [x] C:\\path") == "naïve 中文 ✓ 🙂 [x] C:\\path"
    once = escape(PAYLOAD)
    assert escape(once) == once and is_clean(once) and not is_clean(PAYLOAD)
    assert markup("[bold red]x[/]") == "\\[bold red]x\\[/]"
    assert escape(42) == "42"


def test_error_block_and_reporter_escape_every_field() -> None:
    from agentos_tasks.errors import AgentosError
    from agentos_tasks.graph import guarded

    err = AgentosError(f"step s1 failed: {PAYLOAD}", where=f"req.yaml:{NAME}",
                       hint=f"see logs/{NAME}")
    rendered = err.render()
    assert not raw_controls(rendered.encode("utf-8", "surrogateescape")), repr(rendered)
    assert len(rendered.splitlines()) == 2  # `error: ...` and `  hint: ...`, nothing forged
    assert r"\x1b]52;c;" in rendered and r"\u202e" in rendered and r"\n" in rendered

    def boom() -> None:
        raise err

    failed = guarded(boom)()
    assert not raw_controls(failed.get_msg().encode("utf-8", "surrogateescape"))


@requires_bwrap
@pytest.mark.parametrize("entry", ["agentos", "doit"])
def test_failing_run_step_with_terminal_escapes_is_printed_escaped(tmp_path: Path,
                                                                   entry: str) -> None:
    """The step prints the payload and fails; the error block quotes its argv."""
    code = "import sys; print(sys.argv[1]); sys.stderr.write(sys.argv[1]); sys.exit(3)"
    write_request(tmp_path, [{"id": "s1", "run": ["python3", "-c", code, PAYLOAD]}])
    if entry == "agentos":
        proc = run_cli(tmp_path, "exec", "run", "--request", "req.yaml", "--outputs", "out")
        assert proc.returncode == 4, proc
    else:
        proc = run_cli(tmp_path, "doit", "run", "request=req.yaml", "outputs=out")
        assert proc.returncode == 4, proc  # plain doit: the documented code too
    text = assert_terminal_safe(proc, *ESCAPED_FORMS, "[link=https://e.x]L[/link]")
    assert "exited 3 (expected 0)" in text
    # the log tail quotes the payload: its cursor-up is shown, it forges no line of its own
    assert r"| \x1b[1Aall good" in text
    assert not any(line.strip(" |").startswith("all good") for line in text.splitlines())
    # the evidence keeps the bytes as they were: only the display is escaped
    log = (tmp_path / "out" / "r1" / "logs" / "s1.out").read_bytes()
    assert b"\x1b]52;c;ZXZpbA==\x07" in log


@requires_bwrap
def test_a_file_name_a_step_created_is_printed_escaped(tmp_path: Path) -> None:
    """A run step creates secrets/<NAME>: the policy violation names the file."""
    code = textwrap.dedent("""\
        import os, sys
        os.makedirs("secrets", exist_ok=True)
        open(os.path.join("secrets", sys.argv[1]), "w").write("x")
    """)
    write_request(tmp_path, [{"id": "s1", "run": ["python3", "-c", code, NAME]}])
    proc = run_cli(tmp_path, "exec", "run", "--request", "req.yaml", "--outputs", "out")
    assert proc.returncode == 3, proc
    text = assert_terminal_safe(proc, *ESCAPED_FORMS, r"\r\nok  signature: forged")
    assert not any(line.startswith("ok  signature: forged") for line in text.splitlines())


@requires_bwrap
def test_tool_error_text_is_printed_escaped(tmp_path: Path) -> None:
    """A coding-agent CLI reports an error whose text is the payload."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    fake.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env python3
        import json, sys
        if "--version" in sys.argv:
            print("2.1.197 (Claude Code)")
            sys.exit(0)
        print(json.dumps({{"type": "result", "subtype": "success", "is_error": True,
                          "num_turns": 1, "result": {PAYLOAD!r},
                          "permission_denials": []}}))
    """))
    fake.chmod(0o755)
    write_policy(tmp_path / "policy.yaml", tools=[{"adapter": "claude"}])
    write_request(tmp_path, [{"id": "t1", "tool": {"adapter": "claude", "prompt": "go",
                                                   "paths": ["src/**"]}}])
    env = {**_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = run_cli(tmp_path, "exec", "run", "--request", "req.yaml", "--outputs", "out",
                   env=env)
    assert proc.returncode == 4, proc
    text = assert_terminal_safe(proc, *ESCAPED_FORMS)
    assert "claude reported is_error" in text


def test_gate_reasons_and_rich_markup_are_escaped(good_run: Built) -> None:
    """`agentos gates` over a tampered run: reasons quote the tampered value in the
    per-gate lines and in the rich table; markup in them prints literally."""
    tamper_repo_field(good_run, "/x" + PAYLOAD)
    proc = run_cli(good_run.root, "gates", "--run", good_run.run_dir.name, "--outputs",
                   str(good_run.outputs))
    assert proc.returncode == 5, proc
    text = assert_terminal_safe(proc, *ESCAPED_FORMS)
    table = text[text.index("gates\n"):] if "gates\n" in text else text
    assert "[link=https://e.x]L[/link][bold red]R[/bold red]" in table, table
    for name in ("report.md", "gates.xml"):
        written = (good_run.run_dir / "reports" / name).read_bytes()
        assert b"\x1b" not in written and not raw_controls(written), (name, written)
        assert rb"\x1b" in written and rb"52;c;ZXZpbA==" in written, name
        assert rb"\u202e" in written and rb"\x9b" in written, name
    report = (good_run.run_dir / "reports" / "report.md").read_text()
    assert "[link=https://e.x]" not in report and r"\[link=https://e.x\]" in report


def test_report_cells_show_markdown_and_html_literally() -> None:
    from agentos_tasks.report import _cell

    cell = _cell("[click](https://e.x) ![i](https://e.x/i.png) <img src=x onerror=alert(1)> "
                 "`code` a|b\nc \x1b[31m \u202e")
    for live in ("[click](", "![i](", "<img", "`code`", "a|b", "\n", "\x1b", "\u202e"):
        assert live not in cell, (live, cell)
    assert r"\[click\](https://e.x)" in cell and "&lt;img" in cell and r"a\|b c" in cell
    assert r"\x1b\[31m" in cell and r"\u202e" in cell


def test_agentos_verify_output_is_escaped(good_run: Built, tmp_path: Path) -> None:
    """A signed run, then tampered: a gate reason quotes a value, the coverage and
    unlisted checks quote a planted file name with a newline in it."""
    private, public = keys_for(tmp_path)
    sign(good_run, private)
    tamper_repo_field(good_run, "/x" + PAYLOAD)
    (good_run.run_dir / "logs" / NAME).write_text("planted\n")
    proc = run_cli(good_run.root, "verify", str(good_run.run_dir), "--key", str(public))
    assert proc.returncode == 5, proc
    text = assert_terminal_safe(proc, *ESCAPED_FORMS, "[link=https://e.x]L[/link]",
                                r"\r\nok  signature: forged")
    assert not any(line.startswith("ok  signature: forged") for line in text.splitlines())
    assert text.rstrip().splitlines()[-1].startswith("NOT verified")


def test_agentos_tool_verify_output_is_escaped(good_run: Built) -> None:
    """A result pack planted under a step directory whose name is the payload."""
    step_dir = good_run.run_dir / "tools" / NAME
    step_dir.mkdir(parents=True)
    (step_dir / "tool_result_pack.json").write_text('{"step": "zz"}\n')
    proc = run_cli(good_run.root, "tool", "verify", "--result",
                   str(step_dir / "tool_result_pack.json"))
    assert proc.returncode == 5, proc
    text = assert_terminal_safe(proc, *ESCAPED_FORMS)
    assert not any(line.startswith("ok  signature: forged") for line in text.splitlines())


# =================================================================== class 13: never block


def _plant(run: Built, rel: str, kind: str) -> Path:
    """Replace run_dir/rel by a FIFO, a symlink to a FIFO outside, or a symlink to
    /etc/passwd."""
    target = run.run_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "link-to-fifo":
        fifo = run.root / "elsewhere.fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        target.symlink_to(fifo)
    else:
        target.symlink_to("/etc/passwd")
    assert not stat.S_ISREG(os.lstat(target).st_mode)
    return target


PLANTS = [("audit/run_tape.jsonl", "fifo"), ("patches/s1.patch", "fifo"),
          ("steps/s1.json", "link-to-fifo"), ("audit/request.json", "link-to-fifo"),
          ("audit/tape_head.json", "link-to-passwd"), ("logs/s7.out", "fifo")]


@pytest.mark.parametrize(("rel", "kind"), PLANTS)
def test_agentos_verify_refuses_special_files_promptly(good_run: Built, tmp_path: Path,
                                                       rel: str, kind: str) -> None:
    private, public = keys_for(tmp_path)
    sign(good_run, private)
    _plant(good_run, rel, kind)
    proc = run_cli(good_run.root, "verify", str(good_run.run_dir), "--key", str(public),
                   timeout=TIMEOUT)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode == 5, text
    assert rel in text and "not a regular file" in text, text
    assert "root:" not in text  # /etc/passwd was never read into the output


@pytest.mark.parametrize("entry", ["agentos", "doit"])
@pytest.mark.parametrize(("rel", "kind"), [("audit/run_tape.jsonl", "fifo"),
                                           ("steps/s1.json", "link-to-fifo"),
                                           ("patches/s1.patch", "link-to-passwd")])
def test_gates_on_a_received_run_refuse_special_files_promptly(good_run: Built, entry: str,
                                                               rel: str, kind: str) -> None:
    _plant(good_run, rel, kind)
    if entry == "agentos":
        proc = run_cli(good_run.root, "gates", "--run", good_run.run_dir.name, "--outputs",
                       str(good_run.outputs), timeout=TIMEOUT)
    else:
        proc = run_cli(good_run.root, "doit", "gates", f"run={good_run.run_dir.name}",
                       f"outputs={good_run.outputs}", timeout=TIMEOUT)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode != 0, text
    assert rel in text and "not a regular file" in text, text


def test_agentos_gates_refuses_a_fifo_as_doits_dep_file(good_run: Built) -> None:
    """doit opens .state/doit-deps.json itself, before any gate runs."""
    _plant(good_run, ".state/doit-deps.json", "fifo")
    proc = run_cli(good_run.root, "gates", "--run", good_run.run_dir.name, "--outputs",
                   str(good_run.outputs), timeout=TIMEOUT)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode == 5, text
    assert ".state/doit-deps.json" in text and "not a regular file" in text, text


@pytest.mark.parametrize("rel", [".state/doit-deps.json", ".state/lock"])
def test_doit_gates_refuses_a_fifo_in_the_state_dir(good_run: Built, rel: str) -> None:
    """`doit gates` (dodo.py) too: doit's dep file and the run lock are opened before any
    gate runs, so a FIFO there must be refused, not waited on."""
    _plant(good_run, rel, "fifo")
    proc = run_cli(good_run.root, "doit", "gates", f"run={good_run.run_dir.name}",
                   f"outputs={good_run.outputs}", timeout=TIMEOUT)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode != 0, text
    assert rel in text and "not a regular file" in text and "Traceback" not in text, text


@pytest.mark.parametrize("kind", ["fifo", "link-to-fifo", "link-to-passwd"])
def test_tool_verify_refuses_a_special_result_pack_promptly(good_run: Built,
                                                            kind: str) -> None:
    pack = _plant(good_run, "tools/t1/tool_result_pack.json", kind)
    proc = run_cli(good_run.root, "tool", "verify", "--result", str(pack), timeout=TIMEOUT)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode != 0, text
    assert "tool_result_pack.json" in text and "not a regular file" in text, text


def test_tool_verify_refuses_a_special_file_next_to_the_pack(good_run: Built) -> None:
    """The pack is a plain file; the task pack beside it is a FIFO."""
    step_dir = good_run.run_dir / "tools" / "t1"
    step_dir.mkdir(parents=True)
    (step_dir / "tool_result_pack.json").write_text('{"step": "t1"}\n')
    _plant(good_run, "tools/t1/tool_task_pack.json", "fifo")
    proc = run_cli(good_run.root, "tool", "verify", "--result",
                   str(step_dir / "tool_result_pack.json"), timeout=TIMEOUT)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode != 0, text
    assert "tools/t1/tool_task_pack.json" in text and "not a regular file" in text, text


def test_bounded_reader_refuses_without_blocking(tmp_path: Path) -> None:
    from agentos_tasks.errors import AgentosError
    from agentos_tasks.fsutil import read_regular

    regular = tmp_path / "a.json"
    regular.write_bytes(b"12345")
    assert read_regular(regular) == b"12345"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(regular)
    for name in ("fifo", "link"):
        with pytest.raises(AgentosError, match="not a regular file"):
            read_regular(tmp_path / name)
    with pytest.raises(AgentosError, match="larger than 4 bytes"):
        read_regular(regular, limit=4)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "absent")
