"""The array literals ``lx_platform.db`` writes (instead of psycopg's list dumper) read
back in PostgreSQL as exactly the values written: awkward text, NULLs, every type."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import psycopg
import pytest
from lx_devstack.infra import Infra
from lx_platform.db import pg_array, pg_text_array

pytestmark = pytest.mark.integration

AWKWARD = [
    "plain",
    "",
    "with space",
    'a "quoted" word',
    "back\\slash",
    "comma,brace}{",
    "NULL",
    "ünïcødé ✓",
    "trailing\\",
    "new\nline",
]


def test_array_literals_read_back_exactly(infra: Infra) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    when = [dt.datetime(2026, 11, 22, 8, 30, 1, 123456, tzinfo=dt.UTC), None]
    amounts = [Decimal("12.50"), Decimal("-0.01"), None]
    with psycopg.connect(infra.pg_admin_dsn) as conn:
        row = conn.execute(
            "select cast(%s as text[]), cast(%s as uuid[]), cast(%s as bigint[]),"
            " cast(%s as numeric[]), cast(%s as timestamptz[]), cast(%s as text[])",
            (
                pg_text_array([*AWKWARD, None]),
                pg_array(ids),
                pg_array([0, -5, 2**40]),
                pg_array(amounts),
                pg_array(when),
                pg_text_array([]),
            ),
        ).fetchone()
    assert row is not None
    assert row[0] == [*AWKWARD, None]
    assert row[1] == ids
    assert row[2] == [0, -5, 2**40]
    assert row[3] == amounts
    assert row[4] == when
    assert row[5] == []
