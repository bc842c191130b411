"""EX-A, EX-C .. EX-H against real runs: each tampered with and watched to FAIL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import (
    APPROVAL_POLICY,
    GOOD_REQUEST,
    PERMISSIVE_POLICY,
    Built,
    assert_fail,
    assert_na,
    assert_pass,
    doit,
    git,
    read_events,
    read_json,
    rechain,
    reseal,
    sha256,
    write_json,
)

from agentos_tasks.gates.runner import run_all

# ------------------------------------------------------------------ helpers


def manifest_path(run: Built, step: str) -> Any:
    return run.run_dir / "steps" / f"{step}.json"


def edit_manifest(run: Built, step: str, **changes: Any) -> dict[str, Any]:
    path = manifest_path(run, step)
    manifest = read_json(path)
    manifest.update(changes)
    write_json(path, manifest)
    return dict(manifest)


def edit_result(run: Built, **changes: Any) -> dict[str, Any]:
    path = run.run_dir / "execution_result.json"
    result = read_json(path)
    result.update(changes)
    write_json(path, result)
    return dict(result)


# ------------------------------------------------------------------ EX-A


STRICT_POLICY = PERMISSIVE_POLICY.replace('deny: [".git/**", "secrets/**"]',
                                          'deny: [".git/**", "secrets/**", {id: no-src, '
                                          'glob: "src/**"}]')


def _adopt_policy(run: Built, text: str) -> None:
    """Replace the recorded policy AND every digest that names it (a careful forger)."""
    policy = run.run_dir / "audit" / "policy.yaml"
    policy.write_text(text)
    digest = sha256(policy.read_bytes())
    for path in (run.run_dir / "steps").glob("*.json"):
        manifest = read_json(path)
        manifest["policy_check"]["policy_sha256"] = digest
        write_json(path, manifest)
    result = read_json(run.run_dir / "execution_result.json")
    result["policy"]["sha256"] = digest
    write_json(run.run_dir / "execution_result.json", result)
    events = read_events(run.run_dir)
    for event in events:
        if event["event"] == "policy_loaded":
            event["policy_sha256"] = digest
    reseal(run.run_dir, events)


def test_ex_a_fails_when_the_policy_is_replaced_by_a_stricter_one(good_run: Built) -> None:
    (good_run.run_dir / "audit" / "policy.yaml").write_text(STRICT_POLICY)
    assert_fail(good_run.run_dir, "EX-A", "s2", "denied by no-src")


def test_ex_a_fails_on_a_stricter_policy_even_with_every_digest_updated(
        good_run: Built) -> None:
    _adopt_policy(good_run, STRICT_POLICY)
    assert_pass(good_run.run_dir, "R3")
    assert_fail(good_run.run_dir, "EX-A", "denied by no-src")


def test_ex_a_fails_when_the_policy_bytes_differ_from_the_recorded_digest(
        good_run: Built) -> None:
    policy = good_run.run_dir / "audit" / "policy.yaml"
    policy.write_text(policy.read_text() + "# harmless looking comment\n")
    assert_fail(good_run.run_dir, "EX-A", "audit/policy.yaml is")


def test_ex_a_fails_when_a_manifest_claims_a_denied_path(good_run: Built) -> None:
    manifest = read_json(manifest_path(good_run, "s3"))
    manifest["files"][0]["path"] = "secrets/token.txt"
    write_json(manifest_path(good_run, "s3"), manifest)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-A", "secrets/token.txt", "denied by")


def test_ex_a_fails_when_a_patch_touches_a_denied_path(good_run: Built) -> None:
    patch = good_run.run_dir / "patches" / "s1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"docs/a.md", b"secrets/a.md"))
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-A", "secrets/a.md", "denied by")


# ------------------------------------------------------------------ EX-C


def test_ex_c_fails_when_the_branch_moved_before_apply(good_run: Built) -> None:
    result = read_json(good_run.run_dir / "execution_result.json")
    moved = result["commits_applied"][0]
    edit_result(good_run, pre_apply_head=moved)
    events = read_events(good_run.run_dir)
    for event in events:
        if event["event"] == "patches_applied":
            event["pre_apply_head"] = moved
    reseal(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-C", "branch moved before apply")


def test_ex_c_fails_when_a_step_wrote_outside_its_worktree(good_run: Built) -> None:
    manifest = read_json(manifest_path(good_run, "s3"))
    manifest["files"][0]["path"] = "../../outside.txt"
    write_json(manifest_path(good_run, "s3"), manifest)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-C", "../../outside.txt", "outside the worktree")


def test_ex_c_fails_when_a_sandbox_bound_more_than_the_worktree(good_run: Built) -> None:
    manifest = read_json(manifest_path(good_run, "s7"))
    argv = (manifest.get("sandbox") or {}).get("wrapper_argv") or ["bwrap", "--", "python"]
    cut = argv.index("--")
    manifest["sandbox"] = {**(manifest.get("sandbox") or {}),
                           "wrapper_argv": [*argv[:cut], "--bind", "/tmp", "/tmp", *argv[cut:]]}
    write_json(manifest_path(good_run, "s7"), manifest)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-C", "bound /tmp writable")


def test_ex_c_fails_when_a_step_ends_after_patches_applied(good_run: Built) -> None:
    events = read_events(good_run.run_dir)
    applied = next(i for i, e in enumerate(events) if e["event"] == "patches_applied")
    events.insert(applied, events.pop(applied - 1))  # last step_end after the apply
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-C", "after patches_applied")


def test_ex_c_fails_when_the_worktree_base_differs(good_run: Built) -> None:
    events = read_events(good_run.run_dir)
    for event in events:
        if event["event"] == "worktree_created":
            event["base"] = "0" * 40
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-C", "worktree_created base")


# ------------------------------------------------------------------ EX-D


def test_ex_d_fails_when_a_commit_message_is_amended(good_run: Built) -> None:
    git(good_run.repo, "commit", "-q", "--amend", "-m", "something else entirely")
    assert_fail(good_run.run_dir, "EX-D", "message", "s7")


def test_ex_d_fails_when_commits_are_reordered(good_run: Built) -> None:
    result = read_json(good_run.run_dir / "execution_result.json")
    commits = result["commits_applied"]
    git(good_run.repo, "reset", "-q", "--hard", result["pre_apply_head"])
    for commit in [commits[1], commits[0], *commits[2:]]:
        git(good_run.repo, "cherry-pick", commit)
    assert_fail(good_run.run_dir, "EX-D", "message")


def test_ex_d_reports_a_commit_added_after_the_run_as_not_the_runs(good_run: Built) -> None:
    """Even one that looks like a step's: the run's commits end at its post-apply head."""
    git(good_run.repo, "commit", "-q", "--allow-empty", "-m", "s7: generate a file")
    result = assert_pass(good_run.run_dir, "EX-D")
    assert "1 later commit(s) on the branch are not this run's" in result.reason


def test_ex_d_fails_when_a_patch_differs_from_its_commit(good_run: Built) -> None:
    patch = good_run.run_dir / "patches" / "s2.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+X = 1", b"+X = 9"))
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-D", "s2", "patch id")


def test_ex_d_fails_when_the_request_messages_are_rewritten(good_run: Built) -> None:
    request = good_run.run_dir / "audit" / "request.yaml"
    request.write_text(request.read_text().replace("s1: add docs", "s1: add documents"))
    # caught centrally: request.json no longer agrees with the edited request.yaml
    assert_fail(good_run.run_dir, "EX-D", "disagrees with audit/request.yaml")


def test_ex_d_fails_when_execution_result_hides_a_commit(good_run: Built) -> None:
    result = read_json(good_run.run_dir / "execution_result.json")
    edit_result(good_run, commits_applied=[*result["commits_applied"][:-1], "f" * 40])
    assert_fail(good_run.run_dir, "EX-D", "commits_applied")


# ------------------------------------------------------------------ EX-E


def _drop(run: Built, predicate: Any) -> None:
    rechain(run.run_dir, [e for e in read_events(run.run_dir) if not predicate(e)])


def test_ex_e_fails_when_a_step_end_is_dropped_and_the_tape_rechained(good_run: Built) -> None:
    _drop(good_run, lambda e: e["event"] == "step_end" and e.get("step") == "s3")
    assert_fail(good_run.run_dir, "EX-E", "s3")


def test_ex_e_fails_when_the_last_step_end_is_dropped(good_run: Built) -> None:
    _drop(good_run, lambda e: e["event"] == "step_end" and e.get("step") == "s7")
    assert_fail(good_run.run_dir, "EX-E", "s7", "no step_end")


def test_ex_e_fails_when_a_whole_step_is_erased_from_the_tape(good_run: Built) -> None:
    _drop(good_run, lambda e: e.get("step") == "s7")
    assert_fail(good_run.run_dir, "EX-E", "steps/s7.json exists but the tape has no step_end")


def test_ex_e_fails_when_run_end_is_dropped(good_run: Built) -> None:
    _drop(good_run, lambda e: e["event"] == "run_end")
    assert_fail(good_run.run_dir, "EX-E", "ends with")


def test_ex_e_fails_on_a_duplicated_step_end(good_run: Built) -> None:
    events = read_events(good_run.run_dir)
    index = next(i for i, e in enumerate(events) if e["event"] == "step_end")
    events.insert(index + 1, dict(events[index]))
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-E", "without a matching step_start")


def test_ex_e_fails_when_a_step_end_lacks_its_checksums(good_run: Built) -> None:
    events = read_events(good_run.run_dir)
    for event in events:
        if event["event"] == "step_end" and event["step"] == "s2":
            event.pop("patch_sha256")
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-E", "lacks patch_sha256")


def test_ex_e_fails_when_a_manifest_is_edited_after_its_step_end(good_run: Built) -> None:
    edit_manifest(good_run, "s7", exit_code=0, duration_s=0.0)
    assert_fail(good_run.run_dir, "EX-E", "steps/s7.json differs")


# ------------------------------------------------------------------ EX-F


def _fake_rollback(run: Built, *, reset_branch: bool = True, **override: Any) -> None:
    """A rollback as the executor would record it: proof from git, event on the tape."""
    result = read_json(run.run_dir / "execution_result.json")
    pre, post = result["pre_apply_head"], result["post_apply_head"]
    tree = {c: git(run.repo, "rev-parse", f"{c}^{{tree}}") for c in (pre, post)}
    proof = {"schema_version": 1, "reason": "git am failed", "branch": "main",
             "target_head": pre, "target_tree": tree[pre],
             "before": {"head": post, "tree": tree[post]},
             "after": {"head": pre, "tree": tree[pre]}, "match": True, **override}
    proof_path = run.run_dir / "audit" / "rollback_proof.json"
    write_json(proof_path, proof)
    events = read_events(run.run_dir)
    events[-1:-1] = [{"event": "apply_failed", "reason": "git am failed"},
                     {"event": "rollback", "branch": "main", "restored": pre,
                      "match": proof["match"], "proof_sha256": sha256(proof_path.read_bytes())}]
    rechain(run.run_dir, events)
    if reset_branch:
        git(run.repo, "reset", "-q", "--hard", pre)


def test_ex_f_not_applicable_without_a_rollback(good_run: Built) -> None:
    assert_na(good_run.run_dir, "EX-F")


def test_ex_f_passes_on_a_consistent_rollback(good_run: Built) -> None:
    _fake_rollback(good_run)
    assert_pass(good_run.run_dir, "EX-F")


def test_ex_f_fails_on_a_rollback_proof_without_a_rollback_event(good_run: Built) -> None:
    write_json(good_run.run_dir / "audit" / "rollback_proof.json",
               {"before": {"tree": "a"}, "after": {"tree": "a"}, "match": True})
    assert_fail(good_run.run_dir, "EX-F", "no rollback event")


def test_ex_f_fails_on_a_rollback_event_without_a_proof(good_run: Built) -> None:
    _fake_rollback(good_run)
    (good_run.run_dir / "audit" / "rollback_proof.json").unlink()
    assert_fail(good_run.run_dir, "EX-F", "rollback_proof.json is missing")


def test_ex_f_fails_when_the_branch_was_not_restored(good_run: Built) -> None:
    _fake_rollback(good_run, reset_branch=False)
    assert_fail(good_run.run_dir, "EX-F", "rolled-back head")


def test_ex_f_fails_on_a_forged_target_tree(good_run: Built) -> None:
    result = read_json(good_run.run_dir / "execution_result.json")
    other = git(good_run.repo, "rev-parse", f"{result['post_apply_head']}^{{tree}}")
    _fake_rollback(good_run, target_tree=other,
                   after={"head": result["pre_apply_head"], "tree": other})
    assert_fail(good_run.run_dir, "EX-F", "is not the tree of")


def test_ex_f_fails_when_the_proof_admits_no_match(good_run: Built) -> None:
    _fake_rollback(good_run, match=False)
    assert_fail(good_run.run_dir, "EX-F", "match is not true")


def test_ex_f_fails_when_the_proof_is_edited_after_the_event(good_run: Built) -> None:
    _fake_rollback(good_run)
    proof_path = good_run.run_dir / "audit" / "rollback_proof.json"
    proof = read_json(proof_path)
    proof["reason"] = "nothing happened"
    write_json(proof_path, proof)
    assert_fail(good_run.run_dir, "EX-F", "proof_sha256")


# ------------------------------------------------------------------ EX-G


def test_ex_g_passes_when_the_approval_binds_the_patch(answered_run: Built) -> None:
    assert_pass(answered_run.run_dir, "EX-G")


def test_ex_g_not_applicable_without_approval_rules(good_run: Built) -> None:
    assert_na(good_run.run_dir, "EX-G")


def _answers_path(run: Built) -> Any:
    return run.run_dir / "audit" / "answers.yaml"


def test_ex_g_fails_when_the_approval_names_another_patch(answered_run: Built) -> None:
    path = _answers_path(answered_run)
    manifest = read_json(manifest_path(answered_run, "del"))
    path.write_text(path.read_text().replace(manifest["patch_sha256"], "a" * 64))
    assert_fail(answered_run.run_dir, "EX-G", "binds patch aaaaaaaaaaaa")


def test_ex_g_fails_when_the_approval_is_removed(answered_run: Built) -> None:
    path = _answers_path(answered_run)
    path.write_text(path.read_text().split("approvals:")[0])
    assert_fail(answered_run.run_dir, "EX-G", "del", "none recorded")


def test_ex_g_fails_when_the_answers_file_is_deleted(answered_run: Built) -> None:
    _answers_path(answered_run).unlink()
    assert_fail(answered_run.run_dir, "EX-G", "answers.yaml is missing")


def test_ex_g_fails_when_the_approved_patch_is_swapped_and_resealed(answered_run: Built) -> None:
    patch = answered_run.run_dir / "patches" / "del.patch"
    patch.write_bytes(patch.read_bytes().replace(b"-x\n", b"-y\n"))
    reseal(answered_run.run_dir)
    assert_fail(answered_run.run_dir, "EX-G", "approval of del", "binds patch")


# ------------------------------------------------------------------ EX-H


@pytest.mark.parametrize("field", ["counts", "repo", "base", "commits_applied", "sandbox"])
def test_ex_h_fails_when_a_required_field_is_deleted(good_run: Built, field: str) -> None:
    path = good_run.run_dir / "execution_result.json"
    result = read_json(path)
    del result[field]
    write_json(path, result)
    assert_fail(good_run.run_dir, "EX-H", f"lacks {field}")


def test_ex_h_fails_on_a_wrong_count(good_run: Built) -> None:
    result = read_json(good_run.run_dir / "execution_result.json")
    result["counts"]["changed"] += 1
    edit_result(good_run, counts=result["counts"])
    assert_fail(good_run.run_dir, "EX-H", "counts.changed")


def test_ex_h_fails_when_commits_and_changed_steps_disagree(good_run: Built) -> None:
    result = read_json(good_run.run_dir / "execution_result.json")
    result["counts"]["commits_applied"] -= 1
    edit_result(good_run, commits_applied=result["commits_applied"][:-1],
                counts=result["counts"])
    assert_fail(good_run.run_dir, "EX-H", "5 commits applied for 6 changed steps")


def test_ex_h_fails_on_a_relative_repo_path(good_run: Built) -> None:
    edit_result(good_run, repo="repo")
    assert_fail(good_run.run_dir, "EX-H", "not an absolute path")


def test_ex_h_fails_when_a_step_summary_disagrees_with_its_manifest(good_run: Built) -> None:
    result = read_json(good_run.run_dir / "execution_result.json")
    result["steps"][3]["status"] = "changed"
    result["steps"][3]["commit"] = result["steps"][0]["commit"]
    result["counts"]["changed"] += 1
    result["counts"]["unchanged"] -= 1
    edit_result(good_run, steps=result["steps"], counts=result["counts"])
    assert_fail(good_run.run_dir, "EX-H", "s4")


# ------------------------------------------------------------------ executor bug, shown


def test_an_apply_refused_for_a_missing_approval_closes_the_tape(tmp_path: Path) -> None:
    """Fails until executor.apply_task records its refusals: today check_approvals (and the
    'branch moved' / 'dirty target' refusals) raise before any tape event, so the tape ends
    on a step_end with no run_end and execution_result.json is left stale or absent."""
    (tmp_path / "policy.yaml").write_text(APPROVAL_POLICY)
    request = tmp_path / "request.yaml"
    request.write_text(GOOD_REQUEST.replace("id: good-run", "id: unapproved"))
    out = doit(tmp_path, "run", request, tmp_path / "outputs")
    assert out.returncode != 0 and "needs a reviewer approval" in out.stderr, out.stderr
    run_dir = tmp_path / "outputs" / "unapproved"
    last = read_events(run_dir)[-1]
    assert (last["event"], last.get("status")) == ("run_end", "failed"), last
    assert read_json(run_dir / "execution_result.json")["status"] == "failed"
    assert_pass(run_dir, "R3")


# ------------------------------------------------------------------ real `doit rollback`


def test_a_real_doit_rollback_passes_ex_f_and_every_gate(good_run: Built) -> None:
    out = good_run.gates("rollback")
    assert out.returncode == 0, out.stderr
    assert_pass(good_run.run_dir, "EX-F")
    assert not [(r.id, r.reason) for r in run_all(good_run.run_dir) if r.status == "FAIL"]


def test_a_rolled_back_run_whose_branch_moved_again_fails(good_run: Built) -> None:
    assert good_run.gates("rollback").returncode == 0
    git(good_run.repo, "commit", "-q", "--allow-empty", "-m", "after the rollback")
    assert_fail(good_run.run_dir, "EX-F", "rolled-back head")
    assert_fail(good_run.run_dir, "EX-C", "!= base")
    assert_fail(good_run.run_dir, "EX-D", "past base")


def test_rollback_then_apply_again_passes_every_gate(good_run: Built) -> None:
    """Fails until the graph re-runs checksums+result after a re-apply: git am recreates
    the same commits, so .state/applied.json is byte-identical, doit finds checksums and
    result up to date, and the tape ends on patches_applied while execution_result.json
    still says rolled_back (the gates catch exactly that)."""
    assert good_run.gates("rollback").returncode == 0
    out = good_run.gates("run")
    assert out.returncode == 0, out.stderr
    assert_pass(good_run.run_dir, "EX-F")
    assert_pass(good_run.run_dir, "EX-C")
    assert not [(r.id, r.reason) for r in run_all(good_run.run_dir) if r.status == "FAIL"]


def test_a_second_apply_without_a_rollback_between_fails(good_run: Built) -> None:
    events = read_events(good_run.run_dir)
    applied = next(e for e in events if e["event"] == "patches_applied")
    events.insert(len(events) - 1, dict(applied))
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-C", "patches_applied comes after patches_applied")


# ------------------------------------------------------------------ forgery fixes (EX-A/C/D/F/H)


def _events_with(run: Built, step: str, **changes: Any) -> list[dict[str, Any]]:
    events = read_events(run.run_dir)
    for event in events:
        if event.get("step") == step and event["event"] == "step_end":
            event.update(changes)
    return events


def test_format_patch_of_the_range_is_the_executor_patches_joined(good_run: Built) -> None:
    """EX-D regenerates every patch in one format-patch call with FORMAT_PATCH_OPTIONS;
    this fails when those options drift from Git.commit_patch (which wrote the files)."""
    from agentos_tasks.gates.gitlog import FORMAT_PATCH_OPTIONS
    from agentos_tasks.git import Git

    result = read_json(good_run.run_dir / "execution_result.json")
    commits = [s["commit"] for s in result["steps"] if s["status"] == "changed"]
    g = Git(good_run.repo)
    joined = b"\n".join(g.commit_patch(c) for c in commits)
    out = g.run("format-patch", "--stdout", *FORMAT_PATCH_OPTIONS,
                f"{result['base']}..{commits[-1]}").stdout
    assert out == joined
    files = b"\n".join((good_run.run_dir / "patches" / f"{s['id']}.patch").read_bytes()
                       for s in result["steps"] if s["status"] == "changed")
    assert out == files


def test_ex_d_fails_when_a_patch_differs_from_its_commit_in_whitespace_only(
        good_run: Built) -> None:
    patch = good_run.run_dir / "patches" / "s2.patch"
    patch.write_bytes(patch.read_bytes().replace(b"\n+X = 1\n", b"\n+X  =  1\n"))
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-D", "patches/s2.patch", "byte compare")


def test_ex_d_fails_when_a_manifest_parent_skips_a_step(good_run: Built) -> None:
    s1 = read_json(manifest_path(good_run, "s1"))
    edit_manifest(good_run, "s3", parent=s1["head"])
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-D", "step s3", "parent", "s2's head")


def test_ex_d_fails_when_a_manifest_head_is_not_its_commit(good_run: Built) -> None:
    edit_manifest(good_run, "s7", head="0" * 40)
    reseal(good_run.run_dir, _events_with(good_run, "s7", head="0" * 40))
    assert_fail(good_run.run_dir, "EX-D", "s7", "is not its commit")


def test_ex_d_fails_when_a_manifest_names_an_unknown_commit(good_run: Built) -> None:
    """An unknown commit is a FAIL, never a skipped check."""
    edit_manifest(good_run, "s7", head="0" * 40, commit="0" * 40)
    reseal(good_run.run_dir, _events_with(good_run, "s7", head="0" * 40, commit="0" * 40))
    assert_fail(good_run.run_dir, "EX-D", "git cannot list")


def test_ex_d_fails_when_a_recorded_digest_differs_from_the_commit(good_run: Built) -> None:
    """s7 is a run step (no content in the request): only git can say what it wrote."""
    manifest = read_json(manifest_path(good_run, "s7"))
    manifest["files"][0]["sha256"] = sha256(b"something else")
    write_json(manifest_path(good_run, "s7"), manifest)
    reseal(good_run.run_dir)
    assert_pass(good_run.run_dir, "EX-A")
    assert_fail(good_run.run_dir, "EX-D", "steps/s7.json files differ from the diff")


def test_ex_d_fails_when_the_tape_lists_other_files_than_the_commit(good_run: Built) -> None:
    events = _events_with(good_run, "s2", files=[])
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-D", "step_end of s2")


def test_ex_d_fails_when_a_branch_commit_has_another_committer(good_run: Built) -> None:
    """Same tree, message and author: only the committer (mallory) differs."""
    git(good_run.repo, "commit", "-q", "--amend", "--no-edit")
    head = git(good_run.repo, "rev-parse", "HEAD")
    result = read_json(good_run.run_dir / "execution_result.json")
    commits = [*result["commits_applied"][:-1], head]
    edit_result(good_run, commits_applied=commits, post_apply_head=head)
    assert_fail(good_run.run_dir, "EX-D", "not the request's author")


def test_ex_d_fails_when_a_branch_commit_has_another_tree(good_run: Built) -> None:
    (good_run.repo / "gen.txt").write_text("other")
    git(good_run.repo, "commit", "-q", "-a", "--amend", "--no-edit")
    assert_fail(good_run.run_dir, "EX-D", "s7", "has tree")


def test_ex_a_fails_when_a_run_step_records_another_exit_code(good_run: Built) -> None:
    edit_manifest(good_run, "s7", exit_code=3)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-A", "exit code 3", "expects 0")


def test_ex_a_fails_when_a_write_step_records_a_program(good_run: Built) -> None:
    sandbox = read_json(manifest_path(good_run, "s7"))["sandbox"]
    edit_manifest(good_run, "s1", sandbox=sandbox)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-A", "s1", "runs no program")


def test_ex_a_fails_when_a_delete_step_deletes_another_path(good_run: Built) -> None:
    manifest = read_json(manifest_path(good_run, "s5"))
    manifest["files"][0]["path"] = "README.md"
    write_json(manifest_path(good_run, "s5"), manifest)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-A", "delete step s5 may only delete notes.txt")


def test_ex_a_fails_on_a_tools_entry_of_a_non_tool_step(good_run: Built) -> None:
    (good_run.run_dir / "tools" / "s7").mkdir(parents=True)
    (good_run.run_dir / "tools" / "s7" / "transcript.jsonl").write_text("{}\n")
    assert_fail(good_run.run_dir, "EX-A", "tools/s7/", "not a tool step")


def _unsandboxed_s7(run: Built) -> None:
    """s7 as it is recorded when bwrap is unavailable under best-effort (backend none)."""
    manifest = read_json(manifest_path(run, "s7"))
    argv = manifest["sandbox"]["wrapper_argv"]
    inner = argv[len(argv) - 3:]
    manifest["sandbox"] = {"backend": "none", "network": None,
                           "wrapper_argv": ["/usr/bin/python3", "-I", "-S", "-c", "reaper",
                                            "{}", "--", *inner]}
    write_json(manifest_path(run, "s7"), manifest)
    edit_result(run, sandbox={"backend": "none", "backends": ["none"]})
    reseal(run.run_dir)


def test_ex_c_names_unsandboxed_steps_under_best_effort(good_run: Built) -> None:
    _unsandboxed_s7(good_run)
    result = assert_pass(good_run.run_dir, "EX-C")
    assert "unsandboxed steps: s7" in result.reason


def test_ex_c_fails_on_an_unsandboxed_step_under_isolation_required(good_run: Built) -> None:
    _unsandboxed_s7(good_run)
    _adopt_policy(good_run, PERMISSIVE_POLICY.replace("isolation: best-effort",
                                                      "isolation: required"))
    edit_result(good_run, policy={**read_json(good_run.run_dir / "execution_result.json")
                                  ["policy"], "isolation": "required"})
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-C", "s7", "backend none under isolation: required")


def test_ex_c_fails_when_the_network_flag_contradicts_the_policy(good_run: Built) -> None:
    manifest = read_json(manifest_path(good_run, "s7"))
    if manifest["sandbox"]["backend"] != "bwrap":
        pytest.skip("bwrap does not work here")
    manifest["sandbox"]["network"] = {"rule_id": "network", "allow": ["evil.test:443"],
                                      "resolve": {}, "unrestricted": False}
    write_json(manifest_path(good_run, "s7"), manifest)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-C", "s7", "evil.test:443", "grants None")


def test_ex_c_fails_when_a_bwrap_argv_keeps_the_network(good_run: Built) -> None:
    manifest = read_json(manifest_path(good_run, "s7"))
    if manifest["sandbox"]["backend"] != "bwrap":
        pytest.skip("bwrap does not work here")
    argv = manifest["sandbox"]["wrapper_argv"]
    manifest["sandbox"]["wrapper_argv"] = [argv[0], "--unshare-all", "--share-net", *argv[2:]]
    write_json(manifest_path(good_run, "s7"), manifest)
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-C", "keeps the host's network")


def test_ex_c_fails_when_execution_result_names_other_backends(good_run: Built) -> None:
    edit_result(good_run, sandbox={"backend": "unused", "backends": []})
    reseal(good_run.run_dir)
    assert_fail(good_run.run_dir, "EX-C", "execution_result sandbox", "manifests say")


def test_ex_f_fails_when_before_head_is_not_a_commit(good_run: Built) -> None:
    _fake_rollback(good_run, before={"head": "0" * 40, "tree": "1" * 40})
    assert_fail(good_run.run_dir, "EX-F", "before.head", "is not a commit")


def test_ex_h_fails_on_a_failed_status_without_a_failure(good_run: Built) -> None:
    edit_result(good_run, status="failed", commits_applied=[], failure=None)
    assert_fail(good_run.run_dir, "EX-H", "records no failure")


def test_ex_h_fails_on_a_failed_status_without_a_failure_event(good_run: Built) -> None:
    edit_result(good_run, status="failed", commits_applied=[],
                failure={"step": None, "reason": "made up"})
    assert_fail(good_run.run_dir, "EX-H", "no step_failed or apply_failed")


def test_ex_h_fails_on_a_rolled_back_status_without_a_rollback(good_run: Built) -> None:
    edit_result(good_run, status="rolled_back", commits_applied=[])
    assert_fail(good_run.run_dir, "EX-H", "no rollback event")


def test_ex_c_and_ex_d_fail_when_the_base_is_erased(good_run: Built) -> None:
    """A missing base is a FAIL, never a reason to skip the branch checks."""
    edit_result(good_run, base=None)
    assert_fail(good_run.run_dir, "EX-C", "records no base")
    assert_fail(good_run.run_dir, "EX-D", "records no base")


def test_ex_d_fails_when_a_write_step_lands_an_executable(good_run: Built) -> None:
    """Forged history (same content as requested, every record consistent): s1's file is
    committed 100755. A write step creates files 0644 and keeps an existing file's mode."""
    from test_forgery import forge_history

    forge_history(good_run, {"s1": lambda wt: (wt / "docs" / "a.md").chmod(0o755)})
    assert_pass(good_run.run_dir, "EX-A")
    assert_fail(good_run.run_dir, "EX-D", "write step s1", "mode 100755")


def test_ex_a_fails_when_a_run_argv_is_rewritten_in_both_request_records(
        good_run: Built) -> None:
    """The forger rewrites s7's argv consistently in request.yaml and request.json (so the
    records agree): the manifest's sandbox argv still shows what really ran."""
    audit = good_run.run_dir / "audit"
    text = (audit / "request.yaml").read_text()
    assert "open('gen.txt', 'w').write('g')" in text
    (audit / "request.yaml").write_text(text.replace("open('gen.txt', 'w').write('g')",
                                                     "print(1)"))
    record = read_json(audit / "request.json")
    record["steps"][6]["argv"] = ["python", "-c", "print(1)"]
    record["sha256"] = sha256((audit / "request.yaml").read_bytes())
    write_json(audit / "request.json", record)
    assert_fail(good_run.run_dir, "EX-A", "steps/s7.json", "other than the request's argv")
