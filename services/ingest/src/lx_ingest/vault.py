"""Re-wrapping the lead data keys under the vault's current key-encryption key (KEK).

    python -m lx_ingest.vault rewrap [--database-url URL] [--batch N]

After a new KEK is made current (first in LX_INGEST_VAULT_KEKS), new data keys are
wrapped with it but the old ones still name the old KEK. This command re-wraps every
data key not under the current KEK's id, in batches, each its own short transaction
(rows a request holds are skipped and picked up by the next batch or run): it is
idempotent and resumable, and it is done when it reports none left. Only then may the
old KEK be removed (docs/runbooks.md, "Rotate the vault's KEK"). The data keys
themselves never change, so every sealed copy of the PII (topics, other services'
tables) opens as before.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from lx_platform.crypto import KeyWrapper
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_BATCH = 500

# A wrapped key reads "<kid>:<base64>" (lx_platform.crypto.KeyWrapper). Keyset order by
# key id, so that a key that cannot be unwrapped (its KEK missing) is passed, not retried.
_BATCH = text(
    "select key_id, wrapped_key from lead_keys"
    " where key_id > :after and not starts_with(wrapped_key, :current)"
    " order by key_id limit :n for update skip locked"
)
_REWRAP = text("update lead_keys set wrapped_key = :w where key_id = :k")
_LEFT = text("select count(*) from lead_keys where not starts_with(wrapped_key, :current)")


@dataclass
class Rewrapped:
    rewrapped: int = 0
    batches: int = 0
    unreadable: int = 0  # wrapped by a KEK the settings no longer hold: left as they are
    left: int = 0  # not under the current KEK after the run (unreadable, or locked)


async def rewrap(
    engine: AsyncEngine,
    wrapper: KeyWrapper,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[Rewrapped], None] | None = None,
) -> Rewrapped:
    """Re-wrap every data key not under ``wrapper.current``, ``batch`` keys per
    transaction; ``progress`` is told the counts after each batch."""
    current = f"{wrapper.current}:"
    done = Rewrapped()
    after = uuid.UUID(int=0)
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(_BATCH, {"after": after, "current": current, "n": batch})
            ).all()
            if not rows:
                break
            updates = []
            for row in rows:
                try:
                    key = wrapper.unwrap(row.wrapped_key)
                except (KeyError, ValueError, binascii.Error, InvalidTag):
                    # Its KEK is not configured (or the row is damaged): counted, left.
                    done.unreadable += 1
                    continue
                updates.append({"k": row.key_id, "w": wrapper.wrap(key)})
            if updates:
                await conn.execute(_REWRAP, updates)
            after = rows[-1].key_id
        done.rewrapped += len(updates)
        done.batches += 1
        if progress is not None:
            progress(done)
    async with engine.connect() as conn:
        done.left = int(await conn.scalar(_LEFT, {"current": current}) or 0)
    return done


def _print_progress(done: Rewrapped) -> None:
    sys.stdout.write(f"batch {done.batches}: {done.rewrapped} re-wrapped so far\n")
    sys.stdout.flush()


async def _run(database_url: str, wrapper: KeyWrapper, batch: int) -> Rewrapped:
    engine = create_async_engine(database_url, pool_size=1)
    try:
        return await rewrap(engine, wrapper, batch, _print_progress)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lx_ingest.vault")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "rewrap", help="re-wrap every lead data key under the current KEK; exit 1 if any is left"
    )
    command.add_argument("--database-url", help="default: LX_INGEST_DATABASE_URL")
    command.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="keys per transaction")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    from lx_ingest.settings import IngestSettings

    settings = IngestSettings()
    wrapper = KeyWrapper(*settings.keks())
    result = asyncio.run(_run(args.database_url or settings.database_url, wrapper, args.batch))
    sys.stdout.write(
        f"re-wrapped {result.rewrapped} data keys under KEK {wrapper.current!r} in"
        f" {result.batches} batches; {result.unreadable} under a KEK not configured;"
        f" {result.left} not under the current KEK\n"
    )
    return 1 if result.left else 0


if __name__ == "__main__":
    sys.exit(main())
