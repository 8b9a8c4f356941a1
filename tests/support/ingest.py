"""The ingest gateway in-process, and configuring it the way production does: by
publishing ``CampaignConfigured`` and ``SourceConfigured`` on ``config.changed``."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from lx_devstack.infra import Infra
from lx_ingest.main import create_service
from lx_ingest.settings import IngestSettings
from lx_platform.runtime import Runtime
from lx_schemas import decode_event
from lx_schemas import events as ev
from lx_schemas.rules import Payout, PingPost, SourceControls
from lx_schemas.topics import TopicSpec
from sqlalchemy import text

from tests.support.kafka import publish, read_to_end
from tests.support.services import eventually, hosted, settings_for

FIELDS = (
    ev.FieldSpec(name="email", type=ev.FieldType.EMAIL, required=True, pii=True),
    ev.FieldSpec(name="phone", type=ev.FieldType.PHONE, required=True, pii=True),
    ev.FieldSpec(name="first_name", type=ev.FieldType.TEXT, pii=True, max_length=40),
    ev.FieldSpec(name="state", type=ev.FieldType.US_STATE, required=True),
    ev.FieldSpec(name="zip", type=ev.FieldType.ZIP),
    ev.FieldSpec(name="loan_amount", type=ev.FieldType.INTEGER),
    ev.FieldSpec(name="homeowner", type=ev.FieldType.BOOLEAN),
)
LEAD = {
    "email": "Ada.Lovelace@Example.COM",
    "phone": "(415) 555-0132",
    "first_name": "Augusta",
    "state": "ca",
    "zip": "94105-1234",
    "loan_amount": "250000",
    "homeowner": "yes",
}


@dataclass
class Service:
    client: httpx.AsyncClient
    rt: Runtime
    bootstrap: str

    @property
    def prefix(self) -> str:
        return self.rt.settings.kafka.topic_prefix

    @property
    def settings(self) -> IngestSettings:
        settings = self.rt.settings
        assert isinstance(settings, IngestSettings)
        return settings

    async def count(self, table: str, where: str = "true", **params: Any) -> int:
        async with self.rt.db.begin() as conn:
            sql = f"select count(*) from {table} where {where}"
            return int(await conn.scalar(text(sql), params) or 0)

    async def counts(self) -> dict[str, int]:
        return {t: await self.count(t) for t in ("leads", "lead_keys")}

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.rt.db.begin() as conn:
            await conn.execute(text(sql), params)

    async def records(self, spec: TopicSpec, key: uuid.UUID | None = None) -> list[Any]:
        """The events of a topic up to its end, only those keyed ``key`` if given."""
        records = await read_to_end(self.bootstrap, spec.qualified(self.prefix))
        return [decode_event(r.value) for r in records if key is None or r.key == str(key).encode()]

    async def events_of(self, spec: TopicSpec, account_id: uuid.UUID) -> list[Any]:
        return [e for e in await self.records(spec) if e.account_id == account_id]

    async def received_of(self, spec: TopicSpec, account_id: uuid.UUID) -> list[Any]:
        """The account's events on ``spec`` but LeadRejected (refused posts share
        lead.received with the leads accepted)."""
        events = await self.events_of(spec, account_id)
        return [e for e in events if not isinstance(e, ev.LeadRejected)]


@contextlib.asynccontextmanager
async def running_ingest(infra: Infra, isolation: str, **settings: Any) -> AsyncIterator[Service]:
    """Ingest with its own database and topic prefix, for one test module."""
    config = settings_for(IngestSettings, infra, isolation, "ingest", **settings)
    async with hosted(create_service(config)) as (client, rt):
        yield Service(client, rt, infra.kafka_bootstrap)


@dataclass(frozen=True)
class Source:
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}


def campaign_configured(
    account_id: uuid.UUID,
    campaign_id: uuid.UUID,
    status: ev.Status = ev.Status.ACTIVE,
    dedupe: ev.DedupeRule | None = None,
    ping_post: PingPost | None = None,
) -> ev.CampaignConfigured:
    return ev.CampaignConfigured.new(
        account_id=account_id,
        correlation_id=campaign_id,
        producer="test",
        payload=ev.CampaignState(
            campaign_id=campaign_id,
            account_id=account_id,
            name="Mortgage",
            vertical="mortgage",
            status=status,
            fields=FIELDS,
            dedupe=dedupe,
            ping_post=ping_post or PingPost(),
        ),
    )


def source_configured(
    src: Source,
    status: ev.Status = ev.Status.ACTIVE,
    controls: SourceControls | None = None,
) -> ev.SourceConfigured:
    return ev.SourceConfigured.new(
        account_id=src.account_id,
        correlation_id=src.source_id,
        producer="test",
        payload=ev.SourceState(
            source_id=src.source_id,
            account_id=src.account_id,
            campaign_id=src.campaign_id,
            name="Affiliate",
            status=status,
            api_key_prefix=src.api_key[:11],
            api_key_sha256=hashlib.sha256(src.api_key.encode()).hexdigest(),
            payout=Payout(fixed=Decimal("12.00")),
            controls=controls or SourceControls(),
        ),
    )


def new_sources(account_id: uuid.UUID, campaign_id: uuid.UUID, n: int) -> list[Source]:
    return [
        Source(account_id, campaign_id, uuid.uuid4(), f"lxsk_{secrets.token_urlsafe(32)}")
        for _ in range(n)
    ]


async def key_is_known(svc: Service, src: Source) -> None:
    """Ingest knows a key once a status lookup answers 404 (no such lead) instead of 401."""

    async def known() -> bool:
        r = await svc.client.get(f"/v1/leads/{uuid.uuid4()}", headers=src.auth)
        return r.status_code == 404

    await eventually(known, what="ingest accepting the source's key")


async def configure(
    svc: Service,
    *,
    campaign_status: ev.Status = ev.Status.ACTIVE,
    source_status: ev.Status = ev.Status.ACTIVE,
    sources: int = 1,
    dedupe: ev.DedupeRule | None = None,
    account_id: uuid.UUID | None = None,
    controls: SourceControls | None = None,
    ping_post: PingPost | None = None,
) -> list[Source]:
    """Publish a campaign (of a new account unless given) and its sources on
    config.changed; return once ingest knows them."""
    account_id, campaign_id = account_id or uuid.uuid4(), uuid.uuid4()
    made = new_sources(account_id, campaign_id, sources)
    await publish(
        svc.bootstrap,
        svc.prefix,
        [
            (
                campaign_configured(account_id, campaign_id, campaign_status, dedupe, ping_post),
                campaign_id,
            ),
            *((source_configured(s, source_status, controls), s.source_id) for s in made),
        ],
    )
    for src in made:
        await key_is_known(svc, src)
    return made
