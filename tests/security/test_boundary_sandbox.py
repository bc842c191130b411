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

from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox.backend import SANDBOX_ENV_VAR
from agentos_tasks.sandbox.bwrap import build_bwrap_argv
from agentos_tasks.sandbox.cgroups import find_parent
from agentos_tasks.sandbox.hostfs import resolve_on_path
from agentos_tasks.sandbox.install_layout import NEVER_BIND_WHOLE, may_bind_whole
from agentos_tasks.sandbox.program import plan_program
from agentos_tasks.sandbox.spec import NO_NETWORK, ConfinedResult, ConfinedSpec

from .conftest import requires_bwrap

pytestmark = [pytest.mark.security]

HOST_PATH = os.environ.get("PATH", "/usr/bin:/bin")
BIND_OPTIONS = ("--bind", "--ro-bind", "--dev-bind", "--bind-try", "--ro-bind-try",
                "--dev-bind-try")


def make_spec(worktree: Path, **overrides: object) -> ConfinedSpec:
    values: dict[str, object] = {
        "worktree": worktree, "readonly_paths": (),
        "env": {"PATH": HOST_PATH, "LANG": "C.UTF-8"}, "network": NO_NETWORK,
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
    plan = plan_program(program, spec.env, worktree)
    argv = build_bwrap_argv([program], spec, Path("/x/bwrap"), plan=plan)
    for source in bind_sources(argv):
        assert not any(within(source, root) for root in PSEUDO_ROOTS), (program, source)
    assert plan.binds == ()


def test_never_bind_whole_lists_the_pseudo_filesystems() -> None:
    for root in (*PSEUDO_ROOTS, "/run", "/etc", "/home", "/root"):
        assert root in NEVER_BIND_WHOLE
        assert not may_bind_whole(root, ())


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
    plan = plan_program(name, home_env(home), worktree)
    assert plan.program == home / ".local" / "bin" / name
    assert plan.binds
    assert_only_own_files_under(home, plan.binds)
    argv = build_bwrap_argv([name], make_spec(worktree, env=home_env(home)),
                                    Path("/x/bwrap"), plan=plan)
    assert_only_own_files_under(home, bind_sources(argv))


def test_home_binds_are_the_install_dirs(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    home = cli_home(tmp_path, monkeypatch)
    venv = pipx_venv(home)
    worktree = tmp_path / "wt"
    env = home_env(home)
    local = home / ".local"
    tool = plan_program("tool", env, worktree)
    assert tool.binds == (local / "share" / "tool" / "versions" / "1" / "tool",)
    assert tool.symlinks == ((str(tool.binds[0]), str(local / "bin" / "tool")),)
    node = plan_program("nodecli", env, worktree)
    assert node.binds == (local / "lib" / "node_modules" / "nodecli",)
    assert node.symlinks == (("../lib/node_modules/nodecli/bin/cli",
                              str(local / "bin" / "nodecli")),)
    pipx = plan_program("x", env, worktree)
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
    if resolve_on_path("node", HOST_PATH) is not None:
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


# --- 5: a fresh session keyring and a seccomp filter ----------------------------------------

MACHINE = os.uname().machine
# System-call numbers, written out here (not taken from the module under test).
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"getpid": 39, "ioctl": 16, "unshare": 272, "clone": 56, "clone3": 435,
               "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155,
               "swapon": 167, "swapoff": 168, "reboot": 169, "kexec_load": 246,
               "kexec_file_load": 320, "init_module": 175, "delete_module": 176,
               "finit_module": 313, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
               "keyctl": 250, "add_key": 248, "request_key": 249, "open_by_handle_at": 304,
               "process_vm_readv": 310, "process_vm_writev": 311, "setns": 308,
               "io_uring_setup": 425, "open_tree": 428, "move_mount": 429, "fsopen": 430,
               "fsmount": 432, "fspick": 433, "pidfd_getfd": 438, "mount_setattr": 442,
               "acct": 163, "syslog": 103, "chroot": 161, "io_uring_enter": 426,
               "io_uring_register": 427, "fsconfig": 431, "settimeofday": 164,
               "clock_settime": 227, "quotactl": 179, "quotactl_fd": 443,
               "lookup_dcookie": 212, "vhangup": 153, "iopl": 172, "ioperm": 173,
               "uselib": 134, "_sysctl": 156, "nfsservctl": 180, "open_tree_attr": 467},
    "aarch64": {"getpid": 172, "ioctl": 29, "unshare": 97, "clone": 220, "clone3": 435,
                "ptrace": 117, "mount": 40, "umount2": 39, "pivot_root": 41, "swapon": 224,
                "swapoff": 225, "reboot": 142, "kexec_load": 104, "kexec_file_load": 294,
                "init_module": 105, "delete_module": 106, "finit_module": 273, "bpf": 280,
                "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
                "request_key": 218, "open_by_handle_at": 265, "process_vm_readv": 270,
                "process_vm_writev": 271, "setns": 268, "io_uring_setup": 425,
                "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsmount": 432,
                "fspick": 433, "pidfd_getfd": 438, "mount_setattr": 442,
                "acct": 89, "syslog": 116, "chroot": 51, "io_uring_enter": 426,
                "io_uring_register": 427, "fsconfig": 431, "settimeofday": 170,
                "clock_settime": 112, "quotactl": 60, "quotactl_fd": 443,
                "lookup_dcookie": 18, "vhangup": 58, "nfsservctl": 42,
                "open_tree_attr": 467},
}
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID = 0x10000000, 0x00020000, 0x20000000
TIOCSTI, TIOCLINUX, TCGETS = 0x5412, 0x541C, 0x5401

