"""Which network connections a sandboxed step may make: a pure function of the policy's
entries, the requested host and port, and the addresses the name resolved to.

Pure on purpose: the policy loader parses entries with it, the proxy decides live
connections with it, and a gate re-decides every recorded ledger entry with it (from the
recorded address, never resolving again), so all three agree by construction.

Entry syntax (docs/network.md has the full table):
  host            ports 80 and 443 of exactly that name
  host:port       that port only
  *.suffix[:port] any name strictly below suffix (not the suffix itself)
  1.2.3.4[:port]  an IPv4 literal; [::1][:port] an IPv6 literal (brackets required)
  *               any host and port; only together with `unrestricted`

Address rule: once a name is allowed, the address it is connected to must be public.
Loopback, private, link-local, shared (CGNAT), cloud metadata, multicast, unspecified,
reserved and broadcast addresses are refused, and so are IPv6 forms embedding such an
IPv4 address (mapped, compatible, NAT64, 6to4). The only exceptions are addresses the
policy named itself: an entry that is that literal address, or a `resolve` pin of the
requested name to it.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

DEFAULT_PORTS = (80, 443)  # what a bare host (or *.suffix) entry allows
MAX_HOST_LEN = 253
MAX_LABEL_LEN = 63

# rule ids of denials that no allow entry produced
RULE_SYNTAX = "net.syntax"  # the request or its host could not be parsed safely
RULE_HOST = "net.host"  # no entry names this host
RULE_PORT = "net.port"  # an entry names the host, none that port
RULE_ADDRESS = "net.address"  # the host is allowed, no address it resolved to is

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# control, format (zero-width, bidi) and separator characters: IDNA would silently drop or
# map some of them, so a name could look different from the host it reaches
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_FORBIDDEN_CHARS = frozenset("%@/\\?#[]:;,'\"`<>{}|^~ ")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Refused IPv4 networks, by the class named in the denial reason. Checked before the
# generic `is_global` test so the reason says what the address is.
_V4_CLASSES: tuple[tuple[str, ipaddress.IPv4Network], ...] = tuple(
    (name, ipaddress.IPv4Network(net))
    for name, net in (
        ("cloud metadata", "169.254.169.254/32"),
        ("unspecified", "0.0.0.0/8"),
        ("loopback", "127.0.0.0/8"),
        ("private", "10.0.0.0/8"),
        ("private", "172.16.0.0/12"),
        ("private", "192.168.0.0/16"),
        ("link-local", "169.254.0.0/16"),
        ("shared address space (CGNAT)", "100.64.0.0/10"),
        ("multicast", "224.0.0.0/4"),
        ("broadcast", "255.255.255.255/32"),
        ("reserved", "240.0.0.0/4"),
    )
)
_V6_CLASSES: tuple[tuple[str, ipaddress.IPv6Network], ...] = tuple(
    (name, ipaddress.IPv6Network(net))
    for name, net in (
        ("cloud metadata", "fd00:ec2::254/128"),
        ("unspecified", "::/128"),
        ("loopback", "::1/128"),
        ("unique local (private)", "fc00::/7"),
        ("link-local", "fe80::/10"),
        ("site-local", "fec0::/10"),
        ("multicast", "ff00::/8"),
        ("local-use NAT64", "64:ff9b:1::/48"),
        ("discard-only", "100::/64"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True)
class AllowEntry:
    """One parsed `allow:` entry. kind: "name" | "suffix" | "address" | "any"."""

    text: str  # as written in the policy
    kind: str
    host: str  # normalized name, suffix (without "*."), or canonical address; "" for any
    ports: tuple[int, ...]  # empty: any port (only kind "any")

    def matches(self, host: str, port: int) -> bool | None:
        """True: this entry allows host:port; False: it names the host but not the port;
        None: it does not name the host."""
        if self.kind == "any":
            return True
        if self.kind == "suffix":
            named = host.endswith("." + self.host) and not _is_ip(host)
        else:
            named = host == self.host
        if not named:
            return None
        return port in self.ports


@dataclass(frozen=True)
class Allowlist:
    """A step's network grant: the entries, the pinned names and the unrestricted flag."""

    entries: tuple[AllowEntry, ...]
    resolve: Mapping[str, str]  # normalized name -> canonical address
    unrestricted: bool
    rule_id: str  # the policy rule that grants it, e.g. "tools[0].network"


@dataclass(frozen=True)
class NetDecision:
    allowed: bool
    rule: str  # f"{rule_id}.allow[i]", f"{rule_id}.unrestricted" or a net.* denial
    reason: str  # one line for the ledger and the 403 body
    address: str | None  # the address to connect to (allowed) or the one refused


