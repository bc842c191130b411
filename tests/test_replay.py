"""Real-world check for `patch` steps: replay upstream history, get upstream's tree hashes.

The fixture (tests/data/replay/, built by make_fixture.py) is the whole history of the small
public project DrTosh/rsyncez after its root commit: 14 linear commits exported with
`git format-patch --binary`. They add a 18,879-line json.hpp (a 21,437-line patch), turn
four files (json.hpp among them) from LF into CRLF, rename files, and add, modify and delete
a committed executable through binary hunks. Replayed as `patch` steps they must give
upstream's tree hash after every step and at the end: any lost CR, "fixed" whitespace,
dropped binary hunk or missed rename changes a hash.

`test_raw_git_floor` is the reference: plain `git am --keep-cr` reproduces every hash.
`test_fixture_detects_crlf_loss` proves the checks can fail (plain `git am` drops the CRs).
The executor tests run `python -m doit -f dodo.py run request=... outputs=...` on the
same series and assert the same hashes and bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DODO = PROJECT_ROOT / "dodo.py"
FIXTURE_DIR = Path(__file__).resolve().parent / "data" / "replay"
EXPECTED_JSON = FIXTURE_DIR / "expected.json"
BRANCH = "main"
EXECUTOR_TIMEOUT_S = 600

# A user whose global git config would corrupt a naive replay: CRLF conversion on add,
# whitespace "fixing" on apply, CR stripping in `git am`. DESIGN.md: the executor "never
# depends on the user's or CI's git config".
HOSTILE_GITCONFIG = """\
[core]
\tautocrlf = true
\teol = crlf
\tsafecrlf = false
[apply]
\twhitespace = fix
[am]
\tkeepcr = false
\tthreeWay = true
[diff]
\trenames = false
[user]
\tname = Hostile User
\temail = hostile@example.invalid
"""


def _load_expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXPECTED_JSON.read_text(encoding="utf-8"))
    return data


def _fixture_files(expected: dict[str, Any]) -> list[Path]:
    return [FIXTURE_DIR / expected["base"]["bundle"],
            *(FIXTURE_DIR / step["file"] for step in expected["steps"])]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_env(home: Path, global_config: Path | None = None) -> dict[str, str]:
    """An environment where only the given global config (default: none) reaches git."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1",
               GIT_CONFIG_GLOBAL=str(global_config) if global_config else os.devnull,
               LC_ALL="C")
    return env


