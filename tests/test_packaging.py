"""`pip install .` (not editable) works on its own: the default policy ships inside the
package and nothing is found relative to a checkout. One real install into a fresh
virtualenv (system site-packages for the dependencies, `--no-deps` for speed), then the
demo request from a directory that is not the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

from runutil import PROJECT


def test_an_installed_agentos_runs_the_demo_from_another_directory(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    source = tmp_path / "src"  # a copy: an install must not write into the checkout
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns(
        ".git", "outputs", "*.egg-info", "build", "__pycache__", ".mypy_cache",
        ".ruff_cache", ".pytest_cache"), symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(source)], check=True,
                   capture_output=True, timeout=300)
    installed = subprocess.run(
        [str(python), "-c", "import agentos_tasks, sys; print(agentos_tasks.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert Path(installed).is_relative_to(env_dir), installed
    reporters = subprocess.run(  # `doit --reporter json` is ours once installed
        [str(python), "-c", "from importlib.metadata import entry_points as e; "
         "print([p.value for p in e(group='doit.REPORTER') if p.name == 'json'])"],
        check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert "agentos_tasks.console:GateJsonReporter" in reporters, reporters
    work = tmp_path / "elsewhere"
    shutil.copytree(PROJECT / "requests", work / "requests")
    run = subprocess.run([str(env_dir / "bin" / "agentos"), "exec", "run", "--request",
                          "requests/demo.yaml"], cwd=work, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-1500:] + run.stderr[-1500:]
    assert (work / "outputs" / "demo-six-files" / "execution_result.json").is_file()
    policy = (work / "outputs" / "demo-six-files" / "audit" / "policy.yaml").read_text()
    shipped = (PROJECT / "agentos_tasks" / "policies" / "sandbox_policy.yaml").read_text()
    assert policy == shipped
