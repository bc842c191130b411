"""Real runs, built once per test session, restored in place before every test.

Artifacts record absolute paths (repo, worktree), so a tampering test must work on the
very directories the run was built in: each `Built` run keeps a pristine copy of its
whole tmp root (request, policy, target repo, outputs) and `restore()` puts it back at
the same paths. Building costs a few `doit run` invocations per session; restoring is
a directory copy.

Helpers for careful forgers: `read_events` / `rechain` rewrite the tape with a
consistent hash chain and tape_head.json; `reseal` also recomputes every digest that
refers to a manifest or patch (manifests, step_end, execution_result, checksums,
SHA256SUMS, run_end) so only the gates' own recomputation can catch the tamper.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from agentos_tasks.fsutil import canonical_json  # noqa: E402
from agentos_tasks.gates.common import FAIL, NA, PASS, GateResult  # noqa: E402
from agentos_tasks.gates.runner import REGISTRY as GATE_REGISTRY  # noqa: E402
from agentos_tasks.gates.runner import evaluate  # noqa: E402
from agentos_tasks.layout import artifact_files  # noqa: E402

GENESIS = "0" * 64

PERMISSIVE_POLICY = """\
version: 1
id: test-permissive
operations: [write, delete, patch, run]
paths:
  allow: ["**"]
  deny: [".git/**", "secrets/**"]
commands:
  - {id: py, argv: [python]}
network: false
isolation: best-effort
env: [PATH, LANG]
"""

GOOD_REQUEST = """\
version: 1
id: good-run
repo: ./repo
init_repo: true
branch: main
policy: ./policy.yaml
steps:
  - id: s1
    message: "s1: add docs"
    write: {path: docs/a.md, content: "alpha\\n"}
  - id: s2
    message: "s2: nested module"
    write: {path: src/pkg/deep/mod.py, content: "X = 1\\n"}
  - id: s3
    message: "s3: scratch file"
    write: {path: notes.txt, content: "temp\\n"}
  - id: s4
    message: "s4: same docs again (unchanged)"
    write: {path: docs/a.md, content: "alpha\\n"}
  - id: s5
    message: "s5: delete the scratch file"
    delete: {path: notes.txt}
  - id: s6
    message: "s6: write README section"
    write: {path: README.md, content: "# repo\\n\\nMore.\\n"}
  - id: s7
    message: "s7: generate a file"
    run: [python, -c, "open('gen.txt', 'w').write('g')"]
"""

DENY_POLICY = """\
version: 1
id: test-deny-docs
operations: [write, delete]
paths:
  allow: ["**"]
  deny: [{id: no-docs, glob: "docs/**"}]
isolation: best-effort
"""

DENIED_REQUEST = """\
version: 1
id: denied-run
repo: ./repo
branch: main
policy: ./policy.yaml
steps:
  - id: d1
    write: {path: src/ok.txt, content: "ok\\n"}
  - id: d2
    write: {path: docs/no.md, content: "no\\n"}
"""

QUESTIONS_REQUEST = """\
version: 1
id: {run_id}
repo: ./repo
init_repo: true
branch: main
policy: ./policy.yaml
questions:
  - {{id: q1, text: "May the scratch file be deleted?"}}
  - {{id: q2, text: "Is src/ the right place?"}}
steps:
  - id: w1
    message: "w1: scratch"
    write: {{path: scratch.txt, content: "x\\n"}}
  - id: w2
    message: "w2: module"
    write: {{path: src/m.py, content: "M = 2\\n"}}
  - id: del
    message: "del: remove scratch"
    delete: {{path: scratch.txt}}
"""

APPROVAL_POLICY = PERMISSIVE_POLICY + "require_approval: [delete]\n"

ANSWERS = """\
answers:
  q1: {by: alice@example.com, at: "2026-11-25T10:00:00Z", text: "yes, delete it"}
  q2: {by: bob@example.com, at: "2026-11-25T10:05:00Z", text: "yes, src/ is fine"}
