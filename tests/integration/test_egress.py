"""Hostile buyer endpoints against the real delivery service (real Kafka, PostgreSQL and
sockets): none reaches a canary listening on every address of this machine.

The delivery service runs without the loopback allow-list: the only non-public address it
may reach is 127.0.0.2, where a well-behaved buyer and a redirecting one listen. The
canary listens on 0.0.0.0 and :: (port P), so any IPv4 or IPv6 address of this host
reaches it, and on 127.0.0.1 at the buyer's own port (Q), where a rebinding or a
redirect would land. It counts TCP connections, before any HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_delivery.main import create_service
from lx_delivery.settings import DeliverySettings
from lx_devstack.buyer import create_buyer_app
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.settings import PlatformSettings
from lx_schemas import events as ev
from lx_schemas.topics import DELIVERY_OUTCOME
from pydantic import ValidationError
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route

from tests.support.dns import StubDns
from tests.support.events import routed as _routed
from tests.support.http import Canary, ThreadedServer
from tests.support.services import eventually, serving, settings_for
from tests.support.settle import publish, read_all, wait_consumed, wait_relayed

ACCOUNT = uuid.uuid4()
INTERNAL = {"x-lx-internal-token": "dev-internal-token"}
BUYER_HOST = "127.0.0.2"  # the one non-public address delivery may reach here
LOG_LIMIT = 4096
R = ev.DeliveryResult


def own_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = s.getsockname()[0]
        return None if address.startswith("127.") else address


def hostile_urls(p: int) -> list[str]:
    """Buyer endpoints that all lead to the canary's port ``p`` on this machine."""
    urls = [
        f"http://127.0.0.1:{p}/",
        f"https://127.0.0.1:{p}/",
        f"http://127.1:{p}/",
        f"http://127.0.1:{p}/",
        f"http://2130706433:{p}/",
        f"http://017700000001:{p}/",
        f"http://0x7f000001:{p}/",
        f"http://0x7f.1:{p}/",
        f"http://0x7f.0.0.1:{p}/",
        f"http://0x7F.0x0.0x0.0x1:{p}/",
        f"http://0177.0.0.1:{p}/",
        f"http://127.000.000.001:{p}/",
        f"http://127.0.0.1.:{p}/",
        f"http://127.0.0.3:{p}/",  # the rest of 127/8 is not allowed either
        f"http://127.255.255.254:{p}/",
        f"http://%31%32%37.0.0.1:{p}/",
        f"http://%31%32%37%2e%30%2e%30%2e%31:{p}/",
        f"http://①②⑦.0.0.1:{p}/",
        f"http://１２７．０．０．１:{p}/",  # noqa: RUF001
        f"http://[::1]:{p}/",
        f"http://[0:0:0:0:0:0:0:1]:{p}/",
        f"http://[::ffff:127.0.0.1]:{p}/",
        f"http://[::ffff:7f00:1]:{p}/",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/",
        f"http://[::127.0.0.1]:{p}/",
        f"http://[64:ff9b::127.0.0.1]:{p}/",
        f"http://[2002:7f00:1::]:{p}/",
        f"http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{p}/",  # Teredo
        f"http://0.0.0.0:{p}/",
        f"http://0:{p}/",
        f"http://0x0:{p}/",
        f"http://[::]:{p}/",
        f"http://localhost:{p}/",
        f"http://LOCALHOST:{p}/",
        f"http://localhost.:{p}/",
        f"http://LocalHost.:{p}/path?q=1",
        f"http://ｌｏｃａｌｈｏｓｔ:{p}/",  # noqa: RUF001
        f"http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:{p}/",
        f"http://%6c%6f%63%61%6c%68%6f%73%74:{p}/",
        f"https://localhost:{p}/",
        # names the stub DNS answers (TTL 0 included): see DNS below
        f"http://loopback.test:{p}/",
        f"http://loopback6.test:{p}/",
        f"http://mapped.test:{p}/",
        f"http://zero.test:{p}/",
        f"http://split.test:{p}/",  # the allowed 127.0.0.2 and the canary's 127.0.0.1
        f"http://public-then-loopback.test:{p}/",
        f"http://metadata.test:{p}/",
        # private and link-local addresses: refused before any connection
        f"http://10.0.0.1:{p}/",
        f"http://172.16.0.1:{p}/",
        f"http://192.168.0.1:{p}/",
        f"http://169.254.169.254:{p}/latest/meta-data/",
        f"http://2852039166:{p}/",  # 169.254.169.254
        f"http://[::ffff:169.254.169.254]:{p}/",
        f"http://[fd00:ec2::254]:{p}/",
        f"http://100.64.0.1:{p}/",
        f"http://[fe80::1]:{p}/",
        f"http://[fc00::1]:{p}/",
    ]
    own = own_address()
    if own is not None:  # this machine's own private address (the canary listens there)
        urls.append(f"http://{own}:{p}/")
    return urls


