"""JSON Schemas for requests and policies, generated from the voluptuous schemas (one
source of truth, descriptions included) with voluptuous-openapi.

The converter only sees declarative validators, so three things are added here:
- a meaning for the loaders' own callables (`_arg`, `_strict_int`, `_network`, ...),
  which voluptuous-openapi would otherwise turn into "any object" or "any string";
- the rules the loaders check outside voluptuous that JSON Schema can state (one
  operation per step, `expect_exit` only on run/tool steps, `content` xor
  `content_file`, the `command` adapter needs argv, reserved rule ids);
- strictness the converter leaves out (arrays get minItems, objects reject unknown keys).

What JSON Schema cannot state is still checked by the loader only: unique step and rule
ids, input files that exist, commit-message safety, glob and network-entry syntax.
tests/test_schema.py holds the schemas to every shipped example and to invalid ones.
"""

from __future__ import annotations

import json
from typing import Any

from voluptuous_openapi import UNSUPPORTED, convert

from agentos_tasks.errors import AgentosError

_ANY: dict[str, Any] = {}
_NETWORK_OBJECT_HELP = "Allowlist proxy grant."


def _serializer(kind: str) -> Any:
    """voluptuous-openapi's hook: a JSON Schema for each loader callable (else UNSUPPORTED)."""
    from agentos_tasks import request
    from agentos_tasks.policy import schema as policy

    def network() -> dict[str, Any]:
        grant = convert(policy._NETWORK_MAP, custom_serializer=serialize)
        grant["description"] = _NETWORK_OBJECT_HELP
        grant["properties"]["resolve"]["propertyNames"] = {"minLength": 1}
        return {"anyOf": [
            {"const": False, "description": "No network (the sandbox's own empty loopback)."},
            {"const": "unrestricted", "description": "Any public host (never loopback, "
             "private or metadata addresses); flagged in the evidence."},
            grant,
        ]}

    def serialize(node: Any) -> Any:
        if node is object:
            return dict(_ANY)
        if node is request._arg:  # argv items: bare YAML numbers and booleans become text
            return {"anyOf": [{"type": "string", "minLength": 1}, {"type": "number"},
                              {"type": "boolean"}]}
        if node is request._strict_int or node is policy._strict_int:
            return dict(_ANY)  # JSON Schema's "integer" already excludes booleans
        if node is policy._network:
            return network()
        if node is policy._allow_entry:
            return dict(_ANY)  # host[:port] syntax: the loader checks it
        if node is policy._address:
            return {"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
        return UNSUPPORTED

    return serialize


def _tighten(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _tighten(v) for k, v in node.items()}
        if node.get("type") == "array" and "minLength" in node:
            node["minItems"] = node.pop("minLength")
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        if node.get("required") == []:
            del node["required"]
        return node
    if isinstance(node, list):
        return [_tighten(v) for v in node]
    return node


def _one_of_keys(keys: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    return [{"required": [key]} for key in keys]


def _request_rules(schema: dict[str, Any]) -> None:
    """The request loader's checks outside voluptuous (request._precheck, _build_step)."""
    from agentos_tasks.model import OPS

    step = schema["properties"]["steps"]["items"]
    step["oneOf"] = _one_of_keys(OPS)  # exactly one operation
    step["dependentSchemas"] = {"expect_exit": {"anyOf": _one_of_keys(["run", "tool"])}}
    write = step["properties"]["write"]
    write.pop("anyOf", None)
    write["oneOf"] = _one_of_keys(["content", "content_file"])  # exactly one source
    tool = step["properties"]["tool"]
    tool["if"] = {"properties": {"adapter": {"const": "command"}}, "required": ["adapter"]}
    tool["then"] = {"required": ["argv"]}


def _policy_rules(schema: dict[str, Any]) -> None:
    """The policy loader's checks outside voluptuous (schema._check_rule_ids, tools)."""
    from agentos_tasks.policy.schema import RESERVED_RULE_IDS

    reserved = {"not": {"enum": sorted(RESERVED_RULE_IDS)}}
    props = schema["properties"]
    rule_objects = [next(alt for alt in props["paths"]["properties"][kind]["items"]["anyOf"]
                         if alt.get("type") == "object")
                    for kind in ("allow", "deny", "ask", "executable")]
    rule_objects += [props["commands"]["items"], props["tools"]["items"]]
    for rule in rule_objects:
        rule["properties"]["id"].update(reserved)
    tool = props["tools"]["items"]
    tool["if"] = {"properties": {"adapter": {"const": "command"}}, "required": ["adapter"]}
    tool["else"] = {"not": {"required": ["argv"]}}


def json_schema(kind: str) -> dict[str, Any]:
    if kind == "request":
        from agentos_tasks.request import REQUEST_SCHEMA as schema
    elif kind == "policy":
        from agentos_tasks.policy import POLICY_SCHEMA as schema
    else:
        raise AgentosError(f"no schema named {kind!r}", hint="request or policy")
    # through JSON: tuples (ADAPTERS, OPS) become arrays, as a validator expects
    converted = json.loads(json.dumps(convert(schema, custom_serializer=_serializer(kind))))
    result: dict[str, Any] = _tighten(converted)
    (_request_rules if kind == "request" else _policy_rules)(result)
    result["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    result["title"] = f"agentos-tasks {kind} (version 1)"
    result["description"] = (
        "A change request: a target repository and the steps to run on it."
        if kind == "request" else
        "A policy: what a request may change and run; anything it does not allow is denied.")
    return result