def make_allowlist(
    entries: Iterable[str],
    resolve: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    unrestricted: bool = False,
    rule_id: str = "network",
) -> Allowlist:
    """Parse the policy's texts into an Allowlist; ValueError names the bad entry or pin."""
    parsed: list[AllowEntry] = []
    for index, text in enumerate(entries):
        try:
            entry = parse_entry(text)
        except ValueError as exc:
            raise ValueError(f"{rule_id}.allow[{index}]: {exc}") from None
        if entry.kind == "any" and not unrestricted:
            raise ValueError(
                f"{rule_id}.allow[{index}]: '*' allows every host; "
                "hint: the policy must say `network: unrestricted` for that"
            )
        parsed.append(entry)
    pins: dict[str, str] = {}
    items = resolve.items() if hasattr(resolve, "items") else resolve
    for name, address in items:
        try:
            key = normalize_host(name)
            if _is_ip(key):
                raise ValueError("a pin maps a name, not an address")
            pins[key] = str(ipaddress.ip_address(address))
        except ValueError as exc:
            raise ValueError(f"{rule_id}.resolve[{name!r}]: {exc}") from None
    return Allowlist(tuple(parsed), pins, unrestricted, rule_id)


def normalize_host(raw: str) -> str:
    """The canonical form of a requested host; ValueError says why it is refused.

    Names: lowercase, one trailing dot dropped, IDN to punycode, then only [a-z0-9-] labels
    of 1..63 characters. IP literals (IPv6 with or without brackets) in ipaddress's
    canonical text, IPv6 without brackets. Never accepts the forms resolvers read
    differently than people do: NUL, percent-encoding, userinfo, zone ids, numeric names
    that are not dotted-quad IPv4 (2130706433, 127.1, 0x7f.0.0.1).
    """
    if not raw:
        raise ValueError("empty host")
    for char in raw:
        if ord(char) < 0x21 or unicodedata.category(char) in _INVISIBLE:
            raise ValueError(f"control character or space {char!r} in host {raw!r}")
    bad = sorted(set(raw) & (_FORBIDDEN_CHARS - set("[]:")))
    if bad:  # '%' also refuses IPv6 zone ids (fe80::1%eth0): a host, not an interface
        raise ValueError(f"character {bad[0]!r} not allowed in host {raw!r}")
    if raw.startswith("[") and raw.endswith("]"):
        return _canonical_ipv6(raw[1:-1], raw)
    if ":" in raw:
        return _canonical_ipv6(raw, raw)
    if "[" in raw or "]" in raw:
        raise ValueError(f"brackets only around a whole IPv6 address, not in {raw!r}")
    host = raw[:-1] if raw.endswith(".") else raw
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host.lower()
    except UnicodeError as exc:
        raise ValueError(f"host {raw!r} is not a valid internationalized name: {exc}") from None
    host = host.lower()
    if not host or len(host) > MAX_HOST_LEN:
        raise ValueError(f"host {raw!r} is empty or longer than {MAX_HOST_LEN} characters")
    labels = host.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(
                f"host {raw!r}: label {label!r} is empty, too long or not [a-z0-9-]"
            )
    if _looks_numeric(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(
                f"host {raw!r} is numeric but not a dotted-quad IPv4 address "
                "(resolvers read such names as addresses)"
            ) from None
    return host


def parse_port(text: str) -> int:
    """A TCP port 1..65535 written in plain decimal digits."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"port {text!r} is not a decimal number")
    if len(text) > 5:
        raise ValueError(f"port {text} out of range 1..65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1..65535")
    return port


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` -> (normalized host, port or None)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in {text!r}")
        port = parse_port(rest[1:]) if rest else None
        return normalize_host(host), port
    if text.count(":") > 1:
        raise ValueError(f"IPv6 address {text!r} must be written in brackets: [{text}]")
    host, sep, port_text = text.partition(":")
    return normalize_host(host), (parse_port(port_text) if sep else None)


def parse_entry(text: str) -> AllowEntry:
    """One `allow:` entry; ValueError with the entry and what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"entry {text!r} is not a string")
    if text == "*":
        return AllowEntry(text, "any", "", ())
    body, kind = text, "name"
    if text.startswith("*."):
        body, kind = text[2:], "suffix"
    elif "*" in text:
        raise ValueError(f"entry {text!r}: '*' only as a whole entry or as a leading '*.'")
    try:
        host, port = split_host_port(body)
    except ValueError as exc:
        raise ValueError(f"entry {text!r}: {exc}") from None
    if _is_ip(host):
        if kind == "suffix":
            raise ValueError(f"entry {text!r}: '*.' needs a name suffix, not an address")
        kind = "address"
    elif kind == "suffix" and "." not in host:
        raise ValueError(
            f"entry {text!r}: '*.{host}' would allow a whole top-level domain; "
            "hint: name the registrable domain, e.g. '*.example.com'"
        )
    ports = (port,) if port is not None else DEFAULT_PORTS
    return AllowEntry(text, kind, host, ports)


