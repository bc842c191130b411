"""Secrets a tool receives (`tools[i].secrets`): handed over through the environment only,
redacted from what is written, and never allowed into sealed evidence.

The values come from the host environment of the invocation; they are never written
anywhere (not in the tape, a manifest, an argv or a config file). `redact` runs on every
transcript and log before it is written or digested; `leaks` scans files for any value,
and the executor refuses to land (seal) a run in which one is found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentos_tasks.errors import EXIT_POLICY, AgentosError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from agentos_tasks.policy.schema import Policy

REDACTED = "[REDACTED:{name}]"
_CHUNK = 1 << 20


def secret_names(policy: Policy) -> tuple[str, ...]:
    """Every name any tools rule lists under `secrets:`."""
    return tuple(dict.fromkeys(name for rule in policy.tools for name in rule.secrets))


def secret_values(names: Iterable[str], environ: Mapping[str, str]) -> dict[str, bytes]:
    """name -> value bytes of the secrets set (and non-empty) in `environ`."""
    return {name: environ[name].encode("utf-8", "surrogateescape") for name in names
            if environ.get(name)}


def redact(data: bytes, values: Mapping[str, bytes]) -> bytes:
    """`data` with every secret value replaced by [REDACTED:NAME] (longest first, so a
    secret that contains another is replaced whole)."""
    for name, value in sorted(values.items(), key=lambda item: -len(item[1])):
        if value:
            data = data.replace(value, REDACTED.format(name=name).encode())
    return data


def redact_file(path: Path, values: Mapping[str, bytes]) -> bytes:
    """Redact `path` in place (only rewritten when something was found); its new bytes."""
    data = path.read_bytes()
    clean = redact(data, values)
    if clean != data:
        from agentos_tasks.fsutil import atomic_write

        atomic_write(path, clean)
    return clean


def file_leaks(path: Path, values: Mapping[str, bytes]) -> list[str]:
    """Names of the secrets whose value occurs in the file at `path` (read in chunks with
    an overlap, so a value across a chunk boundary is found)."""
    wanted = {name: value for name, value in values.items() if value}
    if not wanted:
        return []
    overlap = max(len(v) for v in wanted.values()) - 1
    found: set[str] = set()
    tail = b""
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                window = tail + chunk
                found.update(n for n, v in wanted.items() if v in window)
                tail = window[-overlap:] if overlap else b""
    except OSError:
        return []
    return sorted(found)


def leaks(root: Path, files: Iterable[str], values: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """(file, secret name) for every run-relative file under `root` holding a value."""
    if not values:
        return []
    return [(rel, name) for rel in files for name in file_leaks(root / rel, values)]


def refuse_leaks(found: list[tuple[str, str]], what: str) -> None:
    """The one error for a secret found in evidence: names, never values."""
    if found:
        shown = ", ".join(f"{rel} ({name})" for rel, name in found[:5])
        raise AgentosError(
            f"{what}: a secret's value is in {len(found)} file(s): {shown}", code=EXIT_POLICY,
            hint="the run is not sealed; remove the value (rotate the key if it left this "
                 "machine) and re-run with run=NEW")


__all__ = ["REDACTED", "file_leaks", "leaks", "redact", "redact_file", "refuse_leaks",
           "secret_names", "secret_values"]
