"""`agentos schema request|policy`: the JSON Schemas accept every shipped example, refuse
what the loaders refuse (as far as JSON Schema can say it), describe every key, and the
copies shipped in docs/schema/ are exactly what the command prints."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agentos_tasks.cli import main
from agentos_tasks.errors import AgentosError
from agentos_tasks.policy.schema import load_policy
from agentos_tasks.request import load_request
from agentos_tasks.schemas import json_schema

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("request", "policy")
COMMENT = re.compile(r"^# yaml-language-server: \$schema=\.\./docs/schema/(request|policy)"
                     r"\.schema\.json\n")
EXAMPLES = sorted({*ROOT.glob("requests/*.yaml"), *ROOT.glob("policies/*.yaml"),
                   *ROOT.glob("agentos_tasks/policies/*.yaml")})


def validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


VALIDATORS = {kind: validator(kind) for kind in KINDS}


def errors(kind: str, data: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in VALIDATORS[kind].iter_errors(data)]


def doc_blocks() -> Iterator[tuple[str, str]]:
    """Complete requests and policies shown in README.md and docs/ (```yaml with version:)."""
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, block in enumerate(re.findall(r"```yaml\n(.*?)```", md.read_text(),
                                                  re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "version" in data:
                yield f"{md.relative_to(ROOT)}#{number}", block


# --------------------------------------------------------------------------- examples

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_example_names_its_schema_and_validates(path: Path) -> None:
    text = path.read_text()
    match = COMMENT.match(text)
    assert match, f"{path}: first line must be the yaml-language-server schema comment"
    kind = match.group(1)
    assert errors(kind, yaml.safe_load(text)) == []
    # and the loader, the source of truth, agrees
    (load_request if kind == "request" else load_policy)(path)


def test_examples_cover_both_kinds() -> None:
    kinds = [COMMENT.match(p.read_text()).group(1) for p in EXAMPLES]  # type: ignore[union-attr]
    assert kinds.count("request") >= 2 and kinds.count("policy") >= 3


def test_complete_examples_in_the_docs_validate() -> None:
    blocks = list(doc_blocks())
    assert blocks, "no complete request or policy example found in README.md or docs/"
    for where, block in blocks:
        data = yaml.safe_load(block)
        kind = "request" if "steps" in data else "policy"
        assert errors(kind, data) == [], where


# --------------------------------------------------------------------------- faithful

def demo() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "requests/demo.yaml").read_text())
    return data


def policy() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "policies/sandbox_policy.yaml").read_text())
    return data


def step(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data["steps"][0] = {"id": "s1", **changes}
    return data


Mutation = Callable[[dict[str, Any]], Any]

# (kind, label, mutation, accepted by the loader) - every row is checked against BOTH the
# loader and the JSON Schema: they must agree.
CASES: list[tuple[str, str, Mutation, bool]] = [
    ("request", "unknown top-level key", lambda d: d.update(stepz=[]), False),
    ("request", "unknown step key", lambda d: d["steps"][0].update(wrte={}), False),
    ("request", "unknown write key", lambda d: d["steps"][0]["write"].update(mode=1), False),
    ("request", "version as string", lambda d: d.update(version="1"), False),
    ("request", "version true", lambda d: d.update(version=True), False),
    ("request", "version 2", lambda d: d.update(version=2), False),
    ("request", "id with a slash", lambda d: d.update(id="a/b"), False),
    ("request", "hidden id", lambda d: d.update(id=".x"), False),
    ("request", "no steps", lambda d: d.update(steps=[]), False),
    ("request", "repo missing", lambda d: d.pop("repo"), False),
    ("request", "init_repo as string", lambda d: d.update(init_repo="yes"), False),
    ("request", "run as a shell string", lambda d: step(d, run="make test"), False),
    ("request", "run empty", lambda d: step(d, run=[]), False),
    ("request", "run with an empty token", lambda d: step(d, run=["echo", ""]), False),
    ("request", "run with a mapping token", lambda d: step(d, run=["echo", {"a": 1}]), False),
    ("request", "run with bare numbers", lambda d: step(d, run=["sleep", 5, True]), True),
    ("request", "two operations", lambda d: step(d, run=["true"], delete={"path": "a"}),
     False),
    ("request", "no operation", lambda d: step(d, message="m"), False),
    ("request", "expect_exit on write", lambda d: step(d, write={"path": "a", "content": ""},
                                                        expect_exit=0), False),
    ("request", "expect_exit on run", lambda d: step(d, run=["false"], expect_exit=1), True),
    ("request", "expect_exit 256", lambda d: step(d, run=["false"], expect_exit=256), False),
    ("request", "expect_exit true", lambda d: step(d, run=["false"], expect_exit=True), False),
    ("request", "write without content", lambda d: step(d, write={"path": "a"}), False),
    ("request", "content and content_file",
     lambda d: step(d, write={"path": "a", "content": "", "content_file": "demo.yaml"}), False),
    ("request", "content_file", lambda d: step(d, write={"path": "a",
                                                          "content_file": "demo.yaml"}), True),
    ("request", "content as a number", lambda d: step(d, write={"path": "a", "content": 1}),
     False),
    ("request", "command adapter without argv",
     lambda d: step(d, tool={"adapter": "command", "prompt": "p"}), False),
    ("request", "claude adapter without argv",
     lambda d: step(d, tool={"adapter": "claude", "prompt": "p"}), True),
    ("request", "unknown adapter", lambda d: step(d, tool={"adapter": "gpt", "prompt": "p"}),
     False),
    ("request", "author with <", lambda d: d.update(author={"name": "a<b", "email": "e"}),
     False),
    ("request", "question without text", lambda d: d.update(questions=[{"id": "q"}]), False),
    ("policy", "unknown top-level key", lambda d: d.update(netwrok=False), False),
    ("policy", "unknown limit", lambda d: d["limits"].update(cpu=1), False),
    ("policy", "limit as boolean", lambda d: d["limits"].update(max_steps=True), False),
    ("policy", "limit zero", lambda d: d["limits"].update(max_steps=0), False),
    ("policy", "fractional step_seconds", lambda d: d["limits"].update(step_seconds=0.5),
     True),
    ("policy", "step_seconds zero", lambda d: d["limits"].update(step_seconds=0), False),
    ("policy", "unknown operation", lambda d: d.update(operations=["exec"]), False),
    ("policy", "glob empty", lambda d: d["paths"].update(allow=[""]), False),
    ("policy", "path rule without glob", lambda d: d["paths"].update(allow=[{"id": "x"}]),
     False),
    ("policy", "reserved rule id",
     lambda d: d["paths"].update(allow=[{"id": "paths.default", "glob": "a"}]), False),
    ("policy", "network true", lambda d: d.update(network=True), False),
    ("policy", "network unrestricted", lambda d: d.update(network="unrestricted"), True),
    ("policy", "network allow list", lambda d: d.update(network={"allow": ["a.example:443"]}),
     True),
    ("policy", "network pin to a non-address",
     lambda d: d.update(network={"allow": ["a.example:443"], "resolve": {"a.example": "x"}}),
     False),
    ("policy", "network pin to an integer",
     lambda d: d.update(network={"allow": ["a.example:443"], "resolve": {"a.example": 1}}),
     False),
    ("policy", "network pin", lambda d: d.update(
        network={"allow": ["a.example:443"], "resolve": {"a.example": "192.0.2.7"}}), True),
    ("policy", "argv on a non-command tool",
     lambda d: d["tools"][0].update(argv=["claude"]), False),
    ("policy", "env name with a dash", lambda d: d.update(env=["A-B"]), False),
    ("policy", "isolation off", lambda d: d.update(isolation="off"), False),
    ("policy", "provider without base_url",
     lambda d: d["tools"][0].update(provider={"model": "m"}), False),
]


@pytest.mark.parametrize(("kind", "label", "mutate", "accepted"), CASES,
                         ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_schema_and_loader_agree(tmp_path: Path, kind: str, label: str, mutate: Mutation,
                                 accepted: bool) -> None:
    data = copy.deepcopy(demo() if kind == "request" else policy())
    mutate(data)
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "demo.yaml").write_text("content\n")  # a content_file the request names
    try:
        (load_request if kind == "request" else load_policy)(path)
        loader_ok = True
    except AgentosError:
        loader_ok = False
    assert loader_ok is accepted, f"loader: {label}"
    found = errors(kind, data)
    assert (found == []) is accepted, f"schema: {label}: {found}"


# --------------------------------------------------------------------------- descriptions

def properties(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            yield f"{where}.{key}", value
        for key, value in node.items():
            yield from properties(value, f"{where}.{key}" if key != "properties" else where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from properties(value, f"{where}[{index}]")


@pytest.mark.parametrize("kind", KINDS)
def test_every_key_has_a_description(kind: str) -> None:
    schema = json_schema(kind)
    found = list(properties(schema))
    assert len(found) > 20
    conditions = re.compile(r"\.(if|then|else|not|dependentSchemas)(\.|$)")
    missing = [where for where, value in found
               if not conditions.search(where) and len(value.get("description", "")) < 10]
    assert schema["description"] and missing == []


def test_a_missing_description_is_caught() -> None:
    schema = json_schema("request")
    del schema["properties"]["steps"]["items"]["properties"]["run"]["description"]
    assert any("run" in where and "description" not in value
               for where, value in properties(schema))


# --------------------------------------------------------------------------- shipped copies

@pytest.mark.parametrize("kind", KINDS)
def test_shipped_schema_is_what_agentos_schema_prints(kind: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", kind]) == 0
    printed = capsys.readouterr().out
    shipped = (ROOT / "docs/schema" / f"{kind}.schema.json").read_text()
    assert shipped == printed, (f"docs/schema/{kind}.schema.json is stale: "
                                f"agentos schema {kind} > docs/schema/{kind}.schema.json")
    assert json.loads(printed) == json_schema(kind)
