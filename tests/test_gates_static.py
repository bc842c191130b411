"""static.no_subprocess / EX-B: the AST scan over a temp copy of the package, tampered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import Built, assert_pass

from agentos_tasks.gates.static import package_files, scan_package, scan_source

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """agentos_tasks/ (the gates included) copied, so a test can plant a process start in it."""
    for name in ("agentos_tasks",):
        shutil.copytree(PROJECT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _files(root: Path) -> list[Path]:
    return sorted((root / "agentos_tasks").rglob("*.py"))


def test_the_installed_package_is_clean(good_run: Built) -> None:
    count, violations = scan_package()
    assert count == len(package_files()) > 10
    assert violations == []
    assert_pass(good_run.run_dir, "static.no_subprocess")
    assert_pass(good_run.run_dir, "EX-B")


def test_a_clean_copy_is_clean_and_proc_is_allowed(package_copy: Path) -> None:
    count, violations = scan_package(_files(package_copy))
    assert violations == [] and count > 10
    assert "import subprocess" in (package_copy / "agentos_tasks" / "proc.py").read_text()


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("agentos_tasks/steps.py", "import subprocess\n", "import subprocess"),
    ("agentos_tasks/git.py", "from subprocess import run\n", "from subprocess import"),
    ("agentos_tasks/gates/policy.py", "import os\nos.system('id')\n", "os.system"),
    ("agentos_tasks/tape.py", "import os as o\no.execv('/bin/sh', ['sh'])\n", "os.execv"),
    ("agentos_tasks/report.py", "from os import fork\n", "from os import fork"),
    ("agentos_tasks/attest/statement.py", "import plumbum\n", "import plumbum"),
    ("agentos_tasks/fsutil.py", "import importlib\nimportlib.import_module('subprocess')\n",
     "import_module('subprocess')"),
    ("agentos_tasks/fsutil.py", "name = 'sub' + 'process'\n__import__(name)\n",
     "computed module name"),
    ("agentos_tasks/model.py", "import os\ngetattr(os, 'posix_spawn')\n",
     "getattr(os, 'posix_spawn')"),
    ("agentos_tasks/attest/verify.py", "import asyncio\nasyncio.create_subprocess_exec('x')\n",
     "asyncio.create_subprocess_exec"),
    ("agentos_tasks/gates/common.py", "import multiprocessing.pool\n", "multiprocessing"),
    ("agentos_tasks/tools/__init__.py", "import pty\n", "import pty"),
])
def test_a_planted_process_start_is_found(package_copy: Path, module: str, source: str,
                                          expected: str) -> None:
    target = package_copy / module
    target.write_text(target.read_text() + "\n" + source)
    _, violations = scan_package(_files(package_copy))
    assert any(module in v and expected in v for v in violations), violations


def test_a_new_module_with_a_subprocess_import_is_found(package_copy: Path) -> None:
    (package_copy / "agentos_tasks" / "helper.py").write_text(
        '"""looks harmless"""\nfrom subprocess import Popen as P\n')
    _, violations = scan_package(_files(package_copy))
    assert violations
    assert all(v.startswith("agentos_tasks/helper.py:2: from subprocess import") for v in violations)


def test_the_sandbox_side_bridge_may_fork_but_never_be_imported(package_copy: Path) -> None:
    """net/bridge.py runs only inside the sandbox (given to bwrap as data): its fork and
    exec are allowed there, and a host module importing it is a violation."""
    assert scan_source((package_copy / "agentos_tasks/net/bridge.py").read_text(),
                       "agentos_tasks/net/bridge.py"), "the bridge does start a process"
    _, clean = scan_package(_files(package_copy))
    assert clean == []
    for line in ("from agentos_tasks.net import bridge\n",
                 "import agentos_tasks.net.bridge\n",
                 "from agentos_tasks.net.bridge import main\n"):
        (package_copy / "agentos_tasks" / "helper.py").write_text('"""x"""\n' + line)
        _, violations = scan_package(_files(package_copy))
        assert violations == [
            "agentos_tasks/helper.py:2: imports sandbox-side agentos_tasks.net.bridge"], line


def test_scan_source_accepts_harmless_lookalikes() -> None:
    source = ("import os\nos.path.join('a', 'b')\nos.environ.get('X')\n"
              "getattr(os, 'getcwd')\nimport importlib\nimportlib.import_module('json')\n")
    assert scan_source(source, "agentos_tasks/x.py") == []


def test_the_scan_is_tied_to_the_code_that_executed_the_run(good_run: Built) -> None:
    """A scan of the verifier's own installation says nothing about a run another
    agentos executed: run_start records the executing source's digest."""
    from conftest import assert_fail, assert_na, read_events, rechain

    from agentos_tasks.gates.static import package_source_digest

    events = read_events(good_run.run_dir)
    assert events[0]["event"] == "run_start"
    assert events[0]["agentos_source_sha256"] == package_source_digest()
    passed = assert_pass(good_run.run_dir, "EX-B")
    assert "the same source" in passed.reason
    named = [e for e in events if "agentos_source_sha256" in e]
    assert [e["event"] for e in named] == ["run_start", "policy_loaded"]
    for event in named:
        event["agentos_source_sha256"] = "e" * 64  # executed by another agentos
    rechain(good_run.run_dir, events)
    result = assert_na(good_run.run_dir, "static.no_subprocess")
    assert "executed by agentos source eeeeeeeeeeee" in result.reason
    del events[0]["agentos_source_sha256"]  # a torn run_start: policy_loaded still names it
    rechain(good_run.run_dir, events)
    assert_na(good_run.run_dir, "EX-B")
    del named[1]["agentos_source_sha256"]
    rechain(good_run.run_dir, events)
    assert_fail(good_run.run_dir, "EX-B", "records no agentos_source_sha256")


def test_the_source_digest_changes_with_any_package_file(package_copy: Path) -> None:
    from agentos_tasks.gates.static import package_source_digest

    files = sorted(package_copy.rglob("*.py"))
    before = package_source_digest(files)
    errors = package_copy / "agentos_tasks" / "errors.py"
    errors.write_text(errors.read_text() + "\n")
    assert package_source_digest(files) != before
