"""The egress policy (SSRF guard, OWASP API7) and its pinned httpx transport, without a
network: names resolve through a stub resolver, connections go to a fake network backend.

The HOSTILE table is the regression corpus: every spelling of a private address that a
parser, a resolver or an HTTP client has been tricked by. Add to it; never remove.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence

import httpcore
import httpx
import pytest
from lx_delivery.domain import EGRESS_REFUSED, ReasonClass, reason_class
from lx_platform import egress as eg
from lx_platform.egress import EgressPolicy, EgressRefusedError, classify, parse_endpoint
from lx_platform.egress_http import PinnedTransport
from lx_platform.settings import PlatformSettings
from lx_schemas.events import DeliveryResult

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:4700:4700::1111"
# What the stub DNS knows; anything else does not resolve.
DNS: dict[str, list[str]] = {
    "localhost": ["127.0.0.1", "::1"],
    "buyer.example": [PUBLIC_V4],
    "v6.buyer.example": [PUBLIC_V6],
    "dual.buyer.example": [PUBLIC_V4, PUBLIC_V6],
    "nat64.buyer.example": ["64:ff9b::5db8:d822"],  # DNS64 for 93.184.216.34
    "xn--bcher-kva.example": [PUBLIC_V4],  # bücher.example
    "loopback.test": ["127.0.0.1"],
    "loopback6.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "private.test": ["10.1.2.3"],
    "private6.test": ["fd12:3456::1"],
    "metadata.test": ["169.254.169.254"],
    "metadata6.test": ["fd00:ec2::254"],
    "gcp.test": ["169.254.169.254"],  # metadata.google.internal
    "cgnat.test": ["100.64.1.1"],
    "linklocal6.test": ["fe80::1%1"],
    "zero.test": ["0.0.0.0"],
    "one-bad-apple.test": [PUBLIC_V4, PUBLIC_V6, "192.168.1.1"],
    "public-then-private.test": [PUBLIC_V4, "10.0.0.1"],
    "garbage.test": ["not-an-address"],
}


class StubDns:
    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = DNS if table is None else table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host in self.table:
            return list(self.table[host])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def policy(allow: Iterable[str] = (), dns: StubDns | None = None) -> EgressPolicy:
    return EgressPolicy([ipaddress.ip_network(n) for n in allow], dns or StubDns())


# (url, reason): each refused at configuration time with exactly this reason.
HOSTILE: list[tuple[str, str]] = [
    # loopback, in every spelling of 127.0.0.1
    ("http://127.0.0.1/", eg.LOOPBACK),
    ("http://127.0.0.1:8090/buyers/x/accept", eg.LOOPBACK),
    ("https://127.0.0.1/", eg.LOOPBACK),
    ("http://127.1/", eg.LOOPBACK),
    ("http://127.0.1/", eg.LOOPBACK),
    ("http://2130706433/", eg.LOOPBACK),  # decimal
    ("http://017700000001/", eg.LOOPBACK),  # octal
    ("http://0x7f000001/", eg.LOOPBACK),  # hex
    ("http://0x7f.1/", eg.LOOPBACK),
    ("http://0x7f.0.0.1/", eg.LOOPBACK),
    ("http://0x7F.0x0.0x0.0x1/", eg.LOOPBACK),
    ("http://0177.0.0.1/", eg.LOOPBACK),
    ("http://0177.0000.0000.0001/", eg.LOOPBACK),
    ("http://127.000.000.001/", eg.LOOPBACK),
    ("http://127.0.0.1./", eg.LOOPBACK),  # trailing dot
    ("http://127.255.255.254/", eg.LOOPBACK),
    ("http://%31%32%37.0.0.1/", eg.LOOPBACK),  # percent-encoded host
    ("http://%31%32%37%2e%30%2e%30%2e%31/", eg.LOOPBACK),
    ("http://①②⑦.0.0.1/", eg.LOOPBACK),  # compatibility digits
    ("http://１２７．０．０．１/", eg.LOOPBACK),  # noqa: RUF001 - full-width digits and dots
    ("http://[::1]/", eg.LOOPBACK),
    ("http://[0:0:0:0:0:0:0:1]/", eg.LOOPBACK),
    ("http://[::ffff:127.0.0.1]/", eg.LOOPBACK),  # IPv4-mapped
    ("http://[::ffff:7f00:1]/", eg.LOOPBACK),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", eg.LOOPBACK),
    ("http://[::127.0.0.1]/", eg.LOOPBACK),  # IPv4-compatible (deprecated)
    ("http://[64:ff9b::127.0.0.1]/", eg.LOOPBACK),  # NAT64
    ("http://[64:ff9b::7f00:1]/", eg.LOOPBACK),
    ("http://[2002:7f00:1::]/", eg.LOOPBACK),  # 6to4
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", eg.LOOPBACK),  # Teredo client 127.0.0.1
    # names that resolve to loopback
    ("http://localhost/", eg.LOOPBACK),
    ("http://LOCALHOST/", eg.LOOPBACK),
    ("http://localhost./", eg.LOOPBACK),
    ("http://LocalHost.:8090/", eg.LOOPBACK),
    ("http://ｌｏｃａｌｈｏｓｔ/", eg.LOOPBACK),  # noqa: RUF001 - full-width
    ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", eg.LOOPBACK),  # enclosed alphanumerics
    ("http://%6c%6f%63%61%6c%68%6f%73%74/", eg.LOOPBACK),
    ("http://loopback.test/", eg.LOOPBACK),
    ("http://loopback6.test/", eg.LOOPBACK),
    ("http://mapped.test/", eg.LOOPBACK),
    # unspecified: 0.0.0.0 reaches the local host on Linux
    ("http://0.0.0.0/", eg.UNSPECIFIED),
    ("http://0/", eg.UNSPECIFIED),
    ("http://0x0/", eg.UNSPECIFIED),
    ("http://0.0.0.0:8090/", eg.UNSPECIFIED),
    ("http://[::]/", eg.UNSPECIFIED),
    ("http://zero.test/", eg.UNSPECIFIED),
    ("http://0.1.2.3/", eg.UNSPECIFIED),
    # private
    ("http://10.0.0.1/", eg.PRIVATE),
    ("http://167772161/", eg.PRIVATE),  # 10.0.0.1 in decimal
    ("http://172.16.0.1/", eg.PRIVATE),
    ("http://172.31.255.254/", eg.PRIVATE),
    ("http://192.168.0.1/", eg.PRIVATE),
    ("http://0xc0.0xa8.0.1/", eg.PRIVATE),
    ("http://[::ffff:192.168.0.1]/", eg.PRIVATE),
    ("http://[64:ff9b::10.0.0.1]/", eg.PRIVATE),
    ("http://[fc00::1]/", eg.PRIVATE),
    ("http://[fd12:3456::1]/", eg.PRIVATE),
    ("http://[fec0::1]/", eg.PRIVATE),  # site-local (deprecated)
    ("http://private.test/", eg.PRIVATE),
    ("http://private6.test/", eg.PRIVATE),
    ("http://one-bad-apple.test/", eg.PRIVATE),  # one private answer among public ones
    ("http://public-then-private.test/", eg.PRIVATE),
    # link-local and the cloud's metadata services
    ("http://169.254.0.1/", eg.LINK_LOCAL),
    ("http://[fe80::1]/", eg.LINK_LOCAL),
    ("http://linklocal6.test/", eg.LINK_LOCAL),
    ("http://169.254.169.254/latest/meta-data/", eg.CLOUD_METADATA),
    ("http://169.254.169.254/computeMetadata/v1/", eg.CLOUD_METADATA),
    ("http://2852039166/", eg.CLOUD_METADATA),  # 169.254.169.254 in decimal
    ("http://0xa9fea9fe/", eg.CLOUD_METADATA),
    ("http://0251.0376.0251.0376/", eg.CLOUD_METADATA),
    ("http://169.254.43518/", eg.CLOUD_METADATA),
    ("http://[::ffff:169.254.169.254]/", eg.CLOUD_METADATA),
    ("http://[::ffff:a9fe:a9fe]/", eg.CLOUD_METADATA),
    ("http://[fd00:ec2::254]/", eg.CLOUD_METADATA),
    ("http://169.254.170.2/v2/credentials", eg.CLOUD_METADATA),
    ("http://100.100.100.200/latest/meta-data/", eg.CLOUD_METADATA),
    ("http://192.0.0.192/opc/v1/", eg.CLOUD_METADATA),
    ("http://metadata.test/", eg.CLOUD_METADATA),
    ("http://metadata6.test/", eg.CLOUD_METADATA),
    ("http://gcp.test/", eg.CLOUD_METADATA),
    # the other special-purpose ranges
    ("http://100.64.0.1/", eg.SHARED),
    ("http://100.127.255.254/", eg.SHARED),
    ("http://cgnat.test/", eg.SHARED),
    ("http://198.18.0.1/", eg.BENCHMARKING),
    ("http://198.19.255.254/", eg.BENCHMARKING),
    ("http://[2001:2::1]/", eg.BENCHMARKING),
    ("http://192.0.2.1/", eg.DOCUMENTATION),
    ("http://198.51.100.7/", eg.DOCUMENTATION),
    ("http://203.0.113.9/", eg.DOCUMENTATION),
    ("http://[2001:db8::1]/", eg.DOCUMENTATION),
    ("http://[3fff::1]/", eg.DOCUMENTATION),
    ("http://224.0.0.1/", eg.MULTICAST),
    ("http://239.255.255.250/", eg.MULTICAST),
    ("http://[ff02::1]/", eg.MULTICAST),
    ("http://[ff05::1:3]/", eg.MULTICAST),
    ("http://255.255.255.255/", eg.BROADCAST),
    ("http://4294967295/", eg.BROADCAST),
    ("http://240.0.0.1/", eg.RESERVED),
    ("http://192.0.0.8/", eg.RESERVED),
    ("http://[100::1]/", eg.RESERVED),
    ("http://[4000::1]/", eg.RESERVED),  # outside global unicast 2000::/3
    ("http://[2001::1]/", eg.RESERVED),  # Teredo carrying client 255.255.255.254
    ("http://[2001:0:5db8:d822::f7f7:f7f7]/", eg.TRANSITION),  # Teredo, public server + client
    ("http://[::ffff:8.8.8.8]/", eg.TRANSITION),  # mapped: refused whatever it carries
    ("http://[2002:808:808::]/", eg.TRANSITION),  # 6to4
    ("http://[64:ff9b:1::1]/", eg.TRANSITION),  # local-use NAT64
    ("http://192.88.99.1/", eg.TRANSITION),  # 6to4 relay anycast
    # not an endpoint at all
    ("http://user:secret@93.184.216.34/", eg.USERINFO_NOT_ALLOWED),
    ("http://user@93.184.216.34/", eg.USERINFO_NOT_ALLOWED),
    ("http://buyer.example@127.0.0.1/", eg.USERINFO_NOT_ALLOWED),
    ("ftp://93.184.216.34/", eg.SCHEME_NOT_ALLOWED),
    ("file:///etc/passwd", eg.SCHEME_NOT_ALLOWED),
    ("gopher://127.0.0.1:6379/_INFO", eg.SCHEME_NOT_ALLOWED),
    ("http://93.184.216.34:0/", eg.PORT_NOT_ALLOWED),
    ("http://[fe80::1%25eth0]/", eg.INVALID_URL),  # zone ids: not in a URL
    ("http://127.0.0.1%09/", eg.INVALID_URL),
    ("http://localhost%00.buyer.example/", eg.INVALID_URL),
    ("http:///nohost", eg.UNRESOLVABLE_HOST),  # read as http://nohost/
    ("http://:80/", eg.INVALID_URL),
    ("not a url", eg.INVALID_URL),
    ("http://999999999999/", eg.INVALID_URL),
    ("http://nowhere.test/", eg.UNRESOLVABLE_HOST),
    ("http://garbage.test/", eg.INVALID_URL),
]

LEGITIMATE: list[tuple[str, list[str]]] = [
    (f"http://{PUBLIC_V4}/", [PUBLIC_V4]),
    (f"https://{PUBLIC_V4}:8443/leads?x=1", [PUBLIC_V4]),
    ("http://8.8.8.8/", ["8.8.8.8"]),
    (f"http://[{PUBLIC_V6}]/", [PUBLIC_V6]),
    ("https://buyer.example/leads", [PUBLIC_V4]),
    ("https://BUYER.example./leads", [PUBLIC_V4]),
    ("http://v6.buyer.example:8080/", [PUBLIC_V6]),
    ("http://dual.buyer.example/", [PUBLIC_V4, PUBLIC_V6]),
    ("http://nat64.buyer.example/", ["64:ff9b::5db8:d822"]),  # DNS64 network
    ("https://bücher.example/", [PUBLIC_V4]),
    ("http://100.63.255.255/", ["100.63.255.255"]),  # just below 100.64/10
    ("http://172.32.0.1/", ["172.32.0.1"]),  # just above 172.16/12
]


def test_the_corpus_is_large_enough() -> None:
    assert len(HOSTILE) >= 60
    assert len({u for u, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize(("url", "reason"), HOSTILE, ids=[u for u, _ in HOSTILE])
async def test_hostile_endpoints_are_refused_with_their_reason(url: str, reason: str) -> None:
    with pytest.raises(EgressRefusedError) as refused:
        await policy().check_url(url)
    assert refused.value.reason == reason, refused.value.detail


@pytest.mark.parametrize(("url", "addresses"), LEGITIMATE, ids=[u for u, _ in LEGITIMATE])
async def test_public_endpoints_are_accepted_with_every_address(
    url: str, addresses: list[str]
) -> None:
    target = await policy().check_url(url)
    assert target.addresses == tuple(ipaddress.ip_address(a) for a in addresses)


# Hosts as the HTTP client hands them to its network backend at connect time: httpx does
# not normalize as a browser does, so the spellings reach the policy raw.
RAW_HOSTS: list[tuple[str, str]] = [
    ("2130706433", eg.LOOPBACK),
    ("0x7f.1", eg.LOOPBACK),
    ("017700000001", eg.LOOPBACK),
    ("127.1", eg.LOOPBACK),
    ("0x7f.0.0.1", eg.LOOPBACK),
    ("127.0.0.1.", eg.LOOPBACK),
    ("%31%32%37.0.0.1", eg.LOOPBACK),
    ("localhost.", eg.LOOPBACK),
    ("LOCALHOST", eg.LOOPBACK),
    ("::ffff:127.0.0.1", eg.LOOPBACK),
    ("[::1]", eg.LOOPBACK),
    ("0", eg.UNSPECIFIED),
    ("fe80::1%25eth0", eg.LINK_LOCAL),  # as httpx keeps a zone id
    ("fe80::1%eth0", eg.LINK_LOCAL),
    ("0xa9fea9fe", eg.CLOUD_METADATA),
    ("127.0.0.1 x", eg.INVALID_URL),  # glibc's inet_aton would read 127.0.0.1
    ("127.0.0.1%20x", eg.INVALID_URL),
    ("", eg.INVALID_URL),
    ("a..b", eg.INVALID_URL),
]


@pytest.mark.parametrize(("host", "reason"), RAW_HOSTS, ids=[h for h, _ in RAW_HOSTS])
async def test_raw_hosts_at_connect_time_are_refused(host: str, reason: str) -> None:
    with pytest.raises(EgressRefusedError) as refused:
        await policy().addresses(host, 80)
    assert refused.value.reason == reason, refused.value.detail


async def test_ip_literals_never_reach_the_resolver() -> None:
    dns = StubDns()
    p = policy(dns=dns)
    with pytest.raises(EgressRefusedError):
        await p.check_url("http://2130706433/")
    await p.check_url(f"http://{PUBLIC_V4}/")
    await p.check_url(f"http://[{PUBLIC_V6}]/")
    assert dns.asked == []
    await p.check_url("http://buyer.example/")
    assert dns.asked == ["buyer.example"]


async def test_messages_say_what_the_host_is_or_resolves_to() -> None:
    cases = {
        "http://localhost/": "localhost resolves to loopback address 127.0.0.1",
        "http://0x7f.1/": "127.0.0.1 is a loopback address",
        "http://[::]/": ":: is an unspecified address",
        "http://[::ffff:127.0.0.1]/": "::ffff:7f00:1 is a loopback address (carrying 127.0.0.1)",
        "http://metadata.test/": "metadata.test resolves to cloud-metadata address 169.254.169.254",
        "http://nowhere.test/": "nowhere.test does not resolve: Name or service not known",
    }
    for url, detail in cases.items():
        with pytest.raises(EgressRefusedError) as refused:
            await policy().check_url(url)
        assert refused.value.detail == detail
    with pytest.raises(EgressRefusedError) as raw:
        await policy().addresses("0x7f.1", 80)
    assert raw.value.detail == "0x7f.1 is a loopback address (127.0.0.1)"
    assert raw.value.short() == "loopback 127.0.0.1"


async def test_the_allow_list_opens_exactly_its_networks() -> None:
    dev = policy(["127.0.0.1/32"])
    assert (await dev.check_url("http://127.0.0.1:8090/buyers/a/accept")).addresses == (
        ipaddress.ip_address("127.0.0.1"),
    )
    assert (await dev.check_url("http://loopback.test:8090/")).addresses
    for url in (
        "http://127.0.0.2/",  # the rest of 127/8
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",  # an IPv6 spelling is not inside an IPv4 network
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::127.0.0.1]/",
        "http://localhost/",  # also resolves to ::1
        "http://169.254.169.254/",
        "http://10.0.0.1/",
    ):
        with pytest.raises(EgressRefusedError):
            await dev.check_url(url)
    compose = policy(["172.30.90.200/32"])
    await compose.check_url("http://172.30.90.200:8090/")
    with pytest.raises(EgressRefusedError):
        await compose.check_url("http://172.30.90.201:8090/")


async def test_a_slow_resolver_is_an_unresolvable_host() -> None:
    async def hangs(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(10)
        return [PUBLIC_V4]

    slow = EgressPolicy(resolver=hangs, resolve_timeout_s=0.05)
    with pytest.raises(eg.UnresolvableHostError, match="timed out"):
        await slow.check_url("http://buyer.example/")

    async def empty(host: str, port: int) -> Sequence[str]:
        return []

    with pytest.raises(eg.UnresolvableHostError, match="no address"):
        await EgressPolicy(resolver=empty).check_url("http://buyer.example/")


def test_parsers_agree_or_the_url_is_refused() -> None:
    # A browser (and pydantic) reads a backslash as a slash: the host is buyer.example,
    # and the stored URL (which the HTTP client reads) says so too.
    assert parse_endpoint("http://buyer.example\\@127.0.0.1/").host == "buyer.example"
    assert parse_endpoint("http://127.0.0.1#@buyer.example/").host == "127.0.0.1"
    assert parse_endpoint("http://127.0.0.1?@buyer.example/").host == "127.0.0.1"
    assert parse_endpoint("https://buyer.example/").port == 443
    assert parse_endpoint("http://[2606:4700:4700::1111]:81/").host == "2606:4700:4700::1111"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        (PUBLIC_V6, None),
        ("64:ff9b::808:808", None),  # NAT64 of a public address
        ("224.0.0.251", eg.MULTICAST),  # is_global says True on Python 3.11
        ("192.0.0.9", eg.RESERVED),
        ("::ffff:8.8.8.8", eg.TRANSITION),
        ("2002:808:808::1", eg.TRANSITION),
        ("fe80::1%eth0", eg.LINK_LOCAL),
        ("5f00::1", eg.RESERVED),
    ],
)
def test_classify(address: str, expected: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == expected


# --- the pinned transport, over a fake network ------------------------------------------------


# The fakes below implement httpcore's interfaces, timeout parameters included.
# ruff: noqa: ASYNC109


class Stream(httpcore.AsyncNetworkStream):
    def __init__(self, net: FakeNet, address: str) -> None:
        self.net, self.address = net, address
        self.answer = [net.answer]

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.answer.pop(0) if self.answer else b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.net.sent.append((self.address, buffer))

    async def aclose(self) -> None:
        return None

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.net.sni.append(server_hostname)
        return self


class FakeNet(httpcore.AsyncNetworkBackend):
    """Connections and bytes, recorded; every peer answers ``answer``."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") -> None:
        self.answer = answer
        self.connected: list[tuple[str, int]] = []
        self.sent: list[tuple[str, bytes]] = []
        self.sni: list[str | None] = []
        self.unreachable: set[str] = set()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, **_: object
    ) -> httpcore.AsyncNetworkStream:
        if host in self.unreachable:
            raise httpcore.ConnectError(f"{host} unreachable")
        self.connected.append((host, port))
        return Stream(self, host)

    async def sleep(self, seconds: float) -> None:
        return None