# Runs inside the sandbox: each call with arguments that are harmless if it is allowed
# (and that mostly fail differently without a filter: EBADF, EFAULT, ENOSPC, success).
SYSCALL_PROBE = r"""
import ctypes, errno, json, os, sys
nr = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
def call(name, *args, number=None):
    ctypes.set_errno(0)
    ret = libc.syscall(L(nr[name] if number is None else number), *[L(a) for a in args])
    if ret == 0 and name in ("clone",):
        os._exit(0)  # a clone that got through: the child leaves at once
    return "ok" if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
pid = os.getpid()
out = {
    "ptrace": call("ptrace", 2, 0, 0, 0),            # PEEKDATA pid 0: ESRCH if allowed
    "mount": call("mount", 0, 0, 0, 0, 0),
    "umount2": call("umount2", 0, 0),
    "pivot_root": call("pivot_root", 0, 0),
    "swapon": call("swapon", 0, 0),
    "swapoff": call("swapoff", 0),
    "reboot": call("reboot", 0, 0, 0, 0),              # bad magic: EINVAL if allowed
    "kexec_load": call("kexec_load", 0, 0, 0, 0),
    "kexec_file_load": call("kexec_file_load", -1, -1, 0, 0, 0),
    "init_module": call("init_module", 0, 0, 0),
    "delete_module": call("delete_module", 0, 0),
    "finit_module": call("finit_module", -1, 0, 0),
    "bpf": call("bpf", 0, 0, 0),
    "perf_event_open": call("perf_event_open", 0, 0, -1, -1, 0),
    "userfaultfd": call("userfaultfd", 1),            # user-mode only: allowed unprivileged
    "keyctl": call("keyctl", 0, -3, 0),                 # the session keyring's id
    "add_key": call("add_key", 0, 0, 0, 0, -3),
    "request_key": call("request_key", 0, 0, 0, 0),
    "open_by_handle_at": call("open_by_handle_at", -1, 0, 0),
    "process_vm_readv": call("process_vm_readv", pid, 0, 0, 0, 0, 0),  # 0 if allowed
    "process_vm_writev": call("process_vm_writev", pid, 0, 0, 0, 0, 0),
    "setns": call("setns", -1, 0),                      # EBADF if allowed
    "io_uring_setup": call("io_uring_setup", 0, 0),
    "open_tree": call("open_tree", -1, 0, 0),
    "move_mount": call("move_mount", -1, 0, -1, 0, 0),
    "fsopen": call("fsopen", 0, 0),
    "fsmount": call("fsmount", -1, 0, 0),
    "fspick": call("fspick", -1, 0, 0),
    "pidfd_getfd": call("pidfd_getfd", -1, 0, 0),
    "mount_setattr": call("mount_setattr", -1, 0, 0, 0, 0),
    "acct": call("acct", 0),
    "syslog": call("syslog", 0, 0, 0),                   # CLOSE: a no-op if allowed
    "chroot": call("chroot", 0),
    "io_uring_enter": call("io_uring_enter", -1, 0, 0, 0, 0, 0),
    "io_uring_register": call("io_uring_register", -1, 0, 0, 0),
    "fsconfig": call("fsconfig", -1, 0, 0, 0, 0),
    "settimeofday": call("settimeofday", 0, 0),
    "clock_settime": call("clock_settime", 0, 0),
    "quotactl": call("quotactl", 0, 0, 0, 0),
    "quotactl_fd": call("quotactl_fd", -1, 0, 0, 0),
    "lookup_dcookie": call("lookup_dcookie", 0, 0, 0),
    "vhangup": call("vhangup"),
    "nfsservctl": call("nfsservctl", 0, 0, 0),
    "open_tree_attr": call("open_tree_attr", -1, 0, 0, 0, 0),
    "unshare(NEWUSER)": call("unshare", 0x10000000),  # ENOSPC if allowed (--disable-userns)
    "unshare(NEWNS|NEWPID)": call("unshare", 0x20000 | 0x20000000),
    "clone(NEWUSER)": call("clone", 0x10000000 | 17, 0, 0, 0, 0),
    "clone3": call("clone3", 0, 0),                     # ENOSYS: libc falls back to clone
    "x32 getpid": call("getpid", number=0x40000000 | nr["getpid"]),
    "ioctl(TIOCSTI)": call("ioctl", 0, 0x5412, 0),
    "ioctl(TIOCLINUX)": call("ioctl", 0, 0x541C, 0),
    # allowed: must not be EPERM
    "control getpid": call("getpid"),
    "control unshare(0)": call("unshare", 0),
    "control ioctl(TCGETS)": call("ioctl", 0, 0x5401, 0),
}
for name in ("iopl", "ioperm", "uselib", "_sysctl"):  # x86_64 only
    if name in nr:
        out[name] = call(name, 0, 0, 0)                  # iopl(0)/ioperm(0,0,0): 0 if allowed
status = open("/proc/self/status").read()
out["Seccomp"] = [l.split()[1] for l in status.splitlines() if l.startswith("Seccomp:")][0]
print("RESULT", json.dumps(out))
"""


