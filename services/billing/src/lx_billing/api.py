"""Billing's query API for operators."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from lx_platform.http import operator_guard
from lx_platform.runtime import Runtime
from lx_schemas.envelope import Frozen

from lx_billing import store

router = APIRouter(prefix="/v1", dependencies=[Depends(operator_guard())], tags=["billing"])
Month = Annotated[str, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM (UTC)")]


class MonthlyStatement(Frozen):
    account_id: uuid.UUID
    month: str
    usage: dict[str, int]
    sold_leads: int
    revenue: Decimal


class Balances(Frozen):
    account_id: uuid.UUID
    balances: dict[str, Decimal]


def _month(value: str) -> dt.date:
    match = re.fullmatch(r"(\d{4})-(\d{2})", value)
    try:
        return dt.date(int(match[1]), int(match[2]), 1) if match else dt.date.min
    except ValueError:
        raise HTTPException(
            422, {"code": "invalid_month", "detail": "month must be YYYY-MM"}
        ) from None


@router.get("/accounts/{account_id}/statement", response_model=MonthlyStatement)
async def statement(account_id: uuid.UUID, month: Month, request: Request) -> MonthlyStatement:
    """Usage and sales of one account in one month, in USD."""
    rt: Runtime = request.app.state.runtime
    start = _month(month)
    async with rt.db.begin() as conn:
        used = await store.usage(conn, account_id, start)
        sold = await store.sales(conn, account_id, start)
    return MonthlyStatement(account_id=account_id, month=month, usage=used, **sold)


@router.get("/accounts/{account_id}/balances", response_model=Balances)
async def balances(account_id: uuid.UUID, request: Request) -> Balances:
    """Each ledger account's balance: the sum of its entries."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        return Balances(account_id=account_id, balances=await store.balances(conn, account_id))
