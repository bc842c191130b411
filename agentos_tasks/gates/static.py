"""static.no_subprocess and EX-B: only agentos_tasks/proc.py may start processes.

An AST scan of the installed package (agentos_tasks, these gates included): imports of subprocess,
plumbum, pty, multiprocessing, _posixsubprocess; calls to the os module's system,
popen, exec*, spawn*, posix_spawn* and fork* and asyncio's create_subprocess_*; and
dynamic imports or getattr that could reach them (importlib.import_module, __import__,
getattr(os, ...)) with a forbidden or non-literal name.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import FAIL, NA, PASS, Gate, Verdict

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext


FORBIDDEN_MODULES = {"subprocess", "plumbum", "pty", "multiprocessing", "_posixsubprocess",
                     "concurrent.futures.process"}
FORBIDDEN_OS = ("system", "popen", "exec", "spawn", "posix_spawn", "fork", "forkpty")
FORBIDDEN_ASYNCIO = ("create_subprocess_exec", "create_subprocess_shell")
ALLOWED_FILE = "agentos_tasks/proc.py"
# Code that runs only inside the sandbox, given to bwrap as data (never imported on the
# host): the network bridge forks and execs the step's program there. Its process starts
# are allowed; an import of it anywhere in the package is a violation.
SANDBOX_SIDE = {"agentos_tasks/net/bridge.py": "agentos_tasks.net.bridge"}


def package_files() -> list[Path]:
    """Every Python file of the installed package, subpackages included (rglob): a module
    added anywhere below agentos_tasks/ is scanned without being listed here."""
    import agentos_tasks

    root = Path(agentos_tasks.__file__ or "").resolve().parent
    return sorted(root.rglob("*.py"))


def _relname(path: Path) -> str:
    parts = path.parts
    if "agentos_tasks" in parts:
        idx = len(parts) - 1 - parts[::-1].index("agentos_tasks")
        return "/".join(parts[idx:])
    return path.name


def _forbidden_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES)


def _forbidden_os_attr(name: str) -> bool:
    return any(name == f or name.startswith(f) for f in FORBIDDEN_OS)


def scan_source(source: str, filename: str) -> list[str]:
    """Violations in one file (empty list = clean)."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    # names bound to os / asyncio so far (ast.walk goes breadth first, as before)
    os_aliases = {"os"}
    asyncio_aliases = {"asyncio"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += _import(node, filename, os_aliases, asyncio_aliases)
        elif isinstance(node, ast.ImportFrom):
            found += _import_from(node, filename)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found += _attribute(node, node.value, filename, os_aliases, asyncio_aliases)
        elif isinstance(node, ast.Call):
            found += _dynamic(node, filename, os_aliases)
    return found


def _import(node: ast.Import, filename: str, os_aliases: set[str],
            asyncio_aliases: set[str]) -> list[str]:
    """`import subprocess` and friends; records the names os and asyncio are bound to."""
    found = []
    for alias in node.names:
        if _forbidden_module(alias.name):
            found.append(f"{filename}:{node.lineno}: import {alias.name}")
        if alias.name == "os":
            os_aliases.add(alias.asname or "os")
        if alias.name == "asyncio":
            asyncio_aliases.add(alias.asname or "asyncio")
    return found


def _import_from(node: ast.ImportFrom, filename: str) -> list[str]:
    """`from subprocess import ...`, `from os import system`, `from asyncio import
    create_subprocess_exec`, `from concurrent.futures import process`."""
    found = []
    module = node.module or ""
    if _forbidden_module(module):
        found.append(f"{filename}:{node.lineno}: from {module} import ...")
    for alias in node.names:
        if module == "os" and _forbidden_os_attr(alias.name):
            found.append(f"{filename}:{node.lineno}: from os import {alias.name}")
        if module == "asyncio" and alias.name in FORBIDDEN_ASYNCIO:
            found.append(f"{filename}:{node.lineno}: from asyncio import {alias.name}")
        if _forbidden_module(f"{module}.{alias.name}" if module else alias.name):
            found.append(f"{filename}:{node.lineno}: from {module} import {alias.name}")
    return found


def _attribute(node: ast.Attribute, value: ast.Name, filename: str, os_aliases: set[str],
               asyncio_aliases: set[str]) -> list[str]:
    """A call of a process-starting function of os or asyncio (system, exec*, spawn*, fork,
    create_subprocess_*), under any alias."""
    found = []
    if value.id in os_aliases and _forbidden_os_attr(node.attr):
        found.append(f"{filename}:{node.lineno}: os.{node.attr}")
    if value.id in asyncio_aliases and node.attr in FORBIDDEN_ASYNCIO:
        found.append(f"{filename}:{node.lineno}: asyncio.{node.attr}")
    return found

def _dynamic(node: ast.Call, filename: str, os_aliases: set[str]) -> list[str]:
    func = node.func
    name = (func.id if isinstance(func, ast.Name)
            else func.attr if isinstance(func, ast.Attribute) else "")
    first = node.args[0] if node.args else None
    literal = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) \
        else None
    if name in ("import_module", "__import__"):
        if literal is None:
            return [f"{filename}:{node.lineno}: {name}() with a computed module name"]
        if _forbidden_module(literal):
            return [f"{filename}:{node.lineno}: {name}({literal!r})"]
    if name == "getattr" and len(node.args) >= 2:
        target, attr = node.args[0], node.args[1]
        if isinstance(target, ast.Name) and target.id in os_aliases:
            if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                return [f"{filename}:{node.lineno}: getattr(os, <computed>)"]
            if _forbidden_os_attr(attr.value):
                return [f"{filename}:{node.lineno}: getattr(os, {attr.value!r})"]
    return []


