"""NET: a networked run's ledger, built once per module, then tampered with per test.

The run's one `run` step reaches an allowed listener through the allowlist proxy and is
refused an unlisted host; each test rewrites the ledger (and, for a careful forger, the
manifest's digest and count too) and sees NET FAIL, while the good run PASSes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Built, _must, _new_run, assert_fail, assert_pass, doit, sha256
from tests.runutil import echo_listener

CLIENT = """\
import os, socket, sys
host, _, port = os.environ["HTTPS_PROXY"].removeprefix("http://").rstrip("/").rpartition(":")
seen = []
for target in sys.argv[1:]:
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
        status = conn.recv(64).split(b" ")[1].decode()
        if status == "200":
            conn.sendall(b"ping")
            conn.recv(16)
        seen.append(status)
open("net.txt", "w").write(" ".join(seen) + "\\n")
"""


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A loopback echo server (the allowed upstream)."""
    with echo_listener() as port:
        yield port


@pytest.fixture(scope="module")
def _networked(tmp_path_factory: pytest.TempPathFactory, listener: int) -> Built:
    policy = f"""\
version: 1
id: net-test
operations: [write, run]
paths: {{allow: ["**"], deny: [".git/**"]}}
commands:
  - {{id: py, argv: [{sys.executable}]}}
network: {{allow: ["127.0.0.1:{listener}"]}}
isolation: required
env: [PATH, LANG]
"""
    request = f"""\
version: 1
id: net-run
repo: ./repo
init_repo: true
branch: main
policy: ./policy.yaml
steps:
  - id: fetch
    message: "fetch: talk to the allowed host, try an unlisted one"
    run: [{sys.executable}, -c, {json.dumps(CLIENT)}, "127.0.0.1:{listener}", "evil.test:443"]
"""
    built = _new_run(tmp_path_factory.mktemp("net"), "net-run", request, policy)
    _must(doit(built.root, "run", built.request, built.outputs), True, "networked run")
    built.snapshot()
    return built


@pytest.fixture
def net_run(_networked: Built) -> Iterator[Built]:
    yield _networked.restore()


def _ledger(built: Built) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            (built.run_dir / "network" / "fetch.jsonl").read_text().splitlines()]


def _write_ledger(built: Built, entries: list[dict[str, Any]], *, careful: bool) -> None:
    """Rewrite the ledger; a careful forger also fixes the manifest's digest and count."""
    path = built.run_dir / "network" / "fetch.jsonl"
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    if careful:
        manifest_path = built.run_dir / "steps" / "fetch.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["sandbox"]["ledger"]["sha256"] = sha256(path.read_bytes())
        manifest["sandbox"]["ledger"]["entries"] = len(entries)
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_the_good_networked_run_passes_and_records_both_decisions(net_run: Built,
                                                                  listener: int) -> None:
    entries = _ledger(net_run)
    assert [(e["host"], e["port"], e["decision"]) for e in entries] == \
        [("127.0.0.1", listener, "allow"), ("evil.test", 443, "deny")]
    assert entries[0]["rule"] == "network.allow[0]" and entries[0]["bytes_down"] >= 4
    assert entries[1]["bytes_up"] == entries[1]["bytes_down"] == 0
    result = assert_pass(net_run.run_dir, "NET")
    assert "2 connection(s) re-decided" in result.reason and "1 denied" in result.reason


def test_a_denial_rewritten_as_allowed_fails(net_run: Built) -> None:
    entries = _ledger(net_run)
    entries[1].update(decision="allow", rule="network.allow[0]", address="93.184.216.34")
    _write_ledger(net_run, entries, careful=True)
    assert_fail(net_run.run_dir, "NET", "fetch.jsonl:2", "the recorded policy decides deny")


def test_an_allowed_host_renamed_fails(net_run: Built) -> None:
    entries = _ledger(net_run)
    entries[0]["host"] = "exfil.example.com"
    _write_ledger(net_run, entries, careful=True)
    assert_fail(net_run.run_dir, "NET", "fetch.jsonl:1", "exfil.example.com")


def test_a_removed_entry_fails_even_with_digest_and_count_fixed(net_run: Built) -> None:
    entries = _ledger(net_run)
    _write_ledger(net_run, entries[1:], careful=True)
    assert_fail(net_run.run_dir, "NET", "seq")


def test_a_ledger_edited_without_its_manifest_fails_on_the_digest(net_run: Built) -> None:
    entries = _ledger(net_run)
    entries[0]["bytes_up"] += 1000
    _write_ledger(net_run, entries, careful=False)
    assert_fail(net_run.run_dir, "NET", "not the ledger its manifest recorded")


def test_a_missing_ledger_fails(net_run: Built) -> None:
    (net_run.run_dir / "network" / "fetch.jsonl").unlink()
    assert_fail(net_run.run_dir, "NET", "missing")


def test_a_stray_ledger_fails(net_run: Built) -> None:
    (net_run.run_dir / "network" / "other.jsonl").write_text("")
    assert_fail(net_run.run_dir, "NET", "network/other.jsonl", "not the ledger of any step")


def test_a_changed_rule_id_or_address_fails(net_run: Built) -> None:
    entries = _ledger(net_run)
    entries[0]["rule"] = "network.allow[7]"
    _write_ledger(net_run, entries, careful=True)
    assert_fail(net_run.run_dir, "NET", "fetch.jsonl:1")
    net_run.restore()
    entries = _ledger(net_run)
    entries[0]["address"] = "10.0.0.1"
    _write_ledger(net_run, entries, careful=True)
    assert_fail(net_run.run_dir, "NET", "fetch.jsonl:1")


def test_a_denied_connection_claiming_bytes_fails(net_run: Built) -> None:
    entries = _ledger(net_run)
    entries[1]["bytes_down"] = 512
    _write_ledger(net_run, entries, careful=True)
    assert_fail(net_run.run_dir, "NET", "denied connection records bytes")


def test_a_malformed_ledger_line_fails(net_run: Built) -> None:
    path = net_run.run_dir / "network" / "fetch.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    manifest_path = net_run.run_dir / "steps" / "fetch.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sandbox"]["ledger"]["sha256"] = sha256(path.read_bytes())
    manifest_path.write_text(json.dumps(manifest))
    assert_fail(net_run.run_dir, "NET", "fetch.jsonl")


def test_the_manifest_must_record_the_network_grant(net_run: Built) -> None:
    manifest_path = net_run.run_dir / "steps" / "fetch.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["sandbox"]["ledger"]
    manifest_path.write_text(json.dumps(manifest))
    assert_fail(net_run.run_dir, "NET", "records no ledger")


def test_the_whole_gate_set_has_no_fail_on_the_good_run(net_run: Built) -> None:
    proc = net_run.gates()
    assert proc.returncode == 0, proc.stdout[-3000:]
    gates = json.loads((net_run.run_dir / "reports" / "gates.json").read_text())
    assert {g["id"]: g["status"] for g in gates["gates"]}["NET"] == "PASS"
    report = (net_run.run_dir / "reports" / "report.md").read_text()
    assert "## Network" in report and "evil.test" in report
