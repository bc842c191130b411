"""agentos_tasks.net.allowlist: entry syntax, host normalization, address classes, pins,
unrestricted, and the determinism the ledger gate relies on."""

from __future__ import annotations

import pytest

from agentos_tasks.net.allowlist import (
    address_class,
    decide,
    make_allowlist,
    normalize_host,
    parse_entry,
    split_host_port,
)

# -- entries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "host", "ports"),
    [
        ("api.example.com", "name", "api.example.com", (80, 443)),
        ("API.Example.COM.", "name", "api.example.com", (80, 443)),
        ("api.example.com:8443", "name", "api.example.com", (8443,)),
        ("*.example.com", "suffix", "example.com", (80, 443)),
        ("*.example.com:444", "suffix", "example.com", (444,)),
        ("1.2.3.4:443", "address", "1.2.3.4", (443,)),
        ("1.2.3.4", "address", "1.2.3.4", (80, 443)),
        ("[::1]:8080", "address", "::1", (8080,)),
        ("[2001:DB8:0::1]", "address", "2001:db8::1", (80, 443)),
        ("bücher.example", "name", "xn--bcher-kva.example", (80, 443)),
        ("*", "any", "", ()),
    ],
)
def test_entries_parse_to_their_canonical_form(text: str, kind: str, host: str, ports: tuple[int, ...]) -> None:
    entry = parse_entry(text)
    assert (entry.kind, entry.host, entry.ports) == (kind, host, ports)
    assert entry.text == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty host"),
        ("a..b", "label ''"),
        ("host:0", "out of range"),
        ("host:65536", "out of range"),
        ("host:http", "not a decimal number"),
        ("host:+80", "not a decimal number"),
        ("user@host", "'@'"),
        ("ho st", "space"),
        ("a%2eb", "'%'"),
        ("a\x00b", "control character"),
        ("foo_bar.test", "not [a-z0-9-]"),
        ("*.com", "top-level domain"),
        ("*.1.2.3.4", "not an address"),
        ("api.*.com", "'*' only"),
        ("::1", "brackets"),
        ("[::1", "unclosed"),
        ("[fe80::1%eth0]:80", "'%'"),
        ("127.1", "dotted-quad"),
        ("2130706433", "dotted-quad"),
        ("0x7f.0.0.1", "dotted-quad"),
        ("01.2.3.4", "dotted-quad"),
        ("-bad.test", "not [a-z0-9-]"),
        ("a" * 64 + ".test", "too long"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="entry") as caught:
        parse_entry(text)
    assert message in str(caught.value)


def test_a_star_entry_needs_unrestricted() -> None:
    with pytest.raises(ValueError, match=r"tools\[1\]\.network\.allow\[0\].*unrestricted"):
        make_allowlist(["*"], rule_id="tools[1].network")
    assert make_allowlist(["*"], unrestricted=True).entries[0].kind == "any"


def test_a_bad_pin_is_refused() -> None:
    with pytest.raises(ValueError, match="resolve"):
        make_allowlist(["a.test"], {"a.test": "not-an-ip"})
    with pytest.raises(ValueError, match="not an address"):
        make_allowlist(["a.test"], {"1.2.3.4": "1.2.3.4"})


# -- normalization ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "example.com"),  # fullwidth letters: nameprep maps them
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("[::FFFF:127.0.0.1]", "::ffff:7f00:1"),
        ("[0:0::1]", "::1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_hosts_normalize(raw: str, normalized: str) -> None:
    assert normalize_host(raw) == normalized


@pytest.mark.parametrize("raw", ["example.com..", "a\tb", "a\x7fb", "évil\u200b.test", "a b", "x/y", "a\\b"])
def test_hosts_that_resolvers_read_differently_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="host"):
        normalize_host(raw)


def test_split_host_port() -> None:
    assert split_host_port("[::1]:443") == ("::1", 443)
    assert split_host_port("A.test") == ("a.test", None)
    with pytest.raises(ValueError, match="after"):
        split_host_port("[::1]x")


# -- decisions -------------------------------------------------------------------------

PUBLIC = "93.184.215.14"


def test_names_ports_and_suffixes() -> None:
    allow = make_allowlist(["api.example.com", "*.cdn.test:8443"], rule_id="tools[0].network")
    ok = decide(allow, "api.example.com", 443, [PUBLIC])
    assert (ok.allowed, ok.rule, ok.address) == (True, "tools[0].network.allow[0]", PUBLIC)
    assert decide(allow, "api.example.com", 80, [PUBLIC]).allowed
    port = decide(allow, "api.example.com", 8080, [PUBLIC])
    assert (port.allowed, port.rule) == (False, "net.port")
    assert "443" in port.reason
    sub = decide(allow, "a.b.cdn.test", 8443, [PUBLIC])
    assert (sub.allowed, sub.rule) == (True, "tools[0].network.allow[1]")
    bare = decide(allow, "cdn.test", 8443, [PUBLIC])
    assert (bare.allowed, bare.rule) == (False, "net.host")
    lookalike = decide(allow, "evilcdn.test", 8443, [PUBLIC])
    assert (lookalike.allowed, lookalike.rule) == (False, "net.host")
    other = decide(allow, "example.com", 443, [PUBLIC])
    assert (other.allowed, other.rule, other.address) == (False, "net.host", None)


