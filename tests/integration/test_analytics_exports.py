"""Scheduled exports against real Kafka and PostgreSQL: set up by an operator command
(published, then projected), run by the scheduler on an injected clock, each file deleted
when its retention window ends while its audit row stays, through a projection rebuild."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from lx_analytics import reports
from lx_analytics.exports import ExportScheduler
from lx_analytics.main import create_service
from lx_analytics.settings import AnalyticsSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_sre.projections import rebuild_projection

from tests.support.kafka import publish
from tests.support.services import OPERATOR, eventually, hosted, settings_for

ACCOUNT, CAMPAIGN, SOURCE, BUYER = (uuid.uuid4() for _ in range(4))
SOLD_AT = dt.datetime(2026, 2, 10, 9, 15, tzinfo=dt.UTC)
RUN_AT = dt.datetime(2026, 2, 10, 10, 5, tzinfo=dt.UTC)


def sale(n: int) -> list[tuple[ev.Event, uuid.UUID]]:
    lead = uuid.uuid4()
    ref = {"lead_id": lead, "campaign_id": CAMPAIGN, "source_id": SOURCE}
    env = {"account_id": ACCOUNT, "correlation_id": lead, "producer": "test"}
    return [
        (
            ev.LeadReceived.new(
                **env,
                occurred_at=SOLD_AT,
                payload=ev.LeadReceivedPayload(**ref, lead=ev.LeadContent(fields={})),
            ),
            lead,
        ),
        (
            ev.LeadSold.new(
                **env,
                occurred_at=SOLD_AT + dt.timedelta(seconds=n),
                payload=ev.LeadSoldPayload(
                    **ref,
                    buyer_id=BUYER,
                    delivery_id=lead,
                    price=Decimal("10.50"),
                    payout=Decimal("6.00"),
                ),
            ),
            lead,
        ),
    ]


@pytest.fixture(scope="module")
async def analytics(
    infra: Infra, isolation: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, Path]]:
    folder = tmp_path_factory.mktemp("exports")
    settings = settings_for(
        AnalyticsSettings,
        infra,
        isolation,
        "analytics",
        export_folder=folder,
        exports_enabled=False,  # the test drives the scheduler on its own clock
    )
    async with hosted(create_service(settings)) as (client, rt):
        await publish(
            infra.kafka_bootstrap,
            settings.kafka.topic_prefix,
            [item for n in range(3) for item in sale(n)],
        )
        yield client, rt, folder


async def runs(client: httpx.AsyncClient, export_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/exports/{export_id}/runs", headers=OPERATOR)
    assert r.status_code == 200, r.text
    body: list[dict[str, Any]] = r.json()
    return body


async def test_an_export_file_is_deleted_at_the_end_of_its_window_and_its_audit_row_stays(
    analytics: tuple[httpx.AsyncClient, Runtime, Path],
) -> None:
    client, rt, folder = analytics
    r = await client.post(
        "/v1/exports",
        headers=OPERATOR,
        json={
            "name": "sales by buyer",
            "query": {"granularity": "hour", "group_by": ["buyer"], "window_hours": 24},
            "every_hours": 744,
            "retention_days": 2,
            "configured_by": "operator:dana",
        },
    )
    assert r.status_code == 202, r.text
    export_id = r.json()["export_id"]

    async def listed() -> bool:
        r = await client.get("/v1/exports", headers=OPERATOR)
        return any(e["export_id"] == export_id for e in r.json())

    await eventually(listed, what="the export projected from its event")

    async def sold_three() -> bool:
        r = await client.get(
            "/v1/reports",
            headers=OPERATOR,
            params={
                "from": "2026-02-10T00:00:00Z",
                "to": "2026-02-11T00:00:00Z",
                "granularity": "all",
            },
        )
        rows = r.json()["rows"]
        return bool(rows) and rows[0]["sold"] == 3

    await eventually(sold_three, what="the sales projected")

    scheduler: ExportScheduler = rt.extras["exports"]
    first = await scheduler.tick(RUN_AT)
    assert len(first.ran) == 1 and first.deleted == []
    (run,) = await runs(client, export_id)
    path = folder / run["file_name"]
    body = path.read_bytes()
    assert run["sha256"] == hashlib.sha256(body).hexdigest()
    table = list(csv.DictReader(io.StringIO(body.decode())))
    assert run["rows"] == len(table) == 2  # the lead-level row and the buyer's, at 9h
    buyer_row = next(row for row in table if row["buyer_id"] == str(BUYER))
    assert (buyer_row["sold"], buyer_row["revenue"], buyer_row["margin"]) == ("3", "31.50", "13.50")
    assert (run["period_from"], run["period_to"]) == (
        "2026-02-09T10:00:00Z",
        "2026-02-10T10:00:00Z",
    )

    # Not due again, nothing expired yet: a second before the window ends, still there.
    expires = RUN_AT + dt.timedelta(days=2)
    assert await scheduler.tick(expires - dt.timedelta(seconds=1)) == type(first)([], [])
    assert path.exists()

    # A rebuild of the projection leaves the audit alone.
    await rebuild_projection("analytics", fresh=True, live=rt.settings)

    ended = await scheduler.tick(expires)
    assert ended.ran == [] and [str(r) for r in ended.deleted] == [run["run_id"]]
    assert not path.exists()
    (audit,) = await runs(client, export_id)
    assert dt.datetime.fromisoformat(audit["deleted_at"]) == expires
    assert {k: v for k, v in audit.items() if k != "deleted_at"} == {
        k: v for k, v in run.items() if k != "deleted_at"
    }
    assert (audit["configured_by"], audit["name"], audit["rows"]) == (
        "operator:dana",
        "sales by buyer",
        2,
    )
    assert audit["query"]["group_by"] == ["buyer"]
    # A later tick finds nothing more to delete.
    assert (await scheduler.tick(expires + dt.timedelta(days=1))).deleted == []


async def test_bad_commands_and_reports_get_a_4xx_with_a_code(
    analytics: tuple[httpx.AsyncClient, Runtime, Path],
) -> None:
    client, _, _ = analytics
    good = {
        "name": "x",
        "query": {},
        "every_hours": 24,
        "retention_days": 7,
        "configured_by": "operator:dana",
    }
    for bad in (
        {**good, "retention_days": 0},
        {**good, "query": {"group_by": ["buyer", "buyer"]}},
        {**good, "query": {"granularity": "week"}},
    ):
        r = await client.post("/v1/exports", headers=OPERATOR, json=bad)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_request"
    assert (await client.post("/v1/exports", json=good)).status_code == 401

    span = {"from": "2026-02-10T00:00:00Z", "to": "2026-02-10T00:00:00Z"}
    r = await client.get("/v1/reports", headers=OPERATOR, params=span)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_period")
    r = await client.get(
        "/v1/reports",
        headers=OPERATOR,
        params={**span, "to": "2026-02-11T00:00:00Z", "group_by": ["buyer", "buyer"]},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_group_by")
    r = await client.get(
        "/v1/reports", headers=OPERATOR, params={"from": "2026-02-10T00:00:00", "to": "x"}
    )
    assert r.status_code == 422
    assert (await client.get("/v1/reports", params=span)).status_code == 401


async def test_an_export_that_fails_is_skipped_without_holding_back_the_others(
    analytics: tuple[httpx.AsyncClient, Runtime, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt, folder = analytics
    ids = {}
    for name, group_by in (("broken", ["campaign"]), ("fine", ["source"])):
        r = await client.post(
            "/v1/exports",
            headers=OPERATOR,
            json={
                "name": name,
                "query": {"granularity": "hour", "group_by": group_by, "window_hours": 24},
                "every_hours": 24,
                "retention_days": 1,
                "configured_by": "operator:dana",
            },
        )
        assert r.status_code == 202, r.text
        ids[name] = r.json()["export_id"]

    async def both_listed() -> bool:
        r = await client.get("/v1/exports", headers=OPERATOR)
        return set(ids.values()) <= {e["export_id"] for e in r.json()}

    await eventually(both_listed, what="both exports projected")
    real = reports.report

    async def failing(conn: Any, query: ev.ExportQuery, *args: Any) -> Any:
        if list(query.group_by) == ["campaign"]:
            raise RuntimeError("report_too_large")
        return await real(conn, query, *args)

    monkeypatch.setattr(reports, "report", failing)
    scheduler: ExportScheduler = rt.extras["exports"]
    later = RUN_AT + dt.timedelta(days=60)
    await scheduler.tick(later)
    assert await runs(client, ids["broken"]) == []  # skipped, and no file left behind
    (fine,) = await runs(client, ids["fine"])
    assert (folder / fine["file_name"]).exists()
    assert not list(folder.glob(f"{ids['broken']}/*"))
    # Its files still expire on time although the broken export keeps failing.
    gone = await scheduler.tick(later + dt.timedelta(days=1))
    assert uuid.UUID(fine["run_id"]) in gone.deleted
    assert not (folder / fine["file_name"]).exists()
