"""The audit log: every configuration change and every read of PII, who did it, the
entity, its state before and after (secrets only sealed or as ``[secret]``).

Append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and hash-chained: each row
stores ``sha256(previous row's hash + its own canonical JSON)``, so a row changed,
removed or slipped in behind the database's back breaks the chain at that row.

    python -m lx_admin.audit verify [--database-url URL]

walks the chain and exits 1 naming the first broken row's id (``seq``).

Other services' actions reach the chain as ``AuditRecorded`` events (``audit.recorded``):
ingest's privacy requests and retention changes, with their actor.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from lx_platform.consumer import Consumed
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Frozen
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from lx_admin import domain
from lx_admin.access import Permission, Principal
from lx_admin.auth import allow

GENESIS = "0" * 64
# One writer at a time: each row's hash needs the one before it.
_CHAIN_LOCK = int.from_bytes(hashlib.sha256(b"lx-admin-audit-chain").digest()[:7], "big")
SECRET = "[secret]"  # noqa: S105 - what a secret is shown as
_SECRET_KEYS = frozenset(
    {"password", "password_hash", "token", "api_key", "secret", "totp_secret", "totp_pending"}
    | {"signing_secret_value", "token_sha256", "api_key_sha256"}
)
_HASHED = ("audit_id", "at", "account_id", "actor", "action", "entity_kind", "entity_id")


# --- the chain (pure) ------------------------------------------------------------------------


def scrub(value: Any) -> Any:
    """A state as the audit keeps it: sealed secrets by their key id, and any field named
    like a credential as ``[secret]``."""
    value = domain.redact_secrets(value)
    if isinstance(value, Mapping):
        return {
            # A sealed secret (a mapping: its key id) stays; a value in clear does not.
            k: (SECRET if k in _SECRET_KEYS and isinstance(v, str) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _text(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def canonical(row: Mapping[str, Any]) -> bytes:
    """A row's hashed content as canonical JSON (sorted keys, no spaces, UTF-8)."""
    content = {k: _text(row[k]) for k in _HASHED}
    content["before"] = row["before"]
    content["after"] = row["after"]
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link(prev_hash: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(row)).hexdigest()


def first_broken(rows: Iterable[Mapping[str, Any]]) -> tuple[int, str] | None:
    """The first row (by ``seq``) whose link does not hold, and why; None: intact."""
    prev = GENESIS
    for row in rows:
        if row["prev_hash"] != prev:
            return int(row["seq"]), "its prev_hash is not the previous row's hash"
        if link(prev, row) != row["hash"]:
            return int(row["seq"]), "its content does not hash to its stored hash"
        prev = row["hash"]
    return None


# --- the store -------------------------------------------------------------------------------

_COLUMNS = (
    "seq, audit_id, at, account_id, actor, action, entity_kind, entity_id, before, after,"
    " prev_hash, hash"
)


async def record(
    conn: AsyncConnection,
    who: Principal,
    action: str,
    *,
    account_id: uuid.UUID | str | None,
    entity_kind: str,
    entity_id: uuid.UUID | str | None,
    before: Any = None,
    after: Any = None,
) -> None:
    """Append one entry in the caller's transaction: it stands or falls with the change."""
    await append(
        conn,
        who.actor,
        action,
        account_id=account_id,
        entity_kind=entity_kind,
        entity_id=entity_id,
        before=before,
        after=after,
    )


