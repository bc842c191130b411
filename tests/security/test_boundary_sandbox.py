"""The sandbox side of the trust boundary: what a step can reach beyond its worktree.

Each class is attacked for real (real bwrap, real programs, planted secrets) and the
pure argv is checked for the whole class, not only for the example:
- 4: a program under $HOME never makes a directory of $HOME visible wholesale;
- 5: a fresh session keyring and a seccomp filter (keys, ptrace, mounts, namespaces,
  foreign system-call ABIs);
- 6: /proc, /sys and /dev are the sandbox's own: nothing below them is bound from the host;
- 14: no sandboxed process outlives the executor, whenever it is killed; leftover
  cgroups of a dead executor are removed by the next one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from agentos_tasks import sandbox
from agentos_tasks.proc import ConfinedResult, ConfinedSpec, run_confined

from .conftest import requires_bwrap

pytestmark = [pytest.mark.security]

HOST_PATH = os.environ.get("PATH", "/usr/bin:/bin")
BIND_OPTIONS = ("--bind", "--ro-bind", "--dev-bind", "--bind-try", "--ro-bind-try",
                "--dev-bind-try")


def make_spec(worktree: Path, **overrides: object) -> ConfinedSpec:
    values: dict[str, object] = {
        "worktree": worktree, "readonly_paths": (),
        "env": {"PATH": HOST_PATH, "LANG": "C.UTF-8"}, "network": False,
        "isolation": "required", "timeout_s": 30.0, "output_limit": 1 << 20,
        "max_file_bytes": 1 << 20, "memory_bytes": 1 << 30, "max_processes": 64,
    }
    values.update(overrides)
    return ConfinedSpec(**values)  # type: ignore[arg-type]


def confined(tmp_path: Path, argv: list[str], **overrides: object) -> tuple[ConfinedResult, str]:
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    log = tmp_path / "logs" / f"{uuid.uuid4().hex}.out"
    result = run_confined(argv, make_spec(worktree, **overrides), log)
    return result, log.read_text(errors="replace")


def bind_sources(argv: list[str]) -> list[str]:
    """Every host path the argv binds (the source of each bind option)."""
    end = argv.index("--") if "--" in argv else len(argv)
    return [argv[i + 1] for i in range(end - 1) if argv[i] in BIND_OPTIONS]


def within(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# --- 6: /proc, /sys and /dev are never bound from the host ---------------------------------

PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


@pytest.mark.parametrize("program", ["/dev/null", "/dev/zero", "/proc/self/exe",
                                     "/proc/self/root/usr/bin/env", "/sys/kernel/notes",
                                     "/dev/fd/0", "/dev/stdin"])
def test_pseudo_filesystem_programs_bind_nothing_below_them(tmp_path: Path,
                                                            program: str) -> None:
    worktree = tmp_path / "wt"
    worktree.mkdir()
    spec = make_spec(worktree)
    plan = sandbox.plan_program(program, spec.env, worktree)
    argv = sandbox.build_bwrap_argv([program], spec, Path("/x/bwrap"), plan=plan)
    for source in bind_sources(argv):
        assert not any(within(source, root) for root in PSEUDO_ROOTS), (program, source)
    assert plan.binds == ()


def test_never_bind_whole_lists_the_pseudo_filesystems() -> None:
    for root in (*PSEUDO_ROOTS, "/run", "/etc", "/home", "/root"):
        assert root in sandbox.NEVER_BIND_WHOLE
        assert not sandbox._may_bind_whole(root, ())


@requires_bwrap
def test_program_in_dev_shm_does_not_show_the_hosts_dev(tmp_path: Path) -> None:
    """A program placed in the host's /dev/shm: the sandbox never shows the host's /dev
    (or /dev/shm), so neither the program's neighbours nor host devices are visible."""
    tag = uuid.uuid4().hex
    secret = Path(f"/dev/shm/agentos-secret-{tag}")
    tool = Path(f"/dev/shm/agentos-tool-{tag}")
    secret.write_text(f"SHM-SECRET-{tag}\n")
    try:
        executable(tool, f"#!/bin/sh\necho RAN; cat {secret}; ls /dev/shm /dev | head -50\n")
        result, out = confined(tmp_path, [str(tool)])
        assert f"SHM-SECRET-{tag}" not in out
        assert not any(within(s, r) for s in bind_sources(list(result.wrapper_argv))
                       for r in PSEUDO_ROOTS)
        assert result.exit_code != 0  # refused: the program is not run at all
        assert "/dev" in out  # and the reason says why
    finally:
        secret.unlink(missing_ok=True)
        tool.unlink(missing_ok=True)


