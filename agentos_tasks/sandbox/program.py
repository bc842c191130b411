"""How argv[0] is found inside the sandbox, and what must be visible for it to run.

A program outside the system dirs (a pyenv Python, a CLI under a user prefix, a test's
fake CLI) is found the way the host would find it on the step's PATH, pyenv shims resolved
to the real interpreter (pyenv.py), and its installation is bound read-only
(install_layout.py: a prefix or directory; an npm project install as its whole
`node_modules` root, a global one as its package; in a home directory only its own
files). A node CLI's `#!/usr/bin/env node` is followed like any shebang, so the `node`
found on the step's PATH is made visible too.
Nothing at or below /proc, /sys or /dev is run.

Shebangs are followed so a script's interpreter is runnable too, but trust decides how
far: a file the repository wrote (anything in the worktree) or one not found through PATH
only ever leads to interpreters in the system dirs or on the step's PATH. A shebang or a
symlink in the repository must not pick which host directory becomes visible.

Pure functions of (argv[0], environment, host filesystem): nothing is started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks.sandbox import pyenv
from agentos_tasks.sandbox.hostfs import (
    host_home_dirs,
    in_pseudo_fs,
    lexically_system,
    read_head,
    resolve_on_path,
    within,
)
from agentos_tasks.sandbox.install_layout import Visible, visible_paths

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

_MAX_SHEBANG_DEPTH = 4
_SHEBANG_BYTES = 256


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


def read_shebang(path: Path) -> tuple[str, list[str]] | None:
    """The interpreter and its arguments from a `#!` line, None for binaries."""
    head = read_head(path, _SHEBANG_BYTES)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    words = line.split()
    if not words:
        return None
    return words[0], words[1:]


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
    lookup = _Lookup(env, cwd, (str(cwd), *guarded))
    return _plan(lookup, argv0, 0, _Trust.OPERATOR, path_dirs)


def program_binds(argv0: str, path_env: str, cwd: Path | None = None) -> list[Path]:
    """Host paths (outside system dirs) bound read-only so `argv0` runs in the sandbox."""
    where = cwd or Path.cwd()
    return list(plan_program(argv0, {"PATH": path_env}, where).binds)


class _Trust:
    """Who named a program: decides whether naming it may make a host directory visible."""

    OPERATOR = "operator"  # argv[0] of the request/policy: its explicit choice
    TRUSTED = "trusted"  # the shebang of a program found on PATH (installed, not the repo's)
    UNTRUSTED = "untrusted"  # the shebang of a worktree file or of a file not found on PATH


@dataclass(frozen=True)
class _Lookup:
    """What stays the same while one argv[0] and its shebang chain are planned."""

    env: Mapping[str, str]
    cwd: Path
    guarded: tuple[str, ...]


def _path_dirs(path_env: str) -> frozenset[str]:
    """The absolute PATH entries, normalised (relative ones depend on the cwd: never)."""
    return frozenset(os.path.normpath(entry) for entry in path_env.split(os.pathsep)
                     if entry and os.path.isabs(entry))


def _on_trusted_path(path: str, path_dirs: frozenset[str]) -> bool:
    """A system file or one in a directory on the step's (absolute) PATH."""
    return (lexically_system(path)
            or os.path.normpath(os.path.dirname(os.path.abspath(path))) in path_dirs)


def _locate(argv0: str, lookup: _Lookup) -> Path | None:
    """The host file argv[0] names: a PATH lookup for a bare name, else a path (relative
    to the cwd), None when there is none."""
    if "/" not in argv0:
        return resolve_on_path(argv0, lookup.env.get("PATH", os.defpath))
    program = Path(argv0) if os.path.isabs(argv0) else lookup.cwd / argv0
    return program if program.exists() else None


def _plan(lookup: _Lookup, argv0: str, depth: int, named_by: str,
          path_dirs: frozenset[str]) -> ProgramPlan:
    program = _locate(argv0, lookup)
    if program is None:
        return ProgramPlan(argv0, None)
    if in_pseudo_fs(program):
        # The host's /proc, /sys and /dev are never shown, so such a program cannot run
        # inside (and binding even the one file would show a host device or process).
        return ProgramPlan(argv0, None, refused=f"{program} is under /proc, /sys or /dev: "
                           "the sandbox has its own, nothing there is run from the host")
    homes = host_home_dirs(lookup.env)
    worktree = os.path.realpath(lookup.cwd)
    lexical = os.path.normpath(os.path.abspath(program))
    in_worktree = within(lexical, os.path.normpath(os.path.abspath(lookup.cwd))) or \
        within(lexical, worktree)
    # A file whose content we may follow: installed where PATH or the system put it.
    trusted_file = not in_worktree and ("/" not in argv0 or _on_trusted_path(lexical, path_dirs))
    path_prefix: list[str] = []
    pyenv_root = pyenv.shim_root(program) if trusted_file else None
    if pyenv_root is not None:
        real = pyenv.resolve(program.name, pyenv_root, lookup.env, lookup.cwd)
        if real is None:
            return ProgramPlan(argv0, None)
        program = real
        path_prefix.append(str(real.parent))
        path_dirs = path_dirs | {os.path.normpath(real.parent)}
    visible = Visible()
    target = os.path.realpath(program)
    if in_worktree:
        # The repository may have made it a symlink: follow only to where PATH could lead.
        if not within(target, worktree) and _on_trusted_path(target, path_dirs):
            visible = visible_paths(Path(target), lookup.guarded, homes)
    elif trusted_file or named_by != _Trust.UNTRUSTED:
        visible = visible_paths(program, lookup.guarded, homes)
    else:
        # Named by an untrusted shebang, not on PATH: nothing of it becomes visible, and
        # its own shebang is not followed (inside the sandbox the exec simply fails).
        return ProgramPlan(argv0, program)
    interpreter = _interpreter(program, lookup.cwd, path_dirs) \
        if depth < _MAX_SHEBANG_DEPTH else ""
    if interpreter:
        inner_trust = _Trust.TRUSTED if trusted_file else _Trust.UNTRUSTED
        inner = _plan(lookup, interpreter, depth + 1, inner_trust, path_dirs)
        visible.binds.extend(inner.binds)
        visible.links.extend(inner.symlinks)
        path_prefix.extend(inner.path_prefix)
    binds = _dedupe_binds(visible.binds)
    links = [(target, path) for target, path in dict.fromkeys(visible.links)
             if not any(within(path, str(bind)) for bind in binds)]  # shown by a bind
    return ProgramPlan(argv0, program, tuple(binds), tuple(dict.fromkeys(path_prefix)),
                       symlinks=tuple(links))


def _interpreter(program: Path, cwd: Path, path_dirs: frozenset[str]) -> str:
    """What the shebang of `program` runs, as argv[0] of its own plan; "" for none."""
    shebang = read_shebang(program)
    if shebang is None:
        return ""
    interpreter, args = shebang
    if os.path.basename(interpreter) == "env" and _on_trusted_path(interpreter, path_dirs):
        names = [a for a in args if not a.startswith("-") and "=" not in a]
        return names[0] if names else ""  # env: a PATH lookup (or a path)
    if interpreter and "/" not in interpreter:
        return str(cwd / interpreter)  # the kernel reads it relative to the cwd
    return interpreter


def _dedupe_binds(binds: Iterable[Path]) -> list[Path]:
    """Drop duplicates and paths already covered by a bound ancestor."""
    unique = sorted({os.path.normpath(b) for b in binds}, key=len)
    kept: list[str] = []
    for bind in unique:
        if not any(within(bind, parent) for parent in kept):
            kept.append(bind)
    return [Path(b) for b in kept]