def client(p: EgressPolicy, net: FakeNet) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=PinnedTransport(p, inner=net), follow_redirects=False)


class Rebinding(StubDns):
    """TTL 0: a public answer for the first question, loopback for every later one."""

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return [PUBLIC_V4] if len(self.asked) == 1 else ["127.0.0.1"]


async def test_the_connection_goes_to_the_checked_address_with_the_names_host_and_sni() -> None:
    dns, net = Rebinding(), FakeNet()
    async with client(EgressPolicy(resolver=dns), net) as c:
        answer = await c.post("https://rebind.test:8443/leads", content=b"{}")
    assert answer.status_code == 200
    assert dns.asked == ["rebind.test"]  # resolved once, for the check and the connection
    assert net.connected == [(PUBLIC_V4, 8443)]  # the checked IP literal
    assert net.sni == ["rebind.test"]  # TLS still verifies the name
    (address, request), *_ = net.sent
    assert address == PUBLIC_V4
    assert b"\r\nHost: rebind.test:8443\r\n" in request


async def test_a_refused_address_is_never_connected_and_surfaces_unchanged() -> None:
    net = FakeNet()
    async with client(policy(), net) as c:
        for url in ("http://0x7f.1/", "http://localhost/", "http://[::ffff:127.0.0.1]/"):
            with pytest.raises(EgressRefusedError):
                await c.post(url, content=b"{}")
    assert net.connected == []


