"""DSSE signing of a run over an in-toto Statement v1, and offline verification.

The signed statement is the end product of a run: its subjects are the run's evidence
files (patches, tape, tape head, checksums, step manifests, execution result, gates
report, human report, recorded request/policy, tool packs) by sha256, and its predicate
is the run summary plus the gate results. A third party holding only the run directory
and the public key can re-check every digest, the signature, the tape chain and the
gates (`verify_signature`, `agentos verify`).

Formats (what `agentos keygen` writes, what `agentos verify` reads):
- private key `agentos.key`: PEM PKCS#8, unencrypted, mode 0600 (securesystemslib
  `CryptoSigner.private_bytes`; `openssl genpkey -algorithm ed25519` keys load too).
- public key `agentos.pub`: securesystemslib key JSON
  `{"keyid", "keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": <hex>}}`,
  loadable with `SSlibKey.from_dict`. A PEM SubjectPublicKeyInfo public key is accepted
  as well, for keys made with openssl.
- envelope `signature/envelope.dsse.json`: DSSE JSON as securesystemslib's
  `dsse.Envelope.to_dict()` writes it (payloadType, base64 payload, signatures with
  keyid and base64 sig); `signature/statement.json` is the decoded payload for humans.

PAE, envelope and statement layout all come from securesystemslib and
in-toto-attestation; nothing here re-implements them.

A run directory to sign or verify is read only through fsutil's bounded reader (no
symlink followed, a FIFO never waited on) and is refused as a whole when it holds
anything but directories and regular files (`plain_files_check`, `sign_run`).

Modules: keys.py (keygen, loading), statement.py (the Statement and `sign_run`),
checks.py (verify_signature and its checks), verify.py (`agentos verify`: signature,
coverage, then every gate).
"""

from agentos_tasks.attest.checks import (
    PLAIN_FILES_CHECK,
    Check,
    check_tape_chain,
    plain_files_check,
    render_checks,
    verification_passed,
    verify_signature,
)
from agentos_tasks.attest.keys import keygen, load_public_key, load_signer
from agentos_tasks.attest.statement import (
    ENVELOPE_RELPATH,
    GATE_STATUSES,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_RELPATH,
    build_statement,
    sign_run,
)

__all__ = [
    "ENVELOPE_RELPATH", "GATE_STATUSES", "PAYLOAD_TYPE", "PLAIN_FILES_CHECK", "PREDICATE_TYPE",
    "STATEMENT_RELPATH", "Check", "build_statement", "check_tape_chain", "keygen",
    "load_public_key", "load_signer", "plain_files_check", "render_checks", "sign_run",
    "verification_passed", "verify_signature",
]