_SCANNED: dict[tuple[str, str], list[str]] = {}


def scan_package(files: list[Path] | None = None) -> tuple[int, list[str]]:
    """Violations over `files` (default: the installed package); memoised per file content
    so the two gates that need it (static.no_subprocess, EX-B) parse each file once, and
    across invocations by the digest of every scanned file's name and content (this
    scanner included, it is one of them): any edit to any file means a new scan."""
    files = files if files is not None else package_files()
    sources: list[tuple[str, str, str]] = []
    package = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for path in files:
        rel = _relname(path)
        if rel == ALLOWED_FILE or rel in SANDBOX_SIDE:
            continue
        source = path.read_text(encoding="utf-8")
        digest = hashlib.sha256(source.encode()).hexdigest()
        sources.append((rel, source, digest))
        package.update(f"{path}\0{digest}\0".encode("utf-8", "surrogateescape"))
    cached = _load_scan(package.hexdigest(), len(files))
    if cached is not None:
        return len(files), cached
    violations: list[str] = []
    for rel, source, digest in sources:
        key = (rel, digest)
        if key not in _SCANNED:
            _SCANNED[key] = scan_source(source, rel) + _sandbox_side_imports(source, rel)
        violations += _SCANNED[key]
    _store_scan(package.hexdigest(), len(files), violations)
    return len(files), violations


def _scan_cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "agentos-tasks" / "static-scan.json"


_SCAN_ENTRIES = 16  # scans kept: every worktree or version on this host keeps its own


def _stored_entries() -> dict[str, Any]:
    try:
        stored = json.loads(_scan_cache_path().read_bytes())
        entries = stored.get("entries") if isinstance(stored, dict) else None
        return dict(entries) if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}


def _load_scan(package: str, count: int) -> list[str] | None:
    """The stored scan of exactly this package content, if its MAC (the gate cache's key,
    kept outside any run directory) verifies; anything else means a fresh scan. One entry
    per package digest, so two installations on one host do not evict each other."""
    from agentos_tasks.gates.cachekey import mac_ok

    try:
        stored = _stored_entries()[package]
        violations = stored["violations"]
        if stored["count"] != count or \
                not isinstance(violations, list) or \
                not all(isinstance(v, str) for v in violations) or \
                not mac_ok(stored.get("mac"), "static-scan", package, str(count),
                           json.dumps(violations)):
            return None
        return list(violations)
    except (KeyError, TypeError):
        return None