# --- 4: programs under $HOME: their own files only, never a directory of $HOME ------------

SECRET = "AUTH-SECRET-opencode-token"


def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $HOME with real CLI layouts under ~/.local and a planted secret beside them."""
    home = tmp_path / "home"
    local = home / ".local"
    (local / "share" / "opencode").mkdir(parents=True)
    (local / "share" / "opencode" / "auth.json").write_text(f'{{"token": "{SECRET}"}}\n')
    (local / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    (home / ".config").mkdir()
    (home / ".config" / "secret.env").write_text(f"TOKEN={SECRET}\n")
    # native installer style: ~/.local/bin/tool -> ~/.local/share/tool/versions/1/tool
    target = executable(local / "share" / "tool" / "versions" / "1" / "tool",
                        "#!/bin/sh\necho TOOL-RAN\n"
                        "cat \"$HOME/.local/share/opencode/auth.json\" 2>&1\n"
                        "cat \"$HOME/.config/secret.env\" 2>&1\n"
                        "ls -a \"$HOME/.local/share\" 2>&1\n")
    (local / "bin").mkdir(parents=True)
    (local / "bin" / "tool").symlink_to(target)
    # node-style package: ~/.local/bin/nodecli -> ../lib/node_modules/nodecli/bin/cli
    package = local / "lib" / "node_modules" / "nodecli"
    executable(package / "bin" / "cli",
               "#!/bin/sh\n. \"$(dirname \"$(readlink -f \"$0\")\")/../lib/helper.sh\"\n"
               "cat \"$HOME/.local/share/opencode/auth.json\" 2>&1\n"
               "cat \"$HOME/.local/lib/node_modules/other/secret.txt\" 2>&1\n")
    (package / "lib").mkdir()
    (package / "lib" / "helper.sh").write_text("echo NODECLI-HELPER-RAN\n")
    (local / "lib" / "node_modules" / "other").mkdir()
    (local / "lib" / "node_modules" / "other" / "secret.txt").write_text(SECRET + "\n")
    (local / "bin" / "nodecli").symlink_to("../lib/node_modules/nodecli/bin/cli")
    monkeypatch.setenv("HOME", str(home))
    return home


def pipx_venv(home: Path) -> Path:
    """pipx/uv-tool style: a real venv ~/.local/pipx/venvs/x with ~/.local/bin/x -> it."""
    venv = home / ".local" / "pipx" / "venvs" / "x"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "xmod.py").write_text("print('XMOD-IMPORTED')\n")
    script = executable(venv / "bin" / "x", textwrap.dedent(f"""\
        #!{venv}/bin/python
        import os, sys, xmod
        print("VENV", sys.prefix)
        for path in ("~/.local/share/opencode/auth.json", "~/.config/secret.env"):
            try:
                print(open(os.path.expanduser(path)).read())
            except OSError as exc:
                print("BLOCKED", exc)
        """))
    (home / ".local" / "bin" / "x").symlink_to(script)
    return venv


def home_env(home: Path) -> dict[str, str]:
    return {"PATH": f"{home}/.local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home)}


def assert_only_own_files_under(home: Path, binds: tuple[Path, ...] | list[str]) -> None:
    forbidden = {home, home / ".local", home / ".local" / "share", home / ".local" / "lib",
                 home / ".local" / "bin", home / ".config", home / ".local" / "pipx",
                 home / ".local" / "lib" / "node_modules"}
    for bind in map(Path, binds):
        assert bind not in forbidden, bind
        assert not within(str(home / ".local" / "share" / "opencode"), str(bind)), bind
        assert not within(str(home / ".config"), str(bind)), bind


@pytest.mark.parametrize("name", ["tool", "nodecli", "x"])
def test_home_programs_bind_their_own_files_only(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 name: str) -> None:
    home = cli_home(tmp_path, monkeypatch)
    pipx_venv(home)
    worktree = tmp_path / "wt"
    worktree.mkdir()
    plan = sandbox.plan_program(name, home_env(home), worktree)
    assert plan.program == home / ".local" / "bin" / name
    assert plan.binds
    assert_only_own_files_under(home, plan.binds)
    argv = sandbox.build_bwrap_argv([name], make_spec(worktree, env=home_env(home)),
                                    Path("/x/bwrap"), plan=plan)
    assert_only_own_files_under(home, bind_sources(argv))


def test_home_binds_are_the_install_dirs(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    home = cli_home(tmp_path, monkeypatch)
    venv = pipx_venv(home)
    worktree = tmp_path / "wt"
    env = home_env(home)
    local = home / ".local"
    tool = sandbox.plan_program("tool", env, worktree)
    assert tool.binds == (local / "share" / "tool" / "versions" / "1" / "tool",)
    assert tool.symlinks == ((str(tool.binds[0]), str(local / "bin" / "tool")),)
    node = sandbox.plan_program("nodecli", env, worktree)
    assert node.binds == (local / "lib" / "node_modules" / "nodecli",)
    assert node.symlinks == (("../lib/node_modules/nodecli/bin/cli",
                              str(local / "bin" / "nodecli")),)
    pipx = sandbox.plan_program("x", env, worktree)
    assert venv in pipx.binds
    assert (str(venv / "bin" / "x"), str(local / "bin" / "x")) in pipx.symlinks


@requires_bwrap
@pytest.mark.parametrize("name", ["tool", "nodecli", "x"])
def test_home_cli_runs_but_cannot_read_beside_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 name: str) -> None:
    home = cli_home(tmp_path, monkeypatch)
    pipx_venv(home)
    result, out = confined(tmp_path, [name], env=home_env(home))
    assert SECRET not in out
    ran = {"tool": "TOOL-RAN", "nodecli": "NODECLI-HELPER-RAN", "x": "XMOD-IMPORTED"}[name]
    assert ran in out, out
    assert_only_own_files_under(home, bind_sources(list(result.wrapper_argv)))


@requires_bwrap
def test_real_node_cli_in_home_runs_with_its_package_only(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The same with a real node script, when node is installed (else a sh package)."""
    home = cli_home(tmp_path, monkeypatch)
    package = home / ".local" / "lib" / "node_modules" / "@scope" / "agent"
    if sandbox.resolve_on_path("node", HOST_PATH) is not None:
        executable(package / "bin" / "agent.js", textwrap.dedent("""\
            #!/usr/bin/env node
            const fs = require("fs"), os = require("os");
            console.log(require("../lib/helper.js"));
            for (const p of [".local/share/opencode/auth.json", ".config/secret.env"]) {
              try { console.log(fs.readFileSync(os.homedir() + "/" + p, "utf8")); }
              catch (e) { console.log("BLOCKED " + e.code); }
            }
            """))
        (package / "lib").mkdir()
        (package / "lib" / "helper.js").write_text('module.exports = "NODE-HELPER-RAN";\n')
    else:
        executable(package / "bin" / "agent.js",
                   "#!/bin/sh\necho NODE-HELPER-RAN\ncat ~/.config/secret.env 2>&1\n")
    (home / ".local" / "bin" / "agent").symlink_to(package / "bin" / "agent.js")
    result, out = confined(tmp_path, ["agent"], env=home_env(home))
    assert "NODE-HELPER-RAN" in out, out
    assert SECRET not in out
    assert_only_own_files_under(home, bind_sources(list(result.wrapper_argv)))
