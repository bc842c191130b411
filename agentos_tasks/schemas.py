"""JSON Schemas for requests and policies, generated from the voluptuous schemas
(one source of truth) with voluptuous-openapi, then tightened where the converter is
loose (arrays get minItems, objects reject unknown keys)."""

from __future__ import annotations

from typing import Any

from voluptuous_openapi import convert

from agentos_tasks.errors import AgentosError


def _tighten(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _tighten(v) for k, v in node.items()}
        if node.get("type") == "array" and "minLength" in node:
            node["minItems"] = node.pop("minLength")
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [_tighten(v) for v in node]
    return node


def json_schema(kind: str) -> dict[str, Any]:
    if kind == "request":
        from agentos_tasks.request import REQUEST_SCHEMA as schema
    elif kind == "policy":
        from agentos_tasks.policy import POLICY_SCHEMA as schema
    else:
        raise AgentosError(f"no schema named {kind!r}", hint="request or policy")
    result: dict[str, Any] = _tighten(convert(schema))
    result["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    result["title"] = f"agentos-tasks {kind} (version 1)"
    return result
