"""Evaluating gates: the registry, one gate or all of them, and cached results.

Each gate returns PASS / FAIL / NOT_APPLICABLE with a one-line reason and the evidence it
looked at (run-relative path + sha256, or MISSING). A missing artifact is a FAIL, never a
pass; a gate that crashes on malformed evidence is a FAIL naming the crash. A run
directory holding a FIFO, socket, device or symlink is not read at all: every gate that
reads it FAILs naming the entry (GateContext).

`doit gates` keeps each result with a digest of everything its gate reads (evidence
files, branch head, package source); a stored result counts only while that digest is
unchanged and its HMAC, keyed outside the run directory, verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentos_tasks.errors import AgentosError
from agentos_tasks.fsutil import file_kind, open_regular, read_json, special_files, write_json
from agentos_tasks.gates.answers import A1, A2, A3
from agentos_tasks.gates.approvals import EX_G
from agentos_tasks.gates.attestations import AT
from agentos_tasks.gates.cachekey import mac, mac_ok
from agentos_tasks.gates.commits import EX_D
from agentos_tasks.gates.common import FAIL, Gate, GateResult
from agentos_tasks.gates.context import GateContext, Missing
from agentos_tasks.gates.execution_result import EX_H
from agentos_tasks.gates.integrity import R3
from agentos_tasks.gates.network import NET
from agentos_tasks.gates.policy import EX_A, R1
from agentos_tasks.gates.rollback import EX_F
from agentos_tasks.gates.static import EX_B, NO_SUBPROCESS, package_files
from agentos_tasks.gates.steps import EX_E
from agentos_tasks.gates.tools import TL_A, TL_B, TL_C, TL_D, TL_E, TL_F
from agentos_tasks.gates.worktree import EX_C, R2

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# Every gate, in report order. Each is imported by name: a gate module that is missing or
# does not import is an ImportError here, never a silently shorter list.
REGISTRY: tuple[Gate, ...] = (
    NO_SUBPROCESS, EX_B,
    R1, R2, R3, AT,
    EX_A, EX_C, EX_D, EX_E, EX_F, EX_G, EX_H, NET,
    A1, A2, A3,
    TL_A, TL_B, TL_C, TL_D, TL_E, TL_F,
)


def evaluate(gate: Gate, run_dir: Path) -> GateResult:
    ctx = GateContext(run_dir)
    try:
        status, reason = gate.check(ctx)
    except Missing as exc:
        status, reason = FAIL, str(exc)
    except Exception as exc:  # malformed evidence must fail the gate, not crash the run
        last = traceback.extract_tb(exc.__traceback__)[-1]
        status, reason = FAIL, f"cannot check: {type(exc).__name__}: {exc} " \
                               f"({Path(last.filename).name}:{last.lineno})"
    return GateResult(gate.id, gate.title, status, reason.splitlines()[0] if reason else "",
                      ctx.evidence_list())


_FILE_DIGESTS: dict[tuple[str, int, int, int], bytes] = {}
_HEADS: dict[Path, str] = {}


def _file_digest(path: str, info: os.stat_result) -> bytes:
    """sha256 of a file, memoised per (path, inode, mtime, size) within one process."""
    key = (path, info.st_ino, info.st_mtime_ns, info.st_size)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        try:  # never follows a symlink or waits on a FIFO swapped in since the lstat
            with os.fdopen(open_regular(path), "rb") as handle:
                digest = hashlib.sha256(handle.read()).digest()
        except AgentosError:
            return b"refused"
        _FILE_DIGESTS[key] = digest
    return digest


def _walk(path: str, rel: str, out: list[tuple[str, bytes]]) -> None:
    """(run-relative path, content digest, link target or file type) of every entry below
    `path`: adding or removing a FIFO changes the digest, so no cached result survives it."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        with os.scandir(path) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            _walk(f"{path}/{name}", f"{rel}/{name}", out)
    elif stat.S_ISLNK(info.st_mode):
        out.append((rel, b"link:" + os.readlink(path).encode("utf-8", "surrogateescape")))
    elif stat.S_ISREG(info.st_mode):
        out.append((rel, _file_digest(path, info)))
    else:  # a FIFO, socket or device: never opened, but it counts (the gate refuses it)
        out.append((rel, b"special:" + file_kind(info.st_mode).encode()))