# What the canary would see without the policy: a plain HTTP client reaches it at these.
REACHABLE_WITHOUT_POLICY = [
    "http://127.0.0.1:{p}/",
    "http://127.1:{p}/",
    "http://2130706433:{p}/",
    "http://0x7f.1:{p}/",
    "http://127.0.0.3:{p}/",
    "http://0.0.0.0:{p}/",
    "http://localhost:{p}/",
    "http://[::1]:{p}/",
    "http://[::ffff:127.0.0.1]:{p}/",
]


def dns() -> StubDns:
    return StubDns(
        {
            "loopback.test": ["127.0.0.1"],
            "loopback6.test": ["::1"],
            "mapped.test": ["::ffff:127.0.0.1"],
            "zero.test": ["0.0.0.0"],
            "split.test": [BUYER_HOST, "127.0.0.1"],
            "public-then-loopback.test": ["93.184.216.34", "127.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            # The buyer's name: its address for the first question, the canary's after.
            "rebind.buyer.test": lambda n: [BUYER_HOST] if n == 1 else ["127.0.0.1"],
        }
    )


# --- the buyers that may be reached: on 127.0.0.2 ------------------------------------------


def buyer_app() -> Starlette:
    async def redirect(request: Request) -> Response:
        status = int(request.path_params["status"])
        return Response(status_code=status, headers={"location": request.query_params["to"]})

    async def huge(_: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(1024):  # 64 MiB if read to the end
                yield b"x" * 65536

        return StreamingResponse(chunks(), media_type="application/json")

    return Starlette(
        routes=[
            Route("/redirect/{status}", redirect, methods=["POST"]),
            Route("/huge", huge, methods=["POST"]),
            Mount("/", create_buyer_app()),
        ]
    )


@dataclass
class Egress:
    infra: Infra
    client: httpx.AsyncClient
    rt: Runtime
    prefix: str
    canary: Canary
    canary_port: int  # on 0.0.0.0 and ::
    buyer_port: int  # the buyer's on 127.0.0.2; the canary's on 127.0.0.1
    dns: StubDns

    @property
    def buyer_url(self) -> str:
        return f"http://{BUYER_HOST}:{self.buyer_port}"

    def buyer(self, url: str) -> ev.BuyerState:
        return ev.BuyerState(
            buyer_id=uuid.uuid4(),
            account_id=ACCOUNT,
            campaign_id=uuid.uuid4(),
            name=f"b-{uuid.uuid4().hex[:8]}",
            endpoint_url=url,
            price=Decimal("20.00"),
            priority=1,
            timeout_ms=2_000,
        )

    async def deliver(self, buyers: list[ev.BuyerState]) -> list[uuid.UUID]:
        """Configure the buyers, offer each a lead, wait until every delivery is done."""
        configured = [
            (
                ev.BuyerConfigured.new(
                    account_id=ACCOUNT, correlation_id=b.buyer_id, producer="test", payload=b
                ),
                b.buyer_id,
            )
            for b in buyers
        ]
        offers = [routed_to(b) for b in buyers]
        group = f"{self.prefix}delivery"
        await wait_consumed(
            self.infra.kafka_bootstrap,
            group,
            await publish(self.infra.kafka_bootstrap, self.prefix, configured),
        )
        await wait_consumed(
            self.infra.kafka_bootstrap,
            group,
            await publish(
                self.infra.kafka_bootstrap, self.prefix, [(o, o.payload.lead_id) for o in offers]
            ),
        )
        ids = [o.payload.delivery_id for o in offers]

        async def all_done() -> bool:
            async with self.rt.db.begin() as conn:
                done = await conn.scalar(
                    text(
                        "select count(*) from deliveries"
                        " where delivery_id = any(:ids) and status = 'done'"
                    ),
                    {"ids": ids},
                )
            return done == len(ids)

        await eventually(all_done, what=f"{len(ids)} deliveries done", within=60)
        await wait_relayed(self.rt)
        return [o.payload.lead_id for o in offers]

    async def outcome(self, lead_id: uuid.UUID) -> dict[str, Any]:
        """The delivery's record in the internal trace: status, tries, reasons."""
        answer = await self.client.get(f"/internal/v1/leads/{lead_id}/deliveries", headers=INTERNAL)
        assert answer.status_code == 200, answer.text
        (delivery,) = answer.json()["deliveries"]
        result: dict[str, Any] = delivery
        return result


@contextlib.contextmanager
def listening() -> Iterator[tuple[Canary, int, int, ThreadedServer]]:
    with Canary() as canary:
        p = canary.listen("0.0.0.0")  # every IPv4 address of this machine
        with contextlib.suppress(OSError):  # a machine without IPv6
            canary.listen("::", p)
        q = canary.listen("127.0.0.1")
        with ThreadedServer(buyer_app(), port=q, host=BUYER_HOST) as buyer:
            yield canary, p, q, buyer


@pytest.fixture(scope="module")
async def egress(infra: Infra, isolation: str) -> AsyncIterator[Egress]:
    with listening() as (canary, p, q, buyer):
        settings = settings_for(
            DeliverySettings,
            infra,
            isolation,
            "delivery",
            max_tries=2,
            retry_base_s=0.05,
            log_limit_bytes=LOG_LIMIT,
            # Not the loopback allow-list of the other tests: only the buyers' address.
            platform=PlatformSettings(egress_allow_cidrs=(f"{BUYER_HOST}/32",)),
        )
        resolver = dns()
        try:
            async with serving(create_service(settings, resolver=resolver)) as (client, rt):
                yield Egress(infra, client, rt, settings.kafka.topic_prefix, canary, p, q, resolver)
        finally:
            buyer.server.force_exit = True


# --- tests ----------------------------------------------------------------------------------


async def test_the_canary_is_reached_by_a_client_without_the_policy(egress: Egress) -> None:
    """The control: these spellings do lead to the canary when nothing stops them."""
    reached = []
    async with httpx.AsyncClient(trust_env=False, timeout=5) as plain:
        for url in REACHABLE_WITHOUT_POLICY:
            before = len(egress.canary.hits)
            with contextlib.suppress(httpx.HTTPError):
                await plain.post(url.format(p=egress.canary_port), content=b"{}")
            reached.append(len(egress.canary.hits) > before)
    egress.canary.reset()
    assert all(reached), list(zip(REACHABLE_WITHOUT_POLICY, reached, strict=True))


async def test_hostile_buyer_urls_never_reach_the_canary(egress: Egress) -> None:
    urls = hostile_urls(egress.canary_port)
    assert len(urls) >= 50
    buyers = []
    for url in urls:
        try:
            buyers.append(egress.buyer(url))
        except ValidationError as exc:  # the event schema itself refuses it
            raise AssertionError(f"{url} is not a valid buyer URL: {exc}") from exc
    egress.canary.reset()

    leads = await egress.deliver(buyers)

    assert egress.canary.hits == []
    reasons = {}
    for url, lead_id in zip(urls, leads, strict=True):
        delivery = await egress.outcome(lead_id)
        (only_try,) = delivery["tries"]  # refused once, for good: never retried
        assert (delivery["status"], delivery["result"]) == ("done", "error"), url
        assert only_try["reason"].startswith("egress_refused: "), (url, only_try["reason"])
        assert only_try["http_status"] is None
        assert "remote_address" not in only_try["response"]
        reasons[url] = only_try["reason"]
    p = egress.canary_port
    assert reasons[f"http://0x7f.1:{p}/"] == "egress_refused: loopback 127.0.0.1"
    assert reasons[f"http://[::ffff:127.0.0.1]:{p}/"] == "egress_refused: loopback ::ffff:7f00:1"
    assert reasons[f"http://localhost.:{p}/"] == "egress_refused: loopback 127.0.0.1"
    assert reasons[f"http://split.test:{p}/"] == "egress_refused: loopback 127.0.0.1"
    assert reasons[f"http://169.254.169.254:{p}/latest/meta-data/"] == (
        "egress_refused: cloud_metadata 169.254.169.254"
    )

    # Counted under one bounded class, and published as final attempts.
    scrape = (await egress.client.get("/metrics")).text
    refused = [
        line
        for line in scrape.splitlines()
        if line.startswith("lx_delivery_outcomes_total{")
        and 'reason_class="egress_refused"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in refused) >= len(urls)
    outcomes = await read_all(
        egress.infra.kafka_bootstrap, DELIVERY_OUTCOME.qualified(egress.prefix)
    )
    attempted = [
        e.payload
        for e in outcomes
        if isinstance(e, ev.DeliveryAttempted) and e.correlation_id in set(leads)
    ]
    assert len(attempted) == len(urls)
    assert all(a.final and a.result is R.ERROR for a in attempted)
    assert egress.canary.hits == []


async def test_a_redirect_to_the_canary_is_never_followed(egress: Egress) -> None:
    targets = [
        f"http://127.0.0.1:{egress.buyer_port}/stolen",  # the canary at the buyer's port
        f"http://127.0.0.1:{egress.canary_port}/stolen",
        f"http://localhost:{egress.canary_port}/stolen",
        f"http://169.254.169.254:{egress.canary_port}/latest/meta-data/",
        f"{egress.buyer_url}/buyers/redirected/accept",  # even an allowed one
    ]
    cases = [(status, to) for status in (301, 302, 303, 307, 308) for to in targets]
    buyers = [
        egress.buyer(f"{egress.buyer_url}/redirect/{status}?{httpx.QueryParams(to=to)}")
        for status, to in cases
    ]
    egress.canary.reset()

    leads = await egress.deliver(buyers)

    assert egress.canary.hits == []
    for (status, to), lead_id in zip(cases, leads, strict=True):
        delivery = await egress.outcome(lead_id)
        (only_try,) = delivery["tries"]
        assert (only_try["result"], only_try["http_status"], only_try["reason"]) == (
            "error",
            status,
            f"redirect_not_followed: http_{status}",
        ), to
        assert only_try["response"]["remote_address"] == f"{BUYER_HOST}:{egress.buyer_port}"
    async with httpx.AsyncClient() as c:
        received = await c.get(f"{egress.buyer_url}/received", params={"buyer": "redirected"})
    assert received.json() == []


async def test_a_name_that_rebinds_to_the_canary_is_pinned_to_its_checked_address(
    egress: Egress,
) -> None:
    """rebind.buyer.test answers 127.0.0.2 (allowed) once, then 127.0.0.1 (the canary at
    the same port). Resolving for the check and again for the connection would land on the
    canary; delivery resolves once per connection and connects to what it checked."""
    buyer = egress.buyer(f"http://rebind.buyer.test:{egress.buyer_port}/buyers/pinned/accept")
    egress.canary.reset()

    (lead_id,) = await egress.deliver([buyer])

    delivery = await egress.outcome(lead_id)
    (only_try,) = delivery["tries"]
    assert (delivery["result"], only_try["http_status"]) == ("accepted", 200)
    assert only_try["response"]["remote_address"] == f"{BUYER_HOST}:{egress.buyer_port}"
    assert egress.dns.asked["rebind.buyer.test"] == 1
    assert egress.canary.hits == []
    async with httpx.AsyncClient() as c:
        received = await c.get(f"{egress.buyer_url}/received", params={"buyer": "pinned"})
    assert [r["lead_id"] for r in received.json()] == [str(lead_id)]
    # The request went to the address, under the name: the Host header is the URL's.
    (posted,) = received.json()
    assert posted["delivery_id"] == delivery["delivery_id"]


async def test_a_huge_answer_is_cut_at_the_log_limit(egress: Egress) -> None:
    buyer = egress.buyer(f"{egress.buyer_url}/huge")

    (lead_id,) = await egress.deliver([buyer])

    delivery = await egress.outcome(lead_id)
    (only_try,) = delivery["tries"]
    assert (only_try["result"], only_try["reason"]) == ("error", "response_too_large")
    assert len(only_try["response"]["body"]) == LOG_LIMIT
    assert only_try["latency_ms"] < 2_000
    await asyncio.sleep(0)
    assert egress.canary.hits == []


def routed_to(buyer: ev.BuyerState) -> ev.LeadRouted:
    return _routed(buyer, ACCOUNT)
