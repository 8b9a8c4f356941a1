"""Rebuild rate of each projection from a synthetic log (``make bench-rebuild``).

Publishes LEADS leads' stories (5 events each: received, usage, routed, attempted, sold or
unsold; every 4th lead also pinged first — a ping, two buyers' answers, the auction —
every 10th post refused as a duplicate, every 20th sale returned) under a topic prefix of
its own, then times ``lxctl projection rebuild`` of billing and analytics into empty
databases.

Next to each rate, measured in the same run, a raw PostgreSQL ``COPY`` of the very rows
that projection ended up writing (its tables and its ``processed_events`` claims), into
empty copies of its tables with the same indexes: what writing its result costs with
nothing else to do — no Kafka, no decoding, no upserts. It is the floor for that
projection's own output, where ``machine.copy_limit`` (also reported) is a generic
one-row-per-event ceiling of the machine. Prints the figures and writes them to
bench-results/rebuild.json. Everything runs against the local Kafka and PostgreSQL
(loopback), and the run is bounded by the log size.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
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

from bench.machine import copy_limit

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
                latency_ms=float(4 + n % 300),
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
    if n % 4 == 0:
        out = [*pinged(n, lead, env, ref), *out]
    if n % 10 == 0:
        out.append(
            ev.LeadRejected.new(
                **env,
                payload=ev.LeadRejectedPayload(
                    **ref,
                    http_status=409,
                    rejections=(ev.Rejection(code=ev.RejectionCode.DUPLICATE, detail="email"),),
                ),
            )
        )
    if n % 20 == 1:  # a sale (n % 5 != 0), sent back
        out.append(
            ev.LeadReturned.new(
                **env,
                payload=ev.LeadReturnedPayload(
                    **ref,
                    buyer_id=buyer,
                    delivery_id=uuid.uuid4(),
                    return_id=uuid.uuid4(),
                    price=price,
                    payout=PAYOUT.for_price(price),
                    reason_code=ev.ReturnReason.INVALID_CONTACT,
                    returned_by=f"buyer:{buyer}",
                ),
            )
        )
    return [(e, ACCOUNT if isinstance(e, ev.UsageIncremented) else lead) for e in out]


def pinged(n: int, ping: uuid.UUID, env: dict[str, Any], ref: dict[str, Any]) -> list[Event]:
    """The auction before a post: a ping, a bid and a no-bid, the auction's result."""
    p = {"ping_id": ping, "campaign_id": ref["campaign_id"], "source_id": ref["source_id"]}
    bid = ev.Bid(buyer_id=BUYERS[n % len(BUYERS)], price=Decimal("20.00"))
    return [
        ev.PingReceived.new(**env, payload=ev.PingReceivedPayload(**p, fields={"state": "CA"})),
        ev.BuyerPinged.new(
            **env,
            payload=ev.BuyerPingedPayload(
                **p,
                buyer_id=bid.buyer_id,
                result=ev.PingResult.BID,
                price=bid.price,
                latency_ms=float(20 + n % 200),
            ),
        ),
        ev.BuyerPinged.new(
            **env,
            payload=ev.BuyerPingedPayload(
                **p,
                buyer_id=BUYERS[(n + 1) % len(BUYERS)],
                result=ev.PingResult.NO_BID,
                latency_ms=float(5 + n % 50),
            ),
        ),
        ev.AuctionClosed.new(
            **env,
            payload=ev.AuctionClosedPayload(
                **p,
                bids=(bid,),
                payout=Decimal("12.00"),
                expires_at=env["occurred_at"],
                duration_ms=220.0,
            ),
        ),
    ]


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
        copied = await asyncio.to_thread(copy_written_rows, infra.dsn(database), name)
        results[name] = {
            "events": stats.records,
            "applied": stats.applied,
            "seconds": round(stats.seconds, 2),
            "events_per_s": round(stats.rate()),
            "copy_of_its_rows": copied,
            # How many times longer replaying the log takes than COPYing what it wrote.
            "replay_over_copy": round(stats.seconds / copied["seconds"], 1),
        }
        print(
            f"rebuild {name:<9} {stats.records:>8,} events in {stats.seconds:6.1f}s"
            f" = {stats.rate():>8,.0f} events/s;  COPY of the {copied['rows']:,} rows it"
            f" wrote: {copied['seconds']:.2f}s = {copied['rows_per_s']:,} rows/s"
            f" ({copied['events_per_s_equivalent']:,} events/s equivalent)"
        )
        infra.drop_database(database)
    raw = await asyncio.to_thread(copy_limit, infra, sent)
    results["pg_copy_limit"] = {k: round(v) for k, v in raw.items()}
    print(
        f"raw COPY, one ledger-entry row per event: {raw['pg_copy_rows_per_s']:,.0f} rows/s"
        f" ({sent:,} rows)"
    )
    await drop_topics(kafka)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "rebuild.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out / 'rebuild.json'}", file=sys.stderr)


def copy_written_rows(url: str, name: str) -> dict[str, Any]:
    """COPY the rows the rebuild wrote (its tables, its processed_events) into empty
    copies of those tables (same columns, keys and indexes), timed; binary format, as
    fast as psycopg writes them."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    tables = (*PROJECTIONS[name].tables, "processed_events")
    dumps: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            buffer = io.BytesIO()
            with conn.cursor() as cur:
                with cur.copy(
                    f"copy (select * from public.{table}) to stdout (format binary)"
                ) as c:
                    for chunk in c:
                        buffer.write(chunk)
                counted = cur.execute(f"select count(*) from public.{table}").fetchone()
                counts[table] = int(counted[0]) if counted else 0
            dumps[table] = buffer.getvalue()
        conn.execute("create schema bench_copy")
        for table in tables:
            conn.execute(f"create table bench_copy.{table} (like public.{table} including all)")
        started = time.perf_counter()
        with conn.transaction():  # one commit, as a batch of the projection's
            for table in tables:
                copy = f"copy bench_copy.{table} from stdin (format binary)"
                with conn.cursor() as cur, cur.copy(copy) as c:
                    c.write(dumps[table])
        seconds = time.perf_counter() - started
        conn.execute("drop schema bench_copy cascade")
    rows = sum(counts.values())
    events = counts["processed_events"]
    return {
        "tables": counts,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "events_per_s_equivalent": round(events / seconds),
    }


if __name__ == "__main__":
    asyncio.run(main())