def gate_inputs_digest(gate: Gate, run_dir: Path) -> str:
    """Digest of everything the gate reads: evidence files, branch head, package source.

    A pattern names its top-level entry; everything below it counts, at any depth (a file
    added at logs/sub/x must make the gate run again).
    """
    digest = hashlib.sha256()
    root = str(run_dir)
    tops: list[str] = []
    for pattern in gate.inputs:
        top = pattern.split("/", 1)[0]
        if "*" in top:
            tops += sorted(p.name for p in run_dir.glob(top))
        else:
            tops.append(top)
    for top in dict.fromkeys(tops):
        files: list[tuple[str, bytes]] = []
        _walk(f"{root}/{top}", top, files)
        for rel, content in files:
            digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + content)
        digest.update(b"|")
    # a FIFO or symlink anywhere makes every gate refuse the run directory: it counts
    digest.update(repr(special_files(run_dir)).encode("utf-8", "surrogateescape"))
    if gate.uses_repo:
        if run_dir not in _HEADS:
            _HEADS[run_dir] = GateContext(run_dir).branch_head_fingerprint()
        digest.update(_HEADS[run_dir].encode())
    if gate.uses_package:
        for path in package_files():
            digest.update(str(path).encode() + _file_digest(str(path), path.stat()))
    return digest.hexdigest()


class InputsUnchanged:
    """doit `uptodate`: like config_changed, but the digest is computed only when doit
    checks this task (a plain `doit run` never pays for hashing the evidence)."""

    def __init__(self, compute: Callable[[], object], where: str = "") -> None:
        self.compute = compute
        self.where = where  # the run directory: a copied run's doit DB proves nothing
        self._raw: object = None
        self._value: str | None = None
        self._task = ""

    def raw(self) -> object:
        """What `compute` returned, computed once: the task's action reuses the digest
        its up-to-date check took (nothing runs between the two), never a later one."""
        self.value()
        return self._raw

    def value(self) -> str:
        if self._value is None:
            self._raw = self.compute()
            self._value = json.dumps(self._raw, sort_keys=True)
        return self._value

    def configure_task(self, task: Any) -> None:
        self._task = task.name
        task.value_savers.append(lambda: {
            "_agentos_inputs": self.value(),
            "_agentos_mac": mac("uptodate", self.where, self._task, self.value())})

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        # doit's DB lives in the run dir: a stored value counts only with our MAC
        return bool(values.get("_agentos_inputs") == self.value() and mac_ok(
            values.get("_agentos_mac"), "uptodate", self.where, task.name, self.value()))


def partial_path(run_dir: Path, gate_id: str) -> Path:
    return run_dir / ".state" / "gates" / f"{gate_id}.json"


def run_gate(gate: Gate, run_dir: Path, inputs_of: Callable[[], object] | None = None) -> None:
    """doit action for gates:<ID>: evaluate and keep the result with its input digest.

    The digest is taken before the evaluation (`inputs_of`: the one the task's up-to-date
    check took): evidence that changed meanwhile then never matches it, so a result is
    reused only for the inputs it was computed from or older ones, never newer."""
    inputs = str(inputs_of()) if inputs_of is not None else gate_inputs_digest(gate, run_dir)
    result = evaluate(gate, run_dir)
    body = json.dumps(result.as_dict(), sort_keys=True)
    write_json(partial_path(run_dir, gate.id),
               {"inputs": inputs, "result": result.as_dict(),
                "mac": mac("partial", str(run_dir), gate.id, inputs, body)})


def run_all(run_dir: Path) -> list[GateResult]:
    return [evaluate(gate, run_dir) for gate in REGISTRY]


def stored_result(run_dir: Path, gate_id: str, inputs: str | None = None) -> GateResult | None:
    """The kept result of one gate, if its inputs are unchanged and its MAC verifies
    (`inputs`: its input digest if the caller just took it)."""
    gate = next((g for g in REGISTRY if g.id == gate_id), None)
    if gate is None:
        return None
    try:
        stored = read_json(partial_path(run_dir, gate.id))
        if inputs is None:
            inputs = gate_inputs_digest(gate, run_dir)
        body = json.dumps(stored["result"], sort_keys=True)
        if stored["inputs"] != inputs or not mac_ok(
                stored.get("mac"), "partial", str(run_dir), gate.id, inputs, body):
            return None
        return GateResult(**stored["result"])
    except (OSError, ValueError, KeyError, TypeError, AgentosError):
        return None


def collect(run_dir: Path, digests: Mapping[str, str] | None = None) -> list[GateResult]:
    """Results of every gate: the stored one if its inputs are unchanged, else recomputed."""
    known = digests or {}
    return [stored_result(run_dir, gate.id, known.get(gate.id)) or evaluate(gate, run_dir)
            for gate in REGISTRY]