def syscall_table() -> dict[str, int]:
    assert MACHINE in SYSCALLS, f"no system-call table for {MACHINE} in this test"
    return SYSCALLS[MACHINE]


def probe_syscalls(tmp_path: Path) -> dict[str, str]:
    import json

    result, out = confined(tmp_path, ["python3", "-c", SYSCALL_PROBE,
                                      json.dumps(syscall_table())])
    assert result.exit_code == 0, out
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


@requires_bwrap
def test_dangerous_system_calls_are_denied_inside(tmp_path: Path) -> None:
    results = probe_syscalls(tmp_path)
    denied = {name: got for name, got in results.items()
              if not name.startswith("control") and name not in ("Seccomp", "clone3")}
    assert {name: got for name, got in denied.items() if got != "EPERM"} == {}
    assert results["clone3"] == "ENOSYS"
    assert results["Seccomp"] == "2"  # a filter is installed
    assert results["control getpid"] == "ok"
    assert results["control unshare(0)"] == "ok"
    assert results["control ioctl(TCGETS)"] == "ENOTTY"  # stdin is /dev/null, not EPERM


@requires_bwrap
def test_foreign_system_call_abi_is_killed(tmp_path: Path) -> None:
    """The 32-bit ABI (int 0x80 on x86_64) has other numbers: the filter kills on it."""
    if MACHINE != "x86_64":  # aarch64: no AArch32 entry to try from Python; x86_64 is CI
        assert MACHINE in SYSCALLS
        return
    code = textwrap.dedent("""\
        import ctypes, mmap
        buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3")  # mov eax,20 (getpid); int 0x80; ret
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        print("I386", ctypes.CFUNCTYPE(ctypes.c_long)(address)(), flush=True)
        """)
    result, out = confined(tmp_path, ["python3", "-c", code])
    assert "I386" not in out, out
    assert result.exit_code in (128 + 31, -31), (result.exit_code, out)  # SIGSYS


