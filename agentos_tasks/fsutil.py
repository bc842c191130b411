"""Durable file writes: artifacts are replaced atomically and fsync'd, so after a crash a
file is either the old version or the new one, never half of each."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` via a temp file + rename: readers and a crashed process see
    the old or the new bytes, never a mix. `durable` adds fsync of the file and directory
    (power loss); git's own objects are not fsync'd by default, so per-step artifacts use
    the rename alone and only the final records and the tape pay for fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes (sorted keys, 2-space indent, trailing newline) for artifacts."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace")  # non-UTF-8 names: JSON \udcXX escapes


def write_json(path: Path, obj: Any, *, durable: bool = False) -> None:
    atomic_write(path, canonical_json(obj), durable=durable)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Rewrite only when the bytes differ, so doit's file_dep sees no change otherwise."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, data)
    return True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