"""


# ------------------------------------------------------------------ running doit


def doit(root: Path, command: str, request: Path, outputs: Path,
         *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m doit -f <project>/dodo.py <command> request=.. outputs=..` in `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.pop("AGENTOS_SANDBOX", None)
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), command,
         f"request={request}", f"outputs={outputs}", *extra],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Plain git in a test repo with a fixed identity and no user config."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(repo),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_AUTHOR_NAME": "mallory", "GIT_AUTHOR_EMAIL": "m@x",
           "GIT_COMMITTER_NAME": "mallory", "GIT_COMMITTER_EMAIL": "m@x"}
    out = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", *args], cwd=repo, env=env,
                         capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"git {args}: {out.stderr}")
    return out.stdout.strip()


@dataclass
class Built:
    """One real run: its tmp root (request, policy, repo, outputs) and a pristine copy."""

    root: Path
    request: Path
    outputs: Path
    run_dir: Path
    repo: Path
    pristine: Path

    def snapshot(self) -> None:
        if self.pristine.exists():
            shutil.rmtree(self.pristine)
        shutil.copytree(self.root, self.pristine, symlinks=True)

    def restore(self) -> Built:
        """Put the pristine state back at the same absolute paths."""
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.copytree(self.pristine, self.root, symlinks=True, dirs_exist_ok=True)
        return self

    def gates(self, command: str = "gates", *extra: str) -> subprocess.CompletedProcess[str]:
        return doit(self.root, command, self.request, self.outputs, *extra)


def _new_run(tmp: Path, run_id: str, request_text: str, policy_text: str) -> Built:
    root = tmp / "root"
    root.mkdir(parents=True)
    (root / "policy.yaml").write_text(policy_text)
    request = root / "request.yaml"
    request.write_text(request_text)
    outputs = root / "outputs"
    return Built(root, request, outputs, outputs / run_id, root / "repo", tmp / "pristine")


def _must(result: subprocess.CompletedProcess[str], ok: bool, what: str) -> None:
    if (result.returncode == 0) != ok:
        raise AssertionError(f"{what}: exit {result.returncode}\n{result.stdout}\n"
                             f"{result.stderr}")


# ------------------------------------------------------------------ session builds


@pytest.fixture(scope="session", autouse=True)
def executor_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The executor key of every run of the session (attest.executor): outside every run
    and repository, made once; subprocesses inherit $AGENTOS_EXECUTOR_KEY, also those that
    set HOME to somewhere else."""
    from agentos_tasks.attest.executor import KEY_ENV_VAR, executor_signer

    key = tmp_path_factory.mktemp("executor-key") / "executor.key"
    executor_signer(key)
    before = os.environ.get(KEY_ENV_VAR)
    os.environ[KEY_ENV_VAR] = str(key)
    yield key
    if before is None:
        os.environ.pop(KEY_ENV_VAR, None)
    else:
        os.environ[KEY_ENV_VAR] = before


@pytest.fixture(scope="session")
def _good_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    built = _new_run(tmp_path_factory.mktemp("good"), "good-run", GOOD_REQUEST,
                     PERMISSIVE_POLICY)
    _must(doit(built.root, "run", built.request, built.outputs), True, "good run")
    built.snapshot()
    return built


@pytest.fixture
def good_run(_good_build: Built) -> Iterator[Built]:
    """An applied run with 5 changed steps (write, nested write, delete) and 1 unchanged."""
    yield _good_build.restore()


@pytest.fixture(scope="session")
def _denied_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    built = _new_run(tmp_path_factory.mktemp("denied"), "denied-run", DENIED_REQUEST,
                     DENY_POLICY)
    built.repo.mkdir()
    git(built.repo, "init", "-q", "-b", "main")
    (built.repo / "README.md").write_text("# target\n")
    git(built.repo, "add", "README.md")
    git(built.repo, "commit", "-q", "-m", "initial")
    _must(doit(built.root, "run", built.request, built.outputs), False, "denied run")
    built.snapshot()
    return built


@pytest.fixture
def denied_run(_denied_build: Built) -> Iterator[Built]:
    """A request the policy denies (docs/** by rule no-docs); the repo existed before."""
    yield _denied_build.restore()


@pytest.fixture(scope="session")
def _blocked_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    built = _new_run(tmp_path_factory.mktemp("blocked"), "blocked-run",
                     QUESTIONS_REQUEST.format(run_id="blocked-run"), PERMISSIVE_POLICY)
    _must(doit(built.root, "run", built.request, built.outputs), False, "blocked run")
    built.snapshot()
    return built


@pytest.fixture
def blocked_run(_blocked_build: Built) -> Iterator[Built]:
    """A request with two questions and no answers: stopped before any step."""
    yield _blocked_build.restore()


