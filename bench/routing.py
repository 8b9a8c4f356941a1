"""Routing time per lead with 50 buyers under load (``python -m bench.routing``).

Starts the router in-process against the local Kafka and PostgreSQL, configures one
campaign with 50 buyers (filters on state, ZIP prefixes and credit score, count and USD
caps, schedules, weights, per-buyer duplicate windows), then publishes LEADS
``LeadReceived`` at once and reads ``lead.routed`` for each lead's first decision.
Reports leads/s, the latency from handing a lead to the producer to reading its
decision (p50/p95/p99), and the handler's own time per new lead. Prints the figures and
writes bench-results/routing.json. Bounded: it gives up after DEADLINE_S.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from asgi_lifespan import LifespanManager
from lx_devstack.infra import Infra, start_infra
from lx_platform.kafka import encode_key
from lx_platform.runtime import Runtime
from lx_platform.settings import KafkaSettings
from lx_router.handlers import RouterHandler
from lx_router.main import create_service
from lx_router.settings import RouterSettings
from lx_schemas import Event, decode_event, topic_for
from lx_schemas import events as ev
from lx_schemas.rules import Distribution, Margin, Payout
from lx_schemas.topics import LEAD_ROUTED
from sqlalchemy import text

LEADS = int(os.environ.get("LX_BENCH_LEADS", "5000"))
BUYERS = 50
DEADLINE_S = float(os.environ.get("LX_BENCH_DEADLINE_S", "150"))
STATES = ("CA", "NV", "TX", "NY", "FL", "WA", "OR", "AZ")
ACCOUNT, CAMPAIGN, SOURCE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
WEEK = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def config() -> list[tuple[Event, uuid.UUID]]:
    env = {"account_id": ACCOUNT, "producer": "bench"}
    fields = (
        ev.FieldSpec(name="email", type=ev.FieldType.EMAIL),  # clear: no key vault needed
        ev.FieldSpec(name="state", type=ev.FieldType.US_STATE),
        ev.FieldSpec(name="zip", type=ev.FieldType.ZIP),
        ev.FieldSpec(name="credit_score", type=ev.FieldType.INTEGER),
    )
    campaign = ev.CampaignConfigured.new(
        **env,
        correlation_id=CAMPAIGN,
        payload=ev.CampaignState(
            campaign_id=CAMPAIGN,
            account_id=ACCOUNT,
            name="bench",
            vertical="auto_insurance",
            fields=fields,
            distribution=Distribution(),
            margin=Margin(fixed=Decimal("1.00")),
        ),
    )
    source = ev.SourceConfigured.new(
        **env,
        correlation_id=SOURCE,
        payload=ev.SourceState(
            source_id=SOURCE,
            account_id=ACCOUNT,
            campaign_id=CAMPAIGN,
            name="bench",
            api_key_prefix="lx_bench",
            api_key_sha256=hashlib.sha256(b"bench").hexdigest(),
            payout=Payout(fixed=Decimal("8.00")),
        ),
    )
    out: list[tuple[Event, uuid.UUID]] = [(campaign, CAMPAIGN), (source, SOURCE)]
    for n in range(BUYERS):
        buyer_id = uuid.uuid4()
        filters: list[dict[str, Any]] = [
            {"field": "state", "op": "in", "values": list(STATES[n % 4 : n % 4 + 5])},
            {"field": "credit_score", "op": "range", "min": 500 + 5 * n},
        ]
        if n % 3 == 0:
            filters.append({"field": "zip", "op": "prefix_in", "values": ["9", "1", "7"]})
        if n % 7 == 0:
            filters.append({"field": "email", "op": "regex", "pattern": r"@(mail|example)\."})
        caps: list[dict[str, Any]] = []
        if n % 2 == 0:
            caps.append({"period": "day", "max_leads": 40 + 10 * n})
        if n % 5 == 0:
            caps.append({"period": "month", "max_usd": "5000.00"})
        state = {
            "buyer_id": buyer_id,
            "account_id": ACCOUNT,
            "campaign_id": CAMPAIGN,
            "name": f"buyer{n}",
            "endpoint_url": "https://buyer.example/leads",
            "price": Decimal(10 + n % 30),
            "priority": n % 10,
            "filters": filters,
            "caps": caps,
            "schedule": {"windows": [{"days": WEEK}]} if n % 4 == 0 else None,
            "dedupe_days": 30 if n % 6 == 0 else None,
        }
        buyer = ev.BuyerState.model_validate(state)
        out.append(
            (ev.BuyerConfigured.new(**env, correlation_id=buyer_id, payload=buyer), buyer_id)
        )
    return out


def lead(n: int) -> ev.LeadReceived:
    lead_id = uuid.uuid4()
    fields: dict[str, ev.FieldValue] = {
        "email": f"consumer{n}@example.com",
        "state": STATES[n % len(STATES)],
        "zip": f"{(n * 7919) % 100000:05d}",
        "credit_score": 480 + n % 350,
    }
    return ev.LeadReceived.new(
        account_id=ACCOUNT,
        correlation_id=lead_id,
        producer="bench",
        payload=ev.LeadReceivedPayload(
            lead_id=lead_id,
            campaign_id=CAMPAIGN,
            source_id=SOURCE,
            lead=ev.LeadContent(fields=fields),
        ),
    )


async def publish(
    kafka: KafkaSettings, events: list[tuple[Event, uuid.UUID]], sent_at: dict[uuid.UUID, float]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = []
        for event, key in events:
            topic = topic_for(type(event)).qualified(kafka.topic_prefix)
            sent_at[event.correlation_id] = time.monotonic()
            futures.append(await producer.send(topic, event.to_json(), key=encode_key(key)))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def timed(rt: Runtime, spent: list[tuple[float, int]]) -> None:
    """Measure the handler's own time per batch (its database work included) with the
    number of new leads in it. The handler decides a batch at once, so its time per lead
    is a batch's time over its leads."""
    handler: RouterHandler = rt.extras["handler"]
    (consumer,) = rt.consumers

    async def wrapper(conn: Any, batch: Any) -> None:
        started = time.perf_counter()
        try:
            await handler(conn, batch)
        finally:
            leads = sum(isinstance(x.event, ev.LeadReceived) for x in batch)
            spent.append((time.perf_counter() - started, leads))

    consumer.handler = wrapper


