"""Fetches leads' data keys from ingest's vault, briefly cached."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable

import httpx
from cachetools import TTLCache

PREFETCH_BATCH = 500  # ingest's lookup takes at most this many ids per request


class KeyUnavailableError(RuntimeError):
    """The vault could not be asked (transient): try the delivery again later."""


class LeadKeys:
    def __init__(self, client: httpx.AsyncClient, ingest_url: str, ttl_s: float = 60.0) -> None:
        self.client = client
        self.ingest_url = ingest_url
        # Short TTL: a shredded key must stop working within a minute everywhere.
        self.cache: TTLCache[uuid.UUID, bytes] = TTLCache(maxsize=50_000, ttl=ttl_s)

    async def get(self, key_id: uuid.UUID) -> bytes | None:
        """The data key, or None when the vault no longer has it (shredded)."""
        if key_id in self.cache:
            return self.cache[key_id]
        try:
            response = await self.client.get(f"{self.ingest_url}/internal/v1/lead-keys/{key_id}")
        except httpx.HTTPError as exc:
            raise KeyUnavailableError(repr(exc)) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise KeyUnavailableError(f"vault answered {response.status_code}")
        key = base64.b64decode(response.json()["data_key"])
        self.cache[key_id] = key
        return key

    async def prefetch(self, key_ids: Iterable[uuid.UUID]) -> None:
        """Fetch the keys not cached yet in one request (a batch of deliveries about to
        start), so each delivery then finds its key here instead of asking the vault on
        its own: one request per batch rather than one per lead. Best effort: on any
        failure the deliveries ask one by one, and handle the error there."""
        wanted = list(dict.fromkeys(k for k in key_ids if k not in self.cache))
        for start in range(0, len(wanted), PREFETCH_BATCH):
            chunk = wanted[start : start + PREFETCH_BATCH]
            try:
                response = await self.client.post(
                    f"{self.ingest_url}/internal/v1/lead-keys/lookup",
                    json={"key_ids": [str(k) for k in chunk]},
                )
            except httpx.HTTPError:
                return
            if response.status_code != 200:
                return
            for key_id, data_key in response.json()["keys"].items():
                self.cache[uuid.UUID(key_id)] = base64.b64decode(data_key)