@pytest.fixture(scope="session")
def _answered_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Blocked, then answered (apply waits for the delete's approval), then approved."""
    built = _new_run(tmp_path_factory.mktemp("answered"), "answered-run",
                     QUESTIONS_REQUEST.format(run_id="answered-run"), APPROVAL_POLICY)
    _must(doit(built.root, "run", built.request, built.outputs), False, "answered: blocked")
    answers = built.root / "answers.yaml"
    answers.write_text(ANSWERS)
    _must(doit(built.root, "run", built.request, built.outputs, f"answers={answers}"), False,
          "answered: waiting for approval")
    manifest = json.loads((built.run_dir / "steps" / "del.json").read_text())
    answers.write_text(ANSWERS + "approvals:\n  del: {by: carol@example.com, "
                       f"at: \"2026-11-25T11:00:00Z\", text: \"reviewed\", "
                       f"patch_sha256: \"{manifest['patch_sha256']}\"}}\n")
    _must(doit(built.root, "run", built.request, built.outputs, f"answers={answers}"), True,
          "answered: approved")
    built.snapshot()
    return built


@pytest.fixture
def answered_run(_answered_build: Built) -> Iterator[Built]:
    """Questions answered after a block; the delete step approved by its patch sha256."""
    yield _answered_build.restore()


# ------------------------------------------------------------------ gate helpers


GATES_BY_ID = {gate.id: gate for gate in GATE_REGISTRY}


def gate(run_dir: Path, gate_id: str) -> GateResult:
    return evaluate(GATES_BY_ID[gate_id], run_dir)


def assert_fail(run_dir: Path, gate_id: str, *reason_parts: str) -> GateResult:
    result = gate(run_dir, gate_id)
    assert result.status == FAIL, f"{gate_id} is {result.status}: {result.reason}"
    for part in reason_parts:
        assert part in result.reason, f"{gate_id} reason {result.reason!r} lacks {part!r}"
    return result


def assert_pass(run_dir: Path, gate_id: str) -> GateResult:
    result = gate(run_dir, gate_id)
    assert result.status == PASS, f"{gate_id} is {result.status}: {result.reason}"
    return result


def assert_na(run_dir: Path, gate_id: str) -> GateResult:
    result = gate(run_dir, gate_id)
    assert result.status == NA, f"{gate_id} is {result.status}: {result.reason}"
    return result


# ------------------------------------------------------------------ forger's helpers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    tape = run_dir / "audit" / "run_tape.jsonl"
    return [json.loads(line) for line in tape.read_bytes().splitlines()]


def rechain(run_dir: Path, events: list[dict[str, Any]]) -> None:
    """Rewrite the tape from `events` with contiguous seq, a valid prev chain and a
    matching tape_head.json, byte for byte as agentos_tasks.tape.encode_event writes lines
    (keys: seq, ts, event, fields..., prev; compact separators; UTF-8)."""
    prev = GENESIS
    lines = []
    for seq, event in enumerate(events):
        record: dict[str, Any] = {"seq": seq, "ts": event.get("ts", "2026-01-01T00:00:00+00:00"),
                                  "event": event["event"]}
        record.update({k: v for k, v in event.items() if k not in ("seq", "ts", "event", "prev")})
        record["prev"] = prev
        line = json.dumps(record, sort_keys=False, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        lines.append(line)
        prev = sha256(line)
    (run_dir / "audit" / "run_tape.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    write_json(run_dir / "audit" / "tape_head.json", {"count": len(lines), "head": prev})


def write_json(path: Path, obj: Any) -> None:
    path.write_bytes(canonical_json(obj))


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def reseal(run_dir: Path, events: list[dict[str, Any]] | None = None) -> None:
    """Recompute every digest that refers to manifests and patches, then rechain.

    Order as the executor's: manifest.patch_sha256 <- patch file; step_end digests <-
    manifest and patch; execution_result steps <- manifests; checksums + SHA256SUMS <-
    artifacts; run_end <- execution_result and checksums.
    """
    events = read_events(run_dir) if events is None else events
    result_path = run_dir / "execution_result.json"
    result = read_json(result_path)
    manifests: dict[str, dict[str, Any]] = {}
    for manifest_path in sorted((run_dir / "steps").glob("*.json")):
        manifest = read_json(manifest_path)
        patch = run_dir / "patches" / f"{manifest['step']}.patch"
        if manifest.get("status") == "changed" and patch.is_file():
            manifest["patch_sha256"] = sha256(patch.read_bytes())
        write_json(manifest_path, manifest)
        manifests[manifest["step"]] = manifest
    for event in events:
        if event["event"] == "step_end" and event["step"] in manifests:
            manifest = manifests[event["step"]]
            event["manifest_sha256"] = sha256(
                (run_dir / "steps" / f"{event['step']}.json").read_bytes())
            event["patch_sha256"] = manifest["patch_sha256"]
            event["files"] = [{k: f[k] for k in ("path", "status", "sha256")}
                              for f in manifest["files"]]
    for entry in result.get("steps", []):
        manifest = manifests.get(entry["id"])
        if manifest is not None:
            entry["patch_sha256"] = manifest["patch_sha256"]
            entry["files"] = [{k: f[k] for k in ("path", "status", "sha256")}
                              for f in manifest["files"]]
    write_json(result_path, result)
    sums_path = run_dir / "audit" / "checksums.json"
    if sums_path.is_file():
        update_checksums(run_dir)
    for event in events:
        if event["event"] == "run_end" and event.get("status") == "applied":
            event["execution_result_sha256"] = sha256(result_path.read_bytes())
            if sums_path.is_file():
                event["checksums_sha256"] = sha256(sums_path.read_bytes())
    rechain(run_dir, events)


def update_checksums(run_dir: Path) -> None:
    """checksums.json artifacts + SHA256SUMS recomputed from the files as they are now."""
    sums_path = run_dir / "audit" / "checksums.json"
    sums = read_json(sums_path)
    sums["artifacts"] = {rel: sha256((run_dir / rel).read_bytes())
                         for rel in artifact_files(run_dir)}
    write_json(sums_path, sums)
    (run_dir / "audit" / "SHA256SUMS").write_text(
        "".join(f"{d}  {p}\n" for p, d in sorted(sums["artifacts"].items())))
