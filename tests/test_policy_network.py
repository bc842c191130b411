"""Policy: network grants (allowlists per tool, per run step, narrowed per command),
secrets and providers, and tool paths that reach beyond the policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentos_tasks.errors import AgentosError
from agentos_tasks.model import Step, ToolSpec
from agentos_tasks.policy import decide_tool, step_network
from agentos_tasks.policy.schema import load_policy


def _policy(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nid: p\noperations: [run, tool]\n" + body)
    return path


def _step(op: str, **kw: object) -> Step:
    return Step(id="s", index=0, op=op, message="m", line=1, **kw)  # type: ignore[arg-type]


def test_network_forms_and_rule_ids(tmp_path: Path) -> None:
    pol = load_policy(_policy(tmp_path, """\
network: {allow: ["pypi.org:443", "*.pythonhosted.org:443", "mirror.test:443"],
          resolve: {mirror.test: 10.0.0.5}}
commands:
  - {id: pip, argv: [pip, install], network: {allow: ["pypi.org:443"]}}
  - {id: tests, argv: [pytest], network: false}
  - {id: other, argv: [make]}
tools:
  - {id: claude, adapter: claude, network: unrestricted}
  - {adapter: codex}
"""))
    assert pol.network is not None and pol.network.rule_id == "network"
    assert pol.network.resolve == (("mirror.test", "10.0.0.5"),)
    pip = step_network(pol, _step("run", argv=("pip", "install", "x")))
    assert pip is not None and pip.allow == ("pypi.org:443",) and pip.rule_id == "pip.network"
    assert step_network(pol, _step("run", argv=("pytest", "-q"))) is None  # narrowed to none
    assert step_network(pol, _step("run", argv=("make",))) == pol.network  # inherits
    claude = step_network(pol, _step("tool", tool=ToolSpec(adapter="claude", prompt="p",
                                                           paths=("**",))))
    assert claude is not None and claude.unrestricted and claude.rule_id == "claude.network"
    assert step_network(pol, _step("tool", tool=ToolSpec(adapter="codex", prompt="p",
                                                         paths=("**",)))) is None
    assert claude.as_dict() == {"rule_id": "claude.network", "allow": [], "resolve": {},
                                "unrestricted": True}


@pytest.mark.parametrize(("body", "line", "needle"), [
    ("network: true\n", 4, "network: true is not accepted"),
    ("tools:\n  - {adapter: claude, network: true}\n", 5, "network: true is not accepted"),
    ("network: {allow: [\"evil.com@good.com:443\"]}\n", 4, "network"),
    ("network: {allow: [\"a.com:99999\"]}\n", 4, "network"),
    ("network: {allow: [\"a\\u0000.com\"]}\n", 4, "network"),
    ("network: {resolve: {a.test: 127.0.0.1}}\n", 4, "missing required key 'allow'"),
    ("network: {allow: [\"a.com:443\"], resolve: {a.com: not-an-ip}}\n", 4, "not an IP"),
    ("network: {allow: [\"a.com:443\"]}\ncommands:\n  - {argv: [pip], network: "
     "{allow: [\"b.com:443\"]}}\n", 6, "wider than the top-level network: b.com:443"),
    ("commands:\n  - {argv: [pip], network: {allow: [\"b.com:443\"]}}\n", 5,
     "the top-level network is false"),
    ("env: [PATH, TOKEN]\ntools:\n  - {adapter: claude, secrets: [TOKEN]}\n", 6,
     "TOKEN is also in env"),
    ("tools:\n  - adapter: claude\n    secrets: [A]\n    provider: {base_url: "
     "\"https://gw.test\", api_key_env: B}\n", 7, "api_key_env B is not one of"),
    ("tools:\n  - {adapter: claude, provider: {base_url: \"ftp://x\"}}\n", 5,
     "http:// or https://"),
    # review findings: refused when the policy loads, not inside the step
    ("network: {allow: [\"*\"]}\n", 4, "'*' allows every host"),
    ("network: {allow: [\"a.test:443\"], resolve: {a..test: 127.0.0.1}}\n", 4, "resolve"),
    ("network: {allow: [\"a.test:443\"], resolve: {b.test: 127.0.0.1}}\n", 4,
     "pins b.test, which no allow entry names"),
    ("tools:\n  - adapter: claude\n    network: {allow: [\"gw.test:443\"]}\n"
     "    provider: {base_url: \"https://other.test\"}\n", 7,
     "other.test:443 is not in the tool's network allow list"),
    ("tools:\n  - adapter: claude\n    network: {allow: [\"gw.test:443\"]}\n"
     "    provider: {base_url: \"http://gw.test:8080\"}\n", 7, "gw.test:8080"),
    ("tools:\n  - adapter: claude\n    provider: {base_url: \"https://gw.test\"}\n", 6,
     "the tool has no network"),
])
def test_bad_network_secret_and_provider_entries(tmp_path: Path, body: str, line: int,
                                                 needle: str) -> None:
    path = _policy(tmp_path, body)
    with pytest.raises(AgentosError) as info:
        load_policy(path)
    message = info.value.message
    assert f"policy.yaml:{line}" in str(info.value.where or "") + message or \
        f":{line}:" in str(info.value), str(info.value)
    assert needle in str(info.value)


def test_provider_and_secrets_are_recorded_as_names(tmp_path: Path) -> None:
    pol = load_policy(_policy(tmp_path, """\
tools:
  - adapter: claude
    network: {allow: ["gw.example.com:443"]}
    secrets: [GW_KEY]
    provider: {base_url: "https://gw.example.com/", api_key_env: GW_KEY, model: m1}
"""))
    rule = pol.tool_rule("claude")
    assert rule is not None and rule.secrets == ("GW_KEY",)
    assert rule.provider is not None
    assert (rule.provider.base_url, rule.provider.api_key_env, rule.provider.model) == \
        ("https://gw.example.com", "GW_KEY", "m1")


def test_tool_paths_wider_than_the_policy_are_refused_up_front(tmp_path: Path) -> None:
    pol = load_policy(_policy(tmp_path, """\
paths: {allow: ["src/**/*.py", "docs/**"], deny: ["**/secret*"]}
tools: [{adapter: claude}]
"""))

    def tool(*paths: str) -> ToolSpec:
        return ToolSpec(adapter="claude", prompt="p", paths=paths)

    assert decide_tool(pol, tool("docs/**")).allowed
    assert decide_tool(pol, tool("src/**/*.py", "docs/guide.md")).allowed
    for wide in ("**", "src/**", "**/*.py", "docs/secret/**"):
        decision = decide_tool(pol, tool("docs/**", wide))
        assert not decision.allowed, wide
        assert decision.rule_id == "tool.paths" and "wider than the policy" in decision.reason
        assert decision.subject == wide