def git(repo: Path, *args: str, env: dict[str, str]) -> bytes:
    """Run git in `repo` with hooks off; raise with git's stderr on failure."""
    proc = subprocess.run(["git", "-C", str(repo), "-c", "core.hooksPath=/dev/null", *args],
                          capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout


def git_text(repo: Path, *args: str, env: dict[str, str]) -> str:
    return git(repo, *args, env=env).decode().strip()


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    """The fixture's expectations; skip when the (uncommitted) patches are absent."""
    data = _load_expected()
    missing = [path.name for path in _fixture_files(data) if not path.is_file()]
    if missing:
        pytest.skip(f"replay fixture missing ({len(missing)} files, e.g. {missing[0]}): "
                    f"rebuild with {data['export']['rebuild']}")
    # Present but altered (e.g. a checkout that converted line endings): a failure, not a skip.
    bundle = FIXTURE_DIR / data["base"]["bundle"]
    assert _sha256(bundle) == data["base"]["bundle_sha256"], f"{bundle} altered"
    for step in data["steps"]:
        patch = FIXTURE_DIR / step["file"]
        assert _sha256(patch) == step["patch_sha256"], (
            f"{patch} differs from the exported bytes (line endings converted? "
            f"see tests/data/replay/.gitattributes)")
    return data


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    return git_env(tmp_path / "home")


def make_base_repo(tmp_path: Path, expected: dict[str, Any], env: dict[str, str]) -> Path:
    """A repository whose `main` is upstream's base commit (same commit and tree hash)."""
    target = tmp_path / "target"
    subprocess.run(["git", "init", "-q", str(target)], check=True, env=env)
    base = expected["base"]
    git(target, "fetch", "-q", "--no-tags", str(FIXTURE_DIR / base["bundle"]), base["ref"],
        env=env)
    git(target, "checkout", "-q", "-B", BRANCH, "FETCH_HEAD", env=env)
    git(target, "config", "user.name", "Replay Test", env=env)
    git(target, "config", "user.email", "replay@example.invalid", env=env)
    assert git_text(target, "rev-parse", "HEAD", env=env) == base["commit"]
    assert git_text(target, "rev-parse", "HEAD^{tree}", env=env) == base["tree"]
    return target


def _tree_listing(repo: Path, rev: str, env: dict[str, str]) -> str:
    return git_text(repo, "ls-tree", "-r", "-l", rev, env=env)


def assert_replayed(repo: Path, expected: dict[str, Any], env: dict[str, str],
                    rev: str = BRANCH) -> None:
    """One commit per patch on top of the base, each with upstream's tree; bytes exact."""
    base = expected["base"]["commit"]
    steps = expected["steps"]
    commits = git_text(repo, "rev-list", "--reverse", "--topo-order", f"{base}..{rev}",
                       env=env).split()
    assert len(commits) == len(steps), (
        f"{len(commits)} new commits on {rev}, expected one per patch ({len(steps)})")
    parent = base
    for commit, step in zip(commits, steps, strict=True):
        parents = git_text(repo, "rev-list", "--parents", "-n1", commit, env=env).split()[1:]
        assert parents == [parent], f"step {step['step']}: {commit} is not linear on {parent}"
        tree = git_text(repo, "rev-parse", f"{commit}^{{tree}}", env=env)
        assert tree == step["tree"], (
            f"step {step['step']} ({step['file']}, upstream {step['commit'][:10]} "
            f"{step['subject']!r}): tree {tree} != upstream {step['tree']}\n"
            f"our tree:\n{_tree_listing(repo, commit, env)}")
        parent = commit
    assert git_text(repo, "rev-parse", f"{rev}^{{tree}}", env=env) == expected["final_tree"]

    for check in expected["checks"]:
        commit = commits[check["after_step"] - 1]
        where = f"step {check['after_step']} {check['path']} ({check['kind']})"
        listing = git_text(repo, "ls-tree", commit, "--", check["path"], env=env).split()
        assert listing, f"{where}: missing"
        assert listing[0] == check["mode"], f"{where}: mode {listing[0]} != {check['mode']}"
        blob = git(repo, "cat-file", "blob", f"{commit}:{check['path']}", env=env)
        assert len(blob) == check["bytes"], f"{where}: {len(blob)} bytes != {check['bytes']}"
        crlf_count = blob.count(b"\r\n")
        assert crlf_count == check["crlf_count"], (
            f"{where}: {crlf_count} CRLF line ends != {check['crlf_count']}")
        assert hashlib.sha256(blob).hexdigest() == check["sha256"], f"{where}: bytes differ"


def test_fixture_has_the_promised_properties(expected: dict[str, Any]) -> None:
    """CRLF files, a binary file and a ~19k-line patch are really in the series."""
    kinds = {check["kind"] for check in expected["checks"]}
    assert kinds == {"crlf", "binary"}
    crlf_paths = {c["path"] for c in expected["checks"] if c["kind"] == "crlf"}
    assert {"json.hpp", "rsyncez.cpp", "README.md", "makefile"} <= crlf_paths
    assert any(step["patch_has_cr"] for step in expected["steps"])
    big = [step["file"] for step in expected["steps"] if 15_000 <= step["patch_lines"] <= 25_000]
    assert big == ["0001-json-lib-included.patch"], big
    assert len(expected["steps"]) == 14


def test_raw_git_floor(tmp_path: Path, expected: dict[str, Any],
                       clean_env: dict[str, str]) -> None:
    """Reference: plain `git am --keep-cr` reproduces every upstream tree hash."""
    target = make_base_repo(tmp_path, expected, clean_env)
    patches = [str(FIXTURE_DIR / step["file"]) for step in expected["steps"]]
    git(target, "am", "-q", "--keep-cr", *patches, env=clean_env)
    assert_replayed(target, expected, clean_env)


def test_fixture_detects_crlf_loss(tmp_path: Path, expected: dict[str, Any],
                                   clean_env: dict[str, str]) -> None:
    """Plain `git am` (no --keep-cr) applies everything but strips the CRs: caught."""
    target = make_base_repo(tmp_path, expected, clean_env)
    patches = [str(FIXTURE_DIR / step["file"]) for step in expected["steps"]]
    git(target, "am", "-q", *patches, env=clean_env)
    with pytest.raises(AssertionError, match=r"step 10 .*tree"):
        assert_replayed(target, expected, clean_env)


def _write_request(tmp_path: Path, expected: dict[str, Any]) -> Path:
    """request.yaml + policy.yaml next to `target/`, as DESIGN.md "Request"/"Policy" say."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "id: replay-permissive\n"
        "operations: [patch]\n"
        "paths:\n"
        "  allow: ['**']\n"
        "  deny: ['.git/**']\n"
        "commands: []\n"
        "network: false\n"
        "isolation: best-effort\n"
        "limits: {step_seconds: 120, max_file_bytes: 16777216, max_changed_files: 1000,"
        " max_steps: 100, output_bytes: 1048576}\n"
        "env: [PATH, LANG]\n",
        encoding="utf-8")
    lines = ["version: 1", "id: replay", "repo: ./target", "policy: ./policy.yaml", "steps:"]
    for step in expected["steps"]:
        lines += [f"  - id: p{step['step']:02d}",
                  f"    message: {json.dumps(step['subject'])}",
                  f"    patch: {json.dumps(str(FIXTURE_DIR / step['file']))}"]
    request = tmp_path / "request.yaml"
    request.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return request


def _run_executor(tmp_path: Path, request: Path, env: dict[str, str]
                  ) -> subprocess.CompletedProcess[str]:
    assert DODO.is_file(), f"{DODO} does not exist yet: the executor is not there"
    argv = [sys.executable, "-m", "doit", "-f", str(DODO), "run", f"request={request}",
            f"outputs={tmp_path / 'outputs'}"]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=EXECUTOR_TIMEOUT_S, check=False)


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return (f"exit {proc.returncode}\n--- stdout (tail)\n{proc.stdout[-4000:]}\n"
            f"--- stderr (tail)\n{proc.stderr[-4000:]}")


def test_executor_replays_upstream_series(tmp_path: Path, expected: dict[str, Any],
                                          clean_env: dict[str, str]) -> None:
    """14 `patch` steps through the executor: upstream's hashes, CRLF and binary bytes."""
    target = make_base_repo(tmp_path, expected, clean_env)
    request = _write_request(tmp_path, expected)
    proc = _run_executor(tmp_path, request, clean_env)
    assert proc.returncode == 0, _explain(proc)
    assert_replayed(target, expected, clean_env)
    assert git_text(target, "symbolic-ref", "--short", "HEAD", env=clean_env) == BRANCH
    status = git_text(target, "status", "--porcelain", "--untracked-files=all",
                      env=clean_env)
    assert status == "", f"work tree of the target not clean after apply:\n{status}"


def test_executor_ignores_hostile_user_git_config(tmp_path: Path, expected: dict[str, Any],
                                                  clean_env: dict[str, str]) -> None:
    """Same replay while the user's global config has autocrlf, whitespace=fix, no keepcr.

    Plain `git am --keep-cr` under this config stops at step 10 with a wrong tree; the
    executor must not let the user's config into its git calls.
    """
    target = make_base_repo(tmp_path, expected, clean_env)
    request = _write_request(tmp_path, expected)
    hostile = tmp_path / "hostile.gitconfig"
    hostile.write_text(HOSTILE_GITCONFIG, encoding="utf-8")
    proc = _run_executor(tmp_path, request, git_env(tmp_path / "home", hostile))
    assert proc.returncode == 0, _explain(proc)
    assert_replayed(target, expected, clean_env)
