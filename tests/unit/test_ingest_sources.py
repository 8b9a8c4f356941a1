"""Ingest's source cache: a configuration change committed by this replica's consumer is
seen by the next post; a lookup that read the old row before the commit is not cached
after it; a batch of outcomes alone keeps the cache."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from lx_ingest.sources import SourceCache
from lx_ingest.store import SourceContext
from lx_platform.consumer import Consumed
from lx_schemas.envelope import decode_event

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).parents[1] / "samples"


def _consumed(sample: str) -> Consumed:
    event = decode_event((SAMPLES / sample).read_bytes())
    return Consumed(event, "t", 0, 0)


def _ctx() -> SourceContext:
    return SourceContext(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "active", "active", ())


def test_a_committed_configuration_change_empties_the_cache() -> None:
    cache = SourceCache()
    cache.put("k", _ctx(), cache.generation)
    assert cache.get("k") is not None
    cache.saw([_consumed("SourceConfigured.v2.json")])
    assert cache.get("k") is not None, "not before the change is committed"
    cache.committed()
    assert cache.get("k") is None


def test_outcomes_alone_keep_the_cache() -> None:
    cache = SourceCache()
    cache.put("k", _ctx(), cache.generation)
    cache.saw([_consumed("LeadSold.v2.json")])
    cache.committed()
    assert cache.get("k") is not None


def test_a_lookup_that_read_before_a_commit_is_not_cached_after_it() -> None:
    cache = SourceCache()
    read_at = cache.generation  # the request reads the source row (the old one) ...
    cache.saw([_consumed("AccountLimitChanged.v1.json")])
    cache.committed()  # ... the consumer commits a change and clears ...
    cache.put("k", _ctx(), read_at)  # ... and the stale row is not kept
    assert cache.get("k") is None


def test_entries_expire() -> None:
    cache = SourceCache(ttl_s=0.0)
    cache.put("k", _ctx(), cache.generation)
    assert cache.get("k") is None
