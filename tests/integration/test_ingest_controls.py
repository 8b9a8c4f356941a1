"""Source controls and "why was my lead refused?", against the real ingest, Kafka and
PostgreSQL: IP allow-lists, rate limits, caps under concurrency, and the LeadRejected
record every refused post leaves (rate-limited floods aside)."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from lx_devstack.infra import Infra
from lx_schemas import events as ev
from lx_schemas.rules import SourceCap, SourceCapPeriod, SourceControls
from lx_schemas.topics import LEAD_RECEIVED
from sqlalchemy import text

from tests.support.ingest import LEAD, Service, Source, configure, running_ingest
from tests.support.kafka import read_to_end
from tests.support.services import eventually

EMAIL = ev.DedupeRule(fields=("email",), window_days=30)
PLAINTEXT = [b"ada.lovelace", b"Ada.Lovelace", b"4155550132", b"555-0132", b"Augusta"]


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    # The test client's connections come from 127.0.0.1, which plays the balancer here.
    async with running_ingest(
        infra, isolation, trusted_proxies="127.0.0.1/32", db_pool_size=16
    ) as service:
        yield service


def lead(n: int) -> dict[str, Any]:
    """A distinct consumer per ``n``."""
    return {**LEAD, "email": f"consumer{n}@example.org", "phone": f"+1415555{n:04d}"}


async def post(svc: Service, src: Source, body: Any = LEAD, **headers: str) -> httpx.Response:
    return await svc.client.post("/v1/leads", json=body, headers={**src.auth, **headers})


async def rejected_events(svc: Service, src: Source) -> dict[uuid.UUID, ev.LeadRejected]:
    return {
        e.payload.lead_id: e
        for e in await svc.events_of(LEAD_RECEIVED, src.account_id)
        if isinstance(e, ev.LeadRejected)
    }


async def accepted(svc: Service, src: Source) -> int:
    return await svc.count("leads", "source_id = :s", s=src.source_id)


def refused(r: httpx.Response, status: int, code: str, reason: str) -> uuid.UUID:
    """The refusal's code and reason; returns the lead id it was given."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["reason"]) == (code, reason), error
    assert error["detail"]
    return uuid.UUID(error["lead_id"])


# --- IP allow-lists -------------------------------------------------------------------------