def address_class(address: str) -> str | None:
    """The reason class of a refused (non-public) address, or None when it is public."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            inner = address_class(str(v4))
            return f"{form} {inner}" if inner else None
        for name, net6 in _V6_CLASSES:
            if ip in net6:
                return name
    else:
        for name, net4 in _V4_CLASSES:
            if ip in net4:
                return name
    if not ip.is_global or ip.is_reserved:
        return "not globally routable"
    return None


def decide(allowlist: Allowlist, host: str, port: int, addresses: Sequence[str]) -> NetDecision:
    """Allow or refuse one connection to host:port. host must already be normalized
    (normalize_host); `addresses` is what the name resolved to, in resolver order (ignored
    for IP literals and pinned names). The first acceptable address is the one to use.
    Deterministic in its arguments: a gate re-running it on a ledger entry gets the same
    decision."""
    if not 1 <= port <= 65535:
        return NetDecision(False, RULE_PORT, f"port {port} out of range", None)
    rule = _match_entry(allowlist, host, port)
    if isinstance(rule, NetDecision):
        return rule
    rule_text, literal_ports = rule
    if _is_ip(host):
        candidates: Sequence[str] = (host,)
    elif host in allowlist.resolve:
        pin = allowlist.resolve[host]
        return NetDecision(True, rule_text, f"{host} pinned to {pin} by the policy", pin)
    else:
        candidates = addresses
    if not candidates:
        return NetDecision(False, RULE_ADDRESS, f"{host} did not resolve to any address", None)
    refused: list[str] = []
    for candidate in candidates:
        try:
            canonical = str(ipaddress.ip_address(candidate))
        except ValueError:
            refused.append(f"{candidate!r} (not an address)")
            continue
        if port in literal_ports.get(canonical, ()):
            return NetDecision(True, rule_text, f"{canonical} named by the policy", canonical)
        kind = address_class(canonical)
        if kind is None:
            return NetDecision(True, rule_text, f"{host}:{port} -> {canonical}", canonical)
        refused.append(f"{canonical} ({kind})")
    reason = f"{host} resolved only to refused addresses: {', '.join(refused)}"
    if not _is_ip(host):
        reason += "; hint: pin the name in the policy's resolve: if that is intended"
    return NetDecision(False, RULE_ADDRESS, reason, candidates[0])


def _match_entry(
    allowlist: Allowlist, host: str, port: int
) -> tuple[str, dict[str, tuple[int, ...]]] | NetDecision:
    """The rule id allowing host:port plus the literal addresses the policy names (and
    their ports), or the denial."""
    literal_ports: dict[str, tuple[int, ...]] = {}
    for entry in allowlist.entries:
        if entry.kind == "address":
            literal_ports[entry.host] = literal_ports.get(entry.host, ()) + entry.ports
    named_ports: list[int] = []
    for index, entry in enumerate(allowlist.entries):
        verdict = entry.matches(host, port)
        if verdict:
            return f"{allowlist.rule_id}.allow[{index}]", literal_ports
        if verdict is False:
            named_ports.extend(entry.ports)
    if allowlist.unrestricted:
        return f"{allowlist.rule_id}.unrestricted", literal_ports
    if named_ports:
        ports = ", ".join(str(p) for p in sorted(set(named_ports)))
        return NetDecision(
            False, RULE_PORT, f"{host} is allowed on port(s) {ports} only, not {port}", None
        )
    return NetDecision(False, RULE_HOST, f"{host} is not in {allowlist.rule_id}'s allow list", None)


def _canonical_ipv6(text: str, raw: str) -> str:
    if "%" in text:
        raise ValueError(f"zone id in host {raw!r}")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ValueError(f"host {raw!r} is not a valid IPv6 address (no zone ids)") from None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None and ip in _SIX_TO_FOUR:
        return "6to4", ip.sixtofour
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _looks_numeric(label: str) -> bool:
    return label.isdigit() or (label.startswith("0x") and len(label) > 2)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
