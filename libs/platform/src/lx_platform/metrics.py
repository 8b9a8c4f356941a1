"""Prometheus metrics: every metric of every service is defined here, once.

Each runtime owns a ``Metrics`` with its own registry (not prometheus_client's global
one), so several services in one process (tests) keep separate counts. It is passed
explicitly to what updates it. Gauges that describe the present (consumer lag, outbox
backlog) are computed when ``/metrics`` is scraped, not maintained.

Label values are bounded: groups, topics, partitions, buyer ids, route templates and
small fixed vocabularies; never raw paths or free-text reasons.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Batches: milliseconds when healthy, seconds when the database struggles.
_HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Buyers: a buyer's timeout may be up to 60 s.
_BUYER_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE: Final = "unmatched"  # 404s: the raw path would be unbounded
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Lag = Mapping[str, Mapping[tuple[str, int], int]]  # group -> (topic, partition) -> records


class Metrics:
    """The metrics of one service process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's own (memory, CPU, open files, GC): stateless, shared safely.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.events_consumed = Counter(
            "lx_events_consumed",
            "Records a consumer group handled and committed (duplicates and dead letters too).",
            ["group", "topic"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "lx_events_duplicate",
            "Records skipped because the group had already processed (or dead-lettered) them.",
            ["group", "topic"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "lx_events_dead_lettered",
            "Records a group sent to the dead-letter topic; topic is the origin topic.",
            ["group", "topic"],
            registry=r,
        )
        self.handler_seconds = Histogram(
            "lx_handler_seconds",
            "Time to handle one batch, its database transaction and retries included.",
            ["group"],
            buckets=_HANDLER_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "lx_consumer_lag",
            "Records in a partition beyond the group member's position (log end - position).",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.events_produced = Counter(
            "lx_events_produced",
            "Records acknowledged by Kafka (outbox relay and direct publishes).",
            ["topic"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "lx_outbox_backlog",
            "Rows waiting in the outbox; NaN when the database did not answer in time.",
            registry=r,
        )
        self.delivery_outcomes = Counter(
            "lx_delivery_outcomes",
            "Delivery tries by buyer, result and a bounded class of the reason.",
            ["buyer_id", "result", "reason_class"],
            registry=r,
        )
        self.delivery_buyer_latency = Histogram(
            "lx_delivery_buyer_latency_seconds",
            "Time from sending a lead to a buyer to having its whole answer (or giving up).",
            ["buyer_id"],
            buckets=_BUYER_BUCKETS,
            registry=r,
        )
        self.delivery_breaker_state = Gauge(
            "lx_delivery_breaker_state",
            "A buyer's circuit breaker in this process: 0 closed, 1 half-open, 2 open.",
            ["buyer_id"],
            registry=r,
        )
        self.auction_seconds = Histogram(
            "lx_auction_seconds",
            "Time to run a ping-post auction, from the ping to its recorded result.",
            buckets=_BUYER_BUCKETS,
            registry=r,
        )
        self.auction_overhead_seconds = Histogram(
            "lx_auction_overhead_seconds",
            "An auction's own time: its duration beyond the slowest counted buyer answer"
            " (or a timed-out buyer's whole budget).",
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.auction_bids = Histogram(
            "lx_auction_bids",
            "Valid bids per auction.",
            buckets=(0, 1, 2, 3, 5, 10, 20, 50),
            registry=r,
        )
        self.http_requests = Counter(
            "lx_http_requests",
            "HTTP requests served, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "lx_http_request_seconds",
            "Time to serve an HTTP request, by route template.",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )

    def set_lag(self, lag: Lag) -> None:
        """Replace every lag sample at once: a partition no longer assigned disappears."""
        self.consumer_lag.clear()
        for group, partitions in lag.items():
            for (topic, partition), records in partitions.items():
                self.consumer_lag.labels(group, topic, str(partition)).set(records)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the scraper accepts (Prometheus text by default,
        OpenMetrics when asked), with its content type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class HttpMetrics:
    """ASGI middleware counting and timing requests by route template.

    The template (``/v1/leads/{lead_id}``) is known only once the router has matched,
    so it is read from the scope after the app ran. Probes and scrapes are left out.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path == "/metrics" or path.startswith("/health/"):
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before answering, the client gets a 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_request_seconds.labels(method, route).observe(
                time.perf_counter() - started
            )
