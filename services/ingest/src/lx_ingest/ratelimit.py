"""Per-source rate limits (posts and pings), counted with the ``limits`` library.

Counted **in memory, per replica**: with N ingest replicas behind a balancer a source
may get up to N times its rate in the worst case (and its fair share in the usual
round-robin case). That is the trade taken on purpose: a rate limit is a guard against
floods, answered before any database work, and a shared counter (Redis, or a row in
PostgreSQL) would put a network round trip, or a hot row, in front of every request.
Caps, which are business limits that must hold exactly, are counted in the database
(``store.take_caps``).
"""

from __future__ import annotations

import time
import uuid

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from lx_ingest import domain


class SourceRateLimiter:
    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def admit(
        self, kind: str, source_id: uuid.UUID, rate_per_s: float | None, burst: int | None
    ) -> int | None:
        """Count one request of ``kind`` ("post", "ping"); ``None`` if admitted, else
        the seconds to wait (a ``Retry-After``). No rate set: always admitted."""
        if rate_per_s is None:
            return None
        window = domain.rate_window(rate_per_s, burst)
        item = RateLimitItemPerSecond(window.amount, window.seconds, namespace=kind)
        # The window's shape is part of the key: a changed rate starts a fresh count.
        ident = f"{source_id}:{window.amount}/{window.seconds}"
        if await self._limiter.hit(item, ident):
            return None
        stats = await self._limiter.get_window_stats(item, ident)
        return domain.retry_after_s(stats.reset_time - time.time())
