"""``Idempotency-Key`` on POST /v1/leads, against the real ingest, Kafka and PostgreSQL.

"Nothing more was written" is counted in ingest's own tables (``leads``, ``lead_keys``)
and on the topics (``lead.received``, ``usage.incremented`` of the test's account).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from lx_devstack.infra import Infra
from lx_ingest import domain
from lx_ingest.retention import prune_once
from lx_schemas import Event
from lx_schemas.topics import LEAD_RECEIVED, USAGE_INCREMENTED
from sqlalchemy import text

from tests.support.ingest import LEAD, Service, Source, configure, running_ingest

Publish = Callable[[Event, uuid.UUID | str], Awaitable[None]]


@pytest.fixture(scope="module")
async def ingest(infra: Infra, isolation: str) -> AsyncIterator[Service]:
    async with running_ingest(infra, isolation) as service:
        yield service


async def post(
    svc: Service, src: Source, key: str | None, body: Any = LEAD, **kwargs: Any
) -> httpx.Response:
    headers = {**src.auth, **({"idempotency-key": key} if key is not None else {})}
    return await svc.client.post("/v1/leads", json=body, headers=headers, **kwargs)


async def written(svc: Service, src: Source) -> dict[str, int]:
    """What exists of the source's account: status rows, data keys, records on topics."""
    return {
        "leads": await svc.count("leads", "source_id = :s", s=src.source_id),
        "lead_keys": await svc.count(
            "lead_keys",
            "key_id in (select lead_id from leads where source_id = :s)",
            s=src.source_id,
        ),
        "lead.received": len(await svc.received_of(LEAD_RECEIVED, src.account_id)),
        "usage.incremented": len(await svc.events_of(USAGE_INCREMENTED, src.account_id)),
    }


def nothing(n: int = 0) -> dict[str, int]:
    return dict.fromkeys(("leads", "lead_keys", "lead.received", "usage.incremented"), n)


class HeldPublisher:
    """Replaces the service's ``publish`` so that a test decides when it returns: the
    request holding a key stays in flight for as long as the test needs."""

    def __init__(self, svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real: Publish = svc.rt.publisher.publish
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        monkeypatch.setattr(svc.rt.publisher, "publish", self.publish)

    async def publish(self, event: Event, key: uuid.UUID | str) -> None:
        self.entered.set()
        await self.release.wait()
        await self.real(event, key)


# --- tests ----------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_and_body_gets_the_first_answer_and_writes_nothing(
    ingest: Service,
) -> None:
    src, other_source = await configure(ingest, sources=2)
    key = str(uuid.uuid4())

    first = await post(ingest, src, key)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    lead_id = first.json()["lead_id"]
    assert await written(ingest, src) == nothing(1)

    # The same JSON object, its keys in another order: the same request.
    reordered = dict(reversed(list(LEAD.items())))
    for body in (LEAD, reordered):
        again = await post(ingest, src, key, body)
        assert again.status_code == 202, again.text
        assert again.content == first.content  # byte for byte: same lead id, same time
        assert again.headers["idempotent-replayed"] == "true"
    assert await written(ingest, src) == nothing(1)

    # Another key is another lead; the same key from another source is that source's own.
    fresh = await post(ingest, src, str(uuid.uuid4()))
    theirs = await post(ingest, other_source, key)
    assert fresh.status_code == theirs.status_code == 202
    assert len({lead_id, fresh.json()["lead_id"], theirs.json()["lead_id"]}) == 3
    # Without a key, nothing is remembered: each post is a lead.
    assert (await post(ingest, src, None)).status_code == 202
    assert (await written(ingest, src))["leads"] == 3


async def test_the_same_key_with_another_body_is_refused_and_the_first_answer_stands(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest)
    key = "order-7731"
    first = await post(ingest, src, key)
    assert first.status_code == 202, first.text

    reused = await post(ingest, src, key, {**LEAD, "zip": "10001"})
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert first.json()["lead_id"] not in reused.text

    assert (await post(ingest, src, key)).content == first.content
    assert await written(ingest, src) == nothing(1)