def _store_scan(package: str, count: int, violations: list[str]) -> None:
    from agentos_tasks.fsutil import write_json
    from agentos_tasks.gates.cachekey import mac

    tag = mac("static-scan", package, str(count), json.dumps(violations))
    if tag is None:
        return  # no usable cache key: no cache
    entries = _stored_entries()
    entries.pop(package, None)
    entries[package] = {"count": count, "violations": violations, "mac": tag,
                        "at": time.time_ns()}  # the newest are kept (not covered by the MAC)
    newest = sorted(entries.items(), key=lambda kv: kv[1].get("at", 0)
                    if isinstance(kv[1], dict) and isinstance(kv[1].get("at"), int) else 0)
    kept = dict(newest[-_SCAN_ENTRIES:])
    try:
        write_json(_scan_cache_path(), {"entries": kept})
    except OSError:
        pass


def _sandbox_side_imports(source: str, rel: str) -> list[str]:
    """Imports of sandbox-side code (SANDBOX_SIDE) in a host module."""
    found: list[str] = []
    names = set(SANDBOX_SIDE.values())
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            hits = [a.name for a in node.names if a.name in names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            hits = [f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in names] + \
                   ([node.module] if node.module in names else [])
        else:
            continue
        found += [f"{rel}:{node.lineno}: imports sandbox-side {hit}" for hit in hits]
    return found


def package_source_digest(files: list[Path] | None = None) -> str:
    """sha256 over (package-relative name, sha256 of the bytes) of every Python file of
    the installed package: which executor code this is. run_start records it, so a scan
    can be tied to the code that executed a run."""
    digest = hashlib.sha256()
    for path in sorted(files if files is not None else package_files(), key=_relname):
        digest.update(_relname(path).encode() + b"\0" +
                      hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def no_subprocess(ctx: GateContext) -> Verdict:
    """The AST scan of the installed package, and whether that package is the code that
    executed this run (run_start's agentos_source_sha256): only then does a clean scan
    say something about the run. Another installation (a verifier's, a later version)
    is N/A with both digests named; a run that records none FAILs."""
    files = package_files()
    count, violations = scan_package(files)
    if count == 0:
        return FAIL, "no package files found to scan"
    if violations:
        return FAIL, f"{len(violations)} process start(s) outside {ALLOWED_FILE}: " + \
            "; ".join(violations[:5])
    # run_start's, or (a torn run_start is cut, not made again) the first policy_loaded's
    named = [e.get("agentos_source_sha256") for e in
             ctx.events_named("run_start") + ctx.events_named("policy_loaded")]
    recorded = next((n for n in named if isinstance(n, str)), None)
    if not isinstance(recorded, str):
        return FAIL, "the tape's run_start records no agentos_source_sha256: a scan of " \
                     "this installation cannot be tied to the code that ran the run"
    here = package_source_digest(files)
    if recorded != here:
        return NA, f"this run was executed by agentos source {recorded[:12]}, this " \
                   f"installation is {here[:12]}: its scan says nothing about the run"
    return PASS, f"{count} files scanned; only {ALLOWED_FILE} starts processes; the " \
                 f"same source ({here[:12]}) executed this run"


NO_SUBPROCESS = Gate("static.no_subprocess", "only proc.py starts processes (AST scan) in "
                     "the code that executed the run", no_subprocess,
                     ("audit/run_tape.jsonl",), uses_package=True)
EX_B = Gate("EX-B", "= static.no_subprocess on the executing code", no_subprocess,
            ("audit/run_tape.jsonl",), uses_package=True)