async def append(
    conn: AsyncConnection,
    actor: str,
    action: str,
    *,
    account_id: uuid.UUID | str | None,
    entity_kind: str,
    entity_id: uuid.UUID | str | None,
    before: Any = None,
    after: Any = None,
    audit_id: uuid.UUID | None = None,
    at: dt.datetime | None = None,
) -> bool:
    """Append one entry for ``actor``; False if an entry of ``audit_id`` is there already
    (an event of another service, recorded once however often it is delivered)."""
    await conn.execute(text("select pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK})
    if audit_id is not None and await conn.scalar(
        text("select true from audit_log where audit_id = :a"), {"a": audit_id}
    ):
        return False
    # Through jsonb and back first, so the hash is of what a reader will read.
    states = (
        await conn.execute(
            text("select cast(:b as jsonb) as before, cast(:a as jsonb) as after"),
            {"b": json.dumps(scrub(before)), "a": json.dumps(scrub(after))},
        )
    ).one()
    prev = await conn.scalar(text("select hash from audit_log order by seq desc limit 1"))
    row: dict[str, Any] = {
        "audit_id": audit_id or uuid.uuid4(),
        "at": at or dt.datetime.now(dt.UTC),
        "account_id": uuid.UUID(str(account_id)) if account_id is not None else None,
        "actor": actor,
        "action": action,
        "entity_kind": entity_kind,
        "entity_id": uuid.UUID(str(entity_id)) if entity_id is not None else None,
        "before": states.before,
        "after": states.after,
    }
    prev_hash = prev or GENESIS
    await conn.execute(
        text(
            "insert into audit_log (audit_id, at, account_id, actor, action, entity_kind,"
            " entity_id, before, after, prev_hash, hash) values (:audit_id, :at, :account_id,"
            " :actor, :action, :entity_kind, :entity_id, cast(:b as jsonb), cast(:a as jsonb),"
            " :prev_hash, :hash)"
        ),
        {
            **row,
            "b": json.dumps(row["before"]),
            "a": json.dumps(row["after"]),
            "prev_hash": prev_hash,
            "hash": link(prev_hash, row),
        },
    )
    return True


async def record_events(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    """Append the actions other services took (``audit.recorded``), each as the entry of
    its event id: the consumer's transaction records the batch once, and the entry's id
    keeps even a re-published event from appearing twice."""
    for item in batch:
        event = item.event
        if isinstance(event, ev.AuditRecorded):
            p = event.payload
            await append(
                conn,
                p.actor,
                p.action,
                account_id=event.account_id,
                entity_kind=p.entity_kind,
                entity_id=p.entity_id,
                after=dict(p.detail),
                audit_id=event.event_id,
                at=event.occurred_at,
            )


async def chain(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(text(f"select {_COLUMNS} from audit_log order by seq"))
    return [dict(r._mapping) for r in rows]


async def entries(
    conn: AsyncConnection, account_id: uuid.UUID | None, after_seq: int, limit: int
) -> list[dict[str, Any]]:
    where = " and account_id = :acc" if account_id is not None else ""
    rows = await conn.execute(
        text(f"select {_COLUMNS} from audit_log where seq > :after{where} order by seq limit :n"),
        {"after": after_seq, "acc": account_id, "n": limit},
    )
    return [dict(r._mapping) for r in rows]


# --- the API ---------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["audit"])


class AuditEntry(Frozen):
    seq: int  # the row's id: what `verify` names
    audit_id: uuid.UUID
    at: dt.datetime
    account_id: uuid.UUID | None
    actor: str  # operator_token:operator, user:<id>, api_token:<id>
    action: str  # campaign.created, buyer.updated, pii.read...
    entity_kind: str
    entity_id: uuid.UUID | None
    before: Any
    after: Any
    prev_hash: str
    hash: str


class AuditPage(Frozen):
    entries: list[AuditEntry]
    next_after: int | None = None  # pass as ``after`` for the next page


@router.get(
    "/audit",
    response_model=AuditPage,
    responses={
        401: {"description": "no valid credential"},
        403: {"description": "`forbidden`: the role may not read the audit log"},
        404: {"description": "`account_not_found`: not an account of the caller"},
    },
)
async def read_audit(
    who: Annotated[Principal, Depends(allow(Permission.AUDIT_READ))],
    request: Request,
    account_id: uuid.UUID | None = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """The audit log, oldest first: an account's own (its admins and owner), or the
    platform's whole (superuser; ``account_id`` narrows it)."""
    if account_id is not None and not who.sees(account_id):
        raise HTTPException(404, {"code": "account_not_found", "detail": "no such account"})
    scope = account_id if account_id is not None else who.account_id
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        rows = await entries(conn, scope, after, limit + 1)
    return _page(rows, limit)


def _page(rows: Sequence[dict[str, Any]], limit: int) -> AuditPage:
    return AuditPage(
        entries=[AuditEntry(**r) for r in rows[:limit]],
        next_after=int(rows[limit - 1]["seq"]) if len(rows) > limit else None,
    )


# --- the command -----------------------------------------------------------------------------


async def verify(database_url: str) -> tuple[int, tuple[int, str] | None]:
    """How many rows the chain holds, and its first broken link (None: intact)."""
    engine = create_async_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await chain(conn)
    finally:
        await engine.dispose()
    return len(rows), first_broken(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lx_admin.audit")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="walk the hash chain; exit 1 at a broken link")
    check.add_argument("--database-url", help="default: LX_ADMIN_DATABASE_URL")
    args = parser.parse_args(argv)
    url = args.database_url
    if not url:
        from lx_admin.settings import AdminSettings

        url = AdminSettings().database_url
    count, broken = asyncio.run(verify(url))
    if broken is not None:
        seq, why = broken
        sys.stderr.write(f"audit chain broken at row {seq}: {why}\n")
        return 1
    sys.stdout.write(f"audit chain intact: {count} rows\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
