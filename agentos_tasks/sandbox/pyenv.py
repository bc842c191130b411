"""pyenv shims, resolved to the real interpreter without running pyenv.

A shim (`~/.pyenv/shims/python3`) is a bash script that runs `pyenv exec`: inside the
sandbox pyenv's own files are not there, so the plan puts the real interpreter's bin dir
first on PATH instead. The version pyenv would pick is read the way pyenv reads it
(PYENV_VERSION, `.python-version` upwards from the cwd, the global `version` file); a
version name comes from a file in the (untrusted) worktree, so only a plain name is used,
never a path that could make us bind an arbitrary host directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks.sandbox.hostfs import read_head, resolve_on_path

if TYPE_CHECKING:
    from collections.abc import Mapping

_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHIM_HEAD_BYTES = 2048
_VERSION_FILE_BYTES = 1 << 16  # a .python-version names a few versions, nothing more


def shim_root(path: Path) -> Path | None:
    """PYENV_ROOT when `path` is a pyenv shim (a bash script that runs `pyenv exec`)."""
    if path.parent.name != "shims":
        return None
    head = read_head(path, _SHIM_HEAD_BYTES)
    if not head.startswith(b"#!") or b"pyenv" not in head:
        return None
    match = re.search(rb'export PYENV_ROOT="([^"\n]+)"', head)
    return Path(match.group(1).decode()) if match else path.parent.parent


def _versions(root: Path, env: Mapping[str, str], cwd: Path) -> list[str]:
    """The versions pyenv would select: PYENV_VERSION, .python-version upwards, global."""
    if env.get("PYENV_VERSION"):
        return env["PYENV_VERSION"].split(":")
    version_files = [directory / ".python-version" for directory in (cwd, *cwd.parents)]
    version_files.append(root / "version")
    for version_file in version_files:
        text = read_head(version_file, _VERSION_FILE_BYTES).decode("utf-8", "replace")
        names = [word for line in text.splitlines() if not line.lstrip().startswith("#")
                 for word in line.split()]
        if names:
            return names
    return ["system"]


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def _version_prefix(versions_dir: Path, version: str) -> Path | None:
    """The installed prefix of `version`; "3.11" means the newest installed 3.11.x."""
    prefix = versions_dir / version
    if prefix.is_dir():
        return prefix
    try:
        matches = [d.name for d in versions_dir.iterdir()
                   if d.name.startswith(version + ".") and d.is_dir()]
    except OSError:
        matches = []
    return versions_dir / max(matches, key=_version_key) if matches else None


def resolve(name: str, root: Path, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The real program a pyenv shim would exec, without running pyenv (no process here)."""
    path_env = env.get("PATH", os.defpath)
    versions_dir = root / "versions"
    for version in _versions(root, env, cwd):
        if version == "system":
            found = resolve_on_path(name, path_env, skip_dirs=[str(root / "shims")])
            if found and shim_root(found) is None:
                return found
            continue
        if not _VERSION_NAME.fullmatch(version) or ".." in version:
            continue  # a plain name only (see the module docstring)
        prefix = _version_prefix(versions_dir, version)
        if prefix is None:
            continue
        candidate = prefix / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None
