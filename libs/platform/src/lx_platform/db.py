"""Database access (SQLAlchemy 2 async on psycopg 3) and SQL migrations.

Migrations are plain, forward-only SQL files in each package's ``migrations``
folder, applied in name order under an advisory lock. Alembic was not chosen: with
SQLAlchemy Core and no ORM models there is nothing to autogenerate, and plain SQL
files keep the schema readable by operators and by the Docker image alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from importlib import resources

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from lx_platform.logging import get_logger

log = get_logger(__name__)


class Database:
    """One service's database. Creating it does not connect."""

    def __init__(self, url: str, *, pool_size: int = 10, schema: str | None = None) -> None:
        """``schema``: run every session in that schema (a projection's shadow copy)."""
        self.url = url
        self.schema = schema
        connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            # No ping before each checkout: it was one more round trip on every
            # transaction. A connection that died with the server (a restart) fails its
            # next statement instead; SQLAlchemy then discards the whole pool, the
            # consumers retry the batch (is_transient) and an API call answers 503 with
            # Retry-After (lx_platform.runtime) — the fault suite restarts PostgreSQL
            # under load to hold this.
            pool_pre_ping=False,
            connect_args=connect_args,
        )

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        async with self.engine.begin() as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("select 1"))
            return True
        except Exception:  # readiness probe: any failure means "not ready"
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it is missing (needs CREATEDB)."""
    target = make_url(url)
    admin = create_async_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", pool_size=1
    )
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(
                text("select 1 from pg_database where datname = :n"), {"n": target.database}
            )
            if not exists:
                await conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
                log.info("database_created", database=target.database)
    except Exception as exc:  # the DB may exist on a server where we may not create
        log.warning("database_not_checked", database=target.database, error=str(exc))
    finally:
        await admin.dispose()


async def apply_migrations(db: Database, packages: Sequence[str]) -> list[str]:
    """Apply every ``<package>.migrations/*.sql`` not applied yet; returns what ran."""
    applied: list[str] = []
    async with db.begin() as conn:
        # One migrator at a time across all replicas of this service.
        lock_id = int.from_bytes(hashlib.sha256(b"lx-migrations").digest()[:7], "big")
        await conn.execute(text("select pg_advisory_xact_lock(:k)"), {"k": lock_id})
        await conn.exec_driver_sql(
            "create table if not exists schema_migrations ("
            " component text not null, version text not null,"
            " applied_at timestamptz not null default now(),"
            " primary key (component, version))"
        )
        done = {
            (c, v)
            for c, v in (
                await conn.execute(text("select component, version from schema_migrations"))
            )
        }
        for package in packages:
            folder = resources.files(package).joinpath("migrations")
            for item in sorted(folder.iterdir(), key=lambda p: p.name):
                if not item.name.endswith(".sql") or (package, item.name) in done:
                    continue
                await conn.exec_driver_sql(item.read_text())
                await conn.execute(
                    text("insert into schema_migrations (component, version) values (:c, :v)"),
                    {"c": package, "v": item.name},
                )
                applied.append(f"{package}/{item.name}")
    if applied:
        log.info("migrations_applied", migrations=applied)
    return applied


def pg_array(values: Iterable[uuid.UUID | int | Decimal | dt.datetime | None]) -> str:
    """A PostgreSQL array literal of uuids, integers, decimals or aware datetimes, for
    ``cast(:param as uuid[])`` and the like.

    Written here rather than left to psycopg's list dumper, which dumps element by
    element in Python: on a replay that was a fifth of the CPU (py-spy on ``make
    bench-rebuild``). None of these types' text forms holds a comma, brace, quote or
    space, so they need no quoting; ``None`` is ``NULL``.
    """
    return "{" + ",".join("NULL" if v is None else _text(v) for v in values) + "}"


def pg_text_array(values: Iterable[str | None]) -> str:
    """A PostgreSQL array literal of text, each element quoted (see ``pg_array``)."""
    return (
        "{"
        + ",".join(
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
        + "}"
    )


def _text(v: uuid.UUID | int | Decimal | dt.datetime) -> str:
    return v.isoformat() if isinstance(v, dt.datetime) else str(v)
