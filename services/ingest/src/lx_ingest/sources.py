"""The sources' credentials and settings, cached in memory for the hot path.

Every lead post names its source by API key; reading the source, its campaign and its
account's plan state from the database cost a transaction per request (about a fifth
of ingest's CPU per lead, measured with py-spy under ``make bench-load``). They change
rarely, so they are kept here briefly:

- this replica's consumer clears the cache right after it commits a configuration or
  plan-limit change, so a post that follows the change on this replica sees it;
- another replica of ingest (same consumer group, so it did not consume that change)
  sees it within ``ttl_s`` at most: a revoked key or a paused source may still be
  accepted there for that long.

A generation number keeps a lookup that read the old row before the commit from
caching it after the clear.
"""

from __future__ import annotations

from collections.abc import Sequence

from cachetools import TTLCache
from lx_platform.consumer import Consumed
from lx_schemas import events as ev

from lx_ingest.store import SourceContext

CHANGES = (ev.CampaignConfigured, ev.SourceConfigured, ev.AccountLimitChanged)


class SourceCache:
    def __init__(self, *, ttl_s: float = 5.0, maxsize: int = 10_000) -> None:
        self._cache: TTLCache[str, SourceContext] = TTLCache(maxsize=maxsize, ttl=ttl_s)
        self.generation = 0
        self._pending = False

    def get(self, key_sha256: str) -> SourceContext | None:
        return self._cache.get(key_sha256)

    def put(self, key_sha256: str, ctx: SourceContext, generation: int) -> None:
        """Cache ``ctx`` read at ``generation``, unless a change was committed since."""
        if generation == self.generation:
            self._cache[key_sha256] = ctx

    def saw(self, batch: Sequence[Consumed]) -> None:
        """Called inside the consumer's transaction: remember whether it changes sources."""
        if any(isinstance(item.event, CHANGES) for item in batch):
            self._pending = True

    def committed(self) -> None:
        """Called after the consumer's commit."""
        if self._pending:
            self._pending = False
            self.clear()

    def clear(self) -> None:
        self.generation += 1
        self._cache.clear()
