"""Analytics' query API, for the operator token and for access tokens.

A tenant's principal sees its own account's campaigns only: stats and reports are
scoped to them whatever the filters (another account's campaign, source or buyer gives
the same empty answer as an unknown id), and another account's export answers 404.
Staff (the operator token, superusers) see every account."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from lx_platform.access import Permission, Principal
from lx_platform.http import GUARD_ERRORS, not_found, principal_guard, require_visible
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Frozen
from pydantic import AwareDatetime, Field
from sqlalchemy import text

from lx_analytics import domain, reports

router = APIRouter(prefix="/v1", tags=["analytics"])
Reader = Annotated[Principal, Depends(principal_guard(Permission.REPORTS_READ))]
Exporter = Annotated[Principal, Depends(principal_guard(Permission.EXPORTS))]
ERRORS = GUARD_ERRORS


def _scope(who: Principal) -> uuid.UUID | None:
    """The account whose campaigns the principal may see; None: staff, all of them."""
    return None if who.staff else who.account_id


class HourlyRow(Frozen):
    hour: dt.datetime
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    buyer_id: uuid.UUID | None  # None: the lead-level row
    received: int
    offered: int
    sold: int
    unsold: int
    rejected: int
    errors: int
    revenue: Decimal


@router.get("/stats/hourly", response_model=list[HourlyRow], responses=ERRORS)
async def hourly(
    request: Request,
    who: Reader,
    campaign_id: uuid.UUID | None = None,
    source_id: uuid.UUID | None = None,
    buyer_id: uuid.UUID | None = None,
    since: Annotated[dt.datetime | None, Query(alias="from")] = None,
    until: Annotated[dt.datetime | None, Query(alias="to")] = None,
) -> list[HourlyRow]:
    """Hourly counts; lead-level rows (received, sold, unsold) have no buyer."""
    rt: Runtime = request.app.state.runtime
    clauses: list[str] = []
    params: dict[str, object] = {}
    for name, value in (
        ("campaign_id", campaign_id),
        ("source_id", source_id),
        ("buyer_id", buyer_id),
    ):
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    if since is not None:
        clauses.append("hour >= :since")
        params["since"] = since
    if until is not None:
        clauses.append("hour < :until")
        params["until"] = until
    if (account := _scope(who)) is not None:
        clauses.append(reports.SCOPE_CLAUSE)
        params["account"] = account
    where = f"where {' and '.join(clauses)}" if clauses else ""
    async with rt.db.begin() as conn:
        rows = await conn.execute(
            text(
                "select hour, campaign_id, source_id, buyer_id, revenue, "
                + ", ".join(domain.V1_COUNTERS)
                + f" from hourly_stats {where} order by hour, campaign_id, source_id,"
                " buyer_id limit 10000"
            ),
            params,
        )
        # Hours are UTC buckets: shown in UTC whatever the database session's time zone.
        return [
            HourlyRow(
                **{
                    **r._mapping,
                    "hour": r.hour.astimezone(dt.UTC),
                    "buyer_id": r.buyer_id if r.buyer_id.int else None,
                }
            )
            for r in rows
        ]


# --- reports --------------------------------------------------------------------------------


class Report(Frozen):
    granularity: ev.ReportGranularity
    group_by: tuple[ev.ReportDimension, ...]
    period_from: dt.datetime = Field(serialization_alias="from")
    period_to: dt.datetime = Field(serialization_alias="to")
    latency_resolution: str = domain.LATENCY_RESOLUTION
    rows: list[reports.ReportRow]


def _bad(code: str, detail: str) -> HTTPException:
    return HTTPException(422, {"code": code, "detail": detail})


@router.get(
    "/reports",
    response_model=Report,
    response_model_by_alias=True,
    responses={
        **ERRORS,
        422: {"description": "invalid_period, report_too_large or a bad parameter"},
    },
)
async def report(
    request: Request,
    who: Reader,
    since: Annotated[AwareDatetime, Query(alias="from", description="inclusive, UTC offset")],
    until: Annotated[AwareDatetime, Query(alias="to", description="exclusive, UTC offset")],
    granularity: ev.ReportGranularity = ev.ReportGranularity.HOUR,
    group_by: Annotated[list[ev.ReportDimension] | None, Query()] = None,
    campaign_id: uuid.UUID | None = None,
    source_id: uuid.UUID | None = None,
    buyer_id: uuid.UUID | None = None,
) -> Report:
    """Received, accepted, rejected by reason, duplicates, pings, bids, won, sold, unsold,
    returned, revenue (sale prices less returned prices), payout, margin, buyer response
    latency p50/p95/p99 and the ping-to-post ratio, by event-time UTC hour or day (or the
    whole period: ``granularity=all``), filtered and grouped by campaign, source, buyer
    (``group_by`` repeated). Hours are whole: one is in if it starts in [from, to).
    Filtering by buyer keeps only buyer-level metrics."""
    if until <= since:
        raise _bad("invalid_period", "'to' must be after 'from'")
    try:
        query = ev.ExportQuery(
            granularity=granularity,
            group_by=tuple(group_by or ()),
            campaign_id=campaign_id,
            source_id=source_id,
            buyer_id=buyer_id,
        )
    except ValueError as exc:
        raise _bad("invalid_group_by", str(exc).splitlines()[-1]) from None
    rt: Runtime = request.app.state.runtime
    try:
        async with rt.db.begin() as conn:
            rows = await reports.report(conn, query, since, until, account_id=_scope(who))
    except reports.ReportTooLargeError as exc:
        raise _bad("report_too_large", f"{exc}: narrow the period, filters or grouping") from None
    return Report(
        granularity=granularity,
        group_by=query.group_by,
        period_from=since.astimezone(dt.UTC),
        period_to=until.astimezone(dt.UTC),
        rows=rows,
    )


# --- scheduled exports ----------------------------------------------------------------------


class ExportCommand(Frozen):
    """Set up (or change) a scheduled CSV export of a report."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    status: ev.Status = ev.Status.ACTIVE
    query: ev.ExportQuery
    every_hours: Annotated[int, Field(ge=1, le=24 * 31)]
    retention_days: Annotated[int, Field(ge=1, le=3650)]
    configured_by: Annotated[str, Field(min_length=1, max_length=200)]


