"""Which host files belong to a program installed under a home directory.

A home directory holds credentials next to programs (`~/.local/share/opencode/auth.json`
beside `~/.local/share/claude/versions/X`, `~/.config`, `~/.ssh`), so the sandbox never
binds a directory of it because a program lives there. It binds the program's own files:

- a Python virtual environment (pipx, `uv tool`, a project venv): the environment's own
  directory, recognised by its `pyvenv.cfg`;
- a node package (`.../node_modules/<pkg>` or `@scope/<pkg>`): the outermost package
  directory, which holds the package's own dependencies;
- a Python interpreter of an installation prefix (pyenv, uv-managed Pythons): the
  interpreter's executables, its standard library `lib/pythonX.Y` and `lib/libpython*`;
- anything else (a native binary, a script, a symlink into a versions dir): the file alone.

Directories are only chosen when they are their own real path (no symlinked component
could make the bind show something else) and are never one of the shared dirs of a home
(`~`, `~/.local`, `~/.local/share`, `~/.config`, ...). Pure functions: nothing is started.
"""

from __future__ import annotations

import os
import re

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


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _is_own_real_dir(path: str) -> bool:
    try:
        return os.path.isdir(path) and os.path.realpath(path) == path
    except OSError:
        return False


def _may_bind_dir(directory: str, home: str) -> bool:
    """A directory strictly below `home`, its own real path, and not a shared home dir."""
    if directory == home or not _within(directory, home):
        return False
    relative = os.path.relpath(directory, home)
    if relative in SHARED_HOME_DIRS or relative.startswith(".."):
        return False
    return _is_own_real_dir(directory)


def _venv_of(path: str, home: str) -> str | None:
    """The nearest enclosing dir (below `home`) holding a pyvenv.cfg file."""
    directory = os.path.dirname(path)
    while directory != home and _within(directory, home):
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
        if _PYTHON_NAME.fullmatch(name) and _within(os.path.realpath(entry), prefix):
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
    package = _node_package_of(path)
    if package is not None and _may_bind_dir(package, home):
        return [*binds, package]
    python = _python_files(path)
    if python is not None:
        prefix = os.path.dirname(os.path.dirname(path))
        if _within(prefix, home) and prefix != home:
            binds += [p for p in python
                      if not os.path.isdir(p) or _may_bind_dir(p, home)]
    return binds
