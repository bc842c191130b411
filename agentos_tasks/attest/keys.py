"""Signing keys: `agentos keygen` writes agentos.key (PEM PKCS#8, 0600), agentos.pub
(securesystemslib key JSON) and agentos.pub.pem (SubjectPublicKeyInfo); loading accepts
those and openssl-made PEM keys. Key ids are the ones the Go DSSE/in-toto tooling derives
(`interop_keyid`), so the PEM key verifies an envelope there too."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
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


# go-securesystemslib gives every key it loads (PEM or JSON without a keyid) this list;
# its key id is sha256 over the canonical JSON that includes it.
GO_KEYID_HASH_ALGORITHMS = ["sha256", "sha512"]


def interop_keyid(public_key: Any) -> str | None:
    """The key id the Go DSSE and in-toto tooling derives for an ed25519 key loaded from
    PEM (signerverifier.LoadKey -> calculateKeyID: sha256 of the canonical JSON of
    keyid_hash_algorithms, keytype, keyval.public (hex) and scheme). Every agentos key id
    is this one, so an envelope verifies there with the PEM form of the key. None for
    other key types (their default securesystemslib key id stays)."""
    if not isinstance(public_key, Ed25519PublicKey):
        return None
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    canonical = json.dumps({"keyid_hash_algorithms": GO_KEYID_HASH_ALGORITHMS,
                            "keytype": "ed25519", "keyval": {"public": raw},
                            "scheme": "ed25519"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _signer_for(private_key: Any) -> CryptoSigner:
    public = private_key.public_key()
    return CryptoSigner(private_key, SSlibKey.from_crypto(public, keyid=interop_keyid(public)))


def public_pem(signer: CryptoSigner) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo (openssl, Go, sigstore read it)."""
    key = load_pem_public_key(signer.public_key.keyval["public"].encode()) \
        if signer.public_key.keytype != "ed25519" else Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(signer.public_key.keyval["public"]))
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


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
    private = Ed25519PrivateKey.generate()
    signer = _signer_for(private)
    public_json = json.dumps(
        {"keyid": signer.public_key.keyid, **signer.public_key.to_dict(),
         "keyid_hash_algorithms": GO_KEYID_HASH_ALGORITHMS}, indent=2, sort_keys=True,
    )
    pem_path = out_dir / f"{name}.pub.pem"
    _write_key_file(key_path, private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                    NoEncryption()), mode=0o600)
    _write_key_file(pub_path, (public_json + "\n").encode("ascii"), mode=0o644)
    _write_key_file(pem_path, public_pem(signer), mode=0o644)
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
            pem = load_pem_public_key(raw)
            return SSlibKey.from_crypto(pem, keyid=interop_keyid(pem))
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
        return _signer_for(load_pem_private_key(raw, password=None))
    except (ValueError, TypeError, sslib_exceptions.Error) as exc:
        raise AgentosError(
            f"not a usable private key ({type(exc).__name__}: {exc})",
            where=str(key_path),
            hint="expected an unencrypted PEM PKCS#8 key such as `agentos keygen` writes",
        ) from exc
