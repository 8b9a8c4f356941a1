"""The PII canary: a lead with a unique e-mail, phone and name goes through the whole
stack to a fake buyer and is sold; its subject is erased; then the canary is searched
for in clear everywhere the platform keeps anything, and found nowhere readable, while
billing's totals stay as they were.

Searched: every table of every service's database (each dumped as text with COPY),
every topic of the stack (raw keys, values and headers), every sealed copy found in
either (opened with each data key the vault still holds), the analytics export files,
and the services' log files. The fake buyer's own log is left out: the buyer bought
the lead, and what it keeps is its own.

Each search is shown able to find the canary first: before the erasure, the sealed
copies open and the canary is in them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import phonenumbers
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.exceptions import InvalidTag
from lx_devstack.infra import Infra
from lx_devstack.postgres import libpq_dsn
from lx_devstack.stack import DEMO_LEAD, SERVICES, Seeded, Stack, config_settled, seed
from lx_ingest.settings import IngestSettings
from lx_platform.crypto import KeyWrapper, open_bytes, open_fields
from lx_schemas.events import SealedFields

from tests.e2e import conftest
from tests.e2e.support import lead_status, operator_get, post_lead, wait_for


@dataclass(frozen=True)
class Canary:
    email: str
    phone: str  # as posted
    first_name: str
    last_name: str
    national: str  # the phone's 10 digits

    @classmethod
    def new(cls) -> Canary:
        tag = uuid.uuid4().hex[:12]
        while True:  # a valid US number nobody else posts
            area, exchange = random.randrange(201, 990), random.randrange(200, 1000)
            national = f"{area}{exchange}{random.randrange(10_000):04d}"
            if phonenumbers.is_valid_number(phonenumbers.parse(national, "US")):
                break
        a, e, line = national[:3], national[3:6], national[6:]
        return cls(
            email=f"canary-{tag}@example.com",
            phone=f"({a}) {e}-{line}",
            first_name=f"canaryfirst{tag}",
            last_name=f"canarylast{tag}",
            national=national,
        )

    def lead(self) -> dict[str, Any]:
        return {
            **DEMO_LEAD,
            "email": self.email,
            "phone": self.phone,
            "first_name": self.first_name,
            "last_name": self.last_name,
        }

    def needles(self) -> list[str]:
        """Every spelling of the canary a copy could hold (all lower case)."""
        a, e, line = self.national[:3], self.national[3:6], self.national[6:]
        return [
            self.email.split("@")[0],
            self.first_name,
            self.last_name,
            self.national,
            f"{a}) {e}-{line}",
            f"{a}-{e}-{line}",
            f"{a}.{e}.{line}",
            f"{a} {e} {line}",
        ]


@dataclass
class Findings:
    """Where the canary was found: place → how many times."""

    places: dict[str, int] = field(default_factory=dict)

    def add(self, place: str) -> None:
        self.places[place] = self.places.get(place, 0) + 1


def encodings(needle: str) -> list[tuple[bytes, bool]]:
    """``needle`` as clear text, as hex (PostgreSQL's bytea text form) and as base64 at
    each of its three alignments; each with whether to compare caseless."""
    raw = needle.encode()
    found = [(raw, True), (raw.hex().encode(), True)]
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        # Drop the characters that mix in the padding or the unknown bytes that follow.
        start = (pad * 4 + 2) // 3
        end = len(encoded) - 4
        if end - start >= 8:
            found.append((encoded[start:end], False))
    return found


def holds(blob: bytes, needles: list[str]) -> bool:
    lowered = blob.lower()
    for needle in needles:
        for form, caseless in encodings(needle):
            if form in (lowered if caseless else blob):
                return True
    return False


# --- keys, sealed copies ----------------------------------------------------------------


def vault_keys(stack: Stack) -> dict[uuid.UUID, bytes]:
    """Every data key the vault still holds, unwrapped."""
    settings = IngestSettings()
    wrapper = KeyWrapper(*settings.keks())
    with psycopg.connect(db_dsn(stack, "ingest")) as conn:
        rows = conn.execute("select key_id, wrapped_key from lead_keys").fetchall()
    return {row[0]: wrapper.unwrap(row[1]) for row in rows}


def sealed_in(value: Any) -> Iterator[SealedFields]:
    """Every sealed PII document (``SealedFields``) anywhere inside a JSON value (not the
    buyers' sealed config secrets, which have no ``field_names``)."""
    if isinstance(value, dict):
        if {"key_id", "nonce", "ciphertext", "field_names"} <= value.keys():
            yield SealedFields.model_validate(value)
        for inner in value.values():
            yield from sealed_in(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from sealed_in(inner)


def open_sealed(
    sealed: SealedFields, keys: dict[uuid.UUID, bytes], lead_key: uuid.UUID, place: str
) -> tuple[bytes | None, bool]:
    """The sealed document in clear if a remaining key opens it; and whether it is the
    canary lead's own copy."""
    key = keys.get(sealed.key_id)
    if key is None:
        return None, sealed.key_id == lead_key
    try:
        return json.dumps(open_fields(key, sealed)).encode(), sealed.key_id == lead_key
    except InvalidTag as exc:  # a copy under a key it was not sealed with: a defect
        raise AssertionError(f"a sealed copy in {place} does not open with its key") from exc


# --- databases ----------------------------------------------------------------------------


def db_dsn(stack: Stack, service: str) -> str:
    return libpq_dsn(stack.infra.dsn(stack.layout.database(service)))


def search_databases(
    stack: Stack, needles: list[str], keys: dict[uuid.UUID, bytes], lead_key: uuid.UUID
) -> tuple[Findings, int]:
    """Every table of every service dumped as text, and every sealed copy in it (JSON
    documents, delivery's sealed logs) opened with the keys given. Returns what was
    found and how many sealed copies of the canary lead there were."""
    found, copies = Findings(), 0
    for service in SERVICES:
        with psycopg.connect(db_dsn(stack, service)) as conn:
            tables = [
                f'"{schema}"."{name}"'
                for schema, name in conn.execute(
                    "select table_schema, table_name from information_schema.tables"
                    " where table_type = 'BASE TABLE'"
                    " and table_schema not in ('pg_catalog', 'information_schema')"
                ).fetchall()
            ]
            assert tables, f"{service} has no tables"
            for table in tables:
                place = f"{service}:{table}"
                dump = bytearray()
                with conn.cursor().copy(f"copy (select * from {table}) to stdout") as copy:
                    for chunk in copy:
                        dump += chunk
                if holds(bytes(dump), needles):
                    found.add(place)
                cursor = conn.execute(f"select * from {table}")  # names from the catalog
                columns = [c.name for c in cursor.description or ()]
                for row in cursor.fetchall():
                    record = dict(zip(columns, row, strict=True))
                    for value in record.values():
                        for sealed in sealed_in(value):
                            clear, theirs = open_sealed(sealed, keys, lead_key, place)
                            copies += theirs
                            if clear is not None and holds(clear, needles):
                                found.add(f"{place} (opened)")
                    key_id = record.get("key_id")
                    for column in ("request_sealed", "response_sealed"):
                        blob = record.get(column)
                        if blob is None or key_id is None or key_id not in keys:
                            continue
                        clear = open_bytes(keys[key_id], key_id, bytes(blob))
                        if holds(clear, needles):
                            found.add(f"{place}.{column} (opened)")
    return found, copies


# --- topics -------------------------------------------------------------------------------


async def _read_topics(bootstrap: str, prefix: str) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every record (key + headers, value) of every topic of the stack, up to its end."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: dict[str, list[tuple[bytes, bytes]]] = {}
    try:
        for topic in described:
            tps = [TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]]
            ends = await consumer.end_offsets(tps)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            records: list[tuple[bytes, bytes]] = []
            position = {tp: 0 for tp in tps}
            while any(position[tp] < ends[tp] for tp in tps):
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, part in batch.items():
                    for r in part:
                        head = b" ".join([r.key or b"", *(v for _, v in r.headers)])
                        records.append((head, r.value or b""))
                        position[tp] = r.offset + 1
            out[topic["topic"]] = records
    finally:
        await consumer.stop()
    return out


def search_topics(
    stack: Stack, needles: list[str], keys: dict[uuid.UUID, bytes], lead_key: uuid.UUID
) -> tuple[Findings, int]:
    topics = asyncio.run(_read_topics(stack.infra.kafka_bootstrap, stack.layout.topic_prefix))
    assert topics, "the stack has no topics"
    found, copies = Findings(), 0
    for topic, records in topics.items():
        for head, value in records:
            if holds(head + b" " + value, needles):
                found.add(topic)
            try:
                document = json.loads(value)
            except ValueError:
                continue
            for sealed in sealed_in(document):
                clear, theirs = open_sealed(sealed, keys, lead_key, topic)
                copies += theirs
                if clear is not None and holds(clear, needles):
                    found.add(f"{topic} (opened)")
    return found, copies


def search_files(folder: Path, needles: list[str], skip: tuple[str, ...] = ()) -> Findings:
    found = Findings()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in skip and holds(path.read_bytes(), needles):
            found.add(str(path))
    return found


# --- the test -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(infra: Infra, isolation: str) -> Iterator[Stack]:
    """The e2e stack, with analytics writing its export files where the test looks and
    running due exports every second."""
    layout = conftest.test_layout(isolation)
    exports = layout.log_folder / "exports"
    layout.extra_env = {
        "LX_ANALYTICS_EXPORT_FOLDER": str(exports),
        "LX_ANALYTICS_EXPORT_POLL_S": "1",
    }
    running = Stack(infra, layout)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Seeded:
    return seed(
        stack.layout.url("admin"),
        stack.layout.operator_token,
        [("Canary Lender", f"{stack.layout.buyer_url}/buyers/canary/accept", "35.00", 1)],
        name="Canary Co",
        wait_ingest_url=stack.layout.url("ingest"),
        wait_for_groups=config_settled(stack.layout, stack.infra.kafka_bootstrap),
    )


def operator(stack: Stack, service: str, method: str, path: str, body: Any) -> Any:
    r = httpx.request(
        method,
        f"{stack.layout.url(service)}{path}",
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {stack.layout.operator_token}"},
    )
    assert r.status_code < 300, r.text
    return r.json()


def billing_totals(stack: Stack, account_id: str) -> tuple[Any, Any]:
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    statement = operator_get(stack, "billing", f"/v1/accounts/{account_id}/statement?month={month}")
    balances = operator_get(stack, "billing", f"/v1/accounts/{account_id}/balances")
    return statement, balances["balances"]


def test_after_erasure_the_pii_canary_is_nowhere_readable_and_billing_is_unchanged(
    stack: Stack, demo: Seeded
) -> None:
    canary = Canary.new()
    needles = canary.needles()
    r = post_lead(stack, demo.api_key, canary.lead())
    assert r.status_code == 202, r.text
    lead_id = r.json()["lead_id"]
    lead_key = uuid.UUID(lead_id)
    wait_for(lambda: lead_status(stack, demo.api_key, lead_id) == "sold", what="canary sold")
    statement, balances = wait_for(
        lambda: (t := billing_totals(stack, demo.account_id))[0]["sold_leads"] == 1 and t,
        what="billing booked the sale",
    )
    assert Decimal(statement["revenue"]) == Decimal("35.00")
    # An analytics export runs (what it holds is counted per hour, never a lead's fields).
    export = operator(
        stack,
        "analytics",
        "POST",
        "/v1/exports",
        {
            "name": "canary",
            "query": {"campaign_id": demo.campaign_id, "group_by": ["buyer"], "window_hours": 48},
            "every_hours": 1,
            "retention_days": 1,
            "configured_by": "test_erasure",
        },
    )
    wait_for(
        lambda: operator_get(stack, "analytics", f"/v1/exports/{export['export_id']}/runs"),
        what="an export file written",
    )

    # Before: the access export opens it all, and every search can find the canary.
    account = {"account_id": demo.account_id, "email": canary.email}
    access = operator(stack, "ingest", "POST", "/v1/privacy/access", account)
    (held,) = access["leads"]
    assert held["pii"]["email"] == canary.email and held["status"] == "sold"
    assert held["deliveries_error"] is None
    (delivery,) = held["deliveries"]
    assert canary.email in delivery["tries"][0]["request"]["body"]
    keys = vault_keys(stack)
    assert lead_key in keys
    in_databases, db_copies = search_databases(stack, needles, keys, lead_key)
    in_topics, topic_copies = search_topics(stack, needles, keys, lead_key)
    # Sealed and opened: ingest's lead, router's routing, delivery's job and its two
    # logs, admin's trace; lead.received and lead.routed. Nothing in clear.
    assert {p for p in in_databases.places if not p.endswith("(opened)")} == set()
    assert {'ingest:"public"."leads" (opened)', 'router:"public"."routings" (opened)'} <= set(
        in_databases.places
    ), in_databases.places
    assert any(p.startswith("delivery:") and "request_sealed" in p for p in in_databases.places)
    assert {p for p in in_topics.places if not p.endswith("(opened)")} == set()
    prefix = stack.layout.topic_prefix
    assert {f"{prefix}lead.received (opened)", f"{prefix}lead.routed (opened)"} <= set(
        in_topics.places
    ), in_topics.places
    assert db_copies >= 3 and topic_copies >= 2

    # The erasure.
    request = operator(stack, "ingest", "POST", "/v1/privacy/erasure", account)
    assert (request["status"], request["leads"], request["keys_shredded"]) == ("completed", 1, 1)

    # After: nowhere readable.
    keys = vault_keys(stack)
    assert lead_key not in keys
    in_databases, db_copies_after = search_databases(stack, needles, keys, lead_key)
    in_topics, topic_copies_after = search_topics(stack, needles, keys, lead_key)
    assert in_databases.places == {}
    assert in_topics.places == {}
    # The sealed copies are still there (the event log is immutable), none opens.
    assert topic_copies_after == topic_copies and db_copies_after >= 2
    exports = search_files(stack.layout.log_folder / "exports", needles)
    assert list((stack.layout.log_folder / "exports").iterdir()), "no export file to search"
    assert exports.places == {}
    logs = search_files(stack.layout.log_folder, needles, skip=("buyer.log",))
    assert logs.places == {}
    assert {p.name for p in stack.layout.log_folder.glob("*.log")} >= {f"{s}.log" for s in SERVICES}
    again = operator(stack, "ingest", "POST", "/v1/privacy/access", account)
    assert (again["leads"], again["refusals"]) == ([], [])
    # The trace still tells the story, its PII shredded.
    trace = operator_get(stack, "admin", f"/v1/leads/{lead_id}/trace")
    assert trace["status"] == "sold"
    assert all(t["request"] == {"shredded": True} for d in trace["deliveries"] for t in d["tries"])

    # Billing kept its amounts, under the lead's id: it never held PII (the dumps above
    # searched its tables too).
    assert billing_totals(stack, demo.account_id) == (statement, balances)
    with psycopg.connect(db_dsn(stack, "billing")) as conn:
        amounts = conn.execute(
            "select amount from ledger_transactions where lead_id = %s", (lead_id,)
        ).fetchall()
    assert (Decimal("35.00"),) in amounts
    listed = operator_get(stack, "ingest", f"/v1/privacy/requests?account_id={demo.account_id}")
    assert sorted(x["kind"] for x in listed["requests"]) == ["access", "access", "erasure"]
    assert all(not x["overdue"] for x in listed["requests"])
