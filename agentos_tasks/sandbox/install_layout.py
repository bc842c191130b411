"""Which host paths of a program's installation are bound read-only so it runs.

`visible_paths(program)` decides for a program file found on the host. Nothing of the
system dirs (visible anyway) and nothing at or below /proc, /sys or /dev. Outside home
directories an installation prefix (`<prefix>/bin/<program>` with `<prefix>/lib`) is bound
whole, so an interpreter finds its stdlib and site-packages; otherwise the program's
directory; a file directly in a directory that is never bound whole (`/tmp`, `/opt`, ...
NEVER_BIND_WHOLE) or that holds a guarded path (the worktree) is bound alone.

A home directory holds credentials next to programs (`~/.local/share/opencode/auth.json`
beside `~/.local/share/claude/versions/X`, `~/.config`, `~/.ssh`), so the sandbox never
binds a directory of it because a program lives there. It binds the program's own files:

- a Python virtual environment (pipx, `uv tool`, a project venv): the environment's own
  directory, recognised by its `pyvenv.cfg`;
- a node package: its npm install (`node_install_of`), as outside a home;
- a Python interpreter of an installation prefix (pyenv, uv-managed Pythons): the
  interpreter's executables, its standard library `lib/pythonX.Y` and `lib/libpython*`;
- anything else (a native binary, a script, a symlink into a versions dir): the file alone.

A program in an npm layout (`node_modules/.bin/<name>`, or a file inside
`node_modules/<pkg>/` or `node_modules/@scope/<pkg>/`) is bound as its npm install: in a
project install (`npm ci` into `<project>/node_modules`) the whole `node_modules` root,
which holds the package's hoisted dependencies and optional platform packages
(`@openai/codex-linux-x64` beside `@openai/codex`); in a global install
(`<prefix>/lib/node_modules/<pkg>`, each package its own tree) the outermost package
directory only, never its siblings (other global installs). The `node` of the shebang is
planned like any interpreter (program.py).

Directories are only chosen when they are their own real path (no symlinked component
could make the bind show something else) and are never one of the shared dirs of a home
(`~`, `~/.local`, `~/.local/share`, `~/.config`, ...). A symlink among a program's own
files is recreated as a link inside (a bound link would become a copy of its target, and
the program would look for its files beside the link), and its target is made visible
in turn. Pure functions: nothing is started.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks.sandbox.hostfs import (
    HOME_ROOTS,
    home_of,
    host_home_dirs,
    in_pseudo_fs,
    is_system_path,
    within,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Host directories that are never bound as a whole, even when a program lives directly in
# one of them (then only the program file itself is bound).
NEVER_BIND_WHOLE: tuple[str, ...] = (
    "/", "/root", "/home", "/tmp", "/var", "/var/tmp", "/etc",  # noqa: S108 - host paths
    "/proc", "/sys", "/dev",
    "/run", "/mnt", "/media", "/srv", "/opt", "/boot",
)

# Directories of a home that are shared by many programs and data: never bound as a whole
# even when they look like an installation (a venv made in ~/.local, say).
SHARED_HOME_DIRS: tuple[str, ...] = (
    "", ".local", ".local/bin", ".local/lib", ".local/lib64", ".local/share", ".local/state",
    ".local/pipx", ".local/pipx/venvs", ".local/share/uv", ".local/share/uv/tools",
    ".config", ".cache", "bin", "lib", "src", ".ssh", ".gnupg", ".npm", ".npm-global",
    ".npm-global/lib", ".nvm", ".cargo", ".rustup", "go", ".pyenv", ".pyenv/versions",
    "node_modules", ".node_modules", "Documents", "Downloads", "Desktop",
)
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?")
_MAX_LINK_HOPS = 8


def _is_own_real_dir(path: str) -> bool:
    try:
        return os.path.isdir(path) and os.path.realpath(path) == path
    except OSError:
        return False


def _may_bind_dir(directory: str, home: str) -> bool:
    """A directory strictly below `home`, its own real path, and not a shared home dir."""
    if directory == home or not within(directory, home):
        return False
    relative = os.path.relpath(directory, home)
    if relative in SHARED_HOME_DIRS or relative.startswith(".."):
        return False
    return _is_own_real_dir(directory)


def _venv_of(path: str, home: str) -> str | None:
    """The nearest enclosing dir (below `home`) holding a pyvenv.cfg file."""
    directory = os.path.dirname(path)
    while directory != home and within(directory, home):
        if os.path.isfile(os.path.join(directory, "pyvenv.cfg")):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return None


def _node_package_of(path: str) -> str | None:
    """The outermost `node_modules/<pkg>` (or `node_modules/@scope/<pkg>`) holding `path`."""
    parts = path.split("/")
    for index, part in enumerate(parts[:-1]):
        if part != "node_modules":
            continue
        name = parts[index + 1]
        if not name or name.startswith("."):
            return None  # node_modules/.bin, .pnpm, ...: not a package of its own
        end = index + 2
        if name.startswith("@"):
            end += 1
        if end >= len(parts):  # `path` is the package dir itself, not a file in it
            return None
        return "/".join(parts[:end])
    return None


def _node_modules_root(path: str) -> str | None:
    """The outermost `node_modules` directory with `path` strictly inside it."""
    parts = path.split("/")
    for index, part in enumerate(parts[:-2]):
        if part == "node_modules" and index > 0:
            return "/".join(parts[:index + 1])
    return None


def node_install_of(path: str) -> str | None:
    """The npm install a file `path` (absolute, normalised) belongs to, None outside one.

    A project install (`<project>/node_modules/...`, `.bin/<name>` included): the
    `node_modules` root, so hoisted dependencies and optional platform packages are
    visible. A global install (`<prefix>/lib/node_modules/<pkg>/...`): the package
    directory (its dependencies are nested inside it; its siblings are other installs).
    """
    root = _node_modules_root(path)
    if root is None:
        return None
    if os.path.basename(os.path.dirname(root)) == "lib":
        return _node_package_of(path)
    return root


def _python_files(path: str) -> list[str] | None:
    """An interpreter `<prefix>/bin/pythonX.Y` of a real installation (its stdlib has
    os.py): the interpreter names in bin/, lib/pythonX.Y and lib/libpython*; else None."""
    directory = os.path.dirname(path)
    if not _PYTHON_NAME.fullmatch(os.path.basename(path)) or \
            os.path.basename(directory) != "bin":
        return None
    prefix = os.path.dirname(directory)
    lib = os.path.join(prefix, "lib")
    try:
        lib_entries = sorted(os.listdir(lib))
        bin_entries = sorted(os.listdir(directory))
    except OSError:
        return None
    stdlibs = [os.path.join(lib, name) for name in lib_entries
               if name.startswith("python") and
               os.path.isfile(os.path.join(lib, name, "os.py"))]
    if not stdlibs:
        return None
    files = [*stdlibs]
    files += [os.path.join(lib, name) for name in lib_entries
              if name.startswith("libpython") and ".so" in name]
    for name in bin_entries:  # python, python3, python3.11: each resolving into the prefix
        entry = os.path.join(directory, name)
        if _PYTHON_NAME.fullmatch(name) and within(os.path.realpath(entry), prefix):
            files.append(entry)
    return files


def own_files(path: str, home: str) -> list[str]:
    """Host paths to bind read-only so the program file `path` (below `home`, absolute and
    normalised) runs; `path` itself is always among them (a symlink is bound as the file
    it resolves to)."""
    binds = [path]
    venv = _venv_of(path, home)
    if venv is not None and _may_bind_dir(venv, home):
        return [*binds, venv]
    for package in dict.fromkeys((node_install_of(path), _node_package_of(path))):
        if package is not None and _may_bind_dir(package, home):
            return [*binds, package]  # the install; else (a shared dir) its package
    python = _python_files(path)
    if python is not None:
        prefix = os.path.dirname(os.path.dirname(path))
        if within(prefix, home) and prefix != home:
            binds += [p for p in python
                      if not os.path.isdir(p) or _may_bind_dir(p, home)]
    return binds


def may_bind_whole(directory: str, guarded: Iterable[str],
                   homes: Iterable[str] | None = None) -> bool:
    """A directory may be bound as a whole unless it is, or contains, something private,
    or lies in a home directory (then only a program's own files are bound)."""
    directory = os.path.normpath(directory)
    if directory in NEVER_BIND_WHOLE or in_pseudo_fs(directory):
        return False
    homes = host_home_dirs() if homes is None else set(homes)
    if home_of(directory, homes) is not None or \
            home_of(os.path.realpath(directory), homes) is not None:
        return False
    for private in (*homes, *HOME_ROOTS, *guarded):
        if within(os.path.normpath(private), directory):
            return False  # binding it would expose $HOME, the worktree's siblings, ...
    return True


@dataclass
class Visible:
    """What a plan makes visible: read-only binds and symlinks recreated inside."""

    binds: list[Path] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (target as written, path)


def visible_paths(program: Path, guarded: Sequence[str],
                  homes: Iterable[str] | None = None) -> Visible:
    """Read-only binds (and symlinks) that make `program`, a host path, runnable (see the
    module docstring); the program as written and with its links resolved."""
    homes = host_home_dirs() if homes is None else set(homes)
    visible = Visible()
    for candidate in dict.fromkeys((os.path.normpath(os.path.abspath(program)),
                                    os.path.realpath(program))):
        _make_visible(candidate, guarded, homes, visible, 0)
    return visible


def _make_visible(candidate: str, guarded: Sequence[str], homes: set[str],
                  visible: Visible, hops: int) -> None:
    if is_system_path(candidate) or in_pseudo_fs(candidate) or not os.path.lexists(candidate):
        return
    home = home_of(candidate, homes)
    if home is not None:
        for path in own_files(candidate, home):
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
    install = node_install_of(candidate)
    if install is not None and _is_own_real_dir(install) and \
            not any(within(install, os.path.normpath(g)) for g in guarded) and \
            may_bind_whole(install, guarded, homes):
        visible.binds.append(Path(install))
        return
    directory = os.path.dirname(candidate)
    prefix = os.path.dirname(directory)
    if (os.path.basename(directory) == "bin" and os.path.isdir(os.path.join(prefix, "lib"))
            and may_bind_whole(prefix, guarded, homes)):
        visible.binds.append(Path(prefix))
    elif may_bind_whole(directory, guarded, homes):
        visible.binds.append(Path(directory))
    else:
        visible.binds.append(Path(candidate))
