"""Which addresses the platform may connect to on a tenant's behalf (OWASP API7:2023, SSRF).

A buyer endpoint is a URL a tenant chooses, and delivery POSTs leads to it from inside
the platform's network. Pointed at 127.0.0.1, at a private service or at the cloud's
metadata endpoint (169.254.169.254), it would make delivery a proxy into that network.
So a buyer endpoint must be:

- an ``http`` or ``https`` URL with a host, a port other than 0 and no userinfo;
- a host whose addresses are *all* allowed: an IP literal in any spelling the resolver
  would accept (``2130706433``, ``0x7f.1``, ``127.1``, ``[::ffff:127.0.0.1]``…), or a name
  whose every A/AAAA answer is allowed (one private answer among public ones refuses it);
- an address is allowed when it is globally routable unicast, or inside the allow-list
  (``LX_PLATFORM_EGRESS_ALLOW_CIDRS``), through which the development stack and the tests
  reach their fake buyers on 127.0.0.1. The list is empty by default; in production it
  may open private networks (a buyer over a private interconnect) but never loopback,
  link-local (cloud metadata), unspecified or multicast ones (``settings``).

Admin checks a URL when a buyer is configured (``EgressPolicy.check_url``). Delivery
checks again when it connects, and connects to the very address it checked
(``lx_platform.egress_http``), so a DNS answer that changes in between (rebinding)
cannot reach a private address. Redirects are never followed.

Why ``ipaddress`` and not a hand-written list of ranges alone: its ``is_global`` encodes
IANA's special-purpose registries and is maintained with CPython, so ranges we would
forget (or that IANA adds) are covered. It is not enough alone on Python 3.11, though:
it calls multicast (224.0.0.0/4, ff00::/8), 192.0.0.0/24, the 2024 documentation range
3fff::/20, site-local fec0::/10 and every IPv6 address that embeds an IPv4 one (NAT64
``64:ff9b::7f00:1``, 6to4 ``2002:7f00:1::``, IPv4-compatible ``::127.0.0.1``) global. So
the table below names the ranges that matter (also to say *why* an address is refused),
IPv6 is limited to global unicast 2000::/3, embedded IPv4 addresses are unwrapped and
judged themselves, and ``is_global`` is the final word for everything else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import httpx
from pydantic import AnyUrl, TypeAdapter, ValidationError

from lx_platform.logging import get_logger
from lx_platform.settings import PlatformSettings

log = get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to, as getaddrinfo spells them.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

SCHEMES: Final = frozenset({"http", "https"})

# Reasons an endpoint is refused (``EgressRefusedError.reason``), stable for API clients.
INVALID_URL = "invalid_url"
SCHEME_NOT_ALLOWED = "scheme_not_allowed"
USERINFO_NOT_ALLOWED = "userinfo_not_allowed"
PORT_NOT_ALLOWED = "port_not_allowed"
UNRESOLVABLE_HOST = "unresolvable_host"
# ... and the classes of addresses that are not allowed:
LOOPBACK = "loopback"
PRIVATE = "private"
LINK_LOCAL = "link_local"
CLOUD_METADATA = "cloud_metadata"
SHARED = "shared_address_space"  # 100.64.0.0/10, carrier-grade NAT
UNSPECIFIED = "unspecified"
MULTICAST = "multicast"
BROADCAST = "broadcast"
RESERVED = "reserved"
BENCHMARKING = "benchmarking"
DOCUMENTATION = "documentation"
TRANSITION = "transition"  # IPv4-in-IPv6 tunnels and translators
NOT_GLOBAL = "not_global"  # whatever else ipaddress knows is not globally routable


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# First match names the class. Cloud metadata first: it sits inside link-local, private
# or shared ranges, and deserves its own name in an operator's error message.
_V4: Final[tuple[tuple[tuple[IPNetwork, ...], str], ...]] = (
    (
        _nets(
            "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
            "169.254.170.2/32",  # AWS ECS task metadata
            "100.100.100.200/32",  # Alibaba Cloud
            "192.0.0.192/32",  # Oracle Cloud
        ),
        CLOUD_METADATA,
    ),
    (_nets("0.0.0.0/8"), UNSPECIFIED),  # "this network"; 0.0.0.0 reaches the local host
    (_nets("127.0.0.0/8"), LOOPBACK),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), PRIVATE),
    (_nets("100.64.0.0/10"), SHARED),
    (_nets("169.254.0.0/16"), LINK_LOCAL),
    (_nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), DOCUMENTATION),
    (_nets("198.18.0.0/15"), BENCHMARKING),
    (_nets("192.88.99.0/24"), TRANSITION),  # 6to4 relay anycast (deprecated)
    (_nets("192.0.0.0/24"), RESERVED),  # IETF protocol assignments
    (_nets("224.0.0.0/4"), MULTICAST),
    (_nets("255.255.255.255/32"), BROADCAST),
    (_nets("240.0.0.0/4"), RESERVED),
)
_V6: Final[tuple[tuple[tuple[IPNetwork, ...], str], ...]] = (
    (_nets("fd00:ec2::254/128"), CLOUD_METADATA),  # AWS IMDS over IPv6
    (_nets("::/128"), UNSPECIFIED),
    (_nets("::1/128"), LOOPBACK),
    (_nets("64:ff9b:1::/48"), TRANSITION),  # local-use NAT64 (RFC 8215)
    (_nets("2001:2::/48"), BENCHMARKING),
    (_nets("2001:db8::/32", "3fff::/20"), DOCUMENTATION),
    (_nets("2001::/23"), RESERVED),  # IETF protocol assignments (Teredo unwrapped before)
    (_nets("100::/64"), RESERVED),  # discard-only
    (_nets("5f00::/16"), RESERVED),  # SRv6 SIDs
    (_nets("fc00::/7", "fec0::/10"), PRIVATE),  # unique local; deprecated site-local
    (_nets("fe80::/10"), LINK_LOCAL),
    (_nets("ff00::/8"), MULTICAST),
)
_GLOBAL_UNICAST_V6: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")
_6TO4: Final = ipaddress.IPv6Network("2002::/16")

# The characters of the numeric IPv4 spellings inet_aton reads (decimal, octal, hex,
# one to four parts). Anything else is a name. glibc's inet_aton ignores whatever
# follows a space ("127.0.0.1 x"); such hosts never get this far (see normalize_host).
_INET_ATON_FORM: Final = re.compile(r"[0-9a-fx.]+")
# A normalized host: an IDNA/ASCII name, a dotted or numeric IPv4, or an IPv6 literal
# with an optional zone id (fe80::1%eth0, refused as link-local anyway).
_HOST_CHARS: Final = re.compile(r"[a-z0-9._:%-]+")


class EgressRefusedError(Exception):
    """An endpoint the platform will not connect to; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str, address: IPAddress | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.address = address

    def short(self) -> str:
        """``loopback 127.0.0.1``: the reason and address, for a try's recorded reason."""
        return f"{self.reason} {self.address}" if self.address is not None else self.reason