async def test_an_ip_allow_list_admits_its_networks_only_and_x_forwarded_for_from_a_trusted_proxy(
    ingest: Service,
) -> None:
    allow = (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32"))
    (src,) = await configure(ingest, controls=SourceControls(ip_allow=allow))
    (open_src,) = await configure(ingest)

    # The balancer forwards for a client inside the list: accepted.
    ok = await post(ingest, src, lead(1), **{"x-forwarded-for": "203.0.113.7"})
    assert ok.status_code == 202, ok.text
    ok6 = await post(ingest, src, lead(2), **{"x-forwarded-for": "2001:db8::7"})
    assert ok6.status_code == 202, ok6.text
    # The balancer's own address is not in the list.
    direct = refused(await post(ingest, src, lead(3)), 403, "ip_not_allowed", "ip_not_allowed")
    # A client cannot forge its way in: what it wrote left of the real hop counts for nothing.
    forged = await post(ingest, src, lead(4), **{"x-forwarded-for": "203.0.113.7, 198.51.100.9"})
    refused(forged, 403, "ip_not_allowed", "ip_not_allowed")
    # A source without a list takes any address.
    assert (await post(ingest, open_src, lead(5))).status_code == 202
    assert await accepted(ingest, src) == 2

    events = await eventually(
        lambda: _when(rejected_events(ingest, src), 2), what="two LeadRejected events"
    )
    assert events[direct].payload.rejections[0].code is ev.RejectionCode.IP_NOT_ALLOWED
    assert events[direct].payload.http_status == 403


async def _when(probe: Any, n: int) -> dict[uuid.UUID, ev.LeadRejected]:
    """``probe``'s events once there are ``n`` of them, else nothing (falsy)."""
    got: dict[uuid.UUID, ev.LeadRejected] = await probe
    return got if len(got) >= n else {}


async def test_an_x_forwarded_for_is_ignored_unless_its_sender_is_a_trusted_proxy(
    infra: Infra, isolation: str
) -> None:
    allow = (ipaddress.ip_network("203.0.113.0/24"),)
    async with running_ingest(infra, f"{isolation}b") as untrusting:
        (src,) = await configure(untrusting, controls=SourceControls(ip_allow=allow))
        r = await post(untrusting, src, lead(1), **{"x-forwarded-for": "203.0.113.7"})
        refused(r, 403, "ip_not_allowed", "ip_not_allowed")


# --- rate limits ----------------------------------------------------------------------------


async def test_posts_over_the_rate_get_429_with_retry_after_and_leave_no_record(
    ingest: Service,
) -> None:
    # A burst of 2, then one every 100 s: the third post is over, however slow the machine.
    (src,) = await configure(ingest, controls=SourceControls(rate_per_s=0.01, burst=2))
    (other,) = await configure(ingest, controls=SourceControls(rate_per_s=0.01, burst=2))

    answers = [await post(ingest, src, lead(n)) for n in range(4)]

    assert [r.status_code for r in answers] == [202, 202, 429, 429]
    for r in answers[2:]:
        error = r.json()["error"]
        assert (error["code"], error["reason"]) == ("rate_limited", "rate_limited")
        assert "lead_id" not in error  # nothing was recorded under an id
        assert 1 <= int(r.headers["retry-after"]) <= 200
    # Per source: another source has its own budget.
    assert (await post(ingest, other, lead(9))).status_code == 202
    # A flood leaves no row and no event behind (see lx_ingest.api).
    assert await ingest.count("rejected_leads", "source_id = :s", s=src.source_id) == 0
    assert await rejected_events(ingest, src) == {}


# --- caps -----------------------------------------------------------------------------------


async def test_a_cap_of_n_under_3n_concurrent_posts_accepts_exactly_n(ingest: Service) -> None:
    n = 10
    caps = (
        SourceCap(period=SourceCapPeriod.HOUR, max_leads=n),
        SourceCap(period=SourceCapPeriod.MONTH, max_leads=1_000),
    )
    (src,) = await configure(ingest, controls=SourceControls(caps=caps))

    answers = await asyncio.gather(*(post(ingest, src, lead(i)) for i in range(3 * n)))

    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] * n + [429] * (2 * n), [r.text for r in answers]
    for r in answers:
        if r.status_code == 429:
            refused(r, 429, "source_cap", "source_cap")
            assert 1 <= int(r.headers["retry-after"]) <= 3600  # the end of this UTC hour
    assert await accepted(ingest, src) == n
    counters = await _counters(ingest, src)
    assert counters == {"hour": n, "month": n}


async def test_a_refused_lead_never_takes_a_unit_of_the_cap(ingest: Service) -> None:
    caps = (SourceCap(period=SourceCapPeriod.DAY, max_leads=2),)
    (src,) = await configure(ingest, dedupe=EMAIL, controls=SourceControls(caps=caps))

    assert (await post(ingest, src, lead(1))).status_code == 202
    refused(await post(ingest, src, lead(1)), 422, "duplicate_lead", "duplicate")
    refused(
        await post(ingest, src, {**lead(2), "state": "XX"}), 422, "invalid_fields", "validation"
    )
    assert await _counters(ingest, src) == {"day": 1}
    assert (await post(ingest, src, lead(2))).status_code == 202
    full = await post(ingest, src, lead(3))
    refused(full, 429, "source_cap", "source_cap")
    assert "2 per day" in full.json()["error"]["detail"]
    # A capped lead held no duplicate-index entry either: once the cap has room (here:
    # raised), the same consumer passes.
    assert await _counters(ingest, src) == {"day": 2}
    await ingest.execute(
        "update source_cap_counters set count = 1 where source_id = :s", s=src.source_id
    )
    assert (await post(ingest, src, lead(3))).status_code == 202