async def test_a_name_that_rebinds_to_loopback_is_refused_at_its_next_connection() -> None:
    rebinding, net = EgressPolicy(resolver=Rebinding()), FakeNet()
    async with client(rebinding, net) as first:
        assert (await first.post("http://rebind.test/")).status_code == 200
    async with client(rebinding, net) as second:  # a new connection: resolved again
        with pytest.raises(EgressRefusedError) as refused:
            await second.post("http://rebind.test/")
    assert refused.value.short() == "loopback 127.0.0.1"
    assert net.connected == [(PUBLIC_V4, 80)]


async def test_an_unresolvable_host_is_a_connection_error() -> None:
    async with client(policy(), FakeNet()) as c:
        with pytest.raises(httpx.ConnectError, match="does not resolve"):
            await c.post("http://nowhere.test/")


async def test_the_next_checked_address_is_tried_when_one_does_not_answer() -> None:
    net = FakeNet()
    net.unreachable.add(PUBLIC_V4)
    async with client(policy(), net) as c:
        assert (await c.post("http://dual.buyer.example/")).status_code == 200
    assert net.connected == [(PUBLIC_V6, 80)]


async def test_redirects_are_not_followed() -> None:
    net = FakeNet(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1/\r\nContent-Length: 0\r\n\r\n")
    async with client(policy(), net) as c:
        answer = await c.post(f"http://{PUBLIC_V4}/")
    assert answer.status_code == 302
    assert net.connected == [(PUBLIC_V4, 80)]


async def test_the_transport_ignores_proxies_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:3128")
    net = FakeNet()
    async with client(policy(), net) as c:
        await c.post(f"http://{PUBLIC_V4}/")
    assert net.connected == [(PUBLIC_V4, 80)]


# --- settings and delivery's accounting -------------------------------------------------------


def test_the_allow_list_is_empty_by_default_and_read_as_comma_separated_cidrs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LX_PLATFORM_EGRESS_ALLOW_CIDRS", raising=False)
    assert PlatformSettings().egress_allow_cidrs == ()
    monkeypatch.setenv("LX_PLATFORM_EGRESS_ALLOW_CIDRS", " 127.0.0.1/32, ::1/128 ")
    assert PlatformSettings().egress_allow_cidrs == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    monkeypatch.setenv("LX_PLATFORM_EGRESS_ALLOW_CIDRS", "127.0.0.1/8")  # host bits set
    with pytest.raises(ValueError, match="egress_allow_cidrs"):
        PlatformSettings()


@pytest.mark.parametrize(
    "cidrs",
    [
        "127.0.0.1/32",
        "169.254.169.254/32",
        "0.0.0.0/0",
        "::/0",
        "::1/128",
        "fe80::/64",
        "0.0.0.0/32",
    ],
)
def test_production_never_opens_loopback_link_local_or_everything(
    cidrs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LX_PLATFORM_ENVIRONMENT", "production")
    monkeypatch.setenv("LX_PLATFORM_INTERNAL_TOKEN", "a-real-long-secret-1")
    monkeypatch.setenv("LX_PLATFORM_OPERATOR_TOKEN", "a-real-long-secret-2")
    monkeypatch.setenv("LX_PLATFORM_EGRESS_ALLOW_CIDRS", cidrs)
    with pytest.raises(ValueError, match="production never reaches"):
        PlatformSettings()


def test_production_may_open_a_private_network_for_a_private_interconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LX_PLATFORM_ENVIRONMENT", "production")
    monkeypatch.setenv("LX_PLATFORM_INTERNAL_TOKEN", "a-real-long-secret-1")
    monkeypatch.setenv("LX_PLATFORM_OPERATOR_TOKEN", "a-real-long-secret-2")
    monkeypatch.setenv("LX_PLATFORM_EGRESS_ALLOW_CIDRS", "10.20.30.0/24")
    assert PlatformSettings().egress_allow_cidrs == (ipaddress.ip_network("10.20.30.0/24"),)


def test_a_refused_try_is_counted_under_its_own_bounded_class() -> None:
    reason = f"{EGRESS_REFUSED}: loopback 127.0.0.1"
    assert reason_class(DeliveryResult.ERROR, reason, None) is ReasonClass.EGRESS_REFUSED
