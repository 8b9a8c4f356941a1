"""The audit log of lxctl: one row per executed action (dry runs are not recorded)."""

from __future__ import annotations

import json
from typing import Any

from lx_platform.db import Database, apply_migrations, ensure_database
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_sre.settings import SreSettings


async def open_audit(settings: SreSettings) -> Database:
    await ensure_database(settings.database_url)
    db = Database(settings.database_url, pool_size=1)
    await apply_migrations(db, ["lx_sre"])
    return db


async def record(
    db: Database,
    settings: SreSettings,
    command: str,
    params: dict[str, Any],
    result: dict[str, Any],
) -> int:
    async with db.begin() as conn:
        return await insert(conn, settings, command, params, result)


async def insert(
    conn: AsyncConnection,
    settings: SreSettings,
    command: str,
    params: dict[str, Any],
    result: dict[str, Any],
) -> int:
    """The audit row inside the caller's transaction, with the change it records."""
    row_id = await conn.scalar(
        text(
            "insert into audit (actor, command, params, result) values"
            " (:a, :c, cast(:p as jsonb), cast(:r as jsonb)) returning id"
        ),
        {
            "a": settings.actor,
            "c": command,
            "p": json.dumps(params, default=str),
            "r": json.dumps(result, default=str),
        },
    )
    return int(row_id)
