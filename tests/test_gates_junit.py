"""reports/gates.xml validates against Jenkins xunit's junit-10.xsd constraints
(tests/data/junit-10.xsd) and says what the gates said: FAIL is a <failure>,
NOT_APPLICABLE is a property and the case's <system-out>, never a <skipped>."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Built
from lxml import etree

from agentos_tasks.gates.common import FAIL, NA, PASS, GateResult
from agentos_tasks.gates.report import junit_xml

XSD = Path(__file__).parent / "data" / "junit-10.xsd"


def _schema() -> object:
    return etree.XMLSchema(etree.parse(str(XSD)))


def _assert_valid(xml: bytes) -> object:
    schema = _schema()
    doc = etree.fromstring(xml)
    assert schema.validate(doc), schema.error_log  # type: ignore[attr-defined]
    return doc


def _gates(run_dir: Path) -> list[dict[str, str]]:
    gates: list[dict[str, str]] = json.loads(
        (run_dir / "reports" / "gates.json").read_text())["gates"]
    return gates


def _check_against_gates_json(run_dir: Path) -> None:
    suite = _assert_valid((run_dir / "reports" / "gates.xml").read_bytes())
    gates = _gates(run_dir)
    statuses = [g["status"] for g in gates]
    assert suite.get("tests") == str(len(gates))
    assert suite.get("failures") == str(statuses.count(FAIL))
    assert suite.get("errors") == "0"
    assert suite.findall(".//skipped") == []
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    for g in gates:
        case = cases[g["id"]]
        assert props[f"gate.{g['id']}"] == g["status"]
        assert case.findtext("system-out").startswith(f"{g['status']}: ")
        failure = case.find("failure")
        if g["status"] == FAIL:
            assert failure is not None and failure.get("message") == g["reason"]
        else:
            assert failure is None


def test_junit_of_a_good_run_is_valid_and_true(good_run: Built) -> None:
    assert good_run.gates().returncode == 0
    _check_against_gates_json(good_run.run_dir)
    assert NA in {g["status"] for g in _gates(good_run.run_dir)}


def test_junit_of_a_failing_run_is_valid_and_true(good_run: Built) -> None:
    patch = good_run.run_dir / "patches" / "s1.patch"
    patch.write_bytes(patch.read_bytes().replace(b"+alpha", b"+omega"))
    assert good_run.gates().returncode == 5
    assert FAIL in {g["status"] for g in _gates(good_run.run_dir)}
    _check_against_gates_json(good_run.run_dir)


def test_the_schema_rejects_what_jenkins_rejects() -> None:
    """The xsd can fail: no errors= (the old gates.xml), a case without a name, an
    element JUnit does not know."""
    good = junit_xml("r1", [GateResult("R2", "t", PASS, "ok"), GateResult("R3", "t", FAIL, "bad <x>"),
                            GateResult("A1", "t", NA, "no questions")]).encode()
    _assert_valid(good)
    schema = _schema()
    for bad in (good.replace(b' errors="0"', b""),
                good.replace(b'classname="gates" name="R2"', b'classname="gates"'),
                good.replace(b"<system-out>NOT_APPLICABLE", b"<note/><system-out>N")):
        assert bad != good
        assert not schema.validate(etree.fromstring(bad))  # type: ignore[attr-defined]
