"""run_confined and the bwrap argv: real bwrap, real processes, real files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from security.conftest import (  # reused skip/fail-under-CI logic
    bwrap_required,  # noqa: F401 - fixture used via requires_bwrap
    host_processes_with,
    requires_bwrap,
)

from agentos_tasks.errors import EXIT_STEP, AgentosError
from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox import bwrap
from agentos_tasks.sandbox.backend import SANDBOX_ENV_VAR
from agentos_tasks.sandbox.bwrap import build_bwrap_argv, probe_argv, synthesized_etc
from agentos_tasks.sandbox.gitview import git_view_config, read_repository_format
from agentos_tasks.sandbox.hostfs import SYSTEM_DIRS, is_system_path
from agentos_tasks.sandbox.program import ProgramPlan, plan_program, program_binds
from agentos_tasks.sandbox.pyenv import shim_root
from agentos_tasks.sandbox.spec import NO_NETWORK, ConfinedResult, ConfinedSpec, NetworkGrant

HOST_PATH = os.environ.get("PATH", "/usr/bin:/bin")


def make_spec(worktree: Path, **overrides: object) -> ConfinedSpec:
    values: dict[str, object] = {
        "worktree": worktree, "readonly_paths": (),
        "env": {"PATH": HOST_PATH, "LANG": "C.UTF-8"}, "network": NO_NETWORK,
        "isolation": "required", "timeout_s": 20.0, "output_limit": 1 << 20,
        "max_file_bytes": 1 << 20,
    }
    values.update(overrides)
    return ConfinedSpec(**values)  # type: ignore[arg-type]


def run(tmp_path: Path, argv: list[str], **overrides: object) -> tuple[ConfinedResult, str]:
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    log = tmp_path / "logs" / "step.out"
    result = run_confined(argv, make_spec(worktree, **overrides), log)
    return result, log.read_text(errors="replace")


def wait_gone(token: str, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := host_processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# --- pure argv construction -------------------------------------------------------------


def test_argv_has_every_isolation_flag_and_binds_in_order(tmp_path: Path) -> None:
    worktree, gitdir = tmp_path / "wt", tmp_path / "repo.git"
    worktree.mkdir()
    gitdir.mkdir()
    (worktree / ".git").write_text(f"gitdir: {gitdir}\n")
    spec = make_spec(worktree, readonly_paths=(gitdir, worktree / ".git"),
                     env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    argv = build_bwrap_argv(["true"], spec, Path("/x/bwrap"), userns=True)
    assert argv[0] == "/x/bwrap" and argv[-2:] == ["--", "true"]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--disable-userns"):
        assert flag in argv
    # no --clearenv: bwrap's own environment is the secrets only (secret_environ)
    assert "--share-net" not in argv and "--clearenv" not in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    joined = " ".join(argv)
    assert "--setenv PATH /usr/bin:/bin" in joined and "--setenv LANG C" in joined
    assert "/etc/shadow" not in joined and "resolv.conf" not in joined
    rw = argv.index("--bind")
    assert argv[rw + 1: rw + 3] == [str(worktree), str(worktree)]
    ro_positions = [i for i, a in enumerate(argv) if a == "--ro-bind" and
                    argv[i + 1] in (str(gitdir), str(worktree / ".git"))]
    assert len(ro_positions) == 2 and all(i > rw for i in ro_positions)  # read-only wins
    assert argv[argv.index("--chdir") + 1] == str(worktree)
    assert "/etc/passwd" not in argv  # only ever synthesized (--ro-bind-data), never bound


def test_network_proxy_keeps_the_empty_namespace_and_runs_the_bridge(tmp_path: Path) -> None:
    grant = NetworkGrant("proxy", ("api.test:443",), rule_id="tools[0]")
    spec = make_spec(tmp_path, network=grant)
    socket_path = tmp_path / "proxy.sock"
    argv = build_bwrap_argv(["true"], spec, Path("/x/bwrap"), userns=False,
                            proxy_socket=socket_path)
    assert "--share-net" not in argv and "--disable-userns" not in argv
    assert "/etc/resolv.conf" not in argv
    bind = argv.index(str(socket_path))
    assert argv[bind - 1: bind + 2] == ["--ro-bind", str(socket_path), bwrap.PROXY_SOCKET]
    # bwrap's `--`, then the bridge in the host's interpreter, then the program
    assert argv[-9] == "--" and argv[-7:-5] == ["-I", "-S"]
    assert argv[-5:] == [bwrap.BRIDGE_PATH, "3128", bwrap.PROXY_SOCKET, "--", "true"]
    assert os.path.samefile(argv[-8], sys.executable)
    joined = " ".join(argv)
    assert "--setenv HTTPS_PROXY http://127.0.0.1:3128" in joined
    assert "--setenv NO_PROXY  " in joined
    with pytest.raises(ValueError, match="proxy_socket"):
        build_bwrap_argv(["true"], spec, Path("/x/bwrap"))


def test_home_is_private_and_never_bound(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    spec = make_spec(tmp_path / "wt", env={"PATH": "/usr/bin", "HOME": str(home)})
    argv = build_bwrap_argv(["true"], spec, Path("/x/bwrap"))
    assert any(argv[j] == "--tmpfs" and argv[j + 1] == str(home) for j in range(len(argv) - 1))
    assert not any(argv[j] in ("--bind", "--ro-bind") and argv[j + 1] == str(home)
                   for j in range(len(argv) - 1))


def test_system_symlinks_are_recreated_not_bound() -> None:
    argv = probe_argv(Path("/x/bwrap"), userns=False)
    for system_dir in SYSTEM_DIRS:
        if os.path.islink(system_dir):
            i = argv.index(system_dir)
            assert argv[i - 2] == "--symlink" and argv[i - 1] == os.readlink(system_dir)


def test_fake_cli_dir_is_bound_but_not_its_parent(tmp_path: Path) -> None:
    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    script = cli_dir / "fakecli"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    binds = program_binds("fakecli", f"{cli_dir}:/usr/bin:/bin", tmp_path / "wt")
    assert binds == [cli_dir]


def test_program_in_parent_of_worktree_binds_only_the_file(tmp_path: Path) -> None:
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (tmp_path / "secret.txt").write_text("s3cret")
    plan = plan_program(str(script), {"PATH": "/usr/bin"}, tmp_path / "wt")
    assert plan.binds == (script,)


def shim_path() -> str:
    """A PATH whose `python` is a pyenv shim (as in a login shell), or skip."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    shim = root / "shims" / "python3"
    if not shim.is_file() or shim_root(shim) is None:
        pytest.skip("no pyenv shims on this machine")
    return f"{root / 'shims'}:/usr/bin:/bin"


