"""The user's path end to end: doit run, doit gates, agentos keygen, doit sign, agentos verify."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from runutil import doit, write_request

STEPS = [{"id": f"s{i}", "message": f"s{i}: file", "write": {"path": f"docs/{i}.md",
                                                            "content": f"{i}\n"}}
         for i in range(3)]


def agentos(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["agentos", *args], cwd=cwd, capture_output=True, text=True)


def test_sign_and_verify_then_tamper(tmp_path: Path) -> None:
    write_request(tmp_path, STEPS)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    gates = doit(tmp_path, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout + gates.stderr
    keygen = agentos(tmp_path, "keygen")
    assert keygen.returncode == 0, keygen.stderr
    assert ((tmp_path / "agentos.key").stat().st_mode & 0o777) == 0o600
    again = agentos(tmp_path, "keygen")
    assert again.returncode != 0 and "Traceback" not in again.stderr
    doit(tmp_path, "sign", "request=req.yaml", "key=agentos.key", check=0)
    run_dir = tmp_path / "out" / "r1"
    envelope = json.loads((run_dir / "signature/envelope.dsse.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok = agentos(elsewhere, "verify", str(run_dir), "--key", str(tmp_path / "agentos.pub"),
                 "--expect-run", "r1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    head = ok.stdout.splitlines()
    assert head[0] == "run: r1" and head[1].startswith("commits: 3 on main ("), ok.stdout
    assert any(line.startswith("signed at: 20") for line in head), ok.stdout
    assert any(line.startswith("key id: ") and len(line) > 20 for line in head), ok.stdout
    wrong = agentos(elsewhere, "verify", str(run_dir), "--key", str(tmp_path / "agentos.pub"),
                    "--expect-run", "r2")
    assert wrong.returncode == 5 and "expected 'r2'" in wrong.stdout
    # the target cloned elsewhere and the original moved away: --repo names the clone
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "repo"),
                    str(elsewhere / "clone.git")], check=True)
    (tmp_path / "repo").rename(tmp_path / "gone")
    lost = agentos(elsewhere, "verify", str(run_dir), "--key", str(tmp_path / "agentos.pub"))
    assert lost.returncode == 5 and "absent here" in lost.stdout, lost.stdout
    ok = agentos(elsewhere, "verify", str(run_dir), "--key", str(tmp_path / "agentos.pub"),
                 "--repo", "clone.git")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    gates = agentos(tmp_path, "gates", "--run", "r1", "--outputs", "out",
                    "--repo", str(elsewhere / "clone.git"))
    assert gates.returncode == 0, gates.stdout + gates.stderr
    missing = agentos(elsewhere, "verify", str(run_dir), "--key", str(tmp_path / "agentos.pub"),
                      "--repo", "nowhere")
    assert missing.returncode == 2 and "--repo nowhere: no such directory" in missing.stderr
    (tmp_path / "gone").rename(tmp_path / "repo")
    # nothing later rewrites a signed run: gates go beside it, forget + run change nothing
    signed = {p: p.read_bytes() for p in sorted(run_dir.rglob("*"))
              if p.is_file() and ".state" not in p.parts}
    again = doit(tmp_path, "gates", "request=req.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    checks = sorted((tmp_path / "out" / "r1.checks").glob("*/gates.json"))
    assert len(checks) == 2 and "is signed: its reports/ stay as signed" in again.stdout  # --repo too
    doit(tmp_path, "forget", "request=req.yaml")
    rerun = doit(tmp_path, "run", "request=req.yaml")
    assert "Traceback" not in rerun.stdout + rerun.stderr
    resign = doit(tmp_path, "sign", "request=req.yaml", "key=agentos.key")
    assert resign.returncode != 0 and "is already signed" in resign.stderr, resign.stderr
    assert {p: p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and ".state" not in p.parts} == signed
    ok = agentos(elsewhere, "verify", str(run_dir), "--key", str(tmp_path / "agentos.pub"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    patch = run_dir / "patches/s1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+1", b"+7"))
    bad = agentos(elsewhere, "verify", str(run_dir), "--key", str(tmp_path / "agentos.pub"))
    assert bad.returncode == 5
    assert "FAIL" in bad.stdout and "patches/s1.patch" in bad.stdout


def test_sign_refuses_when_a_gate_fails(tmp_path: Path) -> None:
    write_request(tmp_path, STEPS)
    doit(tmp_path, "run", "request=req.yaml", check=0)
    assert agentos(tmp_path, "keygen").returncode == 0
    (tmp_path / "out/r1/steps/s1.json").unlink()
    proc = doit(tmp_path, "sign", "request=req.yaml", "key=agentos.key")
    assert proc.returncode != 0
    assert not (tmp_path / "out/r1/signature/envelope.dsse.json").exists()
    gates = json.loads((tmp_path / "out/r1/reports/gates.json").read_text())
    assert any(g["status"] == "FAIL" for g in gates["gates"])
    # the deleted manifest was reported, not regenerated
    assert not (tmp_path / "out/r1/steps/s1.json").exists()


def test_schema_command_prints_json_schema(tmp_path: Path) -> None:
    for kind in ("request", "policy"):
        proc = agentos(tmp_path, "schema", kind)
        assert proc.returncode == 0
        schema = json.loads(proc.stdout)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert "version" in schema["required"]
