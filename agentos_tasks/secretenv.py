"""Secrets a tool receives (`tools[i].secrets`): handed over through the environment only,
redacted from what is written, and never allowed into sealed evidence.

The values come from the host environment of the invocation; they are never written
anywhere (not in the tape, a manifest, an argv or a config file). `redact` runs on every
transcript and log before it is written or digested; `leaks` scans files (their bytes,
names and symlink targets) for any value, and the executor refuses to land (seal) a run
in which one is found.

Each value is looked for as written and in the encodings a careless or naive tool would
use: reversed, hex (either case), and base64 (standard and URL-safe, at each of the three
byte alignments, so a key inside a longer base64 text is found too). A tool that holds a
key and wants it out can always encode it some other way (split it, xor it, send it to an
allowed host): the scan catches accidents and the obvious, the boundary is that a key
goes only to the tool the policy names.
"""

from __future__ import annotations

import base64
import os
import stat
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


_MIN_ENCODED = 8  # shorter values are looked for only as written
_MIN_CORE = 10  # the shortest base64 core worth matching


def variants(value: bytes) -> list[bytes]:
    """`value` and the encodings of it that the scan and redaction also look for."""
    if len(value) < _MIN_ENCODED:
        return [value] if value else []
    found = [value, value[::-1], value.hex().encode(), value.hex().upper().encode()]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            text = encode(b"\0" * shift + value).rstrip(b"=")
            # the characters fixed by the value alone, wherever it sits in longer data
            core = text[(4 if shift else 0):-3]
            if len(core) >= _MIN_CORE:
                found.append(core)
    return list(dict.fromkeys(found))


def redact(data: bytes, values: Mapping[str, bytes]) -> bytes:
    """`data` with every secret value (and its encodings, `variants`) replaced by
    [REDACTED:NAME], longest first, so a secret that contains another is replaced whole."""
    patterns = sorted(((variant, name) for name, value in values.items()
                       for variant in variants(value)), key=lambda item: -len(item[0]))
    for variant, name in patterns:
        data = data.replace(variant, REDACTED.format(name=name).encode())
    return data


def redact_file(path: Path, values: Mapping[str, bytes]) -> bytes:
    """Redact `path` in place (only rewritten when something was found); its new bytes."""
    data = path.read_bytes()
    clean = redact(data, values)
    if clean != data:
        from agentos_tasks.fsutil import atomic_write

        atomic_write(path, clean)
    return clean


def _in(data: bytes, wanted: Mapping[str, list[bytes]]) -> set[str]:
    return {name for name, forms in wanted.items() if any(form in data for form in forms)}


def file_leaks(path: Path, values: Mapping[str, bytes]) -> list[str]:
    """Names of the secrets found at `path`: in a symlink's target, or in a regular file's
    bytes (read in chunks with an overlap, never through a symlink or from a FIFO)."""
    wanted = {name: variants(value) for name, value in values.items() if value}
    if not wanted:
        return []
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return sorted(_in(os.fsencode(os.readlink(path)), wanted))
        if not stat.S_ISREG(info.st_mode):
            return []
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    overlap = max(len(form) for forms in wanted.values() for form in forms) - 1
    found: set[str] = set()
    tail = b""
    with open(fd, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            window = tail + chunk
            found |= _in(window, wanted)
            tail = window[-overlap:] if overlap else b""
    return sorted(found)


def leaks(root: Path, files: Iterable[str], values: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """(file, secret name) for every root-relative file whose name, symlink target or
    bytes hold a value (or an encoding of it)."""
    if not values:
        return []
    wanted = {name: variants(value) for name, value in values.items() if value}
    found: list[tuple[str, str]] = []
    for rel in files:
        names = set(file_leaks(root / rel, values)) | _in(os.fsencode(rel), wanted)
        found += [(rel, name) for name in sorted(names)]
    return found


def refuse_leaks(found: list[tuple[str, str]], what: str) -> None:
    """The one error for a secret found in evidence: names, never values."""
    if found:
        shown = ", ".join(f"{rel} ({name})" for rel, name in found[:5])
        raise AgentosError(
            f"{what}: a secret's value is in {len(found)} file(s): {shown}", code=EXIT_POLICY,
            hint="the run is not sealed; remove the value (rotate the key if it left this "
                 "machine) and re-run with run=NEW")


__all__ = ["REDACTED", "file_leaks", "leaks", "redact", "redact_file", "refuse_leaks",
           "secret_names", "secret_values", "variants"]