def test_pyenv_shim_resolves_to_real_interpreter(tmp_path: Path) -> None:
    path_env = shim_path()
    plan = plan_program("python", {"PATH": path_env}, tmp_path)
    assert plan.program is not None and "/shims/" not in str(plan.program)
    assert plan.path_prefix == (str(plan.program.parent),)
    assert plan.binds and all(not is_system_path(b) for b in plan.binds)
    assert "/shims" not in " ".join(map(str, plan.binds))


def test_hostile_python_version_file_cannot_pick_a_host_dir(tmp_path: Path) -> None:
    path_env = shim_path()
    (tmp_path / ".python-version").write_text("../../../../etc\n")
    plan = plan_program("python3", {"PATH": path_env}, tmp_path)
    assert all(not str(b).startswith("/etc") for b in plan.binds)


@requires_bwrap
def test_python_through_pyenv_shim_runs_in_sandbox(tmp_path: Path) -> None:
    env = {"PATH": shim_path(), "LANG": "C.UTF-8"}
    code = "import sys, pytest; print(sys.prefix)"
    result, out = run(tmp_path, ["python3", "-c", code], env=env)
    assert result.exit_code == 0, out
    assert ".pyenv/versions/" in out


def test_synthesized_passwd_lists_only_the_sandbox_user() -> None:
    files = synthesized_etc(0, 0)
    assert files["/etc/passwd"].startswith(b"root:x:0:0:")
    assert len(files["/etc/passwd"].splitlines()) == 2


# --- running under bwrap -----------------------------------------------------------------


@requires_bwrap
def test_exit_codes_and_backend(tmp_path: Path) -> None:
    result, _ = run(tmp_path, ["sh", "-c", "exit 3"])
    assert (result.exit_code, result.backend, result.timed_out) == (3, "bwrap", False)
    assert result.wrapper_argv[-4:] == ("--", "sh", "-c", "exit 3")
    result, _ = run(tmp_path, ["true"])
    assert result.exit_code == 0
    # bwrap reports a signal death the way shells do: 128 + N
    result, _ = run(tmp_path, ["sh", "-c", "kill -TERM $$"])
    assert result.exit_code == 128 + 15