@requires_bwrap
def test_normal_programs_still_work_under_the_filter(tmp_path: Path) -> None:
    script = ("set -e; echo sh-ok; git init -q repo && git -C repo status --short && "
              "echo git-ok; python3 -c 'import subprocess, threading, os; "
              "t = threading.Thread(target=print, args=(\"thread-ok\",)); t.start(); t.join(); "
              "print(subprocess.run([\"echo\", \"spawn-ok\"], capture_output=True, "
              "text=True).stdout.strip()); pid = os.fork(); os._exit(0) if pid == 0 else "
              "print(\"fork-ok\", os.waitpid(pid, 0)[1])'; ls / | head -3 >/dev/null; "
              "echo done")
    result, out = confined(tmp_path, ["sh", "-c", script],
                           env={"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": str(tmp_path / "h"),
                                "GIT_CONFIG_NOSYSTEM": "1"})
    assert result.exit_code == 0, out
    for word in ("sh-ok", "git-ok", "thread-ok", "spawn-ok", "fork-ok 0", "done"):
        assert word in out, out


KEY_HOLDER = r"""
import ctypes, json, sys
from pathlib import Path
from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox.spec import NO_NETWORK, ConfinedSpec
nr = json.loads(sys.argv[1]); wt = Path(sys.argv[2]); desc = sys.argv[3].encode()
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
# our own session keyring (the test process's is left alone), then a user key in it
assert libc.syscall(L(nr["keyctl"]), L(1), None) > 0   # KEYCTL_JOIN_SESSION_KEYRING
payload = b"KEYRING-SECRET-payload"
key = libc.syscall(L(nr["add_key"]), b"user", desc, payload, L(len(payload)), L(-3))
assert key > 0, ctypes.get_errno()
spec = ConfinedSpec(worktree=wt, readonly_paths=(), env={"PATH": sys.argv[4]}, network=NO_NETWORK,
                    isolation="required", timeout_s=30, output_limit=1 << 20,
                    max_file_bytes=1 << 20)
step = run_confined(["python3", "-c", sys.argv[5], sys.argv[1], str(key), sys.argv[3]],
                    spec, wt.parent / "key-step.out")
buf = ctypes.create_string_buffer(256)
size = libc.syscall(L(nr["keyctl"]), L(11), L(key), buf, L(256))  # KEYCTL_READ
print("HOLDER", json.dumps({"exit": step.exit_code, "still": buf.raw[:max(size, 0)].decode(),
                            "argv": list(step.wrapper_argv), "notes": list(step.notes)}))
"""

KEY_THIEF = r"""
import ctypes, errno, json, sys
nr = json.loads(sys.argv[1]); key = int(sys.argv[2]); desc = sys.argv[3].encode()
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
def res(ret):
    return ret if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
buf = ctypes.create_string_buffer(256)
out = {
    "search": res(libc.syscall(L(nr["keyctl"]), L(10), L(-3), b"user", desc, L(0))),
    "request": res(libc.syscall(L(nr["request_key"]), b"user", desc, None, L(0))),
    "describe": res(libc.syscall(L(nr["keyctl"]), L(6), L(key), buf, L(256))),
}
size = libc.syscall(L(nr["keyctl"]), L(11), L(key), buf, L(256))
out["read"] = buf.raw[:size].decode() if size > 0 else res(size)
out["unlink"] = res(libc.syscall(L(nr["keyctl"]), L(9), L(key), L(-3)))
out["revoke"] = res(libc.syscall(L(nr["keyctl"]), L(3), L(key)))
print("THIEF", json.dumps(out))
"""


@requires_bwrap
def test_session_keyring_key_is_out_of_reach(tmp_path: Path) -> None:
    import json

    worktree = tmp_path / "wt"
    worktree.mkdir()
    desc = f"agentos-test-{uuid.uuid4().hex}"
    holder = subprocess.run(
        [sys.executable, "-c", KEY_HOLDER, json.dumps(syscall_table()), str(worktree), desc,
         HOST_PATH, KEY_THIEF], capture_output=True, text=True, timeout=60,
        env={**os.environ, SANDBOX_ENV_VAR: ""})
    assert holder.returncode == 0, holder.stderr
    facts = json.loads(holder.stdout.split("HOLDER ", 1)[1])
    thief = (tmp_path / "key-step.out").read_text()
    assert facts["exit"] == 0, thief
    stolen = json.loads(thief.split("THIEF ", 1)[1])
    assert "KEYRING-SECRET" not in thief
    assert {k: v for k, v in stolen.items() if v != "EPERM"} == {}, stolen
    assert facts["still"] == "KEYRING-SECRET-payload"  # neither unlinked nor revoked
    assert "KEYRING-SECRET" not in json.dumps(facts["argv"] + facts["notes"])