class UnresolvableHostError(EgressRefusedError):
    """The host has no address now. A configuration error, but at delivery time possibly a
    passing DNS failure: delivery retries it as a connection failure."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(UNRESOLVABLE_HOST, f"{host} does not resolve: {why}")


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # normalized (normalize_host)
    port: int


@dataclass(frozen=True)
class Target:
    """A checked endpoint and the addresses it may be reached at, in resolver order."""

    endpoint: Endpoint
    addresses: tuple[IPAddress, ...]


# --- pure rules ------------------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """The host as a resolver sees it: percent-decoded, without brackets, IDNA-encoded
    (full-width and other compatibility characters mapped), lower case, without the
    trailing dot of a fully qualified name. Raises ``EgressRefusedError`` for a host
    that is no host at all (empty, spaces, control characters, ``..``)."""
    h = urllib.parse.unquote(host)
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h.isascii():
        try:
            h = h.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise EgressRefusedError(INVALID_URL, f"invalid host {host!r}") from exc
    h = h.lower()
    if h.endswith(".") and not h.endswith(".."):
        h = h[:-1]
    if not h or not _HOST_CHARS.fullmatch(h) or ".." in h or h.startswith("."):
        raise EgressRefusedError(INVALID_URL, f"invalid host {host!r}")
    return h


def ip_literal(host: str) -> IPAddress | None:
    """The address a normalized host spells, if it is an IP literal in any form the system
    resolver would read as one (so it is never sent to DNS), else ``None``."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _INET_ATON_FORM.fullmatch(host):
        try:  # 2130706433, 017700000001, 0x7f000001, 127.1, 0x7f.0.0.1, 0177.0.0.01...
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _first_match(addr: IPAddress, table: Iterable[tuple[tuple[IPNetwork, ...], str]]) -> str | None:
    for nets, kind in table:
        if any(addr.version == n.version and addr in n for n in nets):
            return kind
    return None


