"""Signing keys: `agentos keygen` writes agentos.key (PEM PKCS#8, 0600) and agentos.pub
(securesystemslib key JSON); loading accepts those and openssl-made PEM keys."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.signer import CryptoSigner, Key, SSlibKey  # type: ignore[attr-defined]

from agentos_tasks.errors import EXIT_USAGE, AgentosError
from agentos_tasks.fsutil import (
    fsync_dir,
)

_KEY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _write_key_file(path: Path, data: bytes, *, mode: int) -> None:
    """Atomic write whose temp file is 0600 from its first byte (mkstemp), then `mode`.

    fsutil.atomic_write creates its temp file with the umask's mode, which would leave a
    private key world-readable for a moment.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def keygen(out_dir: Path, *, name: str = "agentos", overwrite: bool = False) -> tuple[Path, Path]:
    """Create an ed25519 key pair `<name>.key` (PEM PKCS#8, 0600) and `<name>.pub` (JSON).

    Refuses to replace existing files: silently overwriting a signing key would orphan
    every signature made with it.
    """
    if not _KEY_NAME.fullmatch(name):
        raise AgentosError(f"invalid key name {name!r}", hint="use letters, digits, _ . -")
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub"
    existing = [path for path in (key_path, pub_path) if path.exists() or path.is_symlink()]
    if existing and not overwrite:
        raise AgentosError(
            f"refusing to overwrite existing key file(s): {', '.join(map(str, existing))}",
            where=str(existing[0]),
            hint="move them away, pick another --out directory, or pass --force",
            code=EXIT_USAGE,
        )
    signer = CryptoSigner.generate_ed25519()
    public_json = json.dumps(
        {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}, indent=2,
        sort_keys=True,
    )
    _write_key_file(key_path, signer.private_bytes, mode=0o600)
    _write_key_file(pub_path, (public_json + "\n").encode("ascii"), mode=0o644)
    return key_path, pub_path


def load_public_key(pub_path: Path) -> Key:
    """Load a public key written by `keygen` (securesystemslib JSON) or a PEM public key."""
    try:
        raw = pub_path.read_bytes()
    except OSError as exc:
        raise AgentosError(f"cannot read public key: {exc.strerror}", where=str(pub_path),
                           hint="pass the agentos.pub written by `agentos keygen`") from exc
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return SSlibKey.from_crypto(load_pem_public_key(raw))
        key_dict = json.loads(raw)
        if not isinstance(key_dict, dict):
            raise TypeError("not a JSON object")
        keyid = key_dict.pop("keyid")
        key = Key.from_dict(keyid, key_dict)
        if key.keytype == "ed25519":
            # from_dict does not look at the key bytes; a corrupt key must not pass as
            # "signature invalid" later, it is an unusable input.
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
        return key
    except (ValueError, KeyError, TypeError, sslib_exceptions.Error) as exc:
        raise AgentosError(
            f"not a usable public key ({type(exc).__name__}: {exc})",
            where=str(pub_path),
            hint="expected the securesystemslib key JSON written by `agentos keygen` "
                 "or a PEM public key",
        ) from exc


def load_signer(key_path: Path) -> CryptoSigner:
    """Load a PEM PKCS#8 private key as a securesystemslib signer."""
    try:
        raw = key_path.read_bytes()
    except OSError as exc:
        raise AgentosError(f"cannot read signing key: {exc.strerror}", where=str(key_path),
                           hint="create one with `agentos keygen`") from exc
    try:
        return CryptoSigner(load_pem_private_key(raw, password=None))
    except (ValueError, TypeError, sslib_exceptions.Error) as exc:
        raise AgentosError(
            f"not a usable private key ({type(exc).__name__}: {exc})",
            where=str(key_path),
            hint="expected an unencrypted PEM PKCS#8 key such as `agentos keygen` writes",
        ) from exc
