"""Ingest's client of the auction service's internal API (ping-post).

``run`` asks for an auction over a ping's non-PII fields and waits at most the
campaign's ``auction_ms`` plus a margin; ``claim`` binds an auction's result to the
lead posted for it. Both carry the platform's internal token. Transport failures,
timeouts, 5xx and answers that do not parse are ``AuctionUnavailable``: the source
gets 503 and may retry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Literal, TypeVar

import httpx
from lx_schemas import events as ev
from lx_schemas.envelope import Frozen
from pydantic import ValidationError

from lx_ingest.settings import IngestSettings

M = TypeVar("M", bound=Frozen)


class AuctionUnavailable(Exception):
    """The auction service could not answer (down, slow, or answering nonsense)."""


class AuctionRefused(Exception):
    """The auction service answered a 4xx with a code (``ping_post_disabled``,
    ``ping_not_found``, ``ping_already_posted``, ``ping_expired``, ``ping_without_bids``...)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class AuctionResult(Frozen):
    ping_id: uuid.UUID
    outcome: Literal["bid", "no_bid"]
    payout: Decimal | None = None
    expires_at: dt.datetime | None = None
    duration_ms: float = 0.0
    rejections: tuple[ev.Rejection, ...] = ()


class Claim(Frozen):
    ping_id: uuid.UUID
    bids: tuple[ev.Bid, ...]
    promised_payout: Decimal
    expires_at: dt.datetime


class AuctionClient:
    def __init__(self, http: httpx.AsyncClient, settings: IngestSettings) -> None:
        self.http = http
        self.base = settings.platform.auction_url.rstrip("/")
        self.margin_s = settings.auction_margin_ms / 1000
        self.claim_timeout_s = settings.auction_claim_timeout_s

    async def run(
        self,
        *,
        ping_id: uuid.UUID,
        account_id: uuid.UUID,
        campaign_id: uuid.UUID,
        source_id: uuid.UUID,
        fields: dict[str, ev.FieldValue],
        auction_ms: int,
    ) -> AuctionResult:
        body = {
            "ping_id": str(ping_id),
            "account_id": str(account_id),
            "campaign_id": str(campaign_id),
            "source_id": str(source_id),
            "fields": fields,
        }
        answer = await self._post(
            "/internal/v1/auctions", body, timeout_s=auction_ms / 1000 + self.margin_s
        )
        return _parse(AuctionResult, answer)

    async def claim(self, ping_id: uuid.UUID, source_id: uuid.UUID, lead_id: uuid.UUID) -> Claim:
        answer = await self._post(
            f"/internal/v1/auctions/{ping_id}/claim",
            {"source_id": str(source_id), "lead_id": str(lead_id)},
            timeout_s=self.claim_timeout_s,
        )
        return _parse(Claim, answer)

    async def _post(self, path: str, body: dict[str, Any], *, timeout_s: float) -> httpx.Response:
        try:
            # httpx's timeouts are per phase; the whole call gets one deadline as well.
            async with asyncio.timeout(timeout_s):
                answer = await self.http.post(self.base + path, json=body, timeout=timeout_s)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise AuctionUnavailable(repr(exc)) from exc
        if answer.status_code >= 500 or answer.status_code in (401, 403):
            # 401/403: our own internal token is wrong; the source can do nothing about it.
            raise AuctionUnavailable(f"auction answered {answer.status_code}")
        if answer.status_code >= 400:
            try:
                error = answer.json()
                error = error.get("error", error) if isinstance(error, dict) else {}
                code, detail = str(error["code"]), str(error.get("detail") or "")
            except (ValueError, KeyError, TypeError):
                raise AuctionUnavailable(f"auction answered {answer.status_code}") from None
            raise AuctionRefused(answer.status_code, code, detail)
        return answer


def _parse(model: type[M], answer: httpx.Response) -> M:
    try:
        return model.model_validate_json(answer.content)
    except ValidationError as exc:
        raise AuctionUnavailable(f"auction answered what the contract does not: {exc}") from None
