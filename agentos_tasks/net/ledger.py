"""The network ledger: one JSON object per line for every connection attempt a step made
through the proxy, allowed or not. Written only by the proxy (append, flush per entry),
read strictly by the gates, which re-decide each entry from its recorded address.

Fields (exactly these, `v` 1):
  v, seq (1.. in write order), step, time (UTC ISO 8601 with microseconds, when the entry
  was written), kind ("connect" | "http"), host (normalized, or the raw text when it did
  not parse), port (int | null), address (the address connected to, or the one refused;
  null when none was chosen), decision ("allow" | "deny"), rule, reason, bytes_up (bytes
  sent to the upstream), bytes_down (bytes received from it), duration_ms.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

from agentos_tasks.net.allowlist import RULE_SYNTAX, NetDecision, decide, normalize_host

if TYPE_CHECKING:
    from pathlib import Path

    from agentos_tasks.net.allowlist import Allowlist

LEDGER_VERSION = 1
KINDS = ("connect", "http")
DECISIONS = ("allow", "deny")
FIELDS: dict[str, tuple[type, ...]] = {
    "v": (int,),
    "seq": (int,),
    "step": (str,),
    "time": (str,),
    "kind": (str,),
    "host": (str,),
    "port": (int, type(None)),
    "address": (str, type(None)),
    "decision": (str,),
    "rule": (str,),
    "reason": (str,),
    "bytes_up": (int,),
    "bytes_down": (int,),
    "duration_ms": (float, int),
}


class LedgerWriter:
    """Appends entries to the ledger file, one whole line per write, from any thread."""

    def __init__(self, path: Path, step: str) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._step = step
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(  # noqa: PLR0917 - one argument per ledger field
        self,
        kind: str,
        host: str,
        port: int | None,
        decision: NetDecision,
        bytes_up: int = 0,
        bytes_down: int = 0,
        duration_ms: float = 0.0,
    ) -> None:
        with self._lock:
            self._seq += 1
            entry = {
                "v": LEDGER_VERSION,
                "seq": self._seq,
                "step": self._step,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "kind": kind,
                "host": host,
                "port": port,
                "address": decision.address,
                "decision": "allow" if decision.allowed else "deny",
                "rule": decision.rule,
                "reason": decision.reason,
                "bytes_up": bytes_up,
                "bytes_down": bytes_down,
                "duration_ms": round(duration_ms, 3),
            }
            line = json.dumps(entry, ensure_ascii=True) + "\n"
            if self._file.closed:  # a connection outlived the shutdown's join timeout
                sys.stderr.write(f"agentos proxy: ledger closed, entry not recorded: {line}")
                return
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every entry of a ledger; ValueError naming file:line for anything malformed (a
    missing or extra field, a wrong type, a seq out of order, a partial last line)."""
    entries: list[dict[str, Any]] = []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError(f"{path}:{text.count(chr(10)) + 1}: partial last line (no newline)")
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc}") from None
        _check_entry(entry, where)
        if entry["seq"] != number:
            raise ValueError(f"{where}: seq {entry['seq']} where {number} was expected")
        entries.append(entry)
    return entries


def redecide(entry: dict[str, Any], allowlist: Allowlist) -> NetDecision:
    """Decide a recorded entry again under `allowlist`, from its recorded address (no
    resolution). A gate compares the result with the entry's decision, rule and address.
    Entries the proxy refused for the request's shape (rule net.syntax: a Host header
    naming another host, smuggling framing, userinfo...) stay refused: the ledger does not
    keep the request head, and a refusal never needs the policy's support."""
    if entry["rule"] == RULE_SYNTAX:
        return NetDecision(False, RULE_SYNTAX, "refused for the request's shape", None)
    try:
        host = normalize_host(entry["host"])
    except ValueError as exc:
        return NetDecision(False, RULE_SYNTAX, str(exc), None)
    if host != entry["host"] or entry["port"] is None:
        reason = f"recorded host {entry['host']!r} is not canonical or has no port"
        return NetDecision(False, RULE_SYNTAX, reason, None)
    addresses = [entry["address"]] if entry["address"] is not None else []
    return decide(allowlist, host, entry["port"], addresses)


def _check_entry(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: an entry must be a JSON object")
    if set(entry) != set(FIELDS):
        missing = sorted(set(FIELDS) - set(entry))
        extra = sorted(set(entry) - set(FIELDS))
        raise ValueError(f"{where}: fields differ (missing {missing}, unexpected {extra})")
    for name, types in FIELDS.items():
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{where}: field {name!r} has the wrong type ({value!r})")
    if entry["v"] != LEDGER_VERSION:
        raise ValueError(f"{where}: ledger version {entry['v']}, expected {LEDGER_VERSION}")
    if entry["kind"] not in KINDS or entry["decision"] not in DECISIONS:
        raise ValueError(f"{where}: kind {entry['kind']!r} / decision {entry['decision']!r}")
    if min(entry["bytes_up"], entry["bytes_down"]) < 0 or entry["duration_ms"] < 0:
        raise ValueError(f"{where}: negative byte count or duration")
    try:
        dt.datetime.fromisoformat(entry["time"])
    except ValueError:
        raise ValueError(f"{where}: time {entry['time']!r} is not ISO 8601") from None
