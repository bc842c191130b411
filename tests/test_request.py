"""Request validation: every user mistake is one clear error with file:line, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from runutil import doit, write_policy

from agentos_tasks.errors import AgentosError
from agentos_tasks.request import load_request, patch_paths

HEAD = "version: 1\nid: r1\nrepo: ./repo\ninit_repo: true\npolicy: policy.yaml\nsteps:\n"


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "req.yaml"
    path.write_text(text)
    return load_request(path)


def error_of(tmp_path: Path, text: str) -> AgentosError:
    with pytest.raises(AgentosError) as info:
        load(tmp_path, text)
    return info.value


def test_valid_request_resolves_paths(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_bytes(b"from file\r\n")
    req = load(tmp_path, HEAD + "  - id: a\n    write: {path: x.md, content: hi}\n"
                                "  - id: b\n    write: {path: y.md, content_file: c.txt}\n"
                                "  - id: c\n    run: [sleep, 5, true]\n")
    assert req.repo == (tmp_path / "repo").resolve()  # type: ignore[attr-defined]
    steps = req.steps  # type: ignore[attr-defined]
    assert [s.id for s in steps] == ["a", "b", "c"]
    assert steps[1].content == b"from file\r\n"
    assert steps[0].message == "a"
    assert steps[2].argv == ("sleep", "5", "true")


@pytest.mark.parametrize(("text", "line", "needle"), [
    (HEAD + "  - id: a\n    write: {path: x, content: y}\n    bogus: 1\n", 9, "unknown key 'bogus'"),
    (HEAD + "  - id: a\n    run: python -m pytest\n", 8, "argv list, not a shell string"),
    (HEAD + "  - id: a\n    write: {path: x, content: y}\n  - id: a\n    delete: {path: x}\n",
     9, "duplicate step id 'a'"),
    (HEAD + "  - id: 'bad id!'\n    delete: {path: x}\n", 7, "must match"),
    (HEAD + "  - id: a\n    write: {path: x, content_file: nope.txt}\n", 8, "content_file not found"),
    (HEAD + "  - id: a\n    patch: missing.diff\n", 8, "patch file not found"),
    (HEAD.replace("version: 1", "version: 2") + "  - id: a\n    delete: {path: x}\n", 1,
     "only version 1"),
    (HEAD + "  - id: a\n    delete: {path: x}\n    write: {path: y, content: z}\n", 7,
     "exactly one of"),
    (HEAD + "  - id: a\n", 7, "exactly one of"),
    (HEAD + "  - id: a\n    write: {path: x}\n", 8, "content"),
    (HEAD + "  - id: a\n    write: {path: x, content: y}\n    expect_exit: 1\n", 9,
     "expect_exit only applies"),
    (HEAD + "  - id: a\n    tool: {adapter: nope, prompt: x}\n", 8, "adapter must be one of"),
    ("version: 1\nid: r1\nrepo: [\n", 4, "invalid YAML"),
    ("version: 1\nid: r1\nid: r2\nrepo: x\nsteps: []\n", 3, "duplicate key 'id'"),
    ("version: 1\nid: r1\nrepo: x\nsteps: []\n", 4, "at least one step"),
])
def test_bad_request_names_file_and_line(tmp_path: Path, text: str, line: int,
                                          needle: str) -> None:
    err = error_of(tmp_path, text)
    assert needle in err.message
    assert err.where == f"{tmp_path / 'req.yaml'}:{line}"


def test_missing_request_file(tmp_path: Path) -> None:
    with pytest.raises(AgentosError, match="request file not found"):
        load_request(tmp_path / "nope.yaml")


def test_patch_paths_cover_renames_binary_and_quoting() -> None:
    patch = (b'diff --git a/old.txt b/new.txt\nsimilarity index 90%\nrename from old.txt\n'
             b'rename to new.txt\n--- a/old.txt\n+++ b/new.txt\n@@ -1 +1 @@\n-a\n+b\n'
             b'diff --git a/bin.png b/bin.png\nnew file mode 100644\nGIT binary patch\n'
             b'diff --git "a/sp ace\\303\\251.txt" "b/sp ace\\303\\251.txt"\n'
             b'--- /dev/null\n+++ "b/sp ace\\303\\251.txt"\n')
    assert patch_paths(patch) == ("old.txt", "new.txt", "bin.png", "sp ace\u00e9.txt")


def test_doit_reports_bad_request_without_traceback(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    (tmp_path / "req.yaml").write_text(HEAD + "  - id: a\n    run: rm -rf /\n")
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode == 2
    assert f"{tmp_path / 'req.yaml'}:8" in proc.stderr
    assert "argv list" in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "repo").exists() and not (tmp_path / "out").exists()


def test_run_dir_inside_target_repo_is_refused(tmp_path: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    (tmp_path / "req.yaml").write_text(HEAD + "  - id: a\n    write: {path: x, content: y}\n")
    proc = doit(tmp_path, "run", "request=req.yaml", "outputs=repo/out")
    assert proc.returncode == 2
    assert "inside the target repository" in proc.stderr
    assert f"{tmp_path / 'req.yaml'}:3" in proc.stderr


def test_bad_policy_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("version: 1\nid: p\nisolation: sometimes\n")
    (tmp_path / "req.yaml").write_text(HEAD + "  - id: a\n    write: {path: x, content: y}\n")
    proc = doit(tmp_path, "run", "request=req.yaml")
    assert proc.returncode == 2
    assert f"{tmp_path / 'policy.yaml'}:3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_exec_run_bad_request_exit_code(tmp_path: Path) -> None:
    from agentos_tasks.cli import main

    (tmp_path / "req.yaml").write_text("version: 1\nid: r\n")
    code = main(["exec", "run", "--request", str(tmp_path / "req.yaml"),
                 "--outputs", str(tmp_path / "out")])
    assert code == 2
