"""Evidence signed as it happens (issue 12): the executor key signs each step's in-toto
link when its step_end is written and the tape head when an invocation ends; gate AT
recomputes every link from the evidence; `doit sign` refuses and `agentos verify` fails a
run whose attestations do not hold.

One good run per session (conftest `good_run`), restored in place for every case.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from conftest import Built, read_events
from runutil import doit, write_request
from securesystemslib.dsse import Envelope
from security.conftest import require_bwrap

from agentos_tasks.attest.keys import load_public_key
from agentos_tasks.fsutil import sha256_bytes, sha256_file


def envelope_of(path: Path) -> tuple[Envelope, dict[str, Any]]:
    envelope = Envelope.from_dict(json.loads(path.read_bytes()))
    return envelope, json.loads(envelope.payload)


def test_every_step_end_has_a_link_signed_by_the_executor_key(good_run: Built,
                                                               executor_key: Path) -> None:
    run_dir = good_run.run_dir
    pub = load_public_key(run_dir / "attestations" / "executor.pub.json")
    from agentos_tasks.attest.keys import load_signer

    assert pub.keyid == load_signer(executor_key).public_key.keyid
    lines = (run_dir / "audit" / "run_tape.jsonl").read_bytes().splitlines()
    ends = [e for e in read_events(run_dir) if e["event"] == "step_end"]
    assert len(ends) == 7
    for end in ends:
        envelope, statement = envelope_of(
            run_dir / "attestations" / f"{end['step']}.{end['seq']}.link.dsse.json")
        envelope.verify([pub], 1)
        assert statement["predicateType"] == "https://in-toto.io/attestation/link/v0.3"
        byproducts = statement["predicate"]["byproducts"]
        assert byproducts["tape"] == {"seq": end["seq"],
                                      "line_sha256": sha256_bytes(lines[end["seq"]])}
        assert byproducts["ended_at"] == end["ts"]
        assert byproducts["manifest_sha256"] == sha256_file(
            run_dir / "steps" / f"{end['step']}.json")
        materials = statement["predicate"]["materials"]
        manifest = json.loads((run_dir / "steps" / f"{end['step']}.json").read_bytes())
        assert materials[0]["digest"] == {"gitCommit": manifest["parent"]}
    s7 = next(e for e in ends if e["step"] == "s7")
    _, statement = envelope_of(run_dir / "attestations" / f"s7.{s7['seq']}.link.dsse.json")
    assert statement["predicate"]["command"][1:] == ["-c", "open('gen.txt', 'w').write('g')"]
    assert statement["predicate"]["byproducts"]["log_sha256"] == sha256_file(
        run_dir / "logs" / "s7.out")
    envelope, head = envelope_of(run_dir / "attestations" / "tape_head.dsse.json")
    envelope.verify([pub], 1)
    assert head["predicate"]["count"] == len(lines)
    assert head["predicate"]["head"] == sha256_bytes(lines[-1])


def test_the_executor_key_is_private_and_outside_the_run(good_run: Built,
                                                         executor_key: Path) -> None:
    assert stat.S_IMODE(executor_key.stat().st_mode) == 0o600
    assert good_run.root not in executor_key.parents
    names = {p.name for p in good_run.run_dir.rglob("*") if p.is_file()}
    assert "executor.key" not in names


def test_a_run_step_cannot_read_the_executor_key(tmp_path: Path, executor_key: Path) -> None:
    """The sandbox binds neither the key nor its directory: the step's read fails."""
    require_bwrap()
    code = (f"import sys\ntry:\n    open({str(executor_key)!r}, 'rb').read()\n"
            "except OSError as exc:\n    print('denied', exc)\n    sys.exit(3)\n"
            "open('leak.txt', 'w').write('read it')\n")
    write_request(tmp_path, [{"id": "peek", "message": "peek: try the key",
                              "run": ["python3", "-c", code], "expect_exit": 3}])
    doit(tmp_path, "run", "request=req.yaml", check=0)
    run_dir = tmp_path / "out" / "r1"
    assert "denied" in (run_dir / "logs" / "peek.out").read_text()
    manifest = json.loads((run_dir / "steps" / "peek.json").read_bytes())
    assert manifest["sandbox"]["backend"] == "bwrap"
    wrapper = manifest["sandbox"]["wrapper_argv"]
    binds = " ".join(wrapper[:len(wrapper) - 4])  # what comes before `-- python3 -c CODE`
    assert wrapper[-4] == "--" and str(executor_key.parent) not in binds
    assert not (tmp_path / "repo" / "leak.txt").exists()