@pytest.mark.parametrize(
    ("address", "klass"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("192.0.2.1", "not globally routable"),  # documentation range
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "unique local (private)"),
        ("fd12:3456::1", "unique local (private)"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
        ("::127.0.0.1", "IPv4-compatible loopback"),
        ("64:ff9b::a00:1", "NAT64 private"),
        ("64:ff9b::7f00:1", "NAT64 loopback"),
        ("2002:7f00:1::", "6to4 loopback"),
        ("2002:a9fe:a9fe::1", "6to4 cloud metadata"),
        ("64:ff9b:1::1", "local-use NAT64"),
    ],
)
def test_refused_address_classes(address: str, klass: str) -> None:
    assert address_class(address) == klass
    allow = make_allowlist(["name.test"], rule_id="r")
    decision = decide(allow, "name.test", 443, [address])
    assert (decision.allowed, decision.rule) == (False, "net.address")
    assert klass in decision.reason
    assert "hint" in decision.reason


@pytest.mark.parametrize("address", [PUBLIC, "2606:4700::6810:84e5", "::ffff:93.184.215.14", "2002:5db8:d70e::1"])
def test_public_addresses_pass(address: str) -> None:
    assert address_class(address) is None
    assert decide(make_allowlist(["name.test"]), "name.test", 443, [address]).allowed


def test_the_first_acceptable_address_is_chosen() -> None:
    allow = make_allowlist(["name.test"])
    decision = decide(allow, "name.test", 443, ["127.0.0.1", PUBLIC])
    assert (decision.allowed, decision.address) == (True, PUBLIC)
    assert not decide(allow, "name.test", 443, []).allowed


def test_a_pin_allows_its_address_and_only_for_its_name() -> None:
    allow = make_allowlist(["model.test:8080", "other.test:8080"], {"model.test": "127.0.0.1"}, rule_id="t")
    pinned = decide(allow, "model.test", 8080, ["10.9.9.9"])  # the pin wins over resolution
    assert (pinned.allowed, pinned.rule, pinned.address) == (True, "t.allow[0]", "127.0.0.1")
    unpinned = decide(allow, "other.test", 8080, ["127.0.0.1"])
    assert (unpinned.allowed, unpinned.rule) == (False, "net.address")
    literal = decide(allow, "127.0.0.1", 8080, [])  # the pin does not allow the literal
    assert (literal.allowed, literal.rule) == (False, "net.host")


def test_a_literal_entry_allows_its_own_non_public_address() -> None:
    allow = make_allowlist(["127.0.0.1:9000", "[::1]:9001", "local.test:9000"])
    v4 = decide(allow, "127.0.0.1", 9000, [])
    assert (v4.allowed, v4.rule, v4.address) == (True, "network.allow[0]", "127.0.0.1")
    v6 = decide(allow, "::1", 9001, [])
    assert (v6.allowed, v6.address) == (True, "::1")
    assert decide(allow, "127.0.0.1", 9001, []).rule == "net.port"
    # the mapped form of an allowed literal is a different host, not the literal
    mapped = decide(allow, "::ffff:7f00:1", 9000, [])
    assert (mapped.allowed, mapped.rule) == (False, "net.host")
    # a name resolving to a literal the policy names, on that literal's port
    assert decide(allow, "local.test", 9000, ["127.0.0.1"]).allowed


def test_unrestricted_allows_any_public_host_never_a_local_address() -> None:
    allow = make_allowlist([], unrestricted=True, rule_id="network")
    anywhere = decide(allow, "whatever.example", 25, [PUBLIC])
    assert (anywhere.allowed, anywhere.rule) == (True, "network.unrestricted")
    for address in ("127.0.0.1", "169.254.169.254", "::ffff:10.0.0.1", "fd00:ec2::254"):
        refused = decide(allow, "whatever.example", 443, [address])
        assert (refused.allowed, refused.rule) == (False, "net.address")
    literal = decide(allow, "10.0.0.1", 443, [])
    assert (literal.allowed, literal.rule) == (False, "net.address")
    # an explicit entry still has its own rule id under unrestricted
    both = make_allowlist(["api.example.com"], unrestricted=True)
    assert decide(both, "api.example.com", 443, [PUBLIC]).rule == "network.allow[0]"


def test_decide_is_deterministic_and_port_checked() -> None:
    allow = make_allowlist(["a.test"], {"a.test": "127.0.0.1"})
    first = decide(allow, "a.test", 443, [])
    assert all(decide(allow, "a.test", 443, []) == first for _ in range(3))
    assert decide(allow, "a.test", 0, []).rule == "net.port"
    assert decide(allow, "a.test", 70000, []).rule == "net.port"
