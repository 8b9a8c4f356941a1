"""The ping-post auction's own overhead beyond its buyers' response times.

The auction service runs as its own process (as in ``make run``) with a database and a
topic prefix of its own; ``LX_BENCH_BIDDERS`` fake bidders (lx_devstack's fake buyer, in
its own process on loopback) answer every ping at once, or after ``LX_BENCH_BUYER_MS``.
``LX_BENCH_AUCTIONS`` auctions are asked for at a fixed rate (``LX_BENCH_RATE`` per
second, open loop: a request leaves on schedule whatever the earlier ones are doing).

Each auction's buyer time is its slowest bidder's latency as the service measured it
(its ``BuyerPinged`` events, read back from ``lead.pinged``). Reported, p50/p95/p99:

- overhead: the service's ``duration_ms`` minus that buyer time (config reads, the
  ping claim, rendering, egress checks, ranking);
- round-trip overhead: the HTTP round trip of ``POST /internal/v1/auctions`` minus that
  buyer time (adds the result's transaction with its events, and the HTTP hop).

Prints the figures and writes bench-results/auction.json. Bounded: the load stops
after ``LX_BENCH_MAX_S`` seconds (150 by default) whatever is left; it removes its
database and topics.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from lx_devstack.infra import Infra, start_infra
from lx_devstack.stack import ManagedProcess, StackLayout, wait_groups_caught_up, wait_ready
from lx_platform.kafka import encode_key, ensure_topics
from lx_platform.settings import KafkaSettings
from lx_schemas import Event, decode_event, topic_for
from lx_schemas import events as ev
from lx_schemas.integration import Extract, PingConfig, Probe
from lx_schemas.rules import Payout, PingPost
from lx_schemas.topics import CONFIG_CHANGED, LEAD_PINGED

BIDDERS = int(os.environ.get("LX_BENCH_BIDDERS", "5"))
AUCTIONS = int(os.environ.get("LX_BENCH_AUCTIONS", "2000"))
# 10/s: what the auction holds with its bidders on the same 2 cores; at 25/s the machine
# saturates (overhead p99 346 ms, 2026-11-22): docs/performance.md.
RATE = float(os.environ.get("LX_BENCH_RATE", "10"))
BUYER_MS = int(os.environ.get("LX_BENCH_BUYER_MS", "0"))
MAX_S = float(os.environ.get("LX_BENCH_MAX_S", "150"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


AUCTION_PORT, BUYER_PORT = free_port(), free_port()
INTERNAL = {"x-lx-internal-token": "dev-internal-token"}
ACCOUNT = uuid.uuid4()
FIELDS = {"state": "CA", "zip": "94105", "loan_amount": 250000, "loan_purpose": "refinance"}


def configuration() -> tuple[list[Event], uuid.UUID, uuid.UUID]:
    campaign = ev.CampaignState(
        campaign_id=uuid.uuid4(),
        account_id=ACCOUNT,
        name="Bench auctions",
        vertical="mortgage",
        fields=(
            ev.FieldSpec(name="email", type=ev.FieldType.EMAIL, pii=True),
            ev.FieldSpec(name="state", type=ev.FieldType.US_STATE),
            ev.FieldSpec(name="zip", type=ev.FieldType.ZIP),
            ev.FieldSpec(name="loan_amount", type=ev.FieldType.INTEGER),
            ev.FieldSpec(name="loan_purpose", type=ev.FieldType.ENUM, options=("refinance",)),
        ),
        ping_post=PingPost(enabled=True, auction_ms=2_000, ttl_s=60),
    )
    source = ev.SourceState(
        source_id=uuid.uuid4(),
        account_id=ACCOUNT,
        campaign_id=campaign.campaign_id,
        name="Bench affiliate",
        api_key_prefix="lx_bench",
        api_key_sha256="0" * 64,
        payout=Payout(percent=Decimal("50.00")),
    )
    common = {"account_id": ACCOUNT, "producer": "bench"}
    events: list[Event] = [
        ev.CampaignConfigured.new(correlation_id=campaign.campaign_id, payload=campaign, **common),
        ev.SourceConfigured.new(correlation_id=source.source_id, payload=source, **common),
    ]
    base = f"http://127.0.0.1:{BUYER_PORT}/buyers"
    for n in range(BIDDERS):
        price = f"{20 + n}.00"
        buyer = ev.BuyerState(
            buyer_id=uuid.uuid4(),
            account_id=ACCOUNT,
            campaign_id=campaign.campaign_id,
            name=f"bidder-{n}",
            endpoint_url=f"{base}/bidder-{n}/accept",
            price=Decimal("5.00"),
            priority=n,
            ping=PingConfig(
                url=f"{base}/bidder-{n}/bid?price={price}&ms={BUYER_MS}",
                timeout_ms=1_000,
                bid_ref=Probe(kind=Extract.JSON_PATH, path="$.bid_id"),
            ),
        )
        events.append(
            ev.BuyerConfigured.new(correlation_id=buyer.buyer_id, payload=buyer, **common)
        )
    return events, campaign.campaign_id, source.source_id


async def publish(kafka: KafkaSettings, events: list[Event]) -> None:
    await ensure_topics(kafka)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            topic = topic_for(type(event)).qualified(kafka.topic_prefix)
            await producer.send_and_wait(
                topic, event.to_json(), key=encode_key(event.correlation_id)
            )
    finally:
        await producer.stop()


async def run_load(campaign_id: uuid.UUID, source_id: uuid.UUID) -> list[tuple[float, Any]]:
    """Open loop at RATE per second: (round trip ms, answer) of each auction sent."""
    results: list[tuple[float, Any]] = []
    limits = httpx.Limits(max_connections=1_000, max_keepalive_connections=1_000)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{AUCTION_PORT}", limits=limits, timeout=10
    ) as client:

        async def one() -> None:
            body = {
                "ping_id": str(uuid.uuid4()),
                "account_id": str(ACCOUNT),
                "campaign_id": str(campaign_id),
                "source_id": str(source_id),
                "fields": FIELDS,
            }
            started = time.perf_counter()
            answer = await client.post("/internal/v1/auctions", json=body, headers=INTERNAL)
            round_trip = (time.perf_counter() - started) * 1000
            if answer.status_code == 200:
                results.append((round_trip, answer.json()))

        # Warm-up: connections and the service's first-request costs stay out of the run.
        await asyncio.gather(*(one() for _ in range(20)))
        results.clear()
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        for n in range(AUCTIONS):
            due = t0 + n / RATE
            if due - t0 > MAX_S:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.wait(tasks, timeout=20)
    return results


async def buyer_times(kafka: KafkaSettings, pings: set[str]) -> dict[str, float]:
    """Each ping's slowest bidder latency (ms), from the service's BuyerPinged events."""
    topic = LEAD_PINGED.qualified(kafka.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    await consumer.start()
    slowest: dict[str, float] = {}
    closed: set[str] = set()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 60
        while not pings <= closed and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    e = decode_event(r.value)
                    key = str(e.correlation_id)
                    if isinstance(e, ev.BuyerPinged):
                        slowest[key] = max(slowest.get(key, 0.0), e.payload.latency_ms)
                    elif isinstance(e, ev.AuctionClosed):
                        closed.add(key)
    finally:
        await consumer.stop()
    return slowest


def percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "p99": round(q[98], 2)}


async def drop_topics(kafka: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(kafka.topic_prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def main() -> None:
    infra: Infra = start_infra()
    tag = f"bench{uuid.uuid4().hex[:6]}"
    kafka = KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, topic_prefix=f"{tag}.")
    database = f"{tag}_auction"
    infra.create_database(database)
    folder = Path(tempfile.mkdtemp(prefix="lx-bench-auction-"))
    layout = StackLayout(run_folder=folder, log_folder=folder)
    env = {
        "LX_KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "LX_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "LX_AUCTION_DATABASE_URL": infra.dsn(database),
        "LX_AUCTION_HTTP_PORT": str(AUCTION_PORT),
        "LX_PLATFORM_EGRESS_ALLOW_CIDRS": "127.0.0.1/32",
        "LX_LOG_LEVEL": "WARNING",
    }
    auction = ManagedProcess("auction", [sys.executable, "-m", "lx_auction"], env, layout)
    buyer = ManagedProcess(
        "buyer",
        [sys.executable, "-m", "lx_devstack.buyer", "--port", str(BUYER_PORT)],
        {},
        layout,
    )
    try:
        buyer.start()
        wait_ready(f"http://127.0.0.1:{BUYER_PORT}/health", buyer)
        auction.start()
        wait_ready(f"http://127.0.0.1:{AUCTION_PORT}/health/ready", auction)
        events, campaign_id, source_id = configuration()
        asyncio.run(publish(kafka, events))
        wait_groups_caught_up(
            infra.kafka_bootstrap,
            CONFIG_CHANGED.qualified(kafka.topic_prefix),
            [f"{kafka.topic_prefix}auction"],
            keys={str(e.correlation_id) for e in events},
        )
        started = time.monotonic()
        results = asyncio.run(run_load(campaign_id, source_id))
        load_s = time.monotonic() - started
        slowest = asyncio.run(buyer_times(kafka, {a["ping_id"] for _, a in results}))
    finally:
        auction.stop()
        buyer.stop()
    asyncio.run(drop_topics(kafka))
    infra.drop_database(database)

    measured = [(rt, a) for rt, a in results if a["ping_id"] in slowest]
    waits = [slowest[a["ping_id"]] for _, a in measured]
    overhead = [max(0.0, a["duration_ms"] - slowest[a["ping_id"]]) for _, a in measured]
    round_trip = [max(0.0, rt - slowest[a["ping_id"]]) for rt, a in measured]
    report = {
        "bidders": BIDDERS,
        "buyer_delay_ms": BUYER_MS,
        "rate_per_s": RATE,
        "auctions_sent": AUCTIONS,
        "auctions_answered": len(results),
        "auctions_measured": len(measured),
        "with_bids": sum(1 for _, a in measured if a["outcome"] == "bid"),
        "load_seconds": round(load_s, 1),
        "slowest_buyer_ms": percentiles(waits),
        "duration_ms": percentiles([a["duration_ms"] for _, a in measured]),
        "overhead_ms": percentiles(overhead),
        "round_trip_ms": percentiles([rt for rt, _ in measured]),
        "round_trip_overhead_ms": percentiles(round_trip),
    }
    print(
        f"{len(measured)} auctions at {RATE:g}/s, {BIDDERS} bidders answering after"
        f" {BUYER_MS} ms (loopback), {report['with_bids']} with bids"
    )
    for name in (
        "slowest_buyer_ms",
        "duration_ms",
        "overhead_ms",
        "round_trip_ms",
        "round_trip_overhead_ms",
    ):
        p = report[name]
        assert isinstance(p, dict)
        print(f"  {name:<24} p50 {p['p50']:>7.2f}  p95 {p['p95']:>7.2f}  p99 {p['p99']:>7.2f}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "auction.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out / 'auction.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