@requires_bwrap
def test_program_sees_only_spec_env_and_bwrap_started_with_the_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTOS_CANARY_HOST", "leaked-canary-value")
    env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "STEP_VAR": "visible", "API_KEY": "k-1"}
    script = ('env; echo ---; tr "\\0" "\\n" < /proc/1/environ; echo ---; '
              'tr "\\0" "\\n" < /proc/$PPID/environ; echo ---; echo ran-env-check')
    result, out = run(tmp_path, ["sh", "-c", script], env=env, secret_env=("API_KEY",))
    assert result.exit_code == 0 and "ran-env-check" in out
    assert "STEP_VAR=visible" in out and "API_KEY=k-1" in out
    assert "AGENTOS_CANARY" not in out and "leaked-canary-value" not in out
    program_env = dict(line.split("=", 1) for line in out.split("---\n")[0].splitlines()
                       if "=" in line)
    assert {k: v for k, v in program_env.items() if k not in ("PWD", "SHLVL", "_")} == env
    init_env = out.split("---\n")[1].strip().splitlines()
    # bwrap (and its init, pid 1 inside) was started with the secrets only
    assert dict(line.split("=", 1) for line in init_env) == {"API_KEY": "k-1"}


@requires_bwrap
def test_output_is_capped_and_flagged(tmp_path: Path) -> None:
    result, out = run(tmp_path, ["head", "-c", "50000000", "/dev/zero"], output_limit=1000)
    assert result.exit_code == 0
    assert (result.output_bytes, result.output_truncated) == (1000, True)
    assert len(out) == 1000
    result, out = run(tmp_path, ["echo", "small"], output_limit=1000)
    assert (out, result.output_truncated, result.output_bytes) == ("small\n", False, 6)


@requires_bwrap
def test_timeout_kills_setsid_grandchild(tmp_path: Path) -> None:
    token = f"7.{uuid.uuid4().int % 10**6:06d}"
    marker = tmp_path / "wt" / "grandchild-alive"
    script = (f"setsid sh -c 'sleep 1.5; echo alive > {marker}; sleep {token}' & "
              f"echo started; sleep {token}")
    started = time.monotonic()
    result, out = run(tmp_path, ["sh", "-c", script], timeout_s=0.7)
    assert "started" in out
    assert result.timed_out and result.exit_code == -9
    assert time.monotonic() - started < 5
    assert wait_gone(token) == []
    time.sleep(1.2)
    assert not marker.exists()