async def test_a_request_still_in_flight_gets_409_and_then_its_answer(
    ingest: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    (src,) = await configure(ingest)
    key = str(uuid.uuid4())
    held = HeldPublisher(ingest, monkeypatch)

    first = asyncio.create_task(post(ingest, src, key))
    # The first request has claimed the key and stored its lead; it now waits on Kafka.
    await asyncio.wait_for(held.entered.wait(), timeout=20)

    busy = await post(ingest, src, key)
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "request_in_progress"
    assert busy.headers["retry-after"] == "1"
    # Another body is refused as such, even while the first one runs.
    other = await post(ingest, src, key, {**LEAD, "state": "NY"})
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"

    held.release.set()
    answer = await asyncio.wait_for(first, timeout=30)
    assert answer.status_code == 202, answer.text
    replay = await post(ingest, src, key)
    assert (replay.status_code, replay.content) == (202, answer.content)
    assert await written(ingest, src) == nothing(1)


async def test_identical_requests_at_the_same_instant_make_exactly_one_lead(
    ingest: Service,
) -> None:
    (src,) = await configure(ingest)
    key = str(uuid.uuid4())

    answers = await asyncio.gather(*(post(ingest, src, key) for _ in range(10)))

    # Each one either ran, found it running (409) or got its answer (202 again).
    assert {r.status_code for r in answers} <= {202, 409}, [r.text for r in answers]
    accepted = [r for r in answers if r.status_code == 202]
    assert accepted and len({r.content for r in accepted}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in accepted) == 1
    assert await written(ingest, src) == nothing(1)


async def test_a_rejected_lead_is_remembered_and_a_failure_to_publish_is_not(
    ingest: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    (src,) = await configure(ingest)

    # 422 decided the request: the same answer again, whatever happens meanwhile.
    invalid = {**LEAD, "email": "not-an-email"}
    first = await post(ingest, src, "bad-lead", invalid)
    assert first.status_code == 422 and first.json()["error"]["code"] == "invalid_fields"
    again = await post(ingest, src, "bad-lead", invalid)
    assert (again.status_code, again.content) == (422, first.content)
    assert again.headers["idempotent-replayed"] == "true"

    # 503 (Kafka did not take the lead) is not remembered: the retry can succeed.
    async def kafka_down(event: Event, key: uuid.UUID | str) -> None:
        raise ConnectionError("kafka unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(ingest.rt.publisher, "publish", kafka_down)
        failed = await post(ingest, src, "retry-me")
    assert failed.status_code == 503, failed.text
    assert await written(ingest, src) == nothing()
    retried = await post(ingest, src, "retry-me")
    assert retried.status_code == 202, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert await written(ingest, src) == nothing(1)

    # Rejections before the key is looked at (a malformed body) leave no key behind; a
    # malformed key is refused outright.
    malformed = await ingest.client.post(
        "/v1/leads",
        content=b"{not json",
        headers={**src.auth, "idempotency-key": "k1", "content-type": "application/json"},
    )
    assert malformed.status_code == 400
    assert await ingest.count("idempotency_keys", "key = 'k1'") == 0
    bad_key = await post(ingest, src, "two words")
    assert bad_key.status_code == 400, bad_key.text
    assert bad_key.json()["error"]["code"] == "invalid_idempotency_key"
    assert await written(ingest, src) == nothing(1)


async def test_a_key_is_kept_24_hours_then_it_is_new_again_and_pruned(ingest: Service) -> None:
    (src,) = await configure(ingest)
    first = await post(ingest, src, "daily-1")
    assert first.status_code == 202

    async def age(key: str, hours: float) -> None:
        await ingest.execute(
            "update idempotency_keys set created_at = created_at - make_interval(secs => :s)"
            " where source_id = :src and key = :key",
            s=hours * 3600,
            src=src.source_id,
            key=key,
        )

    await age("daily-1", 23.9)
    assert (await post(ingest, src, "daily-1")).content == first.content
    await age("daily-1", 0.2)  # now 24.1 hours old: expired, even before it is pruned
    later = await post(ingest, src, "daily-1")
    assert later.status_code == 202 and "idempotent-replayed" not in later.headers
    assert later.json()["lead_id"] != first.json()["lead_id"]

    # The pruner deletes expired keys, and only those.
    assert (await post(ingest, src, "daily-2")).status_code == 202
    await age("daily-2", 25)
    deleted = await prune_once(ingest.rt.db, ingest.settings)
    assert deleted["idempotency_keys"] >= 1
    left = await ingest.count("idempotency_keys", "source_id = :s", s=src.source_id)
    assert left == 1  # daily-1, claimed again an instant ago


async def test_a_key_held_by_a_dead_request_is_taken_over_with_its_lead_id(
    ingest: Service,
) -> None:
    """A replica died holding the key after storing its lead (maybe after publishing it):
    once the lease runs out, a retry finishes that very lead; its events keep their ids,
    so a second copy on a topic is a duplicate every consumer skips."""
    (src,) = await configure(ingest)
    lead_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    fingerprint = domain.request_fingerprint(
        ingest.settings.hash_key.get_secret_value().encode(), LEAD
    )
    insert = (
        "insert into idempotency_keys (source_id, key, fingerprint, claim_id, lead_id,"
        " created_at, lease_until) values (:src, :key, :fp, :claim, :lead, :now, :lease)"
    )
    params = {"src": src.source_id, "fp": fingerprint, "claim": uuid.uuid4(), "now": now}

    # Still within its lease: in flight.
    await ingest.execute(
        insert, key="alive", lead=None, lease=now + dt.timedelta(minutes=1), **params
    )
    busy = await post(ingest, src, "alive")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "request_in_progress"

    # Lease run out: taken over, with the lead id the dead request had stored.
    await ingest.execute(insert, key="dead", lead=lead_id, lease=now, **params)
    taken = await post(ingest, src, "dead")
    assert taken.status_code == 202, taken.text
    assert taken.json()["lead_id"] == str(lead_id)
    received = await ingest.events_of(LEAD_RECEIVED, src.account_id)
    assert [e.payload.lead_id for e in received] == [lead_id]
    assert (await post(ingest, src, "dead")).content == taken.content


async def test_a_request_cut_off_after_storing_its_lead_hands_that_lead_to_its_retry(
    ingest: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    (src,) = await configure(ingest)
    held = HeldPublisher(ingest, monkeypatch)
    first = asyncio.create_task(post(ingest, src, "cut-off"))
    await asyncio.wait_for(held.entered.wait(), timeout=20)
    async with ingest.rt.db.begin() as conn:
        stored = await conn.scalar(
            text("select lead_id from leads where source_id = :s"), {"s": src.source_id}
        )
    assert stored is not None

    first.cancel()  # the client went away, or the replica is shutting down
    with pytest.raises(asyncio.CancelledError):
        await first
    held.release.set()

    retry = await post(ingest, src, "cut-off")
    assert retry.status_code == 202, retry.text
    assert retry.json()["lead_id"] == str(stored)
    assert await written(ingest, src) == nothing(1)


async def test_the_idempotency_key_is_documented_on_the_post(ingest: Service) -> None:
    spec = (await ingest.client.get("/openapi.json")).json()
    post_lead = spec["paths"]["/v1/leads"]["post"]
    assert "idempotency-key" in {p["name"].lower() for p in post_lead["parameters"]}
    responses = post_lead["responses"]
    assert "request_in_progress" in json.dumps(responses["409"])
    assert {"idempotency_key_reused", "duplicate_lead", "invalid_fields"} <= set(
        responses["422"]["content"]["application/json"]["examples"]
    )
