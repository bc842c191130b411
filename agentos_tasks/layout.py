"""Where a run's files live (RunPaths) and which of them are evidence: the one place that
lists artifacts, for the executor's checksums, the signature's subjects, the verifier's
coverage check and the report's digest table.

The lists differ on purpose (checksums cover everything a step produced, the signature
also binds the checksums and reports, the report shows the few a reviewer checks first),
but each is defined here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

# audit/checksums.json and SHA256SUMS: every file below these dirs, and these files.
CHECKSUMMED_DIRS: tuple[str, ...] = ("patches", "steps", "logs", "tools", "network",
                                     "audit/inputs")
CHECKSUMMED_FILES: tuple[str, ...] = ("audit/request.yaml", "audit/policy.yaml",
                                      "audit/request.json", "audit/answers.yaml",
                                      "audit/rollback_proof.json")

# Every file of a run that the signature binds (those that exist). Globs are relative to
# the run directory. `verify_signature` also uses them the other way round: a file that
# matches one of them but is not a subject (a patch added after signing) fails.
SUBJECT_GLOBS: tuple[str, ...] = (
    "patches/*.patch",
    "audit/run_tape.jsonl",
    "audit/tape_head.json",
    "audit/checksums.json",
    "audit/SHA256SUMS",
    "audit/rollback_proof.json",
    "execution_result.json",
    "reports/gates.json",
    "reports/gates.xml",
    "reports/report.md",
    "reports/report.html",
    "audit/request.yaml",
    "audit/request.json",
    "audit/inputs/*",
    "audit/policy.yaml",
    "audit/answers.yaml",
    "steps/*.json",
    "logs/*",
    "tools/*/*",
    "network/*",
    "attestations/*",
)

# Without these a statement says nothing worth signing; sign refuses, verify fails.
REQUIRED_SUBJECTS: tuple[str, ...] = (
    "execution_result.json",
    "audit/run_tape.jsonl",
    "reports/gates.json",
)

# Evidence a verifier relies on; each must be a signed subject or listed in the signed
# checksums.json. `.state/`, `worktree/`, `reports/` (regenerated) and `signature/` are not.
# attestations/ (the executor's signatures, attest.executor) is signed directly: its tape
# head envelope is made again after checksums.json, which therefore cannot list it.
EVIDENCE_DIRS: tuple[str, ...] = ("audit", "steps", "patches", "logs", "tools", "network",
                                  "attestations")
EVIDENCE_FILES: tuple[str, ...] = ("execution_result.json",)
# What the run signature does not bind, by design, and says so in its statement: doit's
# and the gates' caches and the run lock (.state/), the run's worktree (its result is the
# commits), and the signature files themselves. Anything else in the run directory must
# be a signed subject or listed in the signed checksums.json.
UNSIGNED_DIRS: tuple[str, ...] = (".state", "worktree")
UNSIGNED_FILES: tuple[str, ...] = ("signature/envelope.dsse.json", "signature/statement.json",
                                   "signature/test-result.dsse.json", "signature/vsa.dsse.json")

# Artifacts whose digests the report lists, in the order a reviewer checks them.
KEY_ARTIFACTS: tuple[str, ...] = (
    "audit/tape_head.json",
    "audit/run_tape.jsonl",
    "audit/checksums.json",
    "audit/SHA256SUMS",
    "execution_result.json",
    "reports/gates.json",
    "audit/request.yaml",
    "audit/policy.yaml",
)


def artifact_files(run_dir: Path) -> list[str]:
    """Run-relative paths of every artifact the checksums cover (sorted)."""
    found = [f for f in CHECKSUMMED_FILES if (run_dir / f).is_file()]
    for sub in CHECKSUMMED_DIRS:
        base = run_dir / sub
        if base.is_dir():
            found += [p.relative_to(run_dir).as_posix() for p in base.rglob("*") if p.is_file()]
    return sorted(found)


def evidence_files(run_dir: Path) -> list[str]:
    """Run-relative paths of every file in the evidence dirs and files (sorted)."""
    found = [f for f in EVIDENCE_FILES if (run_dir / f).is_file()]
    for sub in EVIDENCE_DIRS:
        base = run_dir / sub
        if base.is_dir():
            found += [p.relative_to(run_dir).as_posix() for p in base.rglob("*") if p.is_file()]
    return sorted(found)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def state(self) -> Path:
        return self.root / ".state"

    @property
    def worktree(self) -> Path:
        return self.root / "worktree"

    @property
    def run_git_dir(self) -> Path:
        """The run's private git dir: the worktree's objects, index and HEAD (see
        git.init_private_repo). The target's objects are its read-only alternate, so a
        step sees only what the target holds and what this run made."""
        return self.state / "repo.git"

    @property
    def tape(self) -> Path:
        return self.audit / "run_tape.jsonl"

    @property
    def tape_head(self) -> Path:
        return self.audit / "tape_head.json"

    @property
    def checksums(self) -> Path:
        return self.audit / "checksums.json"

    @property
    def sha256sums(self) -> Path:
        return self.audit / "SHA256SUMS"

    @property
    def execution_result(self) -> Path:
        return self.root / "execution_result.json"

    @property
    def base_record(self) -> Path:
        return self.state / "base.json"

    @property
    def applied_record(self) -> Path:
        return self.state / "applied.json"

    @property
    def policy_record(self) -> Path:
        return self.state / "policy.json"

    @property
    def gates_json(self) -> Path:
        return self.root / "reports" / "gates.json"

    def manifest(self, step_id: str) -> Path:
        return self.root / "steps" / f"{step_id}.json"

    def patch(self, step_id: str) -> Path:
        return self.root / "patches" / f"{step_id}.patch"

    def log(self, step_id: str) -> Path:
        return self.root / "logs" / f"{step_id}.out"

    def tool_dir(self, step_id: str) -> Path:
        return self.root / "tools" / step_id

    def network_ledger(self, step_id: str) -> Path:
        """Every connection a networked step tried, as the proxy recorded it (JSON lines)."""
        return self.root / "network" / f"{step_id}.jsonl"

    def tool_home(self, step_id: str) -> Path:
        """A tool step's scratch dir on the host (not evidence): its raw output before
        secrets are redacted from it."""
        return self.state / "tools" / step_id

    def spec(self, step_id: str) -> Path:
        return self.state / "specs" / f"{step_id}.json"