def _classify_v4(addr: ipaddress.IPv4Address) -> str | None:
    kind = _first_match(addr, _V4)
    if kind is None and not addr.is_global:
        kind = NOT_GLOBAL
    return kind


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would reach (mapped, compatible,
    NAT64, 6to4, Teredo client), or ``None``."""
    if addr.version == 4:
        return None
    assert isinstance(addr, ipaddress.IPv6Address)
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64 or (addr in _IPV4_COMPATIBLE and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF)
    if addr in _6TO4:
        return addr.sixtofour
    if addr in _TEREDO and addr.teredo is not None:
        return addr.teredo[1]
    return None


def _classify_v6(addr: ipaddress.IPv6Address) -> str | None:
    inner = embedded_ipv4(addr)
    if inner is not None:
        inner_kind = _classify_v4(inner)
        if addr in _NAT64:
            # A DNS64 network synthesizes 64:ff9b::/96 for every IPv4-only buyer: allowed
            # exactly when the IPv4 address it translates to is.
            return inner_kind
        if addr.teredo is not None and inner_kind is None:
            inner_kind = _classify_v4(addr.teredo[0])  # the Teredo server
        # Mapped, compatible, 6to4, Teredo: refused whatever they carry; named after it.
        return inner_kind or TRANSITION
    kind = _first_match(addr, _V6)
    if kind is None and addr not in _GLOBAL_UNICAST_V6:
        kind = RESERVED
    if kind is None and not addr.is_global:
        kind = NOT_GLOBAL
    return kind


def classify(addr: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """``None`` when the platform may connect to ``addr``; else why not (a reason above).

    The allow-list matches the address exactly as resolved: ``::ffff:127.0.0.1`` is not
    inside ``127.0.0.1/32``, so an allow-list entry never opens an IPv6 spelling of it.
    """
    if any(addr.version == net.version and addr in net for net in allow):
        return None
    if isinstance(addr, ipaddress.IPv4Address):
        return _classify_v4(addr)
    return _classify_v6(addr)


_ANY_URL: Final = TypeAdapter(AnyUrl)


def parse_endpoint(url: str) -> Endpoint:
    """The scheme, host and port a buyer URL names; ``EgressRefusedError`` if it is not
    an http(s) URL with a host, a port and no userinfo.

    The URL is read as a browser would (WHATWG, as pydantic's ``AnyHttpUrl`` stores it)
    and then as the HTTP client will (httpx): two parsers that disagree on the host
    (``http://a.com\\@127.0.0.1/``) are a classic SSRF bypass, so disagreement is refused.
    """
    try:
        parsed = _ANY_URL.validate_python(url)
    except ValidationError as exc:
        raise EgressRefusedError(INVALID_URL, f"not a valid URL: {url[:200]!r}") from exc
    if parsed.scheme not in SCHEMES:
        raise EgressRefusedError(SCHEME_NOT_ALLOWED, f"scheme {parsed.scheme!r} is not http(s)")
    if parsed.username or parsed.password:
        raise EgressRefusedError(USERINFO_NOT_ALLOWED, "credentials in the URL are not allowed")
    if not parsed.host:
        raise EgressRefusedError(INVALID_URL, "the URL has no host")
    host = normalize_host(parsed.host)
    try:
        client_view = httpx.URL(str(parsed))
        client_host = normalize_host(client_view.raw_host.decode("ascii"))
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise EgressRefusedError(INVALID_URL, f"not a valid URL: {url[:200]!r}") from exc
    port = parsed.port
    if client_host != host or (client_view.port or port) != port:
        raise EgressRefusedError(INVALID_URL, "the URL's host is ambiguous")
    if not port:  # AnyUrl fills in 80 and 443; only an explicit :0 is left
        raise EgressRefusedError(PORT_NOT_ALLOWED, "port 0 is not allowed")
    return Endpoint(parsed.scheme, host, port)


def refusal(kind: str, addr: IPAddress, host: str) -> EgressRefusedError:
    """The error for an address of class ``kind``, e.g. ``localhost resolves to loopback
    address 127.0.0.1`` or ``::ffff:7f00:1 is a loopback address (carrying 127.0.0.1)``."""
    label = kind.replace("_", "-")
    inner = embedded_ipv4(addr)
    notes = [str(addr)] if str(addr) != host else []
    notes += [f"carrying {inner}"] if inner is not None else []
    noted = f" ({', '.join(notes)})" if notes else ""
    if ip_literal(host) is not None:
        article = "an" if label[0] in "aeiou" else "a"
        return EgressRefusedError(kind, f"{host} is {article} {label} address{noted}", addr)
    noted = f" (carrying {inner})" if inner is not None else ""
    return EgressRefusedError(kind, f"{host} resolves to {label} address {addr}{noted}", addr)


# --- the policy, with its resolver -------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo on the event loop's executor: what an HTTP client would connect to."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class EgressPolicy:
    """The rules above with an allow-list and a resolver (injected in tests)."""

    def __init__(
        self,
        allow: Sequence[IPNetwork] = (),
        resolver: Resolver | None = None,
        *,
        resolve_timeout_s: float = 2.0,
    ) -> None:
        self.allow = tuple(allow)
        self.resolver = resolver or system_resolver
        self.resolve_timeout_s = resolve_timeout_s

    @classmethod
    def from_settings(
        cls, platform: PlatformSettings, resolver: Resolver | None = None
    ) -> EgressPolicy:
        return cls(
            platform.egress_allow_cidrs,
            resolver,
            resolve_timeout_s=platform.egress_resolve_timeout_s,
        )

    def log_allow_list(self, environment: str) -> None:
        """Say at start what the allow-list opens; in production, as a warning."""
        if not self.allow:
            return
        opened = [str(n) for n in self.allow]
        if environment == "production":
            log.warning("egress_allow_list_in_production", networks=opened)
        else:
            log.info("egress_allow_list", networks=opened)

    def classify(self, addr: IPAddress) -> str | None:
        return classify(addr, self.allow)

    async def addresses(self, host: str, port: int) -> tuple[IPAddress, ...]:
        """Every address ``host`` stands for, each one allowed, in resolver order.

        IP literals are never sent to the resolver. Raises ``EgressRefusedError`` naming
        the first address that is not allowed, ``UnresolvableHostError`` if none came.
        """
        host = normalize_host(host)
        literal = ip_literal(host)
        if literal is not None:
            found: list[IPAddress] = [literal]
        else:
            try:
                async with asyncio.timeout(self.resolve_timeout_s):
                    answers = await self.resolver(host, port)
            except TimeoutError as exc:
                raise UnresolvableHostError(host, "the resolver timed out") from exc
            except OSError as exc:  # socket.gaierror
                raise UnresolvableHostError(host, exc.strerror or repr(exc)) from exc
            found = []
            for answer in answers:
                try:
                    found.append(ipaddress.ip_address(answer))
                except ValueError as exc:
                    raise EgressRefusedError(
                        INVALID_URL, f"{host} resolved to {answer!r}, not an address"
                    ) from exc
            if not found:
                raise UnresolvableHostError(host, "no address")
        for addr in found:
            kind = self.classify(addr)
            if kind is not None:
                raise refusal(kind, addr, host)
        return tuple(dict.fromkeys(found))

    async def check_url(self, url: str) -> Target:
        """The whole check of a configured endpoint: its URL, then every address."""
        endpoint = parse_endpoint(url)
        return Target(endpoint, await self.addresses(endpoint.host, endpoint.port))
