"""The metric plumbing without Kafka or a database: lag arithmetic, HTTP labels."""

from __future__ import annotations

import httpx
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from fastapi import FastAPI, HTTPException
from lx_platform.consumer import partition_lag
from lx_platform.metrics import HttpMetrics, Metrics


class FakeConsumer:
    """What ``partition_lag`` reads of an aiokafka consumer, as plain data."""

    def __init__(
        self, highwater: dict[TopicPartition, int | None], position: dict[TopicPartition, int]
    ) -> None:
        self._highwater = highwater
        self._position = position

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater[tp]

    async def position(self, tp: TopicPartition) -> int:
        if tp not in self._position:
            raise IllegalStateError(f"Partition {tp} is not assigned")
        return self._position[tp]


async def test_lag_is_log_end_minus_position_for_each_fetched_partition() -> None:
    behind, caught_up, unfetched, revoked = (TopicPartition("lead.routed", p) for p in range(4))
    consumer = FakeConsumer(
        {behind: 120, caught_up: 7, unfetched: None, revoked: 9},
        {behind: 100, caught_up: 7, unfetched: 0},
    )
    assert await partition_lag(consumer) == {("lead.routed", 0): 20, ("lead.routed", 1): 0}


def test_lag_samples_of_partitions_no_longer_assigned_disappear() -> None:
    metrics = Metrics()
    metrics.set_lag({"delivery": {("lead.routed", 0): 3, ("lead.routed", 1): 0}})
    metrics.set_lag({"delivery": {("lead.routed", 1): 2}})
    samples = {
        s.labels["partition"]: s.value
        for family in metrics.registry.collect()
        if family.name == "lx_consumer_lag"
        for s in family.samples
    }
    assert samples == {"1": 2.0}


async def test_http_requests_are_counted_by_route_template_and_status() -> None:
    app = FastAPI()

    @app.get("/v1/leads/{lead_id}")
    async def lead(lead_id: str) -> dict[str, str]:
        if lead_id == "missing":
            raise HTTPException(404)
        return {"lead_id": lead_id}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    metrics = Metrics()
    app.add_middleware(HttpMetrics, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/v1/leads/a", "/v1/leads/b", "/v1/leads/missing", "/nowhere/42"):
            await client.get(path)
        await client.get("/health/live")
        await client.request("BREW", "/v1/leads/a")

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    route = "/v1/leads/{lead_id}"
    assert value("lx_http_requests_total", method="GET", route=route, status="200") == 2
    assert value("lx_http_requests_total", method="GET", route=route, status="404") == 1
    assert value("lx_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value("lx_http_requests_total", method="other", route=route, status="405") == 1
    assert value("lx_http_request_seconds_count", method="GET", route=route) == 3
    counted_routes = {
        s.labels["route"]
        for family in metrics.registry.collect()
        if family.name == "lx_http_requests"
        for s in family.samples
    }
    assert counted_routes == {route, "unmatched"}  # probes are not counted
