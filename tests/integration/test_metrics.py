"""A service's /metrics against real Kafka and PostgreSQL: after known traffic through
delivery (three buyers on a fake buyer server, one event sent twice) every counter holds
exactly what happened, the lag and outbox gauges read zero once it has all settled, and
HTTP requests are counted under their route template."""

from __future__ import annotations

import uuid
from decimal import Decimal

from lx_delivery.main import create_service
from lx_delivery.settings import DeliverySettings
from lx_devstack.buyer import create_buyer_app
from lx_devstack.infra import Infra
from lx_platform.settings import PlatformSettings
from lx_schemas import events as ev
from lx_schemas.envelope import Event
from lx_schemas.topics import CONFIG_CHANGED, DELIVERY_OUTCOME, LEAD_ROUTED, USAGE_INCREMENTED
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.support.events import routed as _routed
from tests.support.http import ThreadedServer
from tests.support.services import eventually, serving, settings_for
from tests.support.settle import Position, publish, wait_consumed, wait_relayed

ACCOUNT = uuid.uuid4()
INTERNAL = {"x-lx-internal-token": "dev-internal-token"}
Labels = tuple[tuple[str, str], ...]


def labels(**values: str) -> Labels:
    return tuple(sorted(values.items()))


def series(exposition: str, name: str) -> dict[Labels, float]:
    """Every sample called ``name`` in a Prometheus text exposition, by its labels."""
    return {
        labels(**sample.labels): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    }


def configured(buyer_url: str, mode: str) -> ev.BuyerConfigured:
    """A buyer at the fake buyer server that answers as ``mode`` says."""
    buyer_id = uuid.uuid4()
    return ev.BuyerConfigured.new(
        account_id=ACCOUNT,
        correlation_id=buyer_id,
        producer="test",
        payload=ev.BuyerState(
            buyer_id=buyer_id,
            account_id=ACCOUNT,
            campaign_id=uuid.uuid4(),
            name=mode,
            endpoint_url=f"{buyer_url}/buyers/{mode}-{buyer_id.hex[:8]}/{mode}",
            price=Decimal("20.00"),
            priority=1,
        ),
    )


async def test_metrics_count_exactly_the_traffic_a_service_handled(
    infra: Infra, isolation: str
) -> None:
    with ThreadedServer(create_buyer_app()) as buyer_server:
        settings = settings_for(
            DeliverySettings,
            infra,
            isolation,
            "delivery",
            max_tries=2,
            retry_base_s=0.05,
            # The fake buyer is on loopback, which only the allow-list opens.
            platform=PlatformSettings(egress_allow_cidrs=("127.0.0.1/32",)),
        )
        prefix, bootstrap = settings.kafka.topic_prefix, infra.kafka_bootstrap
        group = f"{prefix}delivery"
        async with serving(create_service(settings)) as (client, rt):

            async def send(event: Event, key: uuid.UUID) -> Position:
                # One event at a time, each consumed before the next: one batch each.
                (position,) = await publish(bootstrap, prefix, [(event, key)])
                await wait_consumed(bootstrap, group, [position])
                return position

            async def scrape() -> str:
                answer = await client.get("/metrics")
                assert answer.status_code == 200
                assert answer.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
                return answer.text

            buyers = [configured(buyer_server.url, m) for m in ("accept", "reject", "error")]
            accept, reject, error = (b.payload.buyer_id for b in buyers)
            offers = [routed_to(b.payload) for b in buyers]
            positions = [await send(b, b.payload.buyer_id) for b in buyers]
            positions += [await send(o, o.payload.lead_id) for o in offers]
            # The same event again (a producer's retry): consumed, skipped as a duplicate.
            positions.append(await send(offers[0], offers[0].payload.lead_id))

            async def all_delivered() -> bool:
                async with rt.db.begin() as conn:
                    done = await conn.scalar(
                        text("select count(*) from deliveries where status = 'done'")
                    )
                outcomes = series(await scrape(), "lx_delivery_outcomes_total")
                return done == 3 and sum(outcomes.values()) == 4  # "error" is tried twice

            await eventually(all_delivered, what="three deliveries done, four tries counted")
            await wait_relayed(rt)

            lead = offers[0].payload.lead_id
            trace = f"/internal/v1/leads/{lead}/deliveries"
            assert (await client.get(trace, headers=INTERNAL)).status_code == 200
            assert (await client.get(trace)).status_code == 401
            assert (await client.get("/health/live")).status_code == 200
            metrics = await scrape()

    config, lead_routed = CONFIG_CHANGED.qualified(prefix), LEAD_ROUTED.qualified(prefix)
    assert series(metrics, "lx_events_consumed_total") == {
        labels(group=group, topic=config): 3,
        labels(group=group, topic=lead_routed): 4,
    }
    assert series(metrics, "lx_events_duplicate_total") == {
        labels(group=group, topic=lead_routed): 1
    }
    assert series(metrics, "lx_events_dead_lettered_total") == {}
    assert series(metrics, "lx_handler_seconds_count") == {labels(group=group): 7}

    # Accepted: attempted + sold + usage; rejected: attempted; 503 twice: attempted x2.
    assert series(metrics, "lx_events_produced_total") == {
        labels(topic=DELIVERY_OUTCOME.qualified(prefix)): 5,
        labels(topic=USAGE_INCREMENTED.qualified(prefix)): 1,
    }
    assert series(metrics, "lx_outbox_backlog") == {(): 0}

    assert series(metrics, "lx_delivery_outcomes_total") == {
        labels(buyer_id=str(accept), result="accepted", reason_class="accepted"): 1,
        labels(buyer_id=str(reject), result="rejected", reason_class="rejected"): 1,
        labels(buyer_id=str(error), result="error", reason_class="http_5xx"): 2,
    }
    assert series(metrics, "lx_delivery_buyer_latency_seconds_count") == {
        labels(buyer_id=str(accept)): 1,
        labels(buyer_id=str(reject)): 1,
        labels(buyer_id=str(error)): 2,
    }

    # Caught up: every partition holding what was sent is measured, and none is behind.
    lag = series(metrics, "lx_consumer_lag")
    measured = {(dict(k)["topic"], int(dict(k)["partition"])) for k in lag}
    assert {(topic, partition) for topic, partition, _ in positions} <= measured
    assert {dict(k)["group"] for k in lag} == {group}
    assert set(lag.values()) == {0}

    # Counted under the route template, not the lead's path; probes and scrapes are not.
    template = "/internal/v1/leads/{lead_id}/deliveries"
    assert series(metrics, "lx_http_requests_total") == {
        labels(method="GET", route=template, status="200"): 1,
        labels(method="GET", route=template, status="401"): 1,
    }
    assert series(metrics, "lx_http_request_seconds_count") == {
        labels(method="GET", route=template): 2
    }


def routed_to(buyer: ev.BuyerState) -> ev.LeadRouted:
    return _routed(buyer, ACCOUNT)
