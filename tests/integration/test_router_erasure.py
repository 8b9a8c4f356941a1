"""The router forgets erased subjects (real Kafka and PostgreSQL, a fake key vault): on
``LeadsErased`` the keyed hashes of the leads' e-mail and phone in its per-buyer
duplicate index are deleted, so nothing there links a buyer to the person any more.

The person posted again afterwards is a new consumer to the platform (ingest forgot
them too), so a buyer with a duplicate window is offered the new lead."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.settings import PlatformSettings
from lx_router.main import create_service
from lx_router.settings import RouterSettings
from lx_schemas import events as ev
from lx_schemas.envelope import Event
from lx_schemas.topics import LEAD_ROUTED
from sqlalchemy import text

from tests.support.http import ThreadedServer
from tests.support.router_world import Vault, World, attempted, publish_at_once
from tests.support.services import serving, settings_for
from tests.support.settle import read_all, wait_consumed, wait_relayed


@dataclass
class Router:
    infra: Infra
    rt: Runtime
    prefix: str
    world: World

    async def send(self, group: str, *events: tuple[Event, uuid.UUID]) -> None:
        positions = await publish_at_once(self.infra.kafka_bootstrap, self.prefix, list(events))
        await wait_consumed(self.infra.kafka_bootstrap, f"{self.prefix}{group}", positions)
        await wait_relayed(self.rt)

    async def decisions(self, lead_id: uuid.UUID) -> list[Event]:
        events = await read_all(self.infra.kafka_bootstrap, LEAD_ROUTED.qualified(self.prefix))
        return [e for e in events if getattr(e.payload, "lead_id", None) == lead_id]

    async def claims(self, buyer_id: uuid.UUID) -> dict[uuid.UUID, int]:
        """Per lead, the keyed hashes the buyer's duplicate index holds."""
        async with self.rt.db.begin() as conn:
            rows = await conn.execute(
                text(
                    "select lead_id, count(*) as n from buyer_consumers where buyer_id = :b"
                    " group by lead_id"
                ),
                {"b": buyer_id},
            )
            return {r.lead_id: r.n for r in rows}


@pytest.fixture(scope="module")
async def router(infra: Infra, isolation: str) -> AsyncIterator[Router]:
    vault = Vault()
    with ThreadedServer(vault.app()) as vault_server:
        settings = settings_for(
            RouterSettings,
            infra,
            isolation,
            "router",
            platform=PlatformSettings(ingest_url=vault_server.url),
        )
        async with serving(create_service(settings)) as (_, rt):
            yield Router(infra, rt, settings.kafka.topic_prefix, World(vault))
            assert [c.dead_lettered for c in rt.consumers] == [0]


async def test_an_erased_person_is_forgotten_by_a_buyers_duplicate_window(router: Router) -> None:
    w = router.world
    campaign = w.campaign()
    cid = campaign.payload.campaign_id
    source = w.source(cid)
    once = w.buyer(cid, "Once", 1, "40.00", dedupe_days=30)
    buyer_id = once.payload.buyer_id
    await router.send("router", *[(c, c.correlation_id) for c in (campaign, source, once)])

    first = w.lead(cid, source.payload.source_id, email="erin@example.com", phone="+14155550199")
    await router.send("router", (first, first.payload.lead_id))
    (offer,) = await router.decisions(first.payload.lead_id)
    assert isinstance(offer, ev.LeadRouted) and offer.payload.buyer_id == buyer_id
    await router.send(
        "router", (attempted(offer, ev.DeliveryResult.ACCEPTED), offer.payload.lead_id)
    )
    assert await router.claims(buyer_id) == {first.payload.lead_id: 2}  # e-mail and phone

    # Before the erasure the same person is a duplicate to the buyer.
    again = w.lead(cid, source.payload.source_id, email="erin@example.com", phone="+14155550199")
    await router.send("router", (again, again.payload.lead_id))
    (refused,) = await router.decisions(again.payload.lead_id)
    assert isinstance(refused, ev.LeadRoutingExhausted)
    assert [r.code for r in refused.payload.rejections] == [ev.RejectionCode.BUYER_DUPLICATE]

    # The subject is erased: ingest destroys the keys and announces the leads.
    assert w.vault is not None
    erased_ids = (first.payload.lead_id, again.payload.lead_id)
    for lead in (first, again):
        assert lead.payload.lead.pii is not None
        w.vault.keys.pop(str(lead.payload.lead.pii.key_id))
    request_id = uuid.uuid4()
    erased = ev.LeadsErased.new(
        account_id=w.account,
        correlation_id=request_id,
        producer="test",
        payload=ev.LeadsErasedPayload(request_id=request_id, lead_ids=erased_ids),
    )
    await router.send("router", (erased, w.account))
    assert await router.claims(buyer_id) == {}

    # Posted again, the person is offered to the buyer like anyone new.
    later = w.lead(cid, source.payload.source_id, email="erin@example.com", phone="+14155550199")
    await router.send("router", (later, later.payload.lead_id))
    (offered,) = await router.decisions(later.payload.lead_id)
    assert isinstance(offered, ev.LeadRouted) and offered.payload.buyer_id == buyer_id
    assert await router.claims(buyer_id) == {later.payload.lead_id: 2}


async def test_an_erasure_leaves_other_peoples_claims_alone(router: Router) -> None:
    w = router.world
    campaign = w.campaign()
    cid = campaign.payload.campaign_id
    source = w.source(cid)
    once = w.buyer(cid, "Once", 1, "40.00", dedupe_days=30)
    await router.send("router", *[(c, c.correlation_id) for c in (campaign, source, once)])
    kept = w.lead(cid, source.payload.source_id, email="kim@example.com", phone="+14155550177")
    await router.send("router", (kept, kept.payload.lead_id))
    request_id = uuid.uuid4()
    erased = ev.LeadsErased.new(
        account_id=w.account,
        correlation_id=request_id,
        producer="test",
        payload=ev.LeadsErasedPayload(request_id=request_id, lead_ids=(uuid.uuid4(),)),
    )
    await router.send("router", (erased, w.account))
    assert await router.claims(once.payload.buyer_id) == {kept.payload.lead_id: 2}
