"""Ingest's consumers: configuration it needs (``config.changed``), the outcomes
sources ask about (``delivery.outcome``), and accounts over their plan
(``billing.limits``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lx_platform.consumer import Consumed
from lx_schemas import events as ev
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_ingest import store


async def handle(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    sales: list[dict[str, Any]] = []
    unsold: list[dict[str, Any]] = []
    returns: list[dict[str, Any]] = []
    for item in batch:
        event = item.event
        if isinstance(event, ev.CampaignConfigured):
            await store.upsert_campaign(conn, event.payload)
        elif isinstance(event, ev.SourceConfigured):
            await store.upsert_source(conn, event.payload)
        elif isinstance(event, ev.AccountLimitChanged):
            await store.set_account_limit(conn, event.account_id, event.payload)
        elif isinstance(event, ev.LeadSold):
            sale = event.payload
            sales.append(
                {
                    "lead_id": sale.lead_id,
                    "at": event.occurred_at,
                    "payout": None if sale.payout is None else str(sale.payout),
                }
            )
        elif isinstance(event, ev.LeadUnsold):
            ended = event.payload
            # Only the codes: the buyers' ids and their own words stay with the operator
            # (the admin trace); the source is told how many buyers fell for what.
            unsold.append(
                {
                    "lead_id": ended.lead_id,
                    "at": event.occurred_at,
                    "reason": ended.reason.value,
                    "codes": json.dumps([r.code.value for r in ended.rejections]),
                }
            )
        elif isinstance(event, ev.LeadReturned):
            returned = event.payload
            payout = returned.payout
            returns.append(
                {"lead_id": returned.lead_id, "payout": None if payout is None else str(payout)}
            )
    # One statement per kind, in this order: a batch holding a sale and the lead's
    # later unsold (multi-sell) leaves it sold.
    await store.record_sales(conn, sales)
    await store.record_unsold(conn, unsold)
    await store.record_returns(conn, returns)