class Export(Frozen):
    export_id: uuid.UUID
    name: str
    status: ev.Status
    query: ev.ExportQuery
    every_hours: int
    retention_days: int
    configured_by: str
    configured_at: dt.datetime


class ExportRun(Frozen):
    run_id: uuid.UUID
    export_id: uuid.UUID
    name: str
    configured_by: str
    configured_at: dt.datetime
    query: ev.ExportQuery
    period_from: dt.datetime
    period_to: dt.datetime
    run_at: dt.datetime
    file_name: str
    rows: int
    sha256: str
    expires_at: dt.datetime
    deleted_at: dt.datetime | None


async def _export_account(request: Request, export_id: uuid.UUID) -> tuple[bool, uuid.UUID | None]:
    """Whether the export exists, and its account (None: the platform's)."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        row = (
            await conn.execute(
                text("select account_id from exports where export_id = :e"), {"e": export_id}
            )
        ).first()
    return (False, None) if row is None else (True, row.account_id)


async def _publish(
    request: Request, export_id: uuid.UUID, cmd: ExportCommand, account_id: uuid.UUID | None
) -> ev.ExportState:
    rt: Runtime = request.app.state.runtime
    state = ev.ExportState(export_id=export_id, **cmd.model_dump())
    event = ev.ExportConfigured.new(
        # The export's account, whose campaigns its runs report on; the nil UUID: the
        # platform's staff's, over every account.
        account_id=account_id or domain.NO_BUYER,
        correlation_id=export_id,
        producer="analytics",
        payload=state,
    )
    # Through the outbox: the projection builds ``exports`` from the event, so a rebuild
    # from the log reproduces every export's configuration.
    async with rt.db.begin() as conn:
        await rt.outbox.stage(conn, event, export_id)
    return state


@router.post(
    "/exports",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ev.ExportState,
    responses=ERRORS,
)
async def create_export(cmd: ExportCommand, request: Request, who: Exporter) -> ev.ExportState:
    """Set up a scheduled export; it appears in ``GET /v1/exports`` once projected. A
    tenant's export reports on its own account's campaigns only."""
    return await _publish(request, uuid.uuid4(), cmd, _scope(who))


@router.put(
    "/exports/{export_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ev.ExportState,
    responses={**ERRORS, 404: {"description": "`export_not_found`: another account's"}},
)
async def replace_export(
    export_id: uuid.UUID, cmd: ExportCommand, request: Request, who: Exporter
) -> ev.ExportState:
    """Change an export (its full state; ``status: paused`` stops its runs). An export
    stays the account's it was made for, whoever changes it."""
    exists, account_id = await _export_account(request, export_id)
    if exists:
        require_visible(who, account_id, "export")
    else:
        account_id = _scope(who)
    return await _publish(request, export_id, cmd, account_id)


@router.get("/exports", response_model=list[Export], responses=ERRORS)
async def list_exports(request: Request, who: Exporter) -> list[Export]:
    """The exports: a tenant's own account's; staff see every one."""
    rt: Runtime = request.app.state.runtime
    account = _scope(who)
    where = "" if account is None else "where account_id = :a "
    async with rt.db.begin() as conn:
        rows = await conn.execute(
            text(
                "select export_id, name, status, query, every_hours, retention_days,"
                f" configured_by, configured_at from exports {where}"
                "order by configured_at, export_id"
            ),
            {"a": account},
        )
        return [Export.model_validate(dict(r._mapping)) for r in rows]


@router.get(
    "/exports/{export_id}/runs",
    response_model=list[ExportRun],
    responses={**ERRORS, 404: {"description": "`export_not_found` (or another account's)"}},
)
async def export_runs(export_id: uuid.UUID, request: Request, who: Exporter) -> list[ExportRun]:
    """The audit of an export's runs, kept after their files are deleted."""
    if not who.staff:
        exists, account_id = await _export_account(request, export_id)
        if not exists:
            raise not_found("export")
        require_visible(who, account_id, "export")
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        rows = await conn.execute(
            text("select * from export_runs where export_id = :e order by run_at"),
            {"e": export_id},
        )
        return [ExportRun.model_validate(dict(r._mapping)) for r in rows]
