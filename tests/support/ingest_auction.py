"""A stand-in for the auction service's internal API, served over real HTTP on loopback,
as ingest's ping-post tests need it (the contract: ``POST /internal/v1/auctions`` and
``POST /internal/v1/auctions/{ping_id}/claim``).

The test decides each auction's result (``next``); the stub keeps what it was asked,
holds the results and answers claims by the contract's rules: the same lead claiming
again gets the same answer, another lead 409, past ``expires_at`` 410, no bids 422, an
unknown ping or another source's 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.support.http import ThreadedServer

TOKEN = "dev-internal-token"


@dataclass
class Plan:
    """What the next auction answers."""

    outcome: str = "bid"
    payout: Decimal | None = Decimal("12.34")
    bids: tuple[tuple[uuid.UUID, Decimal], ...] = ((uuid.uuid4(), Decimal("40.00")),)
    ttl: dt.timedelta = dt.timedelta(minutes=2)
    delay_s: float = 0.0  # answer this late (an auction past its deadline)
    status: int = 200  # or a failure: 500, 409 ping_post_disabled...


@dataclass
class Held:
    source_id: uuid.UUID
    bids: tuple[tuple[uuid.UUID, Decimal], ...]
    payout: Decimal | None
    expires_at: dt.datetime
    claimed_by: uuid.UUID | None = None


@dataclass
class StubAuction:
    url: str = ""  # where it listens, once served
    next: Plan = field(default_factory=Plan)
    asked: list[dict[str, Any]] = field(default_factory=list)
    claims: list[tuple[uuid.UUID, dict[str, Any]]] = field(default_factory=list)
    held: dict[uuid.UUID, Held] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        def refused(status: int, code: str) -> JSONResponse:
            return JSONResponse({"code": code, "detail": code.replace("_", " ")}, status)

        @app.post("/internal/v1/auctions")
        async def auction(request: Request) -> JSONResponse:
            if request.headers.get("x-lx-internal-token") != TOKEN:
                return JSONResponse({"detail": "internal token required"}, 401)
            body = await request.json()
            plan = self.next
            with self.lock:
                self.asked.append(body)
            await asyncio.sleep(plan.delay_s)
            if plan.status == 409:
                return refused(409, "ping_post_disabled")
            if plan.status != 200:
                return JSONResponse({"detail": "auction broke"}, plan.status)
            ping_id = uuid.UUID(body["ping_id"])
            expires_at = dt.datetime.now(dt.UTC) + plan.ttl
            bids = plan.bids if plan.outcome == "bid" else ()
            with self.lock:
                self.held.setdefault(
                    ping_id,
                    Held(uuid.UUID(body["source_id"]), bids, plan.payout, expires_at),
                )
            return JSONResponse(
                {
                    "ping_id": str(ping_id),
                    "outcome": plan.outcome,
                    "payout": str(plan.payout) if plan.outcome == "bid" else None,
                    "expires_at": expires_at.isoformat() if plan.outcome == "bid" else None,
                    "duration_ms": 3.5,
                    "rejections": [],
                }
            )

        @app.post("/internal/v1/auctions/{ping_id}/claim")
        async def claim(ping_id: uuid.UUID, request: Request) -> JSONResponse:
            if request.headers.get("x-lx-internal-token") != TOKEN:
                return JSONResponse({"detail": "internal token required"}, 401)
            body = await request.json()
            lead_id = uuid.UUID(body["lead_id"])
            with self.lock:
                self.claims.append((ping_id, body))
                held = self.held.get(ping_id)
                if held is None or held.source_id != uuid.UUID(body["source_id"]):
                    return refused(404, "ping_not_found")
                if held.claimed_by not in (None, lead_id):
                    return refused(409, "ping_already_posted")
                if dt.datetime.now(dt.UTC) >= held.expires_at:
                    return refused(410, "ping_expired")
                if not held.bids:
                    return refused(422, "ping_without_bids")
                held.claimed_by = lead_id
            return JSONResponse(
                {
                    "ping_id": str(ping_id),
                    "bids": [
                        {"buyer_id": str(b), "price": str(p), "bid_ref": f"ref-{i}"}
                        for i, (b, p) in enumerate(held.bids)
                    ],
                    "promised_payout": str(held.payout),
                    "expires_at": held.expires_at.isoformat(),
                }
            )

        return app

    def expire(self, ping_id: uuid.UUID) -> None:
        with self.lock:
            self.held[ping_id].expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)


@contextlib.contextmanager
def serving_stub_auction() -> Iterator[StubAuction]:
    stub = StubAuction()
    with ThreadedServer(stub.app()) as server:
        stub.url = server.url
        yield stub