# --- 14: nothing sandboxed outlives the executor ------------------------------------------

EXECUTOR = r"""
import os, sys
from pathlib import Path
from agentos_tasks.proc import run_confined
from agentos_tasks.sandbox.spec import NO_NETWORK, ConfinedSpec
worktree, token = Path(sys.argv[1]), sys.argv[2]
spec = ConfinedSpec(worktree=worktree, readonly_paths=(), env={"PATH": "/usr/bin:/bin"},
                    network=NO_NETWORK, isolation="required", timeout_s=60, output_limit=1 << 16,
                    max_file_bytes=1 << 24)
os.write(1, b"ready\n")
run_confined(["sh", "-c", f"while :; do echo {token} >> grow.txt; sleep 0.01; done"], spec,
             worktree.parent / f"{token}.out")
"""


def cgroup_parent() -> Path | None:
    found = find_parent()
    return found.path if found is not None else None


def sandbox_processes(token: str, worktree: Path) -> list[str]:
    """Live host processes of a sandbox: its argv names `token`, or its cwd is `worktree`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue  # a zombie runs nothing
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if token.encode() in cmdline or cwd == str(worktree):
            found.append(f"{entry} {cmdline[:120]!r} cwd={cwd}")
    return found


def wait_until(predicate: object, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(predicate())  # type: ignore[operator]


@requires_bwrap
def test_sigkill_of_the_executor_at_any_moment_leaves_no_sandbox(tmp_path: Path) -> None:
    import signal
    import time

    parent = cgroup_parent()
    failures = []
    for delay_ms in (0, 0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 100):
        token = f"agentos-grow-{uuid.uuid4().hex}"
        worktree = tmp_path / token
        worktree.mkdir()
        executor = subprocess.Popen([sys.executable, "-c", EXECUTOR, str(worktree), token],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    env={**os.environ, SANDBOX_ENV_VAR: ""})
        assert executor.stdout is not None
        assert executor.stdout.readline() == b"ready\n"
        time.sleep(delay_ms / 1000)
        executor.send_signal(signal.SIGKILL)
        executor.wait()
        grow = worktree / "grow.txt"
        gone = wait_until(lambda: not sandbox_processes(token, worktree), 2.0)  # noqa: B023
        size = grow.stat().st_size if grow.exists() else 0
        time.sleep(0.15)
        grew = (grow.stat().st_size if grow.exists() else 0) != size
        cgroups = [] if parent is None else \
            [p.name for p in parent.glob(f"agentos-{executor.pid}-*")]
        left_cgroups = cgroups and not wait_until(
            lambda: not list(parent.glob(f"agentos-{executor.pid}-*")), 2.0)  # noqa: B023
        if not gone or grew or left_cgroups:
            failures.append(f"{delay_ms} ms: processes {sandbox_processes(token, worktree)} "
                            f"file grew {grew} cgroups {cgroups if left_cgroups else []}")
            for line in sandbox_processes(token, worktree):  # leave nothing behind
                with __import__("contextlib").suppress(OSError):
                    os.kill(int(line.split()[0]), signal.SIGKILL)
    assert failures == []


@requires_bwrap
def test_a_later_executor_removes_leftover_cgroups_of_dead_ones(tmp_path: Path) -> None:
    import signal

    parent = cgroup_parent()
    if parent is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI=true requires a cgroup (pids) the executor may create", False)
        pytest.skip("no delegated pids cgroup here")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    # a leftover as the old code named it, holding a live process, and a new-style one
    leftovers = [parent / f"agentos-{dead_pid}-7", parent / f"agentos-{dead_pid}-123-0"]
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for leftover in leftovers:
            leftover.mkdir()
        (leftovers[0] / "cgroup.procs").write_text(str(sleeper.pid))
        live = parent / f"agentos-{os.getpid()}-0"  # a live executor's: must stay
        live.mkdir()
        later = subprocess.run(
            [sys.executable, "-c", "import sys; from agentos_tasks.sandbox import cgroups; "
             "print(cgroups.find_parent())"],
            capture_output=True, text=True, timeout=60)
        assert later.returncode == 0, later.stderr
        assert [p for p in leftovers if p.exists()] == []
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in (*leftovers, parent / f"agentos-{os.getpid()}-0"):
            with __import__("contextlib").suppress(OSError):
                path.rmdir()


ORPHAN_MAKER = r"""
import os, subprocess, sys
from agentos_tasks import proc
from agentos_tasks.sandbox import cgroups
parent = cgroups.find_parent()
cgroup = cgroups.Cgroup(parent, 16, 1 << 30)
proc._ensure_guard(parent)
# what bwrap's child is when its monitor died before --die-with-parent reached it: a
# process in the run's cgroup that no parent-death signal will ever end
orphan = subprocess.Popen(["sleep", "600"], start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          preexec_fn=lambda: open(cgroup.procs, "w").write("0"))
print(orphan.pid, cgroup.path, flush=True)
os.kill(os.getpid(), 9)
"""


@requires_bwrap
def test_guard_ends_an_orphan_left_in_a_dead_executors_cgroup(tmp_path: Path) -> None:
    if cgroup_parent() is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI=true requires a cgroup (pids) the executor may create", False)
        pytest.skip("no delegated pids cgroup here")
    made = subprocess.run([sys.executable, "-c", ORPHAN_MAKER], capture_output=True,
                          text=True, timeout=30)
    assert made.returncode == -9, made.stderr
    pid, path = made.stdout.split()
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists() or
                      Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX", 2.0)
    assert wait_until(lambda: not Path(path).exists(), 2.0)


# --- the filter program itself, run by a small classic-BPF interpreter ---------------------

def run_filter(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """What the kernel would return for this seccomp_data (only the opcodes used)."""
    import struct

    full = (*args, *(0,) * (6 - len(args)))
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(a & (2**64 - 1) for a in full))
    ops = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert len(ops) <= 4096
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack("=I", data[k:k + 4])[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:  # ret k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_filter_decides_every_listed_call_on_both_architectures() -> None:
    from agentos_tasks.sandbox import seccomp

    eperm, enosys, allow, kill = 0x50001, 0x50026, 0x7FFF0000, 0x80000000
    for name, arch_value in (("x86_64", 0xC000003E), ("aarch64", 0xC00000B7)):
        arch = seccomp.ARCHES[name]
        program = seccomp.filter_bytes(arch)
        table = SYSCALLS[name]
        denied = [call for call in table if call not in
                  ("getpid", "ioctl", "unshare", "clone", "clone3")]
        assert set(denied) == {n for n in seccomp.DENIED if n in arch.numbers}
        for call in denied:
            assert run_filter(program, table[call], arch_value) == eperm, (name, call)
            assert arch.numbers[call] == table[call], (name, call)
        for call, number in arch.numbers.items():
            assert table.get(call, number) == number, (name, call)
        assert run_filter(program, table["getpid"], arch_value) == allow
        assert run_filter(program, table["clone3"], arch_value) == enosys
        for flag in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, 0x40000000, 0x80):
            assert run_filter(program, table["unshare"], arch_value, (flag,)) == eperm
            assert run_filter(program, table["clone"], arch_value, (flag | 17,)) == eperm
        threads = 0x3D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|*TID
        assert run_filter(program, table["clone"], arch_value, (threads,)) == allow
        assert run_filter(program, table["clone"], arch_value, (17,)) == allow  # fork
        assert run_filter(program, table["unshare"], arch_value, (0x400,)) == allow  # FILES
        assert run_filter(program, table["ioctl"], arch_value, (0, TIOCSTI)) == eperm
        assert run_filter(program, table["ioctl"], arch_value, (0, TIOCLINUX)) == eperm
        assert run_filter(program, table["ioctl"], arch_value, (0, TCGETS)) == allow
        # another ABI's numbers mean other calls: killed, whatever the number
        for foreign in (0x40000003, 0xC00000B7 if name == "x86_64" else 0xC000003E,
                        0x40000028):  # i386, the other arch, ARM (AArch32)
            assert run_filter(program, 20, foreign) == kill
    x86 = seccomp.filter_bytes(seccomp.ARCHES["x86_64"])
    assert run_filter(x86, 0x40000000 | 39, 0xC000003E) == eperm  # x32 getpid
    assert run_filter(x86, 0x40000000 | 250, 0xC000003E) == eperm  # x32 keyctl


def test_seccomp_fd_is_given_to_bwrap_before_the_program(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    argv = build_bwrap_argv(["true"], spec, Path("/x/bwrap"), seccomp_fd=7)
    assert argv[argv.index("--seccomp") + 1] == "7"
    assert argv.index("--seccomp") < argv.index("--")