async def wait_configured(rt: Runtime) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with rt.db.begin() as conn:
            n = (await conn.execute(text("select count(*) from buyers"))).scalar_one()
        if n == BUYERS:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the router did not take the buyers' configuration")


async def decisions(
    kafka: KafkaSettings,
    expected: set[uuid.UUID],
    seen_at: dict[uuid.UUID, float],
    ready: asyncio.Event,
) -> dict[str, int]:
    topic = LEAD_ROUTED.qualified(kafka.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    kinds = {"routed": 0, "exhausted": 0}
    try:
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ready.set()
        while len(seen_at) < len(expected):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.monotonic()
                for r in records:
                    event = decode_event(r.value)
                    lead_id = event.correlation_id
                    if lead_id in expected and lead_id not in seen_at:
                        seen_at[lead_id] = now
                        kinds["routed" if isinstance(event, ev.LeadRouted) else "exhausted"] += 1
        return kinds
    finally:
        await consumer.stop()


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


async def run(infra: Infra, tag: str) -> dict[str, Any]:
    database = f"{tag}_router"
    infra.create_database(database)
    kafka = KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, topic_prefix=f"{tag}.")
    settings = RouterSettings(database_url=infra.dsn(database), kafka=kafka)
    app = create_service(settings)
    try:
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
            rt: Runtime = app.state.runtime
            spent: list[tuple[float, int]] = []
            timed(rt, spent)
            await publish(kafka, config(), {})
            await wait_configured(rt)

            leads = [lead(n) for n in range(LEADS)]
            expected = {x.payload.lead_id for x in leads}
            sent_at: dict[uuid.UUID, float] = {}
            seen_at: dict[uuid.UUID, float] = {}
            ready = asyncio.Event()
            reader = asyncio.create_task(decisions(kafka, expected, seen_at, ready))
            await ready.wait()
            started = time.monotonic()
            await publish(kafka, [(x, x.payload.lead_id) for x in leads], sent_at)
            published = time.monotonic()
            kinds = await reader
            finished = time.monotonic()
    finally:
        infra.drop_database(database)

    latencies = [(seen_at[k] - sent_at[k]) * 1000 for k in expected]
    batches = [(s * 1000, n) for s, n in spent if n]
    per_lead = [s / n for s, n in batches]
    handler_s = sum(s for s, _ in batches) / 1000
    return {
        "leads": LEADS,
        "buyers": BUYERS,
        "routed": kinds["routed"],
        "exhausted": kinds["exhausted"],
        "publish_s": round(published - started, 2),
        "wall_s": round(finished - started, 2),
        "leads_per_s": round(LEADS / (finished - started)),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies), 1),
        },
        # The handler's own throughput: leads over the time spent in the handler.
        "handler_leads_per_s": round(LEADS / handler_s) if handler_s else None,
        "handler_ms_per_lead": {
            "mean": round(handler_s * 1000 / LEADS, 3),
            "batch_p50": round(percentile(per_lead, 50), 3),
            "batch_p95": round(percentile(per_lead, 95), 3),
            "batch_max": round(max(per_lead), 3),
        },
        "batches": {
            "count": len(batches),
            "leads_mean": round(statistics.fmean(n for _, n in batches), 1),
            "ms_p50": round(percentile([s for s, _ in batches], 50), 1),
            "ms_max": round(max(s for s, _ in batches), 1),
        },
    }


async def drop_topics(kafka_bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def main() -> None:
    infra = start_infra()
    tag = f"benchrt{uuid.uuid4().hex[:6]}"
    try:
        results = await asyncio.wait_for(run(infra, tag), DEADLINE_S)
    finally:
        await drop_topics(infra.kafka_bootstrap, f"{tag}.")
    lat, own, b = results["latency_ms"], results["handler_ms_per_lead"], results["batches"]
    print(
        f"{results['leads']} leads x {results['buyers']} buyers: {results['leads_per_s']:,} leads/s"
        f" end to end ({results['routed']} routed, {results['exhausted']} exhausted)\n"
        f"publish -> decision read: p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms\n"
        f"handler: {own['mean']} ms per lead ({results['handler_leads_per_s']:,} leads/s);"
        f" per lead within a batch p50 {own['batch_p50']} ms, p95 {own['batch_p95']} ms;"
        f" {b['count']} batches of {b['leads_mean']} leads, p50 {b['ms_p50']} ms"
    )
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "routing.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out / 'routing.json'}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
