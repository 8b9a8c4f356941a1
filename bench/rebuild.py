"""Rebuild rate of each projection from a synthetic log (``make bench-rebuild``).

Publishes LEADS leads' stories (5 events each: received, usage, routed, attempted, sold or
unsold) under a topic prefix of its own, then times ``lxctl projection rebuild`` of
billing and analytics into empty databases. Prints the figures and writes them to
bench-results/rebuild.json. Everything runs against the local Kafka and PostgreSQL
(loopback), and the run is bounded by the log size.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from lx_analytics.settings import AnalyticsSettings
from lx_billing.settings import BillingSettings
from lx_devstack.infra import Infra, start_infra
from lx_platform.db import Database, apply_migrations
from lx_platform.kafka import encode_key, ensure_topics
from lx_platform.settings import KafkaSettings, ServiceSettings
from lx_schemas import Event, topic_for
from lx_schemas import events as ev
from lx_schemas.rules import Payout
from lx_sre.projections import PROJECTIONS, rebuild_projection

LEADS = int(os.environ.get("LX_BENCH_LEADS", "70000"))
ACCOUNT, CAMPAIGN = uuid.uuid4(), uuid.uuid4()
SOURCES = [uuid.uuid4() for _ in range(20)]
BUYERS = [uuid.uuid4() for _ in range(10)]
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PAYOUT = Payout(percent=Decimal("60.00"))


def story(n: int) -> list[tuple[Event, uuid.UUID]]:
    lead, at = uuid.uuid4(), T0 + dt.timedelta(seconds=13 * n)
    ref = {"lead_id": lead, "campaign_id": CAMPAIGN, "source_id": SOURCES[n % len(SOURCES)]}
    env = {"account_id": ACCOUNT, "correlation_id": lead, "producer": "bench", "occurred_at": at}
    buyer, price = BUYERS[n % len(BUYERS)], Decimal("20.00") + n % 9
    content = ev.LeadContent(fields={"state": "CA", "zip": "94105"})
    out: list[Event] = [
        ev.LeadReceived.new(**env, payload=ev.LeadReceivedPayload(**ref, lead=content)),
        ev.UsageIncremented.new(
            **env,
            payload=ev.UsageIncrementedPayload(
                metric=ev.UsageMetric.LEADS_RECEIVED, subject_id=lead
            ),
        ),
        ev.LeadRouted.new(
            **env,
            payload=ev.LeadRoutedPayload(
                **ref,
                buyer_id=buyer,
                attempt=1,
                delivery_id=uuid.uuid4(),
                price=price,
                payout=PAYOUT,
                lead=content,
            ),
        ),
        ev.DeliveryAttempted.new(
            **env,
            payload=ev.DeliveryAttemptedPayload(
                **ref,
                buyer_id=buyer,
                delivery_id=uuid.uuid4(),
                attempt=1,
                result=ev.DeliveryResult.ACCEPTED if n % 5 else ev.DeliveryResult.REJECTED,
                latency_ms=4.0,
            ),
        ),
        ev.LeadSold.new(
            **env,
            payload=ev.LeadSoldPayload(
                **ref,
                buyer_id=buyer,
                delivery_id=uuid.uuid4(),
                price=price,
                payout=PAYOUT.for_price(price),
            ),
        )
        if n % 5
        else ev.LeadUnsold.new(
            **env,
            payload=ev.LeadUnsoldPayload(**ref, reason=ev.ExhaustionReason.ALL_BUYERS_DECLINED),
        ),
    ]
    return [(e, ACCOUNT if isinstance(e, ev.UsageIncremented) else lead) for e in out]


async def publish_log(kafka: KafkaSettings) -> tuple[int, float]:
    await ensure_topics(kafka)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    started, sent = time.monotonic(), 0
    try:
        for start in range(0, LEADS, 1000):
            futures = []
            for n in range(start, min(start + 1000, LEADS)):
                for event, key in story(n):
                    topic = topic_for(type(event)).qualified(kafka.topic_prefix)
                    futures.append(await producer.send(topic, event.to_json(), key=encode_key(key)))
            await asyncio.gather(*futures)
            sent += len(futures)
    finally:
        await producer.stop()
    return sent, time.monotonic() - started


async def drop_topics(kafka: KafkaSettings) -> None:
    """The synthetic log is the benchmark's own: it leaves no topics behind."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(kafka.topic_prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def main() -> None:
    infra: Infra = start_infra()
    tag = f"bench{uuid.uuid4().hex[:6]}"
    kafka = KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, topic_prefix=f"{tag}.")
    sent, publish_s = await publish_log(kafka)
    print(f"published {sent} events in {publish_s:.1f}s ({sent / publish_s:,.0f}/s)")
    results: dict[str, object] = {
        "leads": LEADS,
        "events_published": sent,
        "publish_events_per_s": round(sent / publish_s),
    }
    for name, cls in (("analytics", AnalyticsSettings), ("billing", BillingSettings)):
        database = f"{tag}_{name}"
        infra.create_database(database)
        live: ServiceSettings = cls(database_url=infra.dsn(database), kafka=kafka)
        db = Database(live.database_url)
        await apply_migrations(db, ["lx_platform", PROJECTIONS[name].migrations])
        await db.dispose()
        stats = await rebuild_projection(name, fresh=True, live=live)
        results[name] = {
            "events": stats.records,
            "applied": stats.applied,
            "seconds": round(stats.seconds, 2),
            "events_per_s": round(stats.rate()),
        }
        print(
            f"rebuild {name:<9} {stats.records:>8,} events in {stats.seconds:6.1f}s"
            f" = {stats.rate():>8,.0f} events/s"
        )
        infra.drop_database(database)
    await drop_topics(kafka)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "rebuild.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out / 'rebuild.json'}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
