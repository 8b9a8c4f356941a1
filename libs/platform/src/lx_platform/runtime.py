"""The composition root every service shares: wiring without connecting, then a
lifespan that connects, migrates, creates topics and starts consumers and the relay."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from faststream.kafka import KafkaBroker
from lx_schemas.topics import TopicSpec
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from lx_platform.consumer import BatchHandler, IdempotentConsumer, is_transient
from lx_platform.db import Database, apply_migrations, ensure_database
from lx_platform.http import health_router, problem
from lx_platform.kafka import EventPublisher, ensure_topics, make_broker
from lx_platform.limits import BodyLimits, CredentialRateLimiter, RequestLimits
from lx_platform.logging import configure_logging, get_logger
from lx_platform.metrics import HttpMetrics, Metrics
from lx_platform.outbox import Outbox, OutboxRelay
from lx_platform.settings import ServiceSettings

log = get_logger(__name__)
Hook = Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    """Everything a service's handlers need, built once; nothing here has connected yet."""

    name: str
    settings: ServiceSettings
    db: Database
    broker: KafkaBroker
    publisher: EventPublisher
    outbox: Outbox
    relay: OutboxRelay
    metrics: Metrics
    migrations: Sequence[str]
    consumers: list[IdempotentConsumer] = field(default_factory=list)
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    http: httpx.AsyncClient | None = None
    # Service-specific collaborators built in the composition root (a key vault, a worker).
    extras: dict[str, Any] = field(default_factory=dict)

    def consume(
        self,
        *,
        group_id: str,
        topics: Sequence[TopicSpec],
        handler: BatchHandler,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        kafka = self.settings.kafka
        consumer = IdempotentConsumer(
            group_id=group_id,
            topics=topics,
            handler=handler,
            db=self.db,
            outbox=self.outbox,
            relay=self.relay,
            metrics=self.metrics,
            topic_prefix=kafka.topic_prefix,
            after_commit=after_commit,
        )
        consumer.register(
            self.broker,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            batch_timeout_ms=kafka.batch_timeout_ms,
            max_records=kafka.max_batch_records,
        )
        self.consumers.append(consumer)

    def internal_client(self) -> httpx.AsyncClient:
        """HTTP client for synchronous service-to-service calls (tight timeouts)."""
        if self.http is None:
            p = self.settings.platform
            self.http = httpx.AsyncClient(
                timeout=p.internal_timeout_s,
                headers={"x-lx-internal-token": p.internal_token.get_secret_value()},
            )
        return self.http

    async def scrape(self, accept: str = "", *, timeout_s: float = 2.0) -> tuple[bytes, str]:
        """The metrics exposition and its content type, the gauges of the present
        (consumer lag, outbox backlog) measured now."""
        try:
            async with asyncio.timeout(timeout_s):
                lag = {c.group_id: await c.lag() for c in self.consumers}
            self.metrics.set_lag(lag)
        except TimeoutError:  # a rebalance in progress: keep the last known lag
            log.warning("consumer_lag_unavailable")
        try:
            backlog = float(await self.relay.backlog(timeout_s=timeout_s))
        except Exception as exc:  # the scrape must answer even when the database does not
            log.warning("outbox_backlog_unavailable", error=repr(exc))
            backlog = math.nan
        self.metrics.outbox_backlog.set(backlog)
        return self.metrics.exposition(accept)


def build_runtime(name: str, settings: ServiceSettings, migrations: Sequence[str]) -> Runtime:
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    broker = make_broker(settings.kafka, client_id=f"lx-{name}")
    metrics = Metrics()
    publisher = EventPublisher(broker, settings.kafka.topic_prefix, metrics=metrics)
    return Runtime(
        name=name,
        settings=settings,
        db=db,
        broker=broker,
        publisher=publisher,
        outbox=Outbox(publisher),
        relay=OutboxRelay(db, publisher),
        metrics=metrics,
        migrations=migrations,
    )


async def start_runtime(rt: Runtime) -> None:
    await ensure_database(rt.settings.database_url)
    await apply_migrations(rt.db, ["lx_platform", *rt.migrations])
    if rt.settings.kafka.create_topics:
        await ensure_topics(rt.settings.kafka)
    await rt.broker.start()
    rt.relay.start()
    for hook in rt.on_start:
        await hook()
    log.info("service_started", consumers=[c.group_id for c in rt.consumers])


async def stop_runtime(rt: Runtime) -> None:
    for hook in reversed(rt.on_stop):
        await hook()
    # Stopping the broker lets in-flight handlers finish (graceful_timeout) before
    # leaving the group; unfinished batches are not acknowledged and come back.
    await rt.broker.stop()
    await rt.relay.stop()
    if rt.http is not None:
        await rt.http.aclose()
    await rt.db.dispose()
    log.info("service_stopped")


def create_app(rt: Runtime, *, title: str, description: str = "") -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = rt.settings
        configure_logging(rt.name, s.log.level, s.log.json_output)
        await start_runtime(rt)
        try:
            yield
        finally:
            await stop_runtime(rt)

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.runtime = rt

    async def broker_ok() -> bool:
        try:
            return bool(await rt.broker.ping(timeout=2.0))
        except Exception:  # readiness probe: any failure means "not ready"
            return False

    def checks(_: Request) -> dict[str, Callable[[], Awaitable[bool]]]:
        return {"database": rt.db.ping, "kafka": broker_ok}

    app.include_router(health_router(checks))

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format, or OpenMetrics if the Accept header asks",
                "content": {"text/plain": {}, "application/openmetrics-text": {}},
            }
        },
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: consumption, lag, outbox, production, HTTP (and deliveries)."""
        body, content_type = await rt.scrape(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    platform = rt.settings.platform
    # Inside the metrics, so that refused bodies are counted as any other answer.
    app.add_middleware(
        RequestLimits,
        limits=BodyLimits(
            max_body_bytes=platform.max_body_bytes,
            max_json_depth=platform.max_json_depth,
            max_json_items=platform.max_json_items,
        ),
    )
    app.add_middleware(HttpMetrics, metrics=rt.metrics)
    app.state.credential_limiter = CredentialRateLimiter(platform.operator_rate_limit)
    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": {"code", "detail"}}``; never a bare 500 page."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]), "code": e["type"], "detail": e["msg"]}
            for e in exc.errors()
        ]
        return problem(
            422, "invalid_request", "the request does not match the schema", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.detail, dict):
            response = problem(exc.status_code, **exc.detail)
        else:
            code = {
                401: "unauthorized",
                403: "forbidden",
                404: "not_found",
                405: "method_not_allowed",
                409: "conflict",
                413: "payload_too_large",
                429: "rate_limited",
            }.get(exc.status_code, "error")
            response = problem(exc.status_code, code, str(exc.detail))
        # Retry-After of a 429, Allow of a 405, WWW-Authenticate...
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        if is_transient(exc):
            # The database or Kafka is down or restarting: nothing was decided, the
            # client may send the same request again shortly.
            log.warning(
                "request_failed_transiently", path=request.url.path, error=type(exc).__name__
            )
            response = problem(
                503, "service_unavailable", "a dependency is unavailable; retry shortly"
            )
            response.headers["Retry-After"] = str(TRANSIENT_RETRY_AFTER_S)
            return response
        log.error("request_failed", path=request.url.path, exc_info=exc)
        return problem(500, "internal_error", "an unexpected error; it has been logged")


# What a client is told to wait when the database or Kafka is briefly unavailable.
TRANSIENT_RETRY_AFTER_S = 2


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run one service process; SIGTERM and Ctrl-C shut it down gracefully."""
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        # uvicorn would otherwise rewrite the client address from X-Forwarded-For for
        # any peer on 127.0.0.1; ingest decides whom to believe (LX_INGEST_TRUSTED_PROXIES).
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()