@requires_bwrap
def test_timeout_kills_double_forked_daemon(tmp_path: Path) -> None:
    token = f"8.{uuid.uuid4().int % 10**6:06d}"
    marker = tmp_path / "wt" / "daemon-alive"
    code = textwrap.dedent(f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(4.0)
                open({str(marker)!r}, "w").write("alive")
                os.execvp("sleep", ["sleep", "{token}"])
            os._exit(0)
        print("daemonized", flush=True)
        os.execvp("sleep", ["sleep", "{token}"])
    """)
    # a generous timeout: python3 can take a second to start in the sandbox on a loaded
    # 2-core machine, and "daemonized" must be printed before the kill
    result, out = run(tmp_path, ["python3", "-c", code], timeout_s=2.5)
    assert "daemonized" in out and result.timed_out
    assert wait_gone(token) == []
    time.sleep(2.0)  # past the daemon's 4 s: had it survived, the marker would exist
    assert not marker.exists()


@requires_bwrap
def test_nothing_outlives_a_normal_exit(tmp_path: Path) -> None:
    token = f"9.{uuid.uuid4().int % 10**6:06d}"
    marker = tmp_path / "wt" / "background-alive"
    script = f"(sleep 1; echo alive > {marker}) & setsid sleep {token} & echo bye"
    result, out = run(tmp_path, ["sh", "-c", script])
    assert result.exit_code == 0 and out == "bye\n" and not result.timed_out
    assert host_processes_with(token) == []  # gone when run_confined returns
    time.sleep(1.3)
    assert not marker.exists()


@requires_bwrap
def test_program_not_found(tmp_path: Path) -> None:
    result, out = run(tmp_path, ["agentos-no-such-program-xyz", "--help"])
    assert result.exit_code == 127 and "program not found: agentos-no-such-program-xyz" in out


@requires_bwrap
@pytest.mark.parametrize("interpreter", ["#!/usr/bin/env python3", "#!/bin/sh"])
def test_fake_cli_script_in_tmp_dir_runs(tmp_path: Path, interpreter: str) -> None:
    cli_dir = tmp_path / "fakebin"
    cli_dir.mkdir()
    script = cli_dir / "fake-agent"
    body = ('import sys; print("fake-agent", sys.argv[1:])' if "python" in interpreter
            else 'echo "fake-agent [$1]"')
    script.write_text(f"{interpreter}\n{body}\n")
    script.chmod(0o755)
    env = {"PATH": f"{cli_dir}:{HOST_PATH}", "LANG": "C.UTF-8"}
    result, out = run(tmp_path, ["fake-agent", "x"], env=env)
    assert result.exit_code == 0, out
    assert out.startswith("fake-agent") and "x" in out


@requires_bwrap
def test_python_c_and_python_m_pytest_run(tmp_path: Path) -> None:
    result, out = run(tmp_path, ["python", "-c", "print(6 * 7)"])
    assert (result.exit_code, out) == (0, "42\n")
    worktree = tmp_path / "wt"
    (worktree / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    result, out = run(tmp_path, ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
    assert result.exit_code == 0, out
    assert "1 passed" in out


@requires_bwrap
def test_readonly_path_inside_worktree_stays_readonly(tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    worktree.mkdir()
    dotgit = worktree / ".git"
    dotgit.write_text("gitdir: /nowhere\n")
    _result, out = run(tmp_path, ["sh", "-c", "echo ran; echo x > .git; echo y > ok.txt"],
                      readonly_paths=(dotgit,))
    assert "ran" in out and "Read-only file system" in out
    assert dotgit.read_text() == "gitdir: /nowhere\n"
    assert (worktree / "ok.txt").read_text() == "y\n"


# --- backend selection and backend none --------------------------------------------------


def test_required_without_bwrap_fails_closed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwrap, "find_bwrap", lambda: None)
    with pytest.raises(AgentosError) as caught:
        run(tmp_path, ["true"])
    assert caught.value.code == EXIT_STEP
    assert "isolation: required" in caught.value.message and caught.value.hint


def test_forcing_none_with_required_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SANDBOX_ENV_VAR, "none")
    with pytest.raises(AgentosError) as caught:
        run(tmp_path, ["true"])
    assert caught.value.code == EXIT_STEP


def test_best_effort_without_bwrap_runs_unsandboxed_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwrap, "find_bwrap", lambda: None)
    result, out = run(tmp_path, ["sh", "-c", "echo hi; exit 5"], isolation="best-effort")
    assert (result.backend, result.exit_code, out) == ("none", 5, "hi\n")
    assert any("UNSANDBOXED" in note for note in result.notes)


@pytest.fixture
def none_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SANDBOX_ENV_VAR, "none")


@pytest.mark.usefixtures("none_backend")
def test_none_backend_timeout_kills_setsid_and_double_forked(tmp_path: Path) -> None:
    token = f"6.{uuid.uuid4().int % 10**6:06d}"
    marker = tmp_path / "wt" / "alive"
    script = (f"setsid sh -c 'sleep 1.2; echo a > {marker}' & "
              f"( (setsid sleep {token} &) & ) ; echo started; sleep {token}")
    result, out = run(tmp_path, ["sh", "-c", script], isolation="best-effort", timeout_s=0.7)
    assert result.backend == "none" and result.timed_out and result.exit_code == -9
    assert "started" in out
    assert wait_gone(token) == []
    time.sleep(1.0)
    assert not marker.exists()


@pytest.mark.usefixtures("none_backend")
def test_none_backend_normal_exit_reaps_daemons_limits_and_signals(tmp_path: Path) -> None:
    token = f"5.{uuid.uuid4().int % 10**6:06d}"
    result, out = run(tmp_path, ["sh", "-c", f"setsid sleep {token} & echo bye"],
                      isolation="best-effort")
    assert (result.exit_code, out) == (0, "bye\n")
    assert host_processes_with(token) == []
    result, _ = run(tmp_path, ["sh", "-c", "kill -TERM $$"], isolation="best-effort")
    assert result.exit_code == -15  # exact under none
    result, out = run(tmp_path, ["sh", "-c", "ulimit -n; ulimit -f"], isolation="best-effort",
                      max_open_files=77, max_file_bytes=512 * 1024)
    assert out.split() == ["77", "1024"]  # ulimit -f counts 512-byte blocks
    result, out = run(tmp_path, ["head", "-c", "100000", "/dev/zero"],
                      isolation="best-effort", output_limit=10)
    assert (result.output_bytes, result.output_truncated) == (10, True)


# --- what the repository can make visible: shebangs and symlinks ------------------------


def private_helper(tmp_path: Path) -> Path:
    """An executable in a private host dir (on no PATH) with a secret beside it."""
    private = tmp_path / "home" / ".local" / "bin"
    private.mkdir(parents=True)
    (private / ".token").write_text("TOKEN-private\n")
    helper = private / "helper"
    helper.write_text("#!/bin/sh\necho helper\n")
    helper.chmod(0o755)
    return helper


@pytest.mark.parametrize("shebang", ["#!{helper}", "#!/usr/bin/env {helper}",
                                     "#!/usr/bin/env -S {helper} -x"])
def test_worktree_script_shebang_never_binds_a_private_dir(tmp_path: Path,
                                                           shebang: str) -> None:
    helper = private_helper(tmp_path)
    worktree = tmp_path / "wt"
    worktree.mkdir()
    script = worktree / "check.sh"
    script.write_text(shebang.format(helper=helper) + "\n")
    script.chmod(0o755)
    plan = plan_program("./check.sh", {"PATH": "/usr/bin:/bin"}, worktree)
    assert plan.program == script
    assert plan.binds == ()
    # control: the same interpreter on the step's PATH is bound by the normal rules
    plan = plan_program("./check.sh", {"PATH": f"{helper.parent}:/usr/bin"}, worktree)
    assert plan.binds == (helper.parent,)


def test_worktree_symlink_to_a_private_program_binds_nothing(tmp_path: Path) -> None:
    helper = private_helper(tmp_path)
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / "tool").symlink_to(helper)
    plan = plan_program("./tool", {"PATH": "/usr/bin:/bin"}, worktree)
    assert plan.binds == ()
    # a link to a system program is fine: nothing to bind, it is visible anyway
    (worktree / "sh").symlink_to("/bin/sh")
    assert plan_program("./sh", {"PATH": "/usr/bin"}, worktree).binds == ()


def test_untrusted_interpreter_chain_is_not_followed(tmp_path: Path) -> None:
    """A script outside PATH names an interpreter elsewhere: neither is shown because of
    what the other says (only the operator's explicit program file itself is bound)."""
    helper = private_helper(tmp_path)
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "run.sh"
    script.write_text(f"#!{helper}\n")
    script.chmod(0o755)
    plan = plan_program(str(script), {"PATH": "/usr/bin:/bin"}, tmp_path / "wt")
    assert plan.binds == (tools,)
    assert helper.parent not in plan.binds


def test_cli_found_on_path_still_gets_its_interpreter(tmp_path: Path) -> None:
    cli_dir, venv_bin = tmp_path / "cli", tmp_path / "venv" / "bin"
    cli_dir.mkdir()
    venv_bin.mkdir(parents=True)
    interpreter = venv_bin / "python-ish"
    interpreter.write_text("#!/bin/sh\n")
    interpreter.chmod(0o755)
    cli = cli_dir / "agent"
    cli.write_text(f"#!{interpreter}\n")
    cli.chmod(0o755)
    plan = plan_program("agent", {"PATH": f"{cli_dir}:/usr/bin"}, tmp_path / "wt")
    assert set(plan.binds) == {cli_dir, venv_bin}  # installed, not written by the repo


def test_fifo_in_place_of_a_script_does_not_hang_the_plan(tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    worktree.mkdir()
    os.mkfifo(worktree / "check.sh")
    done: list[ProgramPlan] = []
    thread = threading.Thread(target=lambda: done.append(plan_program(
        "./check.sh", {"PATH": "/usr/bin"}, worktree)), daemon=True)
    thread.start()
    thread.join(5)
    if not done:  # unblock the reader so the thread ends
        os.close(os.open(worktree / "check.sh", os.O_WRONLY | os.O_NONBLOCK))
    assert done and done[0].binds == ()


@requires_bwrap
def test_repository_shebang_cannot_read_beside_a_private_interpreter(tmp_path: Path) -> None:
    helper = private_helper(tmp_path)
    helper.write_text(f"#!/bin/sh\ncat {helper.parent}/.token\n")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / "check.sh").write_text(f"#!{helper}\n")
    (worktree / "check.sh").chmod(0o755)
    result, out = run(tmp_path, ["./check.sh"])
    assert "TOKEN-private" not in out
    assert result.exit_code != 0  # the interpreter does not exist inside the sandbox


# --- the repository's git dir inside the sandbox ----------------------------------------

GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@x"}


def host_git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


def repo_with_worktree(tmp_path: Path, *init: str) -> tuple[Path, Path]:
    """A repository holding credentials in its config, and a linked worktree `wt` as the
    executor makes it; returns (common git dir, worktree)."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", *init, str(repo)], env=GIT_ENV,
                   check=True)
    (repo / "README.md").write_text("hi\n")
    host_git(repo, "add", "-A")
    host_git(repo, "commit", "-q", "-m", "init")
    host_git(repo, "config", "http.https://github.com/.extraheader", "AUTHORIZATION: SECRET-A")
    host_git(repo, "remote", "add", "origin", "https://bot:SECRET-B@github.com/o/r.git")
    host_git(repo, "config", "credential.helper", "store --file /root/SECRET-C")
    (repo / ".git" / "FETCH_HEAD").write_text("abc\t\tbranch 'main' of https://SECRET-D@x\n")
    (repo / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\necho SECRET-E\n")
    worktree = tmp_path / "wt"
    host_git(repo, "worktree", "add", "-q", "--detach", str(worktree), "HEAD")
    return repo / ".git", worktree


def git_spec(common: Path, worktree: Path) -> dict[str, object]:
    return {"readonly_paths": (common, worktree / ".git"),
            "env": {"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": str(worktree.parent / "h")}}


@requires_bwrap
def test_git_works_in_the_worktree_without_the_real_config(tmp_path: Path) -> None:
    common, worktree = repo_with_worktree(tmp_path)
    script = ("echo more >> README.md; git status --porcelain; git log -1 --format=%s; "
              "git diff --stat; echo ---; cat \"$(git rev-parse --git-common-dir)/config\"; "
              "cat .git/../../repo/.git/worktrees/wt/../../config; "
              f"ls -a {common} {common}/worktrees; echo ---; "
              f"cat {common}/FETCH_HEAD {common}/hooks/pre-commit {common}/logs/HEAD; "
              f"touch {common}/x {common}/worktrees/wt/x; echo end")
    result, out = run(tmp_path, ["sh", "-c", script], **git_spec(common, worktree))
    status, config, rest = out.split("---\n")
    assert " M README.md" in status and "init" in status and "1 insertion" in status, out
    assert "[core]" in config and "repositoryformatversion = 0" in config
    assert "SECRET" not in out
    assert set(config.split()) >= {"HEAD", "objects", "refs", "config", "worktrees", "wt"}
    assert not {"hooks", "logs", "FETCH_HEAD", "description"} & set(config.split())
    assert rest.count("No such file or directory") == 3
    assert rest.count("Read-only file system") == 2 and rest.endswith("end\n")
    assert result.exit_code == 0
    assert not (common / "x").exists() and "more" not in host_git(common.parent, "diff")


@requires_bwrap
def test_sha256_repository_format_is_carried_into_the_sandbox(tmp_path: Path) -> None:
    common, worktree = repo_with_worktree(tmp_path, "--object-format=sha256")
    result, out = run(tmp_path, ["sh", "-c", "git rev-parse HEAD; git status --porcelain"],
                      **git_spec(common, worktree))
    assert result.exit_code == 0, out
    assert out.split() == [host_git(worktree, "rev-parse", "HEAD")]
    assert len(out.split()[0]) == 64


def test_git_view_binds_no_symlinked_entry_on_the_host(tmp_path: Path) -> None:
    """The repository may replace objects/ or worktrees/<name> by links to host dirs: a
    bind would resolve them on the host, so they are recreated as links instead."""
    common, worktree = repo_with_worktree(tmp_path)
    private = tmp_path / "private"
    private.mkdir()
    (common / "info").rename(tmp_path / "info-moved")
    (common / "info").symlink_to(private)
    argv = build_bwrap_argv(["true"], make_spec(worktree, **git_spec(common, worktree)),
                                    Path("/x/bwrap"), data_fds={str(common / "config"): 7})
    assert str(private) not in [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]
    link = argv.index(str(common / "info"))
    assert argv[link - 2: link] == ["--symlink", str(private)]
    assert [str(common), str(common / "config")] == [
        argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs" and str(common) in argv[i + 1]
    ] + [argv[i + 2] for i, a in enumerate(argv) if a == "--ro-bind-data" and argv[i + 1] == "7"]
    remount = argv.index("--remount-ro")
    assert remount > link and argv[remount + 1] == str(common)  # populated, then read-only
    assert str(common / "hooks") not in argv and str(common / "config") not in [
        argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]


def test_repository_format_reader_keeps_only_word_values(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[core]\n\trepositoryformatversion = 1 ; comment\n\tFileMode = \"false\"\n"
        "\tsshCommand = ssh -i /root/key\n\tfsmonitor = /bin/evil\n"
        "[core \"sub\"]\n\tfilemode = true\n"
        "[Extensions] objectFormat = sha256\n\tworktreeConfig\n\tpartialclone = a b\n"
        "[remote \"origin\"]\n\turl = https://u:SECRET@x\n[include]\n\tpath = other\n")
    core, extensions = read_repository_format(str(config))
    assert core == {"repositoryformatversion": "1", "filemode": "false"}
    assert extensions == {"objectformat": "sha256", "worktreeconfig": "true"}
    text = git_view_config(str(tmp_path)).decode()
    assert text == ("[core]\n\trepositoryformatversion = 1\n\tfilemode = false\n"
                    "\tbare = false\n[extensions]\n\tobjectformat = sha256\n")


@requires_bwrap
def test_git_dir_inside_the_worktree_is_still_filtered(tmp_path: Path) -> None:
    """A plain checkout (git dir inside the bound worktree): the tmpfs covers it."""
    common, _linked = repo_with_worktree(tmp_path)
    repo = common.parent
    log = tmp_path / "plain.out"
    run_confined(["sh", "-c", "git status --porcelain; cat .git/config; ls .git/hooks"],
                 make_spec(repo, readonly_paths=(common,)), log)
    out = log.read_text()
    assert "[core]" in out and "SECRET" not in out
    assert "No such file or directory" in out


@requires_bwrap
def test_run_step_uses_git_in_its_worktree_but_not_the_real_config(tmp_path: Path) -> None:
    """End to end (doit run): a run step sees its worktree's status and history, and a
    config holding the repository format only."""
    from runutil import doit, write_request

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], env=GIT_ENV, check=True)
    (repo / "README.md").write_text("hi\n")
    host_git(repo, "add", "-A")
    host_git(repo, "commit", "-q", "-m", "init")
    host_git(repo, "remote", "add", "origin", "https://bot:SECRET-F@x/r.git")
    write_request(tmp_path, init_repo=False, steps=[
        {"id": "w", "write": {"path": "docs/a.md", "content": "a\n"}, "message": "w"},
        {"id": "g", "run": ["sh", "-c", "echo x > new.txt; git status --porcelain; "
                            "git log -1 --format=%s; git config --list --show-origin; "
                            "git remote -v; git config --get remote.origin.url; true"],
         "message": "g"},
    ])
    proc = doit(tmp_path, "run", "request=req.yaml")
    out = (tmp_path / "out" / "r1" / "logs" / "g.out").read_text()
    assert proc.returncode == 0, proc.stderr[-800:]
    assert out.startswith("?? new.txt\nw\n"), out
    assert "core.repositoryformatversion=0" in out and "SECRET" not in out


# --- the seccomp tables against the kernel headers, where they are installed -------------

@pytest.mark.parametrize(("arch", "header", "pattern"), [
    ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"#define __NR_(\w+)\s+(\d+)"),
    ("aarch64", "/usr/include/asm-generic/unistd.h", r"#define __NR(?:3264)?_(\w+)\s+(\d+)"),
])
def test_seccomp_numbers_match_the_kernel_headers(arch: str, header: str, pattern: str) -> None:
    import re

    from agentos_tasks.sandbox import seccomp

    if not os.path.isfile(header):
        pytest.skip(f"{header} not installed")
    numbers = {m.group(1): int(m.group(2))
               for m in re.finditer(pattern, Path(header).read_text())}
    table = seccomp.ARCHES[arch].numbers
    checked = {name: (number, numbers[name]) for name, number in table.items()
               if name in numbers}
    assert {k: v for k, v in checked.items() if v[0] != v[1]} == {}
    assert len(checked) >= len(table) - 3  # a few are newer than old headers