async def _counters(svc: Service, src: Source) -> dict[str, int]:
    async with svc.rt.db.begin() as conn:
        rows = await conn.execute(
            text("select period, count from source_cap_counters where source_id = :s"),
            {"s": src.source_id},
        )
        return {period: count for period, count in rows}


# --- why a lead was refused -----------------------------------------------------------------


async def test_every_refused_post_names_its_reason_and_publishes_it_without_pii(
    ingest: Service,
) -> None:
    caps = (SourceCap(period=SourceCapPeriod.HOUR, max_leads=1),)
    (src,) = await configure(ingest, dedupe=EMAIL, controls=SourceControls(caps=caps))
    (paused,) = await configure(ingest, source_status=ev.Status.PAUSED, account_id=src.account_id)
    bad = {**LEAD, "email": "ada.lovelace@example..com", "state": "XX", "Ada.Lovelace": "x"}

    assert (await post(ingest, src)).status_code == 202
    ids = {
        "validation": refused(await post(ingest, src, bad), 422, "invalid_fields", "validation"),
        "duplicate": refused(await post(ingest, src), 422, "duplicate_lead", "duplicate"),
        "source_cap": refused(await post(ingest, src, lead(7)), 429, "source_cap", "source_cap"),
        "source_paused": refused(await post(ingest, paused), 403, "source_paused", "source_paused"),
        "malformed": refused(
            await ingest.client.post(
                "/v1/leads",
                content=b"{nope",
                headers={**src.auth, "content-type": "application/json"},
            ),
            400,
            "malformed_json",
            "validation",
        ),
    }

    events = await eventually(
        lambda: _when(rejected_events(ingest, src), len(ids)), what="every LeadRejected"
    )
    assert set(events) == set(ids.values())
    for reason, lead_id in ids.items():
        event = events[lead_id]
        assert event.event_id and event.correlation_id == lead_id
        payload = event.payload
        expected = "validation" if reason == "malformed" else reason
        assert {r.code.value for r in payload.rejections} == {expected}
    invalid = events[ids["validation"]].payload
    assert {(r.field, r.code.value) for r in invalid.rejections} == {
        ("email", "validation"),
        ("state", "validation"),
        (None, "validation"),  # an unknown field whose name is not a field name: unnamed
    }
    assert events[ids["duplicate"]].payload.rejections[0].field == "email"
    assert events[ids["source_cap"]].payload.http_status == 429

    # Keyed by the lead id the answer carried; no PII in any spelling.
    records = await read_to_end(ingest.bootstrap, LEAD_RECEIVED.qualified(ingest.prefix))
    mine = {r.key: r.value for r in records if r.key in {str(i).encode() for i in ids.values()}}
    assert len(mine) == len(ids)
    for raw in mine.values():
        for plain in [*PLAINTEXT, b"example..com"]:
            assert plain not in raw

    # The source can ask later, by that id, why.
    r = await ingest.client.get(f"/v1/leads/{ids['validation']}", headers=src.auth)
    assert r.status_code == 200, r.text
    status = r.json()
    assert (status["status"], status["reason"], status["error_code"]) == (
        "rejected",
        "validation",
        "invalid_fields",
    )
    assert {x["field"] for x in status["rejections"]} == {"email", "state", None}
    r = await ingest.client.get(f"/v1/leads/{ids['source_cap']}", headers=src.auth)
    assert (r.json()["status"], r.json()["reason"]) == ("rejected", "source_cap")
    # Only its own source sees it.
    other = await ingest.client.get(f"/v1/leads/{ids['duplicate']}", headers=paused.auth)
    assert other.status_code == 404
